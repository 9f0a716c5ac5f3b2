//! QEMU `-M microvm` (design.md §6): kernel + initramfs from a bundle, the loop
//! directory over virtio-9p (`security_model=mapped-xattr`: a guest's symlinks and
//! FIFOs land on the host as regular files), user networking (optionally
//! `restrict=on` with explicit forwards), the console in a per-VM log file, QMP,
//! and the guest's exit status through isa-debug-exit (QEMU exits `2 * status + 1`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::image::BundleInfo;

use super::{BackendError, VmSpec};

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

/// `--net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetMode {
    /// QEMU user networking: the guest reaches what the host reaches.
    User,
    /// User networking with `restrict=on`: only the `--net-forward` targets.
    Restricted,
}

/// `--net-forward GUEST_IP:PORT=HOST:PORT`: guest connections to GUEST_IP:PORT are
/// carried to HOST:PORT (one helper process per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Guest-side address.
    pub guest: (std::net::Ipv4Addr, u16),
    /// Host-side `host:port`.
    pub host: String,
}

impl Forward {
    /// Parse one `--net-forward` value.
    pub fn parse(s: &str) -> Result<Forward, String> {
        let bad = || {
            format!("--net-forward {s:?}: expected GUEST_IP:PORT=HOST:PORT, e.g. 10.0.2.100:80=127.0.0.1:8080")
        };
        let (g, h) = s.split_once('=').ok_or_else(bad)?;
        let (gip, gport) = g.rsplit_once(':').ok_or_else(bad)?;
        let gip: std::net::Ipv4Addr = gip.parse().map_err(|_| bad())?;
        let gport: u16 = gport.parse().map_err(|_| bad())?;
        let (hhost, hport) = h.rsplit_once(':').ok_or_else(bad)?;
        if hhost.is_empty() || hport.parse::<u16>().is_err() || h.contains(',') {
            return Err(bad());
        }
        Ok(Forward {
            guest: (gip, gport),
            host: h.to_string(),
        })
    }
}

/// QEMU settings of a loop.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Accelerator choice.
    pub accel: Accel,
    /// Network mode.
    pub net: NetMode,
    /// Forwards.
    pub forwards: Vec<Forward>,
    /// Kernel overriding the bundle's.
    pub kernel: Option<PathBuf>,
    /// Bytes of the per-VM scratch disk of root-disk bundles (0: none).
    pub scratch: u64,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            accel: Accel::Auto,
            net: NetMode::User,
            forwards: vec![],
            kernel: None,
            scratch: 16 << 30,
        }
    }
}

/// The QEMU backend of one loop.
#[derive(Debug, Clone)]
pub struct Qemu {
    cfg: QemuConfig,
    binary: PathBuf,
    /// Resolved accelerator (auto is probed in `prepare`).
    kvm: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// `<state>/<name>/` holds console.log, qemu.log, qmp.sock.
    state: PathBuf,
    /// This executable, for `--net-connect` forwards.
    helper: PathBuf,
}

/// Guest-visible virtio-mmio devices are limited on microvm.
const MAX_SHARES: usize = 6;

/// Where QEMU VMs of this host keep their per-VM files.
pub fn state_root() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("gh-runner-microvm-qemu.{uid}"))
}

