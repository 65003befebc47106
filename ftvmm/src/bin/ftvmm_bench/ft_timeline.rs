//! The per-request timeline of the FT benchmark (issue 17): with FT on the Primary's own
//! recorder (`PrimaryLog::timeline`), with FT off the same recorder around the plain live
//! doors, where an output is released the moment the guest produces it. Printed as one table:
//! median / p99 per segment, FT off next to each FT-on controller.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use ftvmm::io::{ExitIndex, InputEvent, Inputs, OutputEvent, Outputs, TimeSource, TimerProgram};
use ftvmm::lockstep::primary::timeline::{SegmentReport, Timeline};

use crate::stats::median;

/// The FT-off recorder, shared by the two doors.
pub type Shared = Arc<Mutex<Timeline>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Timeline> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// The live input door, noting block completions for the FT-off timeline.
pub struct TimedInputs<I: Inputs> {
    pub inner: I,
    pub tl: Shared,
}

impl<I: Inputs> TimedInputs<I> {
    fn note(&self, evs: &[InputEvent]) {
        if !evs.is_empty() {
            lock(&self.tl).on_inputs(evs, None, Instant::now());
        }
    }
}

impl<I: Inputs> Inputs for TimedInputs<I> {
    fn events_at(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        let from = out.len();
        self.inner.events_at(n, out);
        self.note(&out[from..]);
    }
    fn time_read(&mut self, n: ExitIndex, source: TimeSource) -> u64 {
        self.inner.time_read(n, source)
    }
    fn events_at_halt(&mut self, n: ExitIndex, out: &mut Vec<InputEvent>) {
        let from = out.len();
        self.inner.events_at_halt(n, out);
        self.note(&out[from..]);
    }
    fn program_timer(&mut self, n: ExitIndex, program: TimerProgram) {
        self.inner.program_timer(n, program)
    }
    fn check_interval(&self) -> u64 {
        self.inner.check_interval()
    }
    fn check(&mut self, n: ExitIndex, rip: u64, gpr_hash: u64) {
        self.inner.check(n, rip, gpr_hash)
    }
    fn pause_at(&self) -> Option<ExitIndex> {
        self.inner.pause_at()
    }
}

/// The live output door: every output is released when produced.
pub struct TimedOutputs<O: Outputs> {
    pub inner: O,
    pub tl: Shared,
}

impl<O: Outputs> Outputs for TimedOutputs<O> {
    fn emit(&mut self, n: ExitIndex, event: OutputEvent) {
        let now = Instant::now();
        let trace = {
            let mut tl = lock(&self.tl);
            let id = tl.on_output(&event, now);
            if let Some(id) = id {
                tl.on_released(id, now);
            }
            id
        };
        self.inner.emit(n, event);
        if let Some(id) = trace {
            lock(&self.tl).on_wire(id, Instant::now());
        }
    }
}

/// Table rows: for each segment any column has, `p50 / p99 ms` per column (medians over
/// runs). `columns` are (label, one report per run).
pub fn rows(columns: &[(String, Vec<Vec<SegmentReport>>)]) -> Vec<(String, Vec<String>)> {
    let mut names: Vec<&'static str> = Vec::new();
    for (_, runs) in columns {
        for s in runs.iter().flatten() {
            if !names.contains(&s.segment) {
                names.push(s.segment);
            }
        }
    }
    let order = |n: &&str| {
        ftvmm::lockstep::primary::timeline::Segment::ALL
            .iter()
            .position(|s| s.name() == *n)
    };
    names.sort_by_key(order);
    names
        .iter()
        .map(|name| {
            let cells = columns
                .iter()
                .map(|(_, runs)| {
                    let pick = |f: fn(&SegmentReport) -> u64| {
                        let v: Vec<f64> = runs
                            .iter()
                            .filter_map(|r| r.iter().find(|s| s.segment == *name))
                            .map(|s| f(s) as f64 / 1e3)
                            .collect();
                        median(&v)
                    };
                    match (pick(|s| s.p50_us), pick(|s| s.p99_us)) {
                        (Some(a), Some(b)) => format!("{a:.3} / {b:.3}"),
                        _ => "-".into(),
                    }
                })
                .collect();
            (name.to_string(), cells)
        })
        .collect()
}

/// Prints the timeline table.
pub fn print(columns: &[(String, Vec<Vec<SegmentReport>>)], every: u64) {
    let rows = rows(columns);
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "Per-request timeline, KV runs (ms, median / p99 over sampled requests, 1 in {every}; \
         medians over runs)"
    );
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(7);
    let mut head = format!("| {:w0$} |", "segment");
    for (label, _) in columns {
        head.push_str(&format!(" {label:>22} |"));
    }
    println!("{head}");
    println!(
        "|{}|{}",
        "-".repeat(w0 + 2),
        columns
            .iter()
            .map(|_| format!("{}|", "-".repeat(24)))
            .collect::<String>()
    );
    for (name, cells) in rows {
        let mut line = format!("| {name:w0$} |");
        for c in cells {
            line.push_str(&format!(" {c:>22} |"));
        }
        println!("{line}");
    }
}
