//! `orchestrator image bundle` and `image prune`: runs the image service's
//! builds and tells the user what came of them. The building is `crate::image`'s.

use super::OrchestratorError;
use crate::image::oci::OciInputs;
use crate::image::{BundleInputs, ImageError};

/// Which bundle to build.
#[derive(Debug)]
pub enum BundleJob {
    /// A root-disk bundle from an OCI image (`--oci`).
    Oci(OciInputs),
    /// An initramfs bundle from parts (`--busybox`, `--runner-tarball`).
    Parts(BundleInputs),
}

/// Build the bundle and say how to boot it.
pub fn bundle(job: BundleJob) -> Result<(), OrchestratorError> {
    // A bad input is a usage error (exit 2); a failed write is not.
    let usage = |e: ImageError| match e {
        ImageError::Write(..) => OrchestratorError::Image(e),
        other => OrchestratorError::ImageInput(other),
    };
    let (info, out) = match job {
        BundleJob::Oci(inputs) => {
            eprintln!(
                "orchestrator: converting {} (cached by image id; the first time takes a while)",
                inputs.image
            );
            (
                crate::image::oci::bundle_oci(&inputs).map_err(usage)?,
                inputs.out,
            )
        }
        BundleJob::Parts(inputs) => (crate::image::bundle(&inputs).map_err(usage)?, inputs.out),
    };
    match &info.root {
        Some(r) => println!(
            "bundle {}: kernel {}, {} modules, root disk {} of {} (image {}); boot it with: runner -R qemu -i {}",
            out.display(),
            info.kernel_release,
            info.modules.len(),
            r.disk.display(),
            r.image,
            &r.image_id[..12],
            out.display()
        ),
        None => println!(
            "bundle {}: kernel {}, actions runner {}, {} modules; boot it with: runner -R qemu -i {}",
            out.display(),
            info.kernel_release,
            info.runner_version,
            info.modules.len(),
            out.display()
        ),
    }
    Ok(())
}

/// Remove what this project made and list it.
pub fn prune(all: bool) -> Result<(), OrchestratorError> {
    let p = crate::image::oci::prune(all).map_err(OrchestratorError::Image)?;
    for c in &p.containers {
        println!("removed working container {c}");
    }
    for (name, size) in &p.images {
        println!("removed image {name} ({size})");
    }
    for path in &p.paths {
        println!("removed {}", path.display());
    }
    println!(
        "freed {:.1} MiB of disks and bundles; {} images, {} working containers removed",
        p.bytes as f64 / 1048576.0,
        p.images.len(),
        p.containers.len()
    );
    Ok(())
}
