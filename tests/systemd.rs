//! Running as a systemd service: the notification protocol (READY, STATUS,
//! watchdog, STOPPING) spoken to a socket the test binds, the PAT from a systemd
//! credential, and the shipped unit checked by `systemd-analyze verify`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::{bin, World, PAT, REPO};
use ghrm::localforge::JobStatus;

/// Datagrams received on a notification socket, with when they came.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<(Instant, String)>>>);

impl Heard {
    /// Listen on `path` until the test ends.
    fn listen(path: &Path) -> Heard {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let heard = Heard::default();
        let h = heard.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Until the test drops its handle.
            while Arc::strong_count(&h.0) > 1 {
                if let Ok(n) = sock.recv(&mut buf) {
                    let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                    h.0.lock().unwrap().push((Instant::now(), m));
                }
            }
        });
        heard
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.0.lock().unwrap().clone()
    }

    fn first(&self, field: &str) -> Option<Instant> {
        self.all()
            .into_iter()
            .find(|(_, m)| m.lines().any(|l| l == field))
            .map(|(t, _)| t)
    }

    fn statuses(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .flat_map(|(_, m)| {
                m.lines()
                    .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// The orchestrator under `Type=notify`: READY=1 once the first loop runs (before
/// the stagger is over), STATUS= lines with the fleet's summary, WATCHDOG=1 at half of
/// WATCHDOG_USEC from the supervision loop, STOPPING=1 on SIGTERM — and none of the
/// variables reaches a loop, a stand-in hypervisor or a guest.
#[test]
fn notify_ready_status_watchdog_and_stopping() {
    let w = World::new();
    let path = w.dir.path().join("notify.sock");
    let heard = Heard::listen(&path);
    let watchdog = Duration::from_secs(2);
    w.env.lock().unwrap().extend([
        ("NOTIFY_SOCKET".to_string(), path.display().to_string()),
        (
            "WATCHDOG_USEC".to_string(),
            watchdog.as_micros().to_string(),
        ),
    ]);
    let mut p = w.orchestrator(&["-n", "2", "-R", "krunvm"], &["-u", "root"]);
    w.wait_for("READY=1", Duration::from_secs(30), &p, || {
        heard.first("READY=1").is_some()
    });
    // Loop 2 starts only when loop 1's runner is up: READY did not wait for it.
    let runners_at_ready = w.forge.runners().len();
    assert!(
        runners_at_ready < 2,
        "READY=1 came after the stagger\n{}",
        p.log()
    );
    w.wait_for("two runners online", Duration::from_secs(30), &p, || {
        let r = w.forge.runners();
        r.len() == 2 && r.iter().all(|r| r.status == "online")
    });
    // STATUS= is the fleet's summary: both loops idle, each with one boot.
    w.wait_for("STATUS with 2 idle", Duration::from_secs(5), &p, || {
        heard
            .statuses()
            .iter()
            .any(|s| s.starts_with("2 loop(s): 2 idle; 0 job(s), 2 boot(s)"))
    });

    // The variables are ours alone: no other process of this test has them.
    let me = p.pid();
    for (pid, cmd) in w.tagged().into_iter().filter(|(pid, _)| *pid != me) {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        for v in ["NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="] {
            assert!(
                !env.split(|b| *b == 0)
                    .any(|kv| kv.starts_with(v.as_bytes())),
                "process {pid} ({cmd}) inherited {v}"
            );
        }
    }

    // Watch the pings for a while: at half the interval, never near the deadline.
    let ready = heard.first("READY=1").unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let pings: Vec<Instant> = heard
        .all()
        .into_iter()
        .filter(|(t, m)| m == "WATCHDOG=1" && *t > ready)
        .map(|(t, _)| t)
        .collect();
    assert!(pings.len() >= 5, "{} pings\n{}", pings.len(), p.log());
    let mut last = ready;
    for t in &pings {
        let gap = *t - last;
        assert!(
            gap >= watchdog / 2 - Duration::from_millis(100) && gap < watchdog,
            "a watchdog ping {gap:?} after the previous one (WATCHDOG_USEC {watchdog:?})"
        );
        last = *t;
    }

    p.signal(Signal::SIGTERM);
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(heard.first("STOPPING=1").is_some(), "{log}");
    assert!(w.forge.runners().is_empty(), "{log}");
}

/// `LoadCredential=runner-pat:…`: with no -T and no RUNNER_PAT, the orchestrator
/// reads the PAT from `$CREDENTIALS_DIRECTORY/runner-pat` (its trailing newline
/// trimmed), the loop authenticates with it and runs a job, and no log shows it.
#[test]
fn the_pat_from_a_systemd_credential() {
    let w = World::new();
    let creds = w.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("runner-pat"), format!("{PAT}\n")).unwrap();
    w.env
        .lock()
        .unwrap()
        .push(("CREDENTIALS_DIRECTORY".into(), creds.display().to_string()));
    let job = w.forge.queue_job(REPO, &[], "echo via-credential");
    let url = w.forge.url();
    let mut p = w.spawn(
        "orchestrator",
        &[
            "-n", "1", "-R", "krunvm", "-vv", "--", "-g", &url, "-p", REPO, "-r", "1", "-u", "root",
        ],
    );
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let j = w.forge.jobs().into_iter().find(|j| j.id == job).unwrap();
    assert_eq!(j.status, JobStatus::Completed, "{log}");
    assert!(j.output.contains("via-credential"), "{}\n{log}", j.output);
    assert!(!log.contains(PAT), "the PAT is in the log\n{log}");

    // A credentials directory without the PAT: exit 2 naming the file and the fix.
    std::fs::remove_file(creds.join("runner-pat")).unwrap();
    let mut p = w.spawn(
        "orchestrator",
        &["-n", "1", "-R", "krunvm", "--", "-g", &url, "-p", REPO],
    );
    let st = p.finish(Duration::from_secs(30));
    let log = p.log();
    assert_eq!(st.code(), Some(2), "{log}");
    let file = creds.join("runner-pat");
    assert!(
        log.contains(&file.display().to_string()) && log.contains("LoadCredential=runner-pat:"),
        "{log}"
    );
}

/// `LoadCredential=runner-app-key:…`: `--app-id` alone, and the App's private key
/// from `$CREDENTIALS_DIRECTORY/runner-app-key`, for the orchestrator and its loop.
#[test]
fn the_app_key_from_a_systemd_credential() {
    let w = World::new();
    let creds = w.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let key = creds.join("runner-app-key");
    let public = crate::common::app_key(&key);
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    w.forge.add_app(4242, &public, 77, "acme");
    w.env
        .lock()
        .unwrap()
        .push(("CREDENTIALS_DIRECTORY".into(), creds.display().to_string()));
    w.forge.queue_job(REPO, &[], "echo app-via-credential");
    let url = w.forge.url();
    let mut p = w.spawn(
        "orchestrator",
        &[
            "-n", "1", "-R", "krunvm", "--", "--app-id", "4242", "-g", &url, "-p", REPO, "-r", "1",
            "-u", "root",
        ],
    );
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        w.forge
            .jobs()
            .iter()
            .all(|j| j.exit_code == Some(0) && j.output.contains("app-via-credential")),
        "{log}"
    );
    assert!(w.forge.stats().installation_tokens >= 1, "{log}");
    assert!(!w.forge.saw_credential(PAT), "a PAT was used");
}

/// The shipped unit passes `systemd-analyze verify` without a warning (it pointed
/// at the built orchestrator: verify checks that ExecStart exists), and its stop
/// timeout covers the default --grace plus the orchestrator's own waits.
#[test]
fn the_shipped_unit_verifies() {
    let analyze = which::which("systemd-analyze").unwrap_or_else(|_| {
        panic!("systemd-analyze is missing: install systemd (scripts/install-deps.sh does)")
    });
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/gh-runner-microvm@.service"),
    )
    .unwrap();
    let exec = "ExecStart=/usr/local/bin/orchestrator ";
    assert!(unit.contains(exec), "the unit's ExecStart moved");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("gh-runner-microvm@.service"),
        unit.replace(
            exec,
            &format!("ExecStart={} ", bin("orchestrator").display()),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(dir.path().join("gh-runner-microvm@ci.service"))
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );

    // TimeoutStopSec covers the default --grace, the orchestrator's 60 s over it and a final sweep.
    use clap::CommandFactory;
    let grace: u64 = ghrm::cli::RunnerCli::command()
        .get_arguments()
        .find(|a| a.get_id() == "grace")
        .and_then(|a| a.get_default_values().first()?.to_str()?.parse().ok())
        .unwrap();
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec=<seconds> in the unit");
    assert!(
        stop >= grace + 60 + 30,
        "TimeoutStopSec={stop} does not cover --grace {grace} + 60 s + the final sweep"
    );
}
