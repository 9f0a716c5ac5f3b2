//! Where this project's files live on the host: the user's cache, this user's
//! private directory in a shared temporary directory, and the executables built
//! beside ours. Lookups, and the making of that one private directory; no other file.

use std::path::{Path, PathBuf};

/// `$XDG_CACHE_HOME/gh-runner-microvm` (or `~/.cache/…`; with neither, `cache` in
/// this user's private temporary directory, [`private_tmp`]).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("gh-runner-microvm"))
        .unwrap_or_else(|| {
            let tmp = std::env::temp_dir();
            if let Err(e) = private_tmp(&tmp) {
                // Nothing is written through a name someone else planted: the
                // cache's writers fail on the error's path instead.
                tracing::warn!("no cache directory (HOME is unset): {e}");
            }
            user_tmp(&tmp).join("cache")
        })
}

/// This user's directory in the shared temporary directory `tmp`:
/// `<tmp>/gh-runner-microvm-<euid>`. A lookup: [`private_tmp`] makes it.
pub fn user_tmp(tmp: &Path) -> PathBuf {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    tmp.join(format!("gh-runner-microvm-{uid}"))
}

/// [`user_tmp`], made 0700 or taken as it is only when it is a real directory of
/// this user closed to others; anything else at that name (a link, another
/// user's directory, a file) was planted by someone else and is an error naming it.
/// Every name this project makes in a shared temporary directory lives in here.
pub fn private_tmp(tmp: &Path) -> std::io::Result<PathBuf> {
    let dir = user_tmp(tmp);
    protocol::safefs::ensure_private_dir(&dir)?;
    Ok(dir)
}

/// `name` beside the running executable, if it is there.
pub fn beside_me(name: &str) -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name(name))
        .filter(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_private_tmp_is_per_user_and_refuses_what_others_planted() {
        let shared = tempfile::tempdir().unwrap();
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let mine = private_tmp(shared.path()).unwrap();
        assert_eq!(mine, shared.path().join(format!("gh-runner-microvm-{uid}")));
        assert_eq!(private_tmp(shared.path()).unwrap(), mine, "again: the same");
        std::fs::remove_dir(&mine).unwrap();
        // A link planted at the name, to a directory that looks fine: refused.
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), &mine).unwrap();
        let e = private_tmp(shared.path()).unwrap_err();
        assert!(e.to_string().contains(&mine.display().to_string()), "{e}");
        std::fs::remove_file(&mine).unwrap();
        // A directory open to others: refused.
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        assert!(private_tmp(shared.path()).is_err());
    }
}
