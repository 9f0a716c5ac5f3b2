//! The GitHub client of the host: everything that needs the PAT happens here,
//! on the host, and only single-use credentials (a JIT config, or with `--no-jit`
//! a registration token) ever leave it.
//!
//! Built on octocrab's raw request methods so that every scope (repo, org,
//! enterprise) takes the same path, status codes are seen as GitHub sends them
//! (201/204/409/422…), and no request is retried behind our back: octocrab's own
//! retry is compiled out, because a blind retry of `generate-jitconfig` can
//! create a runner twice (github-runner-api.md §5).

//!
//! This file owns the client (its authentication and scope); `endpoints` the
//! URLs, `error` the failures, `transport` one request with its retries,
//! `runners` the runner API, `access` what a credential may do (for `doctor`).
//! Nothing here knows the command line or the loop.

pub mod access;
mod endpoints;
mod error;
mod runners;
mod transport;

use std::time::Duration;

use octocrab::Octocrab;
use serde::Deserialize;

pub use endpoints::{Endpoints, ScopeKind};
pub use error::ForgeError;
pub use runners::{Deletion, Jit, RunnerInfo};
pub use transport::observe;

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

    /// The web URL `config.sh --url` takes.
    pub fn runner_url(&self) -> String {
        match self.scope {
            ScopeKind::Enterprise => {
                format!("{}/enterprises/{}", self.endpoints.web, self.principal)
            }
            _ => format!("{}/{}", self.endpoints.web, self.principal),
        }
    }
}
