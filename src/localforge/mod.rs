//! The embedded local forge: the GitHub REST endpoints a runner manager uses
//! (github-runner-api.md §2 and §14), with GitHub's status codes and bodies,
//! plus a job queue and a tiny protocol (`/_fake/…`) that the fake actions
//! runner speaks instead of the real Actions service.
//!
//! It serves `orchestrator demo` and the tests. Everything answers both under
//! `/` (github.com style) and `/api/v3` (GHES style).
//!
//! A runner that vanishes is noticed as GitHub notices it: the runner's listener
//! stops polling for jobs and stops renewing the job it holds. Once nothing came
//! from it for the runner timeout ([`LocalForge::set_runner_timeout`]), the forge
//! shows it offline and, if it held a job, fails that job once ("lost
//! communication with the server"); a DELETE of it then succeeds. The forge
//! notices at its next request or snapshot, never in between.

mod conn;
mod routes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;

/// Where a runner is registered, or where a job comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Scope {
    /// `owner/repo`.
    Repo(String, String),
    /// An organisation.
    Org(String),
    /// An enterprise.
    Enterprise(String),
}

impl Scope {
    /// Can a runner registered at `self` take a job of repository `owner/repo`?
    fn serves(&self, owner: &str, repo: &str) -> bool {
        match self {
            Scope::Repo(o, r) => o == owner && r == repo,
            Scope::Org(o) => o == owner,
            Scope::Enterprise(_) => true,
        }
    }
}

/// A registered runner, as the forge keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct Runner {
    /// Runner id.
    pub id: u64,
    /// Runner name.
    pub name: String,
    /// `online` or `offline`.
    pub status: String,
    /// Running a job.
    pub busy: bool,
    /// Removed by the forge after one job.
    pub ephemeral: bool,
    /// Runner group.
    pub runner_group_id: u64,
    /// Label names (read-only ones first).
    pub labels: Vec<String>,
    /// Where it is registered.
    pub scope: Scope,
    /// When its listener was last heard (came online, polled, renewed its job).
    #[serde(skip)]
    pub(crate) last_seen: Option<Instant>,
}

/// State of a queued job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a runner.
    Queued,
    /// Claimed by a runner.
    InProgress,
    /// Reported back.
    Completed,
}

/// How a completed job ended, as GitHub's `conclusion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Conclusion {
    /// The script exited 0.
    Success,
    /// The script failed, or the runner was lost while running it.
    Failure,
    /// The runner cancelled it (it was asked to stop).
    Cancelled,
}

/// What GitHub tells a job whose runner went silent (its annotation).
pub const LOST_RUNNER: &str = "lost communication with the server";

/// The runner timeout when none is set: silence for this long makes a runner
/// offline and fails its job (GitHub: minutes; here at test scale).
pub const DEFAULT_RUNNER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A job in the queue.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Job id.
    pub id: u64,
    /// `owner/repo` it belongs to.
    pub repo: String,
    /// `runs-on` labels; a runner must carry all of them.
    pub labels: Vec<String>,
    /// Shell script the fake runner runs with `sh -c`.
    pub script: String,
    /// Where it is.
    pub status: JobStatus,
    /// Name of the runner that took it.
    pub runner_name: Option<String>,
    /// Exit code reported (-1: cancelled; none when its runner was lost).
    pub exit_code: Option<i32>,
    /// How it ended, once completed.
    pub conclusion: Option<Conclusion>,
    /// Output reported.
    pub output: String,
    /// How many times it was handed to a runner.
    pub claims: u32,
    #[serde(skip)]
    pub(crate) queued_at: Option<Instant>,
    #[serde(skip)]
    pub(crate) started_at: Option<Instant>,
    #[serde(skip)]
    pub(crate) completed_at: Option<Instant>,
}

/// A runner group at org or enterprise level.
#[derive(Debug, Clone)]
pub struct Group {
    /// Group id (1 is Default).
    pub id: u64,
    /// Group name.
    pub name: String,
    /// Repositories (`owner/repo`) it is visible to; `None` = all.
    pub visible_to: Option<Vec<String>>,
}

