//! `init`, the appliance's PID 1: mounts, modules, config disk, network, then
//! supervises `ftvmm`, `heartbeat` and `fencing` until SIGTERM or the power
//! button. See `init/README.md` for the boot sequence and console contract.
//!
//! PID 1 must never exit or panic (either is a kernel panic): errors are
//! printed and init idles, still reaping and still honouring power-off; a
//! panic hook does the same instead of returning into the abort.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use config_schema::ctl::{self, Request, Response};
use config_schema::hooks::TestHook;
use config_schema::runtime::RUNTIME_CONFIG_PATH;
use init::daemons::{self, DAEMONS};
use init::supervise::{Policy, Supervisor};
use init::system::{self, say};
use init::{cmdline, iscsi, net, power, verify};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

/// How long to wait for the config disk's block device to appear.
const DISK_WAIT: Duration = Duration::from_secs(10);

/// Signals init reads through its signalfd.
fn signal_set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
        Signal::SIGUSR2,
    ] {
        s.add(sig);
    }
    s
}

/// Log timestamps in the kernel's format (`[   12.345678]`, seconds since
/// boot), so init's lines line up with the kernel's.
struct BootClock;

impl tracing_subscriber::fmt::time::FormatTime for BootClock {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let t = since_boot();
        write!(w, "[{:>5}.{:06}]", t.as_secs(), t.subsec_micros())
    }
}

/// Time since the kernel started (CLOCK_BOOTTIME).
fn since_boot() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default()
}

/// What woke the main loop.
enum Wake {
    Shutdown(&'static str),
    Children,
    Nothing,
}

/// Signals and power-button devices, polled together.
struct Events {
    sfd: SignalFd,
    inputs: Vec<(String, OwnedFd)>,
}

impl Events {
    fn new() -> nix::Result<Self> {
        let set = signal_set();
        set.thread_block()?;
        let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Events {
            sfd,
            inputs: Vec::new(),
        })
    }

    fn open_inputs(&mut self) {
        self.inputs = power::open_event_devices(Path::new("/dev/input"));
        let names: Vec<&str> = self.inputs.iter().map(|(n, _)| n.as_str()).collect();
        tracing::info!("power button: watching /dev/input/[{}]", names.join(", "));
    }

    fn wait(&mut self, timeout: Duration) -> Wake {
        let ms = timeout.as_millis().min(60_000) as u16;
        let mut fds = vec![PollFd::new(self.sfd.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            self.inputs
                .iter()
                .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
        );
        let timeout = PollTimeout::from(ms);
        if poll(&mut fds, timeout).unwrap_or(0) <= 0 {
            return Wake::Nothing;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut wake = Wake::Nothing;
        if ready[0] {
            while let Ok(Some(info)) = self.sfd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {
                        if matches!(wake, Wake::Nothing) {
                            wake = Wake::Children;
                        }
                    }
                    Ok(Signal::SIGTERM) => wake = Wake::Shutdown("SIGTERM"),
                    Ok(Signal::SIGINT) => wake = Wake::Shutdown("ctrl-alt-del"),
                    Ok(Signal::SIGPWR | Signal::SIGUSR2) => wake = Wake::Shutdown("power signal"),
                    _ => {}
                }
            }
        }
        for (i, (_, fd)) in self.inputs.iter().enumerate() {
            if ready.get(i + 1) == Some(&true) {
                let mut buf = [0u8; power::EVENT_LEN * 16];
                while let Ok(n) = nix::unistd::read(fd, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    if power::power_pressed(&buf[..n]) {
                        wake = Wake::Shutdown("power button");
                    }
                }
            }
        }
        // Children may exit together with a shutdown request: reap anyway.
        wake
    }
}

/// After a fatal error: reap, and power off on request. Never returns.
fn idle(events: Option<&mut Events>) -> ! {
    match events {
        Some(ev) => loop {
            if let Wake::Shutdown(why) = ev.wait(Duration::from_secs(60)) {
                say(&format!("init: {why}: powering off"));
                let e = system::power_off();
                say(&format!("init: power off failed: {e}"));
            }
            daemons::reap_all();
        },
        None => loop {
            daemons::reap_all();
            std::thread::sleep(Duration::from_secs(1));
        },
    }
}

