//! A writer for the `newc` cpio format, the format of a Linux initramfs.

use std::io::{self, Write};

/// Streams entries of a newc archive.
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Cpio<W> {
    /// Start an archive.
    pub fn new(out: W) -> Self {
        Cpio {
            out,
            ino: 1,
            written: 0,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    /// One entry of type `kind` (the `S_IFMT` bits) and permissions `perm`.
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        name: &str,
        kind: u32,
        perm: u32,
        uid: u32,
        gid: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let name = if name.is_empty() { "." } else { name };
        // What the format cannot carry is refused, not written as something else:
        // a NUL ends the name early, the trailer's name ends the archive, bits
        // beyond 07777 change the entry's type, and sizes have 8 hex digits.
        let bad = |what: &str| {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry {name:?}: {what}"),
            ))
        };
        if name.contains('\0') {
            return bad("a name cannot hold NUL");
        }
        if name == TRAILER {
            return bad("the name is the trailer's");
        }
        if perm & !0o7777 != 0 {
            return bad("permissions have only the bits 07777");
        }
        if u32::try_from(data.len()).is_err() {
            return bad("larger than 4 GiB");
        }
        self.raw(name, kind | perm, uid, gid, data, rdev)
    }

    #[allow(clippy::too_many_arguments)]
    fn raw(
        &mut self,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            uid,
            gid,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.ino += 1;
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    /// A directory.
    pub fn dir(&mut self, name: &str, perm: u32, uid: u32, gid: u32) -> io::Result<()> {
        self.entry(name, 0o040000, perm, uid, gid, &[], (0, 0))
    }

    /// A regular file.
    pub fn file(
        &mut self,
        name: &str,
        perm: u32,
        uid: u32,
        gid: u32,
        data: &[u8],
    ) -> io::Result<()> {
        self.entry(name, 0o100000, perm, uid, gid, data, (0, 0))
    }

    /// A symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str, uid: u32, gid: u32) -> io::Result<()> {
        self.entry(name, 0o120000, 0o777, uid, gid, target.as_bytes(), (0, 0))
    }

    /// A character device.
    pub fn chardev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, 0o020000, perm, 0, 0, &[], (major, minor))
    }

    /// Write the trailer and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.raw(TRAILER, 0, 0, 0, &[], (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The name of the entry that ends an archive.
