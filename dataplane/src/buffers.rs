//! A per-thread cache of I/O buffers. Connections take a buffer when bytes arrive and give it
//! back when they go idle, so an idle keep-alive connection holds no buffer, and a busy one does
//! not pay malloc, free and page faults for every request.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU32, Ordering};

/// Size of one buffer.
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept per thread (4 MiB at most): enough for the requests one thread has in flight
/// at once, not so many that idle memory grows with a past burst.
const MAX_CACHED: usize = 256;

/// Buffers a thread keeps once the process has gone quiet ([`shrink`]).
const KEEP_WHEN_QUIET: usize = 16;

/// Bumped by [`shrink`]; a thread whose cache saw an older value shrinks it at its next use.
static EPOCH: AtomicU32 = AtomicU32::new(0);

struct Cache {
    epoch: u32,
    bufs: Vec<Vec<u8>>,
}

thread_local! {
    static CACHE: RefCell<Cache> = const { RefCell::new(Cache { epoch: 0, bufs: Vec::new() }) };
}

/// This thread's cache, shrunk first if [`shrink`] was called since its last use.
fn with_cache<R>(f: impl FnOnce(&mut Vec<Vec<u8>>) -> R) -> R {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let now = EPOCH.load(Ordering::Relaxed);
        if c.epoch != now {
            c.epoch = now;
            c.bufs.truncate(KEEP_WHEN_QUIET);
            c.bufs.shrink_to_fit();
        }
        f(&mut c.bufs)
    })
}

/// Tells every thread's cache to give back what a past burst left in it, beyond
/// `KEEP_WHEN_QUIET` buffers: this thread's at once, the others' at their next use. Called when
/// a wave of connections has gone idle ([`crate::park`]).
pub fn shrink() {
    EPOCH.fetch_add(1, Ordering::Relaxed);
    with_cache(|_| ());
}

/// Buffers in this thread's cache.
pub fn cached() -> usize {
    CACHE.with(|c| c.borrow().bufs.len())
}

/// An empty buffer with at least `BUF_SIZE` capacity.
pub fn take() -> Vec<u8> {
    with_cache(|c| c.pop()).unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
}

/// Returns a buffer to this thread's cache. Buffers that grew past twice the normal size
/// (a large head, say) are freed instead, so the cache stays bounded.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() < BUF_SIZE || buf.capacity() > 2 * BUF_SIZE {
        return;
    }
    buf.clear();
    with_cache(|c| {
        if c.len() < MAX_CACHED {
            c.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_bounded() {
        let a = take();
        assert!(a.capacity() >= BUF_SIZE && a.is_empty());
        let ptr = a.as_ptr();
        give(a);
        let b = take();
        assert_eq!(b.as_ptr(), ptr, "the same allocation comes back");
        give(Vec::with_capacity(10 * BUF_SIZE)); // too big: dropped
        give(b);
        let c = take();
        assert_eq!(c.as_ptr(), ptr);
    }

    #[test]
    fn a_shrink_keeps_a_few_buffers_on_every_thread() {
        fn fill() -> usize {
            let bufs: Vec<Vec<u8>> = (0..40).map(|_| take()).collect();
            bufs.into_iter().for_each(give);
            cached()
        }
        let (filled_tx, filled_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            filled_tx.send(fill()).unwrap();
            go_rx.recv().unwrap();
            let before_use = cached();
            give(take());
            (before_use, cached())
        });
        assert!(filled_rx.recv().unwrap() >= 40);
        assert!(fill() >= 40);
        shrink();
        assert_eq!(cached(), KEEP_WHEN_QUIET, "this thread's at once");
        go_tx.send(()).unwrap();
        let (before_use, after_use) = other.join().unwrap();
        assert!(
            before_use >= 40,
            "another thread's is untouched until it uses it"
        );
        assert_eq!(after_use, KEEP_WHEN_QUIET, "and shrunk at its next use");
    }
}
