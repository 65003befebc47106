//! The server loop of the status service: one thread per connection, at
//! most [`MAX_CONNECTIONS`] at once; a fresh challenge per connection; the
//! operator's signature checked before anything else is done; every reply to
//! an authenticated operator sealed with the host's key (`super::sealed`);
//! refusals answered with the reason and logged at most once per 10 s.
//!
//! What a host answers and how it talks to other hosts is the [`Backend`]'s
//! (the heartbeat daemon's `status_service`); this file only authenticates.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::apply::MAX_APPLY_FRAME;
use super::auth::{self, Operators};
use super::report::{ClusterReport, HostReport};
use super::sealed::{self, SealError, Sealed};
use super::wire::{self, ClientMsg, OperatorRequest, Reply, ServerHello};
use super::{IO_TIMEOUT, MAX_CLIENT_FRAME, VERSION};
use crate::ctl_server::RefusalLog;
use crate::signed::SignedConfig;

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 16;

/// What a host answers.
pub trait Backend: Send + Sync + 'static {
    fn cluster(&self) -> String;
    fn host(&self) -> String;
    /// The `[[operators]]` of the config this host runs.
    fn operators(&self) -> Operators;
    /// This host's X25519 private key (its `hosts[].public_key`'s pair),
    /// which seals the replies to operators (`super::sealed`).
    fn reply_key(&self) -> [u8; 32];
    fn host_report(&self) -> HostReport;
    fn cluster_report(&self) -> ClusterReport;
    /// This host's figures as OpenMetrics text.
    fn metrics(&self) -> String;
    /// Another host's query (`ClientMsg::Host`): authenticate it with the
    /// Noise message, whose payload must be `nonce`, and answer on `stream`.
    fn peer_query(
        &self,
        stream: &mut TcpStream,
        nonce: &[u8; 32],
        from: &str,
        noise: &str,
    ) -> Result<(), String>;
    /// An operator's authenticated apply (`super::apply`): persist, pass on
    /// to the other hosts, answer one line per host. The default refuses.
    fn apply(&self, _config: SignedConfig, operator: &str) -> Reply {
        Reply::Refused {
            reason: format!(
                "{} does not take configs over the network (operator {operator})",
                self.host()
            ),
        }
    }
    /// Another host passes on an applied config (`ClientMsg::HostApply`).
    fn peer_apply(
        &self,
        _stream: &mut TcpStream,
        _nonce: &[u8; 32],
        from: &str,
        _noise: &str,
    ) -> Result<(), String> {
        Err(format!(
            "{} does not take configs from other hosts ({from})",
            self.host()
        ))
    }
    /// Another host passes on an applied config with what it knows of it
    /// (`ClientMsg::HostPassOn`, body `super::pass_on::PassOn`); by default
    /// as [`Backend::peer_apply`].
    fn peer_pass_on(
        &self,
        stream: &mut TcpStream,
        nonce: &[u8; 32],
        from: &str,
        noise: &str,
    ) -> Result<(), String> {
        self.peer_apply(stream, nonce, from, noise)
    }
    /// Another host asks for this host's applied config (`ClientMsg::HostFetch`).
    fn peer_fetch(
        &self,
        _stream: &mut TcpStream,
        _nonce: &[u8; 32],
        from: &str,
        _noise: &str,
    ) -> Result<(), String> {
        Err(format!(
            "{} does not hand out configs to other hosts ({from})",
            self.host()
        ))
    }
}

