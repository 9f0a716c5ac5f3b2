//! The per-prefix lock (design.md §3): one orchestrator per prefix on a host.
//! It only takes and reports the lock; what runs under it is `run`'s.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use super::{io, OrchestratorError};

/// Take the per-prefix lock (held for the life of the returned value): the file
/// `<prefix>.lock` in `dir`, this user's private temporary directory
/// (`types::paths::private_tmp`), so another user's orchestrator of the same
/// prefix neither blocks nor shares it.
pub(super) fn lock(dir: &Path, prefix: &str) -> Result<Flock<std::fs::File>, OrchestratorError> {
    let path = dir.join(format!("{prefix}.lock"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io(format!("open the lock file {}", path.display())))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut f) => {
            use std::io::{Seek, Write};
            let _ = f.set_len(0);
            let _ = f.seek(std::io::SeekFrom::Start(0));
            let _ = writeln!(f, "{}", std::process::id());
            Ok(f)
        }
        Err((_, _)) => {
            let holder = std::fs::read_to_string(&path)
                .map(|p| format!("pid {}", p.trim()))
                .unwrap_or_else(|_| "unknown pid".into());
            Err(OrchestratorError::Locked {
                prefix: prefix.into(),
                holder,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let first = lock(d.path(), "P").unwrap();
        let err = lock(d.path(), "P").unwrap_err();
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
        assert!(lock(d.path(), "Q").is_ok());
        drop(first);
        assert!(lock(d.path(), "P").is_ok());
    }
}
