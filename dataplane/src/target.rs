//! Targets and target groups at run time: health, in-flight counts, latency, draining, and the
//! selection of a target for a request or flow.

use crate::capacity::{Attempt, Queue};
use crate::health::{HealthMachine, Outcome, Reason, State, Transition};
use crate::outlier::{OutlierPolicy, OutlierState};
use crate::select::{self, Maglev, PeakEwma, SmoothWrr};
use causeway_config::common::{
    Algorithm, HealthCheckConfig, MinimumHealthy, TargetConfig, TargetGroupConfig, Termination,
};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One backend at run time. Shared by the snapshot, its health checker and in-flight work.
#[derive(Debug)]
pub struct Target {
    pub cfg: TargetConfig,
    pub group: Arc<str>,
    pub health_check: HealthCheckConfig,
    state: AtomicU8,
    machine: Mutex<HealthMachine>,
    /// Requests or connections in flight; shared with the object this one replaced after a
    /// reload (`carry`), whose requests still run on the same address.
    in_flight: Arc<AtomicU64>,
    healthy_since: Mutex<Option<Instant>>,
    ewma: Mutex<PeakEwma>,
    drain_deadline: Mutex<Option<Instant>>,
    /// When it last turned unhealthy (while it stays so), for `unhealthy.draining_interval`.
    unhealthy_since: Mutex<Option<Instant>>,
    /// Set when a newer `Target` replaced this one or it was dropped: its checker stops.
    retired: AtomicBool,
    checker_started: AtomicBool,
    /// Idle keep-alive connections to this target (alb, edge).
    pub pool: crate::pool::Pool,
    /// Idle TLS connections, for groups with protocol HTTPS.
    pub tls_pool: crate::pool::Pool<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    outlier: Mutex<OutlierState>,
    /// Set while ejected, so the common case reads no clock.
    ejected: AtomicBool,
    /// When this target's open connections are cut (set by the group after creation).
    termination: Mutex<Termination>,
    /// Turns true when open connections to this target must be cut.
    terminate_tx: tokio::sync::watch::Sender<bool>,
    /// Automatic target weights: exchanges and errors since the last verdict, the verdict,
    /// and the weight factor (`crate::anomaly::FULL` unless mitigated).
    atw_exchanges: AtomicU64,
    atw_errors: AtomicU64,
    atw_anomalous: AtomicBool,
    atw_factor: AtomicU32,
    /// The group's `target_control.max_concurrent_requests` (0: no limit), and the group's
    /// queue, woken when a request here ends.
    limit: AtomicU64,
    queue: std::sync::OnceLock<Arc<Queue>>,
}

/// Counts one request or connection in flight on a target while it lives.
#[derive(Debug)]
pub struct InFlight(Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.0.limit.load(Ordering::Relaxed) != 0 {
            if let Some(q) = self.0.queue.get() {
                q.release();
            }
        }
    }
}

