//! Where this project's files live on the host: the user's cache and the
//! executables built beside ours. Lookups only; nothing here creates a file.

use std::path::PathBuf;

/// `$XDG_CACHE_HOME/gh-runner-microvm` (or `~/.cache/…`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("gh-runner-microvm")
}

/// `name` beside the running executable, if it is there.
pub fn beside_me(name: &str) -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name(name))
        .filter(|p| p.is_file())
}
