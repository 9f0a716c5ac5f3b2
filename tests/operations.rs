//! Operating a running orchestrator: `status` and `drain` on its control socket,
//! and `/metrics`, checked against what the forge sees.

use std::io::{Read, Write};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::{qemu_bundle, World, PRELUDE, REPO};
use ghrm::localforge::JobStatus;

/// `orchestrator ARGS` run to its end (status, drain).
fn orch(w: &World, args: &[&str]) -> Output {
    w.command("orchestrator").args(args).output().unwrap()
}

fn status_json(w: &World, prefix: &str) -> Option<serde_json::Value> {
    let out = orch(w, &["status", "-p", prefix, "--json"]);
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// `GET /metrics` at the address the orchestrator logged.
fn scrape(log: &str) -> String {
    let addr = log
        .lines()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in the log\n{log}"));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of the sample line `name` (exact, labels included), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn loops(st: &serde_json::Value) -> Vec<serde_json::Value> {
    st["loops"].as_array().cloned().unwrap_or_default()
}

fn in_state<'a>(ls: &'a [serde_json::Value], state: &str) -> Vec<&'a serde_json::Value> {
    ls.iter().filter(|l| l["state"] == state).collect()
}

/// `status` follows two loops through booting, idle and busy (the busy loop's VM
/// is the runner the forge gave the job to), `/metrics` agrees, and `drain` stops
/// the idle runner at once, lets the busy job finish, and ends the orchestrator
/// with exit 0 and nothing left; `status` of no orchestrator exits 1.
#[test]
fn status_follows_the_loops_and_drain_ends_them() {
    let w = World::new();
    let prefix = "ops-status";
    let none = orch(&w, &["status", "-p", prefix]);
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(
        err.contains("no orchestrator with prefix \"ops-status\""),
        "{err}"
    );

    let job = w
        .forge
        .queue_job(REPO, &[], &format!("{PRELUDE}sleep 6\necho busy-done"));
    // Stand-in VMs are up in a few tens of ms: slow the first mint so that a loop
    // is seen before its runner is up.
    w.forge.inject(
        "POST",
        "generate-jitconfig",
        1,
        ghrm::localforge::FaultKind::Delay(Duration::from_secs(1)),
    );
    let mut p = w.orchestrator(
        &[
            "-n",
            "2",
            "-R",
            "krunvm",
            "-p",
            prefix,
            "--metrics",
            "127.0.0.1:0",
        ],
        &["--grace", "60", "-u", "root"],
    );
    // While the first loop boots, the second waits (starts are staggered).
    let mut seen_booting = false;
    let mut st = serde_json::Value::Null;
    w.wait_for(
        "one busy loop and one idle one",
        Duration::from_secs(45),
        &p,
        || {
            let Some(s) = status_json(&w, prefix) else {
                return false;
            };
            let ls = loops(&s);
            seen_booting |=
                !in_state(&ls, "booting").is_empty() || !in_state(&ls, "registering").is_empty();
            st = s;
            in_state(&ls, "busy").len() == 1 && in_state(&ls, "idle").len() == 1
        },
    );
    assert!(
        seen_booting,
        "never saw a loop before its runner was up: {st}"
    );
    assert_eq!(st["version"], 1);
    assert_eq!(st["prefix"], prefix);
    assert_eq!(st["draining"], false);
    let ls = loops(&st);
    let busy_vm = in_state(&ls, "busy")[0]["vm"].as_str().unwrap().to_string();
    assert_eq!(in_state(&ls, "busy")[0]["runner"], busy_vm.as_str());
    let idle_vm = in_state(&ls, "idle")[0]["vm"].as_str().unwrap().to_string();
    let j = w.forge.jobs().into_iter().find(|j| j.id == job).unwrap();
    assert_eq!(j.runner_name.as_deref(), Some(busy_vm.as_str()), "{st}");
    let runners = w.forge.runners();
    assert!(
        runners.iter().any(|r| r.name == idle_vm && !r.busy),
        "{runners:?} {st}"
    );
    assert!(st["totals"]["boots"].as_u64().unwrap() >= 2, "{st}");
    assert!(
        st["totals"]["boot_median_seconds"].as_f64().unwrap() > 0.0,
        "{st}"
    );

    // The orchestrator's own -p before the subcommand names it too; two differing ones are refused.
    let top = orch(&w, &["-p", prefix, "status", "--json"]);
    assert!(top.status.success(), "{top:?}");
    let two = orch(&w, &["-p", prefix, "status", "-p", "other"]);
    assert_eq!(two.status.code(), Some(2), "{two:?}");
    let table = orch(&w, &["status", "-p", prefix]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{table:?}");
    assert!(text.contains("1 idle") && text.contains("1 busy"), "{text}");
    assert!(text.contains(&busy_vm) && text.contains("LOOP"), "{text}");

    let m = scrape(&p.log());
    assert_eq!(sample(&m, "ghrm_loops{state=\"busy\"}"), Some(1.0), "{m}");
    assert_eq!(sample(&m, "ghrm_loops{state=\"idle\"}"), Some(1.0), "{m}");
    assert!(
        sample(&m, "ghrm_registrations_total").unwrap() >= 2.0,
        "{m}"
    );
    assert!(
        sample(&m, "ghrm_vm_boot_seconds_count").unwrap() >= 2.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "ghrm_github_requests_total{route=\"create a JIT runner configuration\",code=\"201\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );

    let t0 = Instant::now();
    let drain = w.spawn("orchestrator", &["drain", "-p", prefix]);
    let mut drained = false;
    w.wait_for(
        "the loops to drain",
        Duration::from_secs(20),
        &p,
        || match status_json(&w, prefix) {
            Some(s) => {
                drained |= s["draining"] == true && in_state(&loops(&s), "draining").len() == 2;
                false
            }
            None => true,
        },
    );
    let mut drain = drain;
    let dst = drain.finish(Duration::from_secs(60));
    assert!(dst.success(), "{dst}\n{}", drain.log());
    assert!(
        drain.log().contains("drained and ended (exit 0)"),
        "drain did not learn the orchestrator's exit status\n{}",
        drain.log()
    );
    let ost = p.finish(Duration::from_secs(10));
    let log = p.log();
    assert!(ost.success(), "{ost}\n{log}");
    assert!(drained, "status never showed both loops draining\n{log}");
    assert!(
        t0.elapsed() < Duration::from_secs(40),
        "drain took {:?}\n{log}",
        t0.elapsed()
    );
    let j = w.forge.jobs().into_iter().find(|j| j.id == job).unwrap();
    assert_eq!(
        (j.status, j.exit_code),
        (JobStatus::Completed, Some(0)),
        "{}\n{log}",
        j.output
    );
    assert!(j.output.contains("busy-done"), "{}", j.output);
    assert!(log.contains("drain asked for"), "{log}");
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
    assert!(w.env_roots().is_empty() && w.vms().is_empty(), "{log}");
    assert!(w.wait_no_processes(Duration::from_secs(5)).is_empty());
    let after = orch(&w, &["status", "-p", prefix]);
    assert_eq!(after.status.code(), Some(1), "{after:?}");
}

/// `/metrics` scraped during a QEMU run: the counters and histograms match the
/// jobs the forge saw run.
#[test]
fn qemu_metrics_match_the_jobs_run() {
    let w = World::new();
    let prefix = "ops-metrics";
    let port = w.forge.addr().port();
    let guest_forge = "10.0.2.100:80";
    w.forge.set_runner_url(&format!("http://{guest_forge}"));
    for _ in 0..2 {
        w.forge.queue_job(REPO, &[], "echo ran");
    }
    let bundle = qemu_bundle();
    let fwd = format!("{guest_forge}=127.0.0.1:{port}");
    let mut p = w.orchestrator(
        &[
            "-n",
            "1",
            "-R",
            "qemu",
            "-p",
            prefix,
            "--metrics",
            "127.0.0.1:0",
        ],
        &[
            "-i",
            bundle.to_str().unwrap(),
            "--accel",
            "tcg",
            "--net",
            "restricted",
            "--net-forward",
            &fwd,
            "-m",
            "512",
            "-c",
            "1",
        ],
    );
    // Two jobs done and the third VM's runner up: every number is settled.
    w.wait_for(
        "two jobs and a third runner up",
        Duration::from_secs(180),
        &p,
        || {
            let done = w
                .forge
                .jobs()
                .iter()
                .filter(|j| j.status == JobStatus::Completed)
                .count();
            done == 2
                && status_json(&w, prefix)
                    .is_some_and(|s| s["totals"]["boots"] == 3 && loops(&s)[0]["state"] == "idle")
        },
    );
    let m = scrape(&p.log());
    let st = status_json(&w, prefix).unwrap();
    p.signal(nix::sys::signal::Signal::SIGTERM);
    let code = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(code.success(), "{code}\n{log}");
    assert_eq!(st["totals"]["jobs"], 2, "{st}");
    assert_eq!(loops(&st)[0]["iterations"], 2, "{st}");
    for (name, want) in [
        ("ghrm_iterations_total{outcome=\"job_done\"}", 2.0),
        ("ghrm_iterations_total{outcome=\"vm_failed\"}", 0.0),
        ("ghrm_vm_lifetime_seconds_count", 2.0),
        ("ghrm_vm_boot_seconds_count", 3.0),
        ("ghrm_host_turnaround_seconds_count", 2.0),
        ("ghrm_registrations_total", 3.0),
        ("ghrm_loops{state=\"idle\"}", 1.0),
        ("ghrm_loop_restarts_total", 0.0),
    ] {
        assert_eq!(sample(&m, name), Some(want), "{name}\n{m}\n{log}");
    }
    // Boots are measured: even a restore from a snapshot template takes a tenth of
    // a second under TCG, and none takes minutes.
    let sum = sample(&m, "ghrm_vm_boot_seconds_sum").unwrap();
    assert!(sum > 0.3 && sum < 3.0 * 120.0, "{sum}\n{m}");
    assert!(
        sample(&m, "ghrm_github_rate_limit_remaining").is_some(),
        "{m}"
    );
    assert!(w.env_roots().is_empty(), "{log}");
}

/// A `drain` whose orchestrator is killed before it ends says so (exit 1): a
/// deploy script is never told "drained" about an orchestrator that was not.
#[test]
fn drain_of_a_killed_orchestrator_is_an_error() {
    let w = World::new();
    let prefix = "ops-killed";
    w.forge
        .queue_job(REPO, &[], &format!("{PRELUDE}sleep 30\necho never"));
    let p = w.orchestrator(
        &["-n", "1", "-R", "krunvm", "-p", prefix],
        &["--grace", "60", "-u", "root"],
    );
    w.wait_for("a busy loop", Duration::from_secs(30), &p, || {
        status_json(&w, prefix).is_some_and(|s| !in_state(&loops(&s), "busy").is_empty())
    });
    let mut drain = w.spawn("orchestrator", &["drain", "-p", prefix]);
    w.wait_for("draining", Duration::from_secs(10), &p, || {
        status_json(&w, prefix).is_some_and(|s| s["draining"] == true)
    });
    p.signal(nix::sys::signal::Signal::SIGKILL);
    let st = drain.finish(Duration::from_secs(30));
    assert_eq!(st.code(), Some(1), "{}", drain.log());
    assert!(
        drain.log().contains("ended without saying how"),
        "{}",
        drain.log()
    );
}
