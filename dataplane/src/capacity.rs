//! Per-target concurrency limits (ALB's Target Optimizer, HAProxy's `maxconn`): the queue where
//! a target group's requests wait, in turn, for a target with room.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One try at claiming a target with room.
#[derive(Debug)]
pub enum Attempt<T> {
    /// A target with room, claimed.
    Claimed(T),
    /// Every usable target is at its limit: waiting may help.
    Busy,
    /// No usable target at all: waiting would not help.
    Nothing,
}

/// Why a request got no target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no usable target")]
    NoTarget,
    /// Every target was at its limit and the request could not wait (no queue, or it was
    /// full).
    #[error("every target is at its concurrency limit")]
    Full,
    #[error("no target had room within the queue timeout")]
    TimedOut,
}

/// A target group's waiting requests, in arrival order. Its targets hold it too, so that a
/// request ending on one of them hands the freed slot to the longest waiter. Kept across
/// reloads of the group.
#[derive(Debug, Default)]
pub struct Queue {
    line: Mutex<Line>,
    /// Requests waiting: those in the line, and those a freed slot took out of it that have
    /// not claimed it yet (so that a newcomer does not take it first).
    waiting: AtomicUsize,
}

/// The waiters in arrival order, and the slots freed while requests waited but none was in
/// line to be handed one (all handed slots they had yet to claim): the next to join the line
/// looks at once.
#[derive(Debug, Default)]
struct Line {
    waiters: VecDeque<Arc<Waiter>>,
    spare: usize,
}

/// One waiting request.
#[derive(Debug, Default)]
struct Waiter {
    notify: Notify,
    /// In the line (false once a freed slot took it out).
    queued: AtomicBool,
}

