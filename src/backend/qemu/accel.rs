//! The accelerator: `--accel`, the KVM probe (a present /dev/kvm is no proof: a
//! guest must boot) with its per-host cache, and the host TSC rate TCG guests are
//! told. It decides KVM or TCG; it does not start VMs.

use std::path::Path;
use std::time::Duration;

use protocol::cmdline::Cmdline;
use protocol::exit::{self, QemuExit};

use super::Qemu;
use crate::hosttool;

/// `--accel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when a probe guest really boots with it, else TCG (with a warning).
    Auto,
    /// KVM.
    Kvm,
    /// Software emulation (slow; for hosts without usable KVM, and CI).
    Tcg,
}

impl Qemu {
    /// A present /dev/kvm is no proof: boot the bundle with KVM and a short deadline.
    /// The answer is remembered per kernel and QEMU in the user's cache.
    pub(super) async fn probe_kvm(&self, kernel: &Path, initrd: &Path) -> bool {
        let usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if !usable {
            tracing::warn!("/dev/kvm is not usable: using TCG (software emulation, much slower)");
            return false;
        }
        let key = format!("{}|{}", self.binary.display(), kernel.display());
        let cache = kvm_cache();
        if let Some(v) = cached(&cache, &key) {
            return v == "kvm";
        }
        let ok = match probe_boot(&self.binary, kernel, initrd, true, Duration::from_secs(20)).await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!("the KVM probe guest did not boot: {e}");
                false
            }
        };
        if !ok {
            tracing::warn!("a KVM guest did not boot on this host (nested or restricted KVM?): using TCG (software emulation, much slower)");
        }
        remember(&cache, &key, if ok { "kvm" } else { "tcg" });
        ok
    }
}

/// Boot `kernel` and `initrd` with `ghrm.probe=1` under KVM (`kvm`) or TCG, as the
/// VMs would be: Ok(how long it took) when the guest's init ran and ended the VM
/// with its status within `within`, else why not (bounded text).
pub async fn probe_boot(
    binary: &Path,
    kernel: &Path,
    initrd: &Path,
    kvm: bool,
    within: Duration,
) -> Result<Duration, String> {
    let mut cmd = hosttool::command(binary);
    cmd.args(["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on"]);
    if kvm {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-accel", "tcg", "-cpu", "max"]);
    }
    cmd.args(["-m", "256"]);
    // The console on standard output: without a `-serial` back end the guest has no
    // ttyS0, its init no console, and it dies before it can report (exit 0); and
    // QEMU's own failures exit 1, as a guest reporting 0 does, so the entrypoint's
    // mark on the console is what proves the boot.
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
    ]);
    cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd);
    let mut append = format!("console=ttyS0 panic=-1 {}", probe_words());
    if !kvm {
        // As the VMs' own command line (cmdline.rs): TCG's PIT calibration fails on a busy host.
        if let Some(khz) = host_tsc_khz() {
            append.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    cmd.args(["-append", &append, "-device", exit::DEBUG_EXIT_DEVICE]);
    let t0 = std::time::Instant::now();
    match tokio::time::timeout(within, hosttool::output_async(cmd)).await {
        Ok(Ok(out))
            if QemuExit::decode(out.status.code()) == QemuExit::Guest(exit::ENDED)
                && protocol::console::shows_entrypoint(&out.stdout) =>
        {
            Ok(t0.elapsed())
        }
        Ok(Ok(out)) => {
            let said = hosttool::stderr_tail(&out.stderr, 400);
            let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
            let how = if protocol::console::shows_entrypoint(&out.stdout) {
                "the guest's init ran but did not report its status"
            } else {
                "the guest never reached its init"
            };
            Err(format!(
                "{how} (QEMU ended with {}){}{said}",
                out.status,
                if said.is_empty() { "" } else { ": " }
            ))
        }
        Ok(Err(e)) => Err(format!("cannot run {}: {e}", binary.display())),
        Err(_) => Err(format!(
            "the probe guest did not reach its init within {} s",
            within.as_secs()
        )),
    }
}

/// What the loops remember of the KVM probe for this QEMU and kernel (`Some(true)`:
/// KVM), in the user's cache; they probe only when nothing is remembered.
pub fn kvm_remembered(binary: &Path, kernel: &Path) -> Option<bool> {
    let key = format!("{}|{}", binary.display(), kernel.display());
    cached(&kvm_cache(), &key).map(|v| v == "kvm")
}

/// Where the KVM probe's answers are remembered. `kvm-probe` (without `-2`) holds
/// answers of the probe before its guest had a console, which failed wherever it
/// ran: never read, so a host that cached a false "tcg" probes again.
pub fn kvm_cache() -> std::path::PathBuf {
    crate::types::paths::cache_dir().join("kvm-probe-2")
}

/// `ghrm.probe=1`: the guest powers off as soon as its init runs.
fn probe_words() -> String {
    Cmdline {
        probe: true,
        ..Cmdline::default()
    }
    .render()
    .unwrap_or_else(|_| unreachable!("a probe command line has no values to refuse"))
}

/// The probe's remembered answer for `key` (`<qemu>|<kernel>`).
fn cached(cache: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(cache).ok()?;
    let prefix = format!("{key}=");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
}

/// Add `key=answer` to the cache: written beside it and renamed over it, so two
/// loops probing at once never leave a torn file (the last one wins).
fn remember(cache: &Path, key: &str, answer: &str) {
    let Some(dir) = cache.parent() else {
        return;
    };
    let _ = std::fs::create_dir_all(dir);
    let mut text = std::fs::read_to_string(cache).unwrap_or_default();
    text.push_str(&format!("{key}={answer}\n"));
    let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut f| {
        use std::io::Write;
        f.write_all(text.as_bytes())?;
        f.persist(cache).map_err(|e| e.error)?;
        Ok(())
    });
    if let Err(e) = written {
        tracing::debug!("cannot remember the KVM probe in {}: {e}", cache.display());
    }
}

/// The host's TSC rate in kHz, measured once against `CLOCK_MONOTONIC` (x86-64).
pub(super) fn host_tsc_khz() -> Option<u64> {
    static KHZ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: rdtsc has no preconditions on x86-64.
            let (t0, c0) = (std::time::Instant::now(), unsafe {
                std::arch::x86_64::_rdtsc()
            });
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: as above.
            let (c1, t1) = (
                unsafe { std::arch::x86_64::_rdtsc() },
                std::time::Instant::now(),
            );
            let us = (t1 - t0).as_micros() as u64;
            let khz = c1.checked_sub(c0)?.checked_mul(1000)? / us.max(1);
            (100_000..=10_000_000).contains(&khz).then_some(khz)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_boots_with_the_probe_word() {
        assert_eq!(probe_words(), "ghrm.probe=1");
    }

    #[test]
    fn the_probe_cache_is_replaced_whole() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("sub/kvm-probe");
        assert_eq!(cached(&cache, "q|k"), None);
        remember(&cache, "q|k", "tcg");
        remember(&cache, "q|k2", "kvm");
        assert_eq!(cached(&cache, "q|k").as_deref(), Some("tcg"));
        assert_eq!(cached(&cache, "q|k2").as_deref(), Some("kvm"));
        // Only the cache itself is left: no temporary files beside it.
        assert_eq!(
            std::fs::read_dir(cache.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn measures_the_host_tsc() {
        #[cfg(target_arch = "x86_64")]
        assert!(host_tsc_khz().is_some_and(|k| k > 100_000));
    }
}
