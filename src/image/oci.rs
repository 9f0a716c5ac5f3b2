//! `orchestrator image bundle --oci IMAGE`: an OCI image (the runner image of the
//! project's `Containerfile`, built or pulled with buildah) becomes a QEMU bundle
//! with a real root disk:
//!
//! - a read-only ext4 image of the container's file system, made by `mkfs.ext4 -d`
//!   inside `buildah unshare` (so ownership and setuid bits are the image's, also
//!   rootless), cached by image id under `~/.cache/gh-runner-microvm/disks/`;
//! - a small stage-1 initramfs: the static entrypoint as `/init`, the modules to
//!   reach the disk (virtio_blk, ext4) and the guest's usual ones, and the image's
//!   environment. It mounts the disk and runs the image's own entrypoint there.
//!
//! QEMU boots the disk behind a per-VM copy-on-write overlay, so the cached disk
//! never changes (see `backend::qemu`).

use crate::hosttool;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::initrd::Initrd;
use super::modules::{modules_release, resolve_modules, write_modules, ModulesError};
use protocol::bundle::{DISK_MODULES, ETC_DIR, GUEST_MODULES, ROOT_LABEL};

use super::{bad, BundleInfo, ImageError};

/// Label of the images this project builds (the `Containerfile` sets it);
/// `image prune` removes images carrying it.
pub const IMAGE_LABEL: &str = "io.github.gh-runner-microvm.image";
/// Name prefix of the working containers this project creates.
pub const CONTAINER_PREFIX: &str = "gh-runner-microvm-";

/// A converted image, as recorded in `bundle.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootDisk {
    /// The raw ext4 disk (absolute; shared read-only by every VM).
    pub disk: PathBuf,
    /// The image as given.
    pub image: String,
    /// Its id (the digest of its configuration).
    pub image_id: String,
    /// The image's entrypoint, executed by stage 1 in the new root.
    pub init: String,
}

/// `buildah inspect --type image` (the parts used here).
#[derive(Debug, Deserialize)]
struct Inspect {
    #[serde(rename = "FromImageID")]
    id: String,
    #[serde(rename = "OCIv1")]
    oci: OciImage,
}

#[derive(Debug, Deserialize)]
struct OciImage {
    #[serde(default)]
    config: OciConfig,
}

#[derive(Debug, Default, Deserialize)]
struct OciConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
}

/// What `image bundle --oci` takes.
#[derive(Debug, Clone)]
pub struct OciInputs {
    /// The image (local name, or a reference buildah can pull).
    pub image: String,
    /// Kernel image (bzImage).
    pub kernel: PathBuf,
    /// `/lib/modules/<version>`.
    pub modules: PathBuf,
    /// The static entrypoint used as stage 1.
    pub entrypoint: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Cache of converted disks.
    pub cache: PathBuf,
}

/// Where converted disks are cached (`$XDG_CACHE_HOME/gh-runner-microvm/disks`).
pub fn disk_cache() -> PathBuf {
    crate::types::paths::cache_dir().join("disks")
}

fn buildah() -> Result<PathBuf, ImageError> {
    which::which("buildah").map_err(|_| {
        bad(
            "--oci",
            Path::new("buildah"),
            "buildah is not installed (Debian/Ubuntu: apt-get install buildah; Fedora: dnf install buildah)",
        )
    })
}

/// Run buildah; on failure, its stderr is the reason.
fn run_buildah(args: &[&str]) -> Result<String, String> {
    let out = hosttool::output(hosttool::command("buildah").args(args))
        .map_err(|e| format!("buildah: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "buildah {} failed: {}",
            args.first().copied().unwrap_or(""),
            errors_only(&out.stderr)
        ))
    }
}