/// How often the first in line looks on its own, for room that appears without a request
/// ending (an ejection that ran out, a group that began to fail open).
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A waiting request's place while it lives. When it leaves, its place goes; if a freed slot
/// had taken it out of the line and it leaves without the slot (a timeout, a client that
/// went away), the slot goes to the next in line.
struct Turn<'q> {
    queue: &'q Queue,
    me: Arc<Waiter>,
    gauge: metrics::Gauge,
    claimed: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
        let was_queued = {
            let mut line = lock(&self.queue.line);
            let queued = self.me.queued.swap(false, Ordering::SeqCst);
            if queued {
                line.waiters.retain(|w| !Arc::ptr_eq(w, &self.me));
            }
            if self.queue.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
                // Nobody waits: a newcomer tries at once, spare slots or not.
                line.spare = 0;
            }
            queued
        };
        // Handed a slot it did not take: the next in line gets it.
        if !was_queued && !self.claimed {
            self.queue.release();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// A request on a limited target ended: its slot goes to the longest waiter, if any.
    pub fn release(&self) {
        // Pairs with the fence in `admit`: either a waiter sees the freed slot, or this sees
        // the waiter.
        fence(Ordering::SeqCst);
        if self.waiting() == 0 {
            return;
        }
        let first = {
            let mut line = lock(&self.line);
            let first = line.waiters.pop_front();
            match &first {
                Some(w) => w.queued.store(false, Ordering::SeqCst),
                None => line.spare += 1,
            }
            first
        };
        if let Some(w) = first {
            w.notify.notify_one();
        }
    }

    /// The targets changed (one turned healthy, a reload): every waiter looks again, keeping
    /// its place.
    pub fn wake_all(&self) {
        for w in lock(&self.line).waiters.iter() {
            w.notify.notify_one();
        }
    }

    /// Whether `me` is first in line.
    fn first(&self, me: &Arc<Waiter>) -> bool {
        lock(&self.line)
            .waiters
            .front()
            .is_some_and(|w| Arc::ptr_eq(w, me))
    }

    /// Runs `claim` until it claims a target. With nobody waiting (or when it may not wait)
    /// it tries at once; otherwise, or when every target is busy, the request waits its turn
    /// (first come, first served) for up to `timeout`, unless `max` requests already wait.
    /// `gauge` counts the waiting requests.
    pub async fn admit<T>(
        &self,
        timeout: Duration,
        max: usize,
        gauge: &metrics::Gauge,
        mut claim: impl FnMut() -> Attempt<T>,
    ) -> Result<T, Refusal> {
        if self.waiting() == 0 || timeout.is_zero() {
            match claim() {
                Attempt::Claimed(t) => return Ok(t),
                Attempt::Nothing => return Err(Refusal::NoTarget),
                Attempt::Busy => {}
            }
        }
        if timeout.is_zero() || self.waiting() >= max {
            return Err(Refusal::Full);
        }
        // One timer: the next look of its own, or the deadline if that comes first.
        let deadline = Instant::now() + timeout;
        let timer = tokio::time::sleep_until(deadline.min(Instant::now() + LOOK_EVERY));
        tokio::pin!(timer);
        let gauge = gauge.clone();
        gauge.increment(1.0);
        let me = Arc::new(Waiter::default());
        let (ahead, spare) = {
            let mut line = lock(&self.line);
            me.queued.store(true, Ordering::SeqCst);
            line.waiters.push_back(me.clone());
            let spare = line.spare > 0;
            line.spare = line.spare.saturating_sub(1);
            (self.waiting.fetch_add(1, Ordering::SeqCst), spare)
        };
        let mut turn = Turn {
            queue: self,
            me,
            gauge,
            claimed: false,
        };
        // The only waiter looks at once (a slot may have opened since the try above), and so
        // does one that finds a spare slot; the others wait to be handed a slot, so that a
        // request never overtakes one waiting before it (nor one handed a slot it has yet to
        // claim).
        let mut look = ahead == 0 || spare;
        loop {
            fence(Ordering::SeqCst);
            if look {
                match claim() {
                    Attempt::Claimed(t) => {
                        turn.claimed = true;
                        return Ok(t);
                    }
                    Attempt::Nothing => return Err(Refusal::NoTarget),
                    Attempt::Busy => {}
                }
                // Handed a slot someone else took: back to the front, keeping its turn.
                let mut line = lock(&self.line);
                if !turn.me.queued.swap(true, Ordering::SeqCst) {
                    line.waiters.push_front(turn.me.clone());
                }
            }
            tokio::select! {
                biased;
                _ = turn.me.notify.notified() => look = true,
                _ = &mut timer => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Refusal::TimedOut);
                    }
                    timer.as_mut().reset(deadline.min(now + LOOK_EVERY));
                    look = self.first(&turn.me);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// A pool of `room` slots standing in for a target group's limited targets.
    #[derive(Debug)]
    struct Slots {
        free: AtomicU64,
        queue: Queue,
    }

    impl Slots {
        fn new(room: u64) -> Arc<Slots> {
            Arc::new(Slots {
                free: AtomicU64::new(room),
                queue: Queue::default(),
            })
        }

        fn claim(&self) -> Attempt<()> {
            match self
                .free
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            {
                Ok(_) => Attempt::Claimed(()),
                Err(_) => Attempt::Busy,
            }
        }

        fn free_one(&self) {
            self.free.fetch_add(1, Ordering::AcqRel);
            self.queue.release();
        }

        async fn admit(self: &Arc<Self>, timeout: u64, max: usize) -> Result<(), Refusal> {
            self.queue
                .admit(
                    Duration::from_secs(timeout),
                    max,
                    &metrics::Gauge::noop(),
                    || self.claim(),
                )
                .await
        }
    }

    impl Slots {
        /// A request waiting in its own task, settled in its place.
        async fn waiter(
            self: &Arc<Self>,
            timeout: u64,
            max: usize,
        ) -> tokio::task::JoinHandle<Result<(), Refusal>> {
            let s = self.clone();
            let t = tokio::spawn(async move { s.admit(timeout, max).await });
            settle().await;
            t
        }
    }

    /// Polls `f` once, in this task, before anything else runs.
    async fn poll_once<F: std::future::Future>(
        f: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        let mut f = Some(f);
        std::future::poll_fn(|cx| std::task::Poll::Ready(f.take().unwrap().poll(cx))).await
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_queue_a_busy_group_refuses_at_once() {
        let s = Slots::new(1);
        assert_eq!(s.admit(0, 100).await, Ok(()));
        assert_eq!(s.admit(0, 100).await, Err(Refusal::Full));
        let none = Queue::default()
            .admit(Duration::from_secs(5), 10, &metrics::Gauge::noop(), || {
                Attempt::<()>::Nothing
            })
            .await;
        assert_eq!(none, Err(Refusal::NoTarget), "nothing to wait for");
        assert_eq!(s.queue.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order_as_slots_free() {
        let s = Slots::new(0);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let r = s.admit(10, 100).await;
                order.lock().unwrap().push(i);
                r
            }));
            settle().await;
        }
        assert_eq!(s.queue.waiting(), 3);
        for served in 1..=3 {
            s.free_one();
            settle().await;
            assert_eq!(order.lock().unwrap().len(), served);
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(()));
        }
        assert_eq!(s.queue.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_does_not_overtake_a_waiting_request() {
        let s = Slots::new(0);
        let first = s.waiter(10, 100).await;
        // A slot frees and, before the waiter runs, a new request arrives: it queues behind.
        s.free_one();
        let mut late = Box::pin(s.admit(10, 100));
        let polled = poll_once(late.as_mut()).await;
        assert!(polled.is_pending(), "the newcomer waits its turn");
        settle().await;
        assert!(first.is_finished(), "the waiter got the slot");
        assert_eq!(first.await.unwrap(), Ok(()));
        s.free_one();
        assert_eq!(late.await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_timeout_and_a_full_queue_refuses() {
        let s = Slots::new(0);
        let started = Instant::now();
        let waiting = s.waiter(5, 1).await;
        assert_eq!(s.admit(5, 1).await, Err(Refusal::Full), "one may wait");
        assert_eq!(waiting.await.unwrap(), Err(Refusal::TimedOut));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(s.queue.waiting(), 0);
    }

    /// A waiter woken for a slot that leaves without it (its client went away) hands the
    /// slot to the next in line instead of leaving it unused until another request ends.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_leaves_hands_its_turn_on() {
        let s = Slots::new(0);
        let gone = s.waiter(10, 100).await;
        let next = s.waiter(10, 100).await;
        // The slot frees and the first waiter is cancelled before it can run.
        s.free.fetch_add(1, Ordering::AcqRel);
        s.queue.release();
        gone.abort();
        settle().await;
        assert!(next.is_finished(), "the next waiter took the slot");
        assert_eq!(next.await.unwrap(), Ok(()));
    }

    /// A later request that gives up (a shorter timeout here) changes no one's place, and
    /// slots freed together go to as many waiters.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_times_out_leaves_the_others_their_places() {
        let s = Slots::new(0);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, timeout) in [(0, 10), (1, 10), (2, 10), (3, 2)] {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let r = s.admit(timeout, 100).await;
                order.lock().unwrap().push(i);
                r
            }));
            settle().await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(*order.lock().unwrap(), vec![3], "the short timeout gave up");
        s.free_one();
        s.free_one();
        settle().await;
        s.free_one();
        settle().await;
        assert_eq!(*order.lock().unwrap(), vec![3, 0, 1, 2]);
        let results: Vec<_> = outcomes(tasks).await;
        assert_eq!(
            results,
            vec![Ok(()), Ok(()), Ok(()), Err(Refusal::TimedOut)]
        );
    }

    async fn outcomes(
        tasks: Vec<tokio::task::JoinHandle<Result<(), Refusal>>>,
    ) -> Vec<Result<(), Refusal>> {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    /// Room that appears without a request ending (an ejection that ran out) is found by the
    /// first in line within `LOOK_EVERY`.
    #[tokio::test(start_paused = true)]
    async fn the_first_in_line_looks_on_its_own_every_second() {
        let s = Slots::new(0);
        let waiter = s.waiter(10, 100).await;
        let started = Instant::now();
        s.free.fetch_add(1, Ordering::AcqRel);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert!(started.elapsed() <= LOOK_EVERY, "{:?}", started.elapsed());
    }

    /// Slots freed while the only waiter holds a slot it has yet to claim have nobody to go
    /// to: each of the next requests to wait finds one at once.
    #[tokio::test(start_paused = true)]
    async fn slots_freed_with_nobody_in_line_go_to_the_next_to_wait() {
        let s = Slots::new(0);
        let first = s.waiter(10, 100).await;
        for _ in 0..3 {
            s.free_one();
        }
        for i in 0..2 {
            let mut next = Box::pin(s.admit(10, 100));
            let polled = poll_once(next.as_mut()).await;
            assert_eq!(
                polled,
                std::task::Poll::Ready(Ok(())),
                "request {i} took a spare slot"
            );
        }
        assert_eq!(first.await.unwrap(), Ok(()));
        let mut last = Box::pin(s.admit(10, 100));
        assert!(poll_once(last.as_mut()).await.is_pending(), "no slot left");
    }

    #[tokio::test(start_paused = true)]
    async fn new_room_wakes_every_waiter() {
        let s = Slots::new(0);
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.admit(10, 100).await })
            })
            .collect();
        settle().await;
        // A limit raised by a reload, or a target back in service: two slots at once.
        s.free.fetch_add(2, Ordering::AcqRel);
        s.queue.wake_all();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(()));
        }
    }
}
