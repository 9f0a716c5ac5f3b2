//! File operations on hostile ground (design.md §3): the only way either side touches
//! the loop directory. It must never follow a link, block on a read, or read much.
//!
//! Whatever runs in the guest can be root and can create anything in the loop
//! directory: a symlink named `<id>.trm` that points at a host file, a FIFO named
//! `<id>.brk`, a 10 GB `<id>.tkn`, a directory where a file is expected. So:
//! - reads open with `O_NOFOLLOW | O_NONBLOCK`, check on the *opened* descriptor
//!   that it is a regular file, and read at most a bound;
//! - writes create a fresh file with `O_EXCL | O_NOFOLLOW` under a random name
//!   and `rename` it over the target, which replaces (never follows) a link;
//! - removal unlinks names inside the directory and never follows anything.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a hostile-ground read was refused.
#[derive(Debug, thiserror::Error)]
pub enum SafeError {
    /// The name is a symlink, FIFO, socket, device or directory.
    #[error("{0} is not a regular file (refusing to follow or block on it)")]
    NotRegular(PathBuf),
    /// The file is larger than the protocol allows.
    #[error("{path} is larger than {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The bound.
        max: u64,
    },
    /// Any other I/O failure.
    #[error("cannot access {0}")]
    Io(PathBuf, #[source] io::Error),
}

/// Read a small regular file without following links or blocking.
/// `Ok(None)` when nothing stands at `path`.
pub fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, SafeError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        // O_NOFOLLOW on a symlink gives ELOOP.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(SafeError::NotRegular(path.into()))
        }
        // O_NONBLOCK on a FIFO with no writer succeeds; a socket gives ENXIO.
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(SafeError::NotRegular(path.into()))
        }
        Err(e) => return Err(SafeError::Io(path.into(), e)),
    };
    let meta = file.metadata().map_err(|e| SafeError::Io(path.into(), e))?;
    if !meta.file_type().is_file() {
        return Err(SafeError::NotRegular(path.into()));
    }
    if meta.len() > max {
        return Err(SafeError::TooLarge {
            path: path.into(),
            max,
        });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // The file may grow between fstat and read: take at most max + 1 bytes.
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SafeError::Io(path.into(), e))?;
    if buf.len() as u64 > max {
        return Err(SafeError::TooLarge {
            path: path.into(),
            max,
        });
    }
    Ok(Some(buf))
}

/// Is there a regular file (not a link to one) at `path`?
pub fn is_regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// Write `content` to `path` with permissions `mode`, replacing whatever stands
/// there (a planted symlink is replaced, never followed).
pub fn write_replace(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let suffix = crate::secret::random_alnum(12).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
    let result = (|| {
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true) // O_CREAT | O_EXCL: never opens an existing name
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed `mode`; set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(content)?;
        f.sync_all()?;
        match std::fs::rename(&tmp, path) {
            // A directory planted at the name: remove it and try once more.
            Err(e) if path.symlink_metadata().is_ok_and(|m| m.is_dir()) => {
                std::fs::remove_dir_all(path).map_err(|_| e)?;
                std::fs::rename(&tmp, path)
            }
            r => r,
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Remove whatever stands at `path` without following it. Missing is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        // remove_dir_all does not follow symlinks inside the tree.
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        },
    }
}

/// Remove every entry of `dir` named `<id>.*` (and our temporary `.<id>.*.tmp`),
/// whatever its type. Returns how many were removed.
pub fn remove_id_files(dir: &Path, id: &str) -> io::Result<usize> {
    let dotted = format!("{id}.");
    let hidden = format!(".{id}.");
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(&dotted) || name.starts_with(&hidden) {
            remove(&entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Remove everything in `dir` (the loop directory, between two VMs): whatever
/// kind each entry is, never following a link; a directory a guest closed
/// (mode 000) is opened for its owner first. Returns how many entries went.
/// Only for a directory no guest can write to any more (its VM is gone).
pub fn empty_dir(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        remove_tree(&path)?;
        n += 1;
    }
    Ok(n)
}

fn remove_tree(path: &Path) -> io::Result<()> {
    let m = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r?,
    };
    if !m.is_dir() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        };
    }
    // A real directory (checked without following): make it ours to list and
    // empty, then descend; the links inside are removed, not followed.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    std::fs::remove_dir(path)
}

/// What a loop directory holds, counted without following links and at most
/// up to the bounds (the count stops one past a bound: a guest can make more
/// entries than the host should ever walk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Entries, directories included.
    pub entries: u64,
    /// Bytes of regular files (their allocated size, so sparse files count
    /// for what they take).
    pub bytes: u64,
}

impl Usage {
    /// Is either bound passed?
    pub fn exceeds(&self, max_entries: u64, max_bytes: u64) -> bool {
        self.entries > max_entries || self.bytes > max_bytes
    }
}

