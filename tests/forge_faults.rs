//! GitHub misbehaving, as the local forge injects it: rate limits, server errors,
//! a JIT POST that creates the runner but answers 500, a missing permission.

use std::time::Duration;

use ghrm::localforge::FaultKind;

use crate::common::{World, PAT, REPO};

fn status(
    status: u16,
    retry_after: Option<u64>,
    reset_in: Option<u64>,
    permissions: Option<&str>,
) -> FaultKind {
    FaultKind::Status {
        status,
        retry_after,
        reset_in,
        permissions: permissions.map(str::to_string),
    }
}

/// One loop, one job, with the stand-in krunvm.
fn one_job(w: &World, extra: &[&str]) -> (std::process::ExitStatus, String) {
    w.forge.queue_job(REPO, &[], "echo ok");
    let mut args = vec![
        "-T", PAT, "-R", "krunvm", "-p", REPO, "-r", "1", "-u", "root",
    ];
    let url = w.forge.url();
    args.extend(["-g", &url]);
    args.extend(extra);
    let mut p = w.spawn("runner", &args);
    let st = p.finish(Duration::from_secs(90));
    (st, p.log())
}

/// A JIT POST that creates the runner and still answers 500: the orphan is found by
/// name and deleted, the next try uses a fresh name; no 409 storm, nothing left.
#[test]
fn created_then_500_leaves_exactly_one_runner() {
    let w = World::new();
    w.forge
        .inject("POST", "/generate-jitconfig", 1, FaultKind::CreatedThen500);
    let (st, log) = one_job(&w, &[]);
    assert!(st.success(), "{st}\n{log}");
    let stats = w.forge.stats();
    assert_eq!(stats.jit_configs, 2, "{log}");
    assert_eq!(stats.conflicts, 0, "{log}");
    let posts = w
        .forge
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/generate-jitconfig"))
        .count();
    assert_eq!(posts, 2, "{log}");
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
    assert!(
        w.forge.jobs().iter().all(|j| j.exit_code == Some(0)),
        "{log}"
    );
}

/// A 429 with `retry-after: 2` on an idempotent call: the client waits that long,
/// then succeeds.
#[test]
fn retry_after_is_respected() {
    let w = World::new();
    w.forge.inject(
        "DELETE",
        "/actions/runners/",
        1,
        status(429, Some(2), None, None),
    );
    let (st, log) = one_job(&w, &[]);
    assert!(st.success(), "{st}\n{log}");
    let deletes: Vec<_> = w
        .forge
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    let limited = deletes
        .iter()
        .position(|r| r.status == 429)
        .unwrap_or_else(|| panic!("no 429 seen\n{log}"));
    let next = deletes
        .get(limited + 1)
        .unwrap_or_else(|| panic!("not retried\n{log}"));
    let waited = next.at - deletes[limited].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}\n{log}"
    );
    assert!(w.forge.runners().is_empty(), "{log}");
}

/// A primary rate limit (`x-ratelimit-remaining: 0` + reset) is waited out too.
#[test]
fn rate_limit_reset_is_respected() {
    let w = World::new();
    w.forge.inject(
        "POST",
        "/registration-token",
        1,
        status(403, None, Some(2), None),
    );
    let (st, log) = one_job(&w, &["--no-jit", "--accept-scope-token"]);
    assert!(st.success(), "{st}\n{log}");
    let posts: Vec<_> = w
        .forge
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/registration-token"))
        .collect();
    assert_eq!(posts.len(), 2, "{log}");
    assert!(
        posts[1].at - posts[0].at >= Duration::from_millis(900),
        "{log}"
    );
}

/// 5xx on idempotent calls are retried with back-off and recovered from.
#[test]
fn server_errors_are_recovered() {
    let w = World::new();
    w.forge.inject(
        "POST",
        "/registration-token",
        2,
        status(503, None, None, None),
    );
    w.forge.inject(
        "GET",
        "/actions/runners?name=",
        1,
        status(502, None, None, None),
    );
    let (st, log) = one_job(&w, &["--no-jit", "--accept-scope-token"]);
    assert!(st.success(), "{st}\n{log}");
    assert!(log.contains("503") && log.contains("trying again"), "{log}");
    assert!(
        w.forge.jobs().iter().all(|j| j.exit_code == Some(0)),
        "{log}"
    );
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
}

