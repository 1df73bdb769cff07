//! One HTTP/2 client connection served by hyper, for the alb and the edge alike: explicit
//! limits, an idle timeout that counts bytes moved either way, a control-frame budget, and
//! drain by GOAWAY.

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The connection preface a prior-knowledge h2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long streams may take to finish after an idle connection's GOAWAY before it is closed
/// (a stalled stream, e.g. a client that never opens its flow-control window, cannot hold it).
pub const IDLE_GRACE: Duration = Duration::from_secs(5);

/// How long streams may take to finish after a flooding connection's GOAWAY. Nothing more is
/// read from it meanwhile.
pub const FLOOD_GRACE: Duration = Duration::from_secs(1);

/// A connection's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest decoded header list a client may send (SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams: u32,
    /// No byte moved either way for this long: GOAWAY, then a close `IDLE_GRACE` later.
    pub idle: Duration,
    /// The connection's whole life: then GOAWAY, and open streams finish.
    pub keep_alive: Duration,
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL: extended CONNECT, for WebSockets (RFC 8441).
    pub extended_connect: bool,
}

/// Control frames a connection may send before it has earned more (browsers open with a few
/// SETTINGS and WINDOW_UPDATEs; gRPC keep-alive pings every 10 s make 360 an hour).
pub const FREE_CONTROL_FRAMES: u64 = 1000;
/// Control frames each request-carrying frame (HEADERS, DATA with payload) earns, and each DATA
/// frame sent (a gRPC client may answer each with a BDP PING and a WINDOW_UPDATE).
pub const CONTROL_PER_USEFUL_FRAME: u64 = 2;
/// DATA payload bytes sent that earn one control frame (a downloading client sends
/// WINDOW_UPDATEs in proportion to what it receives: a 16 KiB DATA frame earns four).
pub const BYTES_PER_CONTROL_FRAME: u64 = 4096;

/// Envoy's premature-reset rule (CVE-2023-44487, rapid reset): a reset is premature when the
/// client cancels a stream we have not finished answering within a second of opening it. Past
/// 500 streams, more than half of them reset prematurely closes the connection; before, 250
/// premature resets do.
pub const RESET_CHECK_STREAMS: u64 = 500;
/// How young a stream's reset must be to count as premature.
pub const PREMATURE_RESET: Duration = Duration::from_secs(1);
/// Control frames the connection's age earns per second (keep-alive PINGs at any sane rate).
pub const CONTROL_PER_SECOND: u64 = 2;
/// Streams remembered for the premature-reset rule (older ones are past a second anyway, at
/// any rate a server with 128 concurrent streams answers).
const OPEN_STREAMS: usize = 256;

/// The frame types this budget tells apart (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;

/// A frame header: where it started in the piece (0 if in an earlier one), type, flags,
/// payload length, stream.
#[derive(Debug, Clone, Copy)]
struct Head {
    start: usize,
    kind: u8,
    flags: u8,
    len: u32,
    stream: u32,
}
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;

/// Finds frame headers in a byte stream that arrives in pieces of any size, skipping
/// payloads.
#[derive(Debug, Clone)]
struct Frames {
    /// Bytes of the connection preface still to pass.
    preface_left: u8,
    head: [u8; 9],
    have: u8,
    /// Payload bytes of the current frame still to skip.
    payload_left: u32,
}

impl Frames {
    fn new(preface: bool) -> Frames {
        Frames {
            preface_left: if preface { PREFACE.len() as u8 } else { 0 },
            head: [0; 9],
            have: 0,
            payload_left: 0,
        }
    }

    /// The next frame header completed in `bytes[*i..]`. Advances `*i` past what it consumed.
    fn next(&mut self, bytes: &[u8], i: &mut usize) -> Option<Head> {
        while *i < bytes.len() {
            let left = bytes.len() - *i;
            if self.preface_left > 0 {
                let n = (self.preface_left as usize).min(left);
                self.preface_left -= n as u8;
                *i += n;
                continue;
            }
            if self.payload_left > 0 {
                let n = (self.payload_left as usize).min(left);
                self.payload_left -= n as u32;
                *i += n;
                continue;
            }
            let start = i.saturating_sub(self.have as usize);
            let have = self.have as usize;
            let n = (9 - have).min(left);
            self.head[have..have + n].copy_from_slice(&bytes[*i..*i + n]);
            self.have += n as u8;
            *i += n;
            if self.have < 9 {
                return None;
            }
            self.have = 0;
            let h = self.head;
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
            self.payload_left = len;
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            return Some(Head {
                start,
                kind: h[3],
                flags: h[4],
                len,
                stream,
            });
        }
        None
    }
}

