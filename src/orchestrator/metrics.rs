//! The Prometheus metrics of an orchestrator and its loops (`--metrics ADDR`,
//! README "Metrics"), kept with `prometheus-client` and served as text on
//! `/metrics`. It records and serves; what the numbers mean is `fleet`'s.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::fleet::State;
use crate::types::status::Outcome;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    code: String,
}

/// Every metric, shared (each is an `Arc` inside) with the registry that serves it.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// `ghrm_vm_boot_seconds`.
    pub boot: Histogram,
    /// `ghrm_vm_lifetime_seconds`.
    pub lifetime: Histogram,
    /// `ghrm_host_turnaround_seconds`.
    pub turnaround: Histogram,
    loops: Family<StateLabel, Gauge>,
    iterations: Family<OutcomeLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    rate_limit: Gauge,
    /// `ghrm_registrations_total`.
    pub registrations: Counter,
    /// `ghrm_loop_restarts_total`.
    pub loop_restarts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        // 0.25 s … 512 s: a KVM boot is under a second, a TCG one several.
        let boot = Histogram::new(exponential_buckets(0.25, 2.0, 12));
        // 1 s … ~1.5 days: a VM lives from a failed boot to --vm-lifetime.
        let lifetime = Histogram::new(exponential_buckets(1.0, 3.0, 12));
        // 10 ms … ~40 s: what the host spends between two VMs.
        let turnaround = Histogram::new(exponential_buckets(0.01, 2.0, 13));
        let loops = Family::<StateLabel, Gauge>::default();
        let iterations = Family::<OutcomeLabel, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let rate_limit = Gauge::default();
        let registrations = Counter::default();
        let loop_restarts = Counter::default();
        r.register(
            "ghrm_vm_boot_seconds",
            "VM start to runner up (the guest's ready mark)",
            boot.clone(),
        );
        r.register(
            "ghrm_vm_lifetime_seconds",
            "VM start to VM exit",
            lifetime.clone(),
        );
        r.register(
            "ghrm_host_turnaround_seconds",
            "A loop's VM exit to its next VM start (clean-up and minting)",
            turnaround.clone(),
        );
        r.register("ghrm_loops", "Loops by state", loops.clone());
        r.register(
            "ghrm_iterations",
            "VMs (and failed mints) by how they ended",
            iterations.clone(),
        );
        r.register(
            "ghrm_github_requests",
            "Answers from GitHub by request and HTTP status (0: none came)",
            requests.clone(),
        );
        r.register(
            "ghrm_github_rate_limit_remaining",
            "x-ratelimit-remaining of GitHub's latest answer that had it",
            rate_limit.clone(),
        );
        r.register(
            "ghrm_registrations",
            "Runner credentials minted (JIT configs or registration tokens)",
            registrations.clone(),
        );
        r.register(
            "ghrm_loop_restarts",
            "Loop processes started again after they died",
            loop_restarts.clone(),
        );
        for o in Outcome::ALL {
            let _ = iterations.get_or_create(&OutcomeLabel { outcome: o.name() });
        }
        Metrics {
            registry: Arc::new(r),
            boot,
            lifetime,
            turnaround,
            loops,
            iterations,
            requests,
            rate_limit,
            registrations,
            loop_restarts,
        }
    }

    /// `n` loops are in `state`.
    pub fn loops(&self, state: State, n: i64) {
        self.loops
            .get_or_create(&StateLabel {
                state: state.name(),
            })
            .set(n);
    }

    /// A VM (or a mint) ended so.
    pub fn iteration(&self, o: Outcome) {
        self.iterations
            .get_or_create(&OutcomeLabel { outcome: o.name() })
            .inc();
    }

    /// One answer from GitHub.
    pub fn github(&self, route: &str, code: u16, remaining: Option<u64>) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                code: code.to_string(),
            })
            .inc();
        if let Some(r) = remaining {
            self.rate_limit.set(i64::try_from(r).unwrap_or(i64::MAX));
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bind `addr` now (a taken or invalid address is an error at start, not later)
/// and serve `/metrics` on it for the life of the runtime.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> std::io::Result<SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move { ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], m.encode()) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("the metrics server stopped: {e}");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_names_are_exposed() {
        let m = Metrics::new();
        m.boot.observe(2.5);
        m.iteration(Outcome::JobDone);
        m.github("list runners", 200, Some(4990));
        m.registrations.inc();
        m.loops(State::Idle, 2);
        let text = m.encode();
        for name in [
            "ghrm_vm_boot_seconds_count 1",
            "ghrm_vm_lifetime_seconds_count 0",
            "ghrm_host_turnaround_seconds_bucket",
            "ghrm_loops{state=\"idle\"} 2",
            "ghrm_iterations_total{outcome=\"job_done\"} 1",
            "ghrm_iterations_total{outcome=\"boot_timeout\"} 0",
            "ghrm_github_requests_total{route=\"list runners\",code=\"200\"} 1",
            "ghrm_github_rate_limit_remaining 4990",
            "ghrm_registrations_total 1",
            "ghrm_loop_restarts_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