/// Serves `listener` forever.
pub fn serve(listener: TcpListener, backend: Arc<dyn Backend>) {
    let log = Arc::new(RefusalLog::default());
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("status service: accept failed: {e}");
                continue;
            }
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::SeqCst);
            let why = format!(
                "status service: {MAX_CONNECTIONS} connections busy, closed one from {}",
                peer_of(&stream)
            );
            if let Some(w) = log.on_refusal(Instant::now(), &why) {
                tracing::warn!("{w}");
            }
            continue;
        }
        let (backend, log, busy) = (Arc::clone(&backend), Arc::clone(&log), Arc::clone(&busy));
        std::thread::spawn(move || {
            serve_one(stream, &*backend, &log);
            busy.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn peer_of(s: &TcpStream) -> String {
    s.peer_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// One connection: hello, one message, one answer.
pub fn serve_one(mut stream: TcpStream, backend: &dyn Backend, log: &RefusalLog) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let peer = peer_of(&stream);
    let host = backend.host();
    let refuse = |stream: &mut TcpStream, why: String| {
        let line = format!("status service: {host} refuses a query from {peer}: {why}");
        if let Some(w) = log.on_refusal(Instant::now(), &line) {
            tracing::warn!("{w}");
        }
        let _ = wire::write_frame(stream, &Reply::Refused { reason: line });
    };
    let nonce = match auth::fresh_nonce() {
        Ok(n) => n,
        Err(e) => return refuse(&mut stream, e.to_string()),
    };
    let hello = ServerHello {
        version: VERSION,
        cluster: backend.cluster(),
        host: host.clone(),
        nonce: hex::encode(nonce),
    };
    if let Err(e) = wire::write_frame(&mut stream, &hello) {
        tracing::debug!("status service: hello to {peer} failed: {e}");
        return;
    }
    let msg: ClientMsg = match wire::read_frame(&mut stream, MAX_CLIENT_FRAME) {
        Ok(m) => m,
        Err(e) => return refuse(&mut stream, format!("bad request: {e}")),
    };
    match msg {
        ClientMsg::Operator {
            public_key,
            request,
            signature,
            noise,
        } => {
            let Ok(m1) = hex::decode(&noise) else {
                return refuse(&mut stream, "bad request: noise message not hex".into());
            };
            let ops = backend.operators();
            let who = ops.verify(
                (&hello.cluster, &host, &nonce),
                &public_key,
                request,
                &signature,
                &m1,
            );
            let name = match who {
                Ok(name) => name,
                Err(e) => return refuse(&mut stream, e.to_string()),
            };
            let mut sealed = match sealed::respond(&hello, &backend.reply_key(), &m1) {
                Ok((sealed, m2)) => {
                    let opened = Reply::Sealed {
                        noise: hex::encode(m2),
                    };
                    if let Err(e) = wire::write_frame(&mut stream, &opened) {
                        tracing::warn!("status service: reply to {peer} failed: {e}");
                        return;
                    }
                    sealed
                }
                Err(e) => {
                    return refuse(
                        &mut stream,
                        format!("cannot seal the reply for operator {name}: {e}"),
                    )
                }
            };
            tracing::info!(
                "status service: {} for operator {name} from {peer}",
                describe(&request)
            );
            let reply = match request {
                OperatorRequest::Apply { config_sha256 } => {
                    match read_config(&mut stream, &mut sealed, &config_sha256) {
                        Ok(c) => backend.apply(c, name),
                        Err(why) => {
                            let line = format!(
                                "status service: {host} refuses an apply from {peer}: {why}"
                            );
                            tracing::warn!("{line}");
                            Reply::Refused { reason: line }
                        }
                    }
                }
                OperatorRequest::ClusterStatus => Reply::Cluster {
                    report: backend.cluster_report(),
                },
                OperatorRequest::HostStatus => Reply::Host {
                    report: backend.host_report(),
                },
                OperatorRequest::Metrics => Reply::Metrics {
                    text: backend.metrics(),
                },
            };
            if let Err(e) = send_sealed(&mut stream, &mut sealed, &reply) {
                tracing::warn!("status service: reply to {peer} failed: {e}");
            }
        }
        ClientMsg::HostApply { from, noise } => {
            if let Err(e) = backend.peer_apply(&mut stream, &nonce, &from, &noise) {
                refuse(&mut stream, format!("config from host {from:?}: {e}"));
            }
        }
        ClientMsg::HostPassOn { from, noise } => {
            if let Err(e) = backend.peer_pass_on(&mut stream, &nonce, &from, &noise) {
                refuse(&mut stream, format!("config from host {from:?}: {e}"));
            }
        }
        ClientMsg::HostFetch { from, noise } => {
            if let Err(e) = backend.peer_fetch(&mut stream, &nonce, &from, &noise) {
                refuse(&mut stream, format!("config fetch from host {from:?}: {e}"));
            }
        }
        ClientMsg::Host { from, noise } => {
            if let Err(e) = backend.peer_query(&mut stream, &nonce, &from, &noise) {
                refuse(&mut stream, format!("host query from {from:?}: {e}"));
            }
        }
    }
}

/// The signed config following an authenticated apply request: at most
/// [`MAX_APPLY_FRAME`] bytes, with the SHA-256 the operator signed.
fn read_config(
    stream: &mut TcpStream,
    sealed: &mut Sealed,
    sha256: &[u8; 32],
) -> Result<SignedConfig, String> {
    send_sealed(stream, sealed, &Reply::SendConfig).map_err(|e| format!("apply: {e}"))?;
    let bytes = wire::read_raw(stream, MAX_APPLY_FRAME).map_err(|e| format!("apply: {e}"))?;
    let c = SignedConfig::decode(&bytes).map_err(|e| format!("apply: {e}"))?;
    if c.sha256() != *sha256 {
        return Err("apply: the config sent is not the one the operator signed for".into());
    }
    Ok(c)
}

/// One reply, sealed to the operator.
fn send_sealed(
    stream: &mut TcpStream,
    sealed: &mut Sealed,
    reply: &Reply,
) -> Result<(), SealError> {
    let body = serde_json::to_vec(reply).map_err(|e| SealError::Protocol(e.to_string()))?;
    sealed.send(stream, &body)
}

/// A request as the log says it (an apply by the start of its config's hash).
fn describe(request: &OperatorRequest) -> String {
    match request {
        OperatorRequest::Apply { config_sha256 } => {
            format!(
                "Apply (config sha256 {}…)",
                hex::encode(&config_sha256[..8])
            )
        }
        other => format!("{other:?}"),
    }
}