/// A credential without the permission: one clear error that names it, no retries.
#[test]
fn missing_permission_is_one_clear_error() {
    let w = World::new();
    w.forge.inject(
        "POST",
        "/generate-jitconfig",
        100,
        status(403, None, None, Some("administration=write")),
    );
    let (st, log) = one_job(&w, &[]);
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("administration=write"), "{log}");
    let posts = w
        .forge
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/generate-jitconfig"))
        .count();
    assert_eq!(posts, 1, "retried a permission error\n{log}");
}

/// A GitHub App key pair made for this test: (private key path, public PEM).
fn app_key(w: &World, name: &str) -> (std::path::PathBuf, String) {
    let key = w.dir.path().join(format!("{name}.pem"));
    let public = crate::common::app_key(&key);
    (key, public)
}

/// App authentication end to end: the loop runs jobs with App credentials only
/// (JWT → installation looked up → installation token), and warns about a key file
/// others can read.
#[test]
fn github_app_credentials_run_jobs() {
    let w = World::new();
    let (key, public) = app_key(&w, "app");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    w.forge.add_app(4242, &public, 77, "acme");
    w.forge.queue_job(REPO, &[], "echo app-ok");
    let url = w.forge.url();
    let key_s = key.display().to_string();
    let mut p = w.spawn(
        "orchestrator",
        &[
            "-n",
            "1",
            "-R",
            "krunvm",
            "--",
            "--app-id",
            "4242",
            "--app-key",
            &key_s,
            "-g",
            &url,
            "-p",
            REPO,
            "-r",
            "1",
            "-u",
            "root",
        ],
    );
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        w.forge
            .jobs()
            .iter()
            .all(|j| j.exit_code == Some(0) && j.output.contains("app-ok")),
        "{log}"
    );
    assert!(w.forge.stats().installation_tokens >= 1, "{log}");
    assert!(!w.forge.saw_credential(PAT), "a PAT was used");
    assert!(log.contains("readable by other users"), "{log}");
    assert!(w.forge.runners().is_empty(), "{log}");
    // The key never reached the guest side.
    let key_text = std::fs::read_to_string(&key).unwrap();
    let second_line = key_text.lines().nth(1).unwrap();
    assert!(!w.read_state("backend-env.log").contains(second_line) && !log.contains(second_line));
}

/// A key that is not the App's: one clear error naming the credential, exit 1.
#[test]
fn wrong_app_key_is_one_clear_error() {
    let w = World::new();
    let (_, public) = app_key(&w, "real");
    let (other, _) = app_key(&w, "other");
    w.forge.add_app(4242, &public, 77, "acme");
    let url = w.forge.url();
    let other = other.display().to_string();
    let o = w
        .command("runner")
        .args([
            "-R",
            "krunvm",
            "--app-id",
            "4242",
            "--app-key",
            &other,
            "-g",
            &url,
            "-p",
            REPO,
            "-r",
            "1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("401") && err.contains("--app-id/--app-key"),
        "{err}"
    );
}

/// Installation tokens are refreshed before they expire: with 32 s tokens (octocrab
/// refreshes when less than 30 s remain) a loop running for several seconds mints
/// new ones and is never refused.
#[test]
fn installation_tokens_are_refreshed_before_expiry() {
    let w = World::new();
    let (key, public) = app_key(&w, "app");
    w.forge.add_app(4242, &public, 77, "acme");
    w.forge.set_installation_token_ttl(Duration::from_secs(32));
    for _ in 0..2 {
        w.forge.queue_job(REPO, &[], "sleep 3; echo refreshed-ok");
    }
    let url = w.forge.url();
    let key_s = key.display().to_string();
    let mut p = w.spawn(
        "runner",
        &[
            "-R",
            "krunvm",
            "--app-id",
            "4242",
            "--app-key",
            &key_s,
            "--installation-id",
            "77",
            "-g",
            &url,
            "-p",
            REPO,
            "-r",
            "2",
            "-u",
            "root",
        ],
    );
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        w.forge.stats().installation_tokens >= 2,
        "no refresh: {:?}\n{log}",
        w.forge.stats()
    );
    assert_eq!(w.forge.stats().unauthorized, 0, "{log}");
    assert!(
        w.forge.jobs().iter().all(|j| j.exit_code == Some(0)),
        "{log}"
    );
}

