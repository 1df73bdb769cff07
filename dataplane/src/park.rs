//! Parking: a keep-alive connection idle for a while leaves its task and tokio's registration
//! and waits in one epoll set the server owns, as a small slab entry, until its client speaks,
//! its idle timeout passes, or a drain ends it.
//!
//! A task costs a connection its future, the task's header and tokio's cache-padded readiness
//! record: about 1.5 KB per idle connection. Parked, it costs its slab entry, its heap entry and
//! the plane's boxed resume state: a few hundred bytes. Parking costs two `epoll_ctl`s and
//! waking two more and a spawn, so a plane parks a connection only once it has been idle for
//! [`PARK_AFTER`]: a busy keep-alive connection never parks.

use crate::client::DRAIN_LINGER;
use crate::drain::{Guard, Tracker};
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// How long a keep-alive connection waits in its own task before it parks.
pub const PARK_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// After this many parks, once none has come for [`TRIM_QUIET`], the read-buffer caches are
/// shrunk and the heap is trimmed: the tasks and buffers a burst of connections left when they
/// went idle are freed memory that glibc keeps until told otherwise, so the process would hold
/// its peak for good. HAProxy trims the same way when it releases its pools.
const TRIM_AFTER_PARKS: usize = 512;
const TRIM_QUIET: std::time::Duration = std::time::Duration::from_millis(500);

/// Gives freed heap pages back to the system.
#[allow(unsafe_code)]
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What a parked connection is given back when its client speaks (or closes).
#[derive(Debug)]
pub struct Resumed {
    /// The socket, registered with tokio again.
    pub stream: TcpStream,
    /// The process's drain signal.
    pub shutdown: watch::Receiver<bool>,
}

/// A plane's state of a parked connection: everything but the socket. It is kept inline in the
/// parker's slab (no allocation of its own, so the heap the connection's task left can be given
/// back whole), and dropped unrun when the connection ends parked (idle timeout, drain), which
/// releases what it holds (connection slots, gauges).
pub trait Parked: Send + 'static {
    /// The connection's future from where it parked.
    fn resume(self, r: Resumed) -> impl Future<Output = ()> + Send + 'static;
}

/// The state of a plane that never parks a connection.
#[derive(Debug)]
pub enum Unparkable {}

impl Parked for Unparkable {
    #[allow(clippy::manual_async_fn)]
    fn resume(self, _: Resumed) -> impl Future<Output = ()> + Send + 'static {
        async move { match self {} }
    }
}

/// The server's parking place. Cloning shares it.
pub struct Parker<T>(Arc<Inner<T>>);

impl<T> Clone for Parker<T> {
    fn clone(&self) -> Self {
        Parker(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Parker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parker")
            .field("parked", &self.parked())
            .finish()
    }
}

struct Inner<T> {
    registry: mio::Registry,
    slots: Mutex<Slots<T>>,
    /// A deadline earlier than the one the parker sleeps to was added.
    earlier: Notify,
    tracker: Tracker,
    shutdown: watch::Receiver<bool>,
}

/// One parked connection.
struct Entry<T> {
    stream: std::net::TcpStream,
    state: T,
    /// Counts the connection as live for the drain, as its task did.
    _live: Guard,
}

struct Slots<T> {
    /// The slab: `(generation, entry)`; a generation changes whenever its slot is emptied, so
    /// a late event or timer for an earlier occupant finds nothing.
    entries: Vec<(u32, Option<Entry<T>>)>,
    free: Vec<u32>,
    /// `(deadline, slot, generation)`, earliest first.
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    parked: usize,
    /// Once the process drains: when every parked connection closes.
    linger_until: Option<Instant>,
    /// Parks since the heap was last trimmed, and when the last one came.
    parks_untrimmed: usize,
    last_park: Option<Instant>,
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            entries: Vec::new(),
            free: Vec::new(),
            timers: BinaryHeap::new(),
            parked: 0,
            linger_until: None,
            parks_untrimmed: 0,
            last_park: None,
        }
    }
}

