//! What the orchestrator knows of its loops now: each loop's state, VM, counts and
//! last error, folded from the loops' events and from supervision, with totals;
//! the documented `status --json` document and the one-line summary. It keeps the
//! metrics current but neither serves them (`metrics`) nor answers (`control`).

use std::collections::VecDeque;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use crate::types::status::{LoopEvent, Outcome};

/// The version of the `status --json` document; bumped on any incompatible change.
pub const STATUS_VERSION: u32 = 1;

/// Boot times kept for the median.
const BOOTS_KEPT: usize = 1000;
/// The longest last error kept (a console tail can follow the first line).
const ERROR_CHARS: usize = 500;

/// A loop's state, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not started yet (starts are staggered).
    Waiting,
    /// Its process is starting (backend check, GitHub, the loop directory).
    Starting,
    /// Minting a runner credential (or waiting for the registration budget).
    Registering,
    /// A VM was started; its runner is not up yet.
    Booting,
    /// The runner is up and waits for a job.
    Idle,
    /// A job runs.
    Busy,
    /// Its VM is being stopped (`-k`, a signal, `drain`).
    Draining,
    /// Waiting before the next try (a failed VM, or a loop restart).
    BackingOff,
    /// Failed too often; not restarted.
    GivenUp,
    /// Ended as asked (`-r`, `-k`, a valid `.brk`).
    Ended,
}

impl State {
    /// Every state, for the `ghrm_loops{state}` gauge.
    pub const ALL: [State; 10] = [
        State::Waiting,
        State::Starting,
        State::Registering,
        State::Booting,
        State::Idle,
        State::Busy,
        State::Draining,
        State::BackingOff,
        State::GivenUp,
        State::Ended,
    ];

    /// The label and `status` word.
    pub fn name(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Starting => "starting",
            State::Registering => "registering",
            State::Booting => "booting",
            State::Idle => "idle",
            State::Busy => "busy",
            State::Draining => "draining",
            State::BackingOff => "backing_off",
            State::GivenUp => "given_up",
            State::Ended => "ended",
        }
    }
}

/// One loop in the `status` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopStatus {
    /// Loop number (1…N).
    #[serde(rename = "loop")]
    pub index: u32,
    /// Its state.
    pub state: State,
    /// Since when (seconds since the Unix epoch).
    pub since: u64,
    /// Its current (or last) VM.
    pub vm: Option<String>,
    /// That VM's runner at GitHub (the same name).
    pub runner: Option<String>,
    /// VMs this loop ran to their end.
    pub iterations: u64,
    /// Of those, the ones whose runner came up and ran (jobs).
    pub jobs: u64,
    /// Failed VMs or loop deaths since the last success.
    pub failures_in_row: u32,
    /// Times the orchestrator started this loop's process again.
    pub restarts: u32,
    /// The last failure, first line, at most 500 characters (guest text may be in it:
    /// show it through a printable filter).
    pub last_error: Option<String>,
    /// The loop's process said why it ends (its `failed` event) since it started.
    #[serde(skip)]
    said_why: bool,
}

/// Totals of all loops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Jobs run (VMs whose runner came up and that ended by themselves).
    pub jobs: u64,
    /// VMs started.
    pub boots: u64,
    /// Median VM start → runner up of the last 1000 boots, seconds.
    pub boot_median_seconds: Option<f64>,
}

/// The `status --json` document (see README "status").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// [`STATUS_VERSION`].
    pub version: u32,
    /// The prefix (-p).
    pub prefix: String,
    /// The orchestrator's pid.
    pub pid: u32,
    /// When it started (seconds since the Unix epoch).
    pub started: u64,
    /// `drain` or a signal asked it to stop.
    pub draining: bool,
    /// One entry per loop.
    pub loops: Vec<LoopStatus>,
    /// Totals.
    pub totals: Totals,
}