/// Org and enterprise scopes end to end: their runners take the repository's jobs,
/// with the runner group resolved by name (paged) and used for the JIT config.
#[test]
fn org_and_enterprise_scopes_with_groups() {
    use ghrm::localforge::Scope;
    let w = World::new();
    let gid = w
        .forge
        .add_group(Scope::Org("acme".into()), "linux-vms", None);
    w.forge.queue_job(REPO, &[], "echo org-ok");
    let url = w.forge.url();
    let mut p = w.spawn(
        "runner",
        &[
            "-T",
            PAT,
            "-R",
            "krunvm",
            "-g",
            &url,
            "-s",
            "org",
            "-p",
            "acme",
            "-G",
            "linux-vms",
            "-r",
            "1",
            "-u",
            "root",
        ],
    );
    let st = p.finish(Duration::from_secs(60));
    assert!(st.success(), "{st}\n{}", p.log());
    let jit = w
        .forge
        .requests()
        .into_iter()
        .filter(|r| {
            r.path
                .starts_with("/api/v3/orgs/acme/actions/runners/generate-jitconfig")
        })
        .count();
    assert_eq!(jit, 1, "{}", p.log());
    assert!(
        w.forge
            .requests()
            .iter()
            .any(|r| r.path.contains("/orgs/acme/actions/runner-groups")),
        "group not resolved"
    );
    assert!(gid > 1);

    w.forge.queue_job(REPO, &[], "echo enterprise-ok");
    let mut p = w.spawn(
        "runner",
        &[
            "-T",
            PAT,
            "-R",
            "krunvm",
            "-g",
            &url,
            "-s",
            "enterprise",
            "-p",
            "bigcorp",
            "-r",
            "1",
            "-u",
            "root",
        ],
    );
    let st = p.finish(Duration::from_secs(60));
    assert!(st.success(), "{st}\n{}", p.log());
    assert!(w.forge.requests().iter().any(|r| r
        .path
        .starts_with("/api/v3/enterprises/bigcorp/actions/runners/generate-jitconfig")));
    assert!(
        w.forge.jobs().iter().all(|j| j.exit_code == Some(0)),
        "{:?}",
        w.forge.jobs()
    );
    assert!(w.forge.runners().is_empty());
}

/// A runner group that does not exist: one error naming it, the groups there are,
/// and the flag to fix.
#[test]
fn unknown_runner_group_is_a_clear_error() {
    use ghrm::localforge::Scope;
    let w = World::new();
    w.forge
        .add_group(Scope::Org("acme".into()), "linux-vms", None);
    let url = w.forge.url();
    let o = w
        .command("runner")
        .args([
            "-T", PAT, "-R", "krunvm", "-g", &url, "-s", "org", "-p", "acme", "-G", "gpu",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("runner group \"gpu\" does not exist")
            && err.contains("Default, linux-vms")
            && err.contains("-G"),
        "{err}"
    );
}

/// The orchestrator never registers runners faster than its budget: three loops
/// with `--registrations 1/2` mint their JIT configs at least 2 s apart.
#[test]
fn registrations_respect_the_budget() {
    let w = World::new();
    for _ in 0..3 {
        w.forge.queue_job(REPO, &[], "echo budget-ok");
    }
    let mut p = w.orchestrator(
        &["-n", "3", "-R", "krunvm", "--registrations", "1/2"],
        &["-r", "1", "-u", "root"],
    );
    let st = p.finish(Duration::from_secs(90));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    let mut mints: Vec<_> = w
        .forge
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/generate-jitconfig"))
        .map(|r| r.at)
        .collect();
    mints.sort();
    assert_eq!(mints.len(), 3, "{log}");
    for pair in mints.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(1900),
            "minted {:?} apart\n{log}",
            pair[1] - pair[0]
        );
    }
    assert!(
        log.contains("registration budget (1 per 2s) used up"),
        "{log}"
    );
}

