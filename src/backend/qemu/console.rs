//! The guest's serial console in `<state>/<vm>/console.log`: its tail for
//! failure reports (led by a kernel panic's cause) and boot-stall detection.
//! Reads only, and never more than a bound; QEMU writes it.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Qemu;

/// At most this much of a console is read at once: the guest decides its size.
const READ_AT_MOST: u64 = 256 << 10;

/// The first (`from_end`: last) [`READ_AT_MOST`] bytes of a file.
pub(super) fn read_bounded(path: &Path, from_end: bool) -> Option<Vec<u8>> {
    let mut f = std::fs::File::open(path).ok()?;
    if from_end {
        let len = f.metadata().ok()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(READ_AT_MOST)))
            .ok()?;
    }
    let mut buf = vec![];
    f.take(READ_AT_MOST).read_to_end(&mut buf).ok()?;
    Some(buf)
}

impl Qemu {
    /// Has the guest's boot stalled? Some TCG boots hang silently before `/init`
    /// (QEMU microvm notes); a guest whose console shows no line of our init after
    /// this long is killed and retried rather than waited for until --boot-timeout.
    pub(super) fn boot_stalled(&self, name: &str, elapsed: Duration) -> bool {
        let limit = if self.uses_kvm() {
            Duration::from_secs(15)
        } else {
            Duration::from_secs(30)
        };
        elapsed >= limit
            && !read_bounded(&self.console_path(name), false)
                .is_some_and(|c| protocol::console::shows_entrypoint(&c))
    }

    /// The VM's console log.
    pub fn console_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("console.log")
    }

    /// How large the VM's console has grown.
    pub(super) fn console_bytes(&self, name: &str) -> Option<u64> {
        std::fs::metadata(self.console_path(name))
            .ok()
            .map(|m| m.len())
    }

    /// The last lines of the VM's console, read with a bound and made safe to
    /// print (the guest wrote them).
    pub(super) fn console_tail(&self, name: &str, lines: usize) -> Option<String> {
        let text = read_bounded(&self.console_path(name), true)?;
        let text = crate::types::text::printable(&String::from_utf8_lossy(&text));
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        // A panic's cause is above its stack trace: lead with it.
        match all.iter().rposition(|l| l.contains("Kernel panic")) {
            Some(k) if k < start => {
                let from = k.saturating_sub(4);
                let tail = &all[all.len().saturating_sub(lines / 2)..];
                Some(format!(
                    "{}\n[…]\n{}",
                    all[from..=k].join("\n"),
                    tail.join("\n")
                ))
            }
            // The panic is in the window but its cause may be just above it.
            Some(k) => Some(all[start.min(k.saturating_sub(4))..].join("\n")),
            None => Some(all[start..].join("\n")),
        }
    }
}
