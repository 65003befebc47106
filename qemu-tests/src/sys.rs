//! Small syscall helpers shared by the hub and the TAP client.

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

/// Waits up to `timeout` for `fd` to become readable (or hung up).
pub fn poll_readable(fd: impl AsFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd that lives across the call; count is 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, millis) };
    rc > 0 && (pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR)) != 0
}