/// Counts a client's frames from its byte stream: frames that carry requests against frames
/// that only cost work (PING, SETTINGS, PRIORITY, WINDOW_UPDATE, RST_STREAM, GOAWAY, unknown
/// types, empty DATA without END_STREAM). More of the latter than the budget allows is a
/// flood, as Envoy's and NGINX's flood checks and HAProxy's glitch counter treat it. The
/// budget grows with request frames, with the DATA the client is sent (whose WINDOW_UPDATEs
/// it earns) and with the connection's age, not with our answers to its control frames.
/// Separately it keeps Envoy's premature-reset rule. Pure: it sees bytes and the connection's
/// age, not sockets or clocks.
#[derive(Debug, Clone)]
pub struct FrameBudget {
    inbound: Frames,
    outbound: Frames,
    control: u64,
    useful: u64,
    data_frames_sent: u64,
    data_sent: u64,
    /// Streams the client opened, the highest id, and those still unanswered with their age
    /// at opening (oldest first).
    streams: u64,
    last_stream: u32,
    open: std::collections::VecDeque<(u32, Duration)>,
    premature: u64,
}

impl Default for FrameBudget {
    fn default() -> FrameBudget {
        FrameBudget::new()
    }
}

impl FrameBudget {
    /// A budget for a server: the client's bytes open with the preface.
    pub fn new() -> FrameBudget {
        FrameBudget {
            inbound: Frames::new(true),
            outbound: Frames::new(false),
            control: 0,
            useful: 0,
            data_frames_sent: 0,
            data_sent: 0,
            streams: 0,
            last_stream: 0,
            open: std::collections::VecDeque::new(),
            premature: 0,
        }
    }

    /// Notes bytes written to the client: DATA payloads earn control frames, and a stream
    /// whose answer ended (END_STREAM, or our RST_STREAM) can no longer be reset prematurely.
    pub fn sent(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while let Some(h) = self.outbound.next(bytes, &mut i) {
            if h.kind == DATA {
                self.data_frames_sent += 1;
                self.data_sent += u64::from(h.len);
            }
            let ended = matches!(h.kind, DATA | HEADERS) && h.flags & END_STREAM != 0;
            if ended || h.kind == RST_STREAM {
                self.forget(h.stream);
            }
        }
    }

    /// Control frames counted so far.
    pub fn control_frames(&self) -> u64 {
        self.control
    }

    /// Premature resets counted so far.
    pub fn premature_resets(&self) -> u64 {
        self.premature
    }

    fn forget(&mut self, stream: u32) -> Option<Duration> {
        let at = self.open.binary_search_by_key(&stream, |(s, _)| *s).ok()?;
        self.open.remove(at).map(|(_, opened)| opened)
    }

    fn allowed(&self, age: Duration) -> u64 {
        FREE_CONTROL_FRAMES
            + (self.useful + self.data_frames_sent) * CONTROL_PER_USEFUL_FRAME
            + self.data_sent / BYTES_PER_CONTROL_FRAME
            + age.as_secs() * CONTROL_PER_SECOND
    }

    /// Feeds bytes read from the client when the connection is `age` old. Returns the offset in
    /// `bytes` where the frame that broke the budget starts (0 if it started in an earlier
    /// piece), or `None` while it holds.
    pub fn feed(&mut self, bytes: &[u8], age: Duration) -> Option<usize> {
        let mut i = 0;
        while let Some(h) = self.inbound.next(bytes, &mut i) {
            let mut rapid_reset = false;
            match (h.kind, h.len) {
                (DATA, 0) if h.flags & END_STREAM == 0 => self.control += 1,
                (HEADERS, _) => {
                    self.useful += 1;
                    // Client streams are odd and rise: a lower or equal id is trailers.
                    if h.stream > self.last_stream {
                        self.last_stream = h.stream;
                        self.streams += 1;
                        if self.open.len() == OPEN_STREAMS {
                            self.open.pop_front();
                        }
                        self.open.push_back((h.stream, age));
                    }
                }
                (DATA, _) => self.useful += 1,
                // The h2 crate bounds CONTINUATION floods itself.
                (CONTINUATION, _) => {}
                (RST_STREAM, _) => {
                    self.control += 1;
                    if let Some(opened) = self.forget(h.stream) {
                        if age.saturating_sub(opened) < PREMATURE_RESET {
                            self.premature += 1;
                            rapid_reset =
                                self.premature * 2 >= RESET_CHECK_STREAMS.max(self.streams + 1);
                        }
                    }
                }
                _ => self.control += 1,
            }
            if rapid_reset || self.control > self.allowed(age) {
                return Some(h.start);
            }
        }
        None
    }
}

