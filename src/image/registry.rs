//! The record of the bundles `image bundle` wrote (`~/.cache/gh-runner-microvm/
//! bundles`), for `image prune`. It only remembers paths; it never deletes.

use std::path::{Path, PathBuf};

use crate::types::paths::cache_dir;

pub(super) fn bundle_registry() -> PathBuf {
    cache_dir().join("bundles")
}

/// Remember a bundle this project made (for `image prune`).
pub(super) fn record_bundle(dir: &Path) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let known = recorded_bundles();
    if known.contains(&dir) {
        return;
    }
    let _ = std::fs::create_dir_all(cache_dir());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(bundle_registry())
    {
        use std::io::Write;
        let _ = writeln!(f, "{}", dir.display());
    }
}

/// The bundles this project made, as recorded.
pub(super) fn recorded_bundles() -> Vec<PathBuf> {
    std::fs::read_to_string(bundle_registry())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

pub(super) fn forget_bundles() {
    let _ = std::fs::remove_file(bundle_registry());
}
