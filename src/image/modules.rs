//! Kernel modules of a bundle: the version directory, the load order of the
//! modules the guest needs with their dependencies (`modules.dep`, or each
//! module's `.modinfo` when there is none), and their place in the initramfs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::cpio::Cpio;
use protocol::bundle::{MODULE_LIST, OPTIONAL_MODULES};

use super::{bad, unreadable, ImageError};

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
        .map_err(unreadable("--modules", dir))?
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
            .map_err(unreadable("--modules", &d))?
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
            // Snapshot templates only (`--start`): a kernel without it boots cold.
            None if OPTIONAL_MODULES.contains(&w) => {}
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

pub(super) enum ModulesError {
    Read(PathBuf, std::io::Error),
    Write(std::io::Error),
}

/// Put `modules` (paths under `root`) into the initramfs under
/// `/lib/modules/<release>/`, plus their load order in [`MODULE_LIST`].
pub(super) fn write_modules<W: std::io::Write>(
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

/// The modules' version directory and the kernel release it names.
pub(super) fn modules_release(dir: &Path) -> Result<(PathBuf, String), ImageError> {
    let root = modules_root(dir)?;
    let root = root.canonicalize().unwrap_or(root);
    let release = root
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("unknown")
        .to_string();
    Ok((root, release))
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
}