impl InFlight {
    pub fn target(&self) -> &Arc<Target> {
        &self.0
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Target {
    pub fn new(cfg: TargetConfig, group: Arc<str>, hc: &HealthCheckConfig) -> Arc<Self> {
        let machine = HealthMachine::new(hc);
        Self::with_machine(cfg, group, hc, machine, None, Arc::default())
    }

    fn with_machine(
        cfg: TargetConfig,
        group: Arc<str>,
        hc: &HealthCheckConfig,
        machine: HealthMachine,
        healthy_since: Option<Instant>,
        in_flight: Arc<AtomicU64>,
    ) -> Arc<Self> {
        let healthy_since = healthy_since.or_else(|| machine.state().routable().then(Instant::now));
        let unhealthy_since = (machine.state() == State::Unhealthy).then(Instant::now);
        Arc::new(Target {
            cfg,
            group,
            health_check: hc.clone(),
            state: AtomicU8::new(machine.state().as_u8()),
            machine: Mutex::new(machine),
            in_flight,
            healthy_since: Mutex::new(healthy_since),
            ewma: Mutex::new(PeakEwma::new(
                Duration::from_secs(10),
                Duration::from_millis(1),
            )),
            drain_deadline: Mutex::new(None),
            unhealthy_since: Mutex::new(unhealthy_since),
            retired: AtomicBool::new(false),
            checker_started: AtomicBool::new(false),
            pool: crate::pool::Pool::default(),
            tls_pool: crate::pool::Pool::default(),
            outlier: Mutex::new(OutlierState::default()),
            ejected: AtomicBool::new(false),
            termination: Mutex::new(Termination::NEVER),
            terminate_tx: tokio::sync::watch::channel(false).0,
            atw_exchanges: AtomicU64::new(0),
            atw_errors: AtomicU64::new(0),
            atw_anomalous: AtomicBool::new(false),
            atw_factor: AtomicU32::new(crate::anomaly::FULL),
            limit: AtomicU64::new(0),
            queue: std::sync::OnceLock::new(),
        })
    }

    /// A target that replaces `old` after a reload changed its settings, keeping its health.
    pub fn carry(
        cfg: TargetConfig,
        group: Arc<str>,
        hc: &HealthCheckConfig,
        old: &Target,
    ) -> Arc<Self> {
        let machine = HealthMachine::carried(&lock(&old.machine), hc);
        let since = *lock(&old.healthy_since);
        let t = Self::with_machine(cfg, group, hc, machine, since, old.in_flight.clone());
        *lock(&t.ewma) = *lock(&old.ewma);
        *lock(&t.unhealthy_since) = *lock(&old.unhealthy_since);
        old.retired.store(true, Ordering::Release);
        t
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn reason(&self) -> Reason {
        lock(&self.machine).reason()
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Marks the start of a request or connection on this target.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Like [`Self::begin`], but only while the target is under its group's concurrency limit
    /// (`target_control`).
    pub fn try_begin(self: &Arc<Self>) -> Option<InFlight> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return Some(self.begin());
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(self.clone()))
    }

    /// Whether the target is under its group's concurrency limit (always, without one).
    pub fn has_room(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit == 0 || self.in_flight() < limit
    }

    /// Sets the group's concurrency limit (0: none) and queue.
    fn set_control(&self, limit: u64, queue: &Arc<Queue>) {
        self.limit.store(limit, Ordering::Relaxed);
        // A target keeps its group's queue: groups carry their queue over reloads.
        let _ = self.queue.set(queue.clone());
    }

    /// With `unhealthy.connection_termination` off: cuts the connections of a target that has
    /// stayed unhealthy for the group's `draining_interval`. True when it cut them now.
    pub fn cut_after_unhealthy_draining(&self, now: Instant) -> bool {
        let t = *lock(&self.termination);
        if t.on_unhealthy || t.unhealthy_draining == Duration::MAX || *self.terminate_tx.borrow() {
            return false;
        }
        let since = *lock(&self.unhealthy_since);
        match since {
            Some(since)
                if self.state() == State::Unhealthy && now >= since + t.unhealthy_draining =>
            {
                self.terminate();
                true
            }
            _ => false,
        }
    }

    /// Sets when this target's connections are cut (its group's policy).
    pub fn set_termination(&self, t: Termination) {
        *lock(&self.termination) = t;
    }

    /// Resolves when open connections to this target must be cut.
    pub fn termination_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.terminate_tx.subscribe()
    }

    /// Cuts every open connection that watches this target's termination signal.
    pub fn terminate(&self) {
        if !self.terminate_tx.send_replace(true) {
            tracing::info!(target_group = %self.group, target = %self.cfg.address,
                "cutting open connections");
            metrics::counter!("causeway_target_connection_terminations_total",
                "target_group" => self.group.to_string())
            .increment(1);
        }
    }

    fn apply(
        &self,
        f: impl FnOnce(&mut HealthMachine) -> Option<Transition>,
    ) -> Option<Transition> {
        let mut m = lock(&self.machine);
        let t = f(&mut m)?;
        self.state.store(t.to.as_u8(), Ordering::Release);
        drop(m);
        if t.to.routable() {
            *lock(&self.healthy_since) = Some(Instant::now());
            // Back in service: connections opened from now on are not cut by an old verdict.
            self.terminate_tx.send_replace(false);
            // Requests waiting for room may take this target now.
            if let Some(q) = self.queue.get() {
                q.wake_all();
            }
        }
        *lock(&self.unhealthy_since) = (t.to == State::Unhealthy).then(Instant::now);
        if t.to == State::Unhealthy && lock(&self.termination).on_unhealthy {
            self.terminate();
        }
        tracing::info!(
            target_group = %self.group, target = %self.cfg.address, id = %self.cfg.id,
            from = ?t.from, to = ?t.to, reason = ?t.reason, "target health changed"
        );
        metrics::counter!("causeway_target_health_transitions_total",
            "target_group" => self.group.to_string(), "to" => format!("{:?}", t.to).to_lowercase())
        .increment(1);
        Some(t)
    }

    /// Feeds an active check result.
    pub fn record_check(&self, outcome: Outcome) -> Option<Transition> {
        self.apply(|m| m.on_check(outcome))
    }

    /// Real traffic failed to connect to this target.
    pub fn record_passive_failure(&self) -> Option<Transition> {
        self.apply(HealthMachine::on_passive_failure)
    }

    /// Starts draining: no new work; in-flight work has until `deadline`.
    pub fn drain(&self, deadline: Instant) {
        *lock(&self.drain_deadline) = Some(deadline);
        self.apply(HealthMachine::drain);
    }

    pub fn drain_deadline(&self) -> Option<Instant> {
        *lock(&self.drain_deadline)
    }

    /// Drained: no longer tracked.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.pool.clear();
        self.tls_pool.clear();
        self.apply(HealthMachine::retire);
    }

    /// Records a response time for peak-EWMA selection.
    pub fn observe_latency(&self, rtt: Duration) {
        lock(&self.ewma).observe(rtt, Instant::now().into_std());
    }

    /// Weight after slow start.
    pub fn effective_weight(&self, slow_start: Duration, now: Instant) -> u32 {
        if slow_start.is_zero() {
            return self.cfg.weight;
        }
        let since = lock(&self.healthy_since).unwrap_or(now);
        select::slow_start::ramp(
            self.cfg.weight,
            now.saturating_duration_since(since),
            slow_start,
        )
    }

    /// Whether passive outlier detection has ejected this target now.
    pub fn is_ejected(&self) -> bool {
        if !self.ejected.load(Ordering::Acquire) {
            return false;
        }
        if lock(&self.outlier).is_ejected(Instant::now()) {
            return true;
        }
        self.ejected.store(false, Ordering::Release);
        false
    }

    /// ALB's `AnomalyDetection` for this target: whether the last verdict found it anomalous,
    /// and whether mitigation has its weight lowered now.
    pub fn anomaly(&self) -> (bool, bool) {
        (
            self.atw_anomalous.load(Ordering::Acquire),
            self.atw_factor.load(Ordering::Acquire) < crate::anomaly::FULL,
        )
    }

    /// Claims the right to run this target's health checker; true once.
    pub fn claim_checker(&self) -> bool {
        !self.checker_started.swap(true, Ordering::AcqRel)
    }

    fn cost(&self) -> f64 {
        lock(&self.ewma).cost(self.in_flight())
    }
}

/// A target group at run time.
#[derive(Debug)]
pub struct TargetGroup {
    pub cfg: TargetGroupConfig,
    /// Registered targets, in config order.
    pub targets: Vec<Arc<Target>>,
    /// Deregistered targets still finishing in-flight work.
    pub draining: Mutex<Vec<Arc<Target>>>,
    wrr: SmoothWrr,
    maglev: Option<Maglev>,
    /// With cross-zone off and a known local zone: which targets are in it.
    local: Vec<bool>,
    /// Bounds retries to this group's targets.
    pub retry_budget: crate::retry::RetryBudget,
    /// Choices made while the group fails open (registered once: a hot path may count here).
    unhealthy_routing: metrics::Counter,
    /// When automatic target weights last judged the targets.
    atw_last: Mutex<Instant>,
    /// Requests waiting for a target under its concurrency limit (`target_control`); the
    /// same queue across reloads.
    pub queue: Arc<Queue>,
    /// With `target_control`: ALB's TargetControlRequestRejectCount, and the requests waiting
    /// now (no-ops without it).
    pub rejected: metrics::Counter,
    pub queued: metrics::Gauge,
    /// The group that replaced this one at a reload, so that a request waiting since before
    /// it sees the targets as they are now.
    successor: std::sync::OnceLock<Arc<TargetGroup>>,
}

