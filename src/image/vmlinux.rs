//! The uncompressed kernel inside a bzImage: the setup header's payload, its
//! decompression (xz, zstd, gzip, lz4; bounded) and the ELF check that QEMU can boot
//! it through its Xen PVH entry note. It works on bytes; it writes no file and runs no tool.
//!
//! Why: under TCG a bzImage spends seconds decompressing itself; QEMU loads a PVH
//! `vmlinux` straight into guest memory (DEVELOPMENT.md, "QEMU microVMs").

use std::io::Read;

/// A decompressed kernel larger than this is refused (a garbled or hostile payload
/// must not fill the disk; Debian's is 63 MiB).
pub const MAX_VMLINUX: u64 = 512 << 20;

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit PVH entry point QEMU's `-kernel` uses.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// The payload's compression, told by its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `FD 37 7A 58 5A 00` (Debian; with the x86 BCJ filter).
    Xz,
    /// `28 B5 2F FD` (Arch, Ubuntu 24.04, Fedora).
    Zstd,
    /// `1F 8B` (the kernel's default).
    Gzip,
    /// The kernel's legacy LZ4 frames, `02 21 4C 18` (Ubuntu 22.04).
    Lz4,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
        })
    }
}

/// Why no `vmlinux` came out of a kernel.
#[derive(Debug, thiserror::Error)]
pub enum VmlinuxError {
    /// No setup header (`HdrS` at 0x202).
    #[error("not a bzImage (no setup header)")]
    NotBzImage,
    /// Boot protocol before 2.08 has no payload fields.
    #[error("boot protocol {major}.{minor:02} has no payload fields (2.08 or later needed)")]
    OldProtocol {
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
    },
    /// `payload_offset`/`payload_length` point outside the file.
    #[error(
        "its payload ({offset:#x}+{length:#x}) lies outside the file ({size:#x} bytes): truncated?"
    )]
    PayloadOutside {
        /// Offset in the file.
        offset: u64,
        /// Length.
        length: u64,
        /// File size.
        size: u64,
    },
    /// A compression this build does not decode (bzip2, lzma, lzo, or not compressed).
    #[error("its payload's compression (magic {magic}) is not one of xz, zstd, gzip, lz4")]
    UnknownCompression {
        /// The first bytes, in hex.
        magic: String,
    },
    /// The payload does not decompress: truncated or garbled.
    #[error("its {format} payload does not decompress: {source}")]
    Corrupt {
        /// The compression.
        format: Compression,
        /// The decoder's reason.
        #[source]
        source: std::io::Error,
    },
    /// The payload decompresses to more than the bound.
    #[error("its payload decompresses to more than {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: u64,
    },
    /// The payload is not an x86-64 ELF executable.
    #[error("its payload is not an x86-64 ELF executable")]
    NotElf,
    /// The ELF has no Xen PVH entry note (kernels before 4.21, or built without CONFIG_PVH).
    #[error("it has no PVH entry note (a kernel built without CONFIG_PVH)")]
    NoPvhNote,
}

impl VmlinuxError {
    /// Is the kernel itself damaged (rather than merely not PVH-bootable)? A
    /// payload that does not decompress would not boot as a bzImage either.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            VmlinuxError::PayloadOutside { .. }
                | VmlinuxError::Corrupt { .. }
                | VmlinuxError::TooLarge { .. }
        )
    }
}

/// The PVH-bootable ELF inside a bzImage, at most [`MAX_VMLINUX`] bytes.
pub fn extract(bzimage: &[u8]) -> Result<Vec<u8>, VmlinuxError> {
    extract_bounded(bzimage, MAX_VMLINUX)
}

fn extract_bounded(bzimage: &[u8], limit: u64) -> Result<Vec<u8>, VmlinuxError> {
    let (format, payload) = payload(bzimage)?;
    let elf = decompress(format, payload, limit)?;
    pvh_entry(&elf)?;
    Ok(elf)
}

/// The compressed payload (without the 4-byte size the kernel's build appends).
fn payload(k: &[u8]) -> Result<(Compression, &[u8]), VmlinuxError> {
    if k.len() < 0x250 || &k[0x202..0x206] != b"HdrS" {
        return Err(VmlinuxError::NotBzImage);
    }
    let u32at = |o: usize| u32::from_le_bytes([k[o], k[o + 1], k[o + 2], k[o + 3]]);
    let (major, minor) = (k[0x207], k[0x206]);
    if (major, minor) < (2, 8) {
        return Err(VmlinuxError::OldProtocol { major, minor });
    }
    // The protected-mode code follows the setup sectors (0 means 4).
    let setup_sects = match k[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let offset = (setup_sects + 1) * 512 + u64::from(u32at(0x248));
    let length = u64::from(u32at(0x24c));
    let size = k.len() as u64;
    let outside = VmlinuxError::PayloadOutside {
        offset,
        length,
        size,
    };
    if length < 8 || offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(outside);
    }
    let p = &k[offset as usize..(offset + length) as usize];
    let format = if p.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if p.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if p.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if p.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        Compression::Lz4
    } else {
        return Err(VmlinuxError::UnknownCompression {
            magic: p[..6].iter().map(|b| format!("{b:02x}")).collect(),
        });
    };
    Ok((format, &p[..p.len() - 4]))
}

