//! The ACPI power button as the kernel reports it: an `EV_KEY`/`KEY_POWER`
//! press on an evdev device (`/dev/input/event*`, from the `button` and
//! `evdev` modules).

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// `sizeof(struct input_event)` on x86-64: timeval (16) + type, code (2+2) + value (4).
pub const EVENT_LEN: usize = 24;
const EV_KEY: u16 = 0x01;
const KEY_POWER: u16 = 116;

/// True when `buf` (whole events) holds a KEY_POWER press or autorepeat.
pub fn power_pressed(buf: &[u8]) -> bool {
    buf.chunks_exact(EVENT_LEN).any(|ev| {
        let ty = u16::from_ne_bytes([ev[16], ev[17]]);
        let code = u16::from_ne_bytes([ev[18], ev[19]]);
        let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
        ty == EV_KEY && code == KEY_POWER && value != 0
    })
}

/// Opens every `event*` node under `dir` non-blocking.
pub fn open_event_devices(dir: &Path) -> Vec<(String, OwnedFd)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("event"))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|n| {
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
                .open(dir.join(&n))
                .map_err(|e| tracing::warn!("cannot open /dev/input/{n}: {e}"))
                .ok()?;
            Some((n, OwnedFd::from(f)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend(ty.to_ne_bytes());
        e.extend(code.to_ne_bytes());
        e.extend(value.to_ne_bytes());
        e
    }

    #[test]
    fn power_press_is_seen_among_other_events() {
        let mut buf = event(0, 0, 0);
        buf.extend(event(EV_KEY, KEY_POWER, 1));
        assert!(power_pressed(&buf));
    }

    #[test]
    fn release_and_other_keys_are_not_a_press() {
        let mut buf = event(EV_KEY, KEY_POWER, 0);
        buf.extend(event(EV_KEY, 30, 1));
        buf.extend(event(0x04, KEY_POWER, 1));
        assert!(!power_pressed(&buf));
        assert!(!power_pressed(&event(EV_KEY, KEY_POWER, 1)[..20]));
    }
}
