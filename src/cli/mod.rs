//! Command lines of `orchestrator` and `runner` (design.md §5: letters and
//! variables are public interface). Precedence: command line > environment >
//! `.env` in the working directory (loaded by the mains with dotenvy) > default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::forge::ScopeKind;

/// Which microVM runtime runs the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// `buildah unshare krunvm …` (libkrun).
    Krunvm,
    /// `podman run --runtime krun …` (libkrun through crun).
    Podman,
    /// `qemu-system-x86_64 -M microvm` booting a bundle (`orchestrator image bundle`).
    Qemu,
}

impl Runtime {
    /// The name used on command lines and in labels.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Krunvm => "krunvm",
            Runtime::Podman => "podman",
            Runtime::Qemu => "qemu",
        }
    }
}

/// `-R`: a runtime, or none to detect one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeChoice(pub Option<Runtime>);

/// Parse `-R`: empty means "detect".
fn parse_runtime(s: &str) -> Result<RuntimeChoice, String> {
    if s.is_empty() {
        return Ok(RuntimeChoice(None));
    }
    Runtime::from_str(s, true)
        .map(|r| RuntimeChoice(Some(r)))
        .map_err(|_| {
            format!(
                "unknown runtime {s:?}: use krunvm, podman or qemu, or leave it empty to detect"
            )
        })
}

const RUNNER_AFTER: &str = "\
Each iteration mints a single-use runner credential on this host, boots a fresh
microVM that runs exactly one job, and throws the VM away.

Environment: every option has a RUNNER_* variable (shown in brackets); a .env
file in the working directory is read too. Command line beats environment beats
.env beats default. RUNNER_PAT is the recommended way to pass the PAT.

Exit status: 0 the loop ended as asked (-r, -k, signal, .brk from the guest);
1 a runtime failure (backend, GitHub refusing, guest failing repeatedly);
2 invalid usage or configuration.

Example: runner -T \"$PAT\" -p acme/widgets -r 1 -i ghcr.io/acme/runner:main";

/// `runner`: one loop of ephemeral microVM runners.
#[derive(Debug, Parser)]
#[command(name = "runner", version, about = "Run GitHub Actions jobs, one fresh microVM per job, in a loop",
          after_help = RUNNER_AFTER, max_term_width = 100)]
pub struct RunnerCli {
    #[command(flatten)]
    pub opts: RunnerOpts,
    /// Loop number given by the orchestrator (1-based); names the iterations `<LOOP_ID>-<random>`.
    #[arg(last = true, value_name = "LOOP_ID")]
    pub loop_id: Vec<String>,
}

