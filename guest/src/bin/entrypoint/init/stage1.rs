//! Stage 1 of a root-disk bundle: find the disk labelled `ghrm.root=`, make it the
//! root and hand over to the image's entrypoint. Must not do the PID-1 set-up itself.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::mount::{mount, MsFlags};
use protocol::bundle::{IMAGE_ENV, SCRATCH_LABEL, SCRATCH_MOUNT};
use protocol::cmdline::{cmdline_keys, Cmdline, CmdlineError, Key};
use protocol::exit;

use super::{load_modules, mount_fs, mount_kernel_fs, power_off, resume};

/// Run stage 1 when it is wanted — `/` is still the initramfs and the kernel command
/// line names a root disk (`ghrm.root=`) — and become the image's entrypoint (PID 1
/// still; it does the rest). Returns only when stage 1 is not wanted.
pub fn run_if_wanted() {
    let Some(cmdline) = wanted() else { return };
    let next = cmdline.map_err(|e| e.to_string()).and_then(|c| stage1(&c));
    match next {
        Ok(next) => {
            for n in &next.notes {
                log!("stage 1: {n}");
            }
            log!("stage 1: running {} from the image", next.init);
            let mut cmd = Command::new(&next.init);
            cmd.env_clear()
                .env("HOME", "/root") // unless the image says otherwise
                .envs(next.env.iter().map(|(k, v)| (k, v)))
                // Ours only: an image's `ENV GHRM_CMDLINE=` must not pose as a restore's.
                .env_remove(resume::CMDLINE_VAR);
            match &next.resumed {
                Some(line) => cmd
                    .args(protocol::cmdline::init_args(line))
                    .env(resume::CMDLINE_VAR, line),
                None => cmd.args(std::env::args_os().skip(1)),
            };
            let err = cmd.exec();
            log!("error: stage 1: cannot run {}: {err}", next.init);
            power_off(exit::NOT_FOUND);
        }
        Err(e) => {
            log!("error: stage 1: {e}");
            power_off(exit::SETUP_FAILED);
        }
    }
}

/// The kernel command line when stage 1 is wanted (mounts /proc to read it).
fn wanted() -> Option<Result<Cmdline, CmdlineError>> {
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
    let text = std::fs::read_to_string("/proc/cmdline").ok()?;
    let root = Key::Root.name();
    cmdline_keys(&text)
        .iter()
        .any(|(k, _)| k == root)
        .then(|| Cmdline::parse(&text))
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
struct Stage2 {
    /// The image's entrypoint (`ghrm.init=`).
    init: String,
    /// The image's environment.
    env: Vec<(String, String)>,
    /// Lines of what was done, for the console.
    notes: Vec<String>,
    /// The command line a restore gave (the template's `/proc/cmdline` is not ours).
    resumed: Option<String>,
}

/// Stage 1 of a root-disk bundle (`ghrm.root=LABEL ghrm.init=PATH`): load the
/// modules, mount the disk labelled LABEL (the per-VM overlay of the image) and the
/// scratch disk, move the pseudo file systems over, free the initramfs and make the
/// disk the root. The caller then executes `init` (the image's entrypoint), which
/// does the PID-1 set-up of [`super::setup`] in the new root.
fn stage1(cmdline: &Cmdline) -> Result<Stage2, String> {
    let mut notes = vec![];
    mount_kernel_fs()?;
    load_modules(&mut notes)?;
    // A snapshot template waits here, before any disk is mounted: a guest that
    // wrote to its root before the save would resume expecting blocks that the
    // restored VM's fresh overlay does not have.
    let mut resumed = None;
    let restored;
    let cmdline = if cmdline.wait {
        let line = resume::wait()?;
        restored = Cmdline::parse(&line).map_err(|e| e.to_string())?;
        resumed = Some(line);
        &restored
    } else {
        cmdline
    };
    let missing = |k: Key| format!("no {k}= on the kernel command line");
    let label = cmdline.root.clone().ok_or_else(|| missing(Key::Root))?;
    let init = cmdline.init.clone().ok_or_else(|| missing(Key::Init))?;
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
    Ok(Stage2 {
        init,
        env,
        notes,
        resumed,
    })
}
