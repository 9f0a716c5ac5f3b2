//! PID-1 duties for guests booted from an initramfs (the QEMU backend): pseudo file
//! systems, modules, eth0, 9p shares, the power button, power-off; never the runner.
//!
//! It reads the `ghrm.*` words of the kernel command line ([`protocol::cmdline`]):
//! the 9p shares to mount, whether to configure eth0 and which nameserver to use,
//! a KVM probe boot, the dev entrypoint to become, and stage 1 of a root-disk bundle
//! ([`stage1`]), and a snapshot template's wait to be restored ([`resume`]). The exit
//! status reaches the host through QEMU's isa-debug-exit port.
//!
//! Everything is idempotent: under an init that already did part of it (libkrun),
//! `EBUSY` mounts and missing keys are skipped.

mod net;
mod resume;
mod stage1;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::mount::{mount, MsFlags};
use protocol::bundle::MODULE_LIST;
use protocol::cmdline::Cmdline;
use protocol::exit;

/// What the init set-up found.
#[derive(Debug, Default)]
struct Init {
    /// Open `/dev/input/event*` devices (the ACPI power button among them).
    power_button: Vec<OwnedFd>,
    /// The `ghrm.*` words of the kernel command line.
    cmdline: Cmdline,
    /// Lines of what was done, for the console.
    notes: Vec<String>,
    /// After a restore: the command line the host sent, and our arguments from it.
    resumed: Option<(String, Vec<String>)>,
}

/// What PID 1's set-up hands the entrypoint.
pub struct Booted {
    /// The power-button devices, for the supervisor.
    pub buttons: Vec<OwnedFd>,
    /// Our arguments when a restore gave them (else our argv).
    pub args: Option<Vec<String>>,
}

/// As PID 1: stage 1 of a root-disk bundle when wanted (never returns then), else the
/// PID-1 set-up, a probe boot's power-off, or the `-D` dev entrypoint. Returns the
/// power-button devices for the supervisor (and the arguments a restore gave); a
/// failed set-up powers off.
pub fn boot() -> Booted {
    stage1::run_if_wanted();
    match setup() {
        Ok(init) => {
            for n in &init.notes {
                log!("init: {n}");
            }
            // `--accel auto` probes KVM by booting with ghrm.probe=1.
            if init.cmdline.probe {
                log!("init: probe boot complete");
                power_off(exit::ENDED);
            }
            // `-D`: become the freshly built entrypoint from the dev share (still PID 1;
            // its own set-up finds everything done).
            if let Some(path) = &init.cmdline.exec {
                if std::env::var_os("GHRM_EXECED").is_none() {
                    log!("init: running {path} from the dev share");
                    let mut cmd = Command::new(path);
                    match &init.resumed {
                        Some((line, args)) => cmd.args(args).env(resume::CMDLINE_VAR, line),
                        None => cmd.args(std::env::args_os().skip(1)),
                    };
                    let err = cmd.env("GHRM_EXECED", "1").exec();
                    log!("error: cannot run {path}: {err}");
                    power_off(exit::NOT_FOUND);
                }
            }
            Booted {
                buttons: init.power_button,
                args: init.resumed.map(|(_, args)| args),
            }
        }
        Err(e) => {
            log!("error: init: {e}");
            power_off(exit::SETUP_FAILED);
        }
    }
}

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    let _ = std::fs::create_dir_all(target);
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("mount {fstype} on {target}: {e}")),
    }
}

fn load_modules(notes: &mut Vec<String>) -> Result<(), String> {
    let Ok(list) = std::fs::read_to_string(MODULE_LIST) else {
        return Ok(());
    };
    let mut n = 0;
    for path in list.lines().filter(|l| !l.is_empty()) {
        let f = File::open(path).map_err(|e| format!("{path}: {e}"))?;
        // Compressed modules need the kernel to decompress (MODULE_INIT_COMPRESSED_FILE = 4).
        let flags: libc::c_int =
            if path.ends_with(".xz") || path.ends_with(".zst") || path.ends_with(".gz") {
                4
            } else {
                0
            };
        let params = c"";
        // SAFETY: finit_module with a valid fd and a NUL-terminated empty parameter string.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                params.as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("loading {path}: {e}"));
            }
        }
        n += 1;
    }
    notes.push(format!("{n} modules loaded"));
    Ok(())
}