/// Counters the tests and the demo read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Successful generate-jitconfig calls.
    pub jit_configs: u64,
    /// Registration tokens handed out.
    pub registration_tokens: u64,
    /// 409 answers to generate-jitconfig.
    pub conflicts: u64,
    /// Installation tokens minted for Apps.
    pub installation_tokens: u64,
    /// Successful runner deletions through the REST API.
    pub deletions: u64,
    /// Requests with an unknown or missing credential.
    pub unauthorized: u64,
    /// Every Authorization value seen, to prove what reached the forge.
    #[serde(skip)]
    pub credentials_seen: HashSet<String>,
}

/// A failure the forge injects into matching requests (tests of the client).
#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Answer with this status and GitHub's headers: `retry_after` seconds, or
    /// `x-ratelimit-remaining: 0` with a reset `reset_in` seconds from now, or
    /// `x-accepted-github-permissions`.
    Status {
        /// HTTP status.
        status: u16,
        /// `retry-after` seconds.
        retry_after: Option<u64>,
        /// Primary rate limit reset, seconds from now.
        reset_in: Option<u64>,
        /// `x-accepted-github-permissions`.
        permissions: Option<String>,
    },
    /// Do the work (create the runner), then answer 500.
    CreatedThen500,
    /// Answer normally, but only after this long.
    Delay(std::time::Duration),
    /// Answer 200 with a JSON body cut short (a broken proxy), without doing the work.
    Malformed,
    /// No answer: the connection is reset (`SO_LINGER` 0, then closed; the client
    /// reads ECONNRESET), before the work or, with `after_work`, after it (a
    /// runner created whose JIT config never arrives).
    Reset {
        /// Do the work first.
        after_work: bool,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub(crate) method: String,
    pub(crate) path_contains: String,
    pub(crate) times: u32,
    pub(crate) kind: FaultKind,
}

/// One request as the forge saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// When it arrived.
    pub at: Instant,
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Status answered (0: none, the connection was reset).
    pub status: u16,
}

/// What a PAT is, as GitHub tells them apart: a classic one answers with its
/// scopes in `X-OAuth-Scopes`; a fine-grained one has permissions instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatKind {
    /// A classic PAT with these scopes (`repo`, `admin:org`, `manage_runners:enterprise`, …).
    Classic(Vec<String>),
    /// A fine-grained PAT; `runners`: it holds the runner permission of every scope
    /// (`administration` on repositories, `organization_self_hosted_runners` on organisations).
    FineGrained {
        /// May it manage self-hosted runners?
        runners: bool,
    },
}

impl PatKind {
    /// What the PATs given to [`LocalForge::start`] are: classic, with every runner scope.
    pub fn all_scopes() -> PatKind {
        PatKind::Classic(
            ["admin:org", "manage_runners:enterprise", "repo"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )
    }
}

/// A GitHub App the forge knows: its public key and one installation.
#[derive(Debug, Clone)]
pub(crate) struct App {
    pub(crate) public_pem: String,
    pub(crate) installation: u64,
    pub(crate) owner: String,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) apps: HashMap<u64, App>,
    /// Installation tokens and when they expire.
    pub(crate) installation_tokens: HashMap<String, Instant>,
    /// Lifetime of new installation tokens (GitHub: one hour).
    pub(crate) token_ttl: Option<std::time::Duration>,
    pub(crate) faults: Vec<Fault>,
    /// Every API request answers 503 until then (an outage).
    pub(crate) down_until: Option<Instant>,
    pub(crate) requests: Vec<Request>,
    pub(crate) pats: HashSet<String>,
    /// What each PAT is (absent: [`PatKind::all_scopes`]).
    pub(crate) pat_kinds: HashMap<String, PatKind>,
    /// Seconds added to the forge's clock in its `Date` header (tests of clock skew).
    pub(crate) clock_skew: i64,
    pub(crate) next_id: u64,
    pub(crate) runners: BTreeMap<u64, Runner>,
    pub(crate) jobs: BTreeMap<u64, Job>,
    pub(crate) groups: HashMap<Scope, Vec<Group>>,
    pub(crate) reg_tokens: HashMap<String, Scope>,
    /// The URL runners use to reach the forge (`ServerUrl`), if not the bind address.
    pub(crate) runner_url: Option<String>,
    /// Silence after which a runner is offline and its job failed (none: the default).
    pub(crate) runner_timeout: Option<std::time::Duration>,
    pub(crate) stats: Stats,
}

