//! QEMU `-M microvm` (design.md §6): kernel + initramfs from a bundle, the loop
//! directory over virtio-9p (`security_model=mapped-xattr`: a guest's symlinks and
//! FIFOs land on the host as regular files), user networking (by default inside a
//! filtered private namespace, `net`), the console in a per-VM log file, QMP,
//! and the guest's exit status through isa-debug-exit (`protocol::exit::QemuExit`).
//!
//! This file owns the loop's QEMU settings, the bundle, the VM's state directory
//! and the [`Hypervisor`] implementation; each concern beyond that has its room.

mod accel;
mod cmdline;
mod console;
pub mod keep;
mod net;
mod qmp;
mod scratch;
mod snapshot;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use accel::{kvm_cache, kvm_remembered, probe_boot, Accel};
use net::VmNet;
pub use net::{net_connect, Forward, NetMode};
pub use scratch::scratch_root;
pub use snapshot::{templates_dir, StartMode};

use protocol::exit::{self, QemuExit};

use super::{BackendError, BoxFuture, Hypervisor, Registration};
use crate::image::BundleInfo;
use crate::types::runtime::Runtime;
use crate::types::vm::VmSpec;

/// `-R qemu` only: `-R ''` never picks it (it boots bundles, not images).
pub(super) const REGISTRATION: Registration = Registration {
    runtime: Runtime::Qemu,
    detect: None,
    open: |cfg| Ok(Box::new(Qemu::new(cfg.clone())?)),
};

/// QEMU settings of a loop.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Accelerator choice.
    pub accel: Accel,
    /// Network mode.
    pub net: NetMode,
    /// Forwards.
    pub forwards: Vec<Forward>,
    /// What `--net internet` opens beyond the internet (`--net-allow`).
    pub policy: crate::guestnet::Policy,
    /// Kernel overriding the bundle's.
    pub kernel: Option<PathBuf>,
    /// Bytes of the per-VM scratch disk of root-disk bundles (0: none).
    pub scratch: u64,
    /// Cold boots or restores from a memory-snapshot template.
    pub start: StartMode,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            accel: Accel::Auto,
            net: NetMode::Internet,
            forwards: vec![],
            policy: Default::default(),
            kernel: None,
            scratch: 16 << 30,
            start: StartMode::Auto,
        }
    }
}

/// The QEMU backend of one loop.
#[derive(Debug)]
pub struct Qemu {
    cfg: QemuConfig,
    binary: PathBuf,
    /// Resolved accelerator (auto is probed in `prepare`).
    kvm: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// `<state>/<name>/` holds console.log, qemu.log, qmp.sock.
    state: PathBuf,
    /// This executable, for `--net-connect` forwards.
    helper: PathBuf,
    /// nft and slirp4netns, for `--net internet`.
    tools: Option<crate::guestnet::sandbox::Tools>,
    /// The network side of each running VM: its connector and forward proxies.
    nets: std::sync::Mutex<std::collections::HashMap<String, VmNet>>,
    /// Snapshot templates: which VMs are restored, and whether this loop stopped trying.
    templates: std::sync::Mutex<snapshot::Templates>,
}

/// Guest-visible virtio-mmio devices are limited on microvm.
const MAX_SHARES: usize = 6;

/// Where QEMU VMs of this host keep their per-VM files.
pub fn state_root() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("gh-runner-microvm-qemu.{uid}"))
}

/// How to install QEMU.
pub const QEMU_HINT: &str =
    "install QEMU (Debian/Ubuntu: apt-get install qemu-system-x86; Fedora: dnf install qemu-system-x86-core)";

/// QEMU's executable on `PATH`.
pub fn qemu_binary() -> Result<PathBuf, BackendError> {
    which::which("qemu-system-x86_64").map_err(|_| BackendError::Missing {
        tool: "qemu-system-x86_64",
        hint: QEMU_HINT,
    })
}

