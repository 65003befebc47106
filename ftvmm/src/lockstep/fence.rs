//! ftvmm's client of the fencing agent: who owns which generation of a VM
//! (`Acquire`, `Highest`) and which hosts are alive and run what (`Leases`).
//! Every answer is typed; an agent that cannot answer is an error the caller
//! waits out (storage unreachable: keep holding, say so once).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use config_schema::ctl::{self, LeaseView, Request, Response};

use super::member::Decision;

/// The fencing slot of every VM this process started or added, by fencing
/// socket: sent with each `Acquire` and `Highest`, so that an agent whose
/// booted config lacks a VM added live learns it (`fencing::Agent::learn`),
/// also after it restarted. Keyed by socket so that tests with several
/// agents in one process stay apart.
static SLOTS: Mutex<BTreeMap<(PathBuf, String), u32>> = Mutex::new(BTreeMap::new());

/// Records `vm`'s fencing slot for the agent at `socket` (the config that
/// starts or adds the VM says it).
pub fn know_slot(socket: &Path, vm: &str, slot: u32) {
    let mut m = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    m.insert((socket.to_path_buf(), vm.to_string()), slot);
}

/// `vm`'s fencing slot as recorded for `socket` ([`know_slot`]).
pub fn slot_of(socket: &Path, vm: &str) -> Option<u32> {
    let m = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    m.get(&(socket.to_path_buf(), vm.to_string())).copied()
}

/// What `Highest { vm }` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Highest {
    /// The highest generation named on disk (0: none yet).
    pub generation: u64,
    pub owner: Option<String>,
    pub config_generation: u64,
}

/// A decision, and whether a win cut the previous owner off at the storage
/// (`Response::Decided::storage_cut`: none of its writes can land any more,
/// so a new Primary need not hold writes over its in-flight ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    pub decision: Decision,
    pub storage_cut: bool,
}

/// One `Acquire`; `Err` when fencing could not decide (storage unreachable,
/// a corrupt block, a refused region) — the caller keeps holding and asks
/// again.
pub fn acquire(
    socket: &Path,
    vm: &str,
    generation: u64,
    config_generation: u64,
) -> Result<Acquired, String> {
    let req = Request::Acquire {
        vm: vm.to_string(),
        generation,
        config_generation,
        slot: slot_of(socket, vm),
    };
    let plain = |decision| {
        Ok(Acquired {
            decision,
            storage_cut: false,
        })
    };
    match ctl::query(socket, &req) {
        Ok(Response::Decided {
            won: true,
            storage_cut,
            ..
        }) => Ok(Acquired {
            decision: Decision::Won,
            storage_cut,
        }),
        Ok(Response::Decided { owner, .. }) => plain(Decision::Lost { owner }),
        Ok(Response::Superseded { by, .. }) => plain(Decision::Superseded { by }),
        Ok(Response::Error { message }) => Err(message),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Asks until fencing decides or `cancel`; calls `on_waiting` once with the
/// reason when it does not answer at first.
pub fn acquire_until(
    socket: &Path,
    vm: &str,
    generation: u64,
    config_generation: u64,
    cancel: &AtomicBool,
    on_waiting: impl Fn(&str),
) -> Option<Acquired> {
    let mut said = false;
    loop {
        if cancel.load(Ordering::SeqCst) {
            return None;
        }
        match acquire(socket, vm, generation, config_generation) {
            Ok(d) => return Some(d),
            Err(why) => {
                if !said {
                    on_waiting(&why);
                    said = true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `Highest { vm }`.
pub fn highest(socket: &Path, vm: &str) -> Result<Highest, String> {
    let req = Request::Highest {
        vm: vm.to_string(),
        slot: slot_of(socket, vm),
    };
    match ctl::query(socket, &req) {
        Ok(Response::Highest {
            generation,
            owner,
            config_generation,
            ..
        }) => Ok(Highest {
            generation,
            owner,
            config_generation,
        }),
        Ok(Response::Error { message }) => Err(message),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `Leases`: every host's delta lease and publication.
pub fn leases(socket: &Path) -> Result<Vec<LeaseView>, String> {
    lease_table(socket).map(|t| t.leases)
}

/// What `Leases` says: the table, and how current this host's reading of
/// it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTable {
    pub leases: Vec<LeaseView>,
    /// Ms since the agent's last complete renewal (own write and every
    /// other lease read); `None`: none yet, or an agent without the field.
    pub renewal_complete_ms: Option<u64>,
}

/// `Leases`, with the agent's last complete renewal.
pub fn lease_table(socket: &Path) -> Result<LeaseTable, String> {
    match ctl::query(socket, &Request::Leases) {
        Ok(Response::Leases {
            leases,
            renewal_complete_ms,
        }) => Ok(LeaseTable {
            leases,
            renewal_complete_ms,
        }),
        Ok(Response::Error { message }) => Err(message),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}
