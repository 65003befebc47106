//! The boot loader configs of the ISO: ISOLINUX (BIOS) and GRUB (UEFI), written
//! so that nobody at the console can change what boots.
//!
//! Rules:
//! - One entry, booted at once, with the kernel command line fixed at build
//!   time. The console gets no prompt, no menu editor and no boot-loader
//!   command line: ISOLINUX with `PROMPT 0`, `NOESCAPE 1` (Shift/Alt/Caps
//!   Lock/Scroll Lock do not bring up a prompt), `ALLOWOPTIONS 0` (no typed
//!   kernel options) and `IMPLICIT 0` (no kernel that is not a `LABEL`); GRUB
//!   with `superusers` set to the empty list (editing an entry and the command
//!   line need a superuser, and there is none) and the entry `--unrestricted`
//!   (booting it needs nobody).
//! - The kernel command line carries no `ft.*` option (test hooks are enabled
//!   only by the signed config) and no character a boot-loader config would
//!   interpret (quotes, `$`, `;`, braces, backslash, newlines).
//!
//! Invariant: every config [`isolinux_cfg`] and [`grub_cfg`] write passes
//! [`check_isolinux`] and [`check_grub`]; `image/build.sh` checks the staged
//! files again before it builds the ISO, and the QEMU tests check the ISO's.

use std::fmt;

/// A kernel command line fit for the boot-loader configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline(String);

/// Why a command line or a config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootCfgError {
    #[error("kernel command line {cmdline:?}: {problem}")]
    Cmdline { cmdline: String, problem: String },
    #[error("ISO volume label {0:?}: want 1 to 32 of A-Z 0-9 _")]
    Label(String),
    #[error("{file}: {problems}", problems = .problems.join("; "))]
    Unlocked {
        file: &'static str,
        problems: Vec<String>,
    },
}

/// Characters a boot-loader config would interpret rather than pass on.
const SPECIAL: &[char] = &[
    '"', '\'', '$', ';', '{', '}', '\\', '`', '#', '|', '&', '<', '>',
];

impl Cmdline {
    /// Checks `text`: non-empty, printable ASCII words, no `ft.*` word and none
    /// of [`SPECIAL`].
    pub fn new(text: &str) -> Result<Cmdline, BootCfgError> {
        let bad = |problem: String| BootCfgError::Cmdline {
            cmdline: text.to_string(),
            problem,
        };
        if text.trim().is_empty() {
            return Err(bad("is empty".into()));
        }
        if let Some(c) = text.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
            return Err(bad(format!("character {c:?} is not printable ASCII")));
        }
        if let Some(c) = text.chars().find(|c| SPECIAL.contains(c)) {
            return Err(bad(format!(
                "character {c:?} would be interpreted by the boot loader"
            )));
        }
        if let Some(w) = text.split_whitespace().find(|w| w.starts_with("ft.")) {
            return Err(bad(format!(
                "{w} is an appliance option; test hooks are enabled only by the signed config ([test] hooks)"
            )));
        }
        Ok(Cmdline(
            text.split_whitespace().collect::<Vec<_>>().join(" "),
        ))
    }
}

impl fmt::Display for Cmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the kernel and initramfs are on the ISO.
const KERNEL: &str = "/boot/vmlinuz";
const INITRD: &str = "/boot/initrd.img";

/// `isolinux/isolinux.cfg`: boots the one entry at once, reads nothing from
/// the keyboard or the serial line.
pub fn isolinux_cfg(cmdline: &Cmdline) -> String {
    format!(
        "SERIAL 0 115200\n\
         PROMPT 0\n\
         NOESCAPE 1\n\
         ALLOWOPTIONS 0\n\
         IMPLICIT 0\n\
         TIMEOUT 0\n\
         DEFAULT ftappliance\n\
         LABEL ftappliance\n\
         \x20 KERNEL {KERNEL}\n\
         \x20 APPEND initrd={INITRD} {cmdline}\n"
    )
}

/// `boot/grub/grub.cfg`: no superuser exists, so nobody can edit the entry
/// or open the command line; the entry itself boots unrestricted.
pub fn grub_cfg(cmdline: &Cmdline) -> String {
    format!(
        "set superusers=\"\"\n\
         export superusers\n\
         set timeout=0\n\
         set timeout_style=hidden\n\
         set default=0\n\
         menuentry \"ftappliance\" --unrestricted {{\n\
         \x20 linux {KERNEL} {cmdline}\n\
         \x20 initrd {INITRD}\n\
         }}\n"
    )
}