impl TargetGroup {
    /// Builds a group from config, carrying health and in-flight state over from `old` for
    /// targets that remain, and moving the targets that left into draining.
    pub fn build(cfg: TargetGroupConfig, old: Option<&TargetGroup>) -> TargetGroup {
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        let now = Instant::now();
        let mut old_draining = old
            .map(|o| std::mem::take(&mut *lock(&o.draining)))
            .unwrap_or_default();
        let targets: Vec<Arc<Target>> = cfg
            .targets
            .iter()
            .map(|tc| {
                let prev = old.and_then(|o| o.targets.iter().find(|t| t.cfg.address == tc.address));
                match prev {
                    Some(p) if p.cfg == *tc && p.health_check == cfg.health_check => p.clone(),
                    Some(p) => Target::carry(tc.clone(), name.clone(), &cfg.health_check, p),
                    None => {
                        // Re-registered while draining: it starts over, as on AWS.
                        old_draining.retain(|d| {
                            let same = d.cfg.address == tc.address;
                            if same {
                                d.retire();
                            }
                            !same
                        });
                        Target::new(tc.clone(), name.clone(), &cfg.health_check)
                    }
                }
            })
            .collect();
        let mut draining = old_draining;
        if let Some(o) = old {
            for t in &o.targets {
                if !targets.iter().any(|n| n.cfg.address == t.cfg.address) {
                    t.drain(now + cfg.deregistration_delay);
                    draining.push(t.clone());
                }
            }
        }
        let queue = old.map(|o| o.queue.clone()).unwrap_or_default();
        let limit = cfg.target_control.map_or(0, |c| c.max_concurrent);
        for t in &targets {
            t.set_termination(cfg.termination);
            t.set_control(limit, &queue);
        }
        let maglev = (cfg.algorithm == Algorithm::Maglev).then(|| {
            let names: Vec<String> = targets.iter().map(|t| t.cfg.id.clone()).collect();
            Maglev::new(&names)
        });
        let local = match (&cfg.local_zone, cfg.cross_zone) {
            (Some(zone), false) => targets
                .iter()
                .map(|t| t.cfg.zone.as_deref() == Some(zone.as_str()))
                .collect(),
            _ => Vec::new(),
        };
        let unhealthy_routing = metrics::counter!("causeway_unhealthy_routing_count",
            "target_group" => cfg.name.clone());
        let (rejected, queued) = match cfg.target_control {
            None => (metrics::Counter::noop(), metrics::Gauge::noop()),
            Some(_) => (
                metrics::counter!("causeway_alb_target_control_request_reject_count",
                    "target_group" => cfg.name.clone()),
                metrics::gauge!("causeway_alb_target_control_queued_requests",
                    "target_group" => cfg.name.clone()),
            ),
        };
        TargetGroup {
            cfg,
            targets,
            draining: Mutex::new(draining),
            wrr: SmoothWrr::new(),
            maglev,
            local,
            retry_budget: crate::retry::RetryBudget::default(),
            unhealthy_routing,
            atw_last: Mutex::new(now),
            queue,
            rejected,
            queued,
            successor: std::sync::OnceLock::new(),
        }
    }

    /// Records that `next` replaced this group at a reload (once the new snapshot is live),
    /// and has the requests waiting in its queue look at the new targets. Only groups with
    /// `target_control` on either side are linked: nothing else looks for the newest group,
    /// and a link keeps every later group alive as long as something holds this one (an nlb
    /// flow holds its snapshot for its whole life).
    pub fn succeeded_by(&self, next: &Arc<TargetGroup>) {
        if self.cfg.target_control.is_none() && next.cfg.target_control.is_none() {
            return;
        }
        let _ = self.successor.set(next.clone());
        next.queue.wake_all();
    }

    /// The group as it is now: the last of the groups that replaced this one, if any.
    pub fn latest(&self) -> Option<Arc<TargetGroup>> {
        let mut g = self.successor.get()?.clone();
        while let Some(next) = g.successor.get().cloned() {
            g = next;
        }
        Some(g)
    }

    /// Whether the group fails open: fewer of its targets routable than its routing failover
    /// thresholds ask for (AWS's default: none routable).
    pub fn fails_open(&self) -> bool {
        let m = self.cfg.minimum_healthy;
        if m == MinimumHealthy::default() {
            return !self.targets.iter().any(|t| t.state().routable());
        }
        let routable = self.targets.iter().filter(|t| t.state().routable()).count();
        m.breached(routable, self.targets.len())
    }

