//! Metrics and health over HTTP (`metrics:` in `proxy.yaml`): `GET
//! /metrics` in Prometheus' text format, `GET /healthz` (the process
//! serves) and `GET /readyz` (policies loaded and the upstream reachable).
//!
//! The counters live in one [`Metrics`] value that the server and the
//! sessions share (through `Shared`); nothing here is a global.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tracing::warn;

/// Every metric rowgate exposes.
pub struct Metrics {
    registry: Registry,
    /// Client connections open now.
    pub connections: IntGauge,
    /// Client connections accepted since start.
    pub connections_total: IntCounter,
    /// Client connections turned away, by reason.
    pub connections_refused: IntCounterVec,
    /// Logins by method (scram) and outcome (ok, failed).
    pub logins: IntCounterVec,
    /// Statements by decision (forwarded, refused) and, for refusals, the
    /// SQLSTATE.
    pub statements: IntCounterVec,
    /// Time to parse, check and print one statement text.
    pub rewrite_seconds: Histogram,
    /// Time to open an upstream session, by data source.
    pub upstream_connect_seconds: prometheus::HistogramVec,
    /// Upstream sessions that could not be opened, by reason.
    pub upstream_errors: IntCounterVec,
    /// Statements run as automatic prepared statements, and prepared.
    pub autoprep: IntCounterVec,
    /// Bytes relayed, by direction (to_upstream, to_client).
    pub bytes: IntCounterVec,
    /// Policy set generation: 1 at start, one more per successful reload.
    pub policy_generation: IntGauge,
    /// Unix time of the last reload attempt.
    pub policy_reload_time: Gauge,
    /// Reloads by outcome (ok, failed).
    pub policy_reloads: IntCounterVec,
    /// Audit records waiting to be written.
    pub audit_queue: IntGauge,
    /// Audit records that could not be written or queued.
    pub audit_lost: IntGauge,
    /// Transaction pooling's figures (see [`PoolMetrics`]).
    pub pool: PoolMetrics,
}

