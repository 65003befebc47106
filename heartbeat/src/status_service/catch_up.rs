//! Catching up: a host that was down (or unreachable) when a config was
//! applied asks the others for theirs and persists a newer one, so it boots
//! the cluster's newest config next time without an operator re-applying.
//!
//! Rules:
//! - Every [`ApplyTarget::catch_up_every`](super::ApplyTarget) (first after
//!   [`FIRST_AFTER`]) the host asks each peer over Noise
//!   ([`noise::Kind::Fetch`](super::noise::Kind::Fetch)) for the signed
//!   config of its active slot; a peer whose slot was made by `make-disk`
//!   answers nothing.
//! - Only a config newer than this host's (active slot and STATE) is taken:
//!   a higher generation, or the same generation with a higher digest
//!   (`config_schema::config_id`), so two different configs of one
//!   generation applied by two operators end as the same one everywhere.
//!   It goes through the same checks and writes as `ftctl apply`
//!   (`apply_here`): the trust root, the anti-rollback record, one apply at
//!   a time. A peer cannot make a host take anything the operator's apply
//!   would not.

use std::fs::File;
use std::sync::Arc;
use std::time::Duration;

use config_schema::config_id::ConfigId;
use config_schema::disk::{self, DISK_LEN, STATE_LEN, STATE_OFFSET};
use config_schema::remote::wire::ServerHello;
use config_schema::signed::SignedConfig;
use config_schema::slots;

use super::apply::Via;
use super::noise::Kind;
use super::Service;
use crate::node::PeerConf;

/// Delay of the first round after the service starts.
pub const FIRST_AFTER: Duration = Duration::from_secs(5);

/// Asks the peers every `every`, forever.
pub(super) fn run(svc: Arc<Service>, every: Duration) {
    std::thread::sleep(FIRST_AFTER.min(every));
    loop {
        for line in svc.catch_up_once() {
            tracing::info!("catch-up: {line}");
        }
        // An ftvmm that restarted (or did not answer) learns the live part.
        svc.tell_ftvmm_again();
        std::thread::sleep(every);
    }
}

impl Service {
    /// This host's persisted config id (the higher of its active slot and
    /// STATE) and the applied signed config of its active slot, if any.
    fn on_disk(&self) -> Result<(ConfigId, Option<SignedConfig>), String> {
        let (path, trust) = self.disk_and_trust().map_err(|e| e.to_string())?;
        let mut image = vec![0u8; DISK_LEN];
        let mut f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        std::io::Read::read_exact(&mut f, &mut image)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let a = slots::read_active(&image, &trust).map_err(|e| e.to_string())?;
        let st = disk::decode_state_id(&image[STATE_OFFSET as usize..][..STATE_LEN])
            .map_err(|e| e.to_string())?;
        let id = st.map_or(a.current.id, |s| s.max(a.current.id));
        Ok((id, a.current.signed))
    }

    /// One round: every peer's applied config; a newer one is persisted.
    /// Returns one line per config taken or refused (nothing when up to date).
    pub fn catch_up_once(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut own = match self.on_disk() {
            Ok((g, _)) => g,
            Err(e) => {
                tracing::debug!("catch-up: own config disk: {e}");
                return lines;
            }
        };
        for p in &self.cfg.node.peers {
            let sc = match self.fetch(p) {
                Ok(Some(sc)) => sc,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!("catch-up: {}: {e}", p.name);
                    continue;
                }
            };
            let g = config_schema::canonical::decode(&sc.canonical)
                .map(|c| c.cluster.generation)
                .unwrap_or(0);
            let id = ConfigId::of_canonical(g, &sc.canonical);
            if id <= own {
                continue;
            }
            let r = self.apply_here(&sc, Via::CatchUp { from: &p.name }).result;
            if matches!(
                r.outcome,
                config_schema::remote::apply::Outcome::Applied
                    | config_schema::remote::apply::Outcome::NeedsReboot
            ) {
                own = id;
            }
            lines.push(format!("from {}: {}", p.name, r.line));
        }
        lines
    }

    /// `p`'s applied signed config (`None`: it has none).
    fn fetch(&self, p: &PeerConf) -> Result<Option<SignedConfig>, String> {
        let addr = self.cfg.peer_addr(p);
        let not_p = |h: &ServerHello| format!("{addr} is host {:?}, not {}", h.host, p.name);
        let bytes = (self.ask_host(p, Kind::Fetch, &[], not_p)).map_err(|e| e.to_string())?;
        if bytes.is_empty() {
            return Ok(None);
        }
        SignedConfig::decode(&bytes)
            .map(Some)
            .map_err(|e| format!("{addr}: {e}"))
    }

    /// Host `from` asks for this host's applied config: its signed config to
    /// answer with, or nothing
    /// ([`Backend::peer_fetch`](super::Backend::peer_fetch)).
    pub(super) fn applied_for(&self, from: &str) -> Vec<u8> {
        match self.on_disk() {
            Ok((_, Some(sc))) => sc.encode(),
            Ok((_, None)) => Vec::new(),
            Err(e) => {
                tracing::warn!("catch-up: cannot read own config disk for {from}: {e}");
                Vec::new()
            }
        }
    }
}
