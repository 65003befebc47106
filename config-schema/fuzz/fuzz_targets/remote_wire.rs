//! Fuzz target: what the status service reads from the network before any
//! authentication (`remote::wire::decode_client`), then the signature check
//! of whatever decodes as an operator query, must never panic; no input
//! verifies (nobody but the operator's key signs), and whatever decodes must
//! round-trip through the encoder.
#![no_main]

use config_schema::model::Operator;
use config_schema::remote::auth::Operators;
use config_schema::remote::wire::{self, ClientMsg};
use libfuzzer_sys::fuzz_target;

/// RFC 8032 test 1's public key: a real point, so inputs reach verification.
const OPERATOR: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = wire::decode_client(data) else {
        return;
    };
    let mut again = Vec::new();
    wire::write_frame(&mut again, &msg).expect("a decoded message encodes");
    assert_eq!(wire::decode_client(&again).expect("re-decodes"), msg);
    if let ClientMsg::Operator { public_key, request, signature, noise } = msg {
        let mut c = config_schema::parse(include_str!("../../../examples/cluster.toml"))
            .expect("example config")
            .config;
        c.operators = vec![Operator { name: "o".into(), public_key: OPERATOR.into() }];
        let ops = Operators::of(&c);
        let nonce = [7u8; 32];
        assert!(ops
            .verify(("demo", "host-a", &nonce), &public_key, request, &signature, noise.as_bytes())
            .is_err());
    }
});
