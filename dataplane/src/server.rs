//! The data-plane server: one `ArcSwap` snapshot of config and target groups, the listener set,
//! reload (read → validate → build → bind new → one store → close old), and graceful drain.

use crate::check::{spawn_checker, Prober};
use crate::drain::Tracker;
use crate::listener::{accept_loop, bind_tcp};
use crate::park::{Parked, Parker, Unparkable};
use crate::target::TargetGroup;
use arc_swap::ArcSwap;
use causeway_config::common::{ServerConfig, TargetGroupConfig};
use causeway_config::{ConfigError, ConfigFile};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What a data plane (nlb, alb, edge) tells the shared runtime about itself.
pub trait Plane: Send + Sync + Sized + 'static {
    /// The binary's name, e.g. `causeway-nlb`.
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    type File: ConfigFile<Valid = Self::Config>;
    type Config: Send + Sync + 'static;
    /// What the plane derives from its config once per load (compiled routes, an opened access
    /// log). Runs inside the runtime; an error refuses the load.
    type Compiled: Send + Sync + 'static;
    /// What an idle connection keeps while it is parked ([`crate::park`]); [`Unparkable`] for a
    /// plane that never parks.
    type Parked: Parked;

    /// Compiles a config; `previous` is the live generation's (on a reload), whose long-lived
    /// state (the edge's cache) the new generation may take over.
    fn compile(
        cfg: &Self::Config,
        previous: Option<&Self::Compiled>,
    ) -> Result<Self::Compiled, String>;

    /// What `--check` verifies beyond the config's syntax and rules: the files it names are
    /// loaded as a start or reload would load them (certificates, keys, trust stores), with
    /// nothing opened or created.
    fn check(_cfg: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    fn server(cfg: &Self::Config) -> &ServerConfig;
    fn admin(cfg: &Self::Config) -> SocketAddr;
    fn listeners(cfg: &Self::Config) -> Vec<SocketAddr>;
    fn target_groups(cfg: &Self::Config) -> Vec<TargetGroupConfig>;

    /// Serves one accepted connection. `snaps` always holds the current snapshot: a plane loads
    /// one per connection (nlb) or per request (alb), and keeps it for that unit of work.
    fn serve(conn: Conn<Self::Parked>, snaps: Snapshots<Self>) -> impl Future<Output = ()> + Send;

    /// Starts what the plane serves besides its TCP listeners (the edge's HTTP/3 endpoints):
    /// called once after start, with the live snapshots and the drain signal.
    fn started(_snaps: Snapshots<Self>, _shutdown: watch::Receiver<bool>) {}

    /// Where the plane logs each active health check (the alb's health check logs), if it
    /// does: read again after every load.
    fn health_log(_compiled: &Self::Compiled) -> Option<Arc<crate::healthlog::HealthLog>> {
        None
    }

    /// Admin endpoints of this plane beyond the shared ones (the edge's invalidation API):
    /// method, path and body in, status and JSON out. `None`: not handled (404).
    fn admin_extra(
        _method: &str,
        _path: &str,
        _body: &[u8],
        _snap: &Arc<Snapshot<Self>>,
    ) -> Option<(u16, serde_json::Value)> {
        None
    }
}

/// An accepted connection.
#[derive(Debug)]
pub struct Conn<T = Unparkable> {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Turns true when the process starts draining: finish the current request, then close.
    pub shutdown: watch::Receiver<bool>,
    /// Where the connection may wait once it has idled a while ([`crate::park`]).
    pub parker: Parker<T>,
}

/// The current snapshot, swapped as one unit on reload.
pub struct Snapshots<P: Plane>(Arc<ArcSwap<Snapshot<P>>>);

impl<P: Plane> Clone for Snapshots<P> {
    fn clone(&self) -> Self {
        Snapshots(self.0.clone())
    }
}

impl<P: Plane> std::fmt::Debug for Snapshots<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Snapshots")
            .field(&self.load().generation)
            .finish()
    }
}

impl<P: Plane> Snapshots<P> {
    /// A handle on one fixed snapshot (tests, tools).
    pub fn fixed(snap: Snapshot<P>) -> Self {
        Snapshots(Arc::new(ArcSwap::from_pointee(snap)))
    }

    /// The snapshot current now.
    pub fn load(&self) -> Arc<Snapshot<P>> {
        self.0.load_full()
    }
}

/// Everything a request or connection needs, swapped as one unit on reload.
pub struct Snapshot<P: Plane> {
    pub generation: u64,
    pub config: Arc<P::Config>,
    pub compiled: P::Compiled,
    pub groups: BTreeMap<String, Arc<TargetGroup>>,
    pub loaded_at: SystemTime,
}

