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

/// A bundle's kernel: the bzImage as given, and the uncompressed PVH `vmlinux`
/// taken out of it when it has one.
pub(super) struct Kernel {
    pub(super) bzimage: Vec<u8>,
    pub(super) vmlinux: Option<Vec<u8>>,
}

/// Read a bzImage kernel and take its `vmlinux` out. A payload that does not
/// decompress is an error (that kernel would not boot either); a kernel QEMU
/// cannot boot through PVH keeps only its bzImage, with a warning.
pub(super) fn read_kernel(path: &Path) -> Result<Kernel, ImageError> {
    let bzimage = std::fs::read(path).map_err(unreadable("--kernel", path))?;
    if bzimage.len() < 0x206 || &bzimage[0x202..0x206] != b"HdrS" {
        return Err(bad("--kernel", path, "not a bzImage kernel (vmlinuz)"));
    }
    let vmlinux = match super::vmlinux::extract(&bzimage) {
        Ok(elf) => Some(elf),
        Err(e) if e.is_damage() => return Err(bad("--kernel", path, e.to_string())),
        Err(e) => {
            tracing::warn!(
                "--kernel {}: no uncompressed kernel for a fast boot ({e}); VMs boot the bzImage",
                path.display()
            );
            None
        }
    };
    Ok(Kernel { bzimage, vmlinux })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_keep_their_vmlinux_or_only_the_bzimage() {
        use super::super::vmlinux::tests::{fake_bzimage, fake_elf, pvh_elf, xz};
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("vmlinuz");
        let elf = pvh_elf(5000);
        std::fs::write(&path, fake_bzimage(&xz(&elf), 0)).unwrap();
        assert_eq!(read_kernel(&path).unwrap().vmlinux.as_ref(), Some(&elf));
        // No PVH note: the bzImage alone.
        let plain = fake_elf(&[(b"Linux\0", 6, b"6.1.0")], 5000);
        std::fs::write(&path, fake_bzimage(&xz(&plain), 0)).unwrap();
        let k = read_kernel(&path).unwrap();
        assert!(k.vmlinux.is_none() && !k.bzimage.is_empty());
        // A damaged payload: refused, naming the option.
        let z = xz(&elf);
        std::fs::write(&path, fake_bzimage(&z[..z.len() / 2], 0)).unwrap();
        let e = read_kernel(&path).err().unwrap().to_string();
        assert!(
            e.starts_with("--kernel ") && e.contains("does not decompress"),
            "{e}"
        );
    }

    #[test]
    fn detects_static_elves() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_is_dynamic(&me), Some(true));
        assert_eq!(elf_is_dynamic(b"#!/bin/sh\n"), None);
    }
}
