//! The GitHub client of the host: everything that needs the PAT happens here,
//! on the host, and only single-use credentials (a JIT config, or with `--no-jit`
//! a registration token) ever leave it.
//!
//! Built on octocrab's raw request methods so that every scope (repo, org,
//! enterprise) takes the same path, status codes are seen as GitHub sends them
//! (201/204/409/422…), and no request is retried behind our back: octocrab's own
//! retry is compiled out, because a blind retry of `generate-jitconfig` can
//! create a runner twice (github-runner-api.md §5).

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use octocrab::Octocrab;
use serde::Deserialize;
use serde_json::json;

/// Registration scope (`-s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeKind {
    /// A repository: `-p owner/repo`.
    Repo,
    /// An organisation: `-p org`.
    Org,
    /// An enterprise: `-p enterprise-slug`.
    Enterprise,
}

/// Where GitHub is: API base and web base (`-g`, design.md §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// REST API base, e.g. `https://api.github.com` or `https://HOST/api/v3`.
    pub api: String,
    /// Web base, for the runner's `--url`: `https://github.com`, `https://HOST`.
    pub web: String,
}

impl Endpoints {
    /// Derive the endpoints from `-g`: `github.com`, a `*.ghe.com` host, a GHES
    /// host, or a URL with a scheme (then the API is `<url>/api/v3`).
    pub fn from_github(g: &str) -> Result<Endpoints, String> {
        let g = g.trim().trim_end_matches('/');
        if g.is_empty() {
            return Err("-g/--github is empty".into());
        }
        let (scheme, host) = match g.split_once("://") {
            Some((s @ ("http" | "https"), h)) => (s, h),
            Some((s, _)) => {
                return Err(format!(
                    "-g/--github: unsupported scheme {s:?} (use http or https)"
                ))
            }
            None => ("https", g),
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("-g/--github: {g:?} is not a host name or URL"));
        }
        let web = format!("{scheme}://{host}");
        let api = if host == "github.com" || host == "www.github.com" {
            return Ok(Endpoints {
                api: "https://api.github.com".into(),
                web: "https://github.com".into(),
            });
        } else if host.ends_with(".ghe.com") && !host.contains('/') && !host.contains(':') {
            format!("{scheme}://api.{host}")
        } else {
            format!("{web}/api/v3")
        };
        Ok(Endpoints { api, web })
    }
}

/// Attempts of an idempotent request before its error is returned.
const MAX_ATTEMPTS: u32 = 5;
/// The longest wait between two attempts, whatever GitHub asks.
const MAX_WAIT: Duration = Duration::from_secs(900);

/// Exponential back-off from 1 s, ×(0.5–1.5) jitter, at most 60 s.
fn backoff(attempt: u32) -> Duration {
    let base = (1u64 << attempt.min(6)).min(60) as f64;
    Duration::from_secs_f64(base * rand::random_range(0.5..1.5))
}

/// Failures talking to GitHub.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// The client could not be built (bad URL).
    #[error("cannot set up the GitHub client for {0}")]
    Setup(String, #[source] octocrab::Error),
    /// No answer (connection, TLS, timeout).
    #[error("no answer from GitHub while trying to {0}")]
    Transport(&'static str, #[source] octocrab::Error),
    /// An answer that is an error.
    #[error("GitHub refused to {what}: {status} {message}{hint}")]
    Refused {
        /// What we tried.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// GitHub's message.
        message: String,
        /// A hint at the fix, with `X-Accepted-GitHub-Permissions` when sent.
        hint: String,
        /// How long GitHub asked us to wait (`retry-after`, or until
        /// `x-ratelimit-reset` when `x-ratelimit-remaining` is 0).
        retry_after: Option<Duration>,
    },
    /// `generate-jitconfig` answered 409: the name exists.
    #[error("a runner named {0} already exists at GitHub")]
    Conflict(String),
    /// An answer we could not understand.
    #[error("unexpected answer from GitHub to {0}: {1}")]
    Decode(&'static str, String),
    /// `-G` names no visible group.
    #[error(
        "runner group {name:?} does not exist or is not visible here (groups: {available}); fix -G"
    )]
    NoSuchGroup {
        /// Asked for.
        name: String,
        /// What exists.
        available: String,
    },
}

impl ForgeError {
    /// Worth trying again later (5xx, 429, a rate-limited 403, no answer)?
    pub fn is_transient(&self) -> bool {
        match self {
            ForgeError::Transport(..) => true,
            ForgeError::Refused {
                status,
                retry_after,
                ..
            } => *status >= 500 || *status == 429 || (*status == 403 && retry_after.is_some()),
            _ => false,
        }
    }

