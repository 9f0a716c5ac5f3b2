//! Request handling of the local forge: one path router for all scopes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};

use super::conn::Resetter;
use super::{Conclusion, FaultKind, JobStatus, PatKind, Runner, Scope, State};

type Shared = Arc<Mutex<State>>;

pub(super) fn router(state: Shared) -> Router {
    Router::new()
        .fallback(handle)
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            with_date,
        ))
        .with_state(state)
}

/// GitHub dates every answer (`Date`, HTTP-date); the forge's clock may be skewed
/// on purpose ([`super::LocalForge::set_clock_skew`]).
async fn with_date(AxState(state): AxState<Shared>, mut resp: Response) -> Response {
    let skew = state.lock().unwrap_or_else(|e| e.into_inner()).clock_skew;
    let now = chrono::Utc::now() + chrono::Duration::seconds(skew);
    let date = now.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    if let Ok(v) = date.parse() {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

/// The scope a runner route is under (`repos/O/R/…`, `orgs/O/…`, `enterprises/E/…`).
fn route_scope(segs: &[&str]) -> Option<&'static str> {
    match segs {
        ["repos", _, _, "actions", ..] => Some("repo"),
        ["orgs", _, "actions", ..] => Some("org"),
        ["enterprises", _, "actions", ..] => Some("enterprise"),
        _ => None,
    }
}

/// GitHub's refusal of a PAT that may not manage runners at the route's scope: a
/// classic one without the scope (403, `X-Accepted-OAuth-Scopes`), a fine-grained
/// one without the permission (403, `X-Accepted-GitHub-Permissions`).
fn pat_refusal(kind: &PatKind, segs: &[&str], method: &Method) -> Option<Response> {
    let scope = route_scope(segs)?;
    match kind {
        PatKind::Classic(scopes) => {
            let (needed, message) = match scope {
                "repo" => (&["repo"][..], "Must have admin rights to Repository."),
                "org" => (
                    &["admin:org"][..],
                    "You must be an org admin or have the manage_runners:org scope.",
                ),
                _ => (
                    &["manage_runners:enterprise", "admin:enterprise"][..],
                    "Must have admin access to the enterprise.",
                ),
            };
            if needed.iter().any(|n| scopes.iter().any(|s| s == n)) {
                return None;
            }
            let mut r = error(StatusCode::FORBIDDEN, message);
            if let Ok(v) = needed.join(", ").parse() {
                r.headers_mut().insert("x-accepted-oauth-scopes", v);
            }
            Some(r)
        }
        PatKind::FineGrained { runners: true } => None,
        PatKind::FineGrained { runners: false } => {
            let name = match scope {
                "repo" => "administration",
                "org" => "organization_self_hosted_runners",
                _ => {
                    return Some(error(
                        StatusCode::FORBIDDEN,
                        "Resource not accessible by personal access token",
                    ))
                }
            };
            let level = if method == Method::GET {
                "read"
            } else {
                "write"
            };
            let mut r = error(
                StatusCode::FORBIDDEN,
                "Resource not accessible by personal access token",
            );
            if let Ok(v) = format!("{name}={level}").parse() {
                r.headers_mut().insert("x-accepted-github-permissions", v);
            }
            Some(r)
        }
    }
}

const DOCS: &str = "https://docs.github.com/rest/actions/self-hosted-runners";

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"message": message, "documentation_url": DOCS, "status": status.as_u16().to_string()});
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn runner_json(r: &Runner) -> Value {
    let labels: Vec<Value> = r
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let ro = matches!(l.as_str(), "self-hosted" | "Linux" | "X64");
            json!({"id": i + 1, "name": l, "type": if ro { "read-only" } else { "custom" }})
        })
        .collect();
    json!({
        "id": r.id, "name": r.name, "os": if r.status == "online" { "linux" } else { "unknown" },
        "status": r.status, "busy": r.busy, "ephemeral": r.ephemeral,
        "runner_group_id": r.runner_group_id, "labels": labels,
    })
}

fn query(uri: &axum::http::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%2F", "/").replace("%2f", "/")))
        .collect()
}

