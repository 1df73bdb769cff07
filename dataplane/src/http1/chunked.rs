//! An incremental scanner for `Transfer-Encoding: chunked` bodies. It validates the framing
//! strictly (hex sizes without overflow, CRLF only, bounded extensions and trailers) and says
//! where the body ends, so a proxy can forward the bytes unchanged and know when to stop.

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    BadSize,
    #[error("chunk size overflows")]
    SizeOverflow,
    #[error("bare LF or missing CRLF in chunked framing")]
    BadLineEnding,
    #[error("chunk extension or trailer too long")]
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a size; `digits` so far.
    Size {
        digits: u8,
    },
    /// After the size: optional whitespace and `;ext` until CR.
    Ext {
        len: u16,
    },
    /// Expecting the LF of a size line.
    SizeLf {
        last: bool,
    },
    /// Inside chunk data.
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer {
        len: u16,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

const MAX_EXT: u16 = 4096;
const MAX_TRAILER_LINE: u16 = 8192;

/// Scans a chunked body fed in pieces.
#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    remaining: u64,
    /// Body bytes (chunk data only) seen so far.
    pub data_len: u64,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner {
            state: State::Size { digits: 0 },
            size: 0,
            remaining: 0,
            data_len: 0,
        }
    }
}

impl ChunkedScanner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds bytes; returns how many belong to the body (all of `buf`, or up to the end of the
    /// body when it ends inside `buf`).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, ChunkError> {
        self.scan(buf, None)
    }

    /// Like [`feed`](Self::feed), and appends the chunk data (the decoded body) to `out`.
    pub fn decode(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        self.scan(buf, Some(out))
    }

    fn scan(&mut self, buf: &[u8], mut out: Option<&mut Vec<u8>>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Data => {
                    let take = (buf.len() - i).min(self.remaining.min(usize::MAX as u64) as usize);
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&buf[i..i + take]);
                    }
                    i += take;
                    self.remaining -= take as u64;
                    self.data_len += take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                _ => {}
            }
            let b = buf[i];
            i += 1;
            self.state = match self.state {
                State::Size { digits } => match hex(b) {
                    Some(d) => {
                        if digits >= 16 {
                            return Err(ChunkError::SizeOverflow);
                        }
                        self.size =
                            self.size.checked_mul(16).ok_or(ChunkError::SizeOverflow)? | d as u64;
                        State::Size { digits: digits + 1 }
                    }
                    None if digits == 0 => return Err(ChunkError::BadSize),
                    None => match b {
                        b'\r' => State::SizeLf {
                            last: self.size == 0,
                        },
                        b';' | b' ' | b'\t' => State::Ext { len: 1 },
                        b'\n' => return Err(ChunkError::BadLineEnding),
                        _ => return Err(ChunkError::BadSize),
                    },
                },
                State::Ext { len } => match b {
                    b'\r' => State::SizeLf {
                        last: self.size == 0,
                    },
                    b'\n' => return Err(ChunkError::BadLineEnding),
                    _ if len >= MAX_EXT => return Err(ChunkError::TooLong),
                    _ => State::Ext { len: len + 1 },
                },
                State::SizeLf { last } => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    if last {
                        State::TrailerStart
                    } else {
                        self.remaining = self.size;
                        self.size = 0;
                        State::Data
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    State::DataLf
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    State::Size { digits: 0 }
                }
                State::TrailerStart => match b {
                    b'\r' => State::TrailerLf { empty: true },
                    b'\n' => return Err(ChunkError::BadLineEnding),
                    _ => State::Trailer { len: 1 },
                },
                State::Trailer { len } => match b {
                    b'\r' => State::TrailerLf { empty: false },
                    b'\n' => return Err(ChunkError::BadLineEnding),
                    _ if len >= MAX_TRAILER_LINE => return Err(ChunkError::TooLong),
                    _ => State::Trailer { len: len + 1 },
                },
                State::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    if empty {
                        self.state = State::Done;
                        return Ok(i);
                    }
                    State::TrailerStart
                }
                State::Data | State::Done => unreachable!("handled above"),
            };
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8]) -> Result<(usize, u64, bool), ChunkError> {
        let mut s = ChunkedScanner::new();
        let n = s.feed(body)?;
        Ok((n, s.data_len, s.is_done()))
    }

    #[test]
    fn finds_the_end_of_a_body() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET /next";
        let (n, data, done) = scan_all(body).unwrap();
        assert!(done);
        assert_eq!(&body[n..], b"GET /next");
        assert_eq!(data, 11);
    }

    #[test]
    fn decodes_the_data_across_pieces() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nT: 1\r\n\r\nNEXT";
        let mut s = ChunkedScanner::new();
        let mut out = Vec::new();
        let mut used = 0;
        for piece in body.chunks(3) {
            used += s.decode(piece, &mut out).unwrap();
            if s.is_done() {
                break;
            }
        }
        assert!(s.is_done());
        assert_eq!(out, b"hello world");
        assert_eq!(&body[used..], b"NEXT");
    }

    #[test]
    fn works_byte_by_byte_with_trailers() {
        let body = b"A\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let mut s = ChunkedScanner::new();
        for (i, b) in body.iter().enumerate() {
            assert!(!s.is_done(), "done early at {i}");
            assert_eq!(s.feed(std::slice::from_ref(b)).unwrap(), 1);
        }
        assert!(s.is_done());
        assert_eq!(s.data_len, 10);
    }

    #[test]
    fn refuses_smuggling_shapes() {
        assert_eq!(scan_all(b"5\nhello\r\n"), Err(ChunkError::BadLineEnding));
        assert_eq!(
            scan_all(b"5\r\nhello\n0\r\n\r\n"),
            Err(ChunkError::BadLineEnding)
        );
        assert_eq!(
            scan_all(b"ffffffffffffffffff\r\n"),
            Err(ChunkError::SizeOverflow)
        );
        assert_eq!(scan_all(b"0x5\r\n"), Err(ChunkError::BadSize));
        assert_eq!(scan_all(b"-1\r\n"), Err(ChunkError::BadSize));
        assert_eq!(scan_all(b"\r\n"), Err(ChunkError::BadSize));
        assert_eq!(scan_all(b"5\r\nhelloX\r\n"), Err(ChunkError::BadLineEnding));
        let long_ext = format!("1;{}\r\n", "a".repeat(5000));
        assert_eq!(scan_all(long_ext.as_bytes()), Err(ChunkError::TooLong));
    }

    #[test]
    fn incomplete_is_not_done() {
        let (n, _, done) = scan_all(b"5\r\nhel").unwrap();
        assert_eq!(n, 6);
        assert!(!done);
    }
}