/// The breaker: a loop whose guest always fails (here: an image without any actions
/// runner) stops after `--max-failures`, having registered exactly that many runners
/// and left none behind.
#[test]
fn breaker_stops_a_loop_whose_guest_always_fails() {
    let w = World::new();
    let empty = w.dir.path().join("empty-image");
    std::fs::create_dir_all(&empty).unwrap();
    let url = w.forge.url();
    let log = w.dir.path().join("breaker.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut cmd = w.command("runner");
    cmd.env("GHRM_STANDIN_RUNNER", &empty)
        .args([
            "-T",
            PAT,
            "-R",
            "krunvm",
            "-g",
            &url,
            "-p",
            REPO,
            "--max-failures",
            "3",
            "--registrations",
            "10/60",
            "-u",
            "root",
        ])
        .stdout(f.try_clone().unwrap())
        .stderr(f);
    let out = cmd.status().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.code(), Some(1), "{text}");
    assert!(text.contains("giving up: 3 VMs in a row failed"), "{text}");
    assert!(
        text.contains("no runner-<version> directory"),
        "the guest's reason is not reported:\n{text}"
    );
    assert_eq!(w.forge.stats().jit_configs, 3, "{text}");
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
}

/// Slow answers are waited for, not treated as failures: a JIT POST that takes 1.5 s
/// is sent once.
#[test]
fn slow_answers_are_waited_for_not_resent() {
    let w = World::new();
    w.forge.inject(
        "POST",
        "/generate-jitconfig",
        1,
        FaultKind::Delay(Duration::from_millis(1500)),
    );
    let (st, log) = one_job(&w, &[]);
    assert!(st.success(), "{st}\n{log}");
    let posts = w
        .forge
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/generate-jitconfig"))
        .count();
    assert_eq!(posts, 1, "{log}");
}

/// GitHub down for a minute, longer than the retries of one request (about 15 s)
/// and of one mint (three names, about 45 s): the loop waits it out itself and goes on when GitHub is back — no restart of its process, no
/// job lost or run twice, no burst of registrations, nothing left registered.
#[test]
fn a_forge_outage_longer_than_the_retries_is_ridden_out() {
    use ghrm::localforge::JobStatus;
    let w = World::new();
    let prefix = "outage";
    let first = w.forge.queue_job(REPO, &[], "echo one");
    let mut p = w.orchestrator(&["-n", "1", "-R", "krunvm", "-p", prefix], &["-u", "root"]);
    w.wait_for("the first job", Duration::from_secs(30), &p, || {
        w.forge
            .jobs()
            .iter()
            .any(|j| j.id == first && j.status == JobStatus::Completed)
    });
    // The next runner is up (or coming): GitHub goes away under it for 60 s (the
    // runners' own protocol is not down, so it may still take a job).
    w.forge.outage(Duration::from_secs(60));
    // One of the two may go to a runner minted just before the outage (the loop
    // is fast): the other needs a runner minted during it. Wait for both.
    w.forge.queue_job(REPO, &[], "echo two");
    w.forge.queue_job(REPO, &[], "echo three");
    let mut saw_backing_off = false;
    w.wait_for(
        "both jobs after the outage",
        Duration::from_secs(180),
        &p,
        || {
            if let Ok(out) = w
                .command("orchestrator")
                .args(["status", "-p", prefix, "--json"])
                .output()
            {
                saw_backing_off |= String::from_utf8_lossy(&out.stdout).contains("\"backing_off\"");
            }
            w.forge
                .jobs()
                .iter()
                .all(|j| j.status == JobStatus::Completed)
        },
    );
    p.signal(nix::sys::signal::Signal::SIGTERM);
    let st = p.finish(Duration::from_secs(60));
    let log = p.log();
    assert!(st.success(), "{st}\n{log}");
    assert!(
        saw_backing_off,
        "status never showed the loop backing off\n{log}"
    );
    assert!(
        log.contains("GitHub is unreachable or failing"),
        "the loop did not say it waits for GitHub\n{log}"
    );
    assert!(
        !log.contains("died") && !log.contains("restarting"),
        "the loop's process was restarted\n{log}"
    );
    for j in w.forge.jobs() {
        assert_eq!(
            (j.status, j.claims),
            (JobStatus::Completed, 1),
            "{j:?}\n{log}"
        );
    }
    let minted = w
        .forge
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("generate-jitconfig") && r.status == 201)
        .count();
    assert!(minted <= 5, "{minted} runners minted for 3 jobs\n{log}");
    assert!(w.forge.runners().is_empty(), "{:?}", w.forge.runners());
    assert!(w.env_roots().is_empty() && w.vms().is_empty(), "{log}");
}