impl<P: Plane> std::fmt::Debug for Snapshot<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("groups", &self.groups.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<P: Plane> Snapshot<P> {
    pub fn group(&self, name: &str) -> Option<&Arc<TargetGroup>> {
        self.groups.get(name)
    }
}

/// Why a reload was refused. The old snapshot stays in place.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Compile(String),
    #[error("shutting down")]
    ShuttingDown,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Compile(String),
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the epoll set for idle connections: {0}")]
    Park(#[source] std::io::Error),
}

/// What a successful reload changed, for the log line and `POST /reload`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadSummary {
    pub generation: u64,
    pub listeners_added: Vec<SocketAddr>,
    pub listeners_removed: Vec<SocketAddr>,
    pub targets_added: Vec<String>,
    pub targets_removed: Vec<String>,
    pub groups_added: Vec<String>,
    pub groups_removed: Vec<String>,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "generation {}: listeners +{:?} -{:?}; target groups +{:?} -{:?}; targets +{:?} -{:?}",
            self.generation,
            self.listeners_added,
            self.listeners_removed,
            self.groups_added,
            self.groups_removed,
            self.targets_added,
            self.targets_removed
        )
    }
}

struct ListenerHandle {
    stop: watch::Sender<bool>,
    /// The listening socket, for a binary upgrade to hand over.
    socket: Option<std::os::fd::OwnedFd>,
    /// The accept loop: a drain waits for it to end before it counts live connections, or a
    /// connection accepted in between would be cut when the process exits.
    task: tokio::task::JoinHandle<()>,
}

/// A running data plane.
pub struct Server<P: Plane> {
    config_path: PathBuf,
    current: Snapshots<P>,
    listeners: Mutex<BTreeMap<SocketAddr, ListenerHandle>>,
    reload_lock: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
    prober: Arc<dyn Prober>,
    conns: Tracker,
    parker: Parker<P::Parked>,
    /// The current config's health check log, shared with every checker.
    health_logs: crate::check::HealthLogs,
}

impl<P: Plane> std::fmt::Debug for Server<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &P::NAME)
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn build_groups(
    cfgs: Vec<TargetGroupConfig>,
    old: Option<&BTreeMap<String, Arc<TargetGroup>>>,
) -> BTreeMap<String, Arc<TargetGroup>> {
    cfgs.into_iter()
        .map(|c| {
            let prev = old.and_then(|o| o.get(&c.name)).map(Arc::as_ref);
            (c.name.clone(), Arc::new(TargetGroup::build(c, prev)))
        })
        .collect()
}

impl<P: Plane> Server<P> {
    /// Binds every listener and starts serving `config`, loaded from `config_path`.
    pub async fn start(
        config_path: &Path,
        config: P::Config,
        prober: Arc<dyn Prober>,
    ) -> Result<Arc<Self>, StartError> {
        Self::start_with(config_path, config, prober, Default::default()).await
    }

    /// Like `start`, but serves on `inherited` sockets (a binary upgrade's) where their
    /// addresses are configured, binding only the others.
    pub async fn start_with(
        config_path: &Path,
        config: P::Config,
        prober: Arc<dyn Prober>,
        mut inherited: std::collections::HashMap<SocketAddr, std::net::TcpListener>,
    ) -> Result<Arc<Self>, StartError> {
        let addrs = P::listeners(&config);
        let mut bound = Vec::new();
        for addr in addrs {
            let l = match inherited.remove(&addr) {
                Some(l) => l
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(l)),
                None => bind_tcp(addr),
            }
            .map_err(|source| StartError::Bind {
                what: "listener",
                addr,
                source,
            })?;
            bound.push((addr, l));
        }
        for addr in inherited.keys() {
            tracing::info!(%addr, "inherited listener no longer configured: closed");
        }
        let compiled = P::compile(&config, None).map_err(StartError::Compile)?;
        let groups = build_groups(P::target_groups(&config), None);
        let snap = Snapshot::<P> {
            generation: 1,
            compiled,
            config: Arc::new(config),
            groups,
            loaded_at: SystemTime::now(),
        };
        let health_logs = crate::check::HealthLogs::default();
        health_logs.store(P::health_log(&snap.compiled));
        let (shutdown, _) = watch::channel(false);
        let conns = Tracker::default();
        let parker =
            Parker::start(conns.clone(), shutdown.subscribe()).map_err(StartError::Park)?;
        let server = Arc::new(Server {
            config_path: config_path.to_owned(),
            current: Snapshots::fixed(snap),
            listeners: Mutex::new(BTreeMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            shutdown,
            prober,
            conns,
            parker,
            health_logs,
        });
        metrics::counter!("causeway_config_reloads_total").absolute(0);
        metrics::counter!("causeway_config_reload_failures_total").absolute(0);
        metrics::gauge!("causeway_config_generation").set(1.0);
        for (addr, l) in bound {
            server.spawn_listener(addr, l);
        }
        P::started(server.current.clone(), server.shutdown.subscribe());
        server.start_checkers();
        server.refresh_gauges();
        tokio::spawn(Self::housekeeping(
            Arc::downgrade(&server),
            server.shutdown.subscribe(),
        ));
        tracing::info!(name = P::NAME, config = %config_path.display(), "started");
        Ok(server)
    }

