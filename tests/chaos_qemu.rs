//! The chaos suite with real QEMU guests (issue 13): one `-R qemu` loop under TCG
//! per scenario, one fault, and the same table row as `chaos` (no job lost or run
//! twice, no registration, QEMU process, VM state directory, scratch disk or
//! environment root left, the exit status, the error line, the time to recover).
//!
//! CI: the set below (`chaos_qemu::chaos_qemu_suite`); `GHRM_CHAOS_QEMU_ONLY=NAME`
//! runs one of them, `GHRM_CHAOS_SEED` changes the random points.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::chaos::{
    header, kill, last_error, mix, ours, print_row, wait, wait_exit, Rng, Row, GONE_CHECK, PREFIX,
    RUNNER_TIMEOUT,
};
use crate::common::{qemu_bundle, World, REPO};
use crate::qemu::{ghrm_qemu_state, qemu_args};
use ghrm::localforge::{Conclusion, JobStatus, LOST_RUNNER};

/// One fault on a QEMU loop.
#[derive(Debug, Clone, Copy, PartialEq)]
enum QFault {
    /// The QEMU process SIGKILLed while its job runs.
    BusyKill,
    /// The QEMU process SIGSTOPped while its runner waits for a job.
    IdleStop,
    /// The job floods the guest's serial console (as root).
    BusyFlood,
    /// The console file grows past the bound while the runner waits (no guest
    /// code runs while idle: the host appends, as a guest's kernel printing would).
    IdleFlood,
    /// The bundle (`-i`) deleted while a VM waits; put back later.
    BundleGone,
    /// The QEMU executable the loop found on PATH deleted while a VM waits; put
    /// back later.
    QemuGone,
    /// `--start snapshot --warm`: the next VM's QEMU (restored, paused, waiting for
    /// its hand-over) SIGKILLed while the current job runs.
    WarmKill,
}

const SET: &[QFault] = &[
    QFault::BusyKill,
    QFault::IdleStop,
    QFault::BusyFlood,
    QFault::IdleFlood,
    QFault::BundleGone,
    QFault::QemuGone,
    QFault::WarmKill,
];

fn name(f: QFault) -> &'static str {
    match f {
        QFault::BusyKill => "qemu:busy/vmkill",
        QFault::IdleStop => "qemu:idle/vmstop",
        QFault::BusyFlood => "qemu:busy/consoleflood",
        QFault::IdleFlood => "qemu:idle/consoleflood",
        QFault::BundleGone => "qemu:idle/bundlegone",
        QFault::QemuGone => "qemu:idle/qemugone",
        QFault::WarmKill => "qemu:busy/warmkill",
    }
}

/// The running QEMU processes of this world.
fn qemu_pids(w: &World) -> Vec<i32> {
    w.tagged()
        .into_iter()
        .filter(|(_, c)| {
            c.split(' ')
                .next()
                .is_some_and(|a| a.ends_with("qemu-system-x86_64"))
        })
        .map(|(p, _)| p)
        .collect()
}

/// A bundle of our own: links to the test bundle's files in `dir`.
fn link_bundle(dir: &Path) {
    let b = qemu_bundle();
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(&b).unwrap().flatten() {
        std::os::unix::fs::symlink(e.path(), dir.join(e.file_name())).unwrap();
    }
}

/// Files under `dir`, recursively (scratch disks left).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

const FLOOD: &str =
    "printf '\\033]0;owned\\007' > /dev/ttyS0; yes 0123456789abcdefghijklmnopqrstuvwxyz > /dev/ttyS0";