impl<T> Slots<T> {
    fn insert(&mut self, entry: Entry<T>, deadline: Instant) -> (u32, u32) {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.entries.push((0, None));
                (self.entries.len() - 1) as u32
            }
        };
        let (generation, place) = &mut self.entries[slot as usize];
        *place = Some(entry);
        let generation = *generation;
        // A resumed connection's timer stays in the heap until its deadline; under churn
        // (connections parking and resuming every few seconds) those would pile up for an
        // idle timeout's worth of parks, so they are swept once they outnumber the live ones.
        if self.timers.len() > 2 * self.parked + 1024 {
            let entries = &self.entries;
            self.timers
                .retain(|Reverse((_, s, g))| entries[*s as usize].0 == *g);
        }
        self.timers.push(Reverse((deadline, slot, generation)));
        self.parked += 1;
        self.parks_untrimmed += 1;
        self.last_park = Some(Instant::now());
        (slot, generation)
    }

    fn take(&mut self, slot: u32, generation: u32) -> Option<Entry<T>> {
        let (g, place) = self.entries.get_mut(slot as usize)?;
        if *g != generation {
            return None;
        }
        let entry = place.take()?;
        *g = g.wrapping_add(1);
        self.free.push(slot);
        self.parked -= 1;
        Some(entry)
    }

    /// Every entry whose deadline (or the drain's linger) has passed at `now`.
    fn expired(&mut self, now: Instant) -> Vec<Entry<T>> {
        let mut out = Vec::new();
        if self.linger_until.is_some_and(|l| l <= now) {
            self.timers.clear();
            for (slot, (g, place)) in self.entries.iter_mut().enumerate() {
                if let Some(e) = place.take() {
                    *g = g.wrapping_add(1);
                    self.free.push(slot as u32);
                    out.push(e);
                }
            }
            self.parked = 0;
            return out;
        }
        while let Some(&Reverse((at, slot, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            out.extend(self.take(slot, generation));
        }
        out
    }

    /// When the parker must next wake: to close connections, or to trim the heap.
    fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, ..))| *at);
        // The drain's linger matters only while something is parked.
        let linger = self.linger_until.filter(|_| self.parked > 0);
        earliest(earliest(timer, linger), self.trim_at())
    }

    /// When a wave of parking will have settled enough to give its tasks' memory back.
    fn trim_at(&self) -> Option<Instant> {
        match self.last_park {
            Some(at) if self.parks_untrimmed >= TRIM_AFTER_PARKS => Some(at + TRIM_QUIET),
            _ => None,
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn token(slot: u32, generation: u32) -> Token {
    Token(((generation as usize) << 32) | slot as usize)
}

fn untoken(t: Token) -> (u32, u32) {
    (t.0 as u32, (t.0 >> 32) as u32)
}

impl<T: Parked> Parker<T> {
    /// A parking place for one server, whose task runs on the current runtime. Parked
    /// connections count as live in `tracker`; `shutdown` turning true closes them after
    /// [`DRAIN_LINGER`], as idle connections in their own tasks are.
    pub fn start(tracker: Tracker, shutdown: watch::Receiver<bool>) -> std::io::Result<Parker<T>> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let poll = register(poll)?;
        let inner = Arc::new(Inner {
            registry,
            slots: Mutex::new(Slots::default()),
            earlier: Notify::new(),
            tracker,
            shutdown: shutdown.clone(),
        });
        tokio::spawn(run(inner.clone(), poll, shutdown));
        Ok(Parker(inner))
    }

    /// Parks `stream` until its client sends something or closes (then `state`'s future is
    /// spawned with it), or until `deadline` (then it is closed and `state` dropped). If it
    /// cannot be parked, it is resumed at once, so the connection carries on in a task.
    pub fn park(&self, stream: TcpStream, deadline: Instant, state: T) {
        let inner = &self.0;
        let std = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                // The socket left tokio's set but is lost with it: nothing to resume.
                tracing::debug!(error = %e, "cannot park a connection");
                return;
            }
        };
        let mut slots = inner.lock();
        let deadline = match slots.linger_until {
            Some(l) => deadline.min(l),
            None => deadline,
        };
        let fd = std.as_raw_fd();
        let earliest = slots.next_deadline();
        let (slot, generation) = slots.insert(
            Entry {
                stream: std,
                state,
                _live: inner.tracker.enter(),
            },
            deadline,
        );
        if let Err(e) = inner.registry.register(
            &mut SourceFd(&fd),
            token(slot, generation),
            Interest::READABLE,
        ) {
            tracing::debug!(error = %e, "cannot park a connection: it stays in a task");
            let entry = slots.take(slot, generation);
            drop(slots);
            if let Some(entry) = entry {
                self.resume(entry, false);
            }
            return;
        }
        // The parker learns when a trim has become due.
        let trim_due = slots.parks_untrimmed == TRIM_AFTER_PARKS;
        drop(slots);
        metrics::gauge!("causeway_parked_connections").increment(1.0);
        if earliest.is_none_or(|e| deadline < e) || trim_due {
            inner.earlier.notify_one();
        }
    }

    /// Gives a parked connection back to tokio and spawns its future.
    fn resume(&self, entry: Entry<T>, registered: bool) {
        let Entry {
            stream,
            state,
            _live,
        } = entry;
        if registered {
            if let Err(e) = self
                .0
                .registry
                .deregister(&mut SourceFd(&stream.as_raw_fd()))
            {
                tracing::debug!(error = %e, "unparking: deregister");
            }
        }
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                let fut = state.resume(Resumed {
                    stream,
                    shutdown: self.0.shutdown.clone(),
                });
                tokio::spawn(async move {
                    fut.await;
                    drop(_live);
                });
            }
            Err(e) => tracing::debug!(error = %e, "unparking: cannot register the connection"),
        }
    }
}

