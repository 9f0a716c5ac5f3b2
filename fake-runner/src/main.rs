//! A test double of the GitHub actions runner, installed as `bin/Runner.Listener`
//! beside `run.sh` and `config.sh` wrappers, exactly where the real one lives.
//!
//! It takes what the real runner takes (`run` with the JIT config in
//! `ACTIONS_RUNNER_INPUT_JITCONFIG`, or `configure --url --name --labels … ` with
//! `ACTIONS_RUNNER_INPUT_TOKEN`), writes `.runner`, then talks to the local forge's
//! small runner protocol (`/_fake/…`) at the `ServerUrl` of its configuration:
//! goes online, claims one job, runs its script with `sh -c` between the job hooks
//! (`ACTIONS_RUNNER_HOOK_JOB_STARTED/COMPLETED`), reports exit code and output, and
//! exits 0 as an ephemeral runner does. SIGTERM/SIGINT: idle → exit 0 at once;
//! busy → the job is cancelled (SIGTERM to its process group) and reported.
//! Polling is its heartbeat while idle; while busy it renews the job every
//! `renew_ms` (the forge's word), and a job the forge gave up (409: the runner
//! was silent too long) is cancelled and not reported: exit 1.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[allow(non_snake_case)]
struct RunnerSettings {
    AgentId: u64,
    AgentName: String,
    ServerUrl: String,
    #[serde(default)]
    Ephemeral: bool,
}

#[derive(Deserialize)]
struct Job {
    id: u64,
    script: String,
    /// How often to renew the job (the forge fails it after four times as long).
    #[serde(default)]
    renew_ms: Option<u64>,
}

fn die(msg: &str) -> ! {
    eprintln!("Runner.Listener (fake): {msg}");
    std::process::exit(1) // TerminatedError
}

/// Minimal HTTP/1.1 POST of JSON to `url` (`http://host:port/path`).
fn post(url: &str, body: &serde_json::Value) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or(format!("not an http URL: {url}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let mut s = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: fake-actions-runner\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| e.to_string())?;
    let resp = String::from_utf8_lossy(&resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed HTTP response")?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn b64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| e.to_string())
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `configure`: exchange the registration token for a runner at the forge.
fn configure(args: &[String]) -> ! {
    let token = std::env::var("ACTIONS_RUNNER_INPUT_TOKEN")
        .ok()
        .or_else(|| arg(args, "--token"))
        .unwrap_or_else(|| die("no --token"));
    let url = arg(args, "--url").unwrap_or_else(|| die("no --url"));
    let name = arg(args, "--name").unwrap_or_else(|| die("no --name"));
    let labels = arg(args, "--labels").unwrap_or_default();
    if std::path::Path::new(".runner").exists() {
        die("Cannot configure the runner because it is already configured.");
    }
    // The server is the scheme and authority of the URL.
    let base = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
    let body = serde_json::json!({
        "url": url, "token": token, "name": name,
        "labels": labels.split(',').filter(|l| !l.is_empty()).collect::<Vec<_>>(),
        "ephemeral": args.iter().any(|a| a == "--ephemeral"),
    });
    match post(&format!("{base}/_fake/runner-registration"), &body) {
        Ok((201, b)) => {
            std::fs::write(".runner", b).unwrap_or_else(|e| die(&format!(".runner: {e}")));
            println!("√ Runner successfully added");
            std::process::exit(0)
        }
        Ok((s, b)) => die(&format!("registration refused ({s}): {b}")),
        Err(e) => die(&e),
    }
}

fn settings() -> RunnerSettings {
    if let Ok(jit) = std::env::var("ACTIONS_RUNNER_INPUT_JITCONFIG") {
        // SAFETY: single-threaded at this point; nothing else reads the environment.
        unsafe { std::env::remove_var("ACTIONS_RUNNER_INPUT_JITCONFIG") };
        let outer: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&b64(&jit).unwrap_or_else(|e| die(&format!("JIT config: {e}"))))
                .unwrap_or_else(|e| die(&format!("JIT config: {e}")));
        let runner = outer
            .get(".runner")
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| die("JIT config has no .runner"));
        let bytes = b64(runner).unwrap_or_else(|e| die(&format!(".runner: {e}")));
        let _ = std::fs::write(".runner", &bytes);
        serde_json::from_slice(&bytes).unwrap_or_else(|e| die(&format!(".runner: {e}")))
    } else {
        let bytes = std::fs::read(".runner").unwrap_or_else(|_| die("Runner is not configured."));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| die(&format!(".runner: {e}")))
    }
}

