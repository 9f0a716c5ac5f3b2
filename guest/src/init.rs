//! PID-1 duties for guests booted from an initramfs (the QEMU backend): mount the
//! pseudo file systems, load the bundle's modules in order, configure `eth0` for
//! QEMU user networking, mount the 9p shares named on the kernel command line,
//! watch the ACPI power button, and power off with the exit status visible to the
//! host (QEMU's isa-debug-exit port).
//!
//! Kernel command line keys (set by the host):
//! - `ghrm.mount=TAG:PATH` (repeatable): mount 9p share TAG at PATH;
//! - `ghrm.net=1`: eth0 = 10.0.2.15/24, default route 10.0.2.2 (slirp);
//! - `ghrm.dns=IP`: nameserver for /etc/resolv.conf (default 10.0.2.3).
//!
//! Everything is idempotent: under an init that already did part of it (libkrun),
//! `EBUSY` mounts and missing keys are skipped.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Module load order written by `orchestrator image bundle`.
pub const MODULE_LIST: &str = "/etc/gh-runner-microvm/modules";

/// What the init set-up found.
#[derive(Debug, Default)]
pub struct Init {
    /// Open `/dev/input/event*` devices (the ACPI power button among them).
    pub power_button: Vec<OwnedFd>,
    /// Lines of what was done, for the console.
    pub notes: Vec<String>,
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

/// The `ghrm.*` keys of the kernel command line (before any `--`).
pub fn cmdline_keys(cmdline: &str) -> Vec<(String, String)> {
    cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .filter_map(|w| w.strip_prefix("ghrm.")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
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

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    r
}

fn sockaddr(ip: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size on Linux.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: i32, req: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> Result<(), String> {
    // SAFETY: `arg` points at a live ifreq/rtentry of the type `req` expects.
    if unsafe { libc::ioctl(fd, req as _, arg) } != 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Bring `name` up, optionally with an address and netmask.
fn ifup(fd: i32, name: &str, addr: Option<([u8; 4], [u8; 4])>) -> Result<(), String> {
    if let Some((ip, mask)) = addr {
        let mut r = ifreq(name);
        r.ifr_ifru.ifru_addr = sockaddr(ip);
        ioctl(
            fd,
            libc::SIOCSIFADDR,
            &mut r as *mut _ as *mut _,
            &format!("address of {name}"),
        )?;
        let mut r = ifreq(name);
        r.ifr_ifru.ifru_netmask = sockaddr(mask);
        ioctl(
            fd,
            libc::SIOCSIFNETMASK,
            &mut r as *mut _ as *mut _,
            &format!("netmask of {name}"),
        )?;
    }
    let mut r = ifreq(name);
    ioctl(
        fd,
        libc::SIOCGIFFLAGS,
        &mut r as *mut _ as *mut _,
        &format!("flags of {name}"),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(
        fd,
        libc::SIOCSIFFLAGS,
        &mut r as *mut _ as *mut _,
        &format!("bring {name} up"),
    )
}

fn network(dns: &str, notes: &mut Vec<String>) -> Result<(), String> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    let result = (|| {
        ifup(fd, "lo", None)?;
        // The NIC appears when virtio_net binds; give it a moment.
        let mut tries = 0;
        loop {
            match ifup(fd, "eth0", Some(([10, 0, 2, 15], [255, 255, 255, 0]))) {
                Ok(()) => break,
                Err(e) if tries >= 40 => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
            tries += 1;
        }
        // SAFETY: rtentry is plain old data.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr([0, 0, 0, 0]);
        rt.rt_genmask = sockaddr([0, 0, 0, 0]);
        rt.rt_gateway = sockaddr([10, 0, 2, 2]);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        match ioctl(
            fd,
            libc::SIOCADDRT,
            &mut rt as *mut _ as *mut _,
            "default route",
        ) {
            Err(e) if !e.contains("File exists") => return Err(e),
            _ => {}
        }
        Ok(())
    })();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(fd) };
    result?;
    let _ = std::fs::write("/etc/resolv.conf", format!("nameserver {dns}\n"));
    notes.push(format!("eth0 10.0.2.15/24 via 10.0.2.2, dns {dns}"));
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
pub fn setup() -> Result<Init, String> {
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
    let keys = cmdline_keys(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let dns = keys
        .iter()
        .find(|(k, _)| k == "dns")
        .map(|(_, v)| v.as_str())
        .unwrap_or("10.0.2.3");
    if keys.iter().any(|(k, v)| k == "net" && v == "1") {
        network(dns, &mut init.notes)?;
    }
    for (_, spec) in keys.iter().filter(|(k, _)| k == "mount") {
        let (tag, path) = spec
            .split_once(':')
            .ok_or(format!("bad ghrm.mount={spec}"))?;
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

/// Inside the stage-1 initramfs of a root-disk bundle: the image's environment
/// (`KEY=VALUE` lines from its OCI config), given to the image's entrypoint.
pub const IMAGE_ENV: &str = "/etc/gh-runner-microvm/image.env";
/// File system label of the converted image's root disk.
pub const ROOT_LABEL: &str = "ghrm-root";
/// File system label of the per-VM scratch disk.
pub const SCRATCH_LABEL: &str = "ghrm-scratch";
/// Where the scratch disk is mounted in the guest (the entrypoint binds the
/// runner's `_work` onto it).
pub const SCRATCH_MOUNT: &str = "/_work";

/// Stage 1 is wanted when `/` is still the initramfs and the kernel command line
/// names a root disk (`ghrm.root=`): then its keys. Mounts /proc to read it.
pub fn stage1_keys() -> Option<Vec<(String, String)>> {
    if !root_is_initramfs() {
        return None;
    }
    mount_fs(
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
    .ok()?;
    let keys = cmdline_keys(&std::fs::read_to_string("/proc/cmdline").ok()?);
    keys.iter().any(|(k, _)| k == "root").then_some(keys)
}

/// Is `/` still the initramfs (rootfs: ramfs or tmpfs)? Stage 1 runs only there.
fn root_is_initramfs() -> bool {
    match nix::sys::statfs::statfs("/") {
        Ok(s) => {
            // RAMFS_MAGIC (nix has no constant for it) or TMPFS_MAGIC.
            let t = s.filesystem_type();
            t == nix::sys::statfs::FsType(0x8584_58f6) || t == nix::sys::statfs::TMPFS_MAGIC
        }
        Err(_) => false,
    }
}

/// The ext2/3/4 label of a block device, read from its superblock.
fn ext4_label(dev: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(dev).ok()?;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != 0xEF53 {
        return None;
    }
    let name = &sb[0x78..0x88];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Virtio block devices by file system label (they appear as their driver binds).
fn disks_by_label(want: &str, wait: std::time::Duration) -> Vec<(String, std::path::PathBuf)> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let mut found = vec![];
        if let Ok(rd) = std::fs::read_dir("/sys/class/block") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // Whole virtio disks only (vda, vdb, …), not partitions.
                if name.starts_with("vd") && !name.ends_with(|c: char| c.is_ascii_digit()) {
                    let dev = Path::new("/dev").join(&name);
                    if let Some(label) = ext4_label(&dev) {
                        found.push((label, dev));
                    }
                }
            }
        }
        if found.iter().any(|(l, _)| l == want) || std::time::Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// Remove what the initramfs holds (it stays in RAM otherwise), without leaving
/// its file system: `keep` (the new root) and anything mounted are skipped.
fn free_initramfs(dir: &Path, root_dev: u64, keep: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p == keep {
            continue;
        }
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.dev() != root_dev {
            continue;
        }
        if md.is_dir() {
            free_initramfs(&p, root_dev, keep);
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// What stage 1 hands over: the program to execute in the new root and its environment.
#[derive(Debug)]
pub struct Stage2 {
    /// The image's entrypoint (`ghrm.init=`).
    pub init: String,
    /// The image's environment.
    pub env: Vec<(String, String)>,
    /// Lines of what was done, for the console.
    pub notes: Vec<String>,
}

/// Stage 1 of a root-disk bundle (`ghrm.root=LABEL ghrm.init=PATH`): load the
/// modules, mount the disk labelled LABEL (the per-VM overlay of the image) and the
/// scratch disk, move the pseudo file systems over, free the initramfs and make the
/// disk the root. The caller then executes `init` (the image's entrypoint), which
/// does the PID-1 set-up of [`setup`] in the new root.
pub fn stage1(keys: &[(String, String)]) -> Result<Stage2, String> {
    let mut notes = vec![];
    let get = |k: &str| keys.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    let label = get("root").ok_or("no ghrm.root= on the kernel command line")?;
    let init = get("init").ok_or("no ghrm.init= on the kernel command line")?;
    mount_kernel_fs()?;
    load_modules(&mut notes)?;
    let disks = disks_by_label(&label, std::time::Duration::from_secs(10));
    let (_, root_dev) = disks.iter().find(|(l, _)| *l == label).ok_or_else(|| {
        format!(
            "no disk labelled {label} (found: {:?}); is virtio_blk in the bundle?",
            disks
        )
    })?;
    let new = Path::new("/newroot");
    let _ = std::fs::create_dir_all(new);
    mount(
        Some(root_dev.as_path()),
        new,
        Some("ext4"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mount {} (ext4) on /newroot: {e}", root_dev.display()))?;
    notes.push(format!("root {} ({label})", root_dev.display()));
    if let Some((_, dev)) = disks.iter().find(|(l, _)| l == SCRATCH_LABEL) {
        let target = new.join(SCRATCH_MOUNT.trim_start_matches('/'));
        let _ = std::fs::create_dir_all(&target);
        // The host made the file system sparse: never zero its inode tables here.
        mount(
            Some(dev.as_path()),
            &target,
            Some("ext4"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("noinit_itable"),
        )
        .map_err(|e| format!("mount scratch {} on {SCRATCH_MOUNT}: {e}", dev.display()))?;
        notes.push(format!("scratch {} on {SCRATCH_MOUNT}", dev.display()));
    }
    if !new.join(init.trim_start_matches('/')).exists() {
        return Err(format!("the image has no {init} (its entrypoint)"));
    }
    for fs in ["dev", "proc", "sys"] {
        let target = new.join(fs);
        let _ = std::fs::create_dir_all(&target);
        mount(
            Some(Path::new("/").join(fs).as_path()),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| format!("move /{fs} to the new root: {e}"))?;
    }
    let env: Vec<(String, String)> = std::fs::read_to_string(IMAGE_ENV)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(md) = std::fs::metadata("/") {
            free_initramfs(Path::new("/"), md.dev(), new);
        }
    }
    std::env::set_current_dir(new).map_err(|e| format!("chdir /newroot: {e}"))?;
    mount(
        Some(Path::new(".")),
        Path::new("/"),
        None::<&str>,
        MsFlags::MS_MOVE,
        None::<&str>,
    )
    .map_err(|e| format!("move the new root to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(Stage2 { init, env, notes })
}

/// Flush, report `code` through QEMU's isa-debug-exit (QEMU then exits with
/// `code * 2 + 1`), and power off. Never returns.
pub fn power_off(code: u8) -> ! {
    nix::unistd::sync();
    eprintln!("gh-runner-microvm: guest exit status {code}");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: ioperm grants this process port 0xf4; writing a byte to it is the
    // isa-debug-exit protocol (an absent device ignores it).
    unsafe {
        if libc::ioperm(0xf4, 1, 1) == 0 {
            std::arch::asm!("out dx, al", in("dx") 0xf4u16, in("al") code, options(nomem, nostack));
        }
    }
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        // SAFETY: pause(2) has no arguments.
        unsafe { libc::pause() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_keys_only_before_dashes() {
        let k = cmdline_keys("console=ttyS0 ghrm.net=1 ghrm.mount=env:/_environment ghrm.mount=m0:/cache -- -E ghrm.x=y");
        assert_eq!(
            k,
            [
                ("net".into(), "1".into()),
                ("mount".into(), "env:/_environment".into()),
                ("mount".into(), "m0:/cache".into())
            ]
        );
    }
}
