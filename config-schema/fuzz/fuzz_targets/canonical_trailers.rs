//! Fuzz target: the trailers of the canonical encoding (1 `power`, 2
//! `replication`: vcpus, epoch_ms, `[[images]]`; 3 `[[operators]]`, 4
//! `cluster.accept_soft_watchdog`, 5 `hosts[].mgmt`, 6 `hosts[].storage`, 7
//! `cluster.vm_witness`, 8 `vms[].slot`, 9 `vms[].delta_cache_mib`),
//! which random disk bytes rarely reach through `config_disk`. Every input is
//! tried on its own and after the trailer-less encoding of
//! `examples/linux-vm.toml`; whatever decodes must re-encode to exactly the
//! input (one config, one encoding) and must not make validation panic.
#![no_main]

use std::sync::OnceLock;

use config_schema::canonical::{decode, encode};
use libfuzzer_sys::fuzz_target;

/// The example's bytes without trailers (its VMs lockstep, no images).
fn head() -> &'static [u8] {
    static HEAD: OnceLock<Vec<u8>> = OnceLock::new();
    HEAD.get_or_init(|| {
        let text = include_str!("../../../examples/linux-vm.toml");
        let mut c = config_schema::parse(text).expect("example parses").config;
        for vm in &mut c.vms {
            vm.replication = config_schema::Replication::Lockstep;
            vm.vcpus = 1;
            vm.epoch_ms = None;
        }
        c.images.clear();
        encode(&c)
    })
}

fn check(bytes: &[u8]) {
    if let Ok(c) = decode(bytes) {
        assert_eq!(encode(&c), bytes, "a second encoding of one config");
        let _ = config_schema::validate(&c);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut with_head = head().to_vec();
    with_head.extend_from_slice(data);
    check(&with_head);
});