/// Page `items` as GitHub does: `per_page` (≤100, default 30), `page`, absolute `Link`.
fn paged(
    items: Vec<Value>,
    key: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    path: &str,
) -> Response {
    let per_page = q
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page = q
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let mut extra: Vec<String> = q
        .iter()
        .filter(|(k, _)| *k != "page" && *k != "per_page")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    extra.sort();
    let extra = extra.iter().map(|e| format!("&{e}")).collect::<String>();
    let link = |p: usize, rel: &str| {
        format!("<http://{host}{path}?per_page={per_page}&page={p}{extra}>; rel=\"{rel}\"")
    };
    let mut links = vec![];
    if page < last {
        links.push(link(page + 1, "next"));
        links.push(link(last, "last"));
    }
    if page > 1 {
        links.push(link(page - 1, "prev"));
        links.push(link(1, "first"));
    }
    let mut resp = ok_json(StatusCode::OK, json!({"total_count": total, key: slice}));
    if !links.is_empty() {
        if let Ok(v) = links.join(", ").parse() {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    resp
}

async fn handle(AxState(state): AxState<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let rel = path.strip_prefix("/api/v3").unwrap_or(&path);
    let segs: Vec<&str> = rel.trim_matches('/').split('/').collect();
    let q = query(&parts.uri);
    // A slow answer is injected before the state is locked: nothing else waits on it.
    let delay = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let full = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        st.faults
            .iter_mut()
            .find(|f| {
                f.times > 0
                    && matches!(f.kind, FaultKind::Delay(_))
                    && f.method == parts.method.as_str()
                    && full.contains(&f.path_contains)
            })
            .and_then(|f| {
                f.times -= 1;
                match f.kind {
                    FaultKind::Delay(d) => Some(d),
                    _ => None,
                }
            })
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    st.expire_silent_runners();
    if segs.first() == Some(&"_fake") {
        return fake(&mut st, &parts.method, &segs[1..], &body);
    }
    if st.down_until.is_some_and(|t| std::time::Instant::now() < t) {
        st.requests.push(super::Request {
            at: std::time::Instant::now(),
            method: parts.method.to_string(),
            path: path.clone(),
            status: 503,
        });
        return error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
    }

    // Authentication: `Bearer X` or `token X` with a known PAT.
    let cred = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        })
        .map(str::to_string);
    if let Some(c) = &cred {
        st.stats.credentials_seen.insert(c.clone());
    }
    // GitHub App endpoints authenticate with the App's JWT.
    match segs.as_slice() {
        ["app", "installations", id, "access_tokens"] if parts.method == Method::POST => {
            let Some(app) = cred.as_deref().and_then(|t| verify_jwt(&st, t)) else {
                st.stats.unauthorized += 1;
                return error(
                    StatusCode::UNAUTHORIZED,
                    "A JSON web token could not be decoded",
                );
            };
            if st.apps.get(&app).map(|a| a.installation.to_string()) != Some(id.to_string()) {
                return error(StatusCode::NOT_FOUND, "Not Found");
            }
            let token = format!(
                "ghs_{}",
                protocol::secret::random_alnum(36).unwrap_or_default()
            );
            let ttl = st.token_ttl.unwrap_or(std::time::Duration::from_secs(3600));
            st.installation_tokens
                .insert(token.clone(), Instant::now() + ttl);
            st.stats.installation_tokens += 1;
            let expires_at = (chrono::Utc::now()
                + chrono::Duration::from_std(ttl).unwrap_or_default())
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            return ok_json(
                StatusCode::CREATED,
                json!({"token": token, "expires_at": expires_at, "permissions": {"administration": "write", "organization_self_hosted_runners": "write"}, "repository_selection": "all"}),
            );
        }
        ["repos", owner, _, "installation"]
        | ["orgs", owner, "installation"]
        | ["users", owner, "installation"]
            if parts.method == Method::GET =>
        {
            let Some(app) = cred.as_deref().and_then(|t| verify_jwt(&st, t)) else {
                st.stats.unauthorized += 1;
                return error(
                    StatusCode::UNAUTHORIZED,
                    "A JSON web token could not be decoded",
                );
            };
            return match st.apps.get(&app).filter(|a| a.owner == *owner) {
                Some(a) => ok_json(
                    StatusCode::OK,
                    json!({"id": a.installation, "app_id": app, "account": {"login": a.owner}}),
                ),
                None => error(StatusCode::NOT_FOUND, "Not Found"),
            };
        }
        _ => {}
    }
    let valid_installation = cred
        .as_ref()
        .and_then(|c| st.installation_tokens.get(c))
        .is_some_and(|exp| *exp > Instant::now());
    if !cred.as_ref().is_some_and(|c| st.pats.contains(c)) && !valid_installation {
        st.stats.unauthorized += 1;
        return error(StatusCode::UNAUTHORIZED, "Bad credentials");
    }

    let pat_kind = cred.as_ref().filter(|c| st.pats.contains(*c)).map(|c| {
        st.pat_kinds
            .get(c)
            .cloned()
            .unwrap_or_else(PatKind::all_scopes)
    });
    let refusal = pat_kind
        .as_ref()
        .and_then(|k| pat_refusal(k, &segs, &parts.method));

    // Injected faults (tests): the first matching one with uses left.
    let full = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let fault = st
        .faults
        .iter_mut()
        .find(|f| {
            refusal.is_none()
                && f.times > 0
                && !matches!(f.kind, FaultKind::Delay(_))
                && f.method == parts.method.as_str()
                && full.contains(&f.path_contains)
        })
        .map(|f| {
            f.times -= 1;
            f.kind.clone()
        });
    let mut reset = false;
    let mut resp = match (refusal, fault) {
        (Some(r), _) => r,
        (None, fault) => match fault {
            Some(FaultKind::Status {
                status,
                retry_after,
                reset_in,
                permissions,
            }) => {
                let code =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let msg = match status {
                429 | 403 if retry_after.is_some() || reset_in.is_some() => "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                403 => "Resource not accessible by personal access token",
                _ => "Server Error",
            };
                let mut r = error(code, msg);
                let h = r.headers_mut();
                if let Some(s) = retry_after {
                    h.insert("retry-after", s.into());
                }
                if let Some(s) = reset_in {
                    let reset = chrono::Utc::now().timestamp() as u64 + s;
                    h.insert("x-ratelimit-remaining", 0.into());
                    h.insert("x-ratelimit-reset", reset.into());
                }
                if let Some(p) = permissions.and_then(|p| p.parse().ok()) {
                    h.insert("x-accepted-github-permissions", p);
                }
                r
            }
            Some(FaultKind::CreatedThen500) => {
                let _ = route(&mut st, &parts, &segs, &q, &path, &body);
                error(StatusCode::INTERNAL_SERVER_ERROR, "Server Error")
            }
            Some(FaultKind::Malformed) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
                r#"{"runner": {"id": 1, "na"#,
            )
                .into_response(),
            Some(FaultKind::Reset { after_work }) => {
                if after_work {
                    let _ = route(&mut st, &parts, &segs, &q, &path, &body);
                }
                reset = true;
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "never sent: the connection is reset",
                )
            }
            Some(FaultKind::Delay(_)) | None => route(&mut st, &parts, &segs, &q, &path, &body),
        },
    };
    if reset {
        match parts.extensions.get::<ConnectInfo<Resetter>>() {
            Some(ConnectInfo(r)) => r.reset(),
            // Served without the forge's listener (no connection to reset).
            None => reset = false,
        }
    }
    // As GitHub: every API answer says how much of the hour's budget is left.
    let api = ["/repos/", "/orgs/", "/enterprises/"]
        .iter()
        .any(|p| path.starts_with(p));
    if api && !resp.headers().contains_key("x-ratelimit-remaining") {
        let left = 5000u64.saturating_sub(st.requests.len() as u64 + 1);
        let h = resp.headers_mut();
        h.insert("x-ratelimit-limit", 5000.into());
        h.insert("x-ratelimit-remaining", left.into());
    }
    // A classic PAT's scopes come with every answer to it.
    if let Some(PatKind::Classic(scopes)) = &pat_kind {
        if let Ok(v) = scopes.join(", ").parse() {
            resp.headers_mut().insert("x-oauth-scopes", v);
        }
    }
    st.requests.push(super::Request {
        at: std::time::Instant::now(),
        method: parts.method.to_string(),
        path: full,
        // 0: no answer, the connection was reset.
        status: if reset { 0 } else { resp.status().as_u16() },
    });
    resp
}

