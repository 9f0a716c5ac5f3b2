//! The demo's bundle: a Debian kernel and busybox-static fetched with apt-get
//! into the cache, the fake actions runner, built with `image::bundle`.
//! It makes the bundle; booting it is the orchestrator's.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{DemoConfig, DemoError};
use crate::hosttool;
use crate::types::paths::{beside_me, cache_dir};

fn sh(cmd: &mut Command, what: &str) -> Result<String, DemoError> {
    let out =
        hosttool::output(cmd).map_err(|e| DemoError::Missing(format!("cannot {what}: {e}")))?;
    if !out.status.success() {
        return Err(DemoError::Missing(format!(
            "cannot {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `apt-get download PKG` unpacked into the cache (shared with scripts/fetch-kernel.sh).
fn apt_unpack(pkg: &str, into: &Path) -> Result<PathBuf, DemoError> {
    let dir = into.join(pkg);
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let hint = "the demo fetches a kernel and busybox with apt-get (Debian/Ubuntu); elsewhere give --kernel, --modules and --busybox";
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| DemoError::Io(format!("create {}", dir.display()), e))?;
    eprintln!("demo: fetching {pkg} with apt-get download …");
    sh(
        hosttool::command("apt-get")
            .args(["download", "-q", pkg])
            .current_dir(&dir),
        &format!("download {pkg} ({hint})"),
    )?;
    let deb = std::fs::read_dir(&dir)
        .map_err(|e| DemoError::Io(format!("read {}", dir.display()), e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            DemoError::Missing(format!("apt-get download {pkg} produced no .deb ({hint})"))
        })?;
    sh(
        hosttool::command("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("root")),
        &format!("unpack {pkg}"),
    )?;
    let _ = std::fs::remove_file(&deb);
    let _ = std::fs::write(dir.join(".complete"), "");
    Ok(dir)
}

fn newest_kernel_package() -> Result<String, DemoError> {
    let out = sh(
        hosttool::command("apt-cache").args([
            "search",
            "--names-only",
            "^linux-image-[0-9].*-amd64-unsigned$",
        ]),
        "search apt for a kernel",
    )?;
    let mut pkgs: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| !p.contains("cloud") && !p.contains("-rt-"))
        .map(str::to_string)
        .collect();
    pkgs.sort_by(|a, b| protocol::version::compare(a, b));
    pkgs.iter()
        .rev()
        .find(|p| p.starts_with("linux-image-6.1."))
        .or(pkgs.last())
        .cloned()
        .ok_or_else(|| DemoError::Missing("apt knows no linux-image-*-amd64-unsigned package: run apt-get update, or give --kernel and --modules".into()))
}

/// Build (or reuse) the demo bundle.
pub(super) fn demo_bundle(args: &DemoConfig) -> Result<PathBuf, DemoError> {
    let me = |n: &str| {
        beside_me(n).ok_or_else(|| {
            DemoError::Missing(format!(
                "no {n} beside this executable: build with scripts/build.sh"
            ))
        })
    };
    let entrypoint = me("entrypoint")?;
    let listener = me("fake-runner-listener")?;
    let cache = cache_dir();
    let (kernel, modules) = match (&args.kernel, &args.modules) {
        (Some(k), Some(m)) => (k.clone(), m.clone()),
        _ => {
            let dir = apt_unpack(&newest_kernel_package()?, &cache.join("kernel"))?;
            let root = dir.join("root");
            let version = std::fs::read_dir(root.join("lib/modules"))
                .ok()
                .and_then(|mut rd| rd.next())
                .and_then(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .ok_or_else(|| DemoError::Missing(format!("{} has no modules", dir.display())))?;
            (
                root.join(format!("boot/vmlinuz-{version}")),
                root.join(format!("lib/modules/{version}")),
            )
        }
    };
    let busybox = match &args.busybox {
        Some(b) => b.clone(),
        None => {
            let dir = apt_unpack("busybox-static", &cache.join("pkg"))?;
            dir.join("root/bin/busybox")
        }
    };
    let out = cache.join("demo/bundle");
    let work =
        tempfile::tempdir().map_err(|e| DemoError::Io("create a temporary directory".into(), e))?;
    let tgz = crate::image::fake_runner_tarball(&listener, work.path(), "2.330.0")
        .map_err(|e| DemoError::Io("pack the fake actions runner".into(), e))?;
    let inputs = crate::image::BundleInputs {
        kernel,
        modules,
        busybox,
        runner_tarball: tgz,
        entrypoint,
        out: out.clone(),
    };
    crate::image::bundle(&inputs).map_err(DemoError::Bundle)?;
    Ok(out)
}