fn hook(var: &str) {
    if let Ok(path) = std::env::var(var) {
        let ok = Command::new("sh")
            .arg("-e")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("Runner.Listener (fake): hook {path} failed");
        }
    }
}

fn run_job(s: &RunnerSettings, job: Job) -> (i32, String) {
    hook("ACTIONS_RUNNER_HOOK_JOB_STARTED");
    let out = tempfile_path(job.id);
    let file = std::fs::File::create(&out).unwrap_or_else(|e| die(&format!("{out}: {e}")));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(&job.script)
        .env("RUNNER_NAME", &s.AgentName)
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_JOB", job.id.to_string())
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap_or_else(|e| die(&e.to_string())))
        .stderr(file);
    // SAFETY: setpgid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| die(&format!("sh: {e}")));
    let pgid = child.id() as i32;
    let mut cancelled = false;
    let mut lost = false;
    let renew = format!(
        "{}/_fake/jobs/{}/renew",
        s.ServerUrl.trim_end_matches('/'),
        job.id
    );
    let every = Duration::from_millis(job.renew_ms.unwrap_or(1000).max(50));
    let mut renewed = std::time::Instant::now();
    let code = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code().unwrap_or(128);
        }
        if renewed.elapsed() >= every && !lost {
            renewed = std::time::Instant::now();
            match post(&renew, &serde_json::json!({})) {
                Ok((200, _)) => {}
                Ok((404 | 409, _)) => {
                    eprintln!("Runner.Listener (fake): the server gave the job up; cancelling it");
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(-pgid, libc::SIGTERM) };
                    lost = true;
                }
                Ok((st, b)) => eprintln!("Runner.Listener (fake): renew failed ({st}): {b}"),
                Err(e) => eprintln!("Runner.Listener (fake): renew failed: {e}"),
            }
        }
        if STOP.load(Ordering::SeqCst) && !cancelled && !lost {
            eprintln!("Runner.Listener (fake): cancelling the job");
            // SAFETY: plain kill(2).
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            cancelled = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    hook("ACTIONS_RUNNER_HOOK_JOB_COMPLETED");
    let mut output = std::fs::read(&out).unwrap_or_default();
    output.truncate(64 * 1024);
    let _ = std::fs::remove_file(&out);
    if lost {
        die(&format!("job {} was lost at the server", job.id));
    }
    let code = if cancelled { -1 } else { code };
    (code, String::from_utf8_lossy(&output).into_owned())
}

fn tempfile_path(id: u64) -> String {
    format!(
        "{}/fake-runner-job-{}-{id}.log",
        std::env::temp_dir().display(),
        std::process::id()
    )
}

fn run() -> ! {
    let s = settings();
    let agent = format!(
        "{}/_fake/agents/{}",
        s.ServerUrl.trim_end_matches('/'),
        s.AgentId
    );
    match post(&format!("{agent}/online"), &serde_json::json!({})) {
        Ok((200, _)) => println!("√ Connected to GitHub\nListening for Jobs"),
        Ok((st, b)) => die(&format!("session refused ({st}): {b}")),
        Err(e) => die(&e),
    }
    let job = loop {
        if STOP.load(Ordering::SeqCst) {
            let _ = post(&format!("{agent}/offline"), &serde_json::json!({}));
            println!("Exiting...");
            std::process::exit(0);
        }
        match post(&format!("{agent}/acquire"), &serde_json::json!({})) {
            Ok((200, b)) => {
                break serde_json::from_str::<Job>(&b).unwrap_or_else(|e| die(&e.to_string()))
            }
            Ok((204, _)) => {}
            // Deleted at the forge (e.g. the host removed an idle runner).
            Ok((404, _)) => die("the runner was deleted at the server"),
            Ok((st, b)) => die(&format!("acquire failed ({st}): {b}")),
            Err(e) => eprintln!("Runner.Listener (fake): {e}; retrying"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("Running job: {}", job.id);
    let id = job.id;
    let (code, output) = run_job(&s, job);
    let body = serde_json::json!({"exit_code": code, "output": output, "runner_name": s.AgentName});
    match post(
        &format!(
            "{}/_fake/jobs/{id}/complete",
            s.ServerUrl.trim_end_matches('/')
        ),
        &body,
    ) {
        Ok((200, _)) => println!(
            "Job {id} completed with result: {}",
            if code == 0 { "Succeeded" } else { "Failed" }
        ),
        Ok((st, b)) => die(&format!("completion refused ({st}): {b}")),
        Err(e) => die(&e),
    }
    let _ = std::fs::remove_file(".runner");
    std::process::exit(0)
}

fn main() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => run(),
        Some("configure") => configure(&args[1..]),
        _ => die("usage: Runner.Listener run|configure [options]"),
    }
}