    /// The wait GitHub asked for, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ForgeError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A runner as GitHub lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct RunnerInfo {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// `online`/`offline`.
    pub status: String,
    /// Running a job.
    pub busy: bool,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// 204: removed; no job can be assigned to it any more.
    Deleted,
    /// 422: it is running a job.
    Busy,
    /// 404: already gone.
    Gone,
}

/// A minted JIT config.
pub struct Jit {
    /// Runner id GitHub assigned.
    pub runner_id: u64,
    /// `encoded_jit_config`: a secret, never logged.
    pub encoded: String,
}

impl std::fmt::Debug for Jit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Jit {{ runner_id: {}, encoded: <redacted> }}",
            self.runner_id
        )
    }
}

/// How the host authenticates to GitHub.
#[derive(Clone)]
pub enum Auth {
    /// A personal access token.
    Pat(String),
    /// A GitHub App: its id, private key (PEM) and installation (looked up when absent).
    App {
        /// App id.
        app_id: u64,
        /// The private key, PEM.
        key_pem: Vec<u8>,
        /// Installation id.
        installation: Option<u64>,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Pat(_) => write!(f, "Pat(<redacted>)"),
            Auth::App {
                app_id,
                installation,
                ..
            } => write!(
                f,
                "App {{ app_id: {app_id}, installation: {installation:?}, key: <redacted> }}"
            ),
        }
    }
}

/// The GitHub client for one scope and principal.
pub struct Forge {
    crab: Octocrab,
    scope: ScopeKind,
    principal: String,
    endpoints: Endpoints,
}