fn route(
    st: &mut State,
    parts: &axum::http::request::Parts,
    segs: &[&str],
    q: &HashMap<String, String>,
    path: &str,
    body: &Bytes,
) -> Response {
    // Scope prefix: repos/O/R, orgs/O, enterprises/E.
    let (scope, rest) = match segs {
        ["repos", o, r, rest @ ..] => (Scope::Repo(o.to_string(), r.to_string()), rest),
        ["orgs", o, rest @ ..] => (Scope::Org(o.to_string()), rest),
        ["enterprises", e, rest @ ..] => (Scope::Enterprise(e.to_string()), rest),
        _ => return error(StatusCode::NOT_FOUND, "Not Found"),
    };
    let m = &parts.method;
    match rest {
        ["actions", "runners", "registration-token"] if m == Method::POST => {
            let token = format!(
                "REG{}",
                protocol::secret::random_alnum(26)
                    .unwrap_or_default()
                    .to_uppercase()
            );
            st.reg_tokens.insert(token.clone(), scope);
            st.stats.registration_tokens += 1;
            ok_json(
                StatusCode::CREATED,
                json!({"token": token, "expires_at": expires()}),
            )
        }
        ["actions", "runners", "remove-token"] if m == Method::POST => {
            let token = format!(
                "REM{}",
                protocol::secret::random_alnum(26)
                    .unwrap_or_default()
                    .to_uppercase()
            );
            ok_json(
                StatusCode::CREATED,
                json!({"token": token, "expires_at": expires()}),
            )
        }
        ["actions", "runners", "generate-jitconfig"] if m == Method::POST => jit(st, scope, body),
        ["actions", "runners"] if m == Method::GET => {
            let name = q.get("name");
            let items: Vec<Value> = st
                .runners
                .values()
                .filter(|r| r.scope == scope && name.is_none_or(|n| &r.name == n))
                .map(runner_json)
                .collect();
            paged(items, "runners", q, &parts.headers, path)
        }
        ["actions", "runners", id] => {
            let Some(r) = id
                .parse::<u64>()
                .ok()
                .and_then(|id| st.runners.get(&id))
                .filter(|r| r.scope == scope)
            else {
                return error(StatusCode::NOT_FOUND, "Not Found");
            };
            match *m {
                Method::GET => ok_json(StatusCode::OK, runner_json(r)),
                Method::DELETE if r.busy => error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &format!(
                        "Bad request - Runner \"{}\" is still running a job\"",
                        r.name
                    ),
                ),
                Method::DELETE => {
                    let id = r.id;
                    st.runners.remove(&id);
                    st.stats.deletions += 1;
                    StatusCode::NO_CONTENT.into_response()
                }
                _ => error(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        ["actions", "runner-groups"] if m == Method::GET && !matches!(scope, Scope::Repo(..)) => {
            let visible = q.get("visible_to_repository");
            let items: Vec<Value> = st
                .groups_of(&scope)
                .into_iter()
                .filter(|g| match (visible, &g.visible_to) {
                    (Some(repo), Some(list)) => list.iter().any(|r| r == repo || r.ends_with(&format!("/{repo}"))),
                    _ => true,
                })
                .map(|g| {
                    json!({"id": g.id, "name": g.name, "visibility": if g.visible_to.is_some() {"selected"} else {"all"},
                           "default": g.id == 1, "runners_url": format!("{DOCS}/{}", g.id), "inherited": false,
                           "allows_public_repositories": true})
                })
                .collect();
            paged(items, "runner_groups", q, &parts.headers, path)
        }
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// The App id of a valid RS256 JWT signed by a known App (`iss` = its id, lifetime
/// at most 10 minutes, not expired).
fn verify_jwt(st: &State, token: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: Value,
        iat: i64,
        exp: i64,
    }
    let header = jsonwebtoken::decode_header(token).ok()?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return None;
    }
    for (id, app) in &st.apps {
        let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(app.public_pem.as_bytes()) else {
            continue;
        };
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        // `iss` is checked below: octocrab sends the App id as a number, which
        // jsonwebtoken's own (string) issuer check would call missing.
        v.set_required_spec_claims(&["exp", "iat"]);
        v.leeway = 60;
        // GitHub App JWTs carry no audience.
        v.validate_aud = false;
        let Ok(data) = jsonwebtoken::decode::<Claims>(token, &key, &v) else {
            continue;
        };
        let iss = match &data.claims.iss {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        if iss == Some(*id) && data.claims.exp - data.claims.iat <= 660 {
            return Some(*id);
        }
    }
    None
}

fn expires() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

fn jit(st: &mut State, scope: Scope, body: &Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "Problems parsing JSON");
    };
    let Some(name) = v
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid request.\n\n\"name\" wasn't supplied.",
        );
    };
    let Some(group) = v.get("runner_group_id").and_then(Value::as_u64) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid input: object is missing required key: runner_group_id",
        );
    };
    let labels: Vec<String> = v
        .get("labels")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if labels.is_empty() || labels.len() > 100 {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    }
    if !st.groups_of(&scope).iter().any(|g| g.id == group) {
        return error(StatusCode::NOT_FOUND, "Not Found");
    }
    if st
        .runners
        .values()
        .any(|r| r.scope == scope && r.name == name)
    {
        st.stats.conflicts += 1;
        return error(
            StatusCode::CONFLICT,
            &format!("Already exists - A runner with the name {name} already exists."),
        );
    }
    let id = st.next();
    let mut all = vec!["self-hosted".to_string(), "Linux".into(), "X64".into()];
    all.extend(labels);
    let runner = Runner {
        id,
        name: name.into(),
        status: "offline".into(),
        busy: false,
        ephemeral: true,
        runner_group_id: group,
        labels: all,
        scope,
        last_seen: None,
    };
    let server = st.runner_url.clone().unwrap_or_default();
    let settings = json!({"AgentId": id, "AgentName": name, "PoolId": group, "PoolName": null,
                          "ServerUrl": server, "Ephemeral": true, "DisableUpdate": true});
    let config = json!({".runner": b64(settings.to_string().as_bytes()), ".credentials": b64(b"{\"Scheme\":\"OAuth\"}")});
    let resp = json!({"runner": runner_json(&runner), "encoded_jit_config": b64(config.to_string().as_bytes())});
    st.runners.insert(id, runner);
    st.stats.jit_configs += 1;
    ok_json(StatusCode::CREATED, resp)
}