/// The runner's options (also parsed by the orchestrator to validate what it passes on).
#[derive(Debug, Clone, Args)]
pub struct RunnerOpts {
    /// vCPUs per microVM.
    #[arg(short = 'c', long = "cpus", env = "RUNNER_CPUS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub cpus: u32,
    /// Memory per microVM, in MiB.
    #[arg(short = 'm', long = "memory", env = "RUNNER_MEMORY", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(128..))]
    pub memory: u32,
    /// DNS server the guest uses.
    #[arg(
        short = 'd',
        long = "dns",
        env = "RUNNER_DNS",
        default_value = "1.1.1.1"
    )]
    pub dns: String,
    /// Dev mode: mount the directory holding the freshly built `entrypoint` at this
    /// guest directory and run GUEST_DIR/entrypoint instead of the image's.
    #[arg(
        short = 'D',
        long = "dir",
        env = "RUNNER_DIR",
        value_name = "GUEST_DIR"
    )]
    pub dev_guest_dir: Option<String>,
    /// Host directory mounted by -D (default: the directory of this executable).
    #[arg(long = "dev-dir", env = "RUNNER_DEV_DIR", value_name = "HOST_DIR")]
    pub dev_host_dir: Option<PathBuf>,
    /// GitHub: github.com, a *.ghe.com or GHES host, or a URL such as http://127.0.0.1:8080.
    #[arg(
        short = 'g',
        long = "github",
        env = "RUNNER_GITHUB",
        default_value = "github.com"
    )]
    pub github: String,
    /// Runner group (repositories only have Default).
    #[arg(
        short = 'G',
        long = "group",
        env = "RUNNER_GROUP",
        default_value = "Default"
    )]
    pub group: String,
    /// The guest: an OCI image (krunvm, podman; built from the project's
    /// Containerfile), or with -R qemu a bundle directory (`orchestrator image bundle`).
    #[arg(
        short = 'i',
        long = "image",
        env = "RUNNER_IMAGE",
        default_value = "ghcr.io/gh-runner-microvm/gh-runner-microvm:ubuntu"
    )]
    pub image: String,
    /// Log destination: a file to append to (default: standard error).
    #[arg(short = 'l', long = "log", env = "RUNNER_LOG", value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Runner labels, comma-separated (default: microvm,<runtime>).
    #[arg(
        short = 'L',
        long = "labels",
        env = "RUNNER_LABELS",
        default_value = ""
    )]
    pub labels: String,
    /// Extra mount HOST:GUEST[:OPTIONS], repeatable (RUNNER_MOUNT: newline-separated).
    #[arg(
        short = 'M',
        long = "mount",
        env = "RUNNER_MOUNT",
        value_delimiter = '\n',
        value_name = "HOST:GUEST"
    )]
    pub mounts: Vec<String>,
    /// Principal: owner/repo (-s repo), organisation (-s org) or enterprise (-s enterprise).
    #[arg(short = 'p', long = "principal", env = "RUNNER_PRINCIPAL")]
    pub principal: Option<String>,
    /// Loop lifetime in seconds; then idle runners stop at once and busy ones get --grace (0: forever).
    #[arg(
        short = 'k',
        long = "terminate",
        env = "RUNNER_TERMINATE",
        default_value_t = 0,
        value_name = "SECONDS"
    )]
    pub terminate: u64,
    /// Iterations (jobs) before the loop ends; -1 = forever.
    #[arg(short = 'r', long = "repeat", env = "RUNNER_REPEAT", default_value_t = -1, allow_negative_numbers = true)]
    pub repeat: i64,
    /// Runtime: krunvm, podman or qemu; empty = the first available (podman with krun, krunvm, qemu).
    #[arg(short = 'R', long = "runtime", env = "RUNNER_RUNTIME", default_value = "", value_parser = parse_runtime)]
    pub runtime: RuntimeChoice,
    /// Registration scope.
    #[arg(
        short = 's',
        long = "scope",
        env = "RUNNER_SCOPE",
        default_value = "repo",
        value_enum
    )]
    pub scope: ScopeKind,
    /// Fixed secret for .brk/.trm in every iteration (weaker than the default fresh one per VM).
    #[arg(
        short = 'S',
        long = "secret",
        env = "RUNNER_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    /// GitHub PAT; never enters a VM. Prefer RUNNER_PAT in the environment.
    #[arg(
        short = 'T',
        long = "pat",
        alias = "token",
        env = "RUNNER_PAT",
        hide_env_values = true
    )]
    pub pat: Option<String>,
    /// User the runner runs as in the guest (root: no privilege drop).
    #[arg(
        short = 'u',
        long = "user",
        env = "RUNNER_USER",
        default_value = "runner"
    )]
    pub user: String,
    /// Let the actions runner update itself.
    #[arg(short = 'U', long = "update", env = "RUNNER_UPDATE")]
    pub update: bool,
    /// More output; repeat for more (RUNNER_VERBOSE: a number).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// GitHub App id (with --app-key): authenticate as an App installation instead of a PAT.
    #[arg(long = "app-id", env = "RUNNER_APP_ID", requires = "app_key")]
    pub app_id: Option<u64>,
    /// GitHub App private key, a PEM file; it stays on the host (warned when group/world readable).
    #[arg(
        long = "app-key",
        env = "RUNNER_APP_KEY",
        requires = "app_id",
        value_name = "PEM_FILE"
    )]
    pub app_key: Option<PathBuf>,
    /// App installation id (default: the installation on the principal, looked up).
    #[arg(
        long = "installation-id",
        env = "RUNNER_INSTALLATION_ID",
        requires = "app_id"
    )]
    pub installation_id: Option<u64>,
    /// Registration budget shared by all loops of this prefix on this host: at most N
    /// runner credentials minted per SECONDS (GitHub caps JIT configs per minute).
    #[arg(
        long = "registrations",
        env = "RUNNER_REGISTRATIONS",
        default_value = "30/60",
        value_name = "N/SECONDS"
    )]
    pub registrations: crate::runner::budget::Rate,
    /// VMs in a row that may fail to get their runner up before the loop gives up
    /// (exit 1); between them the loop backs off 2, 4, 8… seconds.
    #[arg(long = "max-failures", env = "RUNNER_MAX_FAILURES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_failures: u32,
    /// Use a registration token and config.sh instead of a JIT config.
    #[arg(long = "no-jit", env = "RUNNER_NO_JIT")]
    pub no_jit: bool,
    /// Seconds a busy job may go on after the loop is asked to stop.
    #[arg(
        long = "grace",
        env = "RUNNER_GRACE",
        default_value_t = 300,
        value_name = "SECONDS"
    )]
    pub grace: u64,
    /// Seconds from VM start to the guest's ready mark (.tkn) before the VM is killed and retried.
    #[arg(long = "boot-timeout", env = "RUNNER_BOOT_TIMEOUT", default_value_t = 300, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub boot_timeout: u64,
    /// QEMU: accelerator; auto uses KVM only when a probe guest really boots with it.
    #[arg(
        long = "accel",
        env = "RUNNER_ACCEL",
        default_value = "auto",
        value_enum
    )]
    pub accel: crate::backend::qemu::Accel,
    /// QEMU: user networking, or restricted (restrict=on: only --net-forward targets).
    #[arg(long = "net", env = "RUNNER_NET", default_value = "user", value_enum)]
    pub net: crate::backend::qemu::NetMode,
    /// QEMU: carry guest connections to GUEST_IP:PORT to HOST:PORT, repeatable
    /// (RUNNER_NET_FORWARD: newline-separated).
    #[arg(
        long = "net-forward",
        env = "RUNNER_NET_FORWARD",
        value_delimiter = '\n',
        value_name = "GUEST_IP:PORT=HOST:PORT"
    )]
    pub net_forward: Vec<String>,
    /// QEMU: kernel to boot instead of the bundle's.
    #[arg(long = "kernel", env = "RUNNER_KERNEL", value_name = "VMLINUZ")]
    pub kernel: Option<PathBuf>,
    /// QEMU, root-disk bundles (`image bundle --oci`): size of each VM's scratch
    /// disk for the job's files (the runner's _work), e.g. 512M, 20G; sparse, made
    /// fresh per VM and deleted with it. 0: none (the job writes into the image's
    /// overlay, which has little free space).
    #[arg(long = "scratch-size", env = "RUNNER_SCRATCH_SIZE", value_name = "SIZE", default_value = "16G", value_parser = parse_size)]
    pub scratch_size: u64,
}

