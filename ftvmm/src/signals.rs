//! SIGINT/SIGTERM stop a foreground VM cleanly (stats printed, snapshot taken)
//! instead of killing the process.

use std::sync::OnceLock;

use crate::vm::VmHandle;

static PIPE_WR: OnceLock<libc::c_int> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    if let Some(&fd) = PIPE_WR.get() {
        // SAFETY: write(2) is async-signal-safe; one byte from a valid buffer.
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }
}

/// Installs handlers; a watcher thread turns a signal into `handle.stop()`.
pub fn stop_on_sigint(handle: VmHandle) -> std::io::Result<()> {
    on_sigint(move || handle.stop())
}

/// Installs handlers; a watcher thread runs `stop` on the first SIGINT or
/// SIGTERM (once per process).
pub fn on_sigint(stop: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (rd, wr) = (fds[0], fds[1]);
    if PIPE_WR.set(wr).is_err() {
        return Err(std::io::Error::other("signal handling installed twice"));
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(sig, on_signal)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    std::thread::Builder::new()
        .name("ftvmm-signals".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            // SAFETY: blocking read of one byte into a valid buffer from our pipe.
            let n = unsafe { libc::read(rd, b.as_mut_ptr().cast(), 1) };
            if n == 1 {
                eprintln!("ftvmm: stopping on signal");
                stop();
            }
        })?;
    Ok(())
}
