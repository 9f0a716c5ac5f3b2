//! `orchestrator`'s command line and its subcommands (`demo`, `image bundle`,
//! `image prune`): clap definitions only; `config` turns them into requests.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::{parse_runtime, RuntimeChoice};

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
    /// Log lines as text, or as one JSON object per line (timestamp, level, who,
    /// message and fields such as boot_ms, turnaround_ms, vm, runner); passed on to
    /// the loops.
    #[arg(
        long = "log-format",
        env = "ORCHESTRATOR_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text",
        value_enum,
        global = true
    )]
    pub log_format: crate::logging::LogFormat,
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
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 127.0.0.1:9464; README
    /// "Metrics" lists them). Default: off.
    #[arg(long = "metrics", env = "ORCHESTRATOR_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
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
    Demo(DemoArgs),
    /// Guest images: build QEMU bundles.
    #[command(subcommand)]
    Image(ImageCommand),
    /// What a running orchestrator's loops are doing: state, VM, since when, counts,
    /// last error, and totals (asked on its control socket; same user, same TMPDIR).
    Status(StatusArgs),
    /// Stop taking jobs: idle runners are deregistered and stopped at once, busy
    /// ones finish their job (within the loops' --grace), then the orchestrator
    /// exits 0. The same as SIGTERM, asked from another terminal or a deploy script.
    Drain(DrainArgs),
    /// Print a loop's current or last VM console (QEMU only), with control
    /// sequences made visible; with -f, follow it until that VM ends.
    #[command(after_help = LOGS_AFTER)]
    Logs(LogsArgs),
    /// Check this host, the loops' configuration and their GitHub credential.
    ///
    /// Runtime and tools, KVM (a real boot), QEMU's microvm, the bundle and its
    /// kernel's boot, the guest network, free space, `ulimit -n`, the clock against
    /// GitHub's, and what the credential may do. One line per check (✔ ok,
    /// ! warning, ✖ failure with its fix); exit 0 when every required check passes,
    /// 1 otherwise, 2 for usage errors.
    #[command(after_help = DOCTOR_AFTER)]
    Doctor(DoctorArgs),
}

/// `-p/--prefix` of the subcommands that find a running orchestrator's things.
#[derive(Debug, Args)]
pub struct PrefixArg {
    /// The orchestrator's prefix (its -p).
    #[arg(
        short = 'p',
        long = "prefix",
        env = "ORCHESTRATOR_PREFIX",
        default_value = "GH-runner"
    )]
    pub prefix: String,
}

/// `orchestrator status`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 answered; 1 no orchestrator with this prefix runs here (as this user,\nwith this TMPDIR). The JSON document is described in README (\"status\")."
)]
pub struct StatusArgs {
    #[command(flatten)]
    pub of: PrefixArg,
    /// Print the JSON document (stable, versioned) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `orchestrator drain`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 drained and ended with exit 0 (with --no-wait: draining has begun); 1 no\norchestrator with this prefix runs here, it could not be asked, or it ended otherwise (its exit\nstatus is said, or that it was killed)."
)]
pub struct DrainArgs {
    #[command(flatten)]
    pub of: PrefixArg,
    /// Return once draining has begun instead of when the orchestrator has ended.
    #[arg(long)]
    pub no_wait: bool,
}

const LOGS_AFTER: &str = "\
Without LOOP or VM: every loop's current or last console, each under a
==> loop N: VM (running|ended) <== line. A running VM's console is read from
QEMU's state directory ($TMPDIR/gh-runner-microvm-qemu.UID/VM/console.log); an
ended one from the kept consoles (runner --keep-consoles K, default 3, the last
1 MiB of each) in ${XDG_STATE_HOME:-~/.local/state}/gh-runner-microvm/consoles/PREFIX/.
krunvm and podman VMs have no console to show.

Exit status: 0 printed (with -f: the VM ended); 1 nothing to show for that
prefix, loop or VM; 2 invalid usage (-f without LOOP or VM while several loops
have a console).";

/// `orchestrator logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub of: PrefixArg,
    /// Follow the console as the guest writes it, until its VM ends.
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,
    /// A loop number (3) or a VM name (GH-runner-3-abc12345).
    #[arg(value_name = "LOOP | VM")]
    pub target: Option<String>,
}

const DOCTOR_AFTER: &str = "\
Give it the loops' own arguments after -- (the orchestrator's -n, and -R before
`doctor`, apply as they would to the loops):

  RUNNER_PAT=... orchestrator -n 4 doctor -- -p acme/widgets -R qemu -i ~/bundles/ubuntu

Without a credential GitHub is not contacted. Secrets are never printed.";

/// `orchestrator doctor` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// One JSON document on standard output instead of lines (README: its fields).
    #[arg(long)]
    pub json: bool,
    /// Do not boot the bundle's kernel (faster; KVM is still probed with a boot).
    #[arg(long)]
    pub no_boot: bool,
    /// The loops' arguments (see runner --help).
    #[arg(last = true, value_name = "RUNNER_ARGS")]
    pub runner_args: Vec<String>,
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
    /// Kernel image (vmlinuz, bzImage). Its uncompressed kernel goes into the
    /// bundle too when it can boot through PVH (xz, zstd, gzip or lz4 payload): VMs
    /// boot it, seconds faster without KVM.
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

/// `orchestrator demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Jobs to queue.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub jobs: u32,
    /// QEMU accelerator (auto: KVM when it really boots a guest, else TCG).
    #[arg(long, default_value = "auto", value_enum)]
    pub accel: crate::backend::qemu::Accel,
    /// How VMs start (the loops' --start): restored from a memory-snapshot
    /// template, cold, or auto (snapshot where it works).
    #[arg(long, default_value = "auto", value_enum)]
    pub start: crate::backend::qemu::StartMode,
    /// Start each loop's next VM while a job runs (the loops' --warm).
    #[arg(long)]
    pub warm: bool,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    pub memory: u32,
    /// Kernel to use instead of fetching Debian's (with --modules).
    #[arg(long, requires = "modules")]
    pub kernel: Option<PathBuf>,
    /// /lib/modules/<version> of --kernel.
    #[arg(long, requires = "kernel")]
    pub modules: Option<PathBuf>,
    /// Static busybox to use instead of busybox-static's.
    #[arg(long)]
    pub busybox: Option<PathBuf>,
    /// Boot this bundle instead of building the busybox one: e.g. a root-disk bundle
    /// (`image bundle --oci`) of an image with the fake actions runner, to compare.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "busybox"])]
    pub bundle: Option<PathBuf>,
    /// Also print the table as one JSON line (for scripts/bench.sh).
    #[arg(long)]
    pub json: bool,
}