fn main() {
    std::panic::set_hook(Box::new(|info| {
        say(&format!("init: internal error: {info}; idling"));
        idle(None)
    }));
    if nix::unistd::getpid().as_raw() != 1 {
        eprintln!("init: must run as PID 1 (the appliance's init)");
        std::process::exit(2);
    }
    let mount_errors = system::mount_early();
    let console = system::attach_console();
    let (other_consoles, missing_consoles) = system::open_other_consoles();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            // netlink-packet-route warns about every newer-kernel attribute it does not know.
            "info,netlink_packet_route=error",
        ))
        .with_ansi(false)
        .with_target(false)
        .with_timer(BootClock)
        .with_writer(|| system::AllConsoles)
        .init();
    tracing::info!(
        "init running {:.2} s after kernel start",
        since_boot().as_secs_f64()
    );
    tracing::info!(
        "consoles: /dev/console and [{}]{}",
        other_consoles.join(", "),
        if missing_consoles.is_empty() {
            String::new()
        } else {
            format!("; cannot open [{}]", missing_consoles.join(", "))
        }
    );
    if let Err(e) = console {
        tracing::warn!("cannot open /dev/console: {e}");
    }
    for e in mount_errors {
        tracing::error!("{e}");
    }
    let _ = nix::sys::reboot::set_cad_enabled(false);
    let mut events = match Events::new() {
        Ok(e) => e,
        Err(e) => {
            say(&format!("init: cannot set up signal handling: {e}; idling"));
            idle(None)
        }
    };
    if let Some(line) =
        cmdline::ignored_line(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    {
        say(&line);
    }
    system::load_modules();
    events.open_inputs();

    let accepted = match verify::load(
        Path::new("/"),
        Path::new(verify::TRUST_ROOT_PATH),
        DISK_WAIT,
    ) {
        Ok(a) => a,
        Err(e) => {
            say(&format!("config refused: {e}"));
            idle(Some(&mut events))
        }
    };
    report_accepted(&accepted);
    match serde_json::to_vec_pretty(&accepted.runtime)
        .map_err(std::io::Error::other)
        .and_then(|json| system::write_runtime(Path::new(RUNTIME_CONFIG_PATH), &json))
    {
        Ok(()) => tracing::info!("runtime config written to {RUNTIME_CONFIG_PATH}"),
        Err(e) => {
            say(&format!(
                "init: cannot write {RUNTIME_CONFIG_PATH}: {e}; starting no daemon"
            ));
            idle(Some(&mut events))
        }
    }
    let rt = &accepted.runtime;
    match rt.config.hosts.iter().find(|h| h.name == rt.host_name) {
        Some(host) => match net::bring_up(host) {
            Ok(_) => tracing::info!("network up"),
            Err(e) => say(&format!(
                "init: network setup failed: {e}; continuing without it"
            )),
        },
        None => say("init: this host is not in the config; network not configured"),
    }
    if let Some(login) = iscsi_login(rt) {
        log_in_to_shared_storage(login);
    }
    if accepted.runtime.config.test_hooks().contains(&TestHook::Pr) {
        // Test hook: not supervised; init reaps it as an orphan when it ends.
        match daemons::spawn("ft-pr-test", Path::new(RUNTIME_CONFIG_PATH)) {
            Ok(pid) => say(&format!("init: test hook pr: started ft-pr-test pid={pid}")),
            Err(e) => say(&format!("init: test hook pr: cannot start ft-pr-test: {e}")),
        }
    }
    let crash = cmdline::crash_daemon(&accepted.runtime.config);
    supervise(&mut events, &accepted, crash.as_deref())
}

/// How long init waits for the first iSCSI login before it starts the
/// daemons anyway (the login goes on; fencing and ftvmm wait for the device).
const ISCSI_WAIT: Duration = Duration::from_secs(60);

/// The login the signed config asks for, if its shared device is an iSCSI LUN.
fn iscsi_login(rt: &config_schema::runtime::RuntimeConfig) -> Option<iscsi::Login> {
    let config_schema::DeviceLocator::Iscsi(lun) = &rt.config.storage.device else {
        return None;
    };
    match iscsi::Login::new(lun, &rt.host_name) {
        Ok(login) => Some(login),
        Err(e) => {
            say(&format!(
                "init: iscsi: storage.device.iscsi.portal: {e}; not logging in"
            ));
            None
        }
    }
}

