//! Consoles that outlive their VM: the last [`KEEP_AT_MOST`] bytes of each ended VM's
//! console, copied into a private per-prefix directory and swept to its loop's newest
//! K; and finding a prefix's consoles, running and kept, for `orchestrator logs`.
//! It never prints guest bytes (callers make them printable) and never reads a
//! console without a bound; nothing here is reachable by a guest.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::types::names::is_vm_of;

/// At most this much of each console is kept (a console may grow to
/// `--console-limit`, 64 MiB by default; the guest decides what it prints).
pub const KEEP_AT_MOST: u64 = 1 << 20;

/// `${XDG_STATE_HOME:-$HOME/.local/state}/gh-runner-microvm/consoles`: outside
/// `$TMPDIR` (kept consoles outlive the orchestrator and a reboot's tmp clean-up),
/// and shared with no guest.
pub fn kept_root() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map(|d| d.join("gh-runner-microvm"))
        // Without a home: this user's own directory in $TMPDIR, never a shared name.
        .unwrap_or_else(|| crate::types::paths::user_tmp(&std::env::temp_dir()))
        .join("consoles")
}

/// Where the consoles of `prefix`'s VMs are kept.
pub fn kept_dir(prefix: &str) -> PathBuf {
    kept_root().join(prefix)
}

/// The loop number in a VM name of `prefix` (`<prefix>-<loop>-<random>`).
pub fn loop_of(vm: &str, prefix: &str) -> Option<u32> {
    if !is_vm_of(vm, prefix) {
        return None;
    }
    vm[prefix.len() + 1..].split('-').next()?.parse().ok()
}

/// One VM's console: running (in the QEMU state directory) or kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    /// The VM's name.
    pub vm: String,
    /// Its loop.
    pub loop_no: u32,
    /// The file.
    pub path: PathBuf,
    /// Its VM's state directory still exists (the VM runs, or is being cleaned up).
    pub running: bool,
    /// When it was last written.
    pub modified: SystemTime,
}

/// Every console of `prefix` on this host: running ones from the QEMU state
/// directory, kept ones from [`kept_dir`]; by loop, the newest first.
pub fn consoles(prefix: &str) -> Vec<Console> {
    let mut found = vec![];
    let mut add = |vm: String, path: PathBuf, running: bool| {
        let Some(loop_no) = loop_of(&vm, prefix) else {
            return;
        };
        // Regular files only; a link is never followed.
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            return;
        };
        if md.is_file() {
            let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push(Console {
                vm,
                loop_no,
                path,
                running,
                modified,
            });
        }
    };
    for e in read_dir(&super::state_root()) {
        let vm = e.file_name().to_string_lossy().into_owned();
        add(vm, e.path().join("console.log"), true);
    }
    for e in read_dir(&kept_dir(prefix)) {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(vm) = n.strip_suffix(".log") {
            add(vm.to_string(), e.path(), false);
        }
    }
    found.sort_by(|a, b| {
        (a.loop_no, b.running, b.modified, &b.vm).cmp(&(b.loop_no, a.running, a.modified, &a.vm))
    });
    found
}

fn read_dir(dir: &Path) -> Vec<std::fs::DirEntry> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().collect())
        .unwrap_or_default()
}

/// Open a console for reading: never through a link, and only a regular file.
pub fn open(path: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

/// The last `max` bytes of an open console: (bytes, how many before them were
/// left out, the offset its end was read at).
pub fn tail(f: &mut std::fs::File, max: u64) -> std::io::Result<(Vec<u8>, u64, u64)> {
    let len = f.metadata()?.len();
    let skipped = len.saturating_sub(max);
    f.seek(SeekFrom::Start(skipped))?;
    let mut buf = Vec::with_capacity(max.min(len) as usize);
    f.by_ref().take(max).read_to_end(&mut buf)?;
    let end = skipped + buf.len() as u64;
    Ok((buf, skipped, end))
}

/// After VM `vm` of `prefix` ended: keep the tail of its console (0600, in a 0700
/// directory), then keep only its loop's newest `keep`. A missing console (the VM
/// never started) is not an error; `keep` 0 keeps none and removes the loop's.
pub(super) fn keep(console: &Path, vm: &str, prefix: &str, keep: u32) -> std::io::Result<()> {
    keep_in(&kept_dir(prefix), console, vm, prefix, keep)
}

/// [`keep`] into `dir` (made private with its parents up to the state home when it
/// is [`kept_dir`]).
fn keep_in(dir: &Path, console: &Path, vm: &str, prefix: &str, keep: u32) -> std::io::Result<()> {
    let Some(loop_no) = loop_of(vm, prefix) else {
        return Ok(());
    };
    if keep == 0 {
        return match dir.exists() {
            true => sweep(dir, prefix, loop_no, 0),
            false => Ok(()),
        };
    }
    let mut f = match open(console) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let (bytes, skipped, _) = tail(&mut f, KEEP_AT_MOST)?;
    match dir == kept_dir(prefix) {
        true => make_private_dirs(dir)?,
        false => protocol::safefs::ensure_private_dir(dir)?,
    }
    let mut content = Vec::with_capacity(bytes.len() + 80);
    if skipped > 0 {
        content.extend_from_slice(
            format!(
                "[gh-runner-microvm: the first {skipped} bytes of this console were not kept]\n"
            )
            .as_bytes(),
        );
    }
    content.extend_from_slice(&bytes);
    protocol::safefs::write_replace(&dir.join(format!("{vm}.log")), &content, 0o600)?;
    sweep(dir, prefix, loop_no, keep)
}

/// `dir` and the directories between it and the state home, each private (0700)
/// and ours: created so, or refused when someone else's or open to others.
fn make_private_dirs(dir: &Path) -> std::io::Result<()> {
    let root = kept_root();
    // The state home itself (~/.local/state) is the user's: created 0700 when
    // missing (XDG), otherwise taken as it is.
    if let Some(home) = root.parent().and_then(Path::parent) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)?;
    }
    for d in [root.parent().unwrap_or(&root), &root, dir] {
        protocol::safefs::ensure_private_dir(d)?;
    }
    Ok(())
}

