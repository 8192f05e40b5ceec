//! The listener: one task per client connection, a cap on connections,
//! SIGHUP reloads the policies (a broken set is reported and the current one
//! kept), SIGINT/SIGTERM drain (no new connections; each session closes once
//! its running statement has finished) and exit.
//!
//! Sessions run on worker threads, one per CPU, each with a single-threaded
//! runtime of its own; a connection stays on the worker it was given (round
//! robin), its client and upstream sockets registered with that worker's
//! poller. A session's wake-ups then never cross threads, which on a busy
//! proxy costs less than a shared work-stealing pool's hand-offs.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::frontend::session::{self, DataSource, Shared};
use crate::frontend::sqlstate;
use crate::policy;
use crate::upstream::pool::Pools;
use crate::upstream::LiveCatalog;
use crate::wire;

/// How long a drain waits for busy sessions before closing them anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Session threads: `workers` when set, else one per CPU.
fn worker_count(config: &Config) -> usize {
    config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The session threads (see the module documentation).
struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next: usize,
}

impl Workers {
    fn start(count: usize) -> std::io::Result<Workers> {
        let mut w = Workers {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
            next: 0,
        };
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            w.handles.push(runtime.handle().clone());
            w.stops.push(stop);
            w.threads.push(
                std::thread::Builder::new()
                    .name(format!("rowgate-worker-{i}"))
                    // Room for the deepest statement rewriting accepts; only
                    // the pages a statement touches are ever committed.
                    .stack_size(crate::rewrite::STACK_BYTES)
                    .spawn(move || {
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    })?,
            );
        }
        Ok(w)
    }

    /// The worker for the next connection.
    fn next(&mut self) -> &Handle {
        self.next = (self.next + 1) % self.handles.len();
        &self.handles[self.next]
    }

    /// Stops the threads once their sessions are gone.
    fn stop(self) {
        drop(self.stops);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the session threads: {0}")]
    Workers(std::io::Error),
    #[error("the policies do not load:\n{0}")]
    Policies(String),
    #[error("the token issuers' keys do not load:\n{0}")]
    Tokens(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("cannot open the audit log {0}: {1}")]
    Audit(String, std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// A bound, not yet running proxy (binding first lets callers learn the port).
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    config: Config,
}

impl Server {
    /// Loads the policies and binds the listen address.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        let loaded = policy::load_path_for(&config.policies, &config.source_names()).map_err(
            |problems| {
                ServeError::Policies(
                    problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
            },
        )?;
        for w in &loaded.warnings {
            warn!("{w}");
        }
        let fence = if std::env::var_os("ROWGATE_UNSAFE_NO_FENCE").is_some_and(|v| v == "1") {
            warn!("the side-channel fence is OFF (ROWGATE_UNSAFE_NO_FENCE=1): for benchmarks only");
            crate::rewrite::Fence::UnsafeOff
        } else {
            crate::rewrite::Fence::Auto
        };
        let tls = match &config.tls {
            Some(t) => Some(crate::tls::acceptor(&t.cert, &t.key)?),
            None => None,
        };
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let audit = match &config.audit {
            Some(a) => {
                let gauges = (metrics.audit_queue.clone(), metrics.audit_lost.clone());
                Some(
                    crate::audit::Audit::start(a.clone(), &config.sources, Some(gauges))
                        .map_err(|e| ServeError::Audit(a.file.display().to_string(), e))?,
                )
            }
            None => None,
        };
        let tokens = match &config.tokens {
            Some(t) => Some(ArcSwap::from_pointee(
                crate::tokens::Verifier::load(t).map_err(|problems| {
                    ServeError::Tokens(
                        problems
                            .iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    )
                })?,
            )),
            None => None,
        };
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|e| ServeError::Listen(config.listen.clone(), e))?;
        let path = crate::rewrite::path_text(&config.search_path);
        let pooled = config.pool.mode == crate::config::PoolMode::Transaction;
        let sources = config
            .sources
            .iter()
            .map(|(name, upstream)| {
                let pools = pooled.then(|| {
                    let pools = Pools::new(
                        config.pool.clone(),
                        upstream.clone(),
                        &path,
                        name,
                        metrics.pool.clone(),
                    );
                    tokio::spawn(pools.clone().maintain());
                    pools
                });
                let source = DataSource {
                    name: name.clone(),
                    upstream: upstream.clone(),
                    catalog: LiveCatalog::new(upstream.clone()),
                    pools,
                };
                (name.clone(), Arc::new(source))
            })
            .collect();
        let shared = Arc::new(Shared {
            sources,
            policy: ArcSwap::from_pointee(loaded.policies),
            cancels: Default::default(),
            search_path: config.search_path.clone(),
            max_message: config.max_message_bytes,
            prepare_threshold: config.prepare_threshold,
            mock_key: rand::random(),
            tls,
            fence,
            listing: config.catalog,
            metrics,
            audit,
            instance: config.instance_id,
            peers: config.peers.clone(),
            connect_timeout: config.pool.server_connect_timeout,
            tokens,
        });
        Ok(Server {
            listener,
            shared,
            config,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGINT or SIGTERM, then drains.
    pub async fn run(self) -> Result<(), ServeError> {
        let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
        let mut sighup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(self.config.max_connections));
        let mut sessions = JoinSet::new();
        let mut workers =
            Workers::start(worker_count(&self.config)).map_err(ServeError::Workers)?;
        if let Some(addr) = &self.config.metrics {
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    info!(metrics = %addr, "serving /metrics, /healthz and /readyz");
                    tokio::spawn(crate::metrics::serve(
                        listener,
                        self.shared.metrics.clone(),
                        self.config
                            .sources
                            .iter()
                            .map(|(n, u)| (n.clone(), u.host.clone(), u.port))
                            .collect(),
                    ));
                }
                Err(e) => return Err(ServeError::Listen(addr.clone(), e)),
            }
        }
        info!(listen = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(), "rowgate is serving");
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (mut stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    match permits.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let shared = self.shared.clone();
                            let shutdown = shutdown_rx.clone();
                            let stream = match stream.into_std() {
                                Ok(s) => s,
                                Err(e) => {
                                    warn!(client = %peer, "cannot hand the connection to a worker: {e}");
                                    continue;
                                }
                            };
                            sessions.spawn_on(async move {
                                // Registered with the poller of the worker it runs on.
                                match TcpStream::from_std(stream) {
                                    Ok(stream) => session::run(stream, peer, shared, shutdown).await,
                                    Err(e) => warn!(client = %peer, "cannot take the connection on: {e}"),
                                }
                                drop(permit);
                            }, workers.next());
                        }
                        Err(_) => {
                            self.shared.metrics.connections_refused.with_label_values(&["max_connections"]).inc();
                            warn!(client = %peer, limit = self.config.max_connections, "connection refused: max_connections reached");
                            sessions.spawn(async move {
                                let msg = "sorry, too many clients already";
                                let e = wire::error_response("FATAL", sqlstate::TOO_MANY_CONNECTIONS, msg);
                                let _ = stream.write_all(&e).await;
                            });
                        }
                    }
                }
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                _ = sighup.recv() => self.reload(),
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
        }
        info!(
            sessions = sessions.len(),
            "shutting down: no new connections, draining sessions"
        );
        drop(self.listener);
        let _ = shutdown_tx.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while sessions.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                sessions = sessions.len(),
                "drain timed out; closing the remaining sessions"
            );
            sessions.shutdown().await;
        }
        workers.stop();
        info!("stopped");
        Ok(())
    }

    fn reload(&self) {
        if let Some(audit) = &self.shared.audit {
            audit.reopen();
        }
        // Token keys (a JWKS file may have rotated): a set that does not
        // load is reported and the current one kept.
        if let (Some(config), Some(current)) = (&self.config.tokens, &self.shared.tokens) {
            match crate::tokens::Verifier::load(config) {
                Ok(v) => {
                    current.store(Arc::new(v));
                    info!("token keys reloaded");
                }
                Err(problems) => {
                    for p in &problems {
                        error!("token keys not reloaded: {p}");
                    }
                }
            }
        }
        match policy::load_path_for(&self.config.policies, &self.config.source_names()) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    warn!("{w}");
                }
                let old = self.shared.policy.load_full();
                if let Some(audit) = &self.shared.audit {
                    audit.record(
                        "reload",
                        reload_fields(&old, &loaded.policies, self.shared.instance),
                    );
                }
                self.shared.policy.store(Arc::new(loaded.policies));
                self.shared.metrics.reloaded(true);
                info!("policies reloaded");
            }
            Err(problems) => {
                for p in &problems {
                    error!("{p}");
                }
                self.shared.metrics.reloaded(false);
                if let Some(audit) = &self.shared.audit {
                    let mut fields = serde_json::Map::new();
                    fields.insert("instance".into(), self.shared.instance.into());
                    fields.insert("decision".into(), "failed".into());
                    let why: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                    fields.insert("reason".into(), why.join("\n").into());
                    audit.record("reload", fields);
                }
                error!("policy reload failed; the current policies stay in force");
            }
        }
    }
}

