//! The guest's serial console in `<state>/<vm>/console.log`: its tail for
//! failure reports (led by a kernel panic's cause) and boot-stall detection.
//! Reads only; QEMU writes it.

use std::path::PathBuf;
use std::time::Duration;

use super::Qemu;

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
            && !std::fs::read(self.console_path(name))
                .is_ok_and(|c| protocol::console::shows_entrypoint(&c))
    }

    /// The VM's console log.
    pub fn console_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("console.log")
    }

    /// The last lines of the VM's console.
    pub(super) fn console_tail(&self, name: &str, lines: usize) -> Option<String> {
        let text = std::fs::read(self.dir(name).join("console.log")).ok()?;
        let text = String::from_utf8_lossy(&text);
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