fn run(f: QFault, seed: u64) -> Row {
    let mut rng = Rng(seed);
    let w = World::new();
    w.forge.set_runner_timeout(RUNNER_TIMEOUT);
    let scratch = w.dir.path().join("scratch");
    {
        let mut env = w.env.lock().unwrap();
        env.push((
            "GHRM_GONE_CHECK_SECONDS".into(),
            GONE_CHECK.as_secs().to_string(),
        ));
        env.push(("GHRM_SCRATCH_DIR".into(), scratch.display().to_string()));
    }
    let bundle = w.dir.path().join("bundle");
    link_bundle(&bundle);
    // QEMU as the loop finds it: a link first on PATH, which the fault removes.
    let qbin = w.dir.path().join("qbin");
    std::fs::create_dir_all(&qbin).unwrap();
    let real = which::which("qemu-system-x86_64").expect("qemu-system-x86_64 on PATH");
    let link = qbin.join("qemu-system-x86_64");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    w.env.lock().unwrap().push((
        "PATH".into(),
        format!(
            "{}:{}/tests/fixtures/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            qbin.display(),
            env!("CARGO_MANIFEST_DIR")
        ),
    ));
    let mut extra = vec!["-u", "root", "--start", "cold", "--grace", "15"];
    if f == QFault::WarmKill {
        extra = vec![
            "-u", "root", "--start", "snapshot", "--warm", "--grace", "15",
        ];
    }
    if matches!(f, QFault::BusyFlood | QFault::IdleFlood) {
        extra.extend(["--console-limit", "1M"]);
    }
    let mut args = qemu_args(&w, &extra);
    let i = args.iter().position(|a| a == "-i").unwrap();
    args[i + 1] = bundle.display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let orch = ["-n", "1", "-R", "qemu", "-p", PREFIX, "--reconcile", "1"];
    let mut problems = vec![];
    let mut jobs = vec![];
    match f {
        QFault::BusyKill => jobs.push(w.forge.queue_job(REPO, &[], "sleep 60; echo chaos-ok")),
        QFault::BusyFlood => jobs.push(w.forge.queue_job(REPO, &[], FLOOD)),
        QFault::WarmKill => jobs.push(w.forge.queue_job(REPO, &[], "sleep 15; echo chaos-ok")),
        _ => {}
    }
    let mut p = w.orchestrator(&orch, &args);
    let t0 = Instant::now();
    let mut fault_at = Instant::now();
    let boot = Duration::from_secs(150);
    let step = (|| -> Result<(), String> {
        match f {
            QFault::BusyKill | QFault::BusyFlood => {
                wait("a busy runner", boot, || ours(&w).iter().any(|r| r.busy))?
            }
            QFault::WarmKill => wait("a busy runner and a warm VM", boot, || {
                ours(&w).iter().any(|r| r.busy)
                    && std::fs::read_to_string(&p.log)
                        .unwrap_or_default()
                        .contains(" is warm: ")
            })?,
            _ => wait("an idle runner online", boot, || {
                ours(&w).iter().any(|r| r.status == "online")
            })?,
        }
        std::thread::sleep(rng.millis(1000));
        fault_at = Instant::now();
        match f {
            QFault::BusyKill | QFault::IdleStop => {
                // Seen online by the loop's own check before it freezes.
                std::thread::sleep(GONE_CHECK * 2);
                let pids = qemu_pids(&w);
                if pids.len() != 1 {
                    return Err(format!("QEMU processes: {pids:?}"));
                }
                let sig = if f == QFault::BusyKill {
                    Signal::SIGKILL
                } else {
                    Signal::SIGSTOP
                };
                kill(pids[0], sig);
            }
            QFault::BusyFlood => {}
            QFault::WarmKill => {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let vm = log
                    .lines()
                    .filter(|l| l.contains(" is warm: "))
                    .find_map(|l| l.split("VM ").nth(1)?.split(" is warm: ").next())
                    .ok_or("no warm VM in the log")?
                    .to_string();
                let pid = w
                    .tagged()
                    .into_iter()
                    .find(|(_, c)| c.contains("qemu-system-x86_64") && c.contains(&vm))
                    .map(|(p, _)| p)
                    .ok_or_else(|| format!("no QEMU process of the warm VM {vm}"))?;
                kill(pid, Signal::SIGKILL);
            }
            QFault::IdleFlood => {
                use std::io::Write;
                let state = ghrm_qemu_state(&w);
                let vm = state.first().ok_or("no VM state directory")?;
                let console = std::fs::read_dir(w.tmp())
                    .map_err(|e| e.to_string())?
                    .flatten()
                    .map(|e| e.path().join(vm).join("console.log"))
                    .find(|p| p.is_file())
                    .ok_or("no console.log")?;
                let mut c = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&console)
                    .map_err(|e| e.to_string())?;
                let line = [b'x'; 1023];
                for _ in 0..2048 {
                    c.write_all(&line)
                        .and_then(|_| c.write_all(b"\n"))
                        .map_err(|e| e.to_string())?;
                }
                // Ended before a job can come to it (the console is measured every 2 s).
                let killed = || {
                    std::fs::read_to_string(&p.log)
                        .unwrap_or_default()
                        .contains("--console-limit")
                };
                wait("the idle flood stopped", Duration::from_secs(10), killed)?;
            }
            QFault::BundleGone | QFault::QemuGone => {
                if f == QFault::BundleGone {
                    std::fs::remove_dir_all(&bundle).map_err(|e| e.to_string())?;
                } else {
                    std::fs::remove_file(&link).map_err(|e| e.to_string())?;
                }
                // The waiting VM still takes a job; the next one cannot start.
                jobs.push(w.forge.queue_job(REPO, &[], "echo chaos-ok"));
                let said = || {
                    std::fs::read_to_string(&p.log)
                        .unwrap_or_default()
                        .contains("is gone from this host")
                };
                wait("the loss said", Duration::from_secs(60), said)?;
                // A while gone: no runner minted meanwhile, said once.
                std::thread::sleep(Duration::from_secs(3));
                if !ours(&w).is_empty() {
                    return Err(format!("registered while gone: {:?}", ours(&w)));
                }
                if f == QFault::BundleGone {
                    link_bundle(&bundle);
                } else {
                    std::os::unix::fs::symlink(&real, &link).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = step {
        problems.push(e);
    }
    // One more job after the fault: the loop goes on with a fresh VM.
    let after = w.forge.queue_job(REPO, &[], "echo chaos-ok");
    jobs.push(after);
    let mut recover = Duration::ZERO;
    let done = || {
        w.forge
            .jobs()
            .iter()
            .all(|j| j.status == JobStatus::Completed)
    };
    match wait("every job completed", Duration::from_secs(150), done) {
        Ok(()) => recover = fault_at.elapsed(),
        Err(e) => problems.push(e),
    }
    p.signal(Signal::SIGTERM);
    let exit = match wait_exit(&mut p, Duration::from_secs(90)) {
        Some(st) => st.code().map_or_else(|| format!("{st}"), |c| c.to_string()),
        None => {
            problems.push("the orchestrator did not exit within 90 s of SIGTERM".into());
            "hung".into()
        }
    };
    if exit != "0" {
        problems.push(format!("exit {exit}"));
    }
    let log = std::fs::read_to_string(&p.log).unwrap_or_default();
    let error = last_error(&log);
    let all = w.forge.jobs();
    let (mut ok, mut failed) = (0, 0);
    for j in &all {
        match (j.status, j.claims, j.exit_code) {
            (JobStatus::Completed, 1, Some(0)) if j.output.contains("chaos-ok") => ok += 1,
            (JobStatus::Completed, 1, _) => failed += 1,
            _ => problems.push(format!(
                "job {} {:?} claimed {} times (exit {:?})",
                j.id, j.status, j.claims, j.exit_code
            )),
        }
    }
    // What must have happened, said once.
    let (expect, first_failed): (&str, bool) = match f {
        QFault::BusyKill => ("", true),
        QFault::IdleStop => ("is offline at GitHub but its VM still runs", false),
        QFault::BusyFlood | QFault::IdleFlood => (
            "printed more than --console-limit 1048576 bytes on its console: killing it",
            f == QFault::BusyFlood,
        ),
        QFault::BundleGone => ("the bundle -i ", false),
        QFault::QemuGone => ("QEMU (", false),
        QFault::WarmKill => ("(warm): the hand-over failed", false),
    };
    if !expect.is_empty() {
        let n = log
            .lines()
            .filter(|l| {
                l.contains(expect)
                    && (!matches!(f, QFault::BundleGone | QFault::QemuGone)
                        || l.contains("is gone from this host"))
            })
            .count();
        if n != 1 {
            problems.push(format!("said {n} times, not once: {expect}"));
        }
    }
    if matches!(f, QFault::BundleGone | QFault::QemuGone) {
        let l = log
            .lines()
            .find(|l| l.contains("is gone from this host"))
            .unwrap_or_default();
        let names = match f {
            QFault::BundleGone => l.contains(&bundle.display().to_string()),
            _ => l.contains(&link.display().to_string()) && l.contains("install QEMU"),
        };
        println!("  {}: {l}", name(f));
        if !names || !log.contains("is back: the loop goes on") {
            problems.push(format!(
                "the error does not name it and the fix, or no recovery: {l}"
            ));
        }
    }
    if first_failed {
        match all.iter().find(|j| Some(&j.id) == jobs.first()) {
            Some(j)
                if j.conclusion == Some(Conclusion::Failure) && j.output.contains(LOST_RUNNER) => {}
            j => problems.push(format!(
                "the job hit mid-run was not failed for its lost runner: {j:?}"
            )),
        }
    }
    let regs = ours(&w);
    if !regs.is_empty() {
        problems.push(format!("registrations left: {regs:?}"));
    }
    let procs = w.wait_no_processes(Duration::from_secs(10));
    let state = ghrm_qemu_state(&w);
    let disks = files_under(&scratch);
    let roots = w.env_roots();
    if !state.is_empty() || !disks.is_empty() || !roots.is_empty() || !procs.is_empty() {
        problems.push(format!(
            "left: VM state {state:?}, scratch disks {disks:?}, roots {roots:?}, processes {procs:?}"
        ));
    }
    if !problems.is_empty() {
        eprintln!(
            "----- {} (seed {seed}, {:.0}s) -----\n{log}",
            name(f),
            t0.elapsed().as_secs_f64()
        );
    }
    Row {
        name: name(f).into(),
        seed,
        jobs: format!("{}/{ok}/{failed}", all.len()),
        registrations: regs.len(),
        vms: state.len() + disks.len(),
        roots: roots.len(),
        procs: procs.len(),
        exit,
        error,
        recover,
        problems,
    }
}

/// Every QEMU scenario (or `GHRM_CHAOS_QEMU_ONLY`), one table row each.
#[test]
fn chaos_qemu_suite() {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let base: u64 =
        var("GHRM_CHAOS_SEED").map_or(13, |s| s.parse().expect("GHRM_CHAOS_SEED: a number"));
    let plan: Vec<QFault> = match var("GHRM_CHAOS_QEMU_ONLY") {
        Some(only) => vec![*SET
            .iter()
            .find(|f| name(**f) == only)
            .unwrap_or_else(|| panic!("GHRM_CHAOS_QEMU_ONLY: no scenario {only}"))],
        None => SET.to_vec(),
    };
    println!("chaos (QEMU): base seed {base}, {} scenarios", plan.len());
    header();
    let t0 = Instant::now();
    let mut failed = vec![];
    for f in plan {
        let i = SET.iter().position(|x| *x == f).unwrap_or(0);
        let seed = mix(base, i as u64);
        let t = Instant::now();
        let row = run(f, seed);
        print_row(&row);
        println!("  ({:.0}s)", t.elapsed().as_secs_f64());
        if !row.problems.is_empty() {
            failed.push(format!(
                "{} (replay: GHRM_CHAOS_QEMU_ONLY={} GHRM_CHAOS_SEED={base} cargo test --test integration chaos_qemu): {}",
                row.name,
                row.name,
                row.problems.join("; ")
            ));
        }
    }
    println!("chaos (QEMU): {:.0}s in all", t0.elapsed().as_secs_f64());
    assert!(
        failed.is_empty(),
        "chaos scenarios failed:\n{}",
        failed.join("\n")
    );
}