fn power_button() -> Vec<OwnedFd> {
    let mut fds = vec![];
    if let Ok(rd) = std::fs::read_dir("/dev/input") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("event") {
                use std::os::unix::fs::OpenOptionsExt;
                if let Ok(f) = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                    .open(e.path())
                {
                    fds.push(OwnedFd::from(f));
                }
            }
        }
    }
    fds
}

/// /dev, /proc and /sys (each skipped when already mounted).
fn mount_kernel_fs() -> Result<(), String> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs("proc", "/proc", "proc", nodev | MsFlags::MS_NOEXEC, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nodev | MsFlags::MS_NOEXEC, None)
}

/// Do the PID-1 set-up. Errors are fatal to the guest (reported, then power-off).
fn setup() -> Result<Init, String> {
    let mut init = Init::default();
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount_kernel_fs()?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    )?;
    mount_fs("tmpfs", "/dev/shm", "tmpfs", nodev, Some("mode=1777"))?;
    mount_fs("tmpfs", "/run", "tmpfs", nodev, Some("mode=0755"))?;
    mount_fs("tmpfs", "/tmp", "tmpfs", nodev, Some("mode=1777"))?;
    if !Path::new("/dev/fd").exists() {
        let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    }
    if std::env::var_os("PATH").is_none() {
        // SAFETY: PID 1 is single-threaded here.
        unsafe {
            std::env::set_var(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
        };
    }
    load_modules(&mut init.notes)?;
    let (line, given) = kernel_cmdline();
    init.cmdline = Cmdline::parse(&line).map_err(|e| e.to_string())?;
    if given {
        init.resumed = Some((line.clone(), protocol::cmdline::init_args(&line)));
    } else if init.cmdline.wait {
        // A snapshot template: saved here, before anything per-VM; restored, it goes
        // on with the command line the host sent.
        let line = resume::wait()?;
        init.cmdline = Cmdline::parse(&line).map_err(|e| e.to_string())?;
        init.resumed = Some((line.clone(), protocol::cmdline::init_args(&line)));
    }
    if init.cmdline.net {
        net::network(init.cmdline.dns(), &mut init.notes)?;
    }
    for protocol::cmdline::Share { tag, path } in &init.cmdline.mounts {
        mount_fs(
            tag,
            path,
            "9p",
            MsFlags::empty(),
            Some("trans=virtio,version=9p2000.L,msize=262144,cache=none"),
        )?;
        init.notes.push(format!("{tag} mounted at {path}"));
    }
    init.power_button = power_button();
    Ok(init)
}

/// The kernel command line to follow: the one a restore gave, when an entrypoint
/// before us handed it on ([`resume::CMDLINE_VAR`], then removed from our
/// environment: nothing we start inherits it), else `/proc/cmdline`. True when given.
fn kernel_cmdline() -> (String, bool) {
    if let Some(line) = std::env::var_os(resume::CMDLINE_VAR) {
        // SAFETY: PID 1 is single-threaded here.
        unsafe { std::env::remove_var(resume::CMDLINE_VAR) };
        return (line.to_string_lossy().into_owned(), true);
    }
    (
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        false,
    )
}

/// Flush, report `code` through QEMU's isa-debug-exit (QEMU then exits with
/// `code * 2 + 1`: [`exit::QemuExit`]), and power off. Never returns.
pub fn power_off(code: u8) -> ! {
    nix::unistd::sync();
    eprintln!("gh-runner-microvm: guest exit status {code}");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: ioperm grants this process the debug-exit port; writing a byte to it is
    // the isa-debug-exit protocol (an absent device ignores it).
    unsafe {
        if libc::ioperm(exit::DEBUG_EXIT_PORT.into(), 1, 1) == 0 {
            std::arch::asm!("out dx, al", in("dx") exit::DEBUG_EXIT_PORT, in("al") code, options(nomem, nostack));
        }
    }
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        // SAFETY: pause(2) has no arguments.
        unsafe { libc::pause() };
    }
}
