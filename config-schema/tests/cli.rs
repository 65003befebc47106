//! Runs the built `ftctl` through the operator's path: keygen → make-disk →
//! verify → show, and through the ways it must fail (non-zero exit, one line).

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;
use common::{fails, ftctl, ok};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        ok(&["keygen", "--out", s(&dir.join("keys"))]);
        Setup { _dir: t, dir }
    }
    fn p(&self, name: &str) -> String {
        s(&self.dir.join(name)).to_string()
    }
    fn make_disk(&self, config: &str, out: &str) -> Output {
        self.make_disk_for("host-a", config, out)
    }

    /// [`Setup::make_disk`] for `host` (its development key).
    fn make_disk_for(&self, host: &str, config: &str, out: &str) -> Output {
        let key = examples().join(format!("dev-keys/hosts/{host}.key"));
        ftctl(&[
            "make-disk",
            "--config",
            config,
            "--host",
            host,
            "--key",
            &self.p("keys/signing.pk8"),
            "--host-key",
            s(&key),
            "--out",
            &self.p(out),
        ])
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn example_config() -> String {
    s(&examples().join("cluster.toml")).to_string()
}

/// The development operator's entry (as in the example's comment).
const DEV_OPERATOR: &str = "\n[[operators]]\nname = \"dev-operator\"\n\
    public_key = \"491e5d3ffbaed2abd578c1692b89612590695718a1cd59896843addc524597b0\"\n";

#[test]
fn keygen_make_disk_verify_show() {
    let t = Setup::new();
    assert_eq!(std::fs::read(t.p("keys/signing.pub")).unwrap().len(), 32);
    let o = t.make_disk(&example_config(), "a.img");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::metadata(t.p("a.img")).unwrap().len(), 1 << 20);

    let out = ok(&[
        "verify",
        "--disk",
        &t.p("a.img"),
        "--pubkey",
        &t.p("keys/signing.pub"),
    ]);
    assert!(
        out.starts_with("ok: host host-a (id 1), cluster demo generation 1"),
        "{out}"
    );
    assert!(out.contains("state: blank"), "{out}");

    let shown = ok(&["show", "--disk", &t.p("a.img")]);
    assert!(shown.contains("# host: host-a"), "{shown}");
    // What show prints is a config that parses back to the same thing.
    let back = config_schema::parse(&shown).unwrap().config;
    let orig = config_schema::parse(&std::fs::read_to_string(example_config()).unwrap())
        .unwrap()
        .config;
    assert_eq!(back, orig);

    assert!(ok(&["check", "--config", &example_config()]).starts_with("ok: cluster demo"));
    assert!(ok(&["state", "--disk", &t.p("a.img")]).starts_with("blank"));
}

#[test]
fn show_round_trips_a_config_without_groups_or_vms() {
    let t = Setup::new();
    let full = std::fs::read_to_string(example_config()).unwrap();
    let (i, j) = (
        full.find("[[host_groups]]").unwrap(),
        full.find("[[hosts]]").unwrap(),
    );
    let minimal = format!("{}{}", &full[..i], &full[j..full.find("[[vms]]").unwrap()]);
    std::fs::write(t.p("min.toml"), &minimal).unwrap();
    assert!(t.make_disk(&t.p("min.toml"), "m.img").status.success());
    let shown = ok(&["show", "--disk", &t.p("m.img")]);
    let back = config_schema::parse(&shown).unwrap().config;
    assert_eq!(back, config_schema::parse(&minimal).unwrap().config);
    assert!(back.vms.is_empty() && back.host_groups.is_empty());
}

