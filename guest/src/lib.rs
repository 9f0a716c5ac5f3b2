//! The host↔guest protocol of gh-runner-microvm, written and read by the same code on
//! both sides; plain types and checks only: no PID-1 duties, no process, no async.
//!
//! Shared by the host (`runner`, `orchestrator`) and the guest (`entrypoint`): the
//! loop directory's files (here, [`envfile`], [`safefs`], [`secret`]), the kernel
//! command line ([`cmdline`]), the console marker ([`console`]), the exit statuses
//! ([`exit`]), the layout of QEMU bundles ([`bundle`]), and the message that wakes a
//! guest restored from a snapshot template ([`resume`]).
//!
//! The contract (design.md §3) is a handful of files in one directory per runner
//! loop, seen by the guest as `/_environment`:
//!
//! | file        | written by | meaning                                                   |
//! |-------------|------------|-----------------------------------------------------------|
//! | `<id>.env`  | host       | everything the guest needs; deleted by the guest at once  |
//! | `<id>.tkn`  | guest      | "ready": the runner started (JIT) or was configured       |
//! | `<id>.brk`  | guest      | the secret: stop the host loop                            |
//! | `<id>.trm`  | host       | the secret: ask the guest to terminate                    |
//!
//! The directory is writable by whatever runs in the guest, so everything in it is
//! hostile input: [`safefs`] never follows a link, never blocks, and reads little.

pub mod bundle;
pub mod cmdline;
pub mod console;
pub mod envfile;
pub mod exit;
pub mod resume;
pub mod safefs;
pub mod secret;
pub mod version;

use std::path::{Path, PathBuf};

/// Where the loop directory is mounted inside the guest.
pub const GUEST_ENV_DIR: &str = "/_environment";
/// Where OCI images carry the entrypoint.
pub const IMAGE_ENTRYPOINT: &str = "/opt/gh-runner-microvm/bin/entrypoint";
/// Default root of the `runner-<version>/` directories (overridden by `RUNNER_INSTALL`).
pub const DEFAULT_RUNNER_INSTALL: &str = "/opt/gh-runner-microvm/share/runner";
/// Environment variable (of the guest process, never of the `.env`) naming the install root.
pub const RUNNER_INSTALL_VAR: &str = "RUNNER_INSTALL";

/// Largest `.env` the guest accepts.
pub const MAX_ENV_FILE: u64 = 64 * 1024;
/// Largest `.brk`/`.trm`/`.tkn` either side reads: a secret or a runner name.
pub const MAX_SIGNAL_FILE: u64 = 512;

/// The file kinds of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<id>.env`: configuration, host → guest, transient.
    Env,
    /// `<id>.tkn`: ready mark, guest → host.
    Tkn,
    /// `<id>.brk`: stop the loop, guest → host, carries the secret.
    Brk,
    /// `<id>.trm`: terminate, host → guest, carries the secret.
    Trm,
    /// `<id>.job`: a job is running, guest → host, present while it runs. A hint
    /// for the host's status and metrics only: the guest controls it, so the host
    /// never bases a decision on it.
    Job,
}

impl Kind {
    /// File extension, without the dot.
    pub fn ext(self) -> &'static str {
        match self {
            Kind::Env => "env",
            Kind::Tkn => "tkn",
            Kind::Brk => "brk",
            Kind::Trm => "trm",
            Kind::Job => "job",
        }
    }
}

/// `dir/<id>.<ext>`.
pub fn file_in(dir: &Path, id: &str, kind: Kind) -> PathBuf {
    dir.join(format!("{id}.{}", kind.ext()))
}

/// The path of `kind` beside `path` (same directory and stem): the guest derives
/// `.brk`/`.trm` from the `.tkn` path it is given.
pub fn sibling(path: &Path, kind: Kind) -> PathBuf {
    path.with_extension(kind.ext())
}

/// Is `id` a valid iteration id (`<loop>-<alphanumerics>`)? Ids are used to build
/// file names, so they must never contain a separator.
pub fn valid_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((l, r)) => {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_digit())
                && !r.is_empty()
                && r.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        None => false,
    }
}

/// Is `prefix` a valid runner prefix (`[A-Za-z0-9][A-Za-z0-9_.-]*`)?
pub fn valid_prefix(prefix: &str) -> bool {
    let mut b = prefix.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphanumeric())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        && prefix.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_prefixes() {
        assert!(valid_id("1-abcDEF7"));
        assert!(valid_id("12-a"));
        assert!(!valid_id("1-ab/c"));
        assert!(!valid_id("-abc"));
        assert!(!valid_id("x-abc"));
        assert!(!valid_id("1-"));
        assert!(!valid_id("1-a.b"));
        assert!(valid_prefix("GH-runner"));
        assert!(valid_prefix("a.b_c-1"));
        assert!(!valid_prefix("-x"));
        assert!(!valid_prefix(""));
        assert!(!valid_prefix("a/b"));
        assert!(!valid_prefix("a b"));
    }

    #[test]
    fn siblings() {
        let t = Path::new("/_environment/1-abc.tkn");
        assert_eq!(sibling(t, Kind::Brk), Path::new("/_environment/1-abc.brk"));
        assert_eq!(sibling(t, Kind::Trm), Path::new("/_environment/1-abc.trm"));
        assert_eq!(
            file_in(Path::new("/d"), "2-x", Kind::Env),
            Path::new("/d/2-x.env")
        );
    }
}
