//! The zero-copy relay for plain TCP on both sides: splice(2) moves bytes socket → pipe →
//! socket inside the kernel, one pipe per direction, with the same contract as `relay::relay`
//! (half-close, idle timeout, termination, byte counts). The two `unsafe` calls (pipe2 and
//! splice) are here and nowhere else.
#![allow(unsafe_code)]

use crate::relay::{RelayError, Relayed};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Each direction's pipe capacity (Linux's default; 256 KiB measured slower on loopback,
/// docs/benchmarks.md). The pipe holds references to socket pages, not copies.
const PIPE_SIZE: usize = 64 * 1024;

/// A non-blocking pipe, the kernel buffer one direction moves through.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
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

/// One direction's state: bytes sitting in its pipe, and whether its source has ended.
struct Way {
    pipe: Pipe,
    in_pipe: usize,
    open: bool,
    /// The FIN has been passed on.
    shut: bool,
    moved: u64,
}

impl Way {
    fn new() -> io::Result<Way> {
        Ok(Way {
            pipe: Pipe::new()?,
            in_pipe: 0,
            open: true,
            shut: false,
            moved: 0,
        })
    }

    /// Whether this direction still has work: bytes to deliver, or a source to read.
    fn live(&self) -> bool {
        self.open || self.in_pipe > 0
    }
}

/// Socket → pipe, once the source is readable. `Ok(0)`: the source sent FIN.
fn fill(src: &TcpStream, way: &mut Way) -> io::Result<usize> {
    let w = way.pipe.write.as_raw_fd();
    let room = way.pipe.capacity - way.in_pipe;
    src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), w, room))
}

/// Pipe → socket, once the destination is writable.
fn flush(dst: &TcpStream, way: &mut Way) -> io::Result<usize> {
    let r = way.pipe.read.as_raw_fd();
    let len = way.in_pipe;
    dst.try_io(Interest::WRITABLE, || splice(r, dst.as_raw_fd(), len))
}

/// Flushes what it can without waiting (a full destination is not an error); once the source
/// has ended and the pipe is empty, passes the FIN on (a write shutdown), once.
fn deliver(dst: &TcpStream, way: &mut Way) -> io::Result<()> {
    if way.in_pipe > 0 {
        match flush(dst, way) {
            Ok(k) => {
                way.in_pipe -= k;
                way.moved += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    if !way.open && way.in_pipe == 0 && !way.shut {
        way.shut = true;
        shutdown_write(dst)?;
    }
    Ok(())
}

fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write)
}

/// Relays between two TCP streams with splice(2) until both directions have ended, until no
/// byte moved for `idle`, or until `stop` resolves. Returns the counts either way.
pub async fn relay(
    client: &TcpStream,
    target: &TcpStream,
    idle: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> (Relayed, Result<(), RelayError>) {
    let counts = |up: &Way, down: &Way| Relayed {
        client_to_target: up.moved,
        target_to_client: down.moved,
    };
    let (mut up, mut down) = match (Way::new(), Way::new()) {
        (Ok(u), Ok(d)) => (u, d),
        (Err(e), _) | (_, Err(e)) => return (Relayed::default(), Err(RelayError::Client(e))),
    };
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    tokio::pin!(stop);
    while up.live() || down.live() {
        tokio::select! {
            r = client.readable(), if up.open && up.in_pipe < up.pipe.capacity => {
                if let Err(e) = r {
                    return (counts(&up, &down), Err(RelayError::Client(e)));
                }
                match fill(client, &mut up) {
                    Ok(0) => {
                        // The FIN goes on once the bytes before it have (deliver).
                        up.open = false;
                        if let Err(e) = deliver(target, &mut up) {
                            return (counts(&up, &down), Err(RelayError::Target(e)));
                        }
                    }
                    Ok(k) => {
                        up.in_pipe += k;
                        timer.as_mut().reset(tokio::time::Instant::now() + idle);
                        // The destination is most often writable: deliver now, saving a turn.
                        if let Err(e) = deliver(target, &mut up) {
                            return (counts(&up, &down), Err(RelayError::Target(e)));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return (counts(&up, &down), Err(RelayError::Client(e))),
                }
            }
            r = target.writable(), if up.in_pipe > 0 => {
                if let Err(e) = r {
                    return (counts(&up, &down), Err(RelayError::Target(e)));
                }
                if let Err(e) = deliver(target, &mut up) {
                    return (counts(&up, &down), Err(RelayError::Target(e)));
                }
            }
            r = target.readable(), if down.open && down.in_pipe < down.pipe.capacity => {
                if let Err(e) = r {
                    return (counts(&up, &down), Err(RelayError::Target(e)));
                }
                match fill(target, &mut down) {
                    Ok(0) => {
                        // The FIN goes on once the bytes before it have (deliver).
                        down.open = false;
                        if let Err(e) = deliver(client, &mut down) {
                            return (counts(&up, &down), Err(RelayError::Client(e)));
                        }
                    }
                    Ok(k) => {
                        down.in_pipe += k;
                        timer.as_mut().reset(tokio::time::Instant::now() + idle);
                        if let Err(e) = deliver(client, &mut down) {
                            return (counts(&up, &down), Err(RelayError::Client(e)));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return (counts(&up, &down), Err(RelayError::Target(e))),
                }
            }
            r = client.writable(), if down.in_pipe > 0 => {
                if let Err(e) = r {
                    return (counts(&up, &down), Err(RelayError::Client(e)));
                }
                if let Err(e) = deliver(client, &mut down) {
                    return (counts(&up, &down), Err(RelayError::Client(e)));
                }
            }
            _ = &mut timer => return (counts(&up, &down), Err(RelayError::Idle(idle))),
            () = &mut stop => return (counts(&up, &down), Err(RelayError::Terminated)),
        }
    }
    (counts(&up, &down), Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected pairs: (client end, relay's client side), (relay's target side, target end).
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (d, _) = l.accept().await.unwrap();
        ((a, b), (c, d))
    }

    #[tokio::test]
    async fn bytes_and_half_close_pass_through_without_copies() {
        let ((mut client, relay_c), (relay_t, mut target)) = pairs().await;
        let task = tokio::spawn(async move {
            relay(
                &relay_c,
                &relay_t,
                Duration::from_secs(350),
                std::future::pending(),
            )
            .await
        });
        // 4 MiB one way (many pipe-fulls), then FIN; then an answer after the half-close.
        let data: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            client
        });
        let mut got = Vec::new();
        target.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "4 MiB arrive intact and in order");
        let mut client = writer.await.unwrap();
        target.write_all(b"pong after half-close").await.unwrap();
        target.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong after half-close");
        let (n, r) = task.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(
            n,
            Relayed {
                client_to_target: 4 << 20,
                target_to_client: 21
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_flow_ends_at_the_idle_timeout() {
        let ((_client, relay_c), (relay_t, _target)) = pairs().await;
        let (n, r) = relay(
            &relay_c,
            &relay_t,
            Duration::from_secs(350),
            std::future::pending(),
        )
        .await;
        assert!(matches!(r, Err(RelayError::Idle(_))), "{r:?}");
        assert_eq!(n, Relayed::default());
    }
}