impl State {
    pub(crate) fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn runner_timeout(&self) -> std::time::Duration {
        self.runner_timeout.unwrap_or(DEFAULT_RUNNER_TIMEOUT)
    }

    /// What GitHub does to runners it has not heard from for the runner timeout:
    /// shows them offline and fails the job each one held, once.
    pub(crate) fn expire_silent_runners(&mut self) {
        let now = Instant::now();
        let timeout = self.runner_timeout();
        let mut lost = vec![];
        for r in self.runners.values_mut() {
            let silent = r
                .last_seen
                .is_some_and(|t| now.duration_since(t) >= timeout);
            if r.status == "online" && silent {
                r.status = "offline".into();
                if r.busy {
                    r.busy = false;
                    lost.push(r.name.clone());
                }
            }
        }
        for name in lost {
            for j in self.jobs.values_mut().filter(|j| {
                j.status == JobStatus::InProgress && j.runner_name.as_deref() == Some(&name)
            }) {
                j.status = JobStatus::Completed;
                j.completed_at = Some(now);
                j.conclusion = Some(Conclusion::Failure);
                j.output = format!(
                    "The self-hosted runner: {name} {LOST_RUNNER}. Verify the machine is running and has a healthy network connection."
                );
            }
        }
    }

    pub(crate) fn groups_of(&self, scope: &Scope) -> Vec<Group> {
        match scope {
            // Repositories have no runner groups: only Default (id 1).
            Scope::Repo(..) => vec![default_group()],
            s => self
                .groups
                .get(s)
                .cloned()
                .unwrap_or_else(|| vec![default_group()]),
        }
    }
}

fn default_group() -> Group {
    Group {
        id: 1,
        name: "Default".into(),
        visible_to: None,
    }
}