impl Qemu {
    /// Check that QEMU is installed.
    pub fn new(cfg: QemuConfig) -> Result<Qemu, BackendError> {
        let binary = which::which("qemu-system-x86_64").map_err(|_| BackendError::Missing {
            tool: "qemu-system-x86_64",
            hint: "install QEMU (Debian/Ubuntu: apt-get install qemu-system-x86; Fedora: dnf install qemu-system-x86-core)",
        })?;
        let helper =
            std::env::current_exe().map_err(|e| BackendError::Spawn("current_exe".into(), e))?;
        let state = state_root();
        protocol::safefs::ensure_private_dir(&state)
            .map_err(|e| BackendError::Spawn(format!("mkdir {}", state.display()), e))?;
        Ok(Qemu {
            kvm: Default::default(),
            cfg,
            binary,
            state,
            helper,
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
        let info = BundleInfo::load(image).map_err(|e| BackendError::Image(image.into(), e))?;
        let kernel = self
            .cfg
            .kernel
            .clone()
            .unwrap_or_else(|| image.join(&info.kernel));
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

    /// The VM's scratch disk: on disk-backed storage (`/var/tmp`), not in the
    /// state directory, which may be a tmpfs.
    fn scratch_path(&self, name: &str) -> PathBuf {
        scratch_root().join(format!("{name}.ext4"))
    }

    /// Check the bundle and settle `--accel auto` (probing KVM with a real boot).
    pub async fn prepare(&self, image: &str) -> Result<(), BackendError> {
        let (kernel, initrd, _) = self.bundle(Path::new(image))?;
        let kvm = match self.cfg.accel {
            Accel::Tcg => false,
            Accel::Kvm => true,
            Accel::Auto => self.probe_kvm(&kernel, &initrd).await,
        };
        self.kvm.store(kvm, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// A present /dev/kvm is no proof: boot the bundle with KVM and a short deadline.
    /// The answer is remembered per kernel and QEMU in the user's cache.
    async fn probe_kvm(&self, kernel: &Path, initrd: &Path) -> bool {
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
        let cache = crate::image::cache_dir().join("kvm-probe");
        if let Ok(text) = std::fs::read_to_string(&cache) {
            if let Some(v) = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
            {
                return v == "kvm";
            }
        }
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args([
            "-M",
            "microvm,x-option-roms=off,isa-serial=on,rtc=on",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-m",
            "256",
        ]);
        cmd.args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd);
        cmd.args([
            "-append",
            "console=ttyS0 panic=-1 ghrm.probe=1",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.kill_on_drop(true);
        super::supervised(&mut cmd);
        let ok = match cmd.spawn() {
            Ok(mut child) => matches!(
                tokio::time::timeout(Duration::from_secs(20), child.wait()).await,
                Ok(Ok(st)) if st.code() == Some(1)
            ),
            Err(_) => false,
        };
        if !ok {
            tracing::warn!("a KVM guest did not boot on this host (nested or restricted KVM?): using TCG (software emulation, much slower)");
        }
        let _ = std::fs::create_dir_all(crate::image::cache_dir());
        let mut text = std::fs::read_to_string(&cache).unwrap_or_default();
        text.push_str(&format!("{key}={}\n", if ok { "kvm" } else { "tcg" }));
        let _ = std::fs::write(&cache, text);
        ok
    }

    /// Make the VM's state directory.
    pub fn create(&self, spec: &VmSpec) -> Result<(), BackendError> {
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

    /// A fresh, sparse ext4 scratch disk for the VM (mkfs takes ~10 ms: its inode
    /// tables are left for the guest, which mounts it with `noinit_itable`).
    fn make_scratch(&self, name: &str) -> Result<(), BackendError> {
        let root = scratch_root();
        protocol::safefs::ensure_private_dir(&root)
            .map_err(|e| BackendError::Spawn(format!("mkdir {}", root.display()), e))?;
        let path = self.scratch_path(name);
        let _ = std::fs::remove_file(&path);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|f| f.set_len(self.cfg.scratch).map(|_| f))
            .map_err(|e| BackendError::Spawn(format!("create {}", path.display()), e))?;
        drop(f);
        let out = std::process::Command::new(mkfs_ext4())
            .args(["-q", "-F", "-L", protocol::bundle::SCRATCH_LABEL])
            .args(["-O", "^has_journal", "-m", "0", "-E", "lazy_itable_init=1"])
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => {
                let _ = std::fs::remove_file(&path);
                Err(BackendError::Image(
                    path,
                    format!(
                        "mkfs.ext4 failed: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                ))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(BackendError::Spawn(
                    "mkfs.ext4 (install e2fsprogs, or run with --scratch-size 0)".into(),
                    e,
                ))
            }
        }
    }

    /// The argv of the VM.
    pub fn argv(&self, spec: &VmSpec) -> Result<(PathBuf, Vec<String>), BackendError> {
        let (kernel, initrd, root) = self.bundle(Path::new(&spec.image))?;
        let d = self.dir(&spec.name);
        let mut a: Vec<String> = vec![];
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        if self.uses_kvm() {
            push(&[
                "-M",
                "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on",
                "-accel",
                "kvm",
                "-cpu",
                "host",
            ]);
        } else {
            // Under TCG pit=off or pic=off hang the guest at TSC calibration.
            push(&[
                "-M",
                "microvm,x-option-roms=off,isa-serial=on,rtc=on",
                "-accel",
                "tcg",
                "-cpu",
                "max",
            ]);
        }
        push(&[
            "-m",
            &spec.memory.to_string(),
            "-smp",
            &spec.cpus.to_string(),
        ]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        push(&[
            "-kernel",
            &kernel.display().to_string(),
            "-initrd",
            &initrd.display().to_string(),
        ]);
        let mut cmdline = format!("console=ttyS0 panic=-1 ghrm.net=1 ghrm.dns={}", spec.dns);
        // Under TCG the guest's TSC runs at the host's rate, and the kernel's calibration
        // against the emulated PIT fails often on a loaded (or nested) host, after which the
        // boot hangs ("tsc: Unable to calibrate against PIT"). Tell it the rate instead.
        if !self.uses_kvm() {
            if let Some(khz) = host_tsc_khz() {
                cmdline.push_str(&format!(" tsc_early_khz={khz}"));
            }
        }
        let mut shares = vec![];
        if let Some(env) = &spec.env_dir {
            shares.push((
                "env".to_string(),
                env.clone(),
                protocol::GUEST_ENV_DIR.to_string(),
                false,
            ));
        }
        for (i, m) in spec.mounts.iter().enumerate() {
            let ro = m
                .options
                .as_deref()
                .is_some_and(|o| o.split(',').any(|x| x == "ro"));
            shares.push((format!("m{i}"), m.host.clone(), m.guest.clone(), ro));
        }
        for (tag, host, guest, ro) in &shares {
            cmdline.push_str(&format!(" ghrm.mount={tag}:{guest}"));
            let ro = if *ro { ",readonly=on" } else { "" };
            push(&[
                "-fsdev",
                &format!(
                    "local,id={tag},path={},security_model=mapped-xattr{ro}",
                    host.display()
                ),
            ]);
            push(&[
                "-device",
                &format!("virtio-9p-device,fsdev={tag},mount_tag={tag}"),
            ]);
        }
        if let Some(r) = &root {
            // The image's disk, read-only, behind a per-VM copy-on-write overlay that
            // QEMU creates in its TMPDIR (/var/tmp) and unlinks at once: nothing of
            // it outlives the VM, even a SIGKILLed one.
            cmdline.push_str(&format!(
                " ghrm.root={} ghrm.init={}",
                protocol::bundle::ROOT_LABEL,
                r.init
            ));
            push(&[
                "-drive",
                &format!(
                    "file={},format=raw,if=none,id=root,snapshot=on,discard=unmap",
                    qemu_escape(&r.disk.display().to_string())
                ),
                "-device",
                "virtio-blk-device,drive=root",
            ]);
            if self.cfg.scratch > 0 {
                push(&[
                    "-drive",
                    &format!(
                        "file={},format=raw,if=none,id=scratch,discard=unmap",
                        qemu_escape(&self.scratch_path(&spec.name).display().to_string())
                    ),
                    "-device",
                    "virtio-blk-device,drive=scratch",
                ]);
            }
        }
        // -D: PID 1 (the bundle's /init, or the image's entrypoint after stage 1)
        // sets up, then executes the dev entrypoint.
        let image_init = root
            .as_ref()
            .map(|r| r.init.as_str())
            .unwrap_or(protocol::IMAGE_ENTRYPOINT);
        if spec.entrypoint != image_init && spec.entrypoint != protocol::IMAGE_ENTRYPOINT {
            cmdline.push_str(&format!(" ghrm.exec={}", spec.entrypoint));
        }
        cmdline.push_str(" --");
        for arg in &spec.args {
            cmdline.push(' ');
            cmdline.push_str(arg);
        }
        // x86 kernels cut the command line at 2048 bytes; in -I mode the guest's
        // configuration (JIT config included) travels on it.
        if cmdline.len() >= 2048 {
            return Err(BackendError::Image(
                spec.image.clone().into(),
                format!(
                    "the guest's kernel command line would be {} bytes (x86 allows 2047); without isolation (-I) \
                     the configuration travels on it: run with isolation",
                    cmdline.len()
                ),
            ));
        }
        let mut netdev = "user,id=n0".to_string();
        if self.cfg.net == NetMode::Restricted {
            netdev.push_str(",restrict=on");
        }
        for f in &self.cfg.forwards {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{}:{}-cmd:{} --net-connect {}",
                f.guest.0,
                f.guest.1,
                self.helper.display(),
                f.host
            ));
        }
        push(&["-netdev", &netdev, "-device", "virtio-net-device,netdev=n0"]);
        push(&["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        push(&[
            "-serial",
            &format!("file:{}", d.join("console.log").display()),
        ]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", d.join("qmp.sock").display()),
        ]);
        push(&["-append", &cmdline]);
        Ok((self.binary.clone(), a))
    }

    /// Remove the VM's state and scratch disk (its process is gone or being killed).
    pub fn delete(&self, name: &str) -> Result<(), BackendError> {
        let scratch = self.scratch_path(name);
        protocol::safefs::remove(&scratch)
            .map_err(|e| BackendError::Spawn(format!("remove {}", scratch.display()), e))?;
        protocol::safefs::remove(&self.dir(name))
            .map_err(|e| BackendError::Spawn(format!("remove {}", self.dir(name).display()), e))
    }

    /// VMs with state or a scratch disk on this host.
    pub fn list(&self) -> Vec<String> {
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

    /// Has the guest's boot stalled? Some TCG boots hang silently before `/init`
    /// (QEMU microvm notes); a guest whose console shows no line of our init after
    /// this long is killed and retried rather than waited for until --boot-timeout.
    pub fn boot_stalled(&self, name: &str, elapsed: Duration) -> bool {
        let limit = if self.uses_kvm() {
            Duration::from_secs(15)
        } else {
            Duration::from_secs(30)
        };
        elapsed >= limit
            && !std::fs::read(self.console_path(name))
                .is_ok_and(|c| c.windows(11).any(|w| w == b"entrypoint:"))
    }

    /// Press the guest's ACPI power button through QMP (`system_powerdown`); the
    /// entrypoint treats it like SIGTERM. True when QEMU accepted the command.
    pub async fn powerdown(&self, name: &str) -> bool {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let sock = self.dir(name).join("qmp.sock");
        let talk = async {
            let stream = tokio::net::UnixStream::connect(&sock).await.ok()?;
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            lines.next_line().await.ok()??; // greeting
            w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
                .await
                .ok()?;
            lines.next_line().await.ok()??;
            w.write_all(b"{\"execute\":\"system_powerdown\"}\n")
                .await
                .ok()?;
            // Events may come before the answer.
            loop {
                let l = lines.next_line().await.ok()??;
                if l.contains("\"return\"") {
                    return Some(true);
                }
                if l.contains("\"error\"") {
                    return Some(false);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), talk)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    /// The VM's console log.
    pub fn console_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("console.log")
    }

    /// The last lines of the VM's console.
    pub fn console_tail(&self, name: &str, lines: usize) -> Option<String> {
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

/// Where the VMs' scratch disks live: `/var/tmp` (disk-backed, unlike `/tmp` on
/// many hosts) unless `GHRM_SCRATCH_DIR` says otherwise.
pub fn scratch_root() -> PathBuf {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::var_os("GHRM_SCRATCH_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
        .join(format!("gh-runner-microvm-scratch.{uid}"))
}

/// `mkfs.ext4`: on `PATH`, or in the sbin directories a user's `PATH` often lacks.
pub fn mkfs_ext4() -> PathBuf {
    which::which("mkfs.ext4")
        .ok()
        .or_else(|| {
            ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"))
}

/// A value inside a QEMU `-drive` option list: commas are doubled.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// The host's TSC rate in kHz, measured once against `CLOCK_MONOTONIC` (x86-64).
fn host_tsc_khz() -> Option<u64> {
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

/// The status the guest reported through isa-debug-exit (QEMU exits `2 * s + 1`).
pub fn guest_status(st: &std::process::ExitStatus) -> Option<i32> {
    st.code().filter(|c| c % 2 == 1).map(|c| (c - 1) / 2)
}

/// What QEMU's exit status says about the guest.
pub fn describe_exit(st: &std::process::ExitStatus) -> (bool, String) {
    match st.code() {
        Some(c) if c % 2 == 1 => {
            let guest = (c - 1) / 2;
            (guest == 0, format!("guest exit status {guest}"))
        }
        Some(0) => (true, "guest powered off".into()),
        Some(c) => (false, format!("QEMU failed (exit status {c})")),
        None => (false, format!("QEMU {st}")),
    }
}

/// `runner --net-connect HOST:PORT`: the per-connection helper of a forward.
/// Copies standard input to the connection and the connection to standard output.
pub fn net_connect(target: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let stream = std::net::TcpStream::connect(target)?;
    let mut up = stream.try_clone()?;
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = stream;
    let mut out = std::io::stdout().lock();
    let mut buf = [0u8; 16384];
    loop {
        match down.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    drop(t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse() {
        let f = Forward::parse("10.0.2.100:80=127.0.0.1:8080").unwrap();
        assert_eq!(f.guest, ("10.0.2.100".parse().unwrap(), 80));
        assert_eq!(f.host, "127.0.0.1:8080");
        for bad in [
            "10.0.2.100:80",
            "x:80=127.0.0.1:1",
            "10.0.2.100:80=127.0.0.1",
            "10.0.2.100:80=a,b:1",
        ] {
            assert!(
                Forward::parse(bad).unwrap_err().contains("--net-forward"),
                "{bad}"
            );
        }
    }

    #[test]
    fn measures_the_host_tsc() {
        #[cfg(target_arch = "x86_64")]
        assert!(host_tsc_khz().is_some_and(|k| k > 100_000));
    }

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