    /// The targets a new request may use: the routable ones (or, failing open, every
    /// registered target), less those outlier detection ejected and those of weight 0,
    /// whatever the algorithm; with cross-zone off, only those in the local zone while any of
    /// them is usable.
    fn usable(&self) -> impl Fn(usize) -> bool + '_ {
        self.usable_when(self.fails_open())
    }

    /// [`Self::usable`], with whether the group fails open already known.
    fn usable_when(&self, fail_open: bool) -> impl Fn(usize) -> bool + '_ {
        self.usable_with(fail_open, self.cfg.target_control.is_some())
    }

    /// [`Self::usable_when`]; `room`: only targets under their concurrency limit.
    fn usable_with(&self, fail_open: bool, room: bool) -> impl Fn(usize) -> bool + '_ {
        let base = move |i: usize| {
            let t = &self.targets[i];
            (fail_open || t.state().routable())
                && !t.is_ejected()
                && t.cfg.weight > 0
                && (!room || t.has_room())
        };
        let zoned =
            !self.local.is_empty() && (0..self.targets.len()).any(|i| self.local[i] && base(i));
        move |i| base(i) && (!zoned || self.local[i])
    }

    /// With `target_control`, one try at a target with room for a request: `pick` chooses
    /// among the usable targets with room (the algorithm's choice, or the sticky target) and
    /// the choice is claimed if it still has room. `Busy` when usable targets not yet tried
    /// exist but are all at their limit; `Nothing` when there are none. Without
    /// `target_control`, the pick is claimed as is.
    pub fn claim(
        &self,
        tried: &[std::net::SocketAddr],
        pick: impl Fn() -> Option<Arc<Target>>,
    ) -> Attempt<(Arc<Target>, InFlight)> {
        // Another request may take the last slot between the pick and the claim (with
        // several workers): a few picks, then it counts as busy.
        for _ in 0..3 {
            let Some(t) = pick() else { break };
            if let Some(f) = t.try_begin() {
                return Attempt::Claimed((t, f));
            }
        }
        if self.cfg.target_control.is_none() {
            return Attempt::Nothing;
        }
        let usable = self.usable_with(self.fails_open(), false);
        let waiting_helps = (0..self.targets.len())
            .any(|i| usable(i) && !tried.contains(&self.targets[i].cfg.address));
        if waiting_helps {
            Attempt::Busy
        } else {
            Attempt::Nothing
        }
    }

    /// Records the outcome of one exchange with `t` for outlier ejection: `failed` for a 5xx
    /// or a connection failure. Returns true when this ejected the target.
    pub fn record_outcome(&self, t: &Target, failed: bool) -> bool {
        // Anomaly detection counts every exchange, whatever the group's settings (as on AWS).
        t.atw_exchanges.fetch_add(1, Ordering::Relaxed);
        if failed {
            t.atw_errors.fetch_add(1, Ordering::Relaxed);
        }
        let o = &self.cfg.outlier_detection;
        if !o.enabled {
            return false;
        }
        let policy = OutlierPolicy {
            consecutive_failures: o.consecutive_failures,
            ejection_time: o.ejection_time,
            max_ejection_percent: o.max_ejection_percent,
        };
        let ejected_now = if failed {
            self.targets.iter().filter(|x| x.is_ejected()).count()
        } else {
            0
        };
        let now = Instant::now();
        let ejected =
            lock(&t.outlier).record(failed, now, &policy, ejected_now, self.targets.len());
        if ejected {
            t.ejected.store(true, Ordering::Release);
            tracing::warn!(target_group = %self.cfg.name, target = %t.cfg.address,
                for_secs = o.ejection_time.as_secs(), "target ejected after consecutive failures");
            metrics::counter!("causeway_outlier_ejections_total",
                "target_group" => self.cfg.name.clone())
            .increment(1);
        }
        ejected
    }

    /// Whether `t` (a registered target) may take new work now: routable, or any registered
    /// target while the group fails open.
    pub fn accepts(&self, t: &Target) -> bool {
        t.state().routable()
            || (!matches!(t.state(), State::Draining | State::Unused) && self.fails_open())
    }

    /// Chooses a target for a new request or flow. `hash` is the flow or key hash, used by
    /// Maglev; the other algorithms ignore it.
    pub fn select(&self, hash: u64) -> Option<Arc<Target>> {
        let n = self.targets.len();
        let fail_open = self.fails_open();
        let usable = self.usable_when(fail_open);
        // The clock is read only when slow start needs it.
        let now = if self.cfg.slow_start.is_zero() {
            None
        } else {
            Some(Instant::now())
        };
        let mitigated = self.cfg.anomaly_mitigation;
        let weight = |i: usize| {
            if usable(i) {
                let t = &self.targets[i];
                let w = match now {
                    None => t.cfg.weight,
                    Some(now) => t.effective_weight(self.cfg.slow_start, now),
                };
                if mitigated {
                    w * t.atw_factor.load(Ordering::Relaxed)
                } else {
                    w
                }
            } else {
                0
            }
        };
        let mut rng = fastrand::Rng::new();
        let i = match self.cfg.algorithm {
            Algorithm::RoundRobin => self.wrr.pick(n, weight),
            Algorithm::WeightedRandom => select::weighted_random(n, weight, &mut rng),
            Algorithm::LeastOutstandingRequests => select::least_outstanding(
                n,
                |i| usable(i).then(|| self.targets[i].in_flight()),
                &mut rng,
            ),
            Algorithm::P2cEwma => {
                select::p2c::pick(n, |i| usable(i).then(|| self.targets[i].cost()), &mut rng)
            }
            Algorithm::Maglev => self.maglev.as_ref()?.lookup_usable(hash, &usable),
        }?;
        if fail_open {
            // AWS's UnhealthyRoutingRequestCount (alb) and UnhealthyRoutingFlowCount (nlb).
            self.unhealthy_routing.increment(1);
        }
        Some(self.targets[i].clone())
    }

    /// The usable targets in the order flow `hash` prefers them (Maglev groups), for failing
    /// over when a connection is refused. Other algorithms get config order.
    pub fn preference(&self, hash: u64) -> Vec<Arc<Target>> {
        let usable = self.usable();
        match &self.maglev {
            Some(m) => m
                .preference(hash)
                .filter(|&i| usable(i))
                .map(|i| self.targets[i].clone())
                .collect(),
            None => (0..self.targets.len())
                .filter(|&i| usable(i))
                .map(|i| self.targets[i].clone())
                .collect(),
        }
    }

    /// Retires draining targets that are done (no in-flight work) or past their deadline.
    /// Returns the retired ones, so the caller can cut their remaining work.
    pub fn reap_draining(&self, now: Instant) -> Vec<Arc<Target>> {
        let mut d = lock(&self.draining);
        let mut done = Vec::new();
        d.retain(|t| {
            let timed_out = t.drain_deadline().is_some_and(|dl| now >= dl);
            let over = t.in_flight() == 0 || timed_out;
            if timed_out && lock(&t.termination).on_deregistration {
                t.terminate();
            }
            if over {
                t.retire();
                done.push(t.clone());
            }
            !over
        });
        done
    }

    /// Cuts the connections of targets unhealthy for longer than the draining interval.
    pub fn cut_unhealthy(&self, now: Instant) {
        for t in &self.targets {
            t.cut_after_unhealthy_draining(now);
        }
    }

    /// Automatic target weights, once every `anomaly::PERIOD` (called more often, it does
    /// nothing in between): judges the targets on the exchanges they had and, with
    /// `anomaly_mitigation` on, adjusts their weight factors.
    pub fn anomaly_tick(&self, now: Instant) {
        {
            let mut last = lock(&self.atw_last);
            if now < *last + crate::anomaly::PERIOD {
                return;
            }
            *last = now;
        }
        let inputs: Vec<crate::anomaly::Input> = self
            .targets
            .iter()
            .map(|t| crate::anomaly::Input {
                window: crate::anomaly::Window {
                    exchanges: t.atw_exchanges.load(Ordering::Relaxed),
                    errors: t.atw_errors.load(Ordering::Relaxed),
                },
                eligible: t.state().routable() && t.cfg.weight > 0,
                anomalous: t.atw_anomalous.load(Ordering::Relaxed),
                factor: t.atw_factor.load(Ordering::Relaxed),
            })
            .collect();
        let mitigate = self.cfg.anomaly_mitigation;
        let steps = crate::anomaly::evaluate(&inputs, mitigate);
        for ((t, input), step) in self.targets.iter().zip(&inputs).zip(&steps) {
            if step.consumed {
                t.atw_exchanges
                    .fetch_sub(input.window.exchanges, Ordering::Relaxed);
                t.atw_errors
                    .fetch_sub(input.window.errors, Ordering::Relaxed);
            }
            if step.anomalous != input.anomalous {
                tracing::warn!(target_group = %self.cfg.name, target = %t.cfg.address,
                    anomalous = step.anomalous, errors = input.window.errors,
                    exchanges = input.window.exchanges, "anomaly detection");
            }
            t.atw_anomalous.store(step.anomalous, Ordering::Release);
            t.atw_factor.store(step.factor, Ordering::Release);
        }
    }

    /// (anomalous, mitigated) counts, as AWS's AnomalousHostCount and MitigatedHostCount.
    pub fn anomaly_counts(&self) -> (usize, usize) {
        self.targets.iter().fold((0, 0), |(a, m), t| {
            let (anomalous, mitigated) = t.anomaly();
            (a + usize::from(anomalous), m + usize::from(mitigated))
        })
    }

    /// (healthy, unhealthy) counts, as AWS's HealthyHostCount and UnHealthyHostCount.
    pub fn host_counts(&self) -> (usize, usize) {
        let healthy = self.targets.iter().filter(|t| t.state().routable()).count();
        let unhealthy = self
            .targets
            .iter()
            .filter(|t| t.state() == State::Unhealthy)
            .count();
        (healthy, unhealthy)
    }

    /// Marks every target of a group that is being replaced or dropped.
    pub fn retire_all(&self) {
        for t in &self.targets {
            t.retire();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use causeway_config::common::HealthCheckKind;

    pub(crate) fn tg(addrs: &[u16], algorithm: Algorithm) -> TargetGroupConfig {
        TargetGroupConfig {
            minimum_healthy: Default::default(),
            target_control: None,
            name: "web".into(),
            protocol: "HTTP".into(),
            protocol_version: Default::default(),
            targets: addrs
                .iter()
                .map(|p| TargetConfig {
                    id: format!("t{p}"),
                    address: format!("127.0.0.1:{p}").parse().unwrap(),
                    weight: 1,
                    zone: None,
                })
                .collect(),
            health_check: HealthCheckConfig {
                enabled: true,
                kind: HealthCheckKind::Tcp,
                port: None,
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                healthy_threshold: 1,
                unhealthy_threshold: 1,
                proxy_protocol_v2: false,
                tls: false,
            },
            deregistration_delay: Duration::from_secs(30),
            slow_start: Duration::ZERO,
            algorithm,
            anomaly_mitigation: false,
            stickiness: None,
            proxy_protocol_v2: false,
            preserve_client_ip: false,
            termination: Termination::NEVER,
            outlier_detection: causeway_config::common::OutlierConfig {
                enabled: true,
                consecutive_failures: 5,
                ejection_time: Duration::from_secs(30),
                max_ejection_percent: 50,
            },
            cross_zone: true,
            local_zone: None,
        }
    }

    fn port(t: &Target) -> u16 {
        t.cfg.address.port()
    }

    #[tokio::test]
    async fn fails_open_then_routes_to_healthy_only() {
        let g = TargetGroup::build(tg(&[1, 2, 3], Algorithm::RoundRobin), None);
        // All initial: fail open over everything.
        let picks: Vec<u16> = (0..3).map(|_| port(&g.select(0).unwrap())).collect();
        assert_eq!(picks, vec![1, 2, 3]);
        g.targets[1].record_check(Outcome::Success);
        for _ in 0..5 {
            assert_eq!(port(&g.select(0).unwrap()), 2);
        }
        assert_eq!(g.host_counts(), (1, 0));
        g.targets[0].record_check(Outcome::Failed);
        assert_eq!(g.host_counts(), (1, 1));
    }

    /// AWS's routing failover thresholds: below `count` healthy targets, or below
    /// `percentage` percent of them, the group sends work to every registered target.
    #[tokio::test]
    async fn minimum_healthy_targets_set_when_the_group_fails_open() {
        let picks = |g: &TargetGroup| {
            let mut p: Vec<u16> = (0..8).map(|_| port(&g.select(0).unwrap())).collect();
            p.sort();
            p.dedup();
            p
        };
        for (m, healthy, want) in [
            // AWS's default: fail open only with none healthy.
            (MinimumHealthy::default(), 2, vec![1, 2]),
            (MinimumHealthy::default(), 0, vec![1, 2, 3, 4]),
            (
                MinimumHealthy {
                    count: 3,
                    percentage: 0,
                },
                3,
                vec![1, 2, 3],
            ),
            (
                MinimumHealthy {
                    count: 3,
                    percentage: 0,
                },
                2,
                vec![1, 2, 3, 4],
            ),
            (
                MinimumHealthy {
                    count: 1,
                    percentage: 50,
                },
                2,
                vec![1, 2],
            ),
            (
                MinimumHealthy {
                    count: 1,
                    percentage: 50,
                },
                1,
                vec![1, 2, 3, 4],
            ),
            // Either threshold breached is enough.
            (
                MinimumHealthy {
                    count: 3,
                    percentage: 25,
                },
                2,
                vec![1, 2, 3, 4],
            ),
        ] {
            let mut cfg = tg(&[1, 2, 3, 4], Algorithm::RoundRobin);
            cfg.minimum_healthy = m;
            let g = TargetGroup::build(cfg, None);
            for (i, t) in g.targets.iter().enumerate() {
                t.record_check(if i < healthy {
                    Outcome::Success
                } else {
                    Outcome::Failed
                });
            }
            assert_eq!(picks(&g), want, "{m:?} with {healthy} healthy");
            assert_eq!(
                g.fails_open(),
                want.len() == 4,
                "{m:?} with {healthy} healthy"
            );
            assert_eq!(
                g.accepts(&g.targets[3]),
                want.len() == 4,
                "an unhealthy target takes work only while the group fails open"
            );
        }
    }

    /// `target_control`: a target at its limit gets no new request until one of its requests
    /// ends, whatever the algorithm; the limit follows a reload; and a group whose usable
    /// targets are all full is busy (waiting helps), unlike one with none usable.
    #[tokio::test]
    async fn targets_at_their_concurrency_limit_are_skipped_until_a_request_ends() {
        use causeway_config::common::TargetControl;
        let limited = |algorithm| {
            let mut cfg = tg(&[1, 2], algorithm);
            cfg.target_control = Some(TargetControl {
                max_concurrent: 2,
                queue_timeout: Duration::ZERO,
                max_queued: 0,
            });
            cfg
        };
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::LeastOutstandingRequests,
            Algorithm::WeightedRandom,
            Algorithm::P2cEwma,
        ] {
            let g = TargetGroup::build(limited(algorithm), None);
            let claim = |g: &TargetGroup| g.claim(&[], || g.select(0));
            let mut held = Vec::new();
            for _ in 0..4 {
                match claim(&g) {
                    Attempt::Claimed((_, f)) => held.push(f),
                    other => panic!("{algorithm:?}: room left, got {other:?}"),
                }
            }
            assert_eq!(
                (g.targets[0].in_flight(), g.targets[1].in_flight()),
                (2, 2),
                "{algorithm:?}: two each, never three on one"
            );
            assert!(g.select(0).is_none(), "{algorithm:?}: both full");
            assert!(matches!(claim(&g), Attempt::Busy), "{algorithm:?}");
            let addrs: Vec<_> = g.targets.iter().map(|t| t.cfg.address).collect();
            assert!(
                matches!(g.claim(&addrs, || g.select(0)), Attempt::Nothing),
                "{algorithm:?}: every target tried already: nothing to wait for"
            );
            // A request on target 2 ends: its slot is the one free.
            let i = held.iter().position(|f| port(f.target()) == 2).unwrap();
            held.remove(i);
            match claim(&g) {
                Attempt::Claimed((t, f)) => {
                    assert_eq!(port(&t), 2, "{algorithm:?}");
                    held.push(f);
                }
                other => panic!("{algorithm:?}: {other:?}"),
            }
        }
        // A reload that lifts the limit makes the same targets take more at once.
        let g = TargetGroup::build(limited(Algorithm::RoundRobin), None);
        let held: Vec<_> = (0..4).map(|_| g.targets[0].try_begin()).collect();
        assert_eq!(held.iter().filter(|f| f.is_some()).count(), 2);
        let g2 = TargetGroup::build(tg(&[1, 2], Algorithm::RoundRobin), Some(&g));
        assert!(
            Arc::ptr_eq(&g.queue, &g2.queue),
            "the queue outlives a reload"
        );
        assert!(g2.targets[0].has_room());
        assert!(g2.targets[0].try_begin().is_some());
        let free = g.targets[1].try_begin();
        assert!(free.is_some(), "no limit, no refusal");
        // Waiting requests find the newest group through the old one; groups without limits
        // on either side are not linked (an nlb flow's snapshot would keep them all alive).
        let g2 = Arc::new(g2);
        g.succeeded_by(&g2);
        assert!(Arc::ptr_eq(&g.latest().unwrap(), &g2));
        let g3 = Arc::new(TargetGroup::build(
            tg(&[1, 2], Algorithm::RoundRobin),
            Some(&g2),
        ));
        g2.succeeded_by(&g3);
        assert!(g2.latest().is_none());
        assert!(
            Arc::ptr_eq(&g.latest().unwrap(), &g2),
            "the chain ends there"
        );
    }

    #[tokio::test]
    async fn cross_zone_off_prefers_the_local_zone_while_it_has_a_usable_target() {
        let mut cfg = tg(&[1, 2, 3], Algorithm::RoundRobin);
        for (t, z) in cfg
            .targets
            .iter_mut()
            .zip(["us-east-1a", "us-east-1b", "us-east-1a"])
        {
            t.zone = Some(z.into());
        }
        cfg.local_zone = Some("us-east-1a".into());
        let spread = TargetGroup::build(cfg.clone(), None);
        let picks: Vec<u16> = (0..3).map(|_| port(&spread.select(0).unwrap())).collect();
        assert_eq!(picks, vec![1, 2, 3], "cross-zone on: every zone");
        cfg.cross_zone = false;
        let g = TargetGroup::build(cfg, None);
        for t in &g.targets {
            t.record_check(Outcome::Success);
        }
        let picks: Vec<u16> = (0..4).map(|_| port(&g.select(0).unwrap())).collect();
        assert_eq!(picks, vec![1, 3, 1, 3], "only the local zone");
        assert_eq!(g.preference(0).len(), 2);
        g.targets[0].record_check(Outcome::Failed);
        g.targets[2].record_check(Outcome::Failed);
        assert_eq!(
            port(&g.select(0).unwrap()),
            2,
            "no usable local target: the other zone"
        );
    }

    #[tokio::test]
    async fn reload_keeps_health_and_drains_removed_targets() {
        let g = TargetGroup::build(tg(&[1, 2], Algorithm::RoundRobin), None);
        for t in &g.targets {
            t.record_check(Outcome::Success);
        }
        let guard = g.targets[1].begin();
        let g2 = TargetGroup::build(tg(&[1, 3], Algorithm::RoundRobin), Some(&g));
        assert!(
            Arc::ptr_eq(&g.targets[0], &g2.targets[0]),
            "kept target is the same object"
        );
        assert_eq!(g2.targets[0].state(), State::Healthy);
        assert_eq!(g2.targets[1].state(), State::Initial);
        let draining = lock(&g2.draining).clone();
        assert_eq!(draining.len(), 1);
        assert_eq!(port(&draining[0]), 2);
        assert_eq!(draining[0].state(), State::Draining);
        // Never selected while draining.
        for _ in 0..10 {
            assert_ne!(port(&g2.select(0).unwrap()), 2);
        }
        // Still busy: stays draining until its request ends.
        assert!(g2.reap_draining(Instant::now()).is_empty());
        drop(guard);
        assert_eq!(g2.reap_draining(Instant::now()).len(), 1);
        assert_eq!(draining[0].state(), State::Unused);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_deadline_cuts_a_busy_target() {
        let g = TargetGroup::build(tg(&[1, 2], Algorithm::RoundRobin), None);
        let _busy = g.targets[1].begin();
        let g2 = TargetGroup::build(tg(&[1], Algorithm::RoundRobin), Some(&g));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(g2.reap_draining(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(g2.reap_draining(Instant::now()).len(), 1);
    }

    #[tokio::test]
    async fn least_outstanding_avoids_busy_targets() {
        let g = TargetGroup::build(tg(&[1, 2, 3], Algorithm::LeastOutstandingRequests), None);
        let _a = g.targets[0].begin();
        let _b = g.targets[2].begin();
        for _ in 0..10 {
            assert_eq!(port(&g.select(0).unwrap()), 2);
        }
    }

    #[tokio::test]
    async fn maglev_group_agrees_across_builds_and_skips_unhealthy() {
        let a = TargetGroup::build(tg(&[1, 2, 3], Algorithm::Maglev), None);
        let b = TargetGroup::build(tg(&[1, 2, 3], Algorithm::Maglev), None);
        for t in a.targets.iter().chain(&b.targets) {
            t.record_check(Outcome::Success);
        }
        for h in 0..500u64 {
            let h = crate::select::maglev::hash64(1, &h.to_le_bytes());
            assert_eq!(port(&a.select(h).unwrap()), port(&b.select(h).unwrap()));
        }
        a.targets[0].record_check(Outcome::Failed);
        for h in 0..500u64 {
            let h = crate::select::maglev::hash64(1, &h.to_le_bytes());
            let before = port(&b.select(h).unwrap());
            let after = port(&a.select(h).unwrap());
            assert_ne!(after, 1);
            if before != 1 {
                assert_eq!(before, after, "flows of healthy targets stay put");
            }
            assert_eq!(a.preference(h).len(), 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn termination_follows_the_group_policy() {
        let mut cfg = tg(&[1, 2], Algorithm::Maglev);
        cfg.termination = Termination {
            on_deregistration: true,
            on_unhealthy: true,
            unhealthy_draining: Duration::ZERO,
        };
        let g = TargetGroup::build(cfg.clone(), None);
        let mut sig = g.targets[0].termination_signal();
        g.targets[0].record_check(Outcome::Success);
        assert!(!*sig.borrow_and_update());
        g.targets[0].record_check(Outcome::Failed);
        assert!(
            sig.has_changed().unwrap() && *sig.borrow_and_update(),
            "reset on unhealthy"
        );
        // Deregistration: cut when the delay ends with flows still open.
        let busy = g.targets[1].begin();
        let sig1 = g.targets[1].termination_signal();
        let mut only1 = cfg.clone();
        only1.targets.truncate(1);
        let g2 = TargetGroup::build(only1, Some(&g));
        tokio::time::advance(Duration::from_secs(29)).await;
        g2.reap_draining(Instant::now());
        assert!(!*sig1.borrow());
        tokio::time::advance(Duration::from_secs(1)).await;
        g2.reap_draining(Instant::now());
        assert!(*sig1.borrow(), "cut when the deregistration delay ends");
        drop(busy);
        // The alb's policy never cuts.
        let a = TargetGroup::build(tg(&[3], Algorithm::RoundRobin), None);
        let s3 = a.targets[0].termination_signal();
        a.targets[0].record_check(Outcome::Failed);
        assert!(!*s3.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovered_target_is_not_cut_by_its_old_verdict() {
        let mut cfg = tg(&[1], Algorithm::Maglev);
        cfg.termination = Termination {
            on_deregistration: false,
            on_unhealthy: true,
            unhealthy_draining: Duration::ZERO,
        };
        let g = TargetGroup::build(cfg, None);
        let t = &g.targets[0];
        t.record_check(Outcome::Success);
        t.record_check(Outcome::Failed);
        while t.state() != State::Unhealthy {
            t.record_check(Outcome::Failed);
        }
        assert!(*t.termination_signal().borrow(), "cut while unhealthy");
        while !t.state().routable() {
            t.record_check(Outcome::Success);
        }
        assert!(
            !*t.termination_signal().borrow(),
            "a connection opened after recovery must not be cut at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unhealthy_draining_interval_cuts_only_when_it_ends() {
        let mut cfg = tg(&[1], Algorithm::Maglev);
        cfg.termination = Termination {
            on_deregistration: false,
            on_unhealthy: false,
            unhealthy_draining: Duration::from_secs(10),
        };
        let g = TargetGroup::build(cfg, None);
        let t = &g.targets[0];
        t.record_check(Outcome::Success);
        while t.state() != State::Unhealthy {
            t.record_check(Outcome::Failed);
        }
        let sig = t.termination_signal();
        assert!(!*sig.borrow(), "not cut on turning unhealthy");
        tokio::time::advance(Duration::from_secs(9)).await;
        g.cut_unhealthy(Instant::now());
        assert!(!*sig.borrow(), "still draining at 9 s");
        tokio::time::advance(Duration::from_secs(1)).await;
        g.cut_unhealthy(Instant::now());
        assert!(*sig.borrow(), "cut when the draining interval ends");
        // Healthy again before the interval ends: nothing is cut.
        while !t.state().routable() {
            t.record_check(Outcome::Success);
        }
        while t.state() != State::Unhealthy {
            t.record_check(Outcome::Failed);
        }
        let sig = t.termination_signal();
        tokio::time::advance(Duration::from_secs(5)).await;
        while !t.state().routable() {
            t.record_check(Outcome::Success);
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        g.cut_unhealthy(Instant::now());
        assert!(!*sig.borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_targets_get_no_traffic_until_their_time_is_up() {
        let g = TargetGroup::build(tg(&[1, 2, 3, 4], Algorithm::RoundRobin), None);
        for t in &g.targets {
            t.record_check(Outcome::Success);
        }
        for _ in 0..5 {
            g.record_outcome(&g.targets[0], true);
        }
        assert!(g.targets[0].is_ejected());
        for _ in 0..12 {
            assert_ne!(port(&g.select(0).unwrap()), 1);
        }
        // A second and third failing target: only two of four may be out at once.
        for t in &g.targets[1..3] {
            for _ in 0..5 {
                g.record_outcome(t, true);
            }
        }
        let out = g.targets.iter().filter(|t| t.is_ejected()).count();
        assert_eq!(out, 2);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!g.targets[0].is_ejected());
        let picks: Vec<u16> = (0..8).map(|_| port(&g.select(0).unwrap())).collect();
        assert!(picks.contains(&1), "back in rotation: {picks:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_a_newly_healthy_target() {
        let mut cfg = tg(&[1, 2], Algorithm::WeightedRandom);
        cfg.slow_start = Duration::from_secs(30);
        for t in &mut cfg.targets {
            t.weight = 100;
        }
        let g = TargetGroup::build(cfg, None);
        g.targets[0].record_check(Outcome::Success);
        tokio::time::advance(Duration::from_secs(60)).await;
        g.targets[1].record_check(Outcome::Success);
        let now = Instant::now();
        assert_eq!(g.targets[0].effective_weight(g.cfg.slow_start, now), 100);
        assert_eq!(g.targets[1].effective_weight(g.cfg.slow_start, now), 1);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(
            g.targets[1].effective_weight(g.cfg.slow_start, Instant::now()),
            50
        );
    }

    /// Automatic target weights on a paused clock: a target answering 5xx to half its requests,
    /// beside two clean ones, is judged anomalous at the next period and its share of
    /// weighted_random picks falls period by period to about 1/64 of its peers'; once clean, it
    /// climbs back to an even share. Without `anomaly_mitigation` it is judged all the same, but
    /// keeps its share.
    #[tokio::test(start_paused = true)]
    async fn automatic_target_weights_move_traffic_off_an_anomalous_target_and_back() {
        for mitigation in [true, false] {
            let mut cfg = tg(&[1, 2, 3], Algorithm::WeightedRandom);
            cfg.anomaly_mitigation = mitigation;
            cfg.outlier_detection.enabled = false;
            let g = TargetGroup::build(cfg, None);
            for t in &g.targets {
                t.record_check(Outcome::Success);
            }
            // One period of traffic: target 1 fails every other exchange while it is bad.
            let period = async |bad: bool| {
                let mut picks = [0u32; 3];
                for k in 0..3000 {
                    let t = g.select(0).unwrap();
                    let i = usize::from(port(&t)) - 1;
                    picks[i] += 1;
                    g.record_outcome(&t, bad && i == 0 && k % 2 == 0);
                }
                tokio::time::sleep(crate::anomaly::PERIOD).await;
                g.anomaly_tick(Instant::now());
                picks
            };
            let first = period(true).await;
            assert!(
                first[0] > 800,
                "an even share before any verdict: {first:?}"
            );
            assert_eq!(g.targets[0].anomaly(), (true, mitigation));
            assert_eq!(g.anomaly_counts(), (1, usize::from(mitigation)));
            assert_eq!(g.targets[1].anomaly(), (false, false));
            let mut shares = Vec::new();
            for _ in 0..7 {
                shares.push(period(true).await[0]);
            }
            if mitigation {
                // Halved each period, to 1/64 of its weight: about 23 of 3000 picks.
                assert!(shares[0] < 700 && shares[0] > 400, "{shares:?}");
                assert!(shares[6] < 60, "{shares:?}");
                assert!(shares.windows(2).take(4).all(|w| w[1] < w[0]), "{shares:?}");
            } else {
                assert!(shares.iter().all(|&s| s > 800), "{shares:?}");
            }
            // Recovered: the next verdicts find it normal, and its share grows back.
            let mut back = Vec::new();
            for _ in 0..9 {
                back.push(period(false).await[0]);
            }
            assert_eq!(g.targets[0].anomaly(), (false, false), "{back:?}");
            assert!(back[8] > 800, "an even share again: {back:?}");
            if mitigation {
                assert!(back[1] < back[4], "{back:?}");
            }
        }
    }
}