/// What a successful reload changed, for its audit record: users added,
/// removed, and those whose access (role, groups, grants, attribute
/// values, filters) is not what it was.
fn reload_fields(
    old: &policy::Policies,
    new: &policy::Policies,
    instance: u8,
) -> serde_json::Map<String, serde_json::Value> {
    let names = |p: &policy::Policies| -> std::collections::BTreeSet<String> {
        p.main().users.keys().cloned().collect()
    };
    let (before, after) = (names(old), names(new));
    let several = new.iter().count() > 1;
    let mut changed = std::collections::BTreeSet::new();
    // Tables whose row rules were added, removed or changed (named with
    // their data source when there are several).
    let mut tables = Vec::new();
    for (source, new) in new.iter() {
        let Some(old) = old.get(source) else { continue };
        changed.extend(
            before
                .intersection(&after)
                .filter(|u| old.access(u) != new.access(u))
                .cloned(),
        );
        let keys: std::collections::BTreeSet<_> =
            old.tables.keys().chain(new.tables.keys()).collect();
        for t in keys {
            if old.tables.get(t) != new.tables.get(t) {
                tables.push(if several {
                    format!("{source}:{t}")
                } else {
                    t.to_string()
                });
            }
        }
    }
    let mut m = serde_json::Map::new();
    m.insert("instance".into(), instance.into());
    m.insert("decision".into(), "reloaded".into());
    m.insert(
        "users_added".into(),
        after
            .difference(&before)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
    );
    m.insert(
        "users_removed".into(),
        before
            .difference(&after)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
    );
    m.insert(
        "users_changed".into(),
        changed.into_iter().collect::<Vec<_>>().into(),
    );
    m.insert("tables_changed".into(), tables.into());
    m
}
