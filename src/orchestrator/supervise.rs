//! Supervision of the N loops: staggered starts, restarts with back-off, giving
//! up, and the periodic registration clean-up. It must not stop loops itself on
//! a signal (`shutdown` does) nor know how a loop is started (`launch`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Child;
use tokio::sync::watch;
use tracing::{info, warn};

use super::fleet::Fleet;
use super::launch::Launcher;
use super::reconcile::Reconciler;
use super::shutdown::shutdown;
use super::sweep::clear_dir;
use super::{io, OrchestratorConfig, OrchestratorError};
use crate::backend::Backend;
use crate::types::names::loop_dir;
use crate::types::status::{LoopEvent, MAX_EVENT_LINE};

/// A loop that ran this long before failing starts its failure count afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(600);
/// Longest wait before restarting a failed loop.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(300);
/// Failures in a row (no healthy run between them) before a loop is given up. With
/// the loop's own limit of 5 failed VMs, a broken image registers at most ~25
/// runners before everything stops, instead of one every few seconds forever.
const MAX_LOOP_FAILURES: u32 = 5;
/// Supervision tick.
const TICK: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub(super) enum LoopState {
    /// Not started yet (staggering) or waiting for a restart.
    Waiting {
        not_before: Instant,
    },
    Running {
        child: Child,
        since: Instant,
    },
    Done,
    Failed(String),
}

pub(super) struct LoopSlot {
    pub(super) index: u32,
    pub(super) dir: Option<PathBuf>,
    pub(super) state: LoopState,
    failures: u32,
    started_once: bool,
}

/// Does loop directory `dir` hold a ready mark (`*.tkn`)?
fn has_tkn(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name().to_str().is_some_and(|n| n.ends_with(".tkn"))
                && e.file_type().is_ok_and(|t| t.is_file())
        })
    })
}

/// What supervision shares with the control socket and the metrics.
pub(super) struct Shared {
    /// The loops' state.
    pub(super) fleet: Arc<Mutex<Fleet>>,
    /// Set by a signal or `drain`: stop every loop.
    pub(super) stop: watch::Receiver<bool>,
}

impl Shared {
    /// The fleet's one-line summary (systemd's `STATUS=`).
    fn summary(&self) -> String {
        self.fleet.lock().map(|f| f.summary()).unwrap_or_default()
    }

    fn with(&self, f: impl FnOnce(&mut Fleet)) {
        if let Ok(mut fleet) = self.fleet.lock() {
            f(&mut fleet);
        }
    }
}