#[test]
fn a_powered_off_vm_is_signed_shown_and_a_bad_power_refused() {
    let t = Setup::new();
    let full = std::fs::read_to_string(example_config()).unwrap();
    std::fs::write(t.p("off.toml"), format!("{full}power = \"off\"\n")).unwrap();
    let o = t.make_disk(&t.p("off.toml"), "off.img");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = ok(&[
        "verify",
        "--disk",
        &t.p("off.img"),
        "--pubkey",
        &t.p("keys/signing.pub"),
    ]);
    assert!(out.contains("1 VMs (1 powered off: kv)"), "{out}");
    let shown = ok(&["show", "--disk", &t.p("off.img")]);
    assert!(shown.contains("power = \"off\""), "{shown}");
    // The example, all on, says nothing about power.
    assert!(ok(&["check", "--config", &example_config()]).ends_with("1 VMs\n"));

    std::fs::write(t.p("bad.toml"), format!("{full}power = \"maybe\"\n")).unwrap();
    let err = fails(&["check", "--config", &t.p("bad.toml")]);
    assert!(
        err.contains("vms[0].power: VM \"kv\": \"maybe\" is neither \"on\" nor \"off\""),
        "{err}"
    );
}

#[test]
fn keygen_refuses_to_overwrite() {
    let t = Setup::new();
    let before = std::fs::read(t.p("keys/signing.pk8")).unwrap();
    let e = fails(&["keygen", "--out", &t.p("keys")]);
    assert!(e.contains("refusing to overwrite"), "{e}");
    assert_eq!(std::fs::read(t.p("keys/signing.pk8")).unwrap(), before);
}

#[test]
fn host_keygen_writes_hex_and_default_host_key_path_works() {
    let t = Setup::new();
    let out = ok(&[
        "host-keygen",
        "--out",
        &t.p("keys/hosts"),
        "--host",
        "host-a",
    ]);
    let public = std::fs::read_to_string(t.p("keys/hosts/host-a.pub")).unwrap();
    assert_eq!(out.trim(), format!("public_key = \"{}\"", public.trim()));
    assert_eq!(public.trim().len(), 64);
    // The new key is not the one in the example config: make-disk with the
    // default host-key path (<dir of --key>/hosts/host-a.key) must refuse.
    let e = fails(&[
        "make-disk",
        "--config",
        &example_config(),
        "--host",
        "host-a",
        "--key",
        &t.p("keys/signing.pk8"),
        "--out",
        &t.p("x.img"),
    ]);
    assert!(e.starts_with("host key mismatch"), "{e}");
    // With a config that carries the new key, it works.
    let text = std::fs::read_to_string(example_config()).unwrap().replace(
        "d85481f1e8c40b3fb18bc9a1404bfabe43f501e99c8ca25bfb341da6fdfffa26",
        public.trim(),
    );
    std::fs::write(t.p("c.toml"), text).unwrap();
    ok(&[
        "make-disk",
        "--config",
        &t.p("c.toml"),
        "--host",
        "host-a",
        "--key",
        &t.p("keys/signing.pk8"),
        "--out",
        &t.p("x.img"),
    ]);
}

#[test]
fn verify_failures_are_one_line_with_the_reason() {
    let t = Setup::new();
    assert!(t.make_disk(&example_config(), "a.img").status.success());
    let img = std::fs::read(t.p("a.img")).unwrap();
    let pubkey = t.p("keys/signing.pub");
    let check = |name: &str, bytes: &[u8], want: &str| {
        std::fs::write(t.p(name), bytes).unwrap();
        let e = fails(&["verify", "--disk", &t.p(name), "--pubkey", &pubkey]);
        assert!(
            e.starts_with(&format!("config refused: {want}")),
            "{name}: {e}"
        );
    };
    check("trunc.img", &img[..4000], "truncated");
    let mut b = img.clone();
    b[0] = b'X';
    check("magic.img", &b, "wrong magic");
    let mut b = img.clone();
    b[8] = 7;
    check("version.img", &b, "unsupported format version 7");
    let mut b = img.clone();
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    check("len.img", &b, "absurd length");
    let mut b = img.clone();
    b[60] ^= 1;
    check("edited.img", &b, "bad signature");
    check("zeros.img", &vec![0u8; 1 << 20], "wrong magic");

    // Signed by another key.
    ok(&["keygen", "--out", &t.p("other")]);
    let e = fails(&[
        "verify",
        "--disk",
        &t.p("a.img"),
        "--pubkey",
        &t.p("other/signing.pub"),
    ]);
    assert!(e.starts_with("config refused: bad signature"), "{e}");
}

