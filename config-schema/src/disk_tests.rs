//! Tests of the config-disk format: every way a disk can be bad is refused
//! with its own reason, and nothing panics.

use super::*;
use crate::keys;
use proptest::prelude::*;
use ring::signature::KeyPair;

const EXAMPLE: &str = include_str!("../../examples/cluster.toml");
const HOST_A_KEY: &str = include_str!("../../examples/dev-keys/hosts/host-a.key");

fn signer() -> Ed25519KeyPair {
    let (doc, _) = keys::generate_signing_key().unwrap();
    keys::load_signing_key(&doc).unwrap()
}

fn example() -> ClusterConfig {
    crate::validate::parse(EXAMPLE).unwrap().config
}

fn host_a_key() -> [u8; 32] {
    keys::parse_hex_key(HOST_A_KEY).unwrap()
}

/// A good disk for host-a and the public key that verifies it.
fn good() -> (Vec<u8>, Vec<u8>) {
    let s = signer();
    let img = write_disk(&example(), "host-a", &host_a_key(), &s).unwrap();
    (img, s.public_key().as_ref().to_vec())
}

#[test]
fn round_trip() {
    let (img, pk) = good();
    assert_eq!(img.len(), DISK_LEN);
    assert!(looks_like_config_disk(&img[..512]));
    let v = read_disk(&img, &pk).unwrap();
    assert_eq!(v.config, example());
    assert_eq!(v.host_name, "host-a");
    assert_eq!(v.host_private_key, host_a_key());
    assert_eq!(v.generation(), 1);
    let rt = v.into_runtime();
    assert_eq!(rt.host_private_key, HOST_A_KEY.trim());
    assert_eq!(rt.this_host().id, 1);
    // The STATE sector of a fresh disk is blank.
    let st = &img[STATE_OFFSET as usize..];
    assert_eq!(decode_state(st).unwrap(), None);
}

#[test]
fn a_powered_off_vm_survives_the_disk_and_the_runtime_json() {
    let mut c = example();
    c.vms[0].power = crate::model::Power::Off;
    let s = signer();
    let img = write_disk(&c, "host-a", &host_a_key(), &s).unwrap();
    let v = read_disk(&img, s.public_key().as_ref()).unwrap();
    assert_eq!(v.config, c);
    // init hands the daemons the runtime config as JSON.
    let json = serde_json::to_vec(&v.into_runtime()).unwrap();
    let rt: RuntimeConfig = serde_json::from_slice(&json).unwrap();
    assert_eq!(rt.config.vms[0].power, crate::model::Power::Off);
}

#[test]
fn operators_survive_the_disk_and_the_runtime_json() {
    let mut c = example();
    c.operators = vec![crate::model::Operator {
        name: "alice".into(),
        public_key: "ab".repeat(32),
    }];
    let s = signer();
    let img = write_disk(&c, "host-a", &host_a_key(), &s).unwrap();
    let v = read_disk(&img, s.public_key().as_ref()).unwrap();
    assert_eq!(v.config, c);
    let json = serde_json::to_vec(&v.into_runtime()).unwrap();
    let rt: RuntimeConfig = serde_json::from_slice(&json).unwrap();
    assert_eq!(rt.config.operators, c.operators);
    // The operators are signed: a disk whose key was swapped does not verify.
    let at = img
        .windows(64)
        .position(|w| w == "ab".repeat(32).as_bytes())
        .expect("the key is in the signed bytes");
    let mut forged = img.clone();
    forged[at] = b'c';
    assert!(read_disk(&forged, s.public_key().as_ref()).is_err());
}

#[test]
fn signing_is_deterministic() {
    let s = signer();
    let a = write_disk(&example(), "host-a", &host_a_key(), &s).unwrap();
    let b = write_disk(&example(), "host-a", &host_a_key(), &s).unwrap();
    assert_eq!(a, b);
}

#[test]
fn truncated_disk() {
    let (img, pk) = good();
    for n in [0, 7, 19, 200, 1000, DISK_LEN - 1] {
        let e = read_disk(&img[..n], &pk).unwrap_err();
        assert!(matches!(e, DiskError::Truncated { .. }), "{n}: {e}");
    }
    assert!(e_str(read_disk(&img[..100], &pk)).starts_with("truncated"));
}