/// Count what `dir` holds, stopping once either bound is passed.
pub fn usage(dir: &Path, max_entries: u64, max_bytes: u64) -> io::Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let mut u = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            // Removed meanwhile: nothing to count. Anything else unreadable (a
            // directory its writer closed, a tree deeper than a path may be long)
            // cannot be measured: an error, for the caller to fail closed on.
            Err(e) if d != dir && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", d.display()))),
        };
        for entry in rd {
            let entry = entry?;
            u.entries += 1;
            match std::fs::symlink_metadata(entry.path()) {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) if m.is_file() => {
                    u.bytes = u.bytes.saturating_add(m.blocks().saturating_mul(512))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if u.exceeds(max_entries, max_bytes) {
                return Ok(u);
            }
        }
    }
    Ok(u)
}

/// Create `path` as a directory readable only by its owner (0700).
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// A private directory in a shared place (`/tmp`, `/var/tmp`): create it 0700, or
/// accept an existing one only if it is a real directory (not a link), ours, and
/// closed to others; anything else is somebody else's trap and an error.
pub fn ensure_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    match create_private_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        other => return other,
    }
    let md = std::fs::symlink_metadata(path)?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if !md.is_dir() || md.uid() != me || md.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} exists but is not a private directory of uid {me} (a link, another owner, or open to others): remove it",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ghrm-safefs-{tag}-{}-{}",
            std::process::id(),
            crate::secret::random_alnum(6).unwrap()
        ));
        create_private_dir(&d).unwrap();
        d
    }

    #[test]
    fn private_dirs_in_shared_places() {
        let d = tmpdir("private");
        let p = d.join("mine");
        ensure_private_dir(&p).unwrap();
        ensure_private_dir(&p).unwrap(); // again: fine
        let open = d.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(ensure_private_dir(&open).is_err());
        let link = d.join("link");
        symlink(&p, &link).unwrap();
        assert!(ensure_private_dir(&link).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn reads_regular_bounded() {
        let d = tmpdir("read");
        let p = d.join("1-a.brk");
        assert!(read_bounded(&p, 10).unwrap().is_none());
        std::fs::write(&p, b"secret").unwrap();
        assert_eq!(read_bounded(&p, 10).unwrap().unwrap(), b"secret");
        std::fs::write(&p, vec![b'x'; 11]).unwrap();
        assert!(matches!(
            read_bounded(&p, 10),
            Err(SafeError::TooLarge { .. })
        ));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn refuses_symlink_fifo_and_dir() {
        let d = tmpdir("refuse");
        let target = d.join("target");
        std::fs::write(&target, b"host file").unwrap();
        let link = d.join("1-a.brk");
        symlink(&target, &link).unwrap();
        assert!(matches!(
            read_bounded(&link, 100),
            Err(SafeError::NotRegular(_))
        ));
        let fifo = d.join("1-b.brk");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Must return at once rather than wait for a writer.
        assert!(matches!(
            read_bounded(&fifo, 100),
            Err(SafeError::NotRegular(_))
        ));
        let dir = d.join("1-c.brk");
        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(
            read_bounded(&dir, 100),
            Err(SafeError::NotRegular(_))
        ));
        assert!(!is_regular(&link) && !is_regular(&fifo) && !is_regular(&dir));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn write_replaces_symlink_without_following() {
        let d = tmpdir("write");
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let trm = d.join("1-a.trm");
        symlink(&victim, &trm).unwrap();
        write_replace(&trm, b"s3cret", 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(is_regular(&trm));
        assert_eq!(std::fs::read(&trm).unwrap(), b"s3cret");
        let mode = std::fs::metadata(&trm).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A directory planted at the name is replaced too.
        let env = d.join("1-b.env");
        std::fs::create_dir(&env).unwrap();
        std::fs::write(env.join("inner"), b"x").unwrap();
        write_replace(&env, b"K='v'\n", 0o600).unwrap();
        assert!(is_regular(&env));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn removes_only_own_id_files() {
        let d = tmpdir("remove");
        let outside = tmpdir("outside");
        std::fs::write(outside.join("keep"), b"keep").unwrap();
        std::fs::write(d.join("1-a.env"), b"").unwrap();
        std::fs::write(d.join("1-a.tkn"), b"").unwrap();
        symlink(&outside, d.join("1-a.brk")).unwrap();
        std::fs::create_dir(d.join("1-a.trm")).unwrap();
        std::fs::write(d.join("1-ab.tkn"), b"").unwrap();
        std::fs::write(d.join("2-a.tkn"), b"").unwrap();
        assert_eq!(remove_id_files(&d, "1-a").unwrap(), 4);
        assert!(outside.join("keep").exists());
        assert!(d.join("1-ab.tkn").exists() && d.join("2-a.tkn").exists());
        std::fs::remove_dir_all(d).unwrap();
        std::fs::remove_dir_all(outside).unwrap();
    }

    #[test]
    fn empty_dir_removes_every_kind_and_follows_nothing() {
        let outside = tmpdir("empty-out");
        let victim = outside.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let d = tmpdir("empty");
        let p = d.as_path();
        std::fs::write(p.join("left-by-job-a"), "x").unwrap();
        symlink(&victim, p.join("link")).unwrap();
        symlink(&outside, p.join("dirlink")).unwrap();
        nix::unistd::mkfifo(&p.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::create_dir_all(p.join("deep/er")).unwrap();
        std::fs::write(p.join("deep/er/f"), "x").unwrap();
        std::fs::set_permissions(p.join("deep/er"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
        std::fs::set_permissions(p.join("deep"), std::fs::Permissions::from_mode(0o000)).unwrap();
        assert_eq!(empty_dir(p).unwrap(), 5);
        assert_eq!(std::fs::read_dir(p).unwrap().count(), 0);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(outside.is_dir());
        remove(&d).unwrap();
        remove(&outside).unwrap();
    }

    #[test]
    fn usage_counts_without_following_and_stops_past_a_bound() {
        let outside = tmpdir("usage-out");
        std::fs::write(outside.join("big"), vec![1u8; 1 << 20]).unwrap();
        let d = tmpdir("usage");
        let p = d.as_path();
        symlink(&outside, p.join("dirlink")).unwrap();
        std::fs::create_dir(p.join("sub")).unwrap();
        std::fs::write(p.join("sub/f"), vec![1u8; 64 << 10]).unwrap();
        let u = usage(p, 100, 1 << 30).unwrap();
        assert_eq!(u.entries, 3);
        assert!(u.bytes >= 64 << 10 && u.bytes < 1 << 20, "{u:?}");
        assert!(!u.exceeds(100, 1 << 30));
        // A tree deeper than a path may be long cannot be measured: an error.
        let name = "d".repeat(200);
        std::fs::create_dir(p.join("deep")).unwrap();
        let mut at = std::fs::File::open(p.join("deep")).unwrap();
        for _ in 0..25 {
            // Relative creation, as a guest's file server does it, one level at a time.
            nix::sys::stat::mkdirat(&at, name.as_str(), nix::sys::stat::Mode::S_IRWXU).unwrap();
            let next = nix::fcntl::openat(
                &at,
                name.as_str(),
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
                nix::sys::stat::Mode::empty(),
            )
            .unwrap();
            at = std::fs::File::from(next);
        }
        drop(at);
        assert!(usage(p, 10_000, 1 << 30).is_err());
        let st = std::process::Command::new("rm")
            .arg("-rf")
            .arg(p.join("deep"))
            .status()
            .unwrap();
        assert!(st.success());
        for i in 0..50 {
            std::fs::write(p.join(format!("n{i}")), "").unwrap();
        }
        let u = usage(p, 10, 1 << 30).unwrap();
        assert_eq!(u.entries, 11, "the walk stops one past the bound");
        assert!(u.exceeds(10, 1 << 30));
        assert!(usage(p, 1000, 1024).unwrap().exceeds(1000, 1024));
        remove(&d).unwrap();
        remove(&outside).unwrap();
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::time::Duration;

        /// What can stand at a name in a loop directory.
        #[derive(Debug, Clone)]
        enum Kind {
            Missing,
            Regular(usize),
            LinkToFile(usize),
            LinkToDir,
            Dangling,
            Fifo,
            Dir,
            Socket,
        }

        /// A kind, with sizes around `max` for the files.
        fn kind(max: usize) -> impl Strategy<Value = Kind> {
            let size = prop_oneof![
                Just(max.saturating_sub(1)),
                Just(max),
                Just(max + 1),
                0..max + 64,
                Just(0),
            ];
            prop_oneof![
                Just(Kind::Missing),
                size.clone().prop_map(Kind::Regular),
                size.prop_map(Kind::LinkToFile),
                Just(Kind::LinkToDir),
                Just(Kind::Dangling),
                Just(Kind::Fifo),
                Just(Kind::Dir),
                Just(Kind::Socket),
            ]
        }

        fn content(n: usize) -> Vec<u8> {
            (0..n).map(|i| (i % 251) as u8).collect()
        }

        /// Put `kind` at `d/name`; the links point at `d/outside-*`. Returns what must
        /// outlive it (the listening socket).
        fn plant(d: &Path, name: &str, kind: &Kind) -> Option<std::os::unix::net::UnixListener> {
            let p = d.join(name);
            let (file, dir) = (d.join("outside-file"), d.join("outside-dir"));
            std::fs::write(&file, b"precious").unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("keep"), b"keep").unwrap();
            match kind {
                Kind::Missing => {}
                Kind::Regular(n) => std::fs::write(&p, content(*n)).unwrap(),
                Kind::LinkToFile(n) => {
                    std::fs::write(&file, content(*n)).unwrap();
                    symlink(&file, &p).unwrap()
                }
                Kind::LinkToDir => symlink(&dir, &p).unwrap(),
                Kind::Dangling => symlink(d.join("nowhere"), &p).unwrap(),
                Kind::Fifo => nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap(),
                Kind::Dir => {
                    std::fs::create_dir(&p).unwrap();
                    std::fs::write(p.join("inner"), b"x").unwrap();
                }
                Kind::Socket => return Some(std::os::unix::net::UnixListener::bind(&p).unwrap()),
            }
            None
        }

        /// `f` on another thread, failing (not hanging) if it blocks; a FIFO it
        /// might wait on is opened for writing to let it go.
        fn within<T: Send + 'static>(fifo: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || tx.send(f()).unwrap());
            match rx.recv_timeout(Duration::from_secs(2)) {
                Ok(v) => v,
                Err(_) => {
                    let _ = OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(fifo);
                    panic!("blocked on {}", fifo.display());
                }
            }
        }

        fn outside_intact(d: &Path, kind: &Kind) -> bool {
            let file_ok = match kind {
                Kind::LinkToFile(n) => {
                    std::fs::read(d.join("outside-file")).unwrap() == content(*n)
                }
                _ => std::fs::read(d.join("outside-file")).unwrap() == b"precious",
            };
            file_ok && std::fs::read(d.join("outside-dir/keep")).unwrap() == b"keep"
        }

        proptest! {
            /// Reads: a regular file within the bound is read whole; one past it is
            /// TooLarge; nothing is None; every other kind (links included) is
            /// NotRegular; never blocks, never follows.
            #[test]
            fn reads_only_regular_files_within_the_bound(
                (max, kind) in (0usize..700).prop_flat_map(|m| (Just(m), kind(m)))
            ) {
                let d = tmpdir("prop-read");
                let p = d.join("1-a.brk");
                let _sock = plant(&d, "1-a.brk", &kind);
                let got = within(&p, {
                    let p = p.clone();
                    move || read_bounded(&p, max as u64)
                });
                match (&kind, got) {
                    (Kind::Missing, Ok(None)) => {}
                    (Kind::Regular(n), Ok(Some(b))) if *n <= max => {
                        prop_assert_eq!(b, content(*n))
                    }
                    (Kind::Regular(n), Err(SafeError::TooLarge { max: m, .. })) if *n > max => {
                        prop_assert_eq!(m, max as u64)
                    }
                    (
                        Kind::LinkToFile(_) | Kind::LinkToDir | Kind::Dangling | Kind::Fifo
                        | Kind::Dir | Kind::Socket,
                        Err(SafeError::NotRegular(_)),
                    ) => {}
                    (k, r) => prop_assert!(false, "{k:?} with bound {max}: {r:?}"),
                }
                prop_assert_eq!(is_regular(&p), matches!(kind, Kind::Regular(_)));
                prop_assert!(outside_intact(&d, &kind));
                remove(&d).unwrap();
            }

            /// Writes replace whatever stands at the name with exactly the content
            /// and mode, following nothing; removal leaves nothing and follows nothing.
            #[test]
            fn writes_and_removals_replace_and_follow_nothing(
                kind in kind(64),
                body in proptest::collection::vec(any::<u8>(), 0..128),
                mode in prop_oneof![Just(0o600u32), Just(0o644), Just(0o400)],
            ) {
                let d = tmpdir("prop-write");
                let p = d.join("1-a.trm");
                let sock = plant(&d, "1-a.trm", &kind);
                let written = within(&p, {
                    let (p, body) = (p.clone(), body.clone());
                    move || write_replace(&p, &body, mode).map_err(|e| e.to_string())
                });
                prop_assert!(written.is_ok(), "{kind:?}: {written:?}");
                prop_assert!(outside_intact(&d, &kind), "{kind:?}");
                prop_assert_eq!(read_bounded(&p, 1024).unwrap().unwrap(), body);
                let m = std::fs::symlink_metadata(&p).unwrap();
                prop_assert_eq!(m.permissions().mode() & 0o777, mode);
                drop(sock);
                std::fs::remove_file(&p).unwrap();
                let _sock = plant(&d, "1-a.trm", &kind);
                remove(&p).unwrap();
                prop_assert!(std::fs::symlink_metadata(&p).is_err(), "{kind:?} survived");
                prop_assert!(outside_intact(&d, &kind), "{kind:?}");
                remove(&d).unwrap();
            }
        }
    }
}