#[test]
fn make_disk_and_check_refuse_bad_configs() {
    let t = Setup::new();
    let text = std::fs::read_to_string(example_config())
        .unwrap()
        .replace("failure_timeout_ms = 1000", "failure_timeout_ms = 50");
    std::fs::write(t.p("bad.toml"), text).unwrap();
    let e = fails(&["check", "--config", &t.p("bad.toml")]);
    assert!(e.contains("timing.failure_timeout_ms:"), "{e}");
    let o = t.make_disk(&t.p("bad.toml"), "bad.img");
    assert!(!o.status.success());
    assert!(!Path::new(&t.p("bad.img")).exists());
}

/// `check` and `make-disk` both refuse `text` with the one line `want`.
fn both_refuse(t: &Setup, name: &str, text: &str, want: &str) {
    std::fs::write(t.p(name), text).unwrap();
    let e = fails(&["check", "--config", &t.p(name)]);
    assert!(e.ends_with(want), "{e}");
    let o = t.make_disk(&t.p(name), "bad.img");
    assert!(!o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.trim_end().ends_with(want), "{err}");
    assert!(!Path::new(&t.p("bad.img")).exists());
}

#[test]
fn unknown_image_and_too_little_memory_are_refused() {
    let t = Setup::new();
    let example = std::fs::read_to_string(example_config()).unwrap();
    both_refuse(
        &t,
        "ubuntu.toml",
        &example.replace("image = \"kv-guest\"", "image = \"ubuntu\""),
        "vms[0].image: unknown guest image \"ubuntu\": this release ships \"kv-guest\"",
    );
    both_refuse(
        &t,
        "small.toml",
        &example.replace("memory_mib = 64", "memory_mib = 4"),
        "vms[0].memory_mib: 4 MiB is too little for image \"kv-guest\": it needs at least 8 MiB",
    );
}