    /// The snapshot current now. Each request or connection loads one and keeps it.
    pub fn snapshot(&self) -> Arc<Snapshot<P>> {
        self.current.load()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Listener addresses actually bound now.
    pub fn bound_listeners(&self) -> Vec<SocketAddr> {
        lock(&self.listeners).keys().copied().collect()
    }

    pub fn live_connections(&self) -> usize {
        self.conns.live()
    }

    /// Idle connections parked outside any task ([`crate::park`]), counted in
    /// [`Server::live_connections`] too.
    pub fn parked_connections(&self) -> usize {
        self.parker.parked()
    }

    pub fn is_draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Copies of the listening sockets, for a binary upgrade.
    pub fn listener_sockets(&self) -> Vec<(SocketAddr, std::os::fd::OwnedFd)> {
        lock(&self.listeners)
            .iter()
            .filter_map(|(a, h)| Some((*a, h.socket.as_ref()?.try_clone().ok()?)))
            .collect()
    }

    fn spawn_listener(self: &Arc<Self>, addr: SocketAddr, l: tokio::net::TcpListener) {
        use std::os::fd::AsFd;
        let socket = l
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| tracing::warn!(%addr, error = %e, "this listener cannot be handed over on upgrade"))
            .ok();
        let (stop, stop_rx) = watch::channel(false);
        let weak = Arc::downgrade(self);
        let local = l.local_addr().unwrap_or(addr);
        let task = tokio::spawn(accept_loop(l, stop_rx, move |stream, peer| {
            let Some(server) = weak.upgrade() else { return };
            let snaps = server.current.clone();
            let guard = server.conns.enter();
            let conn = Conn {
                stream,
                peer,
                local,
                shutdown: server.shutdown.subscribe(),
                parker: server.parker.clone(),
            };
            // The plane's future is made inside the block: made outside, it would be stored
            // twice in the task (as the block's capture, and again where it is awaited).
            tokio::spawn(async move {
                P::serve(conn, snaps).await;
                drop(guard);
            });
        }));
        lock(&self.listeners).insert(addr, ListenerHandle { stop, socket, task });
    }

    fn start_checkers(&self) {
        let snap = self.snapshot();
        for g in snap.groups.values() {
            for t in &g.targets {
                spawn_checker(
                    t,
                    self.prober.clone(),
                    self.shutdown.subscribe(),
                    self.health_logs.clone(),
                );
            }
        }
    }

    /// Sets the healthy/unhealthy gauges from the current snapshot.
    pub fn refresh_gauges(&self) {
        let snap = self.snapshot();
        for (name, g) in &snap.groups {
            let (healthy, unhealthy) = g.host_counts();
            metrics::gauge!("causeway_healthy_host_count", "target_group" => name.clone())
                .set(healthy as f64);
            metrics::gauge!("causeway_unhealthy_host_count", "target_group" => name.clone())
                .set(unhealthy as f64);
            let (anomalous, mitigated) = g.anomaly_counts();
            metrics::gauge!("causeway_anomalous_host_count", "target_group" => name.clone())
                .set(anomalous as f64);
            metrics::gauge!("causeway_mitigated_host_count", "target_group" => name.clone())
                .set(mitigated as f64);
        }
    }