fn e_str(r: Result<VerifiedDisk, DiskError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn wrong_magic() {
    let (mut img, pk) = good();
    img[0] ^= 1;
    assert!(!looks_like_config_disk(&img));
    assert!(matches!(read_disk(&img, &pk), Err(DiskError::WrongMagic)));
}

#[test]
fn wrong_version() {
    let (mut img, pk) = good();
    for v in [1u32, 3] {
        img[8..12].copy_from_slice(&v.to_le_bytes());
        assert_eq!(
            e_str(read_disk(&img, &pk)),
            format!("unsupported format version {v} (this appliance reads version 2: make the disk again with its `ftctl make-disk`)")
        );
    }
}

#[test]
fn bad_signature() {
    let (mut img, pk) = good();
    let c = u32_at(&img, 12) as usize;
    let n = u32_at(&img, 16) as usize;
    img[HEADER_LEN + c + n + HOST_KEY_LEN + 5] ^= 0x40;
    assert!(matches!(read_disk(&img, &pk), Err(DiskError::BadSignature)));
}

#[test]
fn signature_by_another_key() {
    let (img, _) = good();
    let other = signer();
    assert!(matches!(
        read_disk(&img, other.public_key().as_ref()),
        Err(DiskError::BadSignature)
    ));
}

#[test]
fn payload_edited_after_signing() {
    let (img, pk) = good();
    // Every byte of the signed part matters, header included.
    for at in [9, 13, 17, 20, 40, 150, 300] {
        let mut bad = img.clone();
        bad[at] ^= 0x01;
        assert!(read_disk(&bad, &pk).is_err(), "byte {at}");
    }
    // A config edit in the body specifically is a bad signature.
    let mut bad = img.clone();
    let gen_pos = HEADER_LEN + 1 + "demo".len();
    assert_eq!(bad[gen_pos], 1, "generation byte");
    bad[gen_pos] = 9;
    assert!(matches!(read_disk(&bad, &pk), Err(DiskError::BadSignature)));
}

#[test]
fn absurd_lengths() {
    let (img, pk) = good();
    for (at, v) in [
        (12, u32::MAX),
        (12, 0),
        (16, 0),
        (16, 100_000),
        (16, u32::MAX),
    ] {
        let mut bad = img.clone();
        bad[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let e = read_disk(&bad, &pk).unwrap_err();
        assert!(matches!(e, DiskError::AbsurdLength { .. }), "{at}={v}: {e}");
    }
}

#[test]
fn bad_trust_root_length() {
    let (img, pk) = good();
    assert!(matches!(
        read_disk(&img, &pk[..31]),
        Err(DiskError::BadTrustRoot(31))
    ));
}

#[test]
fn signed_but_invalid_config_is_refused() {
    // Someone holding the key signs a config that breaks a rule by hand.
    let s = signer();
    let mut c = example();
    c.timing.failure_timeout_ms = c.timing.heartbeat_interval_ms;
    assert!(matches!(
        write_disk(&c, "host-a", &host_a_key(), &s),
        Err(DiskError::InvalidConfig(_))
    ));
    let img = sign_raw(&canonical::encode(&c), "host-a", &host_a_key(), &s);
    let e = read_disk(&img, s.public_key().as_ref()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("invalid config: timing.failure_timeout_ms:"),
        "{e}"
    );
}

#[test]
fn host_key_mismatch_and_unknown_host() {
    let s = signer();
    let wrong = [7u8; 32];
    assert!(matches!(
        write_disk(&example(), "host-a", &wrong, &s),
        Err(DiskError::HostKeyMismatch(_))
    ));
    let pk = s.public_key().as_ref().to_vec();
    let body = canonical::encode(&example());
    let img = sign_raw(&body, "host-a", &wrong, &s);
    assert!(matches!(
        read_disk(&img, &pk),
        Err(DiskError::HostKeyMismatch(_))
    ));
    let img = sign_raw(&body, "host-z", &host_a_key(), &s);
    assert!(matches!(
        read_disk(&img, &pk),
        Err(DiskError::UnknownHost(_))
    ));
    let img = sign_raw(&[1, 2, 3], "host-a", &host_a_key(), &s);
    assert!(matches!(
        read_disk(&img, &pk),
        Err(DiskError::MalformedPayload(_))
    ));
}

/// Builds a signed image without any validation (as an attacker with the key,
/// or a buggy tool, could).
fn sign_raw(body: &[u8], name: &str, key: &[u8; 32], s: &Ed25519KeyPair) -> Vec<u8> {
    let mut img = MAGIC.to_vec();
    img.extend(FORMAT_VERSION.to_le_bytes());
    img.extend((body.len() as u32).to_le_bytes());
    img.extend((name.len() as u32).to_le_bytes());
    img.extend(body);
    img.extend(name.as_bytes());
    img.extend(key);
    let sig = s.sign(&img);
    img.extend(sig.as_ref());
    img.resize(DISK_LEN, 0);
    img
}

#[test]
fn state_round_trip_and_corruption() {
    let s = encode_state(42);
    assert_eq!(s.len(), STATE_LEN);
    assert_eq!(decode_state(&s).unwrap(), Some(42));
    assert_eq!(decode_state(&vec![0; STATE_LEN]).unwrap(), None);
    assert!(matches!(
        decode_state(&s[..100]),
        Err(DiskError::Truncated { .. })
    ));
    for at in [0, 8, 16, 24, 30] {
        let mut bad = s.clone();
        bad[at] ^= 1;
        assert!(
            matches!(decode_state(&bad), Err(DiskError::StateCorrupt(_))),
            "byte {at}"
        );
    }
}

fn gen(g: u64) -> ConfigId {
    ConfigId::generation_only(g)
}

fn id(g: u64, d: u8) -> ConfigId {
    ConfigId {
        generation: g,
        digest: [d; 32],
    }
}

#[test]
fn rollback() {
    check_rollback(None, gen(1)).unwrap();
    check_rollback(Some(gen(5)), gen(5)).unwrap();
    check_rollback(Some(gen(5)), gen(6)).unwrap();
    let e = check_rollback(Some(gen(5)), gen(3)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rollback: offered generation 3 < accepted generation 5"
    );
    // Through the state sector as init does it.
    let accepted = decode_state_id(&encode_state(5)).unwrap();
    assert!(check_rollback(accepted, id(4, 0xff)).is_err());
    // A record without a digest lets any config of its generation through.
    check_rollback(accepted, id(5, 0x01)).unwrap();
}

#[test]
fn rollback_within_a_generation_follows_the_digest() {
    check_rollback(Some(id(5, 0x22)), id(5, 0x22)).unwrap();
    check_rollback(Some(id(5, 0x22)), id(5, 0x33)).unwrap();
    check_rollback(Some(id(5, 0x22)), id(6, 0x01)).unwrap();
    let e = check_rollback(Some(id(5, 0x22)), id(5, 0x11)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rollback: offered generation 5 has digest 11111111… below the accepted generation-5 \
         config's 22222222… (two configs of one generation: the higher digest wins; sign a \
         higher cluster.generation)"
    );
    let e = check_rollback(Some(id(5, 0x22)), id(4, 0xff)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "rollback: offered generation 4 < accepted generation 5"
    );
}

#[test]
fn a_version_2_record_round_trips_and_a_version_1_record_still_reads() {
    let s = encode_state_id(id(9, 0xab));
    assert_eq!(s.len(), STATE_LEN);
    assert_eq!(decode_state_id(&s).unwrap(), Some(id(9, 0xab)));
    assert_eq!(decode_state(&s).unwrap(), Some(9));
    // Every byte of a version-2 record is covered.
    for at in 0..STATE_RECORD_LEN + 4 {
        let mut bad = s.clone();
        bad[at] ^= 1;
        assert!(
            matches!(decode_state_id(&bad), Err(DiskError::StateCorrupt(_))),
            "byte {at}"
        );
    }
    // The layout before digests: generation only, digest unknown.
    let old = encode_state(7);
    assert_eq!(decode_state_id(&old).unwrap(), Some(gen(7)));
    // Record A old, record B new (an old disk after one apply): the higher counts.
    let mut mixed = old.clone();
    mixed[STATE_RECORD_B..STATE_RECORD_B + STATE_RECORD_LEN]
        .copy_from_slice(&encode_state_record(id(7, 0x01)));
    assert_eq!(decode_state_id(&mixed).unwrap(), Some(id(7, 0x01)));
    mixed[STATE_RECORD_B..STATE_RECORD_B + STATE_RECORD_LEN]
        .copy_from_slice(&encode_state_record(id(6, 0xff)));
    assert_eq!(decode_state_id(&mixed).unwrap(), Some(gen(7)));
    // A record of an unknown version is refused, naming it.
    let mut v3 = s.clone();
    v3[8] = 3;
    let e = decode_state_id(&v3).unwrap_err();
    assert_eq!(
        e.to_string(),
        "state sector corrupt: unsupported state version 3"
    );
}

#[test]
fn every_error_is_one_line() {
    let (img, pk) = good();
    let mut errors = vec![
        read_disk(&img[..3], &pk).unwrap_err(),
        read_disk(&[0u8; 64], &pk).unwrap_err(),
        check_rollback(Some(gen(2)), gen(1)).unwrap_err(),
        check_rollback(Some(id(2, 2)), id(2, 1)).unwrap_err(),
    ];
    let mut bad = img.clone();
    bad[30] ^= 1;
    errors.push(read_disk(&bad, &pk).unwrap_err());
    for e in errors {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let pk = [3u8; 32];
        prop_assert!(read_disk(&bytes, &pk).is_err());
        let _ = decode_state(&bytes);
    }

    #[test]
    fn random_bytes_after_magic_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..2048),
        pad in any::<bool>(),
    ) {
        let mut img = MAGIC.to_vec();
        img.extend(FORMAT_VERSION.to_le_bytes());
        img.extend(tail);
        if pad {
            img.resize(DISK_LEN, 0);
        }
        prop_assert!(read_disk(&img, &[3u8; 32]).is_err());
    }

    #[test]
    fn single_byte_flips_are_refused(at in any::<usize>(), bit in 0u8..8) {
        let (img, pk) = good();
        let end = HEADER_LEN + u32_at(&img, 12) as usize + u32_at(&img, 16) as usize
            + HOST_KEY_LEN + SIGNATURE_LEN;
        let at = at % end;
        let mut bad = img.clone();
        bad[at] ^= 1 << bit;
        prop_assert!(read_disk(&bad, &pk).is_err());
    }
}