const ORCH_AFTER: &str = "\
Everything after -- goes to every runner loop (see runner --help); secrets
given there with -T/-S are moved into the loops' environment so they never
show in ps. Example:

  RUNNER_PAT=... orchestrator -n 4 -- -k 3600 -p acme/widgets

Environment: ORCHESTRATOR_* variables (shown in brackets) and a .env file.
Exit status: 0 ended as asked; 1 a loop was given up or a runtime failure;
2 invalid usage or configuration.";

/// `orchestrator`: N runner loops on this host.
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, about = "Start and supervise N loops of ephemeral microVM GitHub runners",
          after_help = ORCH_AFTER, max_term_width = 100)]
pub struct OrchestratorCli {
    /// Number of runner loops.
    #[arg(short = 'n', long = "runners", env = "ORCHESTRATOR_RUNNERS", default_value_t = 1, global = true,
          value_parser = clap::value_parser!(u32).range(1..=999))]
    pub runners: u32,
    /// Prefix of VM and runner names; unique per host.
    #[arg(
        short = 'p',
        long = "prefix",
        env = "ORCHESTRATOR_PREFIX",
        default_value = "GH-runner"
    )]
    pub prefix: String,
    /// No isolation: no loop directory, configuration passed as guest options, starts staggered by -s
    /// (ORCHESTRATOR_ISOLATION=0 does the same).
    #[arg(short = 'I', long = "no-isolation")]
    pub no_isolation: bool,
    /// Seconds between loop starts without isolation.
    #[arg(
        short = 's',
        long = "sleep",
        env = "ORCHESTRATOR_SLEEP",
        default_value_t = 30
    )]
    pub sleep: u64,
    /// Log destination: a file to append to (default: standard error).
    #[arg(
        short = 'l',
        long = "log",
        env = "ORCHESTRATOR_LOG",
        global = true,
        value_name = "FILE"
    )]
    pub log: Option<PathBuf>,
    /// Runtime passed to the loops: krunvm, podman or qemu; empty = detect.
    #[arg(short = 'R', long = "runtime", env = "ORCHESTRATOR_RUNTIME", default_value = "", value_parser = parse_runtime)]
    pub runtime: RuntimeChoice,
    /// More output; repeat for more (ORCHESTRATOR_VERBOSE: a number).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Registration budget for all loops together: at most N runner credentials minted
    /// per SECONDS (passed to the loops as RUNNER_REGISTRATIONS).
    #[arg(
        long = "registrations",
        env = "ORCHESTRATOR_REGISTRATIONS",
        value_name = "N/SECONDS"
    )]
    pub registrations: Option<crate::runner::budget::Rate>,
    /// Seconds between passes that delete this host's stale runner registrations
    /// (offline, prefix-matched, no live VM, seen on two passes).
    #[arg(long = "reconcile", env = "ORCHESTRATOR_RECONCILE", default_value_t = 300, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile: u64,
    /// Arguments for every runner loop.
    #[arg(last = true, value_name = "RUNNER_ARGS")]
    pub runner_args: Vec<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands of `orchestrator`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything on this host with no GitHub account: a local forge, a QEMU
    /// bundle (kernel and busybox fetched with apt-get when missing), N loops, K jobs.
    Demo(crate::demo::DemoArgs),
    /// Guest images: build QEMU bundles.
    #[command(subcommand)]
    Image(ImageCommand),
}

