//! The checker around the model: the properties (`member_model.rs` says
//! what each claims) and a run that prints its counts and any trace.

use std::time::Instant;

use ftvmm::lockstep::member::{Halt, State};
use stateright::{Checker, Model, Property};

use super::{Act, Body, Bounds, Run, Sys};

pub struct MemberModel {
    pub b: Bounds,
}

impl Model for MemberModel {
    type State = Sys;
    type Action = Act;

    fn init_states(&self) -> Vec<Sys> {
        vec![Sys::initial(&self.b)]
    }

    fn actions(&self, s: &Sys, out: &mut Vec<Act>) {
        s.actions(&self.b, out);
    }

    fn next_state(&self, s: &Sys, a: Act) -> Option<Sys> {
        Some(s.step(&self.b, a))
    }

    fn within_boundary(&self, s: &Sys) -> bool {
        s.max_gen() <= self.b.max_gen
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut p = vec![
            Property::always("output in g only from the member that won g", owner_only),
            Property::always(
                "no unvouched output of g after output of a later generation",
                |_, s: &Sys| !s.flags.stale_open,
            ),
            Property::always("acks vouch only for their own generation", |_, s: &Sys| {
                !s.flags.ack_other_gen && !s.flags.unowned_release
            }),
            Property::always(
                "a gate is open only in an owned generation, one per generation",
                gates,
            ),
            Property::always("Member::on_event asserts hold", |_, s: &Sys| {
                s.flags.member_assert.is_none()
            }),
            Property::always(
                "no two members release output in the same generation",
                |_, s: &Sys| !s.flags.two_releasers,
            ),
            Property::always(
                "a restored copy acts in no generation before Paired",
                copies_idle,
            ),
            Property::sometimes("a Secondary goes live", |_, s: &Sys| {
                matches!(s.nodes[1].state(), Some(State::Solo { .. }))
            }),
            Property::sometimes(
                "the Primary continues alone",
                |_, s: &Sys| matches!(s.nodes[0].state(), Some(State::Solo { g }) if g >= &2),
            ),
            Property::sometimes("a storage hand-over completes", |_, s: &Sys| {
                !s.flags.left_host
                    && matches!(
                        s.nodes[0].state(),
                        Some(State::Halted(Halt::HandedOver { to_secondary: true }))
                    )
            }),
            Property::sometimes(
                "a Primary that left its host handed over and its Secondary went live",
                |_, s: &Sys| {
                    s.flags.left_host
                        && matches!(
                            s.nodes[0].state(),
                            Some(State::Halted(Halt::HandedOver { to_secondary: true }))
                        )
                        && matches!(s.nodes[1].state(), Some(State::Solo { .. }))
                },
            ),
            Property::sometimes("output in a generation >= 2", |_, s: &Sys| s.out_max >= 2),
            Property::sometimes(
                "an ack releases output of g after output of a later generation",
                |_, s: &Sys| s.flags.late_vouched,
            ),
        ];
        if self.b.c_starts {
            p.push(Property::sometimes("host-c starts the VM", |_, s: &Sys| {
                s.nodes[2].m.as_ref().is_some_and(|_| !s.nodes[2].joined)
            }));
        }
        if self.b.joins > 0 {
            p.extend(join_properties());
        }
        if self.b.check_stuck {
            p.push(Property::always(
                "a paired Primary has a channel to its Secondary",
                |_, s: &Sys| {
                    !s.nodes.iter().any(|n| {
                        n.active()
                            && matches!(n.state(), Some(State::Paired { .. }))
                            && !n.link_open
                    })
                },
            ));
        }
        p
    }
}

fn owner_only(_: &MemberModel, s: &Sys) -> bool {
    s.nodes.iter().enumerate().all(|(i, n)| {
        (1..16u8).all(|g| n.released & (1 << g) == 0 || s.register.get(&g) == Some(&(i as u8)))
    })
}

/// A restored copy has no member, no gate, no output and no `Acquire`
/// (nor an answer) of its incarnation.
fn copies_idle(_: &MemberModel, s: &Sys) -> bool {
    s.nodes.iter().enumerate().all(|(i, n)| {
        n.joining.is_none()
            || (n.m.is_none()
                && n.gate == 0
                && n.released == 0
                && !s
                    .asks
                    .iter()
                    .any(|&(w, inc, _)| w as usize == i && inc == n.inc)
                && !s.answers.iter().any(|&(w, ..)| w as usize == i))
    })
}

