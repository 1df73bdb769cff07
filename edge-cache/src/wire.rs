//! The HTTP/1.1 listener side: reads a request head within CloudFront's size limits, applies
//! the alb's smuggling defences (AWS's desync classifier in strictest mode, strict framing, one
//! valid Host, origin-form targets), reads the body, turns it into the pipeline's [`Request`],
//! and writes a [`Reply`] with as few sends as possible.

use crate::message::{valid_authority, Fields, Request};
use crate::respond::{tail, Head, Reply, ReplyBody};
use bytes::Bytes;
use causeway_dataplane::client::{write_two, Client, ClientStream};
use causeway_dataplane::desync::{self, Mode, Verdict};
use causeway_dataplane::http1::uri::split_target;
use causeway_dataplane::http1::{ChunkedScanner, Framing, Limits, RequestHead};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// CloudFront's limits: 8,192 bytes of URL, 20,480 bytes of request head.
pub const LIMITS: Limits = Limits {
    max_request_line: 8192 + 32,
    max_header_line: 20_480,
    max_head: 20_480,
    max_headers: 100,
};

/// CloudFront's longest URL (path and query), for every protocol.
pub const MAX_URL: usize = 8192;

/// Largest request body the edge buffers for the origin.
pub const MAX_REQUEST_BODY: u64 = 64 * 1024 * 1024;
/// How long a request body may stall.
pub const BODY_IDLE: Duration = Duration::from_secs(60);

/// A refused request: its status and a reason for the log.
pub type Refusal = (u16, &'static str);

/// What the checks decided about a parsed head.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    pub framing: Framing,
    pub close: bool,
    pub expect_continue: bool,
    pub classification: desync::Classification,
}

/// Checks a parsed head: desync classification (strictest), framing, Host, target form.
pub fn check(buf: &[u8], head: &RequestHead) -> Result<Checked, Refusal> {
    let classification = desync::classify(buf, head);
    let verdict = desync::verdict(Mode::Strictest, classification);
    if verdict == Verdict::Reject {
        return Err((400, "request refused by desync mitigation"));
    }
    let framing = head
        .framing(buf)
        .map_err(|_| (400, "ambiguous or invalid message framing"))?;
    let hosts = head.count(buf, "host");
    if hosts > 1 || (head.minor_version == 1 && hosts != 1) {
        return Err((400, "exactly one Host is required"));
    }
    let method = head.method(buf);
    let target = head.target(buf);
    if !(target.first() == Some(&b'/') || (method == b"OPTIONS" && target == b"*")) {
        return Err((400, "request target must be origin-form"));
    }
    if method == b"CONNECT" {
        return Err((405, "CONNECT is not supported"));
    }
    let has = |t: &str| head.lists_token(buf, "connection", t);
    let close = has("close")
        || (head.minor_version == 0 && !has("keep-alive"))
        || verdict == Verdict::AllowThenClose;
    let expect_continue = match head.header(buf, "expect") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case(b"100-continue") => true,
        Some(_) => return Err((417, "unsupported Expect")),
    };
    Ok(Checked {
        framing,
        close,
        expect_continue,
        classification,
    })
}

/// Builds the pipeline's request from a checked head (the body is read next).
pub fn to_request(
    buf: &[u8],
    head: &RequestHead,
    scheme: &'static str,
) -> Result<Request, Refusal> {
    let host = head.header(buf, "host").unwrap_or_default();
    let host = crate::cache_control::trim(host);
    if !valid_authority(host) {
        return Err((400, "invalid Host"));
    }
    let (path, query) = split_target(head.target(buf));
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| (400, "non-UTF-8 target"));
    let mut headers: Fields = Vec::with_capacity(head.headers.len());
    for h in &head.headers {
        headers.push((
            String::from_utf8_lossy(h.name.get(buf)).to_ascii_lowercase(),
            h.value.get(buf).to_vec(),
        ));
    }
    Ok(Request {
        method: text(head.method(buf))?,
        scheme,
        authority: String::from_utf8_lossy(host).to_ascii_lowercase(),
        path: text(path)?,
        query: text(query)?,
        headers,
        body: Bytes::new(),
    })
}

