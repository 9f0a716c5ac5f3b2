//! `orchestrator demo`: the whole product on this host with no GitHub account.
//! The embedded local forge plays GitHub (queue of K jobs), a demo bundle (Debian
//! kernel + busybox-static + the fake actions runner) boots in QEMU microVMs, N
//! loops run the jobs; live progress, then a per-phase timing table.
//! This file runs the demo; the bundle and the measurements have their rooms.

mod bundle;
mod report;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::hosttool;
use crate::localforge::{JobStatus, LocalForge};
use crate::types::paths::cache_dir;
use bundle::demo_bundle;
use report::{log_values, rss_by_program, stats};

const PAT: &str = "demo-pat-not-a-secret";
const REPO: &str = "demo/hello";
const GUEST_FORGE: &str = "10.0.2.100:80";

/// Demo failures.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A prerequisite is missing.
    #[error("{0}")]
    Missing(String),
    /// The run did not complete.
    #[error("{0}")]
    Failed(String),
    /// I/O.
    #[error("cannot {0}")]
    Io(String, #[source] std::io::Error),
    /// The demo bundle cannot be made or used; the cause follows.
    #[error("cannot make or use the demo bundle")]
    Bundle(#[source] crate::image::ImageError),
}

/// What `orchestrator demo` is asked to do (from its command line).
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Jobs to queue.
    pub jobs: u32,
    /// QEMU accelerator.
    pub accel: crate::backend::qemu::Accel,
    /// How VMs start.
    pub start: crate::backend::qemu::StartMode,
    /// `--warm` for every loop.
    pub warm: bool,
    /// Guest memory in MiB.
    pub memory: u32,
    /// Kernel to use instead of fetching Debian's (with `modules`).
    pub kernel: Option<PathBuf>,
    /// `/lib/modules/<version>` of `kernel`.
    pub modules: Option<PathBuf>,
    /// Static busybox to use instead of busybox-static's.
    pub busybox: Option<PathBuf>,
    /// A bundle to boot instead of building the busybox one.
    pub bundle: Option<PathBuf>,
    /// Also print the table as one JSON line.
    pub json: bool,
}

