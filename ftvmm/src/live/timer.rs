//! The live tick source: a thread producing `InputEvent::TimerTick` at the
//! period PIT channel 0 is programmed to (periodic or one shot).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::EventQueue;
use crate::io::{InputEvent, TimerProgram};

/// Shortest period honoured (a guest asking for faster ticks gets these).
const MIN_PERIOD: Duration = Duration::from_micros(100);

struct State {
    program: TimerProgram,
    /// Bumped on every reprogramming so the thread restarts its schedule.
    generation: u64,
    shutdown: bool,
}

#[derive(Clone)]
pub struct TimerHandle(Arc<(Mutex<State>, Condvar)>);

impl TimerHandle {
    pub fn program(&self, program: TimerProgram) {
        let (m, cv) = &*self.0;
        let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
        s.program = program;
        s.generation += 1;
        cv.notify_all();
    }

    pub fn shutdown(&self) {
        let (m, cv) = &*self.0;
        m.lock().unwrap_or_else(|p| p.into_inner()).shutdown = true;
        cv.notify_all();
    }
}

pub fn spawn(queue: Arc<EventQueue>) -> std::io::Result<(TimerHandle, JoinHandle<()>)> {
    let h = TimerHandle(Arc::new((
        Mutex::new(State {
            program: TimerProgram::Off,
            generation: 0,
            shutdown: false,
        }),
        Condvar::new(),
    )));
    let inner = Arc::clone(&h.0);
    let t = std::thread::Builder::new()
        .name("ftvmm-timer".into())
        .spawn(move || run(&inner, &queue))?;
    Ok((h, t))
}

fn run(shared: &(Mutex<State>, Condvar), queue: &EventQueue) {
    let (m, cv) = shared;
    let mut s = m.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if s.shutdown {
            return;
        }
        let gen = s.generation;
        let (period, periodic) = match s.program {
            TimerProgram::Off => {
                s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            TimerProgram::Periodic { period_ns } => (Duration::from_nanos(period_ns), true),
            TimerProgram::OneShot { after_ns } => (Duration::from_nanos(after_ns), false),
        };
        let period = period.max(MIN_PERIOD);
        let mut deadline = Instant::now() + period;
        // Tick on schedule until reprogrammed.
        loop {
            let now = Instant::now();
            if now < deadline {
                let (g, _) = cv
                    .wait_timeout(s, deadline - now)
                    .unwrap_or_else(|p| p.into_inner());
                s = g;
                if s.shutdown || s.generation != gen {
                    break;
                }
                continue;
            }
            queue.push(InputEvent::TimerTick);
            if !periodic {
                s.program = TimerProgram::Off;
                break;
            }
            deadline += period;
            if deadline < now {
                // Far behind (host was busy): skip the missed periods.
                deadline = now + period;
            }
        }
    }
}