    /// Once a second: cut targets unhealthy past their draining interval, retire drained
    /// targets, and refresh the gauges.
    async fn housekeeping(weak: std::sync::Weak<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let Some(server) = weak.upgrade() else { return };
            let now = tokio::time::Instant::now();
            for g in server.snapshot().groups.values() {
                g.cut_unhealthy(now);
                g.anomaly_tick(now);
                for t in g.reap_draining(now) {
                    tracing::info!(target_group = %g.cfg.name, target = %t.cfg.address,
                        in_flight = t.in_flight(), "target drained");
                }
            }
            server.refresh_gauges();
        }
    }

    /// Re-reads the config file and applies it, or keeps the old config and says why.
    pub async fn reload(self: &Arc<Self>) -> Result<ReloadSummary, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let result = self.try_reload();
        match &result {
            Ok(s) => {
                metrics::counter!("causeway_config_reloads_total").increment(1);
                metrics::gauge!("causeway_config_generation").set(s.generation as f64);
                tracing::info!(name = P::NAME, "config reloaded: {s}");
            }
            Err(e) => {
                metrics::counter!("causeway_config_reload_failures_total").increment(1);
                tracing::error!(
                    name = P::NAME,
                    "config reload failed, keeping the old config: {e}"
                );
            }
        }
        result
    }

    fn try_reload(self: &Arc<Self>) -> Result<ReloadSummary, ReloadError> {
        if self.is_draining() {
            return Err(ReloadError::ShuttingDown);
        }
        let config = causeway_config::load::<P::File>(&self.config_path)?;
        let old = self.snapshot();
        let compiled = P::compile(&config, Some(&old.compiled)).map_err(ReloadError::Compile)?;
        if P::admin(&config) != P::admin(&old.config) {
            tracing::warn!("admin.address changed: it takes effect on restart");
        }
        // Bind new listeners first; if any fails, the ones bound so far close on drop.
        let wanted = P::listeners(&config);
        let have = self.bound_listeners();
        let mut fresh = Vec::new();
        for &addr in wanted.iter().filter(|a| !have.contains(a)) {
            let l = bind_tcp(addr).map_err(|source| ReloadError::Bind { addr, source })?;
            fresh.push((addr, l));
        }
        let groups = build_groups(P::target_groups(&config), Some(&old.groups));
        let mut summary = ReloadSummary {
            generation: old.generation + 1,
            ..Default::default()
        };
        for (name, g) in &groups {
            match old.groups.get(name) {
                None => summary.groups_added.push(name.clone()),
                Some(o) => {
                    for t in &g.targets {
                        if !o.targets.iter().any(|x| x.cfg.address == t.cfg.address) {
                            summary
                                .targets_added
                                .push(format!("{name}/{}", t.cfg.address));
                        }
                    }
                    for t in &o.targets {
                        if !g.targets.iter().any(|x| x.cfg.address == t.cfg.address) {
                            summary
                                .targets_removed
                                .push(format!("{name}/{}", t.cfg.address));
                        }
                    }
                }
            }
        }
        for (name, g) in &old.groups {
            if !groups.contains_key(name) {
                summary.groups_removed.push(name.clone());
                g.retire_all();
            }
        }
        self.health_logs.store(P::health_log(&compiled));
        self.current.0.store(Arc::new(Snapshot {
            generation: summary.generation,
            compiled,
            config: Arc::new(config),
            groups,
            loaded_at: SystemTime::now(),
        }));
        // Requests waiting for room since before the reload look at the new targets.
        let now = self.snapshot();
        for (name, g) in &now.groups {
            if let Some(o) = old.groups.get(name) {
                o.succeeded_by(g);
            }
        }
        self.start_checkers();
        self.refresh_gauges();
        for (addr, l) in fresh {
            summary.listeners_added.push(addr);
            self.spawn_listener(addr, l);
        }
        let mut ls = lock(&self.listeners);
        let gone: Vec<SocketAddr> = ls.keys().filter(|a| !wanted.contains(a)).copied().collect();
        for addr in gone {
            if let Some(h) = ls.remove(&addr) {
                // send only fails when the accept loop already ended
                if h.stop.send(true).is_err() {
                    tracing::debug!(%addr, "listener already stopped");
                }
            }
            summary.listeners_removed.push(addr);
        }
        Ok(summary)
    }

    /// Stops accepting, tells live connections to finish, and waits for them up to the
    /// config's grace period. True when every connection finished in time.
    pub async fn shutdown(&self) -> bool {
        let grace = P::server(&self.snapshot().config).grace_period;
        self.shutdown.send_replace(true);
        let listeners = std::mem::take(&mut *lock(&self.listeners));
        for (addr, h) in &listeners {
            if h.stop.send(true).is_err() {
                tracing::debug!(%addr, "listener already stopped");
            }
        }
        // No accept after this: a connection accepted while the drain counted would be cut.
        for (addr, h) in listeners {
            if let Err(e) = h.task.await {
                tracing::warn!(%addr, error = %e, "accept loop ended badly");
            }
        }
        tracing::info!(live = self.conns.live(), ?grace, "draining connections");
        let clean = self.conns.wait_idle(grace).await;
        if !clean {
            tracing::warn!(
                live = self.conns.live(),
                "grace period over, exiting with connections open"
            );
        }
        clean
    }
}
