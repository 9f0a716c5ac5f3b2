//! `runner`'s command line: the clap definition of one loop's options (also
//! parsed by the orchestrator for the arguments after `--`). No validation here.

use std::path::PathBuf;

use clap::{Args, Parser};

use super::{parse_runtime, parse_size, RuntimeChoice};
use crate::forge::ScopeKind;

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
    /// Log lines as text, or as one JSON object per line (timestamp, level, who,
    /// message and fields such as boot_ms, turnaround_ms, vm, runner).
    #[arg(
        long = "log-format",
        env = "RUNNER_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text",
        value_enum
    )]
    pub log_format: crate::logging::LogFormat,
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
    pub secret: Option<crate::types::secret::Secret>,
    /// GitHub PAT; never enters a VM. Prefer RUNNER_PAT in the environment.
    #[arg(
        short = 'T',
        long = "pat",
        alias = "token",
        env = "RUNNER_PAT",
        hide_env_values = true
    )]
    pub pat: Option<crate::types::secret::Secret>,
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
    // Its key may also come from a systemd credential (credentials.rs): no `requires`.
    #[arg(long = "app-id", env = "RUNNER_APP_ID")]
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
    /// Use a registration token and config.sh instead of a JIT config, for forges
    /// without JIT. Weaker: every guest gets a token that registers runners at the
    /// whole scope for an hour; needs --accept-scope-token.
    #[arg(long = "no-jit", env = "RUNNER_NO_JIT")]
    pub no_jit: bool,
    /// With --no-jit: accept that each guest (and so each job) holds a registration
    /// token valid for the whole scope (-s/-p) for an hour.
    #[arg(long = "accept-scope-token", env = "RUNNER_ACCEPT_SCOPE_TOKEN")]
    pub accept_scope_token: bool,
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
    /// Seconds a VM may live at all, job included; then it is killed (a host-side
    /// bound: a job cannot keep its VM, and its network, past it).
    #[arg(long = "vm-lifetime", env = "RUNNER_VM_LIFETIME", default_value_t = 86400, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub vm_lifetime: u64,
    /// QEMU: bytes a VM's console may grow to (e.g. 64M); a guest that prints
    /// more is killed, so it cannot fill the host's disk.
    #[arg(long = "console-limit", env = "RUNNER_CONSOLE_LIMIT", value_name = "SIZE", default_value = "64M", value_parser = super::parse_limit)]
    pub console_limit: u64,
    /// QEMU: keep the consoles of this loop's last K VMs after they end (the last
    /// 1 MiB of each, in ~/.local/state/gh-runner-microvm/consoles/PREFIX/, shown by
    /// `orchestrator logs`); 0 keeps none. Other backends have no console to keep.
    #[arg(
        long = "keep-consoles",
        env = "RUNNER_KEEP_CONSOLES",
        value_name = "K",
        default_value_t = 3
    )]
    pub keep_consoles: u32,
    /// QEMU: accelerator; auto uses KVM only when a probe guest really boots with it.
    #[arg(
        long = "accel",
        env = "RUNNER_ACCEL",
        default_value = "auto",
        value_enum
    )]
    pub accel: crate::backend::qemu::Accel,
    /// QEMU: how VMs start. snapshot: restored from a memory-snapshot template
    /// (one cold boot per bundle and VM shape makes it, kept in
    /// ~/.cache/gh-runner-microvm/templates/; ~100 MB each) in a fraction of a cold
    /// boot; cold: every VM boots its kernel; auto: snapshot where it works, else
    /// cold with one warning.
    #[arg(
        long = "start",
        env = "RUNNER_START",
        default_value = "auto",
        value_enum
    )]
    pub start: crate::backend::qemu::StartMode,
    /// QEMU: while a job runs, start the next VM (restored, or booted cold) up to
    /// where it waits for its configuration, registering nothing; when the job's VM
    /// exits, its runner is up in the time of one mint and the hand-over. Costs one
    /// more idle VM of memory (-m) per loop (and a scratch disk, for --oci bundles).
    #[arg(long = "warm", env = "RUNNER_WARM")]
    pub warm: bool,
    /// QEMU: the guest's network. internet: the internet and nothing of this host
    /// (not its loopback, its addresses, its LAN or metadata services; needs
    /// slirp4netns and nftables); restricted: only --net-forward targets; user:
    /// plain QEMU user networking, which gives jobs this host's loopback (unsafe).
    #[arg(
        long = "net",
        env = "RUNNER_NET",
        default_value = "internet",
        value_enum
    )]
    pub net: crate::backend::qemu::NetMode,
    /// QEMU, --net internet: also let jobs reach this private or link-local range,
    /// repeatable, e.g. 192.168.10.0/24 for a LAN cache (RUNNER_NET_ALLOW:
    /// newline-separated). The host's own addresses stay closed: use --net-forward.
    #[arg(
        long = "net-allow",
        env = "RUNNER_NET_ALLOW",
        value_delimiter = '\n',
        value_name = "CIDR"
    )]
    pub net_allow: Vec<String>,
    /// QEMU: carry guest connections to GUEST_IP:PORT to HOST_IP:PORT (on this
    /// host's side, in every --net mode), repeatable (RUNNER_NET_FORWARD:
    /// newline-separated).
    #[arg(
        long = "net-forward",
        env = "RUNNER_NET_FORWARD",
        value_delimiter = '\n',
        value_name = "GUEST_IP:PORT=HOST_IP:PORT"
    )]
    pub net_forward: Vec<String>,
    /// QEMU: kernel to boot instead of the bundle's: a bzImage (vmlinuz), or an
    /// uncompressed vmlinux with a PVH entry note (booted faster).
    #[arg(long = "kernel", env = "RUNNER_KERNEL", value_name = "VMLINUZ")]
    pub kernel: Option<PathBuf>,
    /// QEMU, root-disk bundles (`image bundle --oci`): size of each VM's scratch
    /// disk for the job's files (the runner's _work), e.g. 512M, 20G; sparse, made
    /// fresh per VM and deleted with it. 0: none (the job writes into the image's
    /// overlay, which has little free space).
    #[arg(long = "scratch-size", env = "RUNNER_SCRATCH_SIZE", value_name = "SIZE", default_value = "16G", value_parser = parse_size)]
    pub scratch_size: u64,
}
