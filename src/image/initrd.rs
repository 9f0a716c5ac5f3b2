//! The initramfs being written: a temporary file that every bundle starts with
//! `/dev` and the console and that `commit` renames into place with the kernel
//! and `bundle.json`. It knows no bundle's contents beyond that.

use std::path::{Path, PathBuf};

use super::cpio::Cpio;
use super::registry::record_bundle;
use super::{BundleInfo, ImageError};

/// `DIR/initrd.img` being written: under a temporary name (unique per build: two
/// builds of one bundle, two demos, must not share it) that is removed unless
/// [`Initrd::commit`] renames it into place.
pub(super) struct Initrd {
    /// Taken by `commit`.
    cpio: Option<Cpio<std::io::BufWriter<std::fs::File>>>,
    tmp: PathBuf,
    pub(super) path: PathBuf,
    done: bool,
}

impl Initrd {
    /// Start `out/initrd.img` with what every initramfs needs first: `/dev` with
    /// the console (the kernel opens it for init's stdio) and `/dev/null`.
    pub(super) fn create(out: &Path) -> Result<Initrd, ImageError> {
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

    /// Root-owned directories (mode 0755), in this order.
    pub(super) fn dirs(&mut self, dirs: &[&str]) -> Result<(), ImageError> {
        let path = self.path.clone();
        let c = self.cpio();
        for d in dirs {
            c.dir(d, 0o755, 0, 0)
                .map_err(|e| ImageError::Write(path.clone(), e))?;
        }
        Ok(())
    }

    /// The archive (until `commit`).
    pub(super) fn cpio(&mut self) -> &mut Cpio<std::io::BufWriter<std::fs::File>> {
        self.cpio
            .as_mut()
            .expect("the initramfs is written before commit")
    }

    /// Put the initramfs in place, then the kernel (and its `vmlinux`, if any) and
    /// `bundle.json` beside it, and remember the bundle (for `image prune`).
    pub(super) fn commit(
        mut self,
        kernel: &[u8],
        vmlinux: Option<&[u8]>,
        info: BundleInfo,
    ) -> Result<BundleInfo, ImageError> {
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
        let elf = out.join(super::VMLINUX);
        match vmlinux {
            Some(bytes) => std::fs::write(&elf, bytes),
            // A previous build's is stale.
            None => std::fs::remove_file(&elf).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
        }
        .map_err(|e| ImageError::Write(elf, e))?;
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
