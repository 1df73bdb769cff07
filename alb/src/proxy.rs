//! The alb's request path. The HTTP engine is not built yet: every request is answered
//! `501 Not Implemented` and the connection closed, so nothing pretends to route.

use crate::Alb;
use causeway_dataplane::{reply::reply_and_close, Conn, Snapshot};
use std::sync::Arc;
use std::time::Duration;

/// Serves one client connection.
pub async fn handle(conn: Conn, _snap: Arc<Snapshot<Alb>>) {
    reply_and_close(
        conn.stream,
        501,
        "Not Implemented",
        "causeway-alb: HTTP routing is not implemented yet\n",
        Duration::from_secs(10),
    )
    .await;
}