/// The fake runner's protocol (what the Actions service does for a real runner).
fn fake(st: &mut State, m: &Method, segs: &[&str], body: &Bytes) -> Response {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match segs {
        ["runner-registration"] if m == Method::POST => {
            let token = v.get("token").and_then(Value::as_str).unwrap_or("");
            let Some(scope) = st.reg_tokens.get(token).cloned() else {
                return error(StatusCode::UNAUTHORIZED, "Invalid registration token");
            };
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("runner")
                .to_string();
            // --replace: a runner of that name is replaced.
            st.runners
                .retain(|_, r| !(r.scope == scope && r.name == name));
            let id = st.next();
            let mut labels = vec!["self-hosted".to_string(), "Linux".into(), "X64".into()];
            labels.extend(
                v.get("labels")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l.as_str().map(str::to_string)),
            );
            let ephemeral = v.get("ephemeral").and_then(Value::as_bool).unwrap_or(false);
            st.runners.insert(
                id,
                Runner {
                    id,
                    name: name.clone(),
                    status: "offline".into(),
                    busy: false,
                    ephemeral,
                    runner_group_id: 1,
                    labels,
                    scope,
                    last_seen: None,
                },
            );
            let server = st.runner_url.clone().unwrap_or_default();
            ok_json(
                StatusCode::CREATED,
                json!({"AgentId": id, "AgentName": name, "ServerUrl": server, "Ephemeral": ephemeral}),
            )
        }
        ["agents", id, action] if m == Method::POST => {
            let Some(id) = id
                .parse::<u64>()
                .ok()
                .filter(|id| st.runners.contains_key(id))
            else {
                return error(StatusCode::NOT_FOUND, "runner not found");
            };
            match *action {
                "online" | "offline" => {
                    if let Some(r) = st.runners.get_mut(&id) {
                        r.status = (*action).into();
                        r.last_seen = Some(Instant::now());
                    }
                    ok_json(StatusCode::OK, json!({}))
                }
                "acquire" => acquire(st, id),
                _ => error(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        // The runner renews the job it holds (the real one renews its job request's
        // lock); a job that is no longer in progress (its runner was given up for
        // lost) answers 409.
        ["jobs", id, "renew"] if m == Method::POST => {
            let Some(job) = id.parse::<u64>().ok().and_then(|id| st.jobs.get(&id)) else {
                return error(StatusCode::NOT_FOUND, "job not found");
            };
            if job.status != JobStatus::InProgress {
                return error(StatusCode::CONFLICT, "job is not in progress");
            }
            let runner = job.runner_name.clone();
            for r in st
                .runners
                .values_mut()
                .filter(|r| Some(&r.name) == runner.as_ref())
            {
                r.last_seen = Some(Instant::now());
            }
            ok_json(StatusCode::OK, json!({}))
        }
        ["jobs", id, "complete"] if m == Method::POST => {
            let Some(job) = id.parse::<u64>().ok().and_then(|id| st.jobs.get_mut(&id)) else {
                return error(StatusCode::NOT_FOUND, "job not found");
            };
            if job.status != JobStatus::InProgress {
                return error(StatusCode::CONFLICT, "job is not in progress");
            }
            job.status = JobStatus::Completed;
            job.completed_at = Some(Instant::now());
            job.exit_code = v.get("exit_code").and_then(Value::as_i64).map(|c| c as i32);
            job.conclusion = Some(match job.exit_code {
                Some(0) => Conclusion::Success,
                Some(-1) => Conclusion::Cancelled,
                _ => Conclusion::Failure,
            });
            job.output = v
                .get("output")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let runner = job.runner_name.clone();
            // The Actions service de-registers an ephemeral runner after its job.
            st.runners
                .retain(|_, r| !(Some(&r.name) == runner.as_ref() && r.ephemeral));
            for r in st
                .runners
                .values_mut()
                .filter(|r| Some(&r.name) == runner.as_ref())
            {
                r.busy = false;
            }
            ok_json(StatusCode::OK, json!({}))
        }
        _ => error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

fn acquire(st: &mut State, id: u64) -> Response {
    let renew_ms = (st.runner_timeout() / 4).as_millis().max(1) as u64;
    let Some(runner) = st.runners.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "runner not found");
    };
    // Polling is the listener's heartbeat: a runner given up for lost that polls
    // again is back online.
    runner.last_seen = Some(Instant::now());
    runner.status = "online".into();
    let runner = runner.clone();
    if runner.busy {
        return error(StatusCode::CONFLICT, "runner is already running a job");
    }
    let job = st.jobs.values_mut().find(|j| {
        j.status == JobStatus::Queued
            && j.repo
                .split_once('/')
                .is_some_and(|(o, r)| runner.scope.serves(o, r))
            && j.labels.iter().all(|l| runner.labels.contains(l))
    });
    let Some(job) = job else {
        return StatusCode::NO_CONTENT.into_response();
    };
    job.status = JobStatus::InProgress;
    job.runner_name = Some(runner.name.clone());
    job.claims += 1;
    job.started_at = Some(Instant::now());
    let resp = json!({"id": job.id, "script": job.script, "renew_ms": renew_ms});
    if let Some(r) = st.runners.get_mut(&id) {
        r.busy = true;
    }
    ok_json(StatusCode::OK, resp)
}