/// A tool's stderr without its warnings (buildah repeats some for every call).
fn errors_only(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| !l.contains("level=warning"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

fn inspect(image: &str) -> Result<Inspect, String> {
    let json = run_buildah(&["inspect", "--type", "image", "--", image])?;
    serde_json::from_str(&json).map_err(|e| format!("buildah inspect {image}: {e}"))
}

/// A working container, removed when dropped (on every path).
struct WorkingContainer(String);

impl Drop for WorkingContainer {
    fn drop(&mut self) {
        let _ = hosttool::output(hosttool::command("buildah").args(["rm", &self.0]));
    }
}

/// Turn the image's file system (`image`: its id) into `dest` (raw ext4, label
/// `protocol::bundle::ROOT_LABEL`).
/// Runs in `buildah unshare`: rootless buildah can mount a container only in its
/// user namespace, where the image's owners (and setuid bits) are what mkfs sees.
fn convert(image: &str, dest: &Path) -> Result<(), String> {
    let name = format!(
        "{CONTAINER_PREFIX}convert-{}",
        protocol::secret::random_alnum(8).map_err(|e| e.to_string())?
    );
    run_buildah(&[
        "from",
        "--pull=never",
        "--quiet",
        "--name",
        &name,
        "--",
        image,
    ])?;
    let _ctr = WorkingContainer(name.clone());
    // Size: the files, a quarter more for ext4's own blocks, and 64 MiB of room.
    const SCRIPT: &str = r#"set -eu
PATH=$PATH:/usr/sbin:/sbin
mnt=$(buildah mount "$1")
trap 'buildah umount "$1" >/dev/null' EXIT
kib=$(du -sxk "$mnt" | cut -f1)
files=$(find "$mnt" -xdev | wc -l)
truncate -s "$(( (kib + kib / 4 + 65536) / 4 * 4 ))K" "$2"
mkfs.ext4 -q -F -L "$3" -O ^has_journal -m 0 -N "$(( files + files / 4 + 4096 ))" -d "$mnt" "$2"
"#;
    // Root needs no user namespace (and `buildah unshare` as root without subuid
    // ranges fails).
    let mut cmd = if nix::unistd::geteuid().is_root() {
        hosttool::command("sh")
    } else {
        let mut c = hosttool::command("buildah");
        c.args(["unshare", "--", "sh"]);
        c
    };
    cmd.args(["-c", SCRIPT, "sh", &name])
        .arg(dest)
        .arg(ROOT_LABEL);
    let out = hosttool::output(&mut cmd).map_err(|e| format!("buildah unshare: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "converting {image} failed: {}",
            errors_only(&out.stderr)
        ));
    }
    Ok(())
}

/// Build a root-disk bundle from an OCI image.
pub fn bundle_oci(inp: &OciInputs) -> Result<BundleInfo, ImageError> {
    let kernel = super::elf::read_kernel(&inp.kernel)?;
    let (root, release) = modules_release(&inp.modules)?;
    let wanted: Vec<&str> = GUEST_MODULES.iter().chain(DISK_MODULES).copied().collect();
    let modules = resolve_modules(&root, &wanted)?;
    let entrypoint = super::elf::read_static_elf("--entrypoint", &inp.entrypoint)?;
    buildah()?;
    let image = Path::new(&inp.image);

    let meta = match inspect(&inp.image) {
        Ok(m) => m,
        Err(_) => {
            // Not local: pull it (a registry reference), then look again.
            run_buildah(&["pull", "--", &inp.image]).map_err(|e| bad("--oci", image, e))?;
            inspect(&inp.image).map_err(|e| bad("--oci", image, e))?
        }
    };
    let init = meta
        .oci
        .config
        .entrypoint
        .as_ref()
        .and_then(|e| e.first())
        .filter(|e| e.starts_with('/'))
        .cloned()
        .ok_or_else(|| {
            bad(
                "--oci",
                image,
                "the image has no absolute ENTRYPOINT; build it from the project's Containerfile",
            )
        })?;
    let id = meta
        .id
        .trim_start_matches("sha256:")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>();
    if id.len() < 12 {
        return Err(bad(
            "--oci",
            image,
            format!("unusable image id {:?}", meta.id),
        ));
    }

    // The disk, converted once per image id.
    std::fs::create_dir_all(&inp.cache).map_err(|e| ImageError::Write(inp.cache.clone(), e))?;
    let disk = inp.cache.join(format!("{id}.ext4"));
    let cached = disk.metadata().is_ok_and(|m| m.len() > 0);
    if !cached {
        let tmp = inp
            .cache
            .join(format!(".{id}.ext4.{}.partial", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        // By id: the name may have moved to another image since it was inspected.
        let result = convert(&id, &tmp);
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(bad("--oci", image, e));
        }
        // Read-only for everyone: VMs only ever see it through an overlay.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))
            .and_then(|_| std::fs::rename(&tmp, &disk))
            .map_err(|e| ImageError::Write(disk.clone(), e))?;
    }
    let disk = disk.canonicalize().unwrap_or(disk);

    // Stage 1.
    let out = &inp.out;
    let mut initrd = Initrd::create(out)?;
    initrd.dirs(&[
        "/etc",
        ETC_DIR,
        "/proc",
        "/sys",
        "/newroot",
        "/lib",
        "/lib/modules",
    ])?;
    let initrd_path = initrd.path.clone();
    let c = initrd.cpio();
    let w = |e| ImageError::Write(initrd_path.clone(), e);
    c.file("/init", 0o755, 0, 0, &entrypoint).map_err(w)?;
    let mut env = String::new();
    for kv in meta.oci.config.env.iter().flatten() {
        if kv.contains('=') && !kv.contains('\n') {
            env.push_str(kv);
            env.push('\n');
        }
    }
    c.file(protocol::bundle::IMAGE_ENV, 0o644, 0, 0, env.as_bytes())
        .map_err(w)?;
    write_modules(c, &root, &release, &modules).map_err(|e| match e {
        ModulesError::Read(p, e) => super::unreadable("--modules", &p)(e),
        ModulesError::Write(e) => w(e),
    })?;
    let info = BundleInfo {
        format: 1,
        kernel_release: release,
        runner_version: String::new(),
        modules,
        kernel: "vmlinuz".into(),
        initrd: "initrd.img".into(),
        vmlinux: kernel.vmlinux.as_ref().map(|_| super::VMLINUX.into()),
        root: Some(RootDisk {
            disk,
            image: inp.image.clone(),
            image_id: id,
            init,
        }),
    };
    initrd.commit(&kernel.bzimage, kernel.vmlinux.as_deref(), info)
}

/// What `image prune` removed.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Working containers removed.
    pub containers: Vec<String>,
    /// Images removed: their names (or id) and size as buildah reports it.
    pub images: Vec<(String, String)>,
    /// Converted disks and bundle directories removed.
    pub paths: Vec<PathBuf>,
    /// Bytes those files held on disk.
    pub bytes: u64,
}

fn disk_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if md.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
            .unwrap_or(0)
    } else {
        md.blocks() * 512
    }
}