/// Transaction pooling's figures, by data source and database where they
/// are a pool's.
#[derive(Clone)]
pub struct PoolMetrics {
    /// Pooled upstream connections open.
    pub connections: IntGaugeVec,
    /// Pooled upstream connections a session holds now.
    pub in_use: IntGaugeVec,
    /// Time a session waited for a connection.
    pub wait_seconds: prometheus::HistogramVec,
    /// Sessions that waited `pool.max_client_wait` in vain (53300).
    pub timeouts: IntCounterVec,
    /// Sessions pinned to their connection, by why.
    pub pinned: IntCounterVec,
    /// Sessions' settings read back after a statement that may change one.
    pub settings_reads: IntCounter,
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> prometheus::HistogramVec {
    let h = prometheus::HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("registered once");
    h
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("registered once");
    h
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("rowgate".into()), None).expect("valid prefix");
        let connections =
            IntGauge::new("client_connections", "Client connections open now").expect("valid");
        let connections_total =
            IntCounter::new("client_connections_total", "Client connections accepted")
                .expect("valid");
        let policy_generation =
            IntGauge::new("policy_generation", "Policy set generation").expect("valid");
        let policy_reload_time = Gauge::new(
            "policy_reload_timestamp_seconds",
            "Unix time of the last policy reload attempt",
        )
        .expect("valid");
        let audit_queue =
            IntGauge::new("audit_queue_records", "Audit records waiting to be written")
                .expect("valid");
        let audit_lost = IntGauge::new(
            "audit_lost_records",
            "Audit records that could not be written or queued since start",
        )
        .expect("valid");
        for m in [
            Box::new(audit_queue.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(audit_lost.clone()),
            Box::new(connections.clone()),
            Box::new(connections_total.clone()),
            Box::new(policy_generation.clone()),
            Box::new(policy_reload_time.clone()),
        ] {
            registry.register(m).expect("registered once");
        }
        policy_generation.set(1);
        let fast = vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.1,
        ];
        let connect = vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
        let wait = vec![
            0.000_01, 0.000_1, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
        ];
        let pool_labels = &["data_source", "database"];
        let settings_reads = IntCounter::new(
            "pool_settings_reads_total",
            "Sessions' settings read back after a statement that may change one (transaction pooling)",
        )
        .expect("valid");
        registry
            .register(Box::new(settings_reads.clone()))
            .expect("registered once");
        let pool = PoolMetrics {
            connections: gauge_vec(
                &registry,
                "pool_connections",
                "Pooled upstream connections open",
                pool_labels,
            ),
            in_use: gauge_vec(
                &registry,
                "pool_connections_in_use",
                "Pooled upstream connections a session holds now",
                pool_labels,
            ),
            wait_seconds: histogram_vec(
                &registry,
                "pool_wait_seconds",
                "Time a session waited for a pooled connection",
                wait,
                pool_labels,
            ),
            timeouts: counter_vec(
                &registry,
                "pool_wait_timeouts_total",
                "Sessions that waited pool.max_client_wait for a connection in vain",
                pool_labels,
            ),
            pinned: counter_vec(
                &registry,
                "pool_pinned_sessions_total",
                "Sessions pinned to their pooled connection, by why",
                &["reason"],
            ),
            settings_reads,
        };
        Metrics {
            pool,
            audit_queue,
            audit_lost,
            connections,
            connections_total,
            connections_refused: counter_vec(
                &registry,
                "client_connections_refused_total",
                "Client connections turned away, by reason",
                &["reason"],
            ),
            logins: counter_vec(
                &registry,
                "logins_total",
                "Logins by method and outcome",
                &["method", "outcome"],
            ),
            statements: counter_vec(
                &registry,
                "statements_total",
                "Statement texts by decision, and the SQLSTATE of refusals",
                &["decision", "sqlstate"],
            ),
            rewrite_seconds: histogram(
                &registry,
                "rewrite_seconds",
                "Time to parse, check and print a statement text",
                fast,
            ),
            upstream_connect_seconds: histogram_vec(
                &registry,
                "upstream_connect_seconds",
                "Time to open an upstream session, by data source",
                connect,
                &["data_source"],
            ),
            upstream_errors: counter_vec(
                &registry,
                "upstream_errors_total",
                "Upstream sessions that could not be opened, by data source and reason",
                &["data_source", "reason"],
            ),
            autoprep: counter_vec(
                &registry,
                "automatic_statements_total",
                "Statements run as automatic prepared statements (hit) or prepared (prepare)",
                &["outcome"],
            ),
            bytes: counter_vec(
                &registry,
                "relayed_bytes_total",
                "Bytes relayed, by direction",
                &["direction"],
            ),
            policy_generation,
            policy_reload_time,
            policy_reloads: counter_vec(
                &registry,
                "policy_reloads_total",
                "Policy reloads by outcome",
                &["outcome"],
            ),
            registry,
        }
    }

    /// A policy reload happened.
    pub fn reloaded(&self, ok: bool) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.policy_reload_time.set(now);
        if ok {
            self.policy_generation.inc();
            self.policy_reloads.with_label_values(&["ok"]).inc();
        } else {
            self.policy_reloads.with_label_values(&["failed"]).inc();
        }
    }

    /// Every metric in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether the upstream server accepts a TCP connection within a second.
pub async fn upstream_reachable(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// `/readyz`: ready while every data source's server accepts connections;
/// the body names each that does not.
async fn readiness(upstreams: &[(String, String, u16)]) -> (hyper::StatusCode, String) {
    let mut down = Vec::new();
    for (name, host, port) in upstreams {
        if !upstream_reachable(host, *port).await {
            down.push(name.as_str());
        }
    }
    if down.is_empty() {
        (hyper::StatusCode::OK, "ready\n".to_string())
    } else if upstreams.len() == 1 {
        let body = "the upstream server is not reachable\n".to_string();
        (hyper::StatusCode::SERVICE_UNAVAILABLE, body)
    } else {
        let body = format!("not reachable: data source {}\n", down.join(", "));
        (hyper::StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

/// Serves the metrics and health endpoints on `listener` until the
/// process ends; `upstreams` are the data sources (name, host, port).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    upstreams: Vec<(String, String, u16)>,
) {
    let upstreams = Arc::new(upstreams);
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Request, Response, StatusCode};
    loop {
        let (stream, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let upstreams = upstreams.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                let upstreams = upstreams.clone();
                async move {
                    let (status, body) = match (req.method().as_str(), req.uri().path()) {
                        ("GET", "/metrics") => (StatusCode::OK, metrics.render()),
                        ("GET", "/healthz") => (StatusCode::OK, "ok\n".to_string()),
                        ("GET", "/readyz") => readiness(&upstreams).await,
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                    };
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(client = %peer, "metrics connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_in_the_text_format() {
        let m = Metrics::new();
        m.statements.with_label_values(&["refused", "42501"]).inc();
        m.connections_total.inc();
        m.reloaded(true);
        let text = m.render();
        assert!(
            text.contains("rowgate_statements_total{decision=\"refused\",sqlstate=\"42501\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rowgate_client_connections_total 1"),
            "{text}"
        );
        assert!(text.contains("rowgate_policy_generation 2"), "{text}");
    }
}
