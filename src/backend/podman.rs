//! podman with the krun runtime: the VM is a container whose runtime boots it.
//! Only podman's argv lives here; spawning and killing are `Backend`'s.

use super::{
    argv_command, missing, need, output, pull_if_missing, BackendError, BoxFuture, Hypervisor,
    Registration,
};
use crate::hosttool;
use crate::types::runtime::Runtime;
use crate::types::vm::VmSpec;

/// `-R podman`; `-R ''` picks it first, when podman has the krun runtime.
pub(super) const REGISTRATION: Registration = Registration {
    runtime: Runtime::Podman,
    detect: Some(|| which::which("podman").is_ok() && has_krun()),
    open: |_| {
        need("podman")?;
        if !has_krun() {
            return Err(missing("krun"));
        }
        Ok(Box::new(Podman))
    },
};

/// Is the krun OCI runtime available to podman?
pub(super) fn has_krun() -> bool {
    which::which("krun").is_ok()
        || hosttool::output(hosttool::command("crun").arg("--version"))
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("+LIBKRUN"))
}

/// `podman run --runtime krun …`.
#[derive(Debug)]
struct Podman;

impl Hypervisor for Podman {
    fn runtime(&self) -> Runtime {
        Runtime::Podman
    }

    fn prepare<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            pull_if_missing(
                "podman",
                &["image", "exists", image],
                &["pull", image],
                image,
            )
            .await
        })
    }

    fn command(&self, spec: &VmSpec) -> Result<std::process::Command, BackendError> {
        Ok(argv_command(run_argv(spec)))
    }

    /// conmon detaches from the process group: remove the container itself.
    fn after_kill<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _ = output("podman", &["rm", "-f", "-t", "0", name]).await;
        })
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(remove(name))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        Box::pin(list(prefix))
    }
}

/// Container memory limit above the guest's RAM, for the VMM's own overhead.
fn container_memory(guest_mib: u32) -> u32 {
    guest_mib + (guest_mib / 4).max(256)
}

/// `podman run --runtime krun --rm --name NAME --cpus C --memory M' --dns D
/// --annotation krun.cpus=C --annotation krun.ram_mib=M --entrypoint E --volume … IMAGE ARGS…`
fn run_argv(spec: &VmSpec) -> (&'static str, Vec<String>) {
    let mut a: Vec<String> = ["run", "--runtime", "krun", "--rm", "--name"]
        .map(String::from)
        .to_vec();
    a.push(spec.name.clone());
    a.extend(["--cpus".into(), spec.cpus.to_string()]);
    a.extend([
        "--memory".into(),
        format!("{}m", container_memory(spec.memory)),
    ]);
    a.extend(["--dns".into(), spec.dns.clone()]);
    a.extend(["--annotation".into(), format!("krun.cpus={}", spec.cpus)]);
    a.extend([
        "--annotation".into(),
        format!("krun.ram_mib={}", spec.memory),
    ]);
    a.extend(["--entrypoint".into(), spec.entrypoint.clone()]);
    if let Some(dir) = &spec.env_dir {
        // Private to this container (:Z).
        a.extend([
            "--volume".into(),
            format!("{}:{}:Z,rw", dir.display(), protocol::GUEST_ENV_DIR),
        ]);
    }
    for m in &spec.mounts {
        // Shared between loops (:z) unless the user said otherwise.
        let opts = m.options.clone().unwrap_or_else(|| "z".into());
        a.extend([
            "--volume".into(),
            format!("{}:{}:{opts}", m.host.display(), m.guest),
        ]);
    }
    a.push(spec.image.clone());
    a.extend(spec.args.iter().cloned());
    ("podman", a)
}

async fn remove(name: &str) -> Result<(), BackendError> {
    // --ignore: a container already removed by --rm is fine.
    output(
        "podman",
        &["rm", "--force", "--ignore", "--time", "0", name],
    )
    .await
    .map(|_| ())
}

async fn list(prefix: &str) -> Result<Vec<String>, BackendError> {
    let filter = format!("name=^{prefix}-");
    let out = output(
        "podman",
        &["ps", "--all", "--format", "{{.Names}}", "--filter", &filter],
    )
    .await?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::mount::Mount;

    #[test]
    fn pinned_argv() {
        let spec = VmSpec {
            name: "P-2-x".into(),
            image: "img".into(),
            cpus: 4,
            memory: 2048,
            dns: "9.9.9.9".into(),
            env_dir: Some("/e/P-002".into()),
            mounts: vec![
                Mount {
                    host: "/c".into(),
                    guest: "/cache".into(),
                    options: None,
                },
                Mount {
                    host: "/t".into(),
                    guest: "/tools".into(),
                    options: Some("ro".into()),
                },
            ],
            entrypoint: "/opt/gh-runner-microvm/bin/entrypoint".into(),
            args: vec!["-E".into(), "/_environment/2-x.env".into()],
        };
        let (p, a) = run_argv(&spec);
        assert_eq!(p, "podman");
        assert_eq!(
            a.join(" "),
            "run --runtime krun --rm --name P-2-x --cpus 4 --memory 2560m --dns 9.9.9.9 \
             --annotation krun.cpus=4 --annotation krun.ram_mib=2048 --entrypoint /opt/gh-runner-microvm/bin/entrypoint \
             --volume /e/P-002:/_environment:Z,rw --volume /c:/cache:z --volume /t:/tools:ro img -E /_environment/2-x.env"
        );
        assert_eq!(container_memory(512), 768);
    }
}