#[test]
fn config_without_affinity_passes_check_and_make_disk() {
    let t = Setup::new();
    let text = std::fs::read_to_string(example_config()).unwrap().replace(
        "affinity = { groups = [\"rack-1\"], hosts = [\"host-c\"] }\n",
        "",
    );
    assert!(!text.contains("affinity"));
    // With an operator, so that check has nothing at all to warn of.
    std::fs::write(t.p("any.toml"), text + DEV_OPERATOR).unwrap();
    let o = ftctl(&["check", "--config", &t.p("any.toml")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = t.make_disk(&t.p("any.toml"), "any.img");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn check_warns_of_a_config_without_operators_and_passes_it() {
    let t = Setup::new();
    let want = "warning: operators: none listed, so no host will answer `ftctl status \
                --cluster`, `ftctl apply`, `ftctl metrics` or the status page";
    let o = ftctl(&["check", "--config", &example_config()]);
    assert!(o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.starts_with(want), "{err}");
    assert!(
        err.contains(
            "`ftctl operator-keygen --out ~/.ft --name alice` and paste the \
                      [[operators]] entry it prints"
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(String::from_utf8(o.stdout)
        .unwrap()
        .starts_with("ok: cluster demo"));

    // So do make-disk and sign, after what they wrote.
    let sign = |config: &str, out: &str| {
        ftctl(&[
            "sign",
            "--config",
            config,
            "--key",
            &t.p("keys/signing.pk8"),
            "--out",
            &t.p(out),
        ])
    };
    for o in [
        t.make_disk(&example_config(), "no-op.img"),
        sign(&example_config(), "no-op.ftcfg"),
    ] {
        assert!(o.status.success());
        let err = String::from_utf8(o.stderr).unwrap();
        assert!(err.starts_with(want), "{err}");
        assert!(String::from_utf8(o.stdout).unwrap().starts_with("wrote "));
    }

    let text = std::fs::read_to_string(example_config()).unwrap() + DEV_OPERATOR;
    std::fs::write(t.p("op.toml"), text).unwrap();
    for o in [
        ftctl(&["check", "--config", &t.p("op.toml")]),
        t.make_disk(&t.p("op.toml"), "op.img"),
        sign(&t.p("op.toml"), "op.ftcfg"),
    ] {
        assert!(o.status.success());
        assert!(
            o.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn make_disk_prints_warnings() {
    let t = Setup::new();
    let text = std::fs::read_to_string(example_config()).unwrap().replace(
        "affinity = { groups = [\"rack-1\"], hosts = [\"host-c\"] }",
        "affinity = { hosts = [\"host-a\"] }",
    );
    std::fs::write(t.p("one.toml"), text).unwrap();
    let o = t.make_disk(&t.p("one.toml"), "one.img");
    assert!(o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        err.contains(
            "warning: vms[0].affinity: VM kv will run unprotected: its affinity allows only host-a"
        ),
        "{err}"
    );
}

#[test]
fn ft_addresses_in_different_subnets_warn_at_check_and_make_disk() {
    let t = Setup::new();
    let text = std::fs::read_to_string(example_config())
        .unwrap()
        .replace("addr = \"192.0.2.3/24\"", "addr = \"203.0.113.3/24\"");
    std::fs::write(t.p("split.toml"), text).unwrap();
    let want = "warning: hosts[2].ft.addr: FT addresses of host-a (192.0.2.1/24, subnet \
                192.0.2.0/24) and host-c (203.0.113.3/24, subnet 203.0.113.0/24) are not in one subnet";
    let o = ftctl(&["check", "--config", &t.p("split.toml")]);
    assert!(o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains(want), "{err}");
    let o = t.make_disk(&t.p("split.toml"), "split.img");
    assert!(o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains(want), "{err}");
}

#[test]
fn test_hooks_get_a_loud_banner_from_check_make_disk_and_verify() {
    let t = Setup::new();
    let text =
        std::fs::read_to_string(example_config()).unwrap() + "\n[test]\nhooks = [\"vmctl\"]\n";
    std::fs::write(t.p("hooks.toml"), text).unwrap();
    let banner = "!! THIS CONFIG ENABLES TEST HOOKS (vmctl): NOT FOR PRODUCTION.";
    let o = ftctl(&["check", "--config", &t.p("hooks.toml")]);
    assert!(o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains(banner), "{err}");
    assert!(
        err.contains("warning: test.hooks: TEST HOOKS ENABLED (vmctl)"),
        "{err}"
    );
    let o = t.make_disk(&t.p("hooks.toml"), "hooks.img");
    assert!(o.status.success());
    assert!(String::from_utf8(o.stderr).unwrap().contains(banner));
    let out = ok(&[
        "verify",
        "--disk",
        &t.p("hooks.img"),
        "--pubkey",
        &t.p("keys/signing.pub"),
    ]);
    assert!(out.contains(banner), "{out}");
    // The section survives `show` (TOML out) and the example has none.
    assert!(ok(&["show", "--disk", &t.p("hooks.img")]).contains("[test]\nhooks = [\"vmctl\"]"));
    let o = ftctl(&["check", "--config", &example_config()]);
    assert!(!String::from_utf8(o.stderr).unwrap().contains("TEST HOOKS"));
}

#[test]
fn update_disk_keeps_state_and_refuses_rollback() {
    let t = Setup::new();
    let v2 = std::fs::read_to_string(example_config())
        .unwrap()
        .replace("generation = 1", "generation = 2");
    std::fs::write(t.p("v2.toml"), v2).unwrap();
    assert!(t.make_disk(&example_config(), "v1.img").status.success());
    assert!(t.make_disk(&t.p("v2.toml"), "v2.img").status.success());
    // The host accepted generation 2: init wrote the STATE sector.
    let mut live = std::fs::read(t.p("v2.img")).unwrap();
    let off = config_schema::disk::STATE_OFFSET as usize;
    live[off..off + 4096].copy_from_slice(&config_schema::disk::encode_state(2));
    std::fs::write(t.p("live.img"), &live).unwrap();
    assert!(ok(&["state", "--disk", &t.p("live.img")]).contains("accepted generation 2"));

    let pk = t.p("keys/signing.pub");
    let e = fails(&[
        "update-disk",
        "--disk",
        &t.p("live.img"),
        "--from",
        &t.p("v1.img"),
        "--pubkey",
        &pk,
    ]);
    assert_eq!(
        e,
        "config refused: rollback: offered generation 1 < accepted generation 2"
    );
    ok(&[
        "update-disk",
        "--disk",
        &t.p("live.img"),
        "--from",
        &t.p("v2.img"),
        "--pubkey",
        &pk,
    ]);
    assert!(ok(&["state", "--disk", &t.p("live.img")]).contains("accepted generation 2"));
    // A disk no host booted yet (blank STATE) does not go back either: what
    // it holds is the floor.
    let offline = t.p("v2-offline.img");
    std::fs::copy(t.p("v2.img"), &offline).unwrap();
    let e = fails(&[
        "update-disk",
        "--disk",
        &offline,
        "--from",
        &t.p("v1.img"),
        "--pubkey",
        &pk,
    ]);
    assert!(
        e.starts_with("config refused: rollback: offered generation 1"),
        "{e}"
    );
    // Nor does it become another host's disk.
    let o = t.make_disk_for("host-b", &t.p("v2.toml"), "b.img");
    assert!(o.status.success(), "{o:?}");
    let e = fails(&[
        "update-disk",
        "--disk",
        &offline,
        "--from",
        &t.p("b.img"),
        "--pubkey",
        &pk,
    ]);
    assert!(
        e.contains("is host-a's config disk and") && e.contains("is host-b's"),
        "{e}"
    );
}

#[test]
fn status_of_a_missing_socket_fails() {
    let e = fails(&["status", "--socket", "/nonexistent/ft.sock"]);
    assert!(e.contains("no status from /nonexistent/ft.sock"), "{e}");
}

#[test]
fn status_pretty_prints_a_daemon_answer() {
    use config_schema::ctl::{read_message, write_message, Request, Response};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut r = std::io::BufReader::new(conn.try_clone().unwrap());
        let req: Request = read_message(&mut r, "test").unwrap();
        assert_eq!(req, Request::Status);
        let status = serde_json::json!({"daemon": "test", "kvm": true});
        write_message(&mut &conn, &Response::Status { status }).unwrap();
    });
    let out = ok(&["status", "--socket", s(&sock)]);
    server.join().unwrap();
    assert!(out.contains("\"daemon\": \"test\""), "{out}");
}

#[test]
fn check_prints_the_management_network() {
    let t = Setup::new();
    let text = std::fs::read_to_string(example_config()).unwrap();
    let line = "vm = { mac = \"52:54:00:f8:00:02\", addr = \"198.51.100.2/24\" }\n";
    assert!(text.contains(line));
    let mgmt = |addr: &str| {
        text.replacen(
            line,
            &format!("{line}mgmt = {{ mac = \"52:54:00:f9:00:02\", addr = \"{addr}\" }}\n"),
            1,
        )
    };
    std::fs::write(t.p("mgmt.toml"), mgmt("203.0.113.2/24")).unwrap();
    let out = ok(&["check", "--config", &t.p("mgmt.toml")]);
    assert!(
        out.ends_with(
            "management network: host-b at 203.0.113.2/24 (NIC 52:54:00:f9:00:02); \
             status service 203.0.113.2:7401\n"
        ),
        "{out}"
    );
    assert_eq!(out.matches("management network").count(), 1, "{out}");
    // The example has none.
    assert!(!ok(&["check", "--config", &example_config()]).contains("management"));
    // On the FT subnet: refused, naming the host and the field.
    std::fs::write(t.p("bad.toml"), mgmt("192.0.2.102/24")).unwrap();
    let e = fails(&["check", "--config", &t.p("bad.toml")]);
    assert!(
        e.contains("hosts[1].mgmt.addr: host host-b: management subnet 192.0.2.0/24"),
        "{e}"
    );
}
