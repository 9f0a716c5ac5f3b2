//! Checks of the binaries and kernel a bundle takes: static x86-64 ELF
//! executables and a bzImage kernel. It reads files; it writes nothing.

use std::path::Path;

use super::{bad, unreadable, ImageError};

/// Does this ELF file need a program interpreter (i.e. is it dynamic)?
pub(super) fn elf_is_dynamic(bytes: &[u8]) -> Option<bool> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return None; // not a 64-bit ELF
    }
    let u16at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64at =
        |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8])) as usize;
    let (phoff, phentsize, phnum) = (u64at(32), u16at(54), u16at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > bytes.len() {
            return None;
        }
        if u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) == 3 {
            return Some(true); // PT_INTERP
        }
    }
    Some(false)
}

pub(super) fn read_static_elf(flag: &'static str, path: &Path) -> Result<Vec<u8>, ImageError> {
    let bytes = std::fs::read(path).map_err(unreadable(flag, path))?;
    match elf_is_dynamic(&bytes) {
        None => Err(bad(flag, path, "not an x86-64 ELF executable")),
        Some(true) => Err(bad(
            flag,
            path,
            match flag {
                "--busybox" => "not a static busybox (install busybox-static: /bin/busybox from that package is static)",
                _ => "dynamically linked; build the static one with scripts/build.sh",
            },
        )),
        Some(false) => Ok(bytes),
    }
}

/// Read a bzImage kernel.
pub(super) fn read_kernel(path: &Path) -> Result<Vec<u8>, ImageError> {
    let kernel = std::fs::read(path).map_err(unreadable("--kernel", path))?;
    if kernel.len() < 0x206 || &kernel[0x202..0x206] != b"HdrS" {
        return Err(bad("--kernel", path, "not a bzImage kernel (vmlinuz)"));
    }
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_static_elves() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_is_dynamic(&me), Some(true));
        assert_eq!(elf_is_dynamic(b"#!/bin/sh\n"), None);
    }
}
