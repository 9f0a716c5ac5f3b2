//! Guest images for QEMU: `orchestrator image bundle` (design.md §7) builds a
//! bootable bundle — a kernel and an initramfs whose `/init` is the static
//! entrypoint, with busybox, the kernel modules the guest needs (and their
//! dependencies, from `modules.dep`), a `runner` user and an actions runner.

pub mod cpio;
pub mod oci;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::paths::cache_dir;
use cpio::Cpio;

/// Modules the guest loads, by name; dependencies are added from `modules.dep`.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    "evdev",
    "button",
];

/// Inside the initramfs: the module load order, one path per line.
pub const MODULE_LIST: &str = "/etc/gh-runner-microvm/modules";
/// uid/gid of the `runner` user (as on GitHub's runners).
pub const RUNNER_UID: u32 = 1001;

/// Bundle build failures; each names the bad input.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An input is unusable.
    #[error("{flag} {path}: {why}")]
    BadInput {
        /// The option.
        flag: &'static str,
        /// Its value.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A module the guest needs is neither a module nor built in.
    #[error("--modules {dir}: the kernel has no module {module} (needed for {why}) and it is not built in")]
    MissingModule {
        /// The modules directory.
        dir: PathBuf,
        /// The module.
        module: String,
        /// What needs it.
        why: &'static str,
    },
    /// Writing the bundle failed.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

fn bad(flag: &'static str, path: &Path, why: impl Into<String>) -> ImageError {
    ImageError::BadInput {
        flag,
        path: path.into(),
        why: why.into(),
    }
}

/// What `image bundle` takes.
#[derive(Debug, Clone)]
pub struct BundleInputs {
    /// Kernel image (bzImage).
    pub kernel: PathBuf,
    /// `/lib/modules/<version>` (or `/lib/modules` holding one version).
    pub modules: PathBuf,
    /// A static busybox.
    pub busybox: PathBuf,
    /// `actions-runner-linux-<arch>-<version>.tar.gz`.
    pub runner_tarball: PathBuf,
    /// The static entrypoint.
    pub entrypoint: PathBuf,
    /// Output directory.
    pub out: PathBuf,
}

/// `bundle.json`: what a bundle holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleInfo {
    /// Format version.
    pub format: u32,
    /// Kernel release of the modules.
    pub kernel_release: String,
    /// Actions runner version.
    pub runner_version: String,
    /// Modules in load order.
    pub modules: Vec<String>,
    /// Kernel file name in the bundle.
    pub kernel: String,
    /// Initramfs file name in the bundle.
    pub initrd: String,
    /// A root-disk bundle (`image bundle --oci`): the initramfs is stage 1 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<oci::RootDisk>,
}

/// The files a bundle directory holds (what `image prune` removes from it).
pub const BUNDLE_FILES: &[&str] = &["bundle.json", "vmlinuz", "initrd.img"];

fn bundle_registry() -> PathBuf {
    cache_dir().join("bundles")
}

/// Remember a bundle this project made (for `image prune`).
fn record_bundle(dir: &Path) {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let known = recorded_bundles();
    if known.contains(&dir) {
        return;
    }
    let _ = std::fs::create_dir_all(cache_dir());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(bundle_registry())
    {
        use std::io::Write;
        let _ = writeln!(f, "{}", dir.display());
    }
}

