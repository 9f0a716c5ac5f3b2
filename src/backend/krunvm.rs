//! krunvm (pinned argv, as the shell original): every call goes through
//! `buildah unshare` so that rootless buildah mounts and volume bind mounts work.
//! Only krunvm's argv and list format live here; spawning is `Backend`'s.

use super::{
    argv_command, need, output, pull_if_missing, BackendError, BoxFuture, Hypervisor, Registration,
};
use crate::types::runtime::Runtime;
use crate::types::vm::VmSpec;

/// `-R krunvm`; `-R ''` picks it when krunvm and buildah are installed.
pub(super) const REGISTRATION: Registration = Registration {
    runtime: Runtime::Krunvm,
    detect: Some(|| which::which("krunvm").is_ok() && which::which("buildah").is_ok()),
    open: |_| {
        need("buildah")?;
        need("krunvm")?;
        Ok(Box::new(Krunvm))
    },
};

/// `buildah unshare krunvm …`.
#[derive(Debug)]
struct Krunvm;

impl Hypervisor for Krunvm {
    fn runtime(&self) -> Runtime {
        Runtime::Krunvm
    }

    fn prepare<'a>(&'a self, image: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            pull_if_missing(
                "buildah",
                &["inspect", "--type", "image", image],
                &["pull", image],
                image,
            )
            .await
        })
    }

    fn create<'a>(&'a self, spec: &'a VmSpec) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(create(spec))
    }

    fn command(&self, spec: &VmSpec) -> Result<std::process::Command, BackendError> {
        Ok(argv_command(start_argv(spec)))
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(delete(name))
    }

    fn list<'a>(&'a self, _prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, BackendError>> {
        Box::pin(list())
    }
}

fn volume(host: &std::path::Path, guest: &str) -> String {
    format!("{}:{guest}", host.display())
}

/// `buildah unshare krunvm create IMAGE --cpus C --mem M --dns D --name NAME --volume HOST:GUEST…`
fn create_argv(spec: &VmSpec) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "unshare".into(),
        "krunvm".into(),
        "create".into(),
        spec.image.clone(),
    ];
    a.extend([
        "--cpus".into(),
        spec.cpus.to_string(),
        "--mem".into(),
        spec.memory.to_string(),
    ]);
    a.extend([
        "--dns".into(),
        spec.dns.clone(),
        "--name".into(),
        spec.name.clone(),
    ]);
    if let Some(dir) = &spec.env_dir {
        a.extend(["--volume".into(), volume(dir, protocol::GUEST_ENV_DIR)]);
    }
    for m in &spec.mounts {
        a.extend(["--volume".into(), volume(&m.host, &m.guest)]);
    }
    a
}

async fn create(spec: &VmSpec) -> Result<(), BackendError> {
    let argv = create_argv(spec);
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    output("buildah", &args).await.map(|_| ())
}

/// `buildah unshare krunvm start NAME ENTRYPOINT -- ARGS…`
fn start_argv(spec: &VmSpec) -> (&'static str, Vec<String>) {
    let mut a: Vec<String> = ["unshare", "krunvm", "start"].map(String::from).to_vec();
    a.extend([spec.name.clone(), spec.entrypoint.clone(), "--".into()]);
    a.extend(spec.args.iter().cloned());
    ("buildah", a)
}

async fn delete(name: &str) -> Result<(), BackendError> {
    match output("buildah", &["unshare", "krunvm", "delete", name]).await {
        Ok(_) => Ok(()),
        // Deleting what is not there is not a failure.
        Err(BackendError::Failed { .. }) if !list().await?.iter().any(|n| n == name) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `krunvm list` prints each VM's name alone on a line, then indented details.
async fn list() -> Result<Vec<String>, BackendError> {
    let out = output("buildah", &["unshare", "krunvm", "list"]).await?;
    Ok(parse_list(&out))
}

fn parse_list(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| {
            !l.is_empty() && !l.starts_with(char::is_whitespace) && *l != "No microVMs found"
        })
        .map(|l| l.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::mount::Mount;

    fn spec() -> VmSpec {
        VmSpec {
            name: "GH-runner-1-abc".into(),
            image: "img:1".into(),
            cpus: 2,
            memory: 1024,
            dns: "1.1.1.1".into(),
            env_dir: Some("/tmp/env/GH-runner-001".into()),
            mounts: vec![Mount {
                host: "/cache".into(),
                guest: "/cache".into(),
                options: None,
            }],
            entrypoint: "/opt/gh-runner-microvm/bin/entrypoint".into(),
            args: vec!["-E".into(), "/_environment/1-abc.env".into()],
        }
    }

    #[test]
    fn pinned_argv() {
        assert_eq!(
            create_argv(&spec()).join(" "),
            "unshare krunvm create img:1 --cpus 2 --mem 1024 --dns 1.1.1.1 --name GH-runner-1-abc \
             --volume /tmp/env/GH-runner-001:/_environment --volume /cache:/cache"
        );
        let (p, a) = start_argv(&spec());
        assert_eq!(p, "buildah");
        assert_eq!(
            a.join(" "),
            "unshare krunvm start GH-runner-1-abc /opt/gh-runner-microvm/bin/entrypoint -- -E /_environment/1-abc.env"
        );
    }

    #[test]
    fn parses_list() {
        let out = "\nGH-runner-1-a\n CPUs: 2\n RAM (MiB): 1024\n\nother\n Workdir: \n\n";
        assert_eq!(parse_list(out), ["GH-runner-1-a", "other"]);
        assert!(parse_list("No microVMs found\n").is_empty());
    }
}