impl<T> Parker<T> {
    /// Connections parked now.
    pub fn parked(&self) -> usize {
        self.0.lock().parked
    }
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, Slots<T>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Registers the epoll set with tokio, to be woken when it has events.
#[allow(unsafe_code)]
fn register(poll: mio::Poll) -> std::io::Result<AsyncFd<mio::Poll>> {
    // SAFETY: `poll` owns its epoll descriptor and the `AsyncFd` owns `poll`: the descriptor is
    // neither closed nor replaced while it is registered.
    unsafe { AsyncFd::register(poll).map_err(Into::into) }
}

/// The parker's task: resumes connections whose client spoke, closes those whose time is up.
/// It lives as long as the runtime, as the server does.
async fn run<T: Parked>(
    inner: Arc<Inner<T>>,
    mut poll: AsyncFd<mio::Poll>,
    mut shutdown: watch::Receiver<bool>,
) {
    let parker = Parker(inner);
    let mut events = Events::with_capacity(256);
    let mut told = *shutdown.borrow();
    loop {
        let next = {
            let mut slots = parker.0.lock();
            if told && slots.linger_until.is_none() {
                slots.linger_until = Some(Instant::now() + DRAIN_LINGER);
            }
            slots.next_deadline()
        };
        let earlier = parker.0.earlier.notified();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let mut ready = false;
        tokio::select! {
            r = poll.readable_mut() => match r {
                Ok(mut guard) => {
                    ready = true;
                    events.clear();
                    match guard.get_inner_mut().poll(&mut events, Some(std::time::Duration::ZERO)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => tracing::warn!(error = %e, "parked connections: epoll_wait"),
                    }
                    if events.iter().count() < events.capacity() {
                        guard.clear_ready();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "parked connections: the epoll set failed");
                    return;
                }
            },
            () = sleep => {}
            () = earlier => {}
            r = shutdown.changed(), if !told => {
                // Err: the server's sender is gone; it will not drain, nor serve.
                told = true;
                if r.is_err() {
                    tracing::debug!("parked connections: the server is gone");
                }
            }
        }
        if ready {
            let woken: Vec<Entry<T>> = {
                let mut slots = parker.0.lock();
                events
                    .iter()
                    .filter_map(|ev| {
                        let (slot, generation) = untoken(ev.token());
                        slots.take(slot, generation)
                    })
                    .collect()
            };
            metrics::gauge!("causeway_parked_connections").decrement(woken.len() as f64);
            for entry in woken {
                parker.resume(entry, true);
            }
        }
        let (expired, trim) = {
            let mut slots = parker.0.lock();
            let now = Instant::now();
            let trim = slots.trim_at().is_some_and(|at| at <= now);
            if trim {
                slots.parks_untrimmed = 0;
            }
            (slots.expired(now), trim)
        };
        if trim {
            let t = std::time::Instant::now();
            crate::buffers::shrink();
            trim_heap();
            tracing::debug!(took = ?t.elapsed(), "parked connections: heap trimmed");
            metrics::counter!("causeway_heap_trims_total").increment(1);
        }
        if !expired.is_empty() {
            metrics::gauge!("causeway_parked_connections").decrement(expired.len() as f64);
            metrics::counter!("causeway_parked_connections_closed_total")
                .increment(expired.len() as u64);
        }
        // Dropping an entry closes its socket (which leaves the epoll set with it) and releases
        // what its resume state held.
        drop(expired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair on loopback: (ours, the client's).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (ours, _) = l.accept().await.unwrap();
        (ours, client)
    }

    /// A parked state that, resumed, reads what the client sent, reports it (or the EOF) on a
    /// channel, and answers.
    struct Reporter(tokio::sync::mpsc::UnboundedSender<(Instant, Vec<u8>)>);

    impl Parked for Reporter {
        async fn resume(self, mut r: Resumed) {
            let mut buf = vec![0u8; 64];
            let n = r.stream.read(&mut buf).await.unwrap_or(0);
            buf.truncate(n);
            self.0.send((Instant::now(), buf)).unwrap();
            if n > 0 {
                r.stream.write_all(b"served").await.unwrap();
            }
        }
    }

    fn reporter(tx: tokio::sync::mpsc::UnboundedSender<(Instant, Vec<u8>)>) -> Reporter {
        Reporter(tx)
    }

    fn parker() -> (Parker<Reporter>, Tracker, watch::Sender<bool>) {
        let tracker = Tracker::default();
        let (tx, rx) = watch::channel(false);
        (Parker::start(tracker.clone(), rx).unwrap(), tracker, tx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_connection_resumes_when_its_client_speaks() {
        let (p, tracker, _drain) = parker();
        let (ours, mut client) = pair().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        p.park(ours, start + Duration::from_secs(60), reporter(tx));
        assert_eq!(p.parked(), 1);
        assert_eq!(
            tracker.live(),
            1,
            "a parked connection counts for the drain"
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (at, got) = rx.recv().await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(at, start + Duration::from_secs(30));
        assert_eq!(p.parked(), 0);
        let mut answer = [0u8; 6];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"served", "the resumed future has the socket");
        // Its deadline no longer applies: the connection is its task's again.
        tokio::time::sleep(Duration::from_secs(120)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(tracker.live(), 0, "the resumed future finished");
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_connection_closes_at_its_deadline_unresumed() {
        let (p, tracker, _drain) = parker();
        let (late, late_client) = pair().await;
        let (early, early_client) = pair().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        p.park(late, start + Duration::from_secs(59), reporter(tx.clone()));
        // Parked after the later one, due before it: the parker wakes for it all the same.
        p.park(early, start + Duration::from_secs(20), reporter(tx));
        assert_eq!(p.parked(), 2);
        assert_eq!(
            causeway_testkit::raw::closed_after(early_client).await,
            Duration::from_secs(20)
        );
        assert_eq!(
            causeway_testkit::raw::closed_after(late_client).await,
            Duration::from_secs(39)
        );
        assert!(rx.try_recv().is_err(), "neither was resumed");
        assert_eq!(p.parked(), 0);
        assert_eq!(tracker.live(), 0, "their drain guards went with them");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_closing_a_parked_connection_resumes_it_to_see_the_end() {
        let (p, _tracker, _drain) = parker();
        let (ours, client) = pair().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        p.park(ours, start + Duration::from_secs(60), reporter(tx));
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(client);
        let (at, got) = rx.recv().await.unwrap();
        assert_eq!((at, got), (start + Duration::from_secs(5), Vec::new()));
        assert_eq!(p.parked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_closes_parked_connections_after_the_linger() {
        let (p, tracker, drain) = parker();
        let (silent, silent_client) = pair().await;
        let (busy, mut busy_client) = pair().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let far = Instant::now() + Duration::from_secs(3600);
        p.park(silent, far, reporter(tx.clone()));
        p.park(busy, far, reporter(tx.clone()));
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        drain.send_replace(true);
        tokio::time::sleep(DRAIN_LINGER / 2).await;
        // Parked during the drain: it goes with the others, not at its own deadline.
        let (late, late_client) = pair().await;
        p.park(late, far, reporter(tx));
        busy_client.write_all(b"GET").await.unwrap();
        let (at, got) = rx.recv().await.unwrap();
        assert_eq!((at, got), (start + DRAIN_LINGER / 2, b"GET".to_vec()));
        let mut answer = [0u8; 6];
        busy_client.read_exact(&mut answer).await.unwrap();
        assert_eq!(
            causeway_testkit::raw::closed_after(silent_client).await,
            DRAIN_LINGER / 2
        );
        assert_eq!(
            causeway_testkit::raw::closed_after(late_client).await,
            Duration::ZERO
        );
        assert_eq!(start.elapsed(), DRAIN_LINGER);
        assert_eq!((p.parked(), tracker.live()), (0, 0));
        assert!(rx.try_recv().is_err(), "only the busy one was resumed");
    }

    #[tokio::test]
    async fn many_connections_park_and_resume_on_their_own_sockets() {
        let (p, tracker, _drain) = parker();
        let mut clients = Vec::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let far = Instant::now() + Duration::from_secs(3600);
        for _ in 0..300 {
            let (ours, client) = pair().await;
            p.park(ours, far, reporter(tx.clone()));
            clients.push(client);
        }
        assert_eq!(p.parked(), 300);
        // Every other one speaks, each its own bytes, and gets its own answer.
        for (i, c) in clients.iter_mut().enumerate().filter(|(i, _)| i % 2 == 0) {
            c.write_all(format!("{i:04}").as_bytes()).await.unwrap();
        }
        let mut seen = Vec::new();
        for _ in 0..150 {
            seen.push(String::from_utf8(rx.recv().await.unwrap().1).unwrap());
        }
        seen.sort();
        let want: Vec<String> = (0..300).step_by(2).map(|i| format!("{i:04}")).collect();
        assert_eq!(seen, want);
        for c in clients.iter_mut().step_by(2) {
            let mut answer = [0u8; 6];
            c.read_exact(&mut answer).await.unwrap();
        }
        assert_eq!(p.parked(), 150);
        // Slots emptied by the first wave are reused by a second.
        for _ in 0..100 {
            let (ours, client) = pair().await;
            p.park(ours, far, reporter(tx.clone()));
            clients.push(client);
        }
        assert_eq!(p.parked(), 250);
        assert_eq!(tracker.live(), 250);
        assert!(p.0.lock().entries.len() <= 300, "the slab reuses its slots");
    }

    #[tokio::test]
    async fn resumed_connections_leave_no_pile_of_timers() {
        let tracker = Tracker::default();
        let (_drain, rx) = watch::channel(false);
        let p = Parker::<Handback>::start(tracker, rx).unwrap();
        let far = Instant::now() + Duration::from_secs(3600);
        let (ours, mut client) = pair().await;
        let mut ours = Some(ours);
        // One connection parked and resumed 3000 times, each with an hour to go.
        for i in 0..3000u32 {
            let (back_tx, back_rx) = tokio::sync::oneshot::channel();
            p.park(ours.take().unwrap(), far, Handback(back_tx));
            client.write_all(&i.to_be_bytes()).await.unwrap();
            ours = Some(back_rx.await.unwrap());
        }
        let slots = p.0.lock();
        assert_eq!(slots.parked, 0);
        assert!(
            slots.timers.len() <= 1024 + 1,
            "{} timers kept for nothing parked",
            slots.timers.len()
        );
    }

    /// A parked state that hands the socket back when resumed, its bytes unread.
    struct Handback(tokio::sync::oneshot::Sender<TcpStream>);

    impl Parked for Handback {
        async fn resume(self, mut r: Resumed) {
            let mut four = [0u8; 4];
            r.stream.read_exact(&mut four).await.unwrap();
            self.0.send(r.stream).unwrap();
        }
    }
}
