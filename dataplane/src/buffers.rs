//! A per-thread cache of I/O buffers. Connections take a buffer when bytes arrive and give it
//! back when they go idle, so an idle keep-alive connection holds no buffer, and a busy one does
//! not pay malloc, free and page faults for every request.

use std::cell::RefCell;

/// Size of one buffer.
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept per thread (4 MiB at most): enough for the requests one thread has in flight
/// at once, not so many that idle memory grows with a past burst.
const MAX_CACHED: usize = 256;

thread_local! {
    static CACHE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with at least `BUF_SIZE` capacity.
pub fn take() -> Vec<u8> {
    CACHE
        .with(|c| c.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
}

/// Returns a buffer to this thread's cache. Buffers that grew past twice the normal size
/// (a large head, say) are freed instead, so the cache stays bounded.
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() < BUF_SIZE || buf.capacity() > 2 * BUF_SIZE {
        return;
    }
    buf.clear();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
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
}
