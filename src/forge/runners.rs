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
        decode_jit(&bytes)
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
        let route = format!(
            "{}/actions/runners?name={name}&per_page=100&page=1",
            self.prefix()
        );
        let (_, body) = self
            .send("list runners", http::Method::GET, route, None)
            .await?;
        Ok(decode_runners(&body)?.into_iter().find(|r| r.name == name))
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

/// A `generate-jitconfig` answer; anything else is [`ForgeError::Decode`], whose
/// text never holds the config.
pub(crate) fn decode_jit(body: &[u8]) -> Result<Jit, ForgeError> {
    #[derive(Deserialize)]
    struct Resp {
        runner: RunnerInfo,
        encoded_jit_config: String,
    }
    let r: Resp = serde_json::from_slice(body)
        .map_err(|e| ForgeError::Decode("generate-jitconfig", e.to_string()))?;
    Ok(Jit {
        runner_id: r.runner.id,
        encoded: r.encoded_jit_config,
    })
}

/// One page of `GET …/actions/runners` (`{runners: [...]}`).
pub(crate) fn decode_runners(body: &[u8]) -> Result<Vec<RunnerInfo>, ForgeError> {
    #[derive(Deserialize)]
    struct Page {
        runners: Vec<RunnerInfo>,
    }
    serde_json::from_slice::<Page>(body)
        .map(|p| p.runners)
        .map_err(|e| ForgeError::Decode("list runners", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn runner(id: u64, name: &str, status: &str, busy: bool) -> serde_json::Value {
        json!({"id": id, "name": name, "os": "Linux", "status": status, "busy": busy, "labels": []})
    }

    /// Values of every JSON type but the one a field has.
    fn wrong() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(json!(null)),
            Just(json!(true)),
            Just(json!(-7)),
            Just(json!(2.5)),
            Just(json!("7")),
            Just(json!([])),
            Just(json!({})),
        ]
    }

    proptest! {
        /// JIT answers: a whole one gives its id and config; any cut of it, a field
        /// of the wrong type or missing, or any bytes are a Decode error (never a
        /// panic), and no error text holds the config.
        #[test]
        fn jit_answers_decode_or_fail_typed(
            id in any::<u64>(),
            config in "[A-Za-z0-9+/=]{24,64}",
            cut in any::<prop::sample::Index>(),
            field in 0usize..4,
            bad in wrong(),
            noise in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let whole = json!({"runner": runner(id, "GH-1-a", "offline", false), "encoded_jit_config": config});
            let text = whole.to_string();
            let jit = decode_jit(text.as_bytes()).unwrap();
            prop_assert_eq!(jit.runner_id, id);
            prop_assert_eq!(&jit.encoded, &config);
            let shown = format!("{jit:?}");
            prop_assert!(!shown.contains(&config));
            let mut answers = vec![text.as_bytes()[..cut.index(text.len())].to_vec()];
            let mut typed = whole.clone();
            let (slot, ok) = match field {
                0 => (&mut typed["runner"]["id"], false),
                1 => (&mut typed["runner"], false),
                2 => (&mut typed["encoded_jit_config"], bad.is_string()),
                _ => (&mut typed["runner"]["busy"], bad.is_boolean()),
            };
            *slot = bad;
            if !ok {
                answers.push(typed.to_string().into_bytes());
            }
            let mut missing = whole.clone();
            missing.as_object_mut().unwrap().remove(["runner", "encoded_jit_config"][field % 2]);
            answers.push(missing.to_string().into_bytes());
            for a in answers {
                let e = decode_jit(&a).unwrap_err();
                prop_assert!(matches!(e, ForgeError::Decode("generate-jitconfig", _)), "{e:?}");
                prop_assert!(!e.to_string().contains(&config), "{e}");
            }
            if let Err(e) = decode_jit(&noise) {
                prop_assert!(matches!(e, ForgeError::Decode(..)));
            }
        }

        /// Runner lists: a whole page gives its runners; a cut, a wrong type or any
        /// bytes are a Decode error.
        #[test]
        fn runner_lists_decode_or_fail_typed(
            rs in proptest::collection::vec((any::<u64>(), "\\PC{0,16}", any::<bool>()), 0..5),
            cut in any::<prop::sample::Index>(),
            bad in wrong(),
            noise in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let list: Vec<_> = rs.iter().map(|(id, n, b)| runner(*id, n, "online", *b)).collect();
            let text = json!({"total_count": rs.len(), "runners": list}).to_string();
            let got = decode_runners(text.as_bytes()).unwrap();
            prop_assert_eq!(
                got.iter().map(|r| (r.id, r.name.clone(), r.busy)).collect::<Vec<_>>(),
                rs.clone()
            );
            let cut = &text.as_bytes()[..cut.index(text.len())];
            prop_assert!(matches!(decode_runners(cut), Err(ForgeError::Decode(..))));
            let mut typed = json!({"runners": [runner(1, "a", "online", false)]});
            typed["runners"][0]["status"] = bad.clone();
            prop_assert_eq!(decode_runners(typed.to_string().as_bytes()).is_ok(), bad.is_string());
            let r = decode_runners(json!({"runners": bad.clone()}).to_string().as_bytes());
            // An empty list is a list.
            prop_assert!(matches!(r, Err(ForgeError::Decode(..))) || bad == json!([]), "{:?}", r);
            let _ = decode_runners(&noise);
        }
    }
}