/// The bundles this project made, as recorded.
fn recorded_bundles() -> Vec<PathBuf> {
    std::fs::read_to_string(bundle_registry())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

fn forget_bundles() {
    let _ = std::fs::remove_file(bundle_registry());
}

impl BundleInfo {
    /// Read `DIR/bundle.json`.
    pub fn load(dir: &Path) -> Result<BundleInfo, String> {
        let p = dir.join("bundle.json");
        let text = std::fs::read_to_string(&p).map_err(|e| {
            format!(
                "{} is not a bundle ({e}); make one with `orchestrator image bundle`",
                dir.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// Write `DIR/bundle.json`.
    pub fn save(&self, dir: &Path) -> Result<(), ImageError> {
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(dir.join("bundle.json"), json)
            .map_err(|e| ImageError::Write(dir.join("bundle.json"), e))
    }
}

/// Does this ELF file need a program interpreter (i.e. is it dynamic)?
fn elf_is_dynamic(bytes: &[u8]) -> Option<bool> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return None; // not a 64-bit ELF
    }
    let u16at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64at =
        |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8])) as usize;
    let (phoff, phentsize, phnum) = (u64at(32), u16at(54), u16at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > bytes.len() {
            return None;
        }
        if u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) == 3 {
            return Some(true); // PT_INTERP
        }
    }
    Some(false)
}

fn read_static_elf(flag: &'static str, path: &Path) -> Result<Vec<u8>, ImageError> {
    let bytes = std::fs::read(path).map_err(|e| bad(flag, path, e.to_string()))?;
    match elf_is_dynamic(&bytes) {
        None => Err(bad(flag, path, "not an x86-64 ELF executable")),
        Some(true) => Err(bad(
            flag,
            path,
            match flag {
                "--busybox" => "not a static busybox (install busybox-static: /bin/busybox from that package is static)",
                _ => "dynamically linked; build the static one with scripts/build.sh",
            },
        )),
        Some(false) => Ok(bytes),
    }
}

/// Is `dir` a `/lib/modules/<version>` directory?
fn is_version_dir(dir: &Path) -> bool {
    dir.join("modules.dep").is_file() || dir.join("kernel").is_dir()
}

/// The version directory under `dir` (`/lib/modules/<version>`, or `/lib/modules` with one).
fn modules_root(dir: &Path) -> Result<PathBuf, ImageError> {
    if is_version_dir(dir) {
        return Ok(dir.to_path_buf());
    }
    let versions: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad("--modules", dir, e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_version_dir(p))
        .collect();
    match versions.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(bad(
            "--modules",
            dir,
            "no kernel modules here (give /lib/modules/<version>)",
        )),
        _ => Err(bad(
            "--modules",
            dir,
            "several kernel versions here; give /lib/modules/<version>",
        )),
    }
}

/// `depends=` of a module, from its `.modinfo` strings.
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"depends=";
    ko.windows(KEY.len() + 1)
        .position(|w| w[0] == 0 && &w[1..] == KEY)
        .map(|i| {
            let rest = &ko[i + 1 + KEY.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end])
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// `modules.dep` as depmod would write it, for a tree that has none (a kernel
/// package unpacked without installing it): module paths and their dependency
/// closures, from each module's `.modinfo`.
fn compute_modules_dep(root: &Path) -> Result<String, ImageError> {
    let mut paths: BTreeMap<String, String> = BTreeMap::new();
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .map_err(|e| bad("--modules", &d, e.to_string()))?
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains(".ko") {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                let name = module_name(&rel);
                // Only uncompressed modules carry readable .modinfo here.
                let deps = std::fs::read(&p)
                    .map(|b| modinfo_depends(&b))
                    .unwrap_or_default();
                direct.insert(name.clone(), deps);
                paths.insert(name, rel);
            }
        }
    }
    let mut out = String::new();
    for (name, rel) in &paths {
        let mut closure: Vec<String> = vec![];
        let mut todo: Vec<String> = direct.get(name).cloned().unwrap_or_default();
        while let Some(d) = todo.pop() {
            if let Some(p) = paths.get(&d) {
                if !closure.contains(p) {
                    closure.push(p.clone());
                    todo.extend(direct.get(&d).cloned().unwrap_or_default());
                }
            }
        }
        out.push_str(&format!("{rel}: {}\n", closure.join(" ")));
    }
    Ok(out)
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Resolve `wanted` module names to paths (relative to the modules root) in load order.
pub fn resolve_modules(root: &Path, wanted: &[&str]) -> Result<Vec<String>, ImageError> {
    let dep = match std::fs::read_to_string(root.join("modules.dep")) {
        Ok(d) => d,
        Err(_) => compute_modules_dep(root)?,
    };
    let builtin: BTreeSet<String> = std::fs::read_to_string(root.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    let mut by_name: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        let Some((m, deps)) = line.split_once(':') else {
            continue;
        };
        let deps = deps.split_whitespace().map(str::to_string).collect();
        by_name.insert(module_name(m), (m.to_string(), deps));
    }
    let mut order = vec![];
    let mut seen = BTreeSet::new();
    fn visit(
        path: &str,
        deps_of: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_string()) {
            return;
        }
        if let Some((_, deps)) = deps_of.get(&module_name(path)) {
            // modules.dep lists the full closure; load the deepest first.
            for d in deps.iter().rev() {
                visit(d, deps_of, seen, order);
            }
        }
        order.push(path.to_string());
    }
    for &w in wanted {
        match by_name.get(w) {
            Some((path, _)) => visit(&path.clone(), &by_name, &mut seen, &mut order),
            None if builtin.contains(w) => {}
            None => {
                let why = match w {
                    "virtio_mmio" => "virtio devices on QEMU microvm",
                    "virtio_net" => "networking",
                    "9p" | "9pnet_virtio" => "the /_environment share",
                    "virtio_blk" | "crc32c_generic" | "ext4" => "the root disk of an --oci bundle",
                    _ => "the ACPI power button",
                };
                return Err(ImageError::MissingModule {
                    dir: root.into(),
                    module: w.into(),
                    why,
                });
            }
        }
    }
    Ok(order)
}

