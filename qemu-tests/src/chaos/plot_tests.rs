//! Tests of the latency plot: it writes a non-empty SVG with the fault
//! labels, the points of each outcome, and copes with no operations.

use super::*;

fn ops() -> Vec<OpPoint> {
    (0..300u64)
        .map(|i| OpPoint {
            invoke_ms: i * 1_000,
            latency_ms: if (85..95).contains(&i) {
                2_500
            } else {
                5 + i % 7
            },
            outcome: match i % 50 {
                7 => Outcome::Fail,
                13 => Outcome::Unknown,
                _ => Outcome::Ok,
            },
        })
        .collect()
}

#[test]
fn writes_svg_with_fault_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.svg");
    let schedule = Schedule::generate(
        1,
        &["host-a", "host-b", "host-c"],
        300_000,
        &Params::default(),
    );
    plot_run(&path, "chaos seed 1", &ops(), &schedule).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        OpCounts::of(&ops()),
        OpCounts {
            ok: 288,
            fail: 6,
            unknown: 6
        }
    );
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.len() > 10_000, "only {} bytes", svg.len());
    assert!(svg.contains("chaos seed 1"));
    // One marker per op: circles for ok, polygons (triangles) for unknown.
    assert_eq!(
        svg.matches("<circle").count(),
        288 + 1,
        "ok points and legend"
    );
    assert_eq!(
        svg.matches("<polygon").count(),
        6 + 1,
        "unknown points and legend"
    );
    let windows = schedule.windows();
    assert!(!windows.is_empty());
    for w in &windows {
        let label = w
            .fault
            .to_string()
            .replace('>', "&gt;")
            .replace('<', "&lt;");
        assert!(svg.contains(&label), "no label {label:?}");
    }
    // Seed 1 slows a host and reboots killed ones: both are on the plot.
    assert!(windows
        .iter()
        .any(|w| w.fault.kind() == FaultKind::SlowHost));
    let reboots = schedule.reboot_windows();
    assert!(!reboots.is_empty());
    for w in &reboots {
        let label = w.fault.to_string();
        assert!(label.starts_with("reboot_host host-"), "{label}");
        assert!(svg.lines().any(|l| l.trim() == label), "no label {label:?}");
    }
    for legend in ["ok", "fail", "unknown", "latency (ms)", "invoke time (s)"] {
        // plotters writes a text's content on a line of its own.
        assert!(svg.lines().any(|l| l.trim() == legend), "no {legend:?}");
    }
}

#[test]
fn plots_a_run_without_ops_or_faults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.svg");
    let schedule = Schedule::generate(1, &["host-a"], 0, &Params::default());
    plot_run(&path, "empty", &[], &schedule).unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
}

#[test]
fn unwritable_path_is_an_error() {
    let schedule = Schedule::generate(1, &["host-a"], 1_000, &Params::default());
    let path = std::path::Path::new("/nonexistent-dir/x/run.svg");
    assert!(matches!(
        plot_run(path, "x", &ops(), &schedule),
        Err(ChaosError::Plot { .. })
    ));
}
