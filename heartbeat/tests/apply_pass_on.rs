//! `ftctl apply` on loopback (as `apply.rs`), when a peer's catch-up races
//! the asked host's pass-on: a host that holds the offered config by
//! catch-up says from whom and how long ago; one whose catch-up took it
//! from the asked host during the apply says what it did; one without the
//! pass-on message is passed the bare config.

mod common;

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config_schema::keys;
use config_schema::remote::apply::{HostApplied, Outcome};
use config_schema::remote::pass_on::PassOn;
use config_schema::remote::{client, wire, Reply, ServerHello};
use config_schema::signed::SignedConfig;
use heartbeat::status_service::noise::{self, Kind};

use common::*;

#[test]
fn a_host_that_holds_the_offered_config_by_catch_up_says_from_whom_and_how_long_ago() {
    // host-b's catch-up takes generation 8 from host-a (as right after an
    // operator's apply, when host-b's catch-up beats host-a's pass-on).
    let mut c = Cluster::new(20);
    c.catch_up_every = Some(Duration::from_millis(200));
    c.seed(0, &config(8));
    c.start(0);
    c.start(1);
    let t0 = std::time::Instant::now();
    while c.settled_on_disk(1) != Some(8) {
        assert!(t0.elapsed() < T, "host-b did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The apply reaches host-a, which holds it and passes it on: host-b
    // refuses it as held and says how it came to hold it. host-a held it
    // before this apply, so its pass-on does not say it persisted it, and
    // nothing says the catch-up was part of this apply.
    let (_, hosts) = c.apply(0, &dev_key(), &config(8));
    let l = lines(&hosts);
    assert!(
        l[0].starts_with("host-a: refused: generation 8 is not newer"),
        "{l:?}"
    );
    let (head, how) = l[1]
        .split_once("; this host's catch-up took it from host-a ")
        .unwrap_or_else(|| panic!("host-b names its catch-up: {l:?}"));
    assert!(
        head.starts_with(
            "host-b: refused: generation 8 is not newer than this host's \
             generation 8: this host already holds this very config"
        ),
        "{l:?}"
    );
    let (ms, what) = how.split_once(" ms before this request (").expect("ms");
    assert!(ms.parse::<u64>().is_ok(), "{l:?}");
    assert_eq!(
        what, "generation 8 persisted (was 7); nothing changed but the generation)",
        "{l:?}"
    );
    assert_eq!(hosts[1].outcome, Outcome::Refused);
    assert!(hosts[1].holds, "host-b holds it: {l:?}");
    // An operator's apply that persists ends the note: host-b, asked for
    // generation 9, persists it, and a second apply of it is refused there
    // as held with no word of a catch-up. (host-a may take 9 by its own
    // catch-up first and say so: the race this note is for.)
    let (_, hosts) = c.apply(1, &dev_key(), &config(9));
    assert_eq!(hosts[1].outcome, Outcome::Applied, "{:?}", lines(&hosts));
    let (_, hosts) = c.apply(1, &dev_key(), &config(9));
    let l = lines(&hosts);
    assert!(
        l[1].starts_with("host-b: refused: generation 9 is not newer")
            && !l[1].contains("catch-up"),
        "{l:?}"
    );
}

#[test]
fn a_host_whose_catch_up_took_the_config_from_the_asked_host_during_the_apply_says_what_it_did() {
    // host-b listens but does not answer yet: host-a's pass-on waits for it
    // while host-b's catch-up takes generation 8 from host-a, which has just
    // persisted it (the race of an announced generation against the pass-on,
    // made to go one way).
    let c = Cluster::new(21);
    c.start(0);
    c.start(2);
    let b = c.start_paused(1);
    let (_, hosts) = std::thread::scope(|s| {
        let asked = s.spawn(|| c.apply(0, &dev_key(), &config(8)));
        wait_for("host-a persists generation 8", || {
            c.settled_on_disk(0) == Some(8)
        });
        assert_eq!(
            b.svc.catch_up_once(),
            ["from host-a: host-b: generation 8 persisted (was 7); nothing changed but the generation"]
        );
        b.serve();
        asked.join().unwrap()
    });
    let l = lines(&hosts);
    let persisted = |n: &str| {
        format!("{n}: generation 8 persisted (was 7); nothing changed but the generation")
    };
    assert_eq!([&l[0], &l[2]], [&persisted("host-a"), &persisted("host-c")]);
    // host-a persisted it in this apply, so host-b's catch-up from host-a
    // came after that: host-b answers what its catch-up did.
    let ms = l[1]
        .strip_prefix(&format!(
            "{}; taken by this host's catch-up from host-a ",
            persisted("host-b")
        ))
        .and_then(|r| r.strip_suffix(" ms before this request, during this apply"))
        .unwrap_or_else(|| panic!("host-b says its catch-up took it in this apply: {l:?}"));
    assert!(ms.parse::<u64>().is_ok(), "{l:?}");
    assert!(
        hosts
            .iter()
            .all(|h| h.outcome == Outcome::Applied && h.holds),
        "{hosts:?}"
    );
    assert_eq!([c.on_disk(0), c.on_disk(1), c.on_disk(2)], [8, 8, 8]);

    // Only the host the catch-up took it from, and only with its word that
    // it persisted it in this apply: from host-c, or from host-a without
    // the flag (or as a host without the pass-on message), host-b refuses
    // it as held and says how it came to hold it.
    let offer = |persisted_by_sender| {
        PassOn {
            config: c.signed(&config(8)),
            persisted_by_sender,
        }
        .encode()
    };
    let bare = c.signed(&config(8)).encode();
    for (from, kind, body) in [
        (2, Kind::PassOn, offer(true)),
        (0, Kind::PassOn, offer(false)),
        (0, Kind::Apply, bare),
    ] {
        let r = pass_on_as(&c, from, 1, kind, &body);
        assert_eq!(r.outcome, Outcome::Refused, "{r:?}");
        assert!(r.holds, "{r:?}");
        assert!(
            r.line.starts_with(
                "host-b: refused: generation 8 is not newer than this host's generation 8: this \
                 host already holds this very config"
            ) && r
                .line
                .contains("; this host's catch-up took it from host-a ")
                && r.line.ends_with(
                    " ms before this request (generation 8 persisted (was 7); nothing changed \
                     but the generation)"
                ),
            "{r:?}"
        );
    }
    // A body that is no pass-on: refused with the reason, nothing persisted.
    let r = pass_on_as(&c, 0, 1, Kind::PassOn, b"FTPASSON\x02\x01rest");
    assert_eq!(
        (r.outcome, r.holds, r.line.as_str()),
        (
            Outcome::Refused,
            false,
            "host-b: refused: pass-on body version 2: this build reads version 1 (is the \
             sending host newer?)"
        )
    );
}

/// Host `from` passes `body` on to host `to` over `kind`, as the test (it
/// has every host's key); `to`'s answer.
fn pass_on_as(c: &Cluster, from: usize, to: usize, kind: Kind, body: &[u8]) -> HostApplied {
    let (mut s, hello) = client::connect(c.addr(to), T).unwrap();
    let me = (NAMES[from], &host_key(from));
    let to_key = keys::host_public_key(&host_key(to));
    let bytes = noise::ask_with(&mut s, &hello, me, &to_key, kind, body).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn a_host_without_the_pass_on_message_is_passed_the_bare_config() {
    let c = Cluster::new(22);
    c.start(0);
    c.start(2);
    let older = older_host(&c, 1);
    let (_, hosts) = c.apply(0, &dev_key(), &config(8));
    assert_eq!(
        hosts[1].line, "host-b: persisted (an older host)",
        "{hosts:?}"
    );
    assert!(
        hosts.iter().all(|h| h.outcome == Outcome::Applied),
        "{hosts:?}"
    );
    let seen = older.lock().unwrap().clone();
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["host_pass_on", "host_apply"]);
    // The second time, the body is what such a host reads: a signed config
    // and nothing after it.
    assert_eq!(
        SignedConfig::decode(&seen[1].1).unwrap(),
        c.signed(&config(8))
    );
}

/// What a fake host was sent: each message's kind and body (empty when it
/// read none).
type Sent = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Host `i` as a host without `HostPassOn` answers: it refuses that message
/// before the handshake (its JSON decoder does not know the kind), takes
/// `HostApply` and says it persisted.
fn older_host(c: &Cluster, i: usize) -> Sent {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let l = TcpListener::bind(c.addr(i)).unwrap();
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let mut s = stream.unwrap();
            let nonce = [9u8; 32];
            let hello = ServerHello {
                version: config_schema::remote::VERSION,
                cluster: "demo".into(),
                host: NAMES[i].into(),
                nonce: hex::encode(nonce),
            };
            wire::write_frame(&mut s, &hello).unwrap();
            let msg: serde_json::Value = wire::read_frame(&mut s, 8 << 10).unwrap();
            let kind = msg["kind"].as_str().unwrap().to_string();
            if kind != "host_apply" {
                log.lock().unwrap().push((kind.clone(), Vec::new()));
                let reason = format!(
                    "status service: {} refuses a query: bad request: malformed message: \
                     unknown variant `{kind}`, expected one of `operator`, `host`, \
                     `host_apply`, `host_fetch`",
                    NAMES[i]
                );
                wire::write_frame(&mut s, &Reply::Refused { reason }).unwrap();
                continue;
            }
            let who = noise::Responder {
                cluster: "demo",
                me: NAMES[i],
                my_key: &host_key(i),
                nonce: &nonce,
            };
            let key_of = |h: &str| {
                let j = NAMES.iter().position(|n| *n == h)?;
                Some(keys::host_public_key(&host_key(j)))
            };
            let m1 = (
                msg["from"].as_str().unwrap(),
                msg["noise"].as_str().unwrap(),
            );
            noise::answer_with(&mut s, &who, m1, key_of, Kind::Apply, |body| {
                log.lock().unwrap().push((kind, body));
                serde_json::to_vec(&HostApplied {
                    host: NAMES[i].into(),
                    outcome: Outcome::Applied,
                    line: format!("{}: persisted (an older host)", NAMES[i]),
                    holds: true,
                })
                .unwrap()
            })
            .unwrap();
        }
    });
    seen
}
