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

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let name = if name.is_empty() { "." } else { name };
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
        self.entry(name, 0o040000 | perm, uid, gid, &[], (0, 0))
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
        self.entry(name, 0o100000 | perm, uid, gid, data, (0, 0))
    }

    /// A symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str, uid: u32, gid: u32) -> io::Result<()> {
        self.entry(name, 0o120777, uid, gid, target.as_bytes(), (0, 0))
    }

    /// A character device.
    pub fn chardev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, 0o020000 | perm, 0, 0, &[], (major, minor))
    }

    /// Write the trailer and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 0, 0, &[], (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

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
}
