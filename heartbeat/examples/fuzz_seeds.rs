//! Writes seed inputs for the `packet` fuzz target into the directory given
//! as the only argument: a sealed heartbeat (host-b → host-a with the fuzz
//! target's keys), and the plain payloads inside (empty and full view).

use heartbeat::packet::{self, Entry, Header, Payload};

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: fuzz_seeds DIR"))?;
    let a_pub = config_schema::keys::host_public_key(&[0x11; 32]);
    let full = Payload {
        sender: 2,
        boot_id: 0x0123_4567_89ab_cdef,
        seq: 7,
        view: vec![
            Entry {
                host: 1,
                alive: true,
                heard: Some((1, 6)),
            },
            Entry {
                host: 3,
                alive: false,
                heard: None,
            },
        ],
        vm: Some(heartbeat::packet::VmReport {
            watch_ms: 5000,
            quiet_ms: 0,
            hears: vec![1, 3],
            witness: None,
        }),
    };
    let mut with_witness = full.clone();
    if let Some(vm) = with_witness.vm.as_mut() {
        vm.witness = Some(true);
    }
    let empty = Payload {
        view: vec![],
        vm: None,
        ..full.clone()
    };
    let h = Header {
        sender: 2,
        receiver: 1,
    };
    let sealed = packet::seal(h, &full, &[0x22; 32], &a_pub)?;
    for (name, bytes) in [
        ("sealed-b-to-a", sealed),
        ("payload-full", full.encode()),
        ("payload-empty", empty.encode()),
        ("payload-witness", with_witness.encode()),
    ] {
        std::fs::write(format!("{dir}/{name}"), bytes)?;
    }
    Ok(())
}