/// `buildah images --json` entries: (id without `sha256:`, display name, size).
fn images(filter: Option<&str>) -> Vec<(String, String, String)> {
    let mut args = vec!["images", "--json", "--no-trunc"];
    if let Some(f) = filter {
        args.extend(["--filter", f]);
    }
    let json = run_buildah(&args).unwrap_or_default();
    let v: Vec<serde_json::Value> = serde_json::from_str(json.trim()).unwrap_or_default();
    v.iter()
        .filter_map(|i| {
            let id = i["id"].as_str()?.trim_start_matches("sha256:").to_string();
            let name = i["names"]
                .as_array()
                .and_then(|n| n.first())
                .and_then(|n| n.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| id.chars().take(12).collect());
            let size = i["size"].as_str().unwrap_or("").to_string();
            Some((id, name, size))
        })
        .collect()
}

/// `orchestrator image prune [--all]`: remove the working containers, images,
/// converted disks and bundles this project made; with `all`, every other buildah
/// image and working container too.
pub fn prune(all: bool) -> Result<Pruned, ImageError> {
    let mut p = Pruned::default();
    if which::which("buildah").is_ok() {
        let ours = images(Some(&format!("label={IMAGE_LABEL}")));
        let listed = run_buildah(&["containers", "--all", "--json"]).unwrap_or_default();
        let containers: Vec<serde_json::Value> =
            serde_json::from_str(listed.trim()).unwrap_or_default();
        for c in containers {
            let name = c["containername"].as_str().unwrap_or_default().to_string();
            let image = c["imageid"].as_str().unwrap_or_default();
            let mine =
                name.starts_with(CONTAINER_PREFIX) || ours.iter().any(|(id, ..)| id == image);
            if (mine || all) && run_buildah(&["rm", &name]).is_ok() {
                p.containers.push(name);
            }
        }
        let doomed = if all { images(None) } else { ours };
        for (id, name, size) in doomed {
            if run_buildah(&["rmi", "--force", &id]).is_ok() {
                p.images.push((name, size));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(disk_cache()) {
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".ext4") || name.ends_with(".partial") {
                let size = disk_usage(&path);
                if std::fs::remove_file(&path).is_ok() {
                    p.bytes += size;
                    p.paths.push(path);
                }
            }
        }
    }
    for b in super::registry::recorded_bundles() {
        // Only directories that still are bundles, and only the files a bundle has:
        // anything else put there stays (and so does the directory).
        if BundleInfo::load(&b).is_ok() {
            for f in super::BUNDLE_FILES {
                let path = b.join(f);
                let size = disk_usage(&path);
                if std::fs::remove_file(&path).is_ok() {
                    p.bytes += size;
                }
            }
            let _ = std::fs::remove_dir(&b);
            p.paths.push(b);
        }
    }
    super::registry::forget_bundles();
    Ok(p)
}