const TRAILER: &str = "TRAILER!!!";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_tool_reads_it_back() {
        let mut c = Cpio::new(Vec::new());
        c.dir("/etc", 0o755, 0, 0).unwrap();
        c.file("/etc/passwd", 0o644, 0, 0, b"root:x:0:0::/root:/bin/sh\n")
            .unwrap();
        c.symlink("/init", "/bin/x", 0, 0).unwrap();
        c.chardev("/dev/console", 0o600, 5, 1).unwrap();
        let bytes = c.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        // Cross-check with GNU cpio when present.
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_ok()
        {
            let mut child = std::process::Command::new("cpio")
                .args(["-it", "--quiet"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&bytes).unwrap();
            let out = child.wait_with_output().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "etc\netc/passwd\ninit\ndev/console\n"
            );
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// One entry as a newc reader sees it.
        #[derive(Debug, Clone, PartialEq, Eq)]
        struct Entry {
            name: Vec<u8>,
            mode: u32,
            uid: u32,
            gid: u32,
            data: Vec<u8>,
            rdev: (u32, u32),
        }

        /// A small newc reader (as the kernel's initramfs unpacker reads it): the
        /// entries before the trailer, or why the archive is malformed.
        fn read(mut b: &[u8]) -> Result<Vec<Entry>, String> {
            let total = b.len();
            let mut out = vec![];
            let align = |b: &mut &[u8], total: usize| {
                let at = total - b.len();
                let n = (4 - at % 4) % 4;
                if b.len() < n || b[..n].iter().any(|&x| x != 0) {
                    return Err(format!("bad padding at {at}"));
                }
                *b = &b[n..];
                Ok(())
            };
            loop {
                if b.len() < 110 || &b[..6] != b"070701" {
                    return Err(format!("no header at {}", total - b.len()));
                }
                let field = |i: usize| -> Result<u32, String> {
                    let f = std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i])
                        .map_err(|e| e.to_string())?;
                    u32::from_str_radix(f, 16).map_err(|e| format!("{f:?}: {e}"))
                };
                let (mode, uid, gid, size) = (field(1)?, field(2)?, field(3)?, field(6)? as usize);
                let rdev = (field(9)?, field(10)?);
                let namesize = field(11)? as usize;
                b = &b[110..];
                if namesize == 0 || b.len() < namesize || b[namesize - 1] != 0 {
                    return Err("bad name".into());
                }
                let name = b[..namesize - 1].to_vec();
                if name.contains(&0) {
                    return Err(format!("NUL inside name {name:?}"));
                }
                b = &b[namesize..];
                align(&mut b, total)?;
                if b.len() < size {
                    return Err("short data".into());
                }
                let data = b[..size].to_vec();
                b = &b[size..];
                align(&mut b, total)?;
                if name == b"TRAILER!!!" {
                    return if b.is_empty() {
                        Ok(out)
                    } else {
                        Err("bytes after the trailer".into())
                    };
                }
                out.push(Entry {
                    name,
                    mode,
                    uid,
                    gid,
                    data,
                    rdev,
                });
            }
        }

        #[derive(Debug, Clone)]
        enum Kind {
            Dir,
            File(Vec<u8>),
            Symlink(String),
            Chardev(u32, u32),
        }

        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => "/?[a-z0-9._-]{1,12}(/[a-z0-9._-]{1,12}){0,3}",
                1 => any::<String>(),
                1 => Just("TRAILER!!!".to_string()),
                1 => Just("/TRAILER!!!".to_string()),
                1 => "[a-z]{0,3}\\x00[a-z]{0,3}",
                1 => Just(String::new()),
            ]
        }

        fn kind() -> impl Strategy<Value = Kind> {
            prop_oneof![
                Just(Kind::Dir),
                proptest::collection::vec(any::<u8>(), 0..70).prop_map(Kind::File),
                any::<String>().prop_map(Kind::Symlink),
                (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Kind::Chardev(a, b)),
            ]
        }

        fn perm() -> impl Strategy<Value = u32> {
            prop_oneof![4 => 0u32..=0o7777, 1 => any::<u32>()]
        }

        proptest! {
            /// Arbitrary names, kinds and modes: each entry is refused (a name with
            /// NUL or the trailer's, permissions beyond 07777) or read back by a
            /// newc reader exactly as written (the name without leading slashes, `.`
            /// for none), in order, in a 4-aligned archive that ends at its trailer.
            #[test]
            fn what_is_written_is_what_a_reader_reads(
                entries in proptest::collection::vec((name(), kind(), perm(), any::<u32>(), any::<u32>()), 0..8)
            ) {
                let mut c = Cpio::new(Vec::new());
                let mut expected = vec![];
                for (name, kind, perm, uid, gid) in &entries {
                    let stored = name.trim_start_matches('/');
                    let stored = if stored.is_empty() { "." } else { stored };
                    let refuse = stored.contains('\0') || stored == "TRAILER!!!"
                        || (!matches!(kind, Kind::Symlink(_)) && perm & !0o7777 != 0);
                    let (r, e) = match kind {
                        Kind::Dir => (c.dir(name, *perm, *uid, *gid),
                            (0o040000 | perm, *uid, *gid, vec![], (0, 0))),
                        Kind::File(d) => (c.file(name, *perm, *uid, *gid, d),
                            (0o100000 | perm, *uid, *gid, d.clone(), (0, 0))),
                        Kind::Symlink(t) => (c.symlink(name, t, *uid, *gid),
                            (0o120777, *uid, *gid, t.clone().into_bytes(), (0, 0))),
                        Kind::Chardev(a, b) => (c.chardev(name, *perm, *a, *b),
                            (0o020000 | perm, 0, 0, vec![], (*a, *b))),
                    };
                    prop_assert_eq!(r.is_err(), refuse, "{:?} {:?} {:o}: {:?}", name, kind, perm, r);
                    if !refuse {
                        let (mode, uid, gid, data, rdev) = e;
                        expected.push(Entry { name: stored.as_bytes().to_vec(), mode, uid, gid, data, rdev });
                    }
                }
                let bytes = c.finish().unwrap();
                prop_assert_eq!(bytes.len() % 4, 0);
                prop_assert_eq!(read(&bytes).map_err(TestCaseError::fail)?, expected);
            }
        }
    }
}