/// Keep only the newest `keep` kept consoles of loop `loop_no` in `dir`.
fn sweep(dir: &Path, prefix: &str, loop_no: u32, keep: u32) -> std::io::Result<()> {
    let mut mine: Vec<(SystemTime, String)> = vec![];
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(vm) = n.strip_suffix(".log") else {
            continue;
        };
        if loop_of(vm, prefix) != Some(loop_no) {
            continue;
        }
        let t = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        mine.push((t, n));
    }
    mine.sort_by(|a, b| b.cmp(a));
    for (_, n) in mine.into_iter().skip(keep as usize) {
        protocol::safefs::remove(&dir.join(n))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_numbers_come_from_names_of_exactly_this_prefix() {
        assert_eq!(loop_of("GH-runner-3-abc12345", "GH-runner"), Some(3));
        assert_eq!(loop_of("GH-runner-3-abc12345", "GH"), None);
        assert_eq!(loop_of("other-3-abc12345", "GH-runner"), None);
        assert_eq!(loop_of("GH-runner-x-abc12345", "GH-runner"), None);
    }

    #[test]
    fn the_tail_is_bounded_and_says_what_it_left_out() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.log");
        std::fs::write(&p, b"0123456789").unwrap();
        let mut f = open(&p).unwrap();
        assert_eq!(tail(&mut f, 4).unwrap(), (b"6789".to_vec(), 6, 10));
        assert_eq!(tail(&mut f, 64).unwrap(), (b"0123456789".to_vec(), 0, 10));
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(open(&link).is_err(), "a link is not followed");
        assert!(open(d.path()).is_err(), "a directory is not a console");
    }

    #[test]
    fn kept_consoles_are_bounded_private_and_swept() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let kept = d.path().join("kept");
        let console = d.path().join("console.log");
        let mut big = vec![b'x'; KEEP_AT_MOST as usize + 5000];
        big.extend_from_slice(b"\x1b]0;title\x07the end\n");
        std::fs::write(&console, &big).unwrap();
        for vm in ["P-1-aaaa", "P-1-bbbb", "P-1-cccc"] {
            keep_in(&kept, &console, vm, "P", 2).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&kept), 0o700);
        let mut left: Vec<_> = read_dir(&kept).iter().map(|e| e.path()).collect();
        left.sort();
        assert_eq!(left, [kept.join("P-1-bbbb.log"), kept.join("P-1-cccc.log")]);
        for p in &left {
            assert_eq!(mode(p), 0o600);
            let c = std::fs::read(p).unwrap();
            assert!(c.len() as u64 <= KEEP_AT_MOST + 100, "{}", c.len());
            assert!(c.starts_with(b"[gh-runner-microvm: the first 5018 bytes"));
            assert!(c.ends_with(b"\x1b]0;title\x07the end\n"), "kept as written");
        }
        // 0 keeps none, and removes what the loop kept before.
        keep_in(&kept, &console, "P-1-dddd", "P", 0).unwrap();
        assert!(read_dir(&kept).is_empty());
        // A VM that never wrote a console leaves nothing.
        keep_in(&kept, &d.path().join("none"), "P-1-eeee", "P", 2).unwrap();
        assert!(read_dir(&kept).is_empty());
        // A directory open to others is refused, not written into.
        std::fs::set_permissions(&kept, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(keep_in(&kept, &console, "P-1-ffff", "P", 2).is_err());
    }

    #[test]
    fn the_sweep_keeps_the_newest_of_one_loop_only() {
        let d = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        for (i, vm) in ["P-1-aaaa", "P-1-bbbb", "P-1-cccc", "P-2-dddd", "PX-1-eeee"]
            .iter()
            .enumerate()
        {
            let p = d.path().join(format!("{vm}.log"));
            std::fs::write(&p, "x").unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(now - std::time::Duration::from_secs(100 - i as u64))
                .unwrap();
        }
        sweep(d.path(), "P", 1, 2).unwrap();
        let mut left: Vec<String> = read_dir(d.path())
            .iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "P-1-bbbb.log",
                "P-1-cccc.log",
                "P-2-dddd.log",
                "PX-1-eeee.log"
            ]
        );
        sweep(d.path(), "P", 1, 0).unwrap();
        assert_eq!(read_dir(d.path()).len(), 2);
    }
}