/// Decompress, refusing more than `limit` bytes of output.
fn decompress(format: Compression, data: &[u8], limit: u64) -> Result<Vec<u8>, VmlinuxError> {
    let corrupt = |source| VmlinuxError::Corrupt { format, source };
    let reader: Box<dyn Read + '_> = match format {
        // The kernel's xz uses a 32 MiB dictionary; a header asking for more than
        // 256 MiB of decoder memory is refused rather than allocated.
        Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(data, false, 256 << 10)),
        Compression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(data)
                .map_err(|e| corrupt(std::io::Error::other(e.to_string())))?,
        ),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
        Compression::Lz4 => return lz4_legacy(data, limit).map_err(corrupt)?,
    };
    let mut out = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() as u64 > limit {
        return Err(VmlinuxError::TooLarge { limit });
    }
    Ok(out)
}

/// The kernel's LZ4 "legacy" format: the magic, then blocks of (u32 LE compressed
/// size, LZ4 block) of at most 8 MiB each; another magic may start a new stream.
fn lz4_legacy(mut data: &[u8], limit: u64) -> std::io::Result<Result<Vec<u8>, VmlinuxError>> {
    const MAGIC: u32 = 0x184c_2102;
    const CHUNK: usize = 8 << 20;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut out = Vec::new();
    while data.len() >= 4 {
        let word = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        data = &data[4..];
        if word == MAGIC {
            continue;
        }
        let n = word as usize;
        if n == 0 || n > data.len() || n > lz4_flex::block::get_maximum_output_size(CHUNK) {
            return Err(bad("a block's size runs past the payload"));
        }
        // `out` holds at most `limit` bytes here (checked below after each block).
        let start = out.len();
        out.resize(start + CHUNK, 0);
        let got = lz4_flex::block::decompress_into(&data[..n], &mut out[start..])
            .map_err(|e| bad(&e.to_string()))?;
        out.truncate(start + got);
        if out.len() as u64 > limit {
            return Ok(Err(VmlinuxError::TooLarge { limit }));
        }
        data = &data[n..];
    }
    if !data.is_empty() || out.is_empty() {
        return Err(bad("the payload ends inside a block"));
    }
    Ok(Ok(out))
}

/// Can QEMU's `-kernel` boot this file: a bzImage, or an x86-64 ELF with a PVH
/// entry note? (`runner --kernel`.) The reason when not.
pub fn check_bootable(path: &std::path::Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.get(0x202..0x206) == Some(b"HdrS") {
        return Ok(());
    }
    match pvh_entry(&bytes) {
        Ok(_) => Ok(()),
        Err(VmlinuxError::NotElf) => {
            Err("neither a bzImage (vmlinuz) nor an x86-64 ELF kernel (vmlinux)".into())
        }
        Err(e) => Err(format!("{e}: boot its bzImage instead")),
    }
}

