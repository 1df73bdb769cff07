//! The zero-copy carrier for `tcp_relay`: splice(2) moves bytes socket → pipe → socket inside
//! the kernel, one pipe per direction. The `unsafe` calls (pipe2, fcntl, splice, setsockopt)
//! are here and nowhere else.
#![allow(unsafe_code)]

use crate::tcp_relay::Carrier;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Each direction's pipe capacity (Linux's default; 256 KiB measured slower on loopback,
/// docs/benchmarks.md). The pipe holds references to socket pages, not copies.
const PIPE_SIZE: usize = 64 * 1024;

/// How many unsent bytes a spliced-to socket may hold (TCP_NOTSENT_LOWAT). Without a cap the
/// kernel autotunes the send buffer to megabytes of unsent pages, which are cold in cache by the
/// time they go; with it a 1 GiB download on loopback went 0.70x → 0.81-0.83x of direct
/// (docs/benchmarks.md). It caps only what is not yet sent, so a long, fast path keeps its
/// window in flight.
const NOTSENT_LOWAT: libc::c_int = 16 * 1024;

/// The receive buffer (SO_RCVBUF) a spliced-from socket asks for. Autotuning sizes a socket's
/// buffer from what the reader takes per round trip; a relay reads in quick bursts, so on
/// loopback it stopped at 1.3 MB while the sender had megabytes queued: the buffer sat full,
/// the sender was window-limited 60% of the time and retransmitted. With 4 MiB (the kernel
/// doubles it) a 1 GiB download retransmitted 8-31 segments instead of 29-41 and cost the nlb
/// 0.87-0.97x the CPU per GiB; its throughput gain was within this machine's noise in the
/// harness (docs/benchmarks.md, 2026-12-07 07:45). It is a cap, not an allocation: the memory
/// is held only while the destination is slower than the source.
const BULK_RCVBUF: usize = 4 << 20;

/// A non-blocking pipe, the kernel buffer one direction moves through.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    in_pipe: usize,
    /// The pipe refused more (out of slots) and nothing has left it since.
    full: bool,
    /// The destination's unsent bytes are capped (done at the first flush).
    capped: bool,
    /// The source's receive buffer was raised (done at the first fill).
    widened: bool,
}

impl Pipe {
    fn open() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid, writable array of two c_ints, as pipe2 requires; on success
        // the kernel has stored two fresh descriptors that nothing else owns.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created by pipe2 and are owned by no one else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory of this process;
        // the descriptor is live. A refusal (a lower system limit) keeps the default size.
        let size = unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        let capacity = if size > 0 { size as usize } else { 64 * 1024 };
        Ok(Pipe {
            read,
            write,
            capacity,
            in_pipe: 0,
            full: false,
            capped: false,
            widened: false,
        })
    }
}

/// One non-blocking splice(2) of up to `len` bytes from `from` to `to` (one is a pipe).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice takes two descriptors and null offsets (both ends are a socket or a pipe,
    // which have no offset); it reads and writes no memory of this process. The descriptors
    // are borrowed from live owners for the duration of the call.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Carrier for Pipe {
    fn new() -> io::Result<Pipe> {
        Pipe::open()
    }

    fn pending(&self) -> usize {
        self.in_pipe
    }

    fn room(&self) -> usize {
        if self.full {
            0
        } else {
            self.capacity - self.in_pipe
        }
    }

    fn fill(&mut self, src: &TcpStream) -> io::Result<usize> {
        if !self.widened {
            self.widened = true;
            widen_receive(src);
        }
        let (w, room) = (self.write.as_raw_fd(), self.room());
        // The pipe runs out of slots (one per piece of socket buffer) before it runs out of
        // bytes, and then answers EAGAIN as a drained socket does. So a short splice never
        // clears the socket's readiness, and an EAGAIN does only into an empty pipe (one with
        // every slot free); into a non-empty one it means "full until flushed". Either
        // mistake stalled a flow whose target had sent its last bytes
        // (`every_carrier_delivers_a_response_in_small_pieces`).
        let n = if self.in_pipe == 0 {
            src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), w, room))?
        } else {
            match splice(src.as_raw_fd(), w, room) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.full = true;
                    return Err(e);
                }
                r => r?,
            }
        };
        self.in_pipe += n;
        Ok(n)
    }

    fn flush(&mut self, dst: &TcpStream) -> io::Result<usize> {
        if !self.capped {
            self.capped = true;
            if let Err(e) = cap_unsent(dst) {
                tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT");
            }
        }
        let (r, len) = (self.read.as_raw_fd(), self.in_pipe);
        let n = dst.try_io(Interest::WRITABLE, || splice(r, dst.as_raw_fd(), len))?;
        self.in_pipe -= n;
        if n > 0 {
            self.full = false;
        }
        Ok(n)
    }
}