/// A bundle's kernel (or `kernel_override`, `--kernel`), initramfs and (for
/// `--oci` bundles) root disk, from its `bundle.json`; a root disk that is gone is
/// an error. Whether the kernel and initramfs exist is not checked here.
pub fn bundle_files(
    image: &Path,
    kernel_override: Option<&Path>,
) -> Result<(PathBuf, PathBuf, Option<crate::image::oci::RootDisk>), BackendError> {
    let info = BundleInfo::load(image).map_err(|e| BackendError::Bundle(image.into(), e))?;
    // The uncompressed PVH kernel when the bundle has it (QEMU loads it as it is:
    // seconds faster under TCG than a bzImage decompressing itself).
    let kernel = kernel_override.map(Path::to_path_buf).unwrap_or_else(|| {
        info.vmlinux
            .as_ref()
            .map(|v| image.join(v))
            .filter(|v| v.is_file())
            .unwrap_or_else(|| image.join(&info.kernel))
    });
    if let Some(r) = &info.root {
        if !r.disk.is_file() {
            return Err(BackendError::Image(
                image.into(),
                format!(
                    "its root disk {} is gone (pruned?); make the bundle again with `orchestrator image bundle --oci {}`",
                    r.disk.display(),
                    r.image
                ),
            ));
        }
    }
    Ok((kernel, image.join(&info.initrd), info.root))
}

impl Qemu {
    /// Check that QEMU is installed.
    pub fn new(cfg: QemuConfig) -> Result<Qemu, BackendError> {
        let binary = qemu_binary()?;
        let helper =
            std::env::current_exe().map_err(|e| BackendError::Spawn("current_exe".into(), e))?;
        let state = state_root();
        protocol::safefs::ensure_private_dir(&state)
            .map_err(|e| BackendError::Spawn(format!("mkdir {}", state.display()), e))?;
        let tools = match cfg.net {
            NetMode::Internet => Some(crate::guestnet::sandbox::Tools::find()?),
            NetMode::Restricted | NetMode::User => None,
        };
        Ok(Qemu {
            kvm: Default::default(),
            cfg,
            binary,
            state,
            helper,
            tools,
            nets: Default::default(),
            templates: Default::default(),
        })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.state.join(name)
    }

    fn uses_kvm(&self) -> bool {
        self.kvm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The bundle's kernel, initramfs and (for `--oci` bundles) root disk.
    fn bundle(
        &self,
        image: &Path,
    ) -> Result<(PathBuf, PathBuf, Option<crate::image::oci::RootDisk>), BackendError> {
        bundle_files(image, self.cfg.kernel.as_deref())
    }

    /// Check the bundle and settle `--accel auto` (probing KVM with a real boot).
    async fn prepare_bundle(&self, image: &str) -> Result<(), BackendError> {
        let (kernel, initrd, _) = self.bundle(Path::new(image))?;
        if self.cfg.kernel.is_some() {
            crate::image::vmlinux::check_bootable(&kernel).map_err(|why| {
                BackendError::Image(
                    image.into(),
                    format!("--kernel {}: {why}", kernel.display()),
                )
            })?;
        }
        let kvm = match self.cfg.accel {
            Accel::Tcg => false,
            Accel::Kvm => true,
            Accel::Auto => self.probe_kvm(&kernel, &initrd).await,
        };
        self.kvm.store(kvm, std::sync::atomic::Ordering::Relaxed);
        self.check_net().await
    }

    /// Make the VM's state directory.
    fn create_dir(&self, spec: &VmSpec) -> Result<(), BackendError> {
        if spec.mounts.len() + usize::from(spec.env_dir.is_some()) > MAX_SHARES {
            return Err(BackendError::Image(
                spec.image.clone().into(),
                format!("QEMU microvm takes at most {MAX_SHARES} shared directories (the loop directory, -M and -D)"),
            ));
        }
        let (_, _, root) = self.bundle(Path::new(&spec.image))?;
        let d = self.dir(&spec.name);
        protocol::safefs::create_private_dir(&d)
            .map_err(|e| BackendError::Spawn(format!("mkdir {}", d.display()), e))?;
        if root.is_some() && self.cfg.scratch > 0 {
            self.make_scratch(&spec.name)?;
        }
        Ok(())
    }

    /// Remove the VM's state and scratch disk (its process is gone or being killed).
    fn remove(&self, name: &str) -> Result<(), BackendError> {
        self.drop_net(name);
        self.forget_start(name);
        let scratch = self.scratch_path(name);
        protocol::safefs::remove(&scratch)
            .map_err(|e| BackendError::Spawn(format!("remove {}", scratch.display()), e))?;
        protocol::safefs::remove(&self.dir(name))
            .map_err(|e| BackendError::Spawn(format!("remove {}", self.dir(name).display()), e))
    }

    /// VMs with state or a scratch disk on this host.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.state)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(rd) = std::fs::read_dir(scratch_root()) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(vm) = n.strip_suffix(".ext4") {
                    if !names.iter().any(|x| x == vm) {
                        names.push(vm.to_string());
                    }
                }
            }
        }
        names
    }
}

