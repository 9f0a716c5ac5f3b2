//! The guest's half of the loop-directory handshake (design.md §3): `.tkn` when the
//! runner is up, the watch on `.trm`, `.brk` at the end. Files only; it stops nothing.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use protocol::{safefs, secret, sibling, Kind, MAX_SIGNAL_FILE};

/// Write the ready mark `tkn` (it holds the runner's name).
pub fn mark_ready(tkn: &Path, name: &str) -> Result<(), String> {
    safefs::write_replace(tkn, name.as_bytes(), 0o644)
        .map_err(|e| format!("cannot write {}: {e}", tkn.display()))?;
    log!("runner started; ready mark {} written", tkn.display());
    Ok(())
}

/// Watches `.trm` (the `.tkn` path's sibling) for this VM's secret.
pub struct Watcher<'a> {
    tkn: Option<PathBuf>,
    trm: Option<PathBuf>,
    secret: &'a str,
    inotify: Inotify,
    /// The last refused content, so that a forged `.trm` is reported once.
    last_forged: Option<Vec<u8>>,
}

impl<'a> Watcher<'a> {
    /// Watch the directory of `tkn` (none in insecure mode). inotify does not see
    /// host-side writes through 9p/virtio-fs, so the caller also polls [`Self::trm_asks_stop`].
    pub fn new(tkn: Option<&Path>, secret: &'a str) -> Result<Watcher<'a>, String> {
        let trm = tkn.map(|t| sibling(t, Kind::Trm));
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| format!("inotify: {e}"))?;
        if let Some(dir) = trm.as_deref().and_then(Path::parent) {
            let flags = AddWatchFlags::IN_CLOSE_WRITE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_CREATE;
            if let Err(e) = inotify.add_watch(dir, flags) {
                log!("inotify on {} failed ({e}); polling instead", dir.display());
            }
        }
        Ok(Watcher {
            tkn: tkn.map(Path::to_path_buf),
            trm,
            secret,
            inotify,
            last_forged: None,
        })
    }

    /// The descriptor to poll: readable when something changed in the directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.inotify.as_fd()
    }

    /// Drain the inotify events; which file changed does not matter, `.trm` is re-read.
    pub fn drain(&self) {
        while self.inotify.read_events().is_ok_and(|e| !e.is_empty()) {}
    }

    /// Does `.trm` carry this VM's secret? Anything else there is reported (once per
    /// content) and ignored.
    pub fn trm_asks_stop(&mut self) -> bool {
        let Some(trm) = &self.trm else { return false };
        match safefs::read_bounded(trm, MAX_SIGNAL_FILE) {
            Ok(None) => {}
            Ok(Some(content)) if secret::matches(self.secret, &content) => return true,
            Ok(Some(content)) => {
                if self.last_forged.as_ref() != Some(&content) {
                    log!(
                        "ignoring {}: it does not carry this VM's secret",
                        trm.display()
                    );
                    self.last_forged = Some(content);
                }
            }
            Err(e) => {
                if self.last_forged.is_none() {
                    log!("ignoring .trm: {e}");
                    self.last_forged = Some(vec![]);
                }
            }
        }
        false
    }

    /// Ask the host to end this loop: `.brk` with the secret.
    pub fn write_brk(&self) {
        if let Some(tkn) = &self.tkn {
            let brk = sibling(tkn, Kind::Brk);
            match safefs::write_replace(&brk, self.secret.as_bytes(), 0o600) {
                Ok(()) => log!("asked the host to end this loop ({})", brk.display()),
                Err(e) => log!("cannot write {}: {e}", brk.display()),
            }
        }
    }
}