/// Caps the unsent bytes `dst` may queue at [`NOTSENT_LOWAT`].
fn cap_unsent(dst: &TcpStream) -> io::Result<()> {
    let v = NOTSENT_LOWAT;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes at the pointer, which points at `v`,
    // a live c_int for the whole call; the descriptor is borrowed from a live stream.
    let rc = unsafe {
        libc::setsockopt(
            dst.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What to ask SO_RCVBUF for so that a socket whose buffer is `current` bytes can take
/// [`BULK_RCVBUF`] of a bulk flow, or `None` to leave it to autotuning. Setting the option ends
/// autotuning for good, and the kernel caps the ask at `net.core.rmem_max` (Linux's default is
/// 208 KiB), so it is asked only when that cap lets the whole of it through: a host that was
/// not tuned for it keeps the buffer autotuning would give.
fn rcvbuf_ask(current: usize, rmem_max: usize) -> Option<usize> {
    (rmem_max >= BULK_RCVBUF && current < 2 * BULK_RCVBUF).then_some(BULK_RCVBUF)
}

/// `net.core.rmem_max`, read once; 0 when it cannot be read.
fn rmem_max() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// Raises a bulk source's receive buffer when [`rcvbuf_ask`] says so; a failure only costs
/// throughput.
fn widen_receive(src: &TcpStream) {
    let sock = socket2::SockRef::from(src);
    let Ok(current) = sock.recv_buffer_size() else {
        return;
    };
    if let Some(ask) = rcvbuf_ask(current, rmem_max()) {
        if let Err(e) = sock.set_recv_buffer_size(ask) {
            tracing::debug!(error = %e, "SO_RCVBUF");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn the_receive_buffer_is_raised_only_when_the_host_lets_all_of_it_through() {
        let mib = 1 << 20;
        // Linux's default rmem_max: asking would freeze 416 KiB where autotuning goes further.
        assert_eq!(rcvbuf_ask(131_072, 212_992), None);
        assert_eq!(rcvbuf_ask(131_072, 4 * mib - 1), None);
        assert_eq!(rcvbuf_ask(131_072, 4 * mib), Some(4 * mib));
        assert_eq!(rcvbuf_ask(1_347_298, 32 * mib), Some(4 * mib));
        // Already as large as the ask would make it (the kernel doubles it): left alone.
        assert_eq!(rcvbuf_ask(8 * mib, 32 * mib), None);
        assert_eq!(rcvbuf_ask(12 * mib, 32 * mib), None);
        assert_eq!(rcvbuf_ask(131_072, 0), None);
    }

    #[tokio::test]
    async fn a_spliced_source_gets_the_bulk_receive_buffer_where_the_host_allows_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut writer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (src, _) = listener.accept().await.unwrap();
        let before = socket2::SockRef::from(&src).recv_buffer_size().unwrap();
        writer.write_all(b"bulk").await.unwrap();
        let mut pipe = Pipe::new().unwrap();
        src.readable().await.unwrap();
        assert_eq!(pipe.fill(&src).unwrap(), 4);
        let after = socket2::SockRef::from(&src).recv_buffer_size().unwrap();
        if rmem_max() >= BULK_RCVBUF && before < 2 * BULK_RCVBUF {
            assert_eq!(after, 2 * BULK_RCVBUF, "the kernel doubles the ask");
        } else {
            assert_eq!(after, before, "an untuned host keeps autotuning");
        }
    }
}
