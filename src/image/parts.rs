//! `image bundle --busybox --runner-tarball`: an initramfs bundle from parts (the
//! entrypoint as `/init`, busybox, modules, a `runner` user, the actions runner),
//! and the fake runner's tarball for the demo and tests. Root disks are `oci`'s.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::elf::{read_kernel, read_static_elf};
use super::initrd::Initrd;
use super::modules::{modules_release, resolve_modules, write_modules, ModulesError};
use protocol::bundle::{ETC_DIR, GUEST_MODULES};

use super::{bad, unreadable, BundleInfo, ImageError, RUNNER_UID};

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
    initrd.dirs(&[
        "/bin",
        "/etc",
        ETC_DIR,
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
    ])?;
    let initrd_path = initrd.path.clone();
    let c = initrd.cpio();
    let w = |e| ImageError::Write(initrd_path.clone(), e);
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
        ModulesError::Read(p, e) => unreadable("--modules", &p)(e),
        ModulesError::Write(e) => w(e),
    })?;
    // The actions runner, owned by `runner` (it writes its configuration there).
    let base = format!("{}/runner-{version}", protocol::DEFAULT_RUNNER_INSTALL);
    c.dir(protocol::DEFAULT_RUNNER_INSTALL, 0o755, 0, 0)
        .map_err(w)?;
    c.dir(&base, 0o755, RUNNER_UID, RUNNER_UID).map_err(w)?;
    let tgz = std::fs::File::open(&inp.runner_tarball)
        .map_err(unreadable("--runner-tarball", &inp.runner_tarball))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut has_run = false;
    let mut made = BTreeSet::new();
    let entries = archive
        .entries()
        .map_err(unreadable("--runner-tarball", &inp.runner_tarball))?;
    for entry in entries {
        let mut e = entry.map_err(unreadable("--runner-tarball", &inp.runner_tarball))?;
        let rel = e
            .path()
            .map_err(unreadable("--runner-tarball", &inp.runner_tarball))?
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
                    .map_err(unreadable("--runner-tarball", &inp.runner_tarball))?;
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
        vmlinux: kernel.vmlinux.as_ref().map(|_| super::VMLINUX.into()),
        root: None,
    };
    initrd.commit(&kernel.bzimage, kernel.vmlinux.as_deref(), info)
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
}
