//! HTTP/1.1 pieces shared by the alb and the edge, all pure: request and response heads parsed
//! in place (spans into the read buffer, no allocation per header), message framing decided by
//! RFC 9112 §6 with no leniency, and an incremental chunked-body scanner.

pub mod chunked;
pub mod head;
pub mod uri;

pub use chunked::{ChunkError, ChunkedScanner};
pub use head::{
    parse_request, parse_response, Framing, FramingError, HeadError, Header, Limits, RequestHead,
    ResponseHead, Span,
};