/// The PVH entry point of an x86-64 ELF executable (its `Xen` note of type 18 in
/// a PT_NOTE segment, which is where QEMU looks).
pub fn pvh_entry(elf: &[u8]) -> Result<u64, VmlinuxError> {
    let u16at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // ELF64, little-endian, ET_EXEC, EM_X86_64.
    if elf.len() < 64
        || &elf[..4] != b"\x7fELF"
        || elf[4] != 2
        || elf[5] != 1
        || u16at(16) != Some(2)
        || u16at(18) != Some(62)
    {
        return Err(VmlinuxError::NotElf);
    }
    let (phoff, phentsize, phnum) = match (u64at(32), u16at(54), u16at(56)) {
        (Some(o), Some(s), Some(n)) if s >= 56 => (o, usize::from(s), usize::from(n)),
        _ => return Err(VmlinuxError::NotElf),
    };
    for i in 0..phnum {
        let Some(ph) = usize::try_from(phoff)
            .ok()
            .and_then(|o| o.checked_add(i * phentsize))
        else {
            break;
        };
        if u32at(ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let (Some(off), Some(size)) = (u64at(ph + 8), u64at(ph + 32)) else {
            break;
        };
        let Some(notes) = usize::try_from(off).ok().and_then(|o| {
            usize::try_from(size)
                .ok()
                .and_then(|s| elf.get(o..o.checked_add(s)?))
        }) else {
            continue;
        };
        if let Some(entry) = xen_entry(notes) {
            return Ok(entry);
        }
    }
    Err(VmlinuxError::NoPvhNote)
}

/// The PHYS32_ENTRY value among the notes of one segment.
fn xen_entry(mut notes: &[u8]) -> Option<u64> {
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let word =
            |o: usize| u32::from_le_bytes([notes[o], notes[o + 1], notes[o + 2], notes[o + 3]]);
        let (namesz, descsz, kind) = (word(0) as usize, word(4) as usize, word(8));
        let name_end = 12usize.checked_add(align4(namesz)?)?;
        let end = name_end.checked_add(align4(descsz)?)?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end.checked_add(descsz)?)?;
        if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
            return match desc.len() {
                4 => Some(u64::from(u32::from_le_bytes(desc.try_into().ok()?))),
                8 => Some(u64::from_le_bytes(desc.try_into().ok()?)),
                _ => None,
            };
        }
        notes = notes.get(end..)?;
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 x86-64 executable: the header, one PT_NOTE segment with the
    /// given notes, and `filler` bytes (compressible) after them.
    pub(crate) fn fake_elf(notes: &[(&[u8], u32, &[u8])], filler: usize) -> Vec<u8> {
        let mut body = vec![];
        for (name, kind, desc) in notes {
            body.extend((name.len() as u32).to_le_bytes());
            body.extend((desc.len() as u32).to_le_bytes());
            body.extend(kind.to_le_bytes());
            body.extend(*name);
            body.resize(body.len().next_multiple_of(4), 0);
            body.extend(*desc);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        (e[4], e[5], e[6]) = (2, 1, 1);
        e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        e[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        e[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        e[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 64;
        e[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        e[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
        e[ph + 32..ph + 40].copy_from_slice(&(body.len() as u64).to_le_bytes());
        e.extend(body);
        e.extend((0..filler).map(|i| (i % 251) as u8));
        e
    }

    /// A PVH ELF whose entry is 0x1000000 (as Debian's).
    pub(crate) fn pvh_elf(filler: usize) -> Vec<u8> {
        fake_elf(
            &[
                (b"Linux\0", 6, b"6.1.0"),
                (b"Xen\0", 18, &0x0100_0000u32.to_le_bytes()),
            ],
            filler,
        )
    }

    /// A bzImage: setup sectors with the header (protocol 2.15), then the payload
    /// and the 4-byte uncompressed size the kernel's build appends.
    pub(crate) fn fake_bzimage(payload: &[u8], size: u32) -> Vec<u8> {
        let setup_sects = 3u8;
        let mut k = vec![0u8; (usize::from(setup_sects) + 1) * 512];
        k[0x1f1] = setup_sects;
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        let offset = 0x100u32; // a decompressor stub before it
        k[0x248..0x24c].copy_from_slice(&offset.to_le_bytes());
        k[0x24c..0x250].copy_from_slice(&(payload.len() as u32 + 4).to_le_bytes());
        k.extend(vec![0x90; offset as usize]);
        k.extend(payload);
        k.extend(size.to_le_bytes());
        k.extend([0u8; 64]); // the stub's tail
        k
    }

    pub(crate) fn xz(data: &[u8]) -> Vec<u8> {
        let mut opts = lzma_rust2::XzOptions::with_preset(1);
        opts.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
        let mut w = lzma_rust2::XzWriter::new(vec![], opts).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn compress(format: Compression, data: &[u8]) -> Vec<u8> {
        match format {
            Compression::Xz => xz(data),
            Compression::Zstd => {
                ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
            }
            Compression::Gzip => {
                let mut w = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
                w.write_all(data).unwrap();
                w.finish().unwrap()
            }
            Compression::Lz4 => {
                // Two 8 MiB-bounded blocks, the second after a repeated magic.
                let mut out = 0x184c_2102u32.to_le_bytes().to_vec();
                let (a, b) = data.split_at(data.len() / 2);
                for part in [a, b] {
                    let block = lz4_flex::block::compress(part);
                    out.extend((block.len() as u32).to_le_bytes());
                    out.extend(block);
                }
                out
            }
        }
    }

    const ALL: [Compression; 4] = [
        Compression::Xz,
        Compression::Zstd,
        Compression::Gzip,
        Compression::Lz4,
    ];

    #[test]
    fn every_compression_gives_back_the_elf() {
        let elf = pvh_elf(300_000);
        for format in ALL {
            let k = fake_bzimage(&compress(format, &elf), elf.len() as u32);
            assert_eq!(payload(&k).unwrap().0, format);
            let got = extract(&k).unwrap_or_else(|e| panic!("{format}: {e}"));
            assert!(got == elf, "{format}: not the same bytes");
            assert_eq!(pvh_entry(&got).unwrap(), 0x0100_0000);
        }
    }

    #[test]
    fn truncated_or_garbage_payloads_are_refused() {
        let elf = pvh_elf(300_000);
        for format in ALL {
            let z = compress(format, &elf);
            // Cut in the middle (the header's length says so: no out-of-bounds read).
            let cut = fake_bzimage(&z[..z.len() / 2], elf.len() as u32);
            let e = extract(&cut).unwrap_err();
            assert!(
                matches!(e, VmlinuxError::Corrupt { format: f, .. } if f == format),
                "{format}: {e:?}"
            );
            assert!(e.is_damage());
            // The magic, then noise.
            let mut noise = z[..6].to_vec();
            noise.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
            let e = extract(&fake_bzimage(&noise, 1 << 20)).unwrap_err();
            assert!(matches!(e, VmlinuxError::Corrupt { .. }), "{format}: {e:?}");
        }
        // A header whose payload runs past the end of the file.
        let mut k = fake_bzimage(&compress(Compression::Gzip, &elf), 0);
        k.truncate(k.len() - 200);
        let e = extract(&k).unwrap_err();
        assert!(matches!(e, VmlinuxError::PayloadOutside { .. }), "{e:?}");
        assert!(e.is_damage());
        // Unknown magic (bzip2), old protocol, no header: not damage, just no vmlinux.
        let e = extract(&fake_bzimage(b"BZh91AY&SY....", 0)).unwrap_err();
        assert!(matches!(e, VmlinuxError::UnknownCompression { .. }) && !e.is_damage());
        let mut old = fake_bzimage(&compress(Compression::Gzip, &elf), 0);
        old[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
        assert!(matches!(
            extract(&old),
            Err(VmlinuxError::OldProtocol { major: 2, minor: 7 })
        ));
        assert!(matches!(extract(&elf), Err(VmlinuxError::NotBzImage)));
    }

    #[test]
    fn the_output_is_bounded() {
        let elf = pvh_elf(3 << 20);
        for format in ALL {
            let k = fake_bzimage(&compress(format, &elf), 4096);
            let e = extract_bounded(&k, 1 << 20).unwrap_err();
            assert!(
                matches!(e, VmlinuxError::TooLarge { limit } if limit == 1 << 20),
                "{format}: {e:?}"
            );
            assert!(extract_bounded(&k, elf.len() as u64).is_ok(), "{format}");
        }
    }

    #[test]
    fn a_kernel_without_the_pvh_note_gives_no_vmlinux() {
        let no_pvh = fake_elf(&[(b"Linux\0", 6, b"6.1.0"), (b"Xen\0", 17, b"abcd")], 1000);
        let k = fake_bzimage(&xz(&no_pvh), 0);
        let e = extract(&k).unwrap_err();
        assert!(
            matches!(e, VmlinuxError::NoPvhNote) && !e.is_damage(),
            "{e:?}"
        );
        // Not an ELF at all, or a 32-bit one.
        let k = fake_bzimage(&xz(&[0x55u8; 4096]), 0);
        assert!(matches!(extract(&k), Err(VmlinuxError::NotElf)));
        let mut elf32 = pvh_elf(100);
        elf32[4] = 1;
        assert!(matches!(pvh_entry(&elf32), Err(VmlinuxError::NotElf)));
        // A note segment pointing past the file is no note (and no panic).
        let mut far = pvh_elf(0);
        far[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(pvh_entry(&far), Err(VmlinuxError::NoPvhNote)));
    }

    #[test]
    fn an_override_kernel_must_be_a_bzimage_or_a_pvh_elf() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("k");
        let check = |bytes: &[u8]| {
            std::fs::write(&f, bytes).unwrap();
            check_bootable(&f)
        };
        assert_eq!(check(&fake_bzimage(b"BZh9 any payload", 0)), Ok(()));
        assert_eq!(check(&pvh_elf(100)), Ok(()));
        let e = check(&fake_elf(&[], 100)).unwrap_err();
        assert!(e.contains("no PVH entry note"), "{e}");
        let e = check(b"#!/bin/sh\n").unwrap_err();
        assert!(e.contains("neither a bzImage"), "{e}");
        assert!(check_bootable(&d.path().join("gone")).is_err());
    }
}
