//! Tests of the two-slot config disk: a power cut at every write boundary
//! (and inside every write, and with unsynced writes lost or reordered)
//! leaves a disk that boots with the old or the new config, never neither
//! and never a mix; torn and garbage slots give clear errors.

use std::io;

use proptest::prelude::*;
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::*;
use crate::config_id::ConfigId;
use crate::disk::{decode_state, decode_state_id, encode_state, write_disk, STATE_LEN};
use crate::keys;
use crate::model::ClusterConfig;
use crate::persist::{persist, BlockDev, PersistError};

const HOST_A_KEY: &str = include_str!("../../examples/dev-keys/hosts/host-a.key");

fn signer() -> Ed25519KeyPair {
    keys::load_signing_key(&keys::generate_signing_key().unwrap().0).unwrap()
}

fn config(generation: u64) -> ClusterConfig {
    let mut c = crate::parse(include_str!("../../examples/cluster.toml"))
        .unwrap()
        .config;
    c.cluster.generation = generation;
    c
}

/// Configs of one generation that differ (in `timing.lag_limit_ms`), with
/// their ids, lowest id first.
fn same_generation(generation: u64, n: u64) -> Vec<(ClusterConfig, ConfigId)> {
    let mut v: Vec<_> = (0..n)
        .map(|k| {
            let mut c = config(generation);
            c.timing.lag_limit_ms = 400 + k;
            let id = ConfigId::of_canonical(generation, &crate::canonical::encode(&c));
            (c, id)
        })
        .collect();
    v.sort_by_key(|(_, id)| *id);
    v
}

fn key_a() -> [u8; 32] {
    keys::parse_hex_key(HOST_A_KEY).unwrap()
}

/// A device that records every write and sync, backed by memory.
#[derive(Default)]
struct Recorder {
    disk: Vec<u8>,
    /// (offset, data) per write; `None` for a sync.
    ops: Vec<Option<(u64, Vec<u8>)>>,
}

impl BlockDev for Recorder {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.disk[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let o = offset as usize;
        self.disk[o..o + data.len()].copy_from_slice(data);
        self.ops.push(Some((offset, data.to_vec())));
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.ops.push(None);
        Ok(())
    }
}

/// A device that stops writing after `budget` writes (the power cut).
struct CutAfter {
    disk: Vec<u8>,
    budget: usize,
}