pub(super) async fn supervise(
    cfg: &OrchestratorConfig,
    root: Option<&Path>,
    backend: &Backend,
    launcher: Launcher,
    mut reconciler: Option<&mut Reconciler>,
    shared: Shared,
) -> Result<(), OrchestratorError> {
    let (prefix, rcfg) = (cfg.prefix.as_str(), &cfg.runner);
    // The environment root exists exactly when loops are isolated.
    let isolation = root.is_some();
    let every = Duration::from_secs(cfg.reconcile);
    let mut next_reconcile = Instant::now() + every;

    let mut slots = Vec::new();
    for i in 1..=cfg.runners {
        let dir = match root {
            Some(r) => {
                let d = r.join(loop_dir(prefix, i));
                protocol::safefs::create_private_dir(&d)
                    .map_err(io(format!("create {}", d.display())))?;
                Some(d)
            }
            None => None,
        };
        slots.push(LoopSlot {
            index: i,
            dir,
            state: LoopState::Waiting {
                not_before: Instant::now(),
            },
            failures: 0,
            started_once: false,
        });
    }
    info!(
        loops = cfg.runners,
        runtime = backend.runtime().name(),
        "starting"
    );

    let mut stop = shared.stop.clone();
    // Staggering: loop i+1 starts when loop i has its .tkn (bounded), or after -s without isolation.
    let stagger = if isolation {
        Duration::from_secs(rcfg.boot_timeout)
    } else {
        Duration::from_secs(cfg.sleep)
    };
    let mut next_start: usize = 0;
    let mut gate: Option<(usize, Instant)> = None;
    let mut config_error = false;
    loop {
        if *stop.borrow() {
            break;
        }
        // systemd (notify.rs): pinged from this loop, so a wedged supervision stops pinging.
        super::notify::watchdog();
        super::notify::status(|| shared.summary());
        // Start the next loop when the previous one is up, or its wait is over.
        if next_start < slots.len() {
            let open = match gate {
                None => true,
                Some((prev, since)) => {
                    let elapsed = since.elapsed();
                    let up = isolation && slots[prev].dir.as_deref().is_some_and(has_tkn);
                    let gone = !matches!(slots[prev].state, LoopState::Running { .. });
                    if elapsed >= stagger && isolation && !up && !gone {
                        warn!(
                            "loop {} has no ready runner after {}s; starting loop {} anyway",
                            slots[prev].index,
                            stagger.as_secs(),
                            slots[next_start].index
                        );
                    }
                    up || gone || elapsed >= stagger
                }
            };
            if open {
                let s = &mut slots[next_start];
                s.state = LoopState::Waiting {
                    not_before: Instant::now(),
                };
                start(&launcher, s, &shared)?;
                gate = Some((next_start, Instant::now()));
                next_start += 1;
                // systemd (notify.rs): READY once the first loop runs; a long stagger is not start-up.
                super::notify::ready(&shared.summary());
            }
        }
        for s in slots.iter_mut().take(next_start) {
            match &mut s.state {
                LoopState::Waiting { not_before }
                    if s.started_once && Instant::now() >= *not_before =>
                {
                    start(&launcher, s, &shared)?
                }
                LoopState::Running { child, since } => {
                    let Ok(Some(st)) = child.try_wait() else {
                        continue;
                    };
                    let ran = since.elapsed();
                    match st.code() {
                        Some(0) => {
                            info!("loop {} ended", s.index);
                            shared.with(|f| f.ended(s.index));
                            s.state = LoopState::Done;
                        }
                        Some(2) => {
                            config_error = true;
                            let why =
                                format!("loop {} refused its configuration (exit 2)", s.index);
                            shared.with(|f| f.given_up(s.index, &why));
                            s.state = LoopState::Failed(why);
                        }
                        _ => {
                            s.failures = if ran >= HEALTHY_RUN {
                                1
                            } else {
                                s.failures + 1
                            };
                            if s.failures >= MAX_LOOP_FAILURES {
                                let why = format!(
                                    "loop {} failed {} times in a row ({st} after {}s, last); given up",
                                    s.index,
                                    s.failures,
                                    ran.as_secs()
                                );
                                warn!("{why}");
                                shared.with(|f| f.given_up(s.index, &why));
                                s.state = LoopState::Failed(why);
                            } else {
                                let backoff = Duration::from_secs(1 << s.failures.min(8))
                                    .min(MAX_RESTART_BACKOFF);
                                warn!(
                                    "loop {} died ({st}) after {}s; restarting in {}s",
                                    s.index,
                                    ran.as_secs(),
                                    backoff.as_secs()
                                );
                                shared.with(|f| {
                                    f.died(s.index, &format!("loop process died ({st})"))
                                });
                                if let Some(d) = &s.dir {
                                    // Files of the dead loop's last VM are stale now.
                                    clear_dir(d);
                                }
                                s.state = LoopState::Waiting {
                                    not_before: Instant::now() + backoff,
                                };
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if next_start == slots.len()
            && slots
                .iter()
                .all(|s| matches!(s.state, LoopState::Done | LoopState::Failed(_)))
        {
            break;
        }
        if Instant::now() >= next_reconcile {
            if let Some(r) = reconciler.as_mut() {
                // Never judge registrations against an unknown set of live VMs.
                // systemd (notify.rs): a rate-limited pass keeps the watchdog quiet, within a bound.
                super::notify::keep_alive(super::RECONCILE_LIMIT, async {
                    match backend.list(prefix).await {
                        Ok(live) => r.pass(&live, false).await,
                        Err(e) => warn!("cannot list VMs; skipping the registration clean-up: {e}"),
                    }
                })
                .await;
            }
            next_reconcile = Instant::now() + every;
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    // systemd (notify.rs): the stop has begun; TimeoutStopSec= runs from here.
    super::notify::stopping();
    if *stop.borrow() {
        info!("stopping: asking every loop to terminate");
        shared.with(Fleet::drain);
        shutdown(&mut slots, rcfg).await;
        return Ok(());
    }
    let failed: Vec<String> = slots
        .iter()
        .filter_map(|s| match &s.state {
            LoopState::Failed(w) => Some(w.clone()),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        info!("all loops ended");
        Ok(())
    } else if config_error {
        Err(OrchestratorError::Usage(failed.join("; ")))
    } else {
        Err(OrchestratorError::LoopsFailed(failed.join("; ")))
    }
}

fn start(launcher: &Launcher, s: &mut LoopSlot, shared: &Shared) -> Result<(), OrchestratorError> {
    let mut child = launcher
        .spawn(s)
        .map_err(io(format!("start {}", launcher.runner.display())))?;
    info!("loop {} started (pid {})", s.index, child.id().unwrap_or(0));
    shared.with(|f| f.started(s.index, s.started_once));
    if let Some(out) = child.stdout.take() {
        tokio::spawn(read_events(s.index, out, shared.fleet.clone()));
    }
    s.state = LoopState::Running {
        child,
        since: Instant::now(),
    };
    s.started_once = true;
    Ok(())
}

/// Fold loop `index`'s event lines into the fleet until its pipe closes. Lines
/// longer than [`MAX_EVENT_LINE`] and anything that is not an event are skipped.
async fn read_events(index: u32, mut out: tokio::process::ChildStdout, fleet: Arc<Mutex<Fleet>>) {
    let mut line: Vec<u8> = Vec::new();
    let mut skipping = false;
    let mut buf = [0u8; 8192];
    while let Ok(n) = out.read(&mut buf).await {
        if n == 0 {
            break;
        }
        for part in buf[..n].split_inclusive(|b| *b == b'\n') {
            let complete = part.ends_with(b"\n");
            if !skipping {
                line.extend_from_slice(part);
            }
            if line.len() > MAX_EVENT_LINE {
                line.clear();
                skipping = true;
            }
            if complete {
                let event = std::str::from_utf8(&line).ok().and_then(LoopEvent::parse);
                if let (Some(e), Ok(mut f)) = (event, fleet.lock()) {
                    f.apply(index, e);
                }
                line.clear();
                skipping = false;
            }
        }
    }
}