/// The loops' state and the metrics that follow it.
pub struct Fleet {
    prefix: String,
    started: u64,
    draining: bool,
    loops: Vec<LoopStatus>,
    jobs: u64,
    boots: u64,
    boot_ms: VecDeque<u64>,
    /// The Prometheus metrics kept in step.
    pub metrics: Metrics,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The first line of `e`, at most [`ERROR_CHARS`] characters.
fn short(e: &str) -> String {
    let line = e.lines().next().unwrap_or_default();
    match line.char_indices().nth(ERROR_CHARS) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

impl Fleet {
    /// `n` loops of `prefix`, none started.
    pub fn new(prefix: &str, n: u32, metrics: Metrics) -> Fleet {
        let t = now();
        let f = Fleet {
            prefix: prefix.to_string(),
            started: t,
            draining: false,
            loops: (1..=n)
                .map(|index| LoopStatus {
                    index,
                    state: State::Waiting,
                    since: t,
                    vm: None,
                    runner: None,
                    iterations: 0,
                    jobs: 0,
                    failures_in_row: 0,
                    restarts: 0,
                    last_error: None,
                    said_why: false,
                })
                .collect(),
            jobs: 0,
            boots: 0,
            boot_ms: VecDeque::new(),
            metrics,
        };
        f.count_states();
        f
    }

    fn slot(&mut self, index: u32) -> Option<&mut LoopStatus> {
        self.loops.iter_mut().find(|l| l.index == index)
    }

    fn set(&mut self, index: u32, state: State) {
        if let Some(l) = self.slot(index) {
            if l.state != state {
                l.state = state;
                l.since = now();
            }
        }
        self.count_states();
    }

    fn count_states(&self) {
        for s in State::ALL {
            let n = self.loops.iter().filter(|l| l.state == s).count();
            self.metrics.loops(s, n as i64);
        }
    }

    /// Loop `index`'s process was started; `restart` when it had run before.
    pub fn started(&mut self, index: u32, restart: bool) {
        if let Some(l) = self.slot(index) {
            l.said_why = false;
            if restart {
                l.restarts += 1;
            }
        }
        if restart {
            self.metrics.loop_restarts.inc();
        }
        self.set(index, State::Starting);
    }

    /// Loop `index`'s process died and will be started again after a wait.
    pub fn died(&mut self, index: u32, why: &str) {
        if let Some(l) = self.slot(index) {
            l.failures_in_row += 1;
            // The loop's own last words say more than its exit status.
            if !l.said_why {
                l.last_error = Some(short(why));
            }
        }
        self.set(index, State::BackingOff);
    }

    /// Loop `index` was given up, for `why`.
    pub fn given_up(&mut self, index: u32, why: &str) {
        if let Some(l) = self.slot(index) {
            l.last_error = Some(match (&l.last_error, l.said_why) {
                (Some(last), true) => short(&format!("{why}; last: {last}")),
                _ => short(why),
            });
        }
        self.set(index, State::GivenUp);
    }

    /// Loop `index` ended as asked.
    pub fn ended(&mut self, index: u32) {
        self.set(index, State::Ended);
    }

    /// Stopping was asked for: every loop still running drains.
    pub fn drain(&mut self) {
        self.draining = true;
        let live: Vec<u32> = self
            .loops
            .iter()
            .filter(|l| !matches!(l.state, State::GivenUp | State::Ended))
            .map(|l| l.index)
            .collect();
        for i in live {
            self.set(i, State::Draining);
        }
    }

    /// Fold one event of loop `index` in.
    pub fn apply(&mut self, index: u32, e: LoopEvent) {
        if let LoopEvent::Github {
            route,
            code,
            remaining,
        } = &e
        {
            self.github(route, *code, *remaining);
            return;
        }
        let draining = self.draining;
        let next = match e {
            LoopEvent::Minting => Some(State::Registering),
            LoopEvent::Registered => {
                self.metrics.registrations.inc();
                None
            }
            LoopEvent::Booting { vm, turnaround_ms } => {
                self.boots += 1;
                if let Some(ms) = turnaround_ms {
                    self.metrics.turnaround.observe(ms as f64 / 1000.0);
                }
                if let Some(l) = self.slot(index) {
                    l.runner = Some(vm.clone());
                    l.vm = Some(vm);
                }
                Some(State::Booting)
            }
            LoopEvent::Up { boot_ms, .. } => {
                self.metrics.boot.observe(boot_ms as f64 / 1000.0);
                if self.boot_ms.len() == BOOTS_KEPT {
                    self.boot_ms.pop_front();
                }
                self.boot_ms.push_back(boot_ms);
                Some(State::Idle)
            }
            LoopEvent::Busy { .. } => Some(State::Busy),
            LoopEvent::Draining { .. } => Some(State::Draining),
            LoopEvent::Ended {
                vm,
                outcome,
                lifetime_ms,
                error,
            } => {
                self.metrics.iteration(outcome);
                if vm.is_some() {
                    self.metrics.lifetime.observe(lifetime_ms as f64 / 1000.0);
                }
                let job = outcome == Outcome::JobDone;
                if job {
                    self.jobs += 1;
                }
                if let Some(l) = self.slot(index) {
                    if vm.is_some() {
                        l.iterations += 1;
                    }
                    if job {
                        l.jobs += 1;
                    }
                    match &error {
                        Some(err) => {
                            l.failures_in_row += 1;
                            l.last_error = Some(short(err));
                        }
                        None => l.failures_in_row = 0,
                    }
                }
                // Between VMs the loop mints again (or ends).
                Some(State::Registering)
            }
            LoopEvent::BackingOff { .. } => Some(State::BackingOff),
            LoopEvent::Failed { error } => {
                if let Some(l) = self.slot(index) {
                    l.last_error = Some(short(&error));
                    l.said_why = true;
                }
                None
            }
            LoopEvent::Github { .. } => None,
        };
        if let Some(s) = next {
            // A draining loop stays draining until it is gone.
            self.set(index, if draining { State::Draining } else { s });
        }
    }

    /// One answer from GitHub (a loop's or our own).
    pub fn github(&mut self, route: &str, code: u16, remaining: Option<u64>) {
        self.metrics.github(route, code, remaining);
    }

    /// The `status` document now.
    pub fn status(&self) -> Status {
        let mut boots: Vec<u64> = self.boot_ms.iter().copied().collect();
        boots.sort_unstable();
        let median = match boots.len() {
            0 => None,
            n if n % 2 == 1 => Some(boots[n / 2] as f64 / 1000.0),
            n => Some((boots[n / 2 - 1] + boots[n / 2]) as f64 / 2000.0),
        };
        Status {
            version: STATUS_VERSION,
            prefix: self.prefix.clone(),
            pid: std::process::id(),
            started: self.started,
            draining: self.draining,
            loops: self.loops.clone(),
            totals: Totals {
                jobs: self.jobs,
                boots: self.boots,
                boot_median_seconds: median,
            },
        }
    }

    /// One line: how many loops are in which state, and the totals (systemd's STATUS=).
    pub fn summary(&self) -> String {
        summary(&self.status())
    }
}

/// One line for `status`: the loops by state and the totals.
pub fn summary(s: &Status) -> String {
    let mut parts = vec![];
    for st in State::ALL {
        let n = s.loops.iter().filter(|l| l.state == st).count();
        if n > 0 {
            parts.push(format!("{n} {}", st.name().replace('_', " ")));
        }
    }
    let median = s
        .totals
        .boot_median_seconds
        .map(|m| format!(", median boot {m:.1}s"))
        .unwrap_or_default();
    format!(
        "{} loop(s): {}; {} job(s), {} boot(s){median}{}",
        s.loops.len(),
        parts.join(", "),
        s.totals.jobs,
        s.totals.boots,
        if s.draining { "; draining" } else { "" }
    )
}

/// `12s`, `5m`, `3h`, `2d`.
fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `status` for a person: the summary line and one row per loop (guest-made
/// text made printable).
pub fn table(s: &Status) -> String {
    use crate::types::text::printable;
    let t = now();
    let mut out = format!(
        "orchestrator {} (pid {}, up {}): {}\n",
        printable(&s.prefix),
        s.pid,
        ago(t.saturating_sub(s.started)),
        summary(s)
    );
    out.push_str(&format!(
        "{:<5} {:<12} {:>6}  {:<32} {:>5} {:>5} {:>5} {:>8}  {}\n",
        "LOOP", "STATE", "SINCE", "VM", "ITER", "JOBS", "FAILS", "RESTARTS", "LAST ERROR"
    ));
    for l in &s.loops {
        out.push_str(&format!(
            "{:<5} {:<12} {:>6}  {:<32} {:>5} {:>5} {:>5} {:>8}  {}\n",
            l.index,
            l.state.name(),
            ago(t.saturating_sub(l.since)),
            l.vm.as_deref().map(printable).unwrap_or_else(|| "-".into()),
            l.iterations,
            l.jobs,
            l.failures_in_row,
            l.restarts,
            l.last_error
                .as_deref()
                .map(printable)
                .unwrap_or_else(|| "-".into()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        Fleet::new("p", 2, Metrics::new())
    }

    #[test]
    fn a_loop_goes_through_its_states_and_counts() {
        let mut f = fleet();
        f.started(1, false);
        f.apply(1, LoopEvent::Minting);
        f.apply(
            1,
            LoopEvent::Booting {
                vm: "p-1-a".into(),
                turnaround_ms: None,
            },
        );
        assert_eq!(f.status().loops[0].state, State::Booting);
        f.apply(
            1,
            LoopEvent::Up {
                vm: "p-1-a".into(),
                boot_ms: 3000,
            },
        );
        assert_eq!(f.status().loops[0].state, State::Idle);
        f.apply(1, LoopEvent::Busy { vm: "p-1-a".into() });
        assert_eq!(f.status().loops[0].state, State::Busy);
        f.apply(
            1,
            LoopEvent::Ended {
                vm: Some("p-1-a".into()),
                outcome: Outcome::JobDone,
                lifetime_ms: 9000,
                error: None,
            },
        );
        f.apply(
            1,
            LoopEvent::Booting {
                vm: "p-1-b".into(),
                turnaround_ms: Some(200),
            },
        );
        f.apply(
            1,
            LoopEvent::Up {
                vm: "p-1-b".into(),
                boot_ms: 5000,
            },
        );
        let s = f.status();
        let l = &s.loops[0];
        assert_eq!(
            (l.state, l.vm.as_deref(), l.iterations, l.jobs),
            (State::Idle, Some("p-1-b"), 1, 1)
        );
        assert_eq!(s.loops[1].state, State::Waiting);
        assert_eq!(
            (s.totals.jobs, s.totals.boots, s.totals.boot_median_seconds),
            (1, 2, Some(4.0))
        );
        assert!(f
            .summary()
            .starts_with("2 loop(s): 1 waiting, 1 idle; 1 job(s), 2 boot(s)"));
    }

    #[test]
    fn failures_are_counted_until_a_success_and_errors_are_cut() {
        let mut f = fleet();
        let long = format!("{}\nconsole tail", "x".repeat(2000));
        for _ in 0..2 {
            f.apply(
                2,
                LoopEvent::Ended {
                    vm: Some("p-2-a".into()),
                    outcome: Outcome::BootTimeout,
                    lifetime_ms: 1,
                    error: Some(long.clone()),
                },
            );
        }
        let l = &f.status().loops[1];
        assert_eq!(l.failures_in_row, 2);
        let e = l.last_error.as_deref().unwrap();
        assert!(e.chars().count() <= ERROR_CHARS + 1 && !e.contains("console"));
        f.apply(
            2,
            LoopEvent::Ended {
                vm: Some("p-2-b".into()),
                outcome: Outcome::JobDone,
                lifetime_ms: 1,
                error: None,
            },
        );
        assert_eq!(f.status().loops[1].failures_in_row, 0);
        // A dying loop's own last words are kept over its exit status.
        f.started(2, true);
        f.apply(
            2,
            LoopEvent::Failed {
                error: "GitHub failure: 401".into(),
            },
        );
        f.died(2, "loop process died (exit status: 1)");
        let l = &f.status().loops[1];
        assert_eq!(
            (l.state, l.last_error.as_deref(), l.restarts),
            (State::BackingOff, Some("GitHub failure: 401"), 1)
        );
        f.started(2, true);
        f.died(2, "loop process died (signal: 9)");
        assert_eq!(
            f.status().loops[1].last_error.as_deref(),
            Some("loop process died (signal: 9)")
        );
        f.given_up(2, "gone");
        assert_eq!(f.status().loops[1].state, State::GivenUp);
        // Draining leaves given-up loops alone and holds the others.
        f.drain();
        f.apply(1, LoopEvent::Minting);
        let s = f.status();
        assert_eq!(
            (s.loops[0].state, s.loops[1].state),
            (State::Draining, State::GivenUp)
        );
        assert!(s.draining);
    }
}