/// The runner version from `actions-runner-linux-<arch>-<version>.tar.gz`.
pub fn runner_version(tarball: &Path) -> Result<String, ImageError> {
    let name = tarball.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.strip_prefix("actions-runner-linux-")
        .and_then(|r| r.strip_suffix(".tar.gz"))
        .and_then(|r| r.split_once('-'))
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        .ok_or_else(|| {
            bad(
                "--runner-tarball",
                tarball,
                "name must be actions-runner-linux-<arch>-<version>.tar.gz",
            )
        })
}

fn busybox_applets(busybox: &Path) -> Vec<String> {
    let listed = crate::hosttool::output(crate::hosttool::command(busybox).arg("--list"))
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    "sh ash cat cp echo env grep head kill ln ls mkdir mkfifo mount mv printf ps rm sed sleep sort stat tail tee test touch tr uname wc awk id nc wget true false dd chmod chown date dmesg find xargs cut basename dirname hostname timeout seq"
        .split(' ')
        .map(str::to_string)
        .collect()
}

enum ModulesError {
    Read(PathBuf, std::io::Error),
    Write(std::io::Error),
}

/// Put `modules` (paths under `root`) into the initramfs under
/// `/lib/modules/<release>/`, plus their load order in [`MODULE_LIST`].
fn write_modules<W: std::io::Write>(
    c: &mut Cpio<W>,
    root: &Path,
    release: &str,
    modules: &[String],
) -> Result<(), ModulesError> {
    let w = ModulesError::Write;
    // Directories first, then files, then the load order.
    let mut dirs = BTreeSet::new();
    for m in modules {
        let mut p = PathBuf::from(format!("/lib/modules/{release}"));
        dirs.insert(p.clone());
        for part in Path::new(m)
            .parent()
            .into_iter()
            .flat_map(|p| p.components())
        {
            p.push(part);
            dirs.insert(p.clone());
        }
    }
    for d in &dirs {
        c.dir(&d.display().to_string(), 0o755, 0, 0).map_err(w)?;
    }
    let mut order = String::new();
    for m in modules {
        let data = std::fs::read(root.join(m)).map_err(|e| ModulesError::Read(root.join(m), e))?;
        let dest = format!("/lib/modules/{release}/{m}");
        c.file(&dest, 0o644, 0, 0, &data).map_err(w)?;
        order.push_str(&dest);
        order.push('\n');
    }
    c.file(MODULE_LIST, 0o644, 0, 0, order.as_bytes())
        .map_err(w)
}