/// How many times the connection has read the client's socket dry. Shared with the streams'
/// service: when a count has passed, every frame the client had sent before it is processed.
#[derive(Debug, Default)]
pub struct ReadPasses(AtomicU64);

impl ReadPasses {
    /// Lets a stream that was reset right behind its HEADERS end before its service acts.
    ///
    /// Rapid reset (CVE-2023-44487) sends HEADERS and RST_STREAM back to back. hyper polls the
    /// service first and looks for a reset only when the service is pending, so a stream whose
    /// reset sits in the connection's next read would be forwarded anyway, costing the target a
    /// request and, when the reset drops it mid-exchange, a connection: thousands a second
    /// under the flood. So the service yields until the connection has read the client's socket
    /// dry (a few yields at most), then once more: hyper then finds the reset and drops the
    /// stream there. A reset sent later is the premature-reset rule's business.
    pub async fn let_resets_land(&self) {
        let seen = self.0.load(Ordering::Relaxed);
        for _ in 0..4 {
            tokio::task::yield_now().await;
            if self.0.load(Ordering::Relaxed) != seen {
                tokio::task::yield_now().await;
                return;
            }
        }
    }
}

/// What the serving loop and the watched stream share.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Milliseconds after `opened` of the last read or write.
    last_ms: AtomicU64,
    flooded: AtomicBool,
    flood: Notify,
}

impl Activity {
    /// Notes a read or write now; returns the connection's age.
    fn touch(&self) -> Duration {
        let age = self.opened.elapsed();
        self.last_ms
            .store(age.as_millis() as u64, Ordering::Relaxed);
        age
    }

    /// When the connection idles out if nothing moves before.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

/// The client's stream, noting every read and write that moves bytes (as ALB's idle timeout:
/// no data either way for `idle`, whatever streams are open), and keeping the frame budget.
/// Once the budget breaks it reads nothing more.
struct Watched<IO> {
    io: IO,
    activity: Arc<Activity>,
    budget: FrameBudget,
    passes: Arc<ReadPasses>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.activity.flooded.load(Ordering::Relaxed) {
            // The serving loop closes the connection; until then the flood goes unread.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if r.is_pending() {
            self.passes.0.fetch_add(1, Ordering::Relaxed);
        }
        let after = buf.filled().len();
        if after > before {
            let age = self.activity.touch();
            let this = &mut *self;
            if let Some(at) = this.budget.feed(&buf.filled()[before..after], age) {
                this.activity.flooded.store(true, Ordering::Relaxed);
                this.activity.flood.notify_one();
                buf.set_filled(before + at);
                if at == 0 {
                    return Poll::Pending;
                }
            }
        }
        r
    }
}