/// A running local forge. Dropping it stops the server.
pub struct LocalForge {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    _thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalForge {
    /// Start on `127.0.0.1:port` (0 = any) in a thread of its own, accepting `pats`.
    pub fn start(port: u16, pats: &[&str]) -> std::io::Result<LocalForge> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            pats: pats.iter().map(|s| s.to_string()).collect(),
            ..State::default()
        }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("localforge".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let app =
                        routes::router(st).into_make_service_with_connect_info::<conn::Resetter>();
                    let _ = axum::serve(conn::Listener(listener), app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await;
                })
            })?;
        Ok(LocalForge {
            state,
            addr,
            _shutdown: tx,
            _thread: Some(thread),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.expire_silent_runners();
        st
    }

    /// Silence after which a runner is shown offline and the job it held is
    /// failed ([`DEFAULT_RUNNER_TIMEOUT`] unless set). Runners renew their job at
    /// a quarter of it (the forge says so when it hands them a job).
    pub fn set_runner_timeout(&self, timeout: std::time::Duration) {
        self.lock().runner_timeout = Some(timeout);
    }

    /// An outage: every API request (not the runners' own protocol) answers 503
    /// for `length` from now.
    pub fn outage(&self, length: std::time::Duration) {
        self.lock().down_until = Some(Instant::now() + length);
    }

    /// `http://127.0.0.1:PORT`: what `runner -g` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Tell runners to reach the forge at `url` (e.g. through a VM's forward).
    pub fn set_runner_url(&self, url: &str) {
        self.lock().runner_url = Some(url.trim_end_matches('/').to_string());
    }

    /// Add a runner group to an organisation or enterprise scope.
    pub fn add_group(&self, scope: Scope, name: &str, visible_to: Option<Vec<String>>) -> u64 {
        let mut s = self.lock();
        let id = 100 + s.next();
        let mut groups = s.groups_of(&scope);
        groups.push(Group {
            id,
            name: name.into(),
            visible_to,
        });
        s.groups.insert(scope, groups);
        id
    }

    /// Register a runner directly (to seed the forge), returning its id.
    pub fn add_runner(&self, scope: Scope, name: &str, status: &str, busy: bool) -> u64 {
        let mut s = self.lock();
        let id = s.next();
        s.runners.insert(
            id,
            Runner {
                id,
                name: name.into(),
                status: status.into(),
                busy,
                ephemeral: false,
                runner_group_id: 1,
                labels: vec!["self-hosted".into(), "Linux".into(), "X64".into()],
                scope,
                last_seen: (status == "online").then(Instant::now),
            },
        );
        id
    }

    /// Queue a job for `owner/repo` needing `labels`, running `script`.
    pub fn queue_job(&self, repo: &str, labels: &[&str], script: &str) -> u64 {
        let mut s = self.lock();
        let id = s.next();
        s.jobs.insert(
            id,
            Job {
                id,
                repo: repo.into(),
                labels: labels.iter().map(|l| l.to_string()).collect(),
                script: script.into(),
                status: JobStatus::Queued,
                runner_name: None,
                exit_code: None,
                conclusion: None,
                output: String::new(),
                claims: 0,
                queued_at: Some(Instant::now()),
                started_at: None,
                completed_at: None,
            },
        );
        id
    }

    /// A snapshot of every job.
    pub fn jobs(&self) -> Vec<Job> {
        self.lock().jobs.values().cloned().collect()
    }

    /// A snapshot of every registered runner.
    pub fn runners(&self) -> Vec<Runner> {
        self.lock().runners.values().cloned().collect()
    }

    /// Remove a runner as GitHub would (an admin, or the service after its job),
    /// whatever it is doing. True when it was there.
    pub fn remove_runner(&self, name: &str) -> bool {
        let mut st = self.lock();
        let before = st.runners.len();
        st.runners.retain(|_, r| r.name != name);
        st.runners.len() != before
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Register GitHub App `app_id` (RS256 public key, PEM) with one installation on
    /// `owner` (a user or organisation).
    pub fn add_app(&self, app_id: u64, public_pem: &str, installation: u64, owner: &str) {
        self.lock().apps.insert(
            app_id,
            App {
                public_pem: public_pem.into(),
                installation,
                owner: owner.into(),
            },
        );
    }

    /// Accept `pat` as a classic PAT with these scopes (`X-OAuth-Scopes`): without
    /// the one a scope needs (`repo`, `admin:org`, `manage_runners:enterprise`) its
    /// runner requests are refused with 403, as GitHub does.
    pub fn add_classic_pat(&self, pat: &str, scopes: &[&str]) {
        let mut s = self.lock();
        s.pats.insert(pat.into());
        let scopes = scopes.iter().map(|x| x.to_string()).collect();
        s.pat_kinds.insert(pat.into(), PatKind::Classic(scopes));
    }

    /// Accept `pat` as a fine-grained PAT (no `X-OAuth-Scopes`); without `runners`
    /// its runner requests get 403 with `X-Accepted-GitHub-Permissions`.
    pub fn add_fine_grained_pat(&self, pat: &str, runners: bool) {
        let mut s = self.lock();
        s.pats.insert(pat.into());
        s.pat_kinds
            .insert(pat.into(), PatKind::FineGrained { runners });
    }

    /// Put the forge's clock, as its `Date` header tells it, `seconds` ahead (or behind).
    pub fn set_clock_skew(&self, seconds: i64) {
        self.lock().clock_skew = seconds;
    }

    /// Make installation tokens expire after `ttl` (GitHub: one hour).
    pub fn set_installation_token_ttl(&self, ttl: std::time::Duration) {
        self.lock().token_ttl = Some(ttl);
    }

    /// Make the next `times` requests whose method is `method` and whose path
    /// contains `path_contains` fail as `kind`.
    pub fn inject(&self, method: &str, path_contains: &str, times: u32, kind: FaultKind) {
        self.lock().faults.push(Fault {
            method: method.into(),
            path_contains: path_contains.into(),
            times,
            kind,
        });
    }

    /// Every REST request so far (not the fake runner's protocol).
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Did any request carry exactly this credential?
    pub fn saw_credential(&self, token: &str) -> bool {
        self.lock().stats.credentials_seen.contains(token)
    }

    /// (queue → start, start → completion) durations of completed jobs, in seconds.
    pub fn job_timings(&self) -> Vec<(f64, f64)> {
        self.lock()
            .jobs
            .values()
            .filter_map(|j| {
                let (q, s, c) = (j.queued_at?, j.started_at?, j.completed_at?);
                Some(((s - q).as_secs_f64(), (c - s).as_secs_f64()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy runner silent for the timeout: offline, not busy, its job failed
    /// once; a runner still heard from, and an idle one, keep their job and state.
    #[test]
    fn a_silent_runner_is_offline_and_its_job_failed_once() {
        let forge = LocalForge::start(0, &[]).unwrap();
        forge.set_runner_timeout(std::time::Duration::from_millis(200));
        let scope = Scope::Repo("o".into(), "r".into());
        forge.add_runner(scope.clone(), "lost", "online", true);
        forge.add_runner(scope, "heard", "online", true);
        let (a, b) = (
            forge.queue_job("o/r", &[], "x"),
            forge.queue_job("o/r", &[], "y"),
        );
        {
            let mut st = forge.state.lock().unwrap();
            for (id, name) in [(a, "lost"), (b, "heard")] {
                let j = st.jobs.get_mut(&id).unwrap();
                j.status = JobStatus::InProgress;
                j.runner_name = Some(name.into());
                j.claims = 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
        forge
            .state
            .lock()
            .unwrap()
            .runners
            .values_mut()
            .filter(|r| r.name == "heard")
            .for_each(|r| r.last_seen = Some(Instant::now()));
        let runners = forge.runners();
        let lost = runners.iter().find(|r| r.name == "lost").unwrap();
        let heard = runners.iter().find(|r| r.name == "heard").unwrap();
        assert_eq!((lost.status.as_str(), lost.busy), ("offline", false));
        assert_eq!((heard.status.as_str(), heard.busy), ("online", true));
        let jobs = forge.jobs();
        let ja = jobs.iter().find(|j| j.id == a).unwrap();
        assert_eq!(ja.status, JobStatus::Completed);
        assert_eq!(ja.conclusion, Some(Conclusion::Failure));
        assert!(ja.output.contains(LOST_RUNNER), "{}", ja.output);
        assert_eq!(ja.claims, 1);
        let jb = jobs.iter().find(|j| j.id == b).unwrap();
        assert_eq!(jb.status, JobStatus::InProgress);
        // Only once: a later look changes nothing.
        assert_eq!(forge.jobs()[0].completed_at, ja.completed_at);
    }

    /// `FaultKind::Reset`: the client reads ECONNRESET, never an answer; before the
    /// work nothing is created, after it the runner exists; the next request on a
    /// new connection is answered.
    #[test]
    fn a_reset_fault_resets_the_connection() {
        use std::io::{Read, Write};
        let forge = LocalForge::start(0, &["pat"]).unwrap();
        let post = |name: &str| {
            let body = format!(r#"{{"name":"{name}","runner_group_id":1,"labels":["x"]}}"#);
            let mut c = std::net::TcpStream::connect(forge.addr()).unwrap();
            c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            write!(
                c,
                "POST /repos/o/r/actions/runners/generate-jitconfig HTTP/1.1\r\nHost: x\r\n\
                 Authorization: Bearer pat\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = vec![];
            c.read_to_end(&mut out).map(|_| out)
        };
        for (after_work, name) in [(false, "a"), (true, "b")] {
            forge.inject(
                "POST",
                "/generate-jitconfig",
                1,
                FaultKind::Reset { after_work },
            );
            let e = post(name).expect_err("an answer came through a reset");
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
            assert_eq!(
                forge.runners().iter().any(|r| r.name == name),
                after_work,
                "{:?}",
                forge.runners()
            );
        }
        assert!(forge.requests().iter().all(|r| r.status == 0));
        let ok = post("c").unwrap();
        assert!(String::from_utf8_lossy(&ok).starts_with("HTTP/1.1 201"));
    }
}