/// Joins are reached, refused, given up, and lead on to losses.
fn join_properties() -> Vec<Property<MemberModel>> {
    vec![
        Property::sometimes("a join pairs", |_, s: &Sys| {
            s.nodes
                .iter()
                .any(|n| n.joined && matches!(n.state(), Some(State::Following { .. })))
        }),
        Property::sometimes(
            "a restored copy gives up before it is paired",
            |_, s: &Sys| {
                s.xfer.is_some_and(|x| {
                    let n = &s.nodes[x.s as usize];
                    n.run == Run::Up && n.joining.is_none()
                })
            },
        ),
        Property::sometimes("a join is refused (Abort)", |_, s: &Sys| {
            s.net.iter().any(|m| m.body == Body::Abort)
        }),
        Property::sometimes(
            "a Primary loses a joined Secondary and races",
            |_, s: &Sys| {
                s.nodes.iter().any(|n| {
                    !n.joined && n.chan != 0 && matches!(n.state(), Some(State::Racing { .. }))
                })
            },
        ),
        Property::sometimes("a joined Secondary goes live", |_, s: &Sys| {
            s.nodes
                .iter()
                .any(|n| n.joined && matches!(n.state(), Some(State::Solo { .. })))
        }),
    ]
}

fn gates(_: &MemberModel, s: &Sys) -> bool {
    let mut open = Vec::new();
    for (i, n) in s.nodes.iter().enumerate() {
        if n.run == Run::Crashed || n.gate == 0 {
            continue;
        }
        let Some(g) = n.member().and_then(|m| m.acting_generation()) else {
            return false;
        };
        if s.register.get(&(g as u8)) != Some(&(i as u8)) || open.contains(&g) {
            return false;
        }
        open.push(g);
    }
    true
}

/// Runs the checker to the end and fails with the trace of any violation.
/// `MEMBER_MODEL_BOUNDS=members,faults,time,in_flight,max_gen[,joins,c_starts,check_stuck]`
/// overrides `b`.
pub fn check(mut b: Bounds) {
    if let Ok(v) = std::env::var("MEMBER_MODEL_BOUNDS") {
        let n: Vec<u8> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
        if let [m, f, t, i, g, ref rest @ ..] = n[..] {
            b = Bounds {
                members: m.into(),
                faults: f,
                time: t,
                in_flight: i.into(),
                max_gen: g,
                joins: rest.first().copied().unwrap_or(0),
                c_starts: rest.get(1).map_or(m == 3, |&c| c != 0),
                check_stuck: rest.get(2).is_some_and(|&c| c != 0),
            };
        }
    }
    let start = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(2));
    let checker = MemberModel { b }
        .checker()
        .threads(threads)
        .spawn_bfs()
        .join();
    let model = MemberModel { b };
    eprintln!(
        "member model {b:?}: {} states ({} unique), depth {}, {:.1} s, done {}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth(),
        start.elapsed().as_secs_f64(),
        checker.is_done()
    );
    let mut failed = Vec::new();
    for p in model.properties() {
        let found = checker.discovery(p.name);
        match (p.expectation, found) {
            (stateright::Expectation::Sometimes, Some(path)) => {
                eprintln!(
                    "  sometimes \"{}\": reached in {} steps",
                    p.name,
                    path.into_actions().len()
                );
            }
            (stateright::Expectation::Sometimes, None) => {
                failed.push(format!("never: {}", p.name));
            }
            (_, Some(path)) => {
                eprintln!("COUNTEREXAMPLE to \"{}\":", p.name);
                for (k, (state, act)) in path.into_vec().into_iter().enumerate() {
                    match act {
                        Some(a) => eprintln!("  {k}: {}\n     then {a:?}", state.summary()),
                        None => {
                            eprintln!("  {k}: {}\n     flags {:?}", state.summary(), state.flags)
                        }
                    }
                }
                failed.push(format!("violated: {}", p.name));
            }
            (_, None) => {}
        }
    }
    assert!(checker.is_done(), "the checker stopped early");
    assert!(failed.is_empty(), "{failed:?}");
}