impl<IO> Watched<IO> {
    /// Notes what a write moved: `bufs` as offered, `r` as the write's result.
    fn wrote(&mut self, bufs: &[&[u8]], r: &Poll<std::io::Result<usize>>) {
        let Poll::Ready(Ok(mut n)) = *r else { return };
        if n == 0 {
            return;
        }
        let _ = self.activity.touch();
        for b in bufs {
            let take = n.min(b.len());
            self.budget.sent(&b[..take]);
            n -= take;
            if n == 0 {
                break;
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&[buf], &r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        let slices: smallvec::SmallVec<[&[u8]; 8]> = bufs.iter().map(|b| &b[..]).collect();
        self.wrote(&slices, &r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A stream that first replays bytes already read from it (a sniffed preface).
#[derive(Debug)]
pub struct Rewind<S> {
    pre: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(pre: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { pre, pos: 0, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.pre.len() {
            let n = (self.pre.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.pre[start..start + n]);
            self.pos += n;
            if self.pos == self.pre.len() {
                self.pre = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves one h2 connection until it ends:
/// - after `limits.idle` with no byte moved either way it sends GOAWAY and, `IDLE_GRACE`
///   later, closes with whatever is still open;
/// - when the client breaks the control-frame budget it stops reading, sends GOAWAY and closes
///   `FLOOD_GRACE` later;
/// - after `limits.keep_alive`, and on drain, it sends GOAWAY and lets open streams finish.
pub async fn serve<IO, S, B>(
    io: IO,
    svc: S,
    limits: Limits,
    peer: SocketAddr,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    passes: Arc<ReadPasses>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        last_ms: AtomicU64::new(0),
        flooded: AtomicBool::new(false),
        flood: Notify::new(),
    });
    let io = Watched {
        io,
        activity: activity.clone(),
        budget: FrameBudget::new(),
        passes,
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .max_header_list_size(limits.max_header_list)
        .max_concurrent_streams(limits.max_streams)
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(256));
    if limits.extended_connect {
        builder.enable_connect_protocol();
    }
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let closes_at = activity.opened + limits.keep_alive;
    let mut graceful = false;
    // Set once the connection idled out or flooded: past it, open streams are cut.
    let mut hard: Option<Instant> = None;
    let idle = limits.idle;
    let result = loop {
        let wake = match hard {
            Some(h) => h,
            None if graceful => activity.idle_deadline(idle),
            None => activity.idle_deadline(idle).min(closes_at),
        };
        tokio::select! {
            r = conn.as_mut() => break r,
            changed = shutdown.changed(), if !graceful => {
                if changed.is_err() || *shutdown.borrow() {
                    conn.as_mut().graceful_shutdown();
                    graceful = true;
                }
            }
            () = activity.flood.notified(), if hard.is_none() => {
                metrics::counter!("causeway_h2_flood_closed_total").increment(1);
                tracing::debug!(%peer, "h2 control-frame flood: GOAWAY, then close");
                if !graceful {
                    conn.as_mut().graceful_shutdown();
                    graceful = true;
                }
                hard = Some(Instant::now() + FLOOD_GRACE);
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if hard.is_some_and(|h| now >= h) {
                    tracing::debug!(%peer, "h2 connection closed with streams open");
                    break Ok(());
                }
                let idle_out = now >= activity.idle_deadline(idle);
                if idle_out || (!graceful && now >= closes_at) {
                    if !graceful {
                        conn.as_mut().graceful_shutdown();
                        graceful = true;
                    }
                    if idle_out {
                        hard = Some(now + IDLE_GRACE);
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "h2 connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: Duration = Duration::ZERO;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn pings(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| frame(0x6, 0, 0, &(i as u64).to_be_bytes()))
            .collect()
    }

    /// GET / for `localhost` (HPACK: three static entries and a literal `:authority`).
    fn get_block() -> Vec<u8> {
        let mut b = vec![0x82, 0x86, 0x84, 0x41, 9];
        b.extend_from_slice(b"localhost");
        b
    }

    /// A stream whose reset the connection has not read yet when its service runs ends at
    /// `let_resets_land`, through hyper and h2 as they serve (without it the service would go
    /// on to forward); a stream nobody resets goes on.
    #[tokio::test]
    async fn a_reset_right_behind_the_headers_ends_the_stream_before_it_is_forwarded() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let passes = Arc::new(ReadPasses::default());
        // Per stream: a gate the test opens, and where the service says it went on.
        type Stream = (Arc<Notify>, tokio::sync::oneshot::Receiver<()>);
        let (streams_tx, mut streams) = tokio::sync::mpsc::unbounded_channel::<Stream>();
        let p = passes.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let p = p.clone();
            let gate = Arc::new(Notify::new());
            let (went_on, went_on_rx) = tokio::sync::oneshot::channel();
            streams_tx.send((gate.clone(), went_on_rx)).unwrap();
            async move {
                drop(req);
                gate.notified().await;
                p.let_resets_land().await;
                let _ = went_on.send(());
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            }
        });
        let limits = Limits {
            max_header_list: 16 << 10,
            max_streams: 100,
            idle: Duration::from_secs(60),
            keep_alive: Duration::from_secs(3600),
            extended_connect: false,
        };
        let (_keep, shutdown) = tokio::sync::watch::channel(false);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        tokio::spawn(serve(server, svc, limits, peer, shutdown, passes));
        let wait = Duration::from_secs(5);

        use tokio::io::AsyncWriteExt;
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(0x4, 0, 0, &[]));
        hello.extend(frame(HEADERS, 0x5, 1, &get_block()));
        client.write_all(&hello).await.unwrap();
        let (gate, went_on) = streams.recv().await.unwrap();
        // The service is let go on, then the reset is written: the service runs before the
        // connection reads the reset (one thread, tasks in the order woken), as when a reset
        // sits unread behind its HEADERS.
        gate.notify_one();
        client
            .write_all(&frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()))
            .await
            .unwrap();
        let r = tokio::time::timeout(wait, went_on).await.unwrap();
        assert!(
            r.is_err(),
            "the reset stream ended before its service went on"
        );

        client
            .write_all(&frame(HEADERS, 0x5, 3, &get_block()))
            .await
            .unwrap();
        let (gate, went_on) = streams.recv().await.unwrap();
        gate.notify_one();
        let r = tokio::time::timeout(wait, went_on).await.unwrap();
        assert!(r.is_ok(), "a live stream goes on");
    }

    #[test]
    fn a_ping_flood_breaks_the_budget_at_the_frame_past_it() {
        let mut b = FrameBudget::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        let first = bytes.len();
        bytes.extend(pings(2000));
        let at = b.feed(&bytes, Z).expect("a flood");
        // SETTINGS plus 1000 PINGs are allowed; the PING after them is where it breaks.
        assert_eq!(at, first + (FREE_CONTROL_FRAMES as usize - 1) * 17);
        assert_eq!(b.control_frames(), FREE_CONTROL_FRAMES + 1);
    }

    #[test]
    fn byte_at_a_time_finds_the_same_place() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(pings(1500));
        let whole = FrameBudget::new().feed(&bytes, Z);
        let mut b = FrameBudget::new();
        let mut found = None;
        for (i, byte) in bytes.iter().enumerate() {
            if let Some(at) = b.feed(std::slice::from_ref(byte), Z) {
                // The breaking frame began in an earlier read: the offset saturates to 0.
                assert_eq!(at, 0);
                found = Some(i + 1 - 9);
                break;
            }
        }
        assert_eq!(found, whole);
    }

    #[test]
    fn requests_and_responses_earn_control_frames() {
        let mut b = FrameBudget::new();
        let mut bytes = PREFACE.to_vec();
        for s in 0..600u32 {
            bytes.extend(frame(HEADERS, 0x4, 2 * s + 1, &[0x82; 20]));
            bytes.extend(frame(DATA, END_STREAM, 2 * s + 1, b"body"));
        }
        // 1000 free + 1200 useful frames × 2 = 3400.
        bytes.extend(pings(3400));
        assert_eq!(b.feed(&bytes, Z), None);
        assert!(b.feed(&pings(1), Z).is_some());

        // A client downloading 64 MiB sends a WINDOW_UPDATE per 16 KiB: 4096 of them.
        let mut d = FrameBudget::new();
        d.feed(PREFACE, Z);
        let data = frame(DATA, 0, 1, &[0; 16384]);
        for _ in 0..4096 {
            d.sent(&data[..100]);
            d.sent(&data[100..]);
        }
        // Our PING answers earn nothing.
        d.sent(&pings(10_000));
        let updates: Vec<u8> = (0..4096)
            .flat_map(|_| frame(0x8, 0, 1, &16384u32.to_be_bytes()))
            .collect();
        assert_eq!(d.feed(&updates, Z), None);

        // A stream of small DATA frames earns two control frames each.
        let mut g = FrameBudget::new();
        g.feed(PREFACE, Z);
        for _ in 0..5000 {
            g.sent(&frame(DATA, 0, 1, &[0; 100]));
        }
        assert_eq!(g.feed(&pings(11_000), Z), None);

        // Answers to its own PINGs earn a client nothing.
        let mut p = FrameBudget::new();
        p.sent(&pings(10_000));
        let mut bytes = PREFACE.to_vec();
        bytes.extend(pings(FREE_CONTROL_FRAMES as usize + 1));
        assert!(p.feed(&bytes, Z).is_some());
    }

    #[test]
    fn empty_data_frames_and_unknown_types_count_large_payloads_are_skipped() {
        let mut b = FrameBudget::new();
        b.feed(PREFACE, Z);
        let empty: Vec<u8> = (0..FREE_CONTROL_FRAMES - 1)
            .flat_map(|_| frame(DATA, 0, 1, &[]))
            .collect();
        assert_eq!(b.feed(&empty, Z), None);
        // A 16 KiB unknown frame whose payload looks like PINGs counts once.
        assert_eq!(b.feed(&frame(0xfa, 0, 0, &pings(963)), Z), None);
        assert_eq!(b.control_frames(), FREE_CONTROL_FRAMES);
        assert_eq!(b.feed(&pings(1), Z), Some(0));
    }

    fn open_and_reset(s: u32) -> Vec<u8> {
        let mut f = frame(HEADERS, 0x5, s, &[0x82; 20]);
        f.extend(frame(RST_STREAM, 0, s, &8u32.to_be_bytes()));
        f
    }

    #[test]
    fn premature_resets_follow_envoys_rule() {
        // 250 streams opened and reset at once: the 250th reset breaks it (before 500 streams,
        // half of 500 premature resets is enough).
        let mut b = FrameBudget::new();
        b.feed(PREFACE, Z);
        for s in 0..249 {
            assert_eq!(b.feed(&open_and_reset(2 * s + 1), Z), None);
        }
        assert_eq!(b.feed(&open_and_reset(499), Z), Some(29));
        assert_eq!(b.premature_resets(), 250);

        // A client that cancels a third of its requests at once goes on.
        let mut c = FrameBudget::new();
        c.feed(PREFACE, Z);
        for s in 0..3000u32 {
            let f = if s % 3 == 0 {
                open_and_reset(2 * s + 1)
            } else {
                frame(HEADERS, 0x5, 2 * s + 1, &[0x82; 20])
            };
            assert_eq!(c.feed(&f, Z), None, "stream {s}");
        }

        // Resets a second or more after opening, or after the answer ended, are not premature.
        let mut late = FrameBudget::new();
        late.feed(PREFACE, Z);
        for s in 0..600u32 {
            late.feed(&frame(HEADERS, 0x5, 2 * s + 1, &[0x82; 20]), Z);
        }
        let secs = Duration::from_secs(1);
        for s in 0..300u32 {
            let rst = frame(RST_STREAM, 0, 2 * s + 1, &8u32.to_be_bytes());
            assert_eq!(late.feed(&rst, secs), None);
        }
        for s in 300..600u32 {
            late.sent(&frame(HEADERS, 0x5, 2 * s + 1, &[0x88]));
            let rst = frame(RST_STREAM, 0, 2 * s + 1, &8u32.to_be_bytes());
            assert_eq!(late.feed(&rst, secs / 2), None);
        }
        assert_eq!(late.premature_resets(), 0);

        // Trailers (a second HEADERS on a stream) open nothing.
        let mut t = FrameBudget::new();
        t.feed(PREFACE, Z);
        for _ in 0..10 {
            t.feed(&frame(HEADERS, 0x5, 1, &[0x82; 20]), Z);
        }
        assert_eq!(t.streams, 1);
    }

    #[test]
    fn the_connections_age_earns_keep_alive_pings() {
        // A PING every second for two hours: 7200 PINGs, never a flood.
        let mut b = FrameBudget::new();
        b.feed(PREFACE, Z);
        for s in 0..7200u64 {
            let ping = frame(0x6, 0, 0, &s.to_be_bytes());
            assert_eq!(b.feed(&ping, Duration::from_secs(s)), None, "ping {s}");
        }
        // The same PINGs at once are one.
        let mut f = FrameBudget::new();
        f.feed(PREFACE, Z);
        assert!(f.feed(&pings(7200), Duration::from_secs(1)).is_some());
    }

    #[tokio::test]
    async fn rewind_replays_the_sniffed_bytes_first() {
        use tokio::io::AsyncReadExt;
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"rest")
            .await
            .unwrap();
        drop(a);
        let mut r = Rewind::new(b"PRI ".to_vec(), b);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"PRI rest");
    }
}