/// `DIR/initrd.img` being written: under a temporary name (unique per build: two
/// builds of one bundle, two demos, must not share it) that is removed unless
/// [`Initrd::commit`] renames it into place.
struct Initrd {
    /// Taken by `commit`.
    cpio: Option<Cpio<std::io::BufWriter<std::fs::File>>>,
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl Initrd {
    /// Start `out/initrd.img` with what every initramfs needs first: `/dev` with
    /// the console (the kernel opens it for init's stdio) and `/dev/null`.
    fn create(out: &Path) -> Result<Initrd, ImageError> {
        std::fs::create_dir_all(out).map_err(|e| ImageError::Write(out.into(), e))?;
        let tmp = out.join(format!(".initrd.img.{}.partial", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| ImageError::Write(tmp.clone(), e))?;
        let mut initrd = Initrd {
            cpio: Some(Cpio::new(std::io::BufWriter::new(file))),
            tmp,
            path: out.join("initrd.img"),
            done: false,
        };
        let w = |e| ImageError::Write(initrd.path.clone(), e);
        let c = initrd.cpio.as_mut().expect("just made");
        c.dir("/dev", 0o755, 0, 0).map_err(w)?;
        c.chardev("/dev/console", 0o600, 5, 1).map_err(w)?;
        c.chardev("/dev/null", 0o666, 1, 3).map_err(w)?;
        Ok(initrd)
    }

    /// The archive (until `commit`).
    fn cpio(&mut self) -> &mut Cpio<std::io::BufWriter<std::fs::File>> {
        self.cpio
            .as_mut()
            .expect("the initramfs is written before commit")
    }

    /// Put the initramfs in place, then the kernel and `bundle.json` beside it, and
    /// remember the bundle (for `image prune`).
    fn commit(mut self, kernel: &[u8], info: BundleInfo) -> Result<BundleInfo, ImageError> {
        let w = |e| ImageError::Write(self.path.clone(), e);
        if let Some(cpio) = self.cpio.take() {
            let mut f = cpio.finish().map_err(w)?;
            std::io::Write::flush(&mut f).map_err(w)?;
        }
        std::fs::rename(&self.tmp, &self.path).map_err(w)?;
        self.done = true;
        let out = self.path.parent().unwrap_or(Path::new("."));
        std::fs::write(out.join(&info.kernel), kernel)
            .map_err(|e| ImageError::Write(out.join(&info.kernel), e))?;
        info.save(out)?;
        record_bundle(out);
        Ok(info)
    }
}

impl Drop for Initrd {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Read a bzImage kernel.
fn read_kernel(path: &Path) -> Result<Vec<u8>, ImageError> {
    let kernel = std::fs::read(path).map_err(|e| bad("--kernel", path, e.to_string()))?;
    if kernel.len() < 0x206 || &kernel[0x202..0x206] != b"HdrS" {
        return Err(bad("--kernel", path, "not a bzImage kernel (vmlinuz)"));
    }
    Ok(kernel)
}

/// The modules' version directory and the kernel release it names.
fn modules_release(dir: &Path) -> Result<(PathBuf, String), ImageError> {
    let root = modules_root(dir)?;
    let root = root.canonicalize().unwrap_or(root);
    let release = root
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("unknown")
        .to_string();
    Ok((root, release))
}

/// Build the bundle; returns what it holds.
pub fn bundle(inp: &BundleInputs) -> Result<BundleInfo, ImageError> {
    let kernel = read_kernel(&inp.kernel)?;
    let (root, release) = modules_release(&inp.modules)?;
    let modules = resolve_modules(&root, GUEST_MODULES)?;
    let busybox = read_static_elf("--busybox", &inp.busybox)?;
    let entrypoint = read_static_elf("--entrypoint", &inp.entrypoint)?;
    let version = runner_version(&inp.runner_tarball)?;

    let out = &inp.out;
    let mut initrd = Initrd::create(out)?;
    let initrd_path = initrd.path.clone();
    let c = initrd.cpio();
    let w = |e| ImageError::Write(initrd_path.clone(), e);
    for d in [
        "/bin",
        "/etc",
        "/etc/gh-runner-microvm",
        "/proc",
        "/sys",
        "/run",
        "/root",
        "/lib",
        "/lib/modules",
        "/_environment",
        "/opt",
        "/opt/gh-runner-microvm",
        "/opt/gh-runner-microvm/bin",
        "/opt/gh-runner-microvm/share",
        "/usr",
        "/usr/bin",
        "/sbin",
        "/home",
    ] {
        c.dir(d, 0o755, 0, 0).map_err(w)?;
    }
    c.dir("/tmp", 0o1777, 0, 0).map_err(w)?;
    c.dir("/home/runner", 0o755, RUNNER_UID, RUNNER_UID)
        .map_err(w)?;
    c.file(protocol::IMAGE_ENTRYPOINT, 0o755, 0, 0, &entrypoint)
        .map_err(w)?;
    c.symlink("/init", protocol::IMAGE_ENTRYPOINT, 0, 0)
        .map_err(w)?;
    c.file("/bin/busybox", 0o755, 0, 0, &busybox).map_err(w)?;
    for applet in busybox_applets(&inp.busybox) {
        if applet != "busybox" && !applet.contains('/') {
            c.symlink(&format!("/bin/{applet}"), "busybox", 0, 0)
                .map_err(w)?;
        }
    }
    c.symlink("/usr/bin/env", "/bin/env", 0, 0).map_err(w)?;
    c.file("/etc/passwd", 0o644, 0, 0, format!("root:x:0:0:root:/root:/bin/sh\nrunner:x:{RUNNER_UID}:{RUNNER_UID}:runner:/home/runner:/bin/sh\n").as_bytes()).map_err(w)?;
    c.file(
        "/etc/group",
        0o644,
        0,
        0,
        format!("root:x:0:\nrunner:x:{RUNNER_UID}:runner\n").as_bytes(),
    )
    .map_err(w)?;
    c.file("/etc/hostname", 0o644, 0, 0, b"gh-runner-microvm\n")
        .map_err(w)?;
    write_modules(c, &root, &release, &modules).map_err(|e| match e {
        ModulesError::Read(p, e) => bad("--modules", &p, e.to_string()),
        ModulesError::Write(e) => w(e),
    })?;
    // The actions runner, owned by `runner` (it writes its configuration there).
    let base = format!("{}/runner-{version}", protocol::DEFAULT_RUNNER_INSTALL);
    c.dir(protocol::DEFAULT_RUNNER_INSTALL, 0o755, 0, 0)
        .map_err(w)?;
    c.dir(&base, 0o755, RUNNER_UID, RUNNER_UID).map_err(w)?;
    let tgz = std::fs::File::open(&inp.runner_tarball)
        .map_err(|e| bad("--runner-tarball", &inp.runner_tarball, e.to_string()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut has_run = false;
    let mut made = BTreeSet::new();
    let entries = archive
        .entries()
        .map_err(|e| bad("--runner-tarball", &inp.runner_tarball, e.to_string()))?;
    for entry in entries {
        let mut e =
            entry.map_err(|e| bad("--runner-tarball", &inp.runner_tarball, e.to_string()))?;
        let rel = e
            .path()
            .map_err(|e| bad("--runner-tarball", &inp.runner_tarball, e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if rel.is_empty() || rel.split('/').any(|s| s == "..") {
            continue;
        }
        let dest = format!("{base}/{rel}");
        // Tarballs may omit directory entries; the initramfs needs every parent.
        let mut parent = String::new();
        for part in rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p.to_vec())
            .unwrap_or_default()
        {
            parent = if parent.is_empty() {
                part.to_string()
            } else {
                format!("{parent}/{part}")
            };
            if made.insert(parent.clone()) {
                c.dir(&format!("{base}/{parent}"), 0o755, RUNNER_UID, RUNNER_UID)
                    .map_err(w)?;
            }
        }
        let mode = e.header().mode().unwrap_or(0o644) & 0o7777;
        match e.header().entry_type() {
            tar::EntryType::Directory if made.insert(rel.clone()) => {
                c.dir(&dest, mode, RUNNER_UID, RUNNER_UID).map_err(w)?
            }
            tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = e
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                c.symlink(&dest, &target, RUNNER_UID, RUNNER_UID)
                    .map_err(w)?
            }
            tar::EntryType::Regular => {
                let mut data = vec![];
                e.read_to_end(&mut data)
                    .map_err(|e| bad("--runner-tarball", &inp.runner_tarball, e.to_string()))?;
                has_run |= rel == "run.sh";
                c.file(&dest, mode, RUNNER_UID, RUNNER_UID, &data)
                    .map_err(w)?
            }
            _ => {}
        }
    }
    if !has_run {
        return Err(bad(
            "--runner-tarball",
            &inp.runner_tarball,
            "no run.sh at its top level: not an actions runner tarball",
        ));
    }
    let info = BundleInfo {
        format: 1,
        kernel_release: release,
        runner_version: version,
        modules,
        kernel: "vmlinuz".into(),
        initrd: "initrd.img".into(),
        root: None,
    };
    initrd.commit(&kernel, info)
}

/// Pack the fake actions runner (`listener`, a static binary) as
/// `dir/actions-runner-linux-x64-<version>.tar.gz` with `run.sh`, `config.sh` and
/// `bin/Runner.Listener`, the layout of the real tarball. For the demo and tests.
pub fn fake_runner_tarball(listener: &Path, dir: &Path, version: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("actions-runner-linux-x64-{version}.tar.gz"));
    let gz =
        flate2::write::GzEncoder::new(std::fs::File::create(&path)?, flate2::Compression::fast());
    let mut t = tar::Builder::new(gz);
    let mut add = |name: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        t.append_data(&mut h, name, data)
    };
    add(
        "run.sh",
        0o755,
        b"#!/bin/sh\nexec \"$(dirname \"$0\")/bin/Runner.Listener\" run \"$@\"\n",
    )?;
    add(
        "config.sh",
        0o755,
        b"#!/bin/sh\nexec \"$(dirname \"$0\")/bin/Runner.Listener\" configure \"$@\"\n",
    )?;
    add("bin/Runner.Listener", 0o755, &std::fs::read(listener)?)?;
    t.into_inner()?.finish()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_order_puts_dependencies_first() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("modules.dep"),
            "kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko\n\
             kernel/net/9p/9pnet.ko:\nkernel/fs/netfs/netfs.ko:\n\
             kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("modules.builtin"),
            "kernel/drivers/virtio/virtio_mmio.ko\n",
        )
        .unwrap();
        let o = resolve_modules(d.path(), &["virtio_mmio", "9pnet_virtio", "9p"]).unwrap();
        assert_eq!(
            o,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/net/9p/9pnet.ko",
                "kernel/net/9p/9pnet_virtio.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/9p/9p.ko"
            ]
        );
        let e = resolve_modules(d.path(), &["evdev"]).unwrap_err();
        assert!(e.to_string().contains("no module evdev"), "{e}");
    }

    #[test]
    fn runner_versions() {
        assert_eq!(
            runner_version(Path::new("/x/actions-runner-linux-x64-2.330.0.tar.gz")).unwrap(),
            "2.330.0"
        );
        assert!(runner_version(Path::new("runner.tgz"))
            .unwrap_err()
            .to_string()
            .contains("--runner-tarball"));
    }

    #[test]
    fn detects_static_elves() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(elf_is_dynamic(&me), Some(true));
        assert_eq!(elf_is_dynamic(b"#!/bin/sh\n"), None);
    }
}