/// `orchestrator image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a bootable QEMU bundle. From parts (--busybox, --runner-tarball): a
    /// kernel and an initramfs with the entrypoint as /init, busybox, the needed
    /// modules, a runner user and the actions runner (the demo and tests). From an
    /// OCI image (--oci, e.g. the project's Containerfile built with buildah): a
    /// read-only ext4 root disk of the image, cached by image id, and a stage-1
    /// initramfs that boots it; every VM gets its own copy-on-write overlay.
    #[command(
        after_help = "Examples:\n  orchestrator image bundle --kernel vmlinuz --modules /lib/modules/6.1.0-41-amd64 \\\n      --oci localhost/gh-runner-microvm:ubuntu --out ~/bundles/ubuntu\n  RUNNER_PAT=... runner -R qemu -i ~/bundles/ubuntu --scratch-size 20G -p owner/repo"
    )]
    Bundle(BundleArgs),
    /// Remove what this project made: working containers (gh-runner-microvm-*),
    /// images labelled io.github.gh-runner-microvm.image (the Containerfile's), the
    /// converted root disks and the bundles `image bundle` wrote. Other images stay,
    /// unless --all.
    Prune(PruneArgs),
}

/// `orchestrator image bundle`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["oci", "busybox"])))]
pub struct BundleArgs {
    /// Kernel image (vmlinuz, bzImage).
    #[arg(long, value_name = "VMLINUZ")]
    pub kernel: PathBuf,
    /// The kernel's modules: /lib/modules/<version>.
    #[arg(long, value_name = "LIB_MODULES_DIR")]
    pub modules: PathBuf,
    /// A static busybox (Debian/Ubuntu: busybox-static's /bin/busybox).
    #[arg(long, value_name = "STATIC_BUSYBOX")]
    pub busybox: Option<PathBuf>,
    /// The actions runner: actions-runner-linux-<arch>-<version>.tar.gz.
    #[arg(long, value_name = "ACTIONS_RUNNER_TGZ", requires = "busybox")]
    pub runner_tarball: Option<PathBuf>,
    /// An OCI image with the runner (local, or pulled with buildah) to boot from a
    /// root disk instead of an initramfs userland. Needs buildah and mkfs.ext4.
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["busybox", "runner_tarball"])]
    pub oci: Option<String>,
    /// Output directory (created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Static entrypoint: the initramfs's /init (with --oci: stage 1 only; the
    /// image's own entrypoint runs after it). Default: the `entrypoint` beside this
    /// executable.
    #[arg(long, value_name = "PATH")]
    pub entrypoint: Option<PathBuf>,
}

/// `orchestrator image prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Also remove every other image and working container in buildah's storage.
    #[arg(long)]
    pub all: bool,
}

/// A size with an optional K/M/G/T suffix (powers of 1024), e.g. `16G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M, 16G, 0)"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes != 0 && bytes < 16 << 20 {
        return Err(format!(
            "{s:?} is too small for a file system (at least 16M, or 0 for none)"
        ));
    }
    Ok(bytes)
}

/// Verbosity from `-v` count plus a numeric environment variable.
pub fn verbosity(count: u8, var: &str) -> u8 {
    let env = std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .unwrap_or(0);
    count.saturating_add(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        RunnerCli::command().debug_assert();
        OrchestratorCli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16G").unwrap(), 16 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(parse_size("1K").unwrap_err().contains("too small"));
        assert!(parse_size("2X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("1.5G").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn runtime_parsing() {
        assert_eq!(parse_runtime("").unwrap(), RuntimeChoice(None));
        assert_eq!(
            parse_runtime("krunvm").unwrap(),
            RuntimeChoice(Some(Runtime::Krunvm))
        );
        assert!(parse_runtime("docker")
            .unwrap_err()
            .contains("krunvm, podman or qemu"));
    }
}