/// Loads the software initiator, starts the login keeper
/// ([`iscsi::keep`]) and waits up to [`ISCSI_WAIT`] for the LUN's device.
fn log_in_to_shared_storage(login: iscsi::Login) {
    system::load_named(&iscsi::MODULES);
    let (tx, rx) = mpsc::channel();
    let lun = login.lun.clone();
    let spawned = std::thread::Builder::new()
        .name("iscsi".into())
        .spawn(move || {
            let locate = move || {
                config_schema::iscsi_block::find_block(Path::new("/sys"), &lun)
                    .map(|name| Path::new("/dev").join(name))
                    .map_err(|e| e.to_string())
            };
            iscsi::keep(login, "/sys".into(), locate, tx)
        });
    if let Err(e) = spawned {
        say(&format!("init: iscsi: cannot start the login thread: {e}"));
        return;
    }
    if rx.recv_timeout(ISCSI_WAIT).is_err() {
        say(&format!(
            "init: iscsi: the shared device is not there after {} s; starting the daemons \
             anyway (the login goes on)",
            ISCSI_WAIT.as_secs()
        ));
    }
}

fn report_accepted(a: &verify::Accepted) {
    tracing::info!(
        "config accepted from /dev/{}: cluster {} generation {} host {}",
        a.disk.name,
        a.runtime.config.cluster.name,
        a.generation,
        a.host_name
    );
    for w in &a.warnings {
        say(&format!("init: config warning: {w}"));
    }
    if let Some(line) = cmdline::enabled_line(&a.runtime.config) {
        say(&line);
    }
    match &a.state {
        verify::StateUpdate::Unchanged => tracing::info!(
            "anti-rollback: generation {} already recorded",
            a.generation
        ),
        verify::StateUpdate::Written { previous } => tracing::info!(
            "anti-rollback: recorded generation {} (was {})",
            a.generation,
            previous.map_or("none".to_string(), |p| p.to_string())
        ),
    }
}

/// Polls the three control sockets until all answer `Status`, then reports once.
fn readiness_probe() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        let all = DAEMONS.iter().all(|(_, sock)| {
            matches!(
                ctl::query(Path::new(sock), &Request::Status),
                Ok(Response::Status { .. })
            )
        });
        if all {
            let _ = tx.send(());
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    });
    rx
}

/// The supervision loop. Never returns: ends in power-off (or idling if the
/// kernel refuses it).
fn supervise(events: &mut Events, accepted: &verify::Accepted, crash: Option<&str>) -> ! {
    let config = Path::new(RUNTIME_CONFIG_PATH);
    let names: Vec<&str> = DAEMONS.iter().map(|d| d.0).collect();
    let mut sup = Supervisor::new(Policy::default(), &names);
    let ready_rx = readiness_probe();
    let mut ready = false;
    let mut crash = crash.map(str::to_string);
    loop {
        let now = Instant::now();
        for name in sup.due(now) {
            match daemons::spawn(&name, config) {
                Ok(pid) => {
                    sup.started(&name, pid, now);
                    say(&format!("init: started {name} pid={pid}"));
                }
                Err(e) => {
                    if let Some(plan) = sup.spawn_failed(&name, now) {
                        say(&format!(
                            "init: daemon {name} could not start ({e}), restart #{} in {} ms",
                            plan.restart,
                            plan.delay.as_millis()
                        ));
                    }
                }
            }
        }
        if !ready && ready_rx.try_recv().is_ok() {
            ready = true;
            say(&format!(
                "appliance ready: host={} generation={}",
                accepted.host_name, accepted.generation
            ));
            tracing::info!(
                "ready {:.2} s after kernel start",
                since_boot().as_secs_f64()
            );
            events.open_inputs();
        }
        if ready {
            if let Some(victim) = crash.take() {
                match sup.pid_of(&victim) {
                    Some(pid) => {
                        say(&format!(
                            "init: test hook crash:{victim}: SIGKILL pid={pid}"
                        ));
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                    None => say(&format!(
                        "init: test hook crash:{victim}: no such running daemon"
                    )),
                }
            }
        }
        let mut timeout = Duration::from_millis(if ready { 1000 } else { 100 });
        if let Some(at) = sup.next_deadline() {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        let wake = events.wait(timeout);
        let now = Instant::now();
        for (pid, ws) in daemons::reap_all() {
            match sup.name_of(pid).map(str::to_string) {
                Some(name) => {
                    if let Some(plan) = sup.exited(pid, now) {
                        say(&format!(
                            "init: daemon {name} exited ({}), restart #{} in {} ms",
                            daemons::describe(&ws),
                            plan.restart,
                            plan.delay.as_millis()
                        ));
                    }
                }
                None => tracing::debug!("reaped orphan pid {pid} ({})", daemons::describe(&ws)),
            }
        }
        if let Wake::Shutdown(why) = wake {
            say(&format!("init: {why}: stopping daemons"));
            let running = sup.stop_all();
            daemons::stop_in_order(&running, &|l| say(l));
            let e = system::power_off();
            say(&format!("init: power off failed: {e}"));
            idle(Some(events))
        }
    }
}