/// Reads the body that follows the head and consumes the whole request from the buffer.
pub async fn read_body<S: ClientStream>(
    client: &mut Client<S>,
    head: &RequestHead,
    checked: &Checked,
) -> Result<Bytes, Refusal> {
    let start = head.len;
    let mut expect = checked.expect_continue;
    match checked.framing {
        Framing::None | Framing::Close => {
            client.consume(start);
            Ok(Bytes::new())
        }
        Framing::Length(n) => {
            if n > MAX_REQUEST_BODY {
                return Err((413, "request body too large"));
            }
            while ((client.buf.len() - start) as u64) < n {
                more(client, &mut expect, start).await?;
            }
            let body = Bytes::copy_from_slice(&client.buf[start..start + n as usize]);
            client.consume(start + n as usize);
            Ok(body)
        }
        Framing::Chunked => {
            let mut scanner = ChunkedScanner::new();
            let mut body = Vec::new();
            let mut at = start;
            loop {
                let used = scanner
                    .decode(&client.buf[at..], &mut body)
                    .map_err(|_| (400, "invalid chunked body"))?;
                at += used;
                if scanner.is_done() {
                    break;
                }
                if body.len() as u64 > MAX_REQUEST_BODY {
                    return Err((413, "request body too large"));
                }
                more(client, &mut expect, start).await?;
            }
            client.consume(at);
            Ok(body.into())
        }
    }
}

/// Reads more of a body, first sending `100 Continue` if the client waits for it.
async fn more<S: ClientStream>(
    client: &mut Client<S>,
    expect: &mut bool,
    start: usize,
) -> Result<(), Refusal> {
    if std::mem::take(expect) && client.buf.len() == start {
        client
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| (400, "client gone"))?;
    }
    match tokio::time::timeout(BODY_IDLE, client.fill()).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(_) => Err((400, "request body cut short")),
        Err(_) => Err((408, "request body not received in time")),
    }
}

/// Writes a reply. `head_only` drops the body (HEAD); `close` adds `connection: close`;
/// `alt_svc` advertises HTTP/3 (TLS listeners).
pub async fn write_reply<S: ClientStream>(
    client: &mut Client<S>,
    reply: &mut Reply,
    head_only: bool,
    close: bool,
    alt_svc: Option<&str>,
) -> std::io::Result<u64> {
    let mut t = Vec::with_capacity(96);
    if let Some(v) = alt_svc {
        t.extend_from_slice(b"alt-svc: ");
        t.extend_from_slice(v.as_bytes());
        t.extend_from_slice(b"\r\n");
    }
    tail(&mut t, reply.age, reply.result.x_cache(reply.status), close);
    let prefix: &[u8] = match &reply.head {
        Head::Stored(b) => b,
        Head::Built(v) => v,
    };
    let body: &[u8] = match &reply.body {
        ReplyBody::Full(b) if !head_only => b,
        _ => &[],
    };
    // One send for a small response; a stored head is not copied for a big one.
    if body.len() <= causeway_dataplane::client::JOIN_LIMIT {
        let mut out = Vec::with_capacity(prefix.len() + t.len() + body.len());
        out.extend_from_slice(prefix);
        out.extend_from_slice(&t);
        out.extend_from_slice(body);
        client.write_all(&out).await?;
    } else {
        let mut h = Vec::with_capacity(prefix.len() + t.len());
        h.extend_from_slice(prefix);
        h.extend_from_slice(&t);
        write_two(&mut client.stream, &h, body).await?;
    }
    let mut sent = body.len() as u64;
    if head_only {
        return Ok(sent);
    }
    if let ReplyBody::Stream(s) = &mut reply.body {
        let chunked = s.length.is_none();
        while let Some(piece) = s
            .next()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
        {
            sent += piece.len() as u64;
            if chunked {
                let size = format!("{:x}\r\n", piece.len());
                write_two(&mut client.stream, size.as_bytes(), &piece).await?;
                client.write_all(b"\r\n").await?;
            } else {
                client.write_all(&piece).await?;
            }
        }
        if chunked {
            client.write_all(b"0\r\n\r\n").await?;
        }
    }
    client.stream.flush().await?;
    Ok(sent)
}
