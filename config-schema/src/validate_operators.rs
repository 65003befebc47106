//! Validation of `[[operators]]`: names, keys, how many.
//!
//! Rules: each operator has a valid, unique name (the alphabet of
//! [`check_name`]); each key is 64 hex digits of an Ed25519 public key, not a
//! degenerate one, unique across operators; at most
//! [`MAX_OPERATORS`] (the hosts check a query's key against every one).
//!
//! None at all is valid, but every host then refuses every network query
//! (status, apply, metrics, the status page): [`no_operators_warning`] says
//! so, for `ftctl check` only (its doc says why).

use super::{check_name, parse_key_hex, ConfigError, Unique, Warning};
use crate::model::ClusterConfig;

/// Most operators a config may list.
pub const MAX_OPERATORS: usize = 64;

pub(super) fn check_operators(c: &ClusterConfig) -> Result<(), ConfigError> {
    if c.operators.len() > MAX_OPERATORS {
        return Err(ConfigError::at(
            "operators",
            format!(
                "{} operators listed; at most {MAX_OPERATORS}",
                c.operators.len()
            ),
        ));
    }
    let mut names = Unique::new("operator name");
    let mut keys = Unique::new("operator key");
    for (i, o) in c.operators.iter().enumerate() {
        let p = format!("operators[{i}]");
        check_name(&format!("{p}.name"), &o.name)?;
        names.insert(o.name.as_str(), &format!("{p}.name"), &o.name)?;
        let kp = format!("{p}.public_key");
        let key = parse_key_hex(&o.public_key).ok_or_else(|| {
            ConfigError::at(
                &kp,
                format!(
                    "operator {:?}: must be a 32-byte Ed25519 public key as 64 hex digits \
                     (`ftctl operator-keygen` prints it)",
                    o.name
                ),
            )
        })?;
        if !is_ed25519_point(&key) {
            return Err(ConfigError::at(
                &kp,
                format!(
                    "operator {:?}: {} is a degenerate key (all zeros or the identity point), \
                     not an operator's public key",
                    o.name, o.public_key
                ),
            ));
        }
        keys.insert(key, &kp, &o.public_key)?;
    }
    Ok(())
}

/// The warning for a config without `[[operators]]`, and how to fix it.
///
/// Not one of [`super::validate`]'s warnings: those reach init's console at
/// every boot, `make-disk`, `sign` and `verify`, and the example config
/// leaves operators out on purpose (its canonical bytes are pinned), with
/// many tests asserting it validates without a warning. `ftctl check`, where
/// an operator writes a config, prints this one.
pub fn no_operators_warning(c: &ClusterConfig) -> Option<Warning> {
    if !c.operators.is_empty() {
        return None;
    }
    Some(Warning {
        path: "operators".into(),
        message: "none listed, so no host will answer `ftctl status --cluster`, `ftctl apply`, \
                  `ftctl metrics` or the status page (`ftctl page`): every network query is \
                  refused; make an operator key with `ftctl operator-keygen --out ~/.ft --name \
                  alice` and paste the [[operators]] entry it prints into this config"
            .into(),
    })
}

/// Whether `key` is not one of the degenerate encodings a copy-paste slip
/// or a zeroed buffer produces (all zeros; the identity point, `01 00 … 00`).
/// ring offers no point check of its own, and a key that is not a point only
/// makes every query with it fail, so this is a guard against mistakes, not
/// a cryptographic check.
fn is_ed25519_point(key: &[u8; 32]) -> bool {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    *key != [0u8; 32] && *key != identity
}

#[cfg(test)]
mod tests {
    use crate::validate::parse;

    fn with(block: &str) -> Result<(), String> {
        let text = format!("{}\n{block}", include_str!("../../examples/cluster.toml"));
        parse(&text).map(|_| ()).map_err(|e| e.to_string())
    }

    fn op(name: &str, key: &str) -> String {
        format!("[[operators]]\nname = \"{name}\"\npublic_key = \"{key}\"\n")
    }

    #[test]
    fn good_operators_pass() {
        let k = "ab".repeat(32);
        with(&format!(
            "{}{}",
            op("alice", &k),
            op("bob", &"cd".repeat(32))
        ))
        .unwrap();
    }

    #[test]
    fn each_mistake_names_the_field() {
        let k = "ab".repeat(32);
        for (block, want) in [
            (op("", &k), "operators[0].name: must not be empty"),
            (op("al ice", &k), "operators[0].name: \"al ice\" may use only"),
            (op("alice", "abc"), "operators[0].public_key: operator \"alice\": must be a 32-byte Ed25519 public key"),
            (op("alice", &"00".repeat(32)), "operators[0].public_key: operator \"alice\": 0000"),
            (
                format!("{}{}", op("alice", &k), op("alice", &"cd".repeat(32))),
                "operators[1].name: duplicate operator name alice: already used by operators[0].name",
            ),
            (
                format!("{}{}", op("alice", &k), op("bob", &k)),
                "operators[1].public_key: duplicate operator key",
            ),
            ("[[operators]]\nname = \"a\"\n".to_string(), "missing field `public_key`"),
            (
                format!("{}key = 1\n", op("a", &k)),
                "unknown field `key`",
            ),
        ] {
            let e = with(&block).unwrap_err();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
        }
    }

    #[test]
    fn none_is_valid_but_warned_of_apart() {
        let example = parse(include_str!("../../examples/cluster.toml")).unwrap();
        assert!(example.warnings.is_empty(), "{:?}", example.warnings);
        let w = super::no_operators_warning(&example.config).unwrap();
        assert_eq!(w.path, "operators");
        assert!(w.message.contains("ftctl operator-keygen"), "{w}");
        let text = format!(
            "{}\n{}",
            include_str!("../../examples/cluster.toml"),
            op("alice", &"ab".repeat(32))
        );
        let one = parse(&text).unwrap();
        assert!(one.warnings.is_empty(), "{:?}", one.warnings);
        assert_eq!(super::no_operators_warning(&one.config), None);
    }

    #[test]
    fn too_many_operators() {
        let block: String = (0..=super::MAX_OPERATORS)
            .map(|i| op(&format!("o{i}"), &format!("{:064x}", i + 2)))
            .collect();
        let e = with(&block).unwrap_err();
        assert!(
            e.contains("operators: 65 operators listed; at most 64"),
            "{e}"
        );
    }
}