impl Hypervisor for Qemu {
    fn runtime(&self) -> Runtime {
        Runtime::Qemu
    }

    fn prepare<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.prepare_bundle(image))
    }

    fn create<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.create_dir(spec)?;
            self.plan_start(spec, true).await
        })
    }

    fn command(&self, spec: &VmSpec) -> Result<std::process::Command, BackendError> {
        self.qemu_command(spec, cmdline::Boot::Cold)
    }

    fn start<'a>(
        &'a self,
        spec: &'a VmSpec,
    ) -> BoxFuture<'a, Result<tokio::process::Child, BackendError>> {
        Box::pin(self.start_vm(spec))
    }

    fn prepare_start<'a>(&'a self, shape: &'a VmSpec) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let r = self.plan_start(shape, true).await;
            self.forget_start(&shape.name);
            r
        })
    }

    fn prestart<'a>(
        &'a self,
        spec: &'a VmSpec,
    ) -> BoxFuture<'a, Result<Option<tokio::process::Child>, BackendError>> {
        Box::pin(async move { self.prestart_vm(spec).await.map(Some) })
    }

    fn handoff<'a>(
        &'a self,
        spec: &'a VmSpec,
        child: &'a mut tokio::process::Child,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.handoff_vm(spec, child))
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move { self.remove(name) })
    }

    fn list<'a>(&'a self, _prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        Box::pin(async move { Ok(self.names()) })
    }

    fn describe_exit(&self, st: &std::process::ExitStatus) -> (bool, String) {
        describe_exit(st)
    }

    fn guest_status(&self, st: &std::process::ExitStatus) -> Option<i32> {
        guest_status(st)
    }

    fn boot_stalled(&self, name: &str, elapsed: Duration) -> bool {
        Qemu::boot_stalled(self, name, elapsed)
    }

    fn console_tail(&self, name: &str) -> Option<String> {
        Qemu::console_tail(self, name, 25)
    }

    fn console_bytes(&self, name: &str) -> Option<u64> {
        Qemu::console_bytes(self, name)
    }

    fn keep_console(&self, name: &str, prefix: &str, keep: u32) -> std::io::Result<()> {
        keep::keep(&self.console_path(name), name, prefix, keep)
    }

    fn check_host(&self, image: &str) -> Result<(), BackendError> {
        if !self.binary.is_file() {
            return Err(BackendError::Gone {
                what: format!("QEMU ({})", self.binary.display()),
                fix: format!(
                    "{QEMU_HINT}, at that path (restart the orchestrator to use one elsewhere on PATH)"
                ),
            });
        }
        let bundle = Path::new(image);
        let files = self.bundle(bundle).and_then(|(kernel, initrd, _)| {
            match [&kernel, &initrd].into_iter().find(|f| !f.is_file()) {
                Some(f) => Err(BackendError::Image(
                    bundle.into(),
                    format!("{} is missing", f.display()),
                )),
                None => Ok(()),
            }
        });
        files.map_err(|e| BackendError::Gone {
            what: format!("the bundle -i {image}"),
            fix: format!(
                "{}; make it again (`orchestrator image bundle … --out {image}`) or restore it",
                crate::logging::chain(&e)
            ),
        })?;
        // A root-disk bundle's VM needs its scratch disk: no room is a full disk.
        match self.bundle(bundle) {
            Ok((_, _, Some(_))) if self.cfg.scratch > 0 => self.scratch_room(),
            _ => Ok(()),
        }
    }

    fn powerdown<'a>(&'a self, name: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(Qemu::powerdown(self, name))
    }
}

/// The status the guest reported through isa-debug-exit (QEMU exits `2 * s + 1`).
pub fn guest_status(st: &std::process::ExitStatus) -> Option<i32> {
    QemuExit::decode(st.code()).guest().map(i32::from)
}

/// What QEMU's exit status says about the guest.
pub fn describe_exit(st: &std::process::ExitStatus) -> (bool, String) {
    match QemuExit::decode(st.code()) {
        QemuExit::Guest(g) => (g == exit::ENDED, format!("guest exit status {g}")),
        QemuExit::PoweredOff => (true, "guest powered off".into()),
        QemuExit::Failed(c) => (false, format!("QEMU failed (exit status {c})")),
        QemuExit::Killed => (false, format!("QEMU {st}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(&std::process::ExitStatus::from_raw(1 << 8)),
            (true, "guest exit status 0".into())
        );
        assert_eq!(
            describe_exit(&std::process::ExitStatus::from_raw(251 << 8)).1,
            "guest exit status 125"
        );
    }
}