impl Forge {
    /// Build a client authenticated with a PAT.
    pub fn with_pat(
        endpoints: Endpoints,
        scope: ScopeKind,
        principal: &str,
        pat: &str,
    ) -> Result<Forge, ForgeError> {
        let crab = Octocrab::builder()
            .base_uri(endpoints.api.as_str())
            .map_err(|e| ForgeError::Setup(endpoints.api.clone(), e))?
            .personal_token(pat.to_string())
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| ForgeError::Setup(endpoints.api.clone(), e))?;
        Ok(Forge {
            crab,
            scope,
            principal: principal.into(),
            endpoints,
        })
    }

    /// Build a client for `auth`. For an App, the installation is looked up on the
    /// principal when not given; octocrab mints and refreshes its installation tokens.
    pub async fn new(
        endpoints: Endpoints,
        scope: ScopeKind,
        principal: &str,
        auth: &Auth,
    ) -> Result<Forge, ForgeError> {
        let (app_id, pem, installation) = match auth {
            Auth::Pat(pat) => return Forge::with_pat(endpoints, scope, principal, pat),
            Auth::App {
                app_id,
                key_pem,
                installation,
            } => (*app_id, key_pem, *installation),
        };
        let setup = |e| ForgeError::Setup(endpoints.api.clone(), e);
        let app = Octocrab::builder()
            .base_uri(endpoints.api.as_str())
            .map_err(setup)?
            .app_from_rsa_pem(octocrab::models::AppId(app_id), pem)
            .map_err(setup)?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(setup)?;
        let mut forge = Forge {
            crab: app,
            scope,
            principal: principal.into(),
            endpoints: endpoints.clone(),
        };
        let id = match installation {
            Some(id) => id,
            None => {
                let route = match scope {
                    ScopeKind::Repo => format!("/repos/{principal}/installation"),
                    _ => format!("/orgs/{principal}/installation"),
                };
                #[derive(Deserialize)]
                struct Installation {
                    id: u64,
                }
                forge
                    .fetch::<Installation>("find the App's installation", http::Method::GET, route)
                    .await?
                    .id
            }
        };
        forge.crab = forge
            .crab
            .installation(octocrab::models::InstallationId(id))
            .map_err(setup)?;
        Ok(forge)
    }

    /// `/repos/O/R`, `/orgs/O` or `/enterprises/E`.
    fn prefix(&self) -> String {
        match self.scope {
            ScopeKind::Repo => format!("/repos/{}", self.principal),
            ScopeKind::Org => format!("/orgs/{}", self.principal),
            ScopeKind::Enterprise => format!("/enterprises/{}", self.principal),
        }
    }

    /// The web URL `config.sh --url` takes.
    pub fn runner_url(&self) -> String {
        match self.scope {
            ScopeKind::Enterprise => {
                format!("{}/enterprises/{}", self.endpoints.web, self.principal)
            }
            _ => format!("{}/{}", self.endpoints.web, self.principal),
        }
    }

    fn permission_hint(&self) -> &'static str {
        match self.scope {
            ScopeKind::Repo => "a classic PAT needs the `repo` scope; a fine-grained one `Administration: write` on the repository",
            ScopeKind::Org => "a classic PAT needs `admin:org`; a fine-grained one `Self-hosted runners: write` on the organisation",
            ScopeKind::Enterprise => "a classic PAT needs `manage_runners:enterprise`",
        }
    }

    /// Send a body-less request and decode its JSON answer.
    async fn fetch<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        method: http::Method,
        route: String,
    ) -> Result<T, ForgeError> {
        let (_, body) = self.send(what, method, route, None).await?;
        serde_json::from_slice(&body).map_err(|e| ForgeError::Decode(what, e.to_string()))
    }

    /// Send a request; idempotent ones (all but the JIT POST, whose retries belong to
    /// the caller) are retried on transient failures: after `retry-after` or the rate
    /// limit reset when GitHub gives one, else with jittered exponential back-off.
    async fn send(
        &self,
        what: &'static str,
        method: http::Method,
        route: String,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Vec<u8>), ForgeError> {
        let idempotent = !(method == http::Method::POST && route.ends_with("/generate-jitconfig"));
        let mut attempt = 0u32;
        loop {
            let result = self
                .send_once(what, method.clone(), route.clone(), body.clone())
                .await;
            match &result {
                Err(e) if idempotent && e.is_transient() && attempt + 1 < MAX_ATTEMPTS => {
                    let wait = e
                        .retry_after()
                        .unwrap_or_else(|| backoff(attempt))
                        .min(MAX_WAIT);
                    tracing::warn!(
                        "{e}; trying again in {:.1}s ({}/{MAX_ATTEMPTS})",
                        wait.as_secs_f64(),
                        attempt + 1
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return result,
            }
        }
    }

    async fn send_once(
        &self,
        what: &'static str,
        method: http::Method,
        route: String,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Vec<u8>), ForgeError> {
        let resp = match method {
            http::Method::POST => self.crab._post(route, body.as_ref()).await,
            http::Method::DELETE => self.crab._delete(route, None::<&()>).await,
            _ => self.crab._get(route).await,
        }
        .map_err(|e| ForgeError::Transport(what, e))?;
        let status = resp.status();
        let header = |k: &str| {
            resp.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let accepted = header("x-accepted-github-permissions");
        let retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .or_else(|| {
                (header("x-ratelimit-remaining").as_deref() == Some("0"))
                    .then(|| header("x-ratelimit-reset").and_then(|r| r.parse::<i64>().ok()))
                    .flatten()
                    .map(|reset| {
                        Duration::from_secs((reset - chrono::Utc::now().timestamp()).max(1) as u64)
                    })
            });
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ForgeError::Transport(what, e))?
            .to_bytes()
            .to_vec();
        if status.is_success()
            || status == StatusCode::CONFLICT
            || status == StatusCode::UNPROCESSABLE_ENTITY && method == http::Method::DELETE
        {
            return Ok((status, bytes));
        }
        if status == StatusCode::NOT_FOUND && method == http::Method::DELETE {
            return Ok((status, bytes));
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        let hint = match (status.as_u16(), accepted) {
            (_, Some(p)) => format!(" (the credential lacks the permission GitHub asks for: {p})"),
            (401, _) => " (the credential is invalid or expired: check -T/RUNNER_PAT, or --app-id/--app-key)".to_string(),
            (403 | 404, _) => format!(
                " (check -s/-p: {} {:?} must exist and be visible to the PAT; {})",
                match self.scope {
                    ScopeKind::Repo => "repository",
                    ScopeKind::Org => "organisation",
                    ScopeKind::Enterprise => "enterprise",
                },
                self.principal,
                self.permission_hint()
            ),
            _ => String::new(),
        };
        Err(ForgeError::Refused {
            what,
            status: status.as_u16(),
            message,
            hint,
            retry_after,
        })
    }

    /// Resolve a runner group name to its id. Repositories only have `Default` (1).
    pub async fn resolve_group(&self, name: &str) -> Result<u64, ForgeError> {
        if self.scope == ScopeKind::Repo {
            return Ok(1);
        }
        #[derive(Deserialize)]
        struct Group {
            id: u64,
            name: String,
        }
        let groups: Vec<Group> = self
            .fetch_all(
                "list runner groups",
                "actions/runner-groups",
                "runner_groups",
            )
            .await?;
        if let Some(g) = groups.iter().find(|g| g.name == name) {
            return Ok(g.id);
        }
        let available = groups
            .into_iter()
            .map(|g| g.name)
            .collect::<Vec<_>>()
            .join(", ");
        Err(ForgeError::NoSuchGroup {
            name: name.into(),
            available,
        })
    }

    /// Mint a JIT config for runner `name`. A 409 is [`ForgeError::Conflict`].
    pub async fn jit(&self, name: &str, group: u64, labels: &[String]) -> Result<Jit, ForgeError> {
        let route = format!("{}/actions/runners/generate-jitconfig", self.prefix());
        let body = json!({"name": name, "runner_group_id": group, "labels": labels, "work_folder": "_work"});
        let (status, bytes) = self
            .send(
                "create a JIT runner configuration",
                http::Method::POST,
                route,
                Some(body),
            )
            .await?;
        if status == StatusCode::CONFLICT {
            return Err(ForgeError::Conflict(name.into()));
        }
        #[derive(Deserialize)]
        struct Resp {
            runner: RunnerInfo,
            encoded_jit_config: String,
        }
        let r: Resp = serde_json::from_slice(&bytes)
            .map_err(|e| ForgeError::Decode("generate-jitconfig", e.to_string()))?;
        Ok(Jit {
            runner_id: r.runner.id,
            encoded: r.encoded_jit_config,
        })
    }

    /// A registration token (`--no-jit`).
    pub async fn registration_token(&self) -> Result<String, ForgeError> {
        let route = format!("{}/actions/runners/registration-token", self.prefix());
        #[derive(Deserialize)]
        struct Tok {
            token: String,
        }
        let t: Tok = self
            .fetch("create a registration token", http::Method::POST, route)
            .await?;
        Ok(t.token)
    }

    /// The runner named exactly `name`, if registered.
    pub async fn find_runner(&self, name: &str) -> Result<Option<RunnerInfo>, ForgeError> {
        #[derive(Deserialize)]
        struct Page {
            runners: Vec<RunnerInfo>,
        }
        let route = format!(
            "{}/actions/runners?name={name}&per_page=100&page=1",
            self.prefix()
        );
        let p: Page = self.fetch("list runners", http::Method::GET, route).await?;
        Ok(p.runners.into_iter().find(|r| r.name == name))
    }

    /// Every item of a paged list (`{total_count, <key>: [...]}`) under the scope,
    /// with explicit page numbers: octocrab drops authentication on absolute `Link`
    /// URLs for some hosts.
    async fn fetch_all<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        key: &str,
    ) -> Result<Vec<T>, ForgeError> {
        #[derive(Deserialize)]
        struct Page {
            total_count: u64,
            #[serde(flatten)]
            rest: serde_json::Map<String, serde_json::Value>,
        }
        let mut all = vec![];
        for page in 1..=100u32 {
            let route = format!("{}/{path}?per_page=100&page={page}", self.prefix());
            let mut p: Page = self.fetch(what, http::Method::GET, route).await?;
            let items = p.rest.remove(key).unwrap_or_default();
            let items: Vec<T> = serde_json::from_value(items)
                .map_err(|e| ForgeError::Decode(what, e.to_string()))?;
            let n = items.len();
            all.extend(items);
            if n < 100 || all.len() as u64 >= p.total_count {
                break;
            }
        }
        Ok(all)
    }

    /// Every runner of the scope.
    pub async fn list_runners(&self) -> Result<Vec<RunnerInfo>, ForgeError> {
        self.fetch_all("list runners", "actions/runners", "runners")
            .await
    }

    /// Delete runner `id`: 204 deleted, 422 busy, 404 gone.
    pub async fn delete_runner(&self, id: u64) -> Result<Deletion, ForgeError> {
        let route = format!("{}/actions/runners/{id}", self.prefix());
        let (status, _) = self
            .send("delete a runner", http::Method::DELETE, route, None)
            .await?;
        Ok(match status {
            StatusCode::UNPROCESSABLE_ENTITY => Deletion::Busy,
            StatusCode::NOT_FOUND => Deletion::Gone,
            _ => Deletion::Deleted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoints::from_github("github.com").unwrap();
        assert_eq!(
            (e.api.as_str(), e.web.as_str()),
            ("https://api.github.com", "https://github.com")
        );
        let e = Endpoints::from_github("octo.ghe.com").unwrap();
        assert_eq!(
            (e.api.as_str(), e.web.as_str()),
            ("https://api.octo.ghe.com", "https://octo.ghe.com")
        );
        let e = Endpoints::from_github("ghes.example.com").unwrap();
        assert_eq!(e.api, "https://ghes.example.com/api/v3");
        let e = Endpoints::from_github("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (e.api.as_str(), e.web.as_str()),
            ("http://127.0.0.1:8080/api/v3", "http://127.0.0.1:8080")
        );
        assert!(Endpoints::from_github("ftp://x").is_err());
        assert!(Endpoints::from_github("").is_err());
    }
}