/// The config embedded in GRUB's EFI image: locks the console before anything
/// else (should `grub.cfg` not load, GRUB's fallback command line is locked
/// too), then finds the ISO by its volume label and loads `grub.cfg`.
pub fn grub_embed_cfg(iso_label: &str) -> Result<String, BootCfgError> {
    let ok = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    if iso_label.is_empty() || iso_label.len() > 32 || !iso_label.chars().all(ok) {
        return Err(BootCfgError::Label(iso_label.to_string()));
    }
    Ok(format!(
        "set superusers=\"\"\n\
         export superusers\n\
         search --no-floppy --set=root --label {iso_label}\n\
         set prefix=($root)/boot/grub\n\
         configfile $prefix/grub.cfg\n"
    ))
}

/// Lines without comments, blank lines and surrounding space.
fn lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// The kernel options a boot line passes, checked like [`Cmdline::new`].
fn check_kernel_options(line: &str, skip: usize, problems: &mut Vec<String>) {
    let opts: Vec<&str> = line.split_whitespace().skip(skip).collect();
    if let Err(e) = Cmdline::new(&opts.join(" ")) {
        problems.push(e.to_string());
    }
}

/// Checks an ISOLINUX config is locked (see the module rules).
pub fn check_isolinux(text: &str) -> Result<(), BootCfgError> {
    let l = lines(text);
    let has = |want: &str| l.iter().any(|x| x.eq_ignore_ascii_case(want));
    let mut problems = Vec::new();
    for want in ["PROMPT 0", "NOESCAPE 1", "ALLOWOPTIONS 0", "IMPLICIT 0"] {
        if !has(want) {
            problems.push(format!("lacks `{want}`"));
        }
    }
    let keyword = |x: &&&str| {
        x.split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase()
    };
    let labels = l.iter().filter(|x| keyword(x) == "LABEL").count();
    if labels != 1 {
        problems.push(format!("has {labels} LABEL entries, wants exactly 1"));
    }
    for x in &l {
        match keyword(&x).as_str() {
            "UI" | "MENU" | "F1" | "F2" | "F3" | "F4" | "F5" | "F6" | "F7" | "F8" | "F9"
            | "F10" | "F11" | "F12" | "INCLUDE" | "CONFIG" | "COM32" => problems.push(format!(
                "has `{x}` (menus, help screens and modules are not allowed)"
            )),
            "APPEND" => check_kernel_options(x, 1, &mut problems),
            _ => {}
        }
    }
    done("isolinux.cfg", problems)
}

/// Checks a GRUB config is locked (see the module rules).
pub fn check_grub(text: &str) -> Result<(), BootCfgError> {
    let l = lines(text);
    let mut problems = Vec::new();
    let first_entry = l.iter().position(|x| x.starts_with("menuentry"));
    match l.iter().position(|x| *x == "set superusers=\"\"") {
        Some(i) if first_entry.is_none_or(|e| i < e) => {}
        Some(_) => problems.push("sets superusers only after a menuentry".into()),
        None => problems
            .push("lacks `set superusers=\"\"` (nobody may edit or open the command line)".into()),
    }
    let entries: Vec<&&str> = l.iter().filter(|x| x.starts_with("menuentry")).collect();
    if entries.len() != 1 {
        problems.push(format!(
            "has {} menuentry lines, wants exactly 1",
            entries.len()
        ));
    }
    for e in entries {
        if !e.split_whitespace().any(|w| w == "--unrestricted") {
            problems.push(format!(
                "`{e}` is not --unrestricted (it would ask for a superuser)"
            ));
        }
    }
    for x in &l {
        let word = x.split_whitespace().next().unwrap_or("");
        match word {
            "password" | "password_pbkdf2" | "submenu" | "source" | "configfile" | "insmod" => {
                problems.push(format!("has `{x}`"))
            }
            "linux" => check_kernel_options(x, 2, &mut problems),
            _ => {}
        }
    }
    done("grub.cfg", problems)
}

fn done(file: &'static str, problems: Vec<String>) -> Result<(), BootCfgError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(BootCfgError::Unlocked { file, problems })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_configs_pass_their_checks() {
        let c = Cmdline::new("console=ttyS0,115200 panic=10 loglevel=4").unwrap();
        check_isolinux(&isolinux_cfg(&c)).unwrap();
        check_grub(&grub_cfg(&c)).unwrap();
    }
}