impl BlockDev for CutAfter {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let o = offset as usize;
        buf.copy_from_slice(&self.disk[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.budget == 0 {
            return Err(io::Error::other("power cut"));
        }
        self.budget -= 1;
        let o = offset as usize;
        self.disk[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What init does at boot: the active slot, the STATE, the rollback check.
fn boot(image: &[u8], trust_root: &[u8]) -> Result<(ClusterConfig, String), String> {
    let a = read_active(image, trust_root).map_err(|e| e.to_string())?;
    let st =
        decode_state_id(&image[STATE_OFFSET as usize..][..STATE_LEN]).map_err(|e| e.to_string())?;
    disk::check_rollback(st, a.current.id).map_err(|e| e.to_string())?;
    Ok((a.current.disk.config, a.current.disk.host_name))
}

/// Every disk a cut during `ops` can leave, from `before`: each write
/// cut at several points inside it, with the unsynced writes before it
/// applied in order, or one of them lost (reordered past the cut).
/// `state_sector_atomic`: a STATE record write (one sector) lands whole
/// or not at all (see `a_blank_state_sector_relies_on_sector_atomicity`).
fn crash_images(
    before: &[u8],
    ops: &[Option<(u64, Vec<u8>)>],
    state_sector_atomic: bool,
) -> Vec<Vec<u8>> {
    let apply = |img: &mut Vec<u8>, (o, d): &(u64, Vec<u8>), n: usize| {
        let o = *o as usize;
        img[o..o + n].copy_from_slice(&d[..n]);
    };
    let mut out = vec![before.to_vec()];
    let mut synced = before.to_vec();
    let mut pending: Vec<&(u64, Vec<u8>)> = Vec::new();
    for op in ops {
        let Some(w) = op else {
            for p in pending.drain(..) {
                apply(&mut synced, p, p.1.len());
            }
            out.push(synced.clone());
            continue;
        };
        let cuts: Vec<usize> = if state_sector_atomic && w.0 >= STATE_OFFSET {
            vec![0, w.1.len()]
        } else {
            // Every 256 bytes (each sector boundary and mid-sector), plus a few odd ones.
            let mut c: Vec<usize> = (0..=w.1.len()).step_by(256).collect();
            c.extend([1, 7, 27, 29, 1000, w.1.len() - 1, w.1.len()]);
            c
        };
        for cut in cuts {
            let cut = cut.min(w.1.len());
            let mut img = synced.clone();
            for p in &pending {
                apply(&mut img, p, p.1.len());
            }
            apply(&mut img, w, cut);
            out.push(img);
            for lost in 0..pending.len() {
                let mut img = synced.clone();
                for (i, p) in pending.iter().enumerate() {
                    if i != lost {
                        apply(&mut img, p, p.1.len());
                    }
                }
                apply(&mut img, w, cut);
                out.push(img);
            }
        }
        pending.push(w);
    }
    out
}

/// Persists generation `g` on `image` and checks every crash image.
fn cut_everywhere(
    image: &[u8],
    s: &Ed25519KeyPair,
    (old, g): (u64, u64),
    state_sector_atomic: bool,
) -> Vec<u8> {
    cut_everywhere_with(image, s, (&config(old), &config(g)), state_sector_atomic)
}

/// [`cut_everywhere`] from config `old_c` to `new_c`; returns the new disk.
fn cut_everywhere_with(
    image: &[u8],
    s: &Ed25519KeyPair,
    (old_c, new_c): (&ClusterConfig, &ClusterConfig),
    state_sector_atomic: bool,
) -> Vec<u8> {
    let pk = s.public_key().as_ref();
    let (old, g) = (old_c.cluster.generation, new_c.cluster.generation);
    let sc = SignedConfig::sign(new_c, s).unwrap();
    let mut rec = Recorder {
        disk: image.to_vec(),
        ops: vec![],
    };
    let p = persist(&mut rec, pk, &sc).unwrap();
    assert_eq!((p.previous.generation, p.config.generation()), (old, g));
    let imgs = crash_images(image, &rec.ops, state_sector_atomic);
    let (mut saw_old, mut saw_new) = (0, 0);
    for (i, img) in imgs.iter().enumerate() {
        let (c, host) = boot(img, pk).unwrap_or_else(|e| panic!("crash image {i}: {e}"));
        assert_eq!(host, "host-a");
        if c == *new_c {
            saw_new += 1;
        } else {
            assert_eq!(c, *old_c, "crash image {i}: neither old nor new");
            saw_old += 1;
        }
    }
    // Not vacuous: some cuts keep the old config, some reach the new one.
    assert!(saw_old > 0 && saw_new > 0, "old {saw_old} new {saw_new}");
    // A cut after N writes (the simplest model) also boots.
    let writes = rec.ops.iter().flatten().count();
    for n in 0..=writes {
        let mut dev = CutAfter {
            disk: image.to_vec(),
            budget: n,
        };
        let r = persist(&mut dev, pk, &sc);
        assert_eq!(r.is_ok(), n == writes, "cut after {n} writes");
        let (c, _) = boot(&dev.disk, pk).unwrap();
        assert!(c == *old_c || c == *new_c);
        if n == writes {
            assert_eq!(c, *new_c);
        }
    }
    rec.disk
}

fn fresh(s: &Ed25519KeyPair) -> Vec<u8> {
    write_disk(&config(1), "host-a", &key_a(), s).unwrap()
}

#[test]
fn a_cut_at_any_write_leaves_the_old_or_the_new_config() {
    let s = signer();
    let mut img = fresh(&s);
    // As init leaves it after the first boot.
    img[STATE_OFFSET as usize..].copy_from_slice(&encode_state(1));
    // Byte-level tears everywhere, the STATE records included.
    let img = cut_everywhere(&img, &s, (1, 2), false); // into slot 1
    let img = cut_everywhere(&img, &s, (2, 3), false); // over the make-disk image in slot 0
    let img = cut_everywhere(&img, &s, (3, 5), false); // over slot 1
    let a = read_active(&img, s.public_key().as_ref()).unwrap();
    assert_eq!((a.current.slot, a.current.generation()), (1, 5));
    assert!(a.other_problem.is_none());
    let st = decode_state(&img[STATE_OFFSET as usize..]).unwrap();
    assert_eq!(st, Some(5));
}

/// With no STATE record yet (a disk init never booted: a running host
/// always has one, init records the generation before any daemon starts)
/// the first record has no other beside it, and a torn first record is a
/// damaged STATE, refused as before slots existed. So this case relies on a
/// one-sector write landing whole, as init's own STATE write always did.
/// A config over several write chunks (64 operators): any subset of its
/// chunks landing is a torn slot, never a config.
#[test]
fn a_slot_of_several_chunks_lands_whole_or_not_at_all() {
    let s = signer();
    let mut big = config(2);
    for i in 0..crate::validate::MAX_OPERATORS {
        let (_, public) = keys::generate_signing_key().unwrap();
        big.operators.push(crate::model::Operator {
            name: format!("operator-{i}"),
            public_key: hex::encode(public),
        });
    }
    let sc = SignedConfig::sign(&big, &s).unwrap();
    let len = encode_applied(&sc, "host-a", &key_a()).len();
    assert!(len > crate::persist::CHUNK, "{len} bytes");
    let mut img = fresh(&s);
    img[STATE_OFFSET as usize..].copy_from_slice(&encode_state(1));
    let img = cut_everywhere_with(&img, &s, (&config(1), &big), false);
    cut_everywhere_with(&img, &s, (&big, &config(3)), false);
}

#[test]
fn a_blank_state_sector_relies_on_sector_atomicity() {
    let s = signer();
    let img = cut_everywhere(&fresh(&s), &s, (1, 4), true);
    cut_everywhere(&img, &s, (4, 6), false);
}

#[test]
fn older_or_equal_generations_are_refused_with_both_numbers() {
    let s = signer();
    let pk = s.public_key().as_ref().to_vec();
    let mut rec = Recorder {
        disk: fresh(&s),
        ops: vec![],
    };
    persist(&mut rec, &pk, &SignedConfig::sign(&config(3), &s).unwrap()).unwrap();
    for g in [1, 2, 3] {
        let e = persist(&mut rec, &pk, &SignedConfig::sign(&config(g), &s).unwrap()).unwrap_err();
        assert!(
            matches!(e, PersistError::NotNewer { offered, current }
                if offered.generation == g && current.generation == 3),
            "{e}"
        );
        let want = if g == 3 {
            // The very config it holds: said so (the operator has nothing
            // to sign).
            let PersistError::NotNewer { current, .. } = &e else {
                unreachable!()
            };
            format!(
                "refused: generation 3 is not newer than this host's generation 3: this host already holds this very config (digest {})",
                current.short_digest()
            )
        } else {
            format!("refused: generation {g} is not newer than this host's generation 3 (sign a config with a higher cluster.generation)")
        };
        assert_eq!(e.to_string(), want);
    }
    // Another signer, or a config without this host: refused, disk unchanged.
    let before = rec.disk.clone();
    let other = signer();
    let e = persist(
        &mut rec,
        &pk,
        &SignedConfig::sign(&config(9), &other).unwrap(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("bad signature"), "{e}");
    let mut c = config(9);
    c.hosts[0].public_key = c.hosts[1].public_key.clone();
    c.hosts[1].public_key = hex::encode(keys::generate_host_key().unwrap().1);
    if let Ok(sc) = SignedConfig::sign(&c, &s) {
        let e = persist(&mut rec, &pk, &sc).unwrap_err();
        assert!(matches!(e, PersistError::HostChanged(_)), "{e}");
    }
    assert!(rec.disk == before);
}

#[test]
fn a_state_ahead_of_the_slots_refuses_what_it_must() {
    // STATE says 7 (a newer config was once accepted, then the disk was
    // rewritten with generation 1): 5 is refused, 8 accepted.
    let s = signer();
    let pk = s.public_key().as_ref().to_vec();
    let mut img = fresh(&s);
    img[STATE_OFFSET as usize..].copy_from_slice(&encode_state(7));
    let mut rec = Recorder {
        disk: img,
        ops: vec![],
    };
    let e = persist(&mut rec, &pk, &SignedConfig::sign(&config(5), &s).unwrap()).unwrap_err();
    assert!(matches!(
        e,
        PersistError::NotNewer { offered, current }
            if offered.generation == 5 && current == ConfigId::generation_only(7)
    ));
    // STATE of the layout before digests names generation 7 without one: a
    // generation-7 config is newer than it (the slots hold only 1).
    persist(&mut rec, &pk, &SignedConfig::sign(&config(7), &s).unwrap()).unwrap();
    persist(&mut rec, &pk, &SignedConfig::sign(&config(8), &s).unwrap()).unwrap();
}

#[test]
fn a_cut_at_any_write_replacing_a_config_of_the_same_generation_leaves_one_of_them() {
    let s = signer();
    let pk = s.public_key().as_ref().to_vec();
    let two = same_generation(2, 3);
    let mut img = fresh(&s);
    img[STATE_OFFSET as usize..].copy_from_slice(&encode_state(1));
    // Generation 2 (lowest digest) into slot 1, then a higher digest of
    // generation 2 over the make-disk image in slot 0, then the highest
    // over slot 1; byte-level tears everywhere.
    let img = cut_everywhere_with(&img, &s, (&config(1), &two[0].0), false);
    let img = cut_everywhere_with(&img, &s, (&two[0].0, &two[1].0), false);
    let img = cut_everywhere_with(&img, &s, (&two[1].0, &two[2].0), false);
    let a = read_active(&img, &pk).unwrap();
    assert_eq!((a.current.slot, a.current.id), (1, two[2].1));
    assert_eq!(
        decode_state_id(&img[STATE_OFFSET as usize..]).unwrap(),
        Some(two[2].1)
    );
    // Both slots hold generation 2: the higher digest counts, whichever slot.
    let other = read_slot(&img, 0, &pk).unwrap().unwrap();
    assert_eq!(other.id, two[1].1);
}

#[test]
fn a_make_disk_config_is_replaced_by_a_higher_digest_of_its_generation() {
    // The digest is of the canonical config, so a make-disk image and a
    // signed config of the same config are the same config.
    let s = signer();
    let pk = s.public_key().as_ref().to_vec();
    let made = fresh(&s);
    let made_id = read_active(&made, &pk).unwrap().current.id;
    assert_eq!(
        made_id,
        ConfigId::of_canonical(1, &crate::canonical::encode(&config(1)))
    );
    let mut rec = Recorder {
        disk: made.clone(),
        ops: vec![],
    };
    let e = persist(&mut rec, &pk, &SignedConfig::sign(&config(1), &s).unwrap()).unwrap_err();
    assert!(matches!(e, PersistError::NotNewer { offered, current }
        if offered == made_id && current == made_id));
    let ones = same_generation(1, 8);
    let above = ones
        .iter()
        .find(|(_, id)| *id > made_id)
        .expect("one of 8 above");
    let mut img = made;
    img[STATE_OFFSET as usize..].copy_from_slice(&encode_state(1));
    cut_everywhere_with(&img, &s, (&config(1), &above.0), false);
}

#[test]
fn two_configs_of_one_generation_end_as_the_higher_on_every_disk_in_any_order() {
    // X and Y: generation 8, Y's digest higher; W: generation 7. Each of
    // the 6 orders delivered twice over to a disk of its own (a host's
    // deliveries are serialized, hosts are independent, so every way three
    // hosts can receive them is among these): every disk ends on Y; whatever
    // comes after Y is refused with its reason and leaves the disk as it was.
    let s = signer();
    let pk = s.public_key().as_ref().to_vec();
    let eight = same_generation(8, 2);
    let (x, y) = (&eight[0], &eight[1]);
    let w = {
        let c = config(7);
        let id = ConfigId::of_canonical(7, &crate::canonical::encode(&c));
        (c, id)
    };
    let all = [&w, x, y];
    let orders: Vec<Vec<usize>> = vec![
        vec![0, 1, 2],
        vec![0, 2, 1],
        vec![1, 0, 2],
        vec![1, 2, 0],
        vec![2, 0, 1],
        vec![2, 1, 0],
    ];
    let mut endings = std::collections::BTreeSet::new();
    for (o, order) in orders.iter().enumerate() {
        let mut rec = Recorder {
            disk: fresh(&s),
            ops: vec![],
        };
        let mut held: Option<ConfigId> = None;
        for &k in order.iter().chain(order) {
            let (c, id) = all[k];
            let before = rec.disk.clone();
            match persist(&mut rec, &pk, &SignedConfig::sign(c, &s).unwrap()) {
                Ok(p) => {
                    assert!(
                        held.is_none_or(|h| *id > h),
                        "order {o}: took {id} over {held:?}"
                    );
                    assert_eq!(p.id, *id);
                    held = Some(*id);
                }
                Err(PersistError::NotNewer { offered, current }) => {
                    assert_eq!((offered, Some(current)), (*id, held), "order {o}");
                    assert!(*id <= current);
                    assert!(rec.disk == before, "a refusal wrote");
                    let e = PersistError::NotNewer { offered, current }.to_string();
                    if id.generation == 8 && *id < current {
                        assert_eq!(
                            e,
                            format!(
                                "refused: holds another generation-8 config with a higher \
                                 digest ({} > {}); the cluster converges on that one",
                                current.short_digest(),
                                id.short_digest()
                            )
                        );
                    } else {
                        assert!(
                            e.contains("is not newer than this host's generation"),
                            "{e}"
                        );
                    }
                }
                Err(e) => panic!("order {o}: {e}"),
            }
        }
        let a = read_active(&rec.disk, &pk).unwrap();
        assert_eq!(
            decode_state_id(&rec.disk[STATE_OFFSET as usize..]).unwrap(),
            Some(a.current.id)
        );
        endings.insert(a.current.id);
    }
    assert_eq!(endings.into_iter().collect::<Vec<_>>(), [y.1]);
}

#[test]
fn a_torn_slot_is_named_and_the_other_counts() {
    let s = signer();
    let pk = s.public_key().as_ref().to_vec();
    let mut rec = Recorder {
        disk: fresh(&s),
        ops: vec![],
    };
    persist(&mut rec, &pk, &SignedConfig::sign(&config(2), &s).unwrap()).unwrap();
    let mut img = rec.disk.clone();
    img[SLOT1_OFFSET + 30] ^= 0xff; // inside the canonical config
    let a = read_active(&img, &pk).unwrap();
    assert_eq!(a.current.generation(), 1);
    assert_eq!(
        a.other_problem.as_deref(),
        Some("slot 1: CRC-32C mismatch over slot 1's unsigned part (a torn write?)")
    );
    // Both bad: one error naming both.
    img[100] ^= 0xff;
    let e = read_active(&img, &pk).unwrap_err();
    assert!(matches!(e, DiskError::NoValidSlot { .. }));
    assert_eq!(
        e.to_string(),
        "no valid config in either slot: slot 0: bad signature: not signed by the trusted key, \
         or edited after signing; slot 1: CRC-32C mismatch over slot 1's unsigned part (a torn write?)"
    );
    // An old disk (slot 1 blank) keeps its own error.
    let mut old = fresh(&s);
    old[100] ^= 0xff;
    assert!(matches!(
        read_active(&old, &pk),
        Err(DiskError::BadSignature)
    ));
}

#[test]
fn an_applied_image_yields_its_signed_config_and_a_made_one_says_why_not() {
    let s = signer();
    let pk = s.public_key().as_ref().to_vec();
    let img = fresh(&s);
    let e = signed_of_image(&img, &pk).unwrap_err();
    assert!(e.to_string().contains("ftctl sign"), "{e}");
    let sc = SignedConfig::sign(&config(2), &s).unwrap();
    let mut rec = Recorder {
        disk: img,
        ops: vec![],
    };
    persist(&mut rec, &pk, &sc).unwrap();
    assert_eq!(signed_of_image(&rec.disk, &pk).unwrap(), sc);
}

fn applied_disk() -> (Vec<u8>, Vec<u8>) {
    let s = signer();
    let pk = s.public_key().as_ref().to_vec();
    let mut rec = Recorder {
        disk: fresh(&s),
        ops: vec![],
    };
    persist(&mut rec, &pk, &SignedConfig::sign(&config(2), &s).unwrap()).unwrap();
    (rec.disk, pk)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Garbage anywhere in slot 1 never panics and never yields a config
    /// other than the two written; with the magic and version 3 kept, the
    /// slot is refused with a reason and slot 0 counts.
    #[test]
    fn garbage_in_slot_1_is_refused_with_a_reason(
        at in 8usize..4096, bytes in proptest::collection::vec(any::<u8>(), 1..64)
    ) {
        let (mut img, pk) = applied_disk();
        let o = SLOT1_OFFSET + at;
        let old = img[o..o + bytes.len()].to_vec();
        img[o..o + bytes.len()].copy_from_slice(&bytes);
        let a = read_active(&img, &pk).unwrap();
        if old == bytes {
            prop_assert_eq!(a.current.generation(), 2);
        } else {
            prop_assert!([1, 2].contains(&a.current.generation()));
            if a.current.generation() == 1 && disk::u32_at(&img[SLOT1_OFFSET..], 8) == 3 {
                let why = a.other_problem.unwrap();
                prop_assert!(why.starts_with("slot 1: "), "{}", why);
            }
        }
    }

    /// Random bytes in both slots: an error whose text names the problem, no panic.
    #[test]
    fn random_slots_give_an_error_not_a_panic(
        a in proptest::collection::vec(any::<u8>(), 64..512),
        b in proptest::collection::vec(any::<u8>(), 64..512),
        v0 in 2u32..4, v1 in 2u32..4,
    ) {
        let (mut img, pk) = applied_disk();
        for (start, junk, v) in [(0, &a, v0), (SLOT1_OFFSET, &b, v1)] {
            img[start..start + junk.len()].copy_from_slice(junk);
            img[start..start + 8].copy_from_slice(&disk::MAGIC);
            img[start + 8..start + 12].copy_from_slice(&v.to_le_bytes());
        }
        let e = read_active(&img, &pk).unwrap_err();
        prop_assert!(!e.to_string().is_empty());
    }
}

#[test]
fn a_running_vm_removed_is_refused_and_the_disk_keeps_the_old_config() {
    let s = signer();
    let pk = s.public_key().as_ref().to_vec();
    let mut rec = Recorder {
        disk: fresh(&s),
        ops: vec![],
    };
    let mut gone = config(2);
    gone.vms.clear();
    let e = persist(&mut rec, &pk, &SignedConfig::sign(&gone, &s).unwrap()).unwrap_err();
    assert!(matches!(e, PersistError::Transition(_)), "{e}");
    assert!(
        e.to_string()
            .contains("vms[kv] would be removed while it runs"),
        "{e}"
    );
    assert!(rec.ops.is_empty(), "nothing written: {} ops", rec.ops.len());
    assert_eq!(boot(&rec.disk, &pk).unwrap().0.cluster.generation, 1);
    // Off first, then gone: both persist.
    let mut off = config(2);
    off.vms[0].power = crate::model::Power::Off;
    persist(&mut rec, &pk, &SignedConfig::sign(&off, &s).unwrap()).unwrap();
    gone.cluster.generation = 3;
    persist(&mut rec, &pk, &SignedConfig::sign(&gone, &s).unwrap()).unwrap();
    assert!(boot(&rec.disk, &pk).unwrap().0.vms.is_empty());
}
