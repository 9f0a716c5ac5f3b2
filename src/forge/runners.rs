//! The runner API at a scope: runner groups, JIT configs, registration tokens,
//! finding, listing and deleting runners. Requests go through `transport`.

use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{Forge, ForgeError, ScopeKind};

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

impl Forge {
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