/// Run the demo with `n` loops.
pub fn run(args: DemoConfig, n: u32) -> Result<(), DemoError> {
    let tty = std::io::stderr().is_terminal();
    let bundle = match &args.bundle {
        Some(b) => {
            crate::image::BundleInfo::load(b).map_err(DemoError::Bundle)?;
            b.clone()
        }
        None => demo_bundle(&args)?,
    };
    let forge = LocalForge::start(0, &[PAT])
        .map_err(|e| DemoError::Io("start the local forge".into(), e))?;
    forge.set_runner_url(&format!("http://{GUEST_FORGE}"));
    for i in 1..=args.jobs {
        forge.queue_job(
            REPO,
            &["microvm"],
            &format!("echo \"job {i}: hello from $(uname -r), entrypoint pid $(awk '{{print $4}}' /proc/$PPID/stat), user $(id -un)\"; sleep 1"),
        );
    }
    let log_path = cache_dir().join("demo/last-run.log");
    let _ = std::fs::create_dir_all(cache_dir().join("demo"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| DemoError::Io(format!("create {}", log_path.display()), e))?;
    let me =
        std::env::current_exe().map_err(|e| DemoError::Io("find this executable".into(), e))?;
    let port = forge.addr().port();
    let accel = match args.accel {
        crate::backend::qemu::Accel::Auto => "auto",
        crate::backend::qemu::Accel::Kvm => "kvm",
        crate::backend::qemu::Accel::Tcg => "tcg",
    };
    let mut cmd = Command::new(me);
    cmd.args(["-n", &n.to_string(), "-R", "qemu", "-p", "GH-demo", "--"])
        .args([
            "-g",
            &forge.url(),
            "-p",
            REPO,
            "-i",
            &bundle.display().to_string(),
            "--accel",
            accel,
            "--start",
            match args.start {
                crate::backend::qemu::StartMode::Auto => "auto",
                crate::backend::qemu::StartMode::Cold => "cold",
                crate::backend::qemu::StartMode::Snapshot => "snapshot",
            },
        ])
        .args([
            "--net",
            "restricted",
            "--net-forward",
            &format!("{GUEST_FORGE}=127.0.0.1:{port}"),
        ])
        .args(["-m", &args.memory.to_string(), "-c", "1", "--grace", "30"])
        // The local forge has no GitHub cap on registrations: the default budget
        // (30 a minute, per prefix and host, across runs) would pace the demo's
        // loops (and scripts/bench.sh's back-to-back runs), not its VMs.
        .args(["--registrations", "600/60"])
        .args(args.warm.then_some("--warm"))
        .env("RUNNER_PAT", PAT)
        // The table reads boot_ms= and turnaround_ms= from text lines.
        .env("ORCHESTRATOR_LOG_FORMAT", "text")
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| DemoError::Io("open the log".into(), e))?,
        )
        .stderr(log);
    // If the demo is killed, its orchestrator drains and cleans up rather than run on.
    hosttool::tie(
        &mut cmd,
        hosttool::Tie {
            own_group: false,
            death: libc::SIGTERM,
        },
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| DemoError::Io("start the orchestrator".into(), e))?;
    let pid = child.id();
    eprintln!(
        "demo: {n} loop(s), {} job(s), QEMU bundle {}; log in {}",
        args.jobs,
        bundle.display(),
        log_path.display()
    );
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(180 + 120 * u64::from(args.jobs));
    let mut rss: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_line = String::new();
    let mut last_print = Instant::now() - Duration::from_secs(60);
    let done = loop {
        for (k, v) in rss_by_program(pid) {
            let e = rss.entry(k).or_insert(0);
            *e = (*e).max(v);
        }
        let jobs = forge.jobs();
        let runners = forge.runners();
        let count = |s: JobStatus| jobs.iter().filter(|j| j.status == s).count();
        let (queued, running, completed) = (
            count(JobStatus::Queued),
            count(JobStatus::InProgress),
            count(JobStatus::Completed),
        );
        let booting = runners.iter().filter(|r| r.status == "offline").count();
        let idle = runners
            .iter()
            .filter(|r| r.status == "online" && !r.busy)
            .count();
        let line = format!(
            "[{:>5.1}s] loops {n} | VMs booting {booting}, idle {idle}, busy {} | jobs queued {queued}, running {running}, done {completed}/{}",
            t0.elapsed().as_secs_f64(),
            runners.iter().filter(|r| r.busy).count(),
            args.jobs
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if line.get(9..) != last_line.get(9..)
            || last_print.elapsed() > Duration::from_secs(10)
        {
            eprintln!("{line}");
            last_print = Instant::now();
        }
        last_line = line;
        if completed == args.jobs as usize {
            break true;
        }
        if let Ok(Some(st)) = child.try_wait() {
            if tty {
                eprintln!();
            }
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(DemoError::Failed(format!(
                "the orchestrator ended early ({st}); its log ends with:\n{}",
                tail.join("\n")
            )));
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if tty {
        eprintln!();
    }
    let elapsed = t0.elapsed();
    // Stop the loops: idle runners are deregistered and their guests stopped at once.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let st = child
        .wait()
        .map_err(|e| DemoError::Io("wait for the orchestrator".into(), e))?;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !done {
        return Err(DemoError::Failed(format!(
            "not all {} jobs ran within the time limit; see {}",
            args.jobs,
            log_path.display()
        )));
    }
    for j in forge.jobs() {
        let out = crate::types::text::printable(j.output.lines().next().unwrap_or(""));
        eprintln!(
            "  {out}{}",
            if j.exit_code == Some(0) {
                ""
            } else {
                "  (FAILED)"
            }
        );
    }
    let timings = forge.job_timings();
    let rows = [
        (
            "VM start → runner up (.tkn)",
            stats(log_values(&log, "boot_ms")),
        ),
        (
            "job (claimed → reported)",
            stats(timings.iter().map(|t| t.1).collect()),
        ),
        (
            "host: VM exit → next VM start",
            stats(log_values(&log, "turnaround_ms")),
        ),
    ];
    println!(
        "\n{:<32} {:>5} {:>9} {:>9} {:>9}",
        "phase", "n", "median s", "p90 s", "max s"
    );
    for (name, s) in &rows {
        match s {
            Some((c, m, p, x)) => println!("{name:<32} {c:>5} {m:>9.3} {p:>9.3} {x:>9.3}"),
            None => println!("{name:<32} {:>5}", 0),
        }
    }
    let per_min = f64::from(args.jobs) / elapsed.as_secs_f64() * 60.0;
    println!(
        "{:<32} {:>5} {per_min:>9.2}  (wall {:.1}s)",
        "jobs per minute",
        n,
        elapsed.as_secs_f64()
    );
    let rss_of = |name: &str| {
        rss.iter()
            .filter(|(k, _)| k.starts_with(name))
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0)
    };
    println!(
        "peak RSS: orchestrator {} KiB, runner loop {} KiB, QEMU {} KiB",
        rss_of("orchestrator"),
        rss_of("runner"),
        rss_of("qemu-system")
    );
    if args.json {
        let j = serde_json::json!({
            "loops": n, "jobs": args.jobs, "wall_s": elapsed.as_secs_f64(), "jobs_per_min": per_min,
            "boot_s": rows[0].1.map(|s| [s.1, s.2, s.3]), "job_s": rows[1].1.map(|s| [s.1, s.2, s.3]),
            "turnaround_s": rows[2].1.map(|s| [s.1, s.2, s.3]),
            "rss_kib": {"orchestrator": rss_of("orchestrator"), "runner": rss_of("runner"), "qemu": rss_of("qemu-system")},
        });
        println!("{j}");
    }
    let failed = forge
        .jobs()
        .iter()
        .filter(|j| j.exit_code != Some(0))
        .count();
    if failed > 0 || !st.success() {
        return Err(DemoError::Failed(format!(
            "{failed} job(s) failed; orchestrator {st}; see {}",
            log_path.display()
        )));
    }
    Ok(())
}
