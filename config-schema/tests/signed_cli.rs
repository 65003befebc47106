//! `ftctl verify` and `ftctl show` of a signed config (`ftctl sign`, a
//! `.ftcfg`): the operator checks it before `apply`, and compares the digest
//! with the one `sign` printed; a torn, edited or unsigned file is refused
//! with one line naming it.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{fails, ftctl, ok};

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cluster.toml")
}

/// A signing key and the example signed with it: `c.ftcfg`, and the digest
/// `sign` printed.
struct Signed {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    digest: String,
}

impl Signed {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let s = Signed {
            _dir: t,
            dir,
            digest: String::new(),
        };
        ok(&["keygen", "--out", &s.p("keys")]);
        let said = ok(&[
            "sign",
            "--config",
            example_config().to_str().unwrap(),
            "--key",
            &s.p("keys/signing.pk8"),
            "--out",
            &s.p("c.ftcfg"),
        ]);
        let digest = said.trim_end().rsplit_once("; digest ").unwrap().1;
        assert_eq!(digest.len(), 64, "{said}");
        Signed {
            digest: digest.to_string(),
            ..s
        }
    }
    fn p(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
    fn verify(&self, name: &str) -> Output {
        ftctl(&[
            "verify",
            "--file",
            &self.p(name),
            "--pubkey",
            &self.p("keys/signing.pub"),
        ])
    }
    /// Writes `bytes` as `name`; `verify` must refuse it with one line
    /// naming the file and containing `want`.
    fn refused(&self, name: &str, bytes: &[u8], want: &str) -> String {
        std::fs::write(self.p(name), bytes).unwrap();
        let o = self.verify(name);
        assert!(!o.status.success(), "{name} verified");
        let e = String::from_utf8(o.stderr).unwrap();
        assert_eq!(e.trim_end().lines().count(), 1, "{name}: {e:?}");
        assert!(e.starts_with("config refused: "), "{name}: {e}");
        assert!(e.contains(&self.p(name)) && e.contains(want), "{name}: {e}");
        e
    }
}

#[test]
fn verify_and_show_a_signed_config_with_the_digest_sign_printed() {
    let t = Signed::new();
    let o = t.verify("c.ftcfg");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.starts_with(&format!(
            "ok: signed config {} (for every host), cluster demo generation 1: 3 hosts, 1 VMs\n",
            t.p("c.ftcfg")
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("config digest: {} (", t.digest)),
        "{out}"
    );
    // --disk, the flag's first name, takes one too.
    let again = ok(&[
        "verify",
        "--disk",
        &t.p("c.ftcfg"),
        "--pubkey",
        &t.p("keys/signing.pub"),
    ]);
    assert_eq!(again, out);

    let shown = ok(&["show", "--file", &t.p("c.ftcfg")]);
    assert!(shown.starts_with("# signed config"), "{shown}");
    assert!(shown.contains("# NOT verified"), "{shown}");
    let back = config_schema::parse(&shown).unwrap().config;
    let text = std::fs::read_to_string(example_config()).unwrap();
    assert_eq!(back, config_schema::parse(&text).unwrap().config);
}

#[test]
fn a_corrupted_truncated_or_unsigned_file_is_refused_naming_it() {
    let t = Signed::new();
    let good = std::fs::read(t.p("c.ftcfg")).unwrap();

    // One byte flipped in the config, or in the signature.
    let mut b = good.clone();
    b[good.len() / 2] ^= 1;
    t.refused("edited.ftcfg", &b, "bad signature");
    let mut b = good.clone();
    *b.last_mut().unwrap() ^= 1;
    t.refused("sig.ftcfg", &b, "bad signature");
    // `show` checks nothing: it prints the latter, saying so.
    let shown = ok(&["show", "--file", &t.p("sig.ftcfg")]);
    assert!(shown.contains("# NOT verified"), "{shown}");

    // Torn: cut short anywhere after the magic, or too long.
    for (name, bytes) in [
        ("short.ftcfg", &good[..good.len() - 1]),
        ("half.ftcfg", &good[..good.len() / 2]),
        ("head.ftcfg", &good[..10]),
    ] {
        t.refused(name, bytes, "truncated signed config");
        let e = fails(&["show", "--file", &t.p(name)]);
        assert!(
            e.contains(&t.p(name)) && e.contains("truncated signed config"),
            "{e}"
        );
    }
    t.refused(
        "long.ftcfg",
        &[&good[..], b"\n"].concat(),
        "1 bytes after the signature",
    );

    // Unsigned: the TOML itself, or nothing.
    let toml = std::fs::read(example_config()).unwrap();
    for (name, bytes) in [("plain.ftcfg", &toml[..]), ("empty.ftcfg", &[][..])] {
        let e = t.refused(name, bytes, "is neither a signed config (`ftctl sign`)");
        assert!(e.starts_with("config refused: wrong magic: "), "{e}");
        let e = fails(&["show", "--file", &t.p(name)]);
        assert!(e.contains(&t.p(name)) && e.contains("wrong magic"), "{e}");
    }

    // Signed by another key.
    ok(&["keygen", "--out", &t.p("other")]);
    let e = fails(&[
        "verify",
        "--file",
        &t.p("c.ftcfg"),
        "--pubkey",
        &t.p("other/signing.pub"),
    ]);
    assert!(
        e.starts_with(&format!(
            "config refused: {}: bad signature",
            t.p("c.ftcfg")
        )),
        "{e}"
    );
}
