//! End-to-end behaviour of the edge's cache over HTTP/1.1 against testkit origins that count
//! and record requests: one test per RFC 9111 rule (named after its section), RFC 5861 and
//! RFC 9213, collapsing, invalidation, ranges, the WordPress preset, and poisoning defences.

use causeway_config::edge::FileEdge;
use causeway_config::{parse, Context};
use causeway_dataplane::check::NetProber;
use causeway_dataplane::Server;
use causeway_edge::Edge;
use causeway_testkit::raw::{self, RawResponse};
use causeway_testkit::tls::{cert, curl};
use causeway_testkit::{free_port, Origin};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

struct Edge1 {
    server: Arc<Server<Edge>>,
    addr: SocketAddr,
    admin: SocketAddr,
    _stop_admin: tokio::sync::watch::Sender<bool>,
}

/// Starts an edge whose default behavior targets origin `o` at `origin`, with `extra` TOML
/// lines appended (more origins, behaviors, settings).
async fn start_with(origin: SocketAddr, behavior: &str, extra: &str) -> Edge1 {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        r#"
{extra}
[admin]
address = "{admin}"
[[listeners]]
address = "{addr}"
[origins.o]
address = "{origin}"
response_timeout_seconds = 5
[default_cache_behavior]
target_origin_id = "o"
{behavior}
"#
    );
    launch(&text, addr, admin).await
}

/// Writes the config to a file (so a reload can read it) and starts the edge.
async fn launch(text: &str, addr: SocketAddr, admin: SocketAddr) -> Edge1 {
    let path = std::env::temp_dir().join(format!("causeway-edge-test-{}.toml", addr.port()));
    std::fs::write(&path, text).unwrap();
    let cfg = parse::<FileEdge>("edge.toml", text, &Context { dir: ".".into() })
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let server = Server::<Edge>::start(&path, cfg, Arc::new(NetProber))
        .await
        .unwrap();
    let stop = causeway_dataplane::admin::spawn(admin, server.clone())
        .await
        .unwrap();
    Edge1 {
        server,
        addr,
        admin,
        _stop_admin: stop,
    }
}

async fn start(origin: &Origin) -> Edge1 {
    start_with(
        origin.addr(),
        r#"allowed_methods = ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"]"#,
        "",
    )
    .await
}

async fn get(e: &Edge1, path: &str, extra: &[(&str, &str)]) -> RawResponse {
    raw::get(e.addr, path, extra).await.unwrap()
}

fn x_cache(r: &RawResponse) -> &str {
    r.header("x-cache").unwrap_or("")
}

#[tokio::test]
async fn rfc9111_3_a_cacheable_response_is_stored_and_served_as_a_hit() {
    let o = Origin::start().await;
    o.set_headers(
        "/a",
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
        ],
    );
    let e = start(&o).await;
    let first = get(&e, "/a", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(x_cache(&first), "Miss from causeway");
    let second = get(&e, "/a", &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(x_cache(&second), "Hit from causeway");
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("content-type"), Some("text/plain"));
    assert_eq!(second.header("age"), Some("0"));
    assert!(second.header("via").unwrap().contains("1.1 causeway"));
    assert_eq!(o.hits("/a"), 1, "the hit never reached the origin");
}

#[tokio::test]
async fn rfc9111_3_no_store_private_and_set_cookie_are_never_stored() {
    let o = Origin::builder()
        .set_cookie_for("/cookie", "sid=1")
        .start()
        .await;
    o.set_headers("/no-store", &[("cache-control", "no-store")]);
    o.set_headers("/private", &[("cache-control", "private, max-age=60")]);
    o.set_headers("/cookie", &[("cache-control", "max-age=60")]);
    let e = start(&o).await;
    for p in ["/no-store", "/private", "/cookie"] {
        for _ in 0..2 {
            let r = get(&e, p, &[]).await;
            assert_eq!(r.status, 200);
            assert_eq!(x_cache(&r), "Miss from causeway", "{p}");
        }
        assert_eq!(o.hits(p), 2, "{p} was stored");
    }
    let r = get(&e, "/cookie", &[]).await;
    assert_eq!(
        r.header("set-cookie"),
        Some("sid=1"),
        "the cookie still reaches its owner"
    );
}

#[tokio::test]
async fn rfc9111_3_5_authorization_needs_public_s_maxage_or_must_revalidate() {
    let o = Origin::start().await;
    o.set_headers("/plain", &[("cache-control", "max-age=60")]);
    o.set_headers("/public", &[("cache-control", "public, max-age=60")]);
    let e = start(&o).await;
    let auth = [("authorization", "Bearer x")];
    get(&e, "/plain", &auth).await;
    get(&e, "/plain", &auth).await;
    assert_eq!(o.hits("/plain"), 2);
    get(&e, "/public", &auth).await;
    let r = get(&e, "/public", &auth).await;
    assert_eq!(x_cache(&r), "Hit from causeway");
    assert_eq!(o.hits("/public"), 1);
}

#[tokio::test]
async fn rfc9111_4_1_vary_keeps_one_variant_per_request_value() {
    let o = Origin::start().await;
    o.set_headers(
        "/v",
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
    );
    let e = start(&o).await;
    let de = [("accept-language", "de")];
    let fr = [("accept-language", "fr")];
    assert_eq!(x_cache(&get(&e, "/v", &de).await), "Miss from causeway");
    assert_eq!(x_cache(&get(&e, "/v", &fr).await), "Miss from causeway");
    assert_eq!(x_cache(&get(&e, "/v", &de).await), "Hit from causeway");
    assert_eq!(x_cache(&get(&e, "/v", &fr).await), "Hit from causeway");
    assert_eq!(o.hits("/v"), 2);
    let seen = o.seen();
    assert_eq!(seen[0].header("accept-language"), Some("de"));
    assert_eq!(seen[1].header("accept-language"), Some("fr"));
}

#[tokio::test]
async fn rfc9111_4_1_accept_encoding_is_normalised_before_keying() {
    let o = Origin::start().await;
    o.set_headers(
        "/ae",
        &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
    );
    let e = start(&o).await;
    get(&e, "/ae", &[("accept-encoding", "gzip, deflate, br")]).await;
    let r = get(&e, "/ae", &[("accept-encoding", "br;q=1.0, gzip;q=0.8")]).await;
    assert_eq!(x_cache(&r), "Hit from causeway", "same normalised value");
    let r = get(&e, "/ae", &[("accept-encoding", "gzip")]).await;
    assert_eq!(x_cache(&r), "Miss from causeway");
    assert_eq!(o.seen()[0].header("accept-encoding"), Some("br,gzip"));
}

#[tokio::test]
async fn rfc9111_4_2_1_s_maxage_wins_over_max_age() {
    let o = Origin::start().await;
    // Arrives 100 s old: stale by max-age, fresh by s-maxage.
    o.set_headers(
        "/s",
        &[
            ("cache-control", "max-age=10, s-maxage=1000"),
            ("age", "100"),
        ],
    );
    o.set_headers("/m", &[("cache-control", "max-age=10"), ("age", "100")]);
    let e = start(&o).await;
    get(&e, "/s", &[]).await;
    assert_eq!(x_cache(&get(&e, "/s", &[]).await), "Hit from causeway");
    get(&e, "/m", &[]).await;
    get(&e, "/m", &[]).await;
    assert_eq!(o.hits("/s"), 1);
    assert_eq!(
        o.hits("/m"),
        2,
        "stale on arrival: not served without validation"
    );
}

#[tokio::test]
async fn rfc9111_4_2_1_expires_counts_from_date() {
    let o = Origin::start().await;
    let now = std::time::SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let past = httpdate::fmt_http_date(now - Duration::from_secs(60));
    let future = httpdate::fmt_http_date(now + Duration::from_secs(600));
    o.set_headers(
        "/future",
        &[("expires", future.as_str()), ("date", date.as_str())],
    );
    o.set_headers(
        "/past",
        &[("expires", past.as_str()), ("date", date.as_str())],
    );
    let e = start(&o).await;
    for p in ["/future", "/past"] {
        get(&e, p, &[]).await;
        get(&e, p, &[]).await;
    }
    assert_eq!(o.hits("/future"), 1);
    assert_eq!(o.hits("/past"), 2);
}

#[tokio::test]
async fn rfc9111_4_2_3_age_includes_time_spent_upstream() {
    let o = Origin::start().await;
    o.set_headers("/aged", &[("cache-control", "max-age=600"), ("age", "50")]);
    let e = start(&o).await;
    get(&e, "/aged", &[]).await;
    let r = get(&e, "/aged", &[]).await;
    let age: u64 = r.header("age").unwrap().parse().unwrap();
    assert!((50..60).contains(&age), "age {age}");
}

#[tokio::test]
async fn rfc9111_4_3_revalidation_with_etag_updates_the_stored_headers() {
    let o = Origin::start().await;
    o.set_headers(
        "/r",
        &[
            ("cache-control", "max-age=10"),
            ("age", "100"),
            ("etag", "\"v1\""),
        ],
    );
    let e = start(&o).await;
    assert_eq!(x_cache(&get(&e, "/r", &[]).await), "Miss from causeway");
    // Now fresh for a minute, with a new header, same representation.
    o.set_headers(
        "/r",
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("x-version", "2"),
        ],
    );
    let r = get(&e, "/r", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(x_cache(&r), "RefreshHit from causeway");
    assert_eq!(
        r.text(),
        format!("origin {} /r\n", o.name()),
        "the stored body"
    );
    assert_eq!(
        r.header("x-version"),
        Some("2"),
        "the 304's fields were merged"
    );
    let seen = o.seen();
    assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""));
    let r = get(&e, "/r", &[]).await;
    assert_eq!(
        x_cache(&r),
        "Hit from causeway",
        "fresh again after the 304"
    );
    assert_eq!(o.hits("/r"), 2);
}

#[tokio::test]
async fn rfc9111_4_3_2_a_conditional_viewer_gets_304_from_the_cache() {
    let o = Origin::start().await;
    let lm = "Tue, 01 Sep 2026 10:00:00 GMT";
    o.set_headers(
        "/c",
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"abc\""),
            ("last-modified", lm),
        ],
    );
    let e = start(&o).await;
    get(&e, "/c", &[]).await;
    let r = get(&e, "/c", &[("if-none-match", "W/\"abc\"")]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some("\"abc\""));
    let r = get(&e, "/c", &[("if-none-match", "\"other\"")]).await;
    assert_eq!(r.status, 200);
    let r = get(&e, "/c", &[("if-modified-since", lm)]).await;
    assert_eq!(r.status, 304);
    assert_eq!(o.hits("/c"), 1);
}

#[tokio::test]
async fn rfc9111_4_4_a_successful_unsafe_method_invalidates() {
    let o = Origin::start().await;
    o.set_headers(
        "/post",
        &[
            ("cache-control", "max-age=60"),
            ("content-location", "/other"),
        ],
    );
    o.set_headers("/other", &[("cache-control", "max-age=60")]);
    let e = start(&o).await;
    get(&e, "/post", &[]).await;
    get(&e, "/other", &[]).await;
    assert_eq!(x_cache(&get(&e, "/post", &[]).await), "Hit from causeway");
    let r = raw::request(e.addr, "POST", "/post", &[], b"x=1")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(o.seen().last().unwrap().body, b"x=1");
    assert_eq!(x_cache(&get(&e, "/post", &[]).await), "Miss from causeway");
    assert_eq!(
        x_cache(&get(&e, "/other", &[]).await),
        "Miss from causeway",
        "Content-Location too"
    );
}

#[tokio::test]
async fn rfc9111_5_2_2_4_no_cache_is_revalidated_on_every_use() {
    let o = Origin::start().await;
    o.set_headers("/nc", &[("cache-control", "no-cache"), ("etag", "\"n\"")]);
    let e = start(&o).await;
    get(&e, "/nc", &[]).await;
    let r = get(&e, "/nc", &[]).await;
    assert_eq!(x_cache(&r), "RefreshHit from causeway");
    let r = get(&e, "/nc", &[]).await;
    assert_eq!(x_cache(&r), "RefreshHit from causeway");
    assert_eq!(o.hits("/nc"), 3);
    assert!(o.seen()[1..]
        .iter()
        .all(|s| s.header("if-none-match") == Some("\"n\"")));
}

#[tokio::test]
async fn rfc9111_5_2_2_2_must_revalidate_is_never_served_stale() {
    let o = Origin::start().await;
    o.set_headers(
        "/mr",
        &[
            (
                "cache-control",
                "max-age=10, must-revalidate, stale-if-error=600",
            ),
            ("age", "20"),
        ],
    );
    let e = start(&o).await;
    get(&e, "/mr", &[]).await;
    o.set_status("/mr", 503);
    let r = get(&e, "/mr", &[]).await;
    assert_eq!(r.status, 503, "the error, not the stale copy");
    assert_eq!(x_cache(&r), "Error from causeway");
}

#[tokio::test]
async fn rfc5861_stale_if_error_serves_the_stale_copy_when_the_origin_fails() {
    let o = Origin::start().await;
    o.set_headers(
        "/sie",
        &[
            ("cache-control", "max-age=10, stale-if-error=600"),
            ("age", "20"),
        ],
    );
    let e = start(&o).await;
    let first = get(&e, "/sie", &[]).await;
    o.set_status("/sie", 500);
    let r = get(&e, "/sie", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, first.body);
    assert_eq!(o.hits("/sie"), 2, "the origin was asked first");
    // And when it is down altogether.
    o.stop();
    let r = get(&e, "/sie", &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn rfc5861_stale_while_revalidate_answers_at_once_and_refreshes_behind() {
    let o = Origin::start().await;
    o.set_headers(
        "/swr",
        &[
            ("cache-control", "max-age=10, stale-while-revalidate=600"),
            ("age", "20"),
        ],
    );
    let e = start(&o).await;
    get(&e, "/swr", &[]).await;
    o.set_delay("/swr", Duration::from_millis(300));
    let r = get(&e, "/swr", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(x_cache(&r), "Hit from causeway", "served stale");
    // The background refresh reaches the origin (bounded wait for another task).
    for _ in 0..100 {
        if o.hits("/swr") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(o.hits("/swr"), 2);
}

#[tokio::test]
async fn rfc9213_cdn_cache_control_takes_precedence() {
    let o = Origin::start().await;
    o.set_headers(
        "/cdn",
        &[
            ("cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ],
    );
    o.set_headers(
        "/sc",
        &[
            ("cache-control", "max-age=60"),
            ("surrogate-control", "no-store"),
        ],
    );
    let e = start(&o).await;
    get(&e, "/cdn", &[]).await;
    let r = get(&e, "/cdn", &[]).await;
    assert_eq!(x_cache(&r), "Hit from causeway");
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "browsers still get the origin's"
    );
    get(&e, "/sc", &[]).await;
    let r = get(&e, "/sc", &[]).await;
    assert_eq!(x_cache(&r), "Miss from causeway");
    assert_eq!(
        r.header("surrogate-control"),
        None,
        "edge-targeted: not relayed"
    );
}

#[tokio::test]
async fn rfc9111_5_2_1_7_only_if_cached_gets_504_on_a_miss() {
    let o = Origin::start().await;
    let e = start(&o).await;
    let r = get(&e, "/oic", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(r.status, 504);
    assert_eq!(o.hits("/oic"), 0);
}

#[tokio::test]
async fn collapsing_many_parallel_misses_make_one_origin_request() {
    let o = Origin::start().await;
    o.set_headers("/hot", &[("cache-control", "max-age=60")]);
    o.set_delay("/hot", Duration::from_millis(400));
    let e = start(&o).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = e.addr;
        tasks.push(tokio::spawn(async move {
            raw::get(addr, "/hot", &[]).await.unwrap()
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("origin {} /hot\n", o.name()));
    }
    assert_eq!(o.hits("/hot"), 1);
}

#[tokio::test]
async fn collapsing_never_shares_a_private_response() {
    let o = Origin::start().await;
    o.set_headers("/mine", &[("cache-control", "private")]);
    o.set_delay("/mine", Duration::from_millis(300));
    let e = start(&o).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let addr = e.addr;
        tasks.push(tokio::spawn(async move {
            raw::get(addr, "/mine", &[]).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(o.hits("/mine"), 5, "each waiter went to the origin itself");
}

#[tokio::test]
async fn purge_drops_every_variant_and_needs_an_allowed_source() {
    let o = Origin::start().await;
    o.set_headers(
        "/p",
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
    );
    let e = start(&o).await;
    get(&e, "/p", &[("accept-language", "de")]).await;
    get(&e, "/p", &[("accept-language", "fr")]).await;
    let r = raw::request(e.addr, "PURGE", "/p", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{\"purged\":2}\n");
    assert_eq!(
        x_cache(&get(&e, "/p", &[("accept-language", "de")]).await),
        "Miss from causeway"
    );
    // Only loopback is allowed by default; a config without it refuses.
    let o2 = Origin::start().await;
    let e2 = start_with(
        o2.addr(),
        "",
        "[cache]\npurge_allowed_cidrs = [\"10.0.0.0/8\"]",
    )
    .await;
    let r = raw::request(e2.addr, "PURGE", "/p", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 403);
}

async fn admin_post(admin: SocketAddr, path: &str, body: &str) -> RawResponse {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let raw = raw::exchange(admin, req.as_bytes(), Duration::from_secs(5))
        .await
        .unwrap();
    RawResponse::parse(&raw).unwrap()
}

#[tokio::test]
async fn invalidation_by_wildcard_path_and_by_tag() {
    let o = Origin::start().await;
    for p in ["/inv/a", "/inv/b", "/keep"] {
        o.set_headers(p, &[("cache-control", "max-age=60")]);
    }
    o.set_headers(
        "/tagged",
        &[
            ("cache-control", "max-age=60"),
            ("cache-tag", "post-7, home"),
        ],
    );
    let e = start(&o).await;
    for p in ["/inv/a", "/inv/b?x=1", "/keep", "/tagged"] {
        get(&e, p, &[]).await;
    }
    let r = admin_post(e.admin, "/invalidations", r#"{"paths": ["/inv/*"]}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"by_path\":2"), "{}", r.text());
    assert_eq!(x_cache(&get(&e, "/inv/a", &[]).await), "Miss from causeway");
    assert_eq!(x_cache(&get(&e, "/keep", &[]).await), "Hit from causeway");
    let t = get(&e, "/tagged", &[]).await;
    assert_eq!(t.header("cache-tag"), None, "tags stay at the edge");
    let r = admin_post(e.admin, "/invalidations", r#"{"tags": ["post-7"]}"#).await;
    assert!(r.text().contains("\"by_tag\":1"), "{}", r.text());
    assert_eq!(
        x_cache(&get(&e, "/tagged", &[]).await),
        "Miss from causeway"
    );
    let r = admin_post(e.admin, "/invalidations", r#"{"paths": "x"}"#).await;
    assert_eq!(r.status, 400);
    let metrics = raw::get(e.admin, "/metrics", &[]).await.unwrap().text();
    assert!(
        causeway_testkit::metric(&metrics, "causeway_edge_invalidations_total{kind=\"tag\"}")
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn rfc9110_14_ranges_are_served_from_the_stored_object() {
    let o = Origin::start().await;
    o.set_body("/file", "0123456789");
    o.set_headers(
        "/file",
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"f\""),
            ("content-type", "text/plain"),
        ],
    );
    let e = start(&o).await;
    let r = get(&e, "/file", &[("range", "bytes=2-4")]).await;
    assert_eq!(
        r.status, 206,
        "the first request fetches the whole object and answers the range"
    );
    assert_eq!(r.text(), "234");
    assert_eq!(r.header("content-range"), Some("bytes 2-4/10"));
    assert_eq!(
        o.seen()[0].header("range"),
        None,
        "the origin is asked for all of it"
    );
    let r = get(&e, "/file", &[("range", "bytes=-3")]).await;
    assert_eq!(r.text(), "789");
    let r = get(&e, "/file", &[("range", "bytes=0-0,8-")]).await;
    assert_eq!(r.status, 206);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("multipart/byteranges"));
    assert!(r.text().contains("content-range: bytes 0-0/10\r\n\r\n0"));
    assert!(r.text().contains("content-range: bytes 8-9/10\r\n\r\n89"));
    let r = get(&e, "/file", &[("range", "bytes=50-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */10"));
    let r = get(
        &e,
        "/file",
        &[("range", "bytes=0-1"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(r.status, 200, "If-Range mismatch: the whole object");
    assert_eq!(r.text(), "0123456789");
    assert_eq!(o.hits("/file"), 1);
}

#[tokio::test]
async fn head_is_answered_from_the_get_object() {
    let o = Origin::start().await;
    o.set_headers("/h", &[("cache-control", "max-age=60")]);
    let e = start(&o).await;
    let r = raw::request(e.addr, "HEAD", "/h", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let len: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(len, format!("origin {} /h\n", o.name()).len());
    assert_eq!(o.seen()[0].method, "GET");
    let r = get(&e, "/h", &[]).await;
    assert_eq!(x_cache(&r), "Hit from causeway");
}

/// Requests the origin saw for `path`, whatever their query.
fn hits_under(o: &Origin, path: &str) -> usize {
    o.seen()
        .iter()
        .filter(|s| s.path.split('?').next() == Some(path))
        .count()
}

async fn wordpress_edge(o: &Origin) -> Edge1 {
    start_with(
        o.addr(),
        r#"allowed_methods = ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"]"#,
        "preset = \"wordpress\"",
    )
    .await
}

#[tokio::test]
async fn wordpress_bypass_cases_never_store() {
    let o = Origin::start().await;
    let e = wordpress_edge(&o).await;
    for p in [
        "/wp-admin/edit.php",
        "/wp-login.php",
        "/wp-cron.php",
        "/xmlrpc.php",
        "/wp-comments-post.php",
    ] {
        o.set_headers(p, &[("cache-control", "max-age=600")]);
        get(&e, p, &[]).await;
        let r = get(&e, p, &[]).await;
        assert_eq!(x_cache(&r), "Miss from causeway", "{p}");
        assert_eq!(o.hits(p), 2, "{p}");
    }
    o.set_headers("/post-1/", &[("cache-control", "max-age=600")]);
    for (i, q) in ["?preview=true", "?p=12", "?page_id=3"].iter().enumerate() {
        get(&e, &format!("/post-1/{q}"), &[]).await;
        get(&e, &format!("/post-1/{q}"), &[]).await;
        assert_eq!(hits_under(&o, "/post-1/"), 2 * (i + 1), "{q}");
    }
    let before = hits_under(&o, "/post-1/");
    for c in [
        "wordpress_logged_in_1=a",
        "wordpress_sec_1=a",
        "wp-postpass_1=a",
        "comment_author_1=a",
        "woocommerce_cart_hash=a",
    ] {
        get(&e, "/post-1/", &[("cookie", c)]).await;
    }
    assert_eq!(
        hits_under(&o, "/post-1/") - before,
        5,
        "each cookie bypassed"
    );
    o.set_headers("/wp-json/wp/v2/posts", &[("cache-control", "max-age=600")]);
    get(
        &e,
        "/wp-json/wp/v2/posts",
        &[("cookie", "wordpress_logged_in_1=a")],
    )
    .await;
    get(
        &e,
        "/wp-json/wp/v2/posts",
        &[("cookie", "wordpress_logged_in_1=a")],
    )
    .await;
    assert_eq!(
        o.hits("/wp-json/wp/v2/posts"),
        2,
        "logged-in REST calls bypass"
    );
    let r = raw::request(e.addr, "POST", "/post-1/", &[], b"c=1")
        .await
        .unwrap();
    assert_eq!(x_cache(&r), "Miss from causeway");
}

#[tokio::test]
async fn wordpress_preset_strips_tracking_parameters_and_caches_static_files_long() {
    let o = Origin::start().await;
    o.set_headers("/post-2/", &[("cache-control", "max-age=600")]);
    let e = wordpress_edge(&o).await;
    get(&e, "/post-2/?utm_source=news&utm_medium=mail", &[]).await;
    let r = get(&e, "/post-2/?fbclid=abc&gclid=x", &[]).await;
    assert_eq!(x_cache(&r), "Hit from causeway");
    assert_eq!(
        o.seen()[0].path,
        "/post-2/",
        "tracking parameters never reach the origin"
    );
    // No cache headers at all: the static behavior's default TTL keeps it, even for a
    // logged-in visitor.
    get(
        &e,
        "/wp-content/uploads/cat.jpg",
        &[("cookie", "wordpress_logged_in_1=a")],
    )
    .await;
    let r = get(&e, "/wp-content/uploads/cat.jpg", &[]).await;
    assert_eq!(x_cache(&r), "Hit from causeway");
    assert_eq!(
        o.seen().last().unwrap().header("cookie"),
        None,
        "no cookies to static origins"
    );
}

#[tokio::test]
async fn unkeyed_forwarding_headers_never_reach_the_origin() {
    let o = Origin::start().await;
    o.set_headers("/poison", &[("cache-control", "max-age=60")]);
    let e = start(&o).await;
    let evil = [
        ("x-forwarded-host", "evil.example"),
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("forwarded", "host=evil.example"),
        ("x-forwarded-proto", "https"),
    ];
    get(&e, "/poison", &evil).await;
    let s = &o.seen()[0];
    for (n, _) in evil.iter().take(4) {
        assert_eq!(s.header(n), None, "{n} was forwarded");
    }
    assert_eq!(
        s.header("x-forwarded-proto"),
        Some("http"),
        "overwritten with the truth"
    );
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    // The key holds the host: another Host is another object.
    let other = format!(
        "GET /poison HTTP/1.1\r\nHost: other.example:{}\r\nConnection: close\r\n\r\n",
        e.addr.port()
    );
    let raw = raw::exchange(e.addr, other.as_bytes(), Duration::from_secs(5))
        .await
        .unwrap();
    let r = RawResponse::parse(&raw).unwrap();
    assert_eq!(x_cache(&r), "Miss from causeway");
    assert_eq!(o.hits("/poison"), 2);
    // An invalid Host is refused before it can reach a key.
    let bad = b"GET /poison HTTP/1.1\r\nHost: evil.com/x\r\n\r\n";
    let raw = raw::exchange(e.addr, bad, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(RawResponse::parse(&raw).unwrap().status, 400);
}

#[tokio::test]
async fn cache_deception_nothing_is_stored_for_its_extension_alone() {
    let o = Origin::start().await;
    // An account page reached through a static-looking path.
    o.set_headers(
        "/my-account/style.css",
        &[("cache-control", "no-store, private")],
    );
    let e = start_with(
        o.addr(),
        "",
        "[[cache_behaviors]]\npath_pattern = \"*.css\"\ntarget_origin_id = \"o\"\ndefault_ttl_seconds = 86400\n",
    )
    .await;
    get(&e, "/my-account/style.css", &[]).await;
    let r = get(&e, "/my-account/style.css", &[]).await;
    assert_eq!(x_cache(&r), "Miss from causeway");
    assert_eq!(o.hits("/my-account/style.css"), 2);
}

#[tokio::test]
async fn origin_groups_fail_over_for_safe_methods_only() {
    let primary = Origin::builder()
        .name("primary")
        .default_status(503)
        .start()
        .await;
    let secondary = Origin::builder().name("secondary").start().await;
    let e = start_group(primary.addr(), secondary.addr()).await;
    let r = get(&e, "/x", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-origin"), Some("secondary"));
    let r = raw::request(e.addr, "POST", "/x", &[], b"a").await.unwrap();
    assert_eq!(r.status, 503, "a POST is never sent twice");
    assert_eq!(
        secondary
            .seen()
            .iter()
            .filter(|s| s.method == "POST")
            .count(),
        0
    );
}

async fn start_group(primary: SocketAddr, secondary: SocketAddr) -> Edge1 {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        r#"
[admin]
address = "{admin}"
[[listeners]]
address = "{addr}"
[origins.a]
address = "{primary}"
[origins.b]
address = "{secondary}"
[origin_groups.g]
members = ["a", "b"]
failover_status_codes = [500, 502, 503, 504]
[default_cache_behavior]
target_origin_id = "g"
allowed_methods = ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"]
"#
    );
    launch(&text, addr, admin).await
}

#[tokio::test]
async fn a_dead_origin_gets_502_with_x_cache_error() {
    let dead = causeway_testkit::closed_port().await;
    let e = start_with(dead, "", "").await;
    let r = get(&e, "/", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(x_cache(&r), "Error from causeway");
}

#[tokio::test]
async fn an_object_above_the_size_limit_streams_through_unstored() {
    let o = Origin::start().await;
    let big = "x".repeat(300_000);
    o.set_body("/big", big.clone());
    o.set_headers("/big", &[("cache-control", "max-age=60")]);
    let e = start_with(o.addr(), "", "[cache]\nmax_object_bytes = 100000").await;
    let r = get(&e, "/big", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
    let r = get(&e, "/big", &[]).await;
    assert_eq!(r.body.len(), big.len());
    assert_eq!(o.hits("/big"), 2);
}

#[tokio::test]
async fn a_reload_keeps_the_cache() {
    let o = Origin::start().await;
    o.set_headers("/keep", &[("cache-control", "max-age=60")]);
    let e = start(&o).await;
    get(&e, "/keep", &[]).await;
    let before = e.server.snapshot().generation;
    e.server.reload().await.unwrap();
    assert_eq!(e.server.snapshot().generation, before + 1);
    assert_eq!(x_cache(&get(&e, "/keep", &[]).await), "Hit from causeway");
}

#[tokio::test]
async fn smuggling_shapes_get_400_and_a_close() {
    let o = Origin::start().await;
    let e = start(&o).await;
    for bad in [
        &b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"GET http://evil/ HTTP/1.1\r\nHost: h\r\n\r\n",
    ] {
        let raw = raw::exchange(e.addr, bad, Duration::from_secs(5)).await.unwrap();
        let r = RawResponse::parse(&raw).unwrap_or_else(|| panic!("{raw:?}"));
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
        assert_eq!(r.header("connection"), Some("close"));
    }
    assert_eq!(o.total(), 0, "nothing ambiguous reached the origin");
}

#[tokio::test]
async fn keep_alive_serves_hits_on_one_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let o = Origin::start().await;
    o.set_headers("/ka", &[("cache-control", "max-age=60")]);
    let e = start(&o).await;
    let mut s = tokio::net::TcpStream::connect(e.addr).await.unwrap();
    let req = format!("GET /ka HTTP/1.1\r\nHost: {}\r\n\r\n", e.addr);
    let mut answers = Vec::new();
    for _ in 0..3 {
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        answers.push(RawResponse::parse(&buf[..n]).unwrap());
    }
    assert_eq!(x_cache(&answers[0]), "Miss from causeway");
    assert_eq!(x_cache(&answers[2]), "Hit from causeway");
    assert_eq!(o.hits("/ka"), 1);
}

/// `curl --http2-prior-knowledge` (a real h2 client): status line, headers and body.
async fn curl_h2(url: String, extra: &[&str]) -> String {
    let mut args = vec![
        "-s".to_string(),
        "-i".into(),
        "--http2-prior-knowledge".into(),
        "--max-time".into(),
        "10".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(url);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(&args).output()
    })
    .await
    .unwrap()
    .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn h2_prior_knowledge_hits_share_the_cache_with_http1() {
    let o = Origin::start().await;
    o.set_headers(
        "/h2",
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
        ],
    );
    let e = start(&o).await;
    let first = curl_h2(format!("http://{}/h2", e.addr), &[]).await;
    assert!(first.starts_with("HTTP/2 200"), "{first}");
    assert!(first.contains("x-cache: Miss from causeway"), "{first}");
    let second = curl_h2(format!("http://{}/h2", e.addr), &[]).await;
    assert!(second.contains("x-cache: Hit from causeway"), "{second}");
    assert!(second.contains("content-type: text/plain"), "{second}");
    assert!(
        second.ends_with(&format!("origin {} /h2\n", o.name())),
        "{second}"
    );
    // The same object over HTTP/1.1.
    assert_eq!(x_cache(&get(&e, "/h2", &[]).await), "Hit from causeway");
    assert_eq!(o.hits("/h2"), 1);
    // A conditional and a range over h2, from the stored object.
    let r = curl_h2(format!("http://{}/h2", e.addr), &["-r", "0-5"]).await;
    assert!(r.starts_with("HTTP/2 206"), "{r}");
    assert!(r.ends_with("origin"), "{r}");
    // A POST goes through to the origin with its body.
    let r = curl_h2(format!("http://{}/form", e.addr), &["-d", "a=1"]).await;
    assert!(r.starts_with("HTTP/2 200"), "{r}");
    let seen = o.seen();
    let post = seen.iter().find(|s| s.method == "POST").unwrap();
    assert_eq!(post.body, b"a=1");
    assert_eq!(
        post.version, "HTTP/1.1",
        "the origin is spoken to in HTTP/1.1"
    );
}

#[tokio::test]
async fn compression_follows_cloudfront_rules_and_keeps_variants_apart() {
    use std::io::Read;
    let o = Origin::start().await;
    let page = "<p>hello compressible world</p>\n".repeat(100);
    o.set_body("/page", page.clone());
    o.set_headers(
        "/page",
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/html; charset=UTF-8"),
            ("etag", "\"p1\""),
        ],
    );
    o.set_body("/small", "tiny");
    o.set_headers(
        "/small",
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/html"),
        ],
    );
    o.set_body("/img", "x".repeat(5000));
    o.set_headers(
        "/img",
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "image/jpeg"),
        ],
    );
    let e = start_with(o.addr(), "compress = true", "").await;
    let gz = get(&e, "/page", &[("accept-encoding", "gzip")]).await;
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(
        gz.header("etag"),
        Some("W/\"p1\""),
        "a strong ETag is made weak"
    );
    assert_eq!(gz.header("vary"), Some("Accept-Encoding"));
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, page);
    assert_eq!(o.seen()[0].header("accept-encoding"), Some("gzip"));
    let br = get(&e, "/page", &[("accept-encoding", "gzip, deflate, br")]).await;
    assert_eq!(br.header("content-encoding"), Some("br"));
    let mut plain = Vec::new();
    brotli::Decompressor::new(&br.body[..], 4096)
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, page.as_bytes());
    let identity = get(&e, "/page", &[]).await;
    assert_eq!(identity.header("content-encoding"), None);
    assert_eq!(identity.text(), page);
    assert_eq!(
        x_cache(&get(&e, "/page", &[("accept-encoding", "gzip")]).await),
        "Hit from causeway"
    );
    assert_eq!(o.hits("/page"), 3, "one fetch per coding, then hits");
    let small = get(&e, "/small", &[("accept-encoding", "gzip")]).await;
    assert_eq!(small.header("content-encoding"), None, "under 1,000 bytes");
    let img = get(&e, "/img", &[("accept-encoding", "gzip")]).await;
    assert_eq!(
        img.header("content-encoding"),
        None,
        "not a compressible type"
    );
    assert_eq!(img.body.len(), 5000);
}

#[tokio::test]
async fn custom_error_responses_serve_a_cached_page_with_the_configured_status() {
    let o = Origin::builder()
        .status_for("/gone", 404)
        .status_for("/broken", 503)
        .start()
        .await;
    o.set_body("/errors/404.html", "<h1>not here</h1>");
    o.set_headers(
        "/errors/404.html",
        &[
            ("cache-control", "max-age=600"),
            ("content-type", "text/html"),
        ],
    );
    let extra = "[[custom_error_responses]]\nerror_code = 404\nresponse_page_path = \"/errors/404.html\"\n\
                 [[custom_error_responses]]\nerror_code = 503\nresponse_page_path = \"/errors/404.html\"\nresponse_code = 200\nerror_caching_min_ttl_seconds = 0\n";
    let e = start_with(o.addr(), "", extra).await;
    let r = get(&e, "/gone", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "<h1>not here</h1>");
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(x_cache(&r), "Error from causeway");
    let r = get(&e, "/gone", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        o.hits("/gone"),
        1,
        "the 404 itself is cached for the error-caching TTL"
    );
    let r = get(&e, "/broken", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "<h1>not here</h1>");
    get(&e, "/broken", &[]).await;
    assert_eq!(
        o.hits("/broken"),
        2,
        "error_caching_min_ttl_seconds = 0: not cached"
    );
    assert_eq!(o.hits("/errors/404.html"), 1, "the page is a cached object");
}

#[tokio::test]
async fn the_access_log_records_the_edge_result_type() {
    let o = Origin::start().await;
    o.set_headers("/logged", &[("cache-control", "max-age=60")]);
    let log = std::env::temp_dir().join(format!("causeway-edge-access-{}.log", free_port()));
    let extra = format!(
        "[access_logs]\nenabled = true\npath = \"{}\"",
        log.display()
    );
    let e = start_with(o.addr(), "", &extra).await;
    get(&e, "/logged", &[]).await;
    get(&e, "/logged", &[]).await;
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        if lines.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains(" GET ") && lines[0].contains("\"/logged\" 200 "),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains(" Miss "), "{}", lines[0]);
    assert!(lines[1].contains(" Hit "), "{}", lines[1]);
    assert!(lines[1].ends_with(" Compliant"), "{}", lines[1]);
    let _ = std::fs::remove_file(&log);
}

/// Starts an edge with an HTTPS listener (certificates: default, a, *.b) and returns its
/// address too.
async fn start_tls(o: &Origin, policy: &str) -> (Edge1, SocketAddr) {
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let certs = causeway_testkit::tls::certificates_toml();
    let extra = format!(
        "[[listeners]]\naddress = \"{tls_addr}\"\nprotocol = \"HTTPS\"\nssl_policy = \"{policy}\"\ncertificates = [{certs}]\n"
    );
    (start_with(o.addr(), "", &extra).await, tls_addr)
}

#[tokio::test]
async fn https_chooses_the_certificate_by_sni_and_serves_h2_and_http1_from_the_cache() {
    let o = Origin::start().await;
    o.set_headers("/tls", &[("cache-control", "max-age=60")]);
    let (_e, addr) = start_tls(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06").await;
    let (out, err) = curl(addr, "a.example.test", "/tls", &[]).await;
    assert!(out.starts_with("HTTP/2 200"), "{out}\n{err}");
    assert!(err.contains("subject: CN=a.example.test"), "{err}");
    assert!(out.contains("x-cache: Miss from causeway"), "{out}");
    let (out, err) = curl(addr, "www.b.example.test", "/tls", &["--http1.1"]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    assert!(
        err.contains("subject: CN=b.example.test"),
        "wildcard: {err}"
    );
    assert!(
        out.contains("x-cache: Miss from causeway"),
        "another host, another key: {out}"
    );
    let (out, _) = curl(addr, "a.example.test", "/tls", &["--http1.1"]).await;
    assert!(out.contains("x-cache: Hit from causeway"), "{out}");
    // An unknown name gets the default certificate (which the client then refuses).
    let (_, err) = curl(addr, "other.example.test", "/tls", &["-k"]).await;
    assert!(err.contains("subject: CN=default.example.test"), "{err}");
    assert_eq!(
        o.hits("/tls"),
        3,
        "a, *.b and the unknown host are three keys"
    );
    let seen = o.seen();
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn the_tls13_only_policy_refuses_tls12() {
    let o = Origin::start().await;
    let (_e, addr) = start_tls(&o, "ELBSecurityPolicy-TLS13-1-3-2021-06").await;
    let (out, err) = curl(addr, "a.example.test", "/", &["--tls-max", "1.2"]).await;
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("alert") || err.contains("error"), "{err}");
    let (out, err) = curl(addr, "a.example.test", "/", &[]).await;
    assert!(out.starts_with("HTTP/2 200"), "{out}\n{err}");
    assert!(err.contains("TLSv1.3"), "{err}");
}

#[tokio::test]
async fn h3_hits_on_the_https_port_advertised_by_alt_svc() {
    use causeway_testkit::h3client::H3Client;
    let o = Origin::start().await;
    o.set_headers(
        "/h3",
        &[
            ("cache-control", "max-age=60"),
            ("content-type", "text/plain"),
        ],
    );
    let (_e, addr) = start_tls(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06").await;
    // The TCP side advertises HTTP/3 on the same port.
    let (out, err) = curl(addr, "a.example.test", "/h3", &[]).await;
    let alt = format!("alt-svc: h3=\":{}\"; ma=86400", addr.port());
    assert!(out.contains(&alt), "{out}\n{err}");
    // The supervisor binds UDP shortly after start; a bounded wait for it.
    let ca = std::path::PathBuf::from(cert("ca.pem"));
    let mut client = None;
    for _ in 0..50 {
        match tokio::time::timeout(
            Duration::from_secs(2),
            H3Client::connect(addr, "a.example.test", &ca),
        )
        .await
        {
            Ok(Ok(c)) => {
                client = Some(c);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut client = client.expect("an HTTP/3 connection");
    let r = client.request("GET", "/h3", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-cache"),
        Some("Hit from causeway"),
        "stored by the TCP request"
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.body, format!("origin {} /h3\n", o.name()).into_bytes());
    let r = client
        .request("GET", "/h3", &[("range", "bytes=0-5")])
        .await
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, b"origin");
    let r = client.request("HEAD", "/h3", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(o.hits("/h3"), 1);
    let seen_before = o.seen().len();
    let r = client.request("GET", "/h3-miss", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-cache"), Some("Miss from causeway"));
    assert_eq!(o.seen().len(), seen_before + 1);
    assert_eq!(
        o.seen().last().unwrap().header("x-forwarded-proto"),
        Some("https")
    );
}

#[tokio::test]
async fn an_https_origin_is_verified_against_its_domain_name() {
    // Edge A terminates TLS in front of a plain origin; edge B uses A as an https-only origin.
    let o = Origin::start().await;
    o.set_headers("/o-tls", &[("cache-control", "max-age=60")]);
    let (_a, a_tls) = start_tls(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06").await;
    let origin_cfg = |name: &str| {
        format!(
            "[origins.o]\naddress = \"{a_tls}\"\norigin_protocol_policy = \"https-only\"\ndomain_name = \"{name}\"\nca_file = \"{}\"\n",
            cert("ca.pem")
        )
    };
    let b = start_custom(&origin_cfg("a.example.test")).await;
    let r = get(&b, "/o-tls", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), format!("origin {} /o-tls\n", o.name()));
    assert_eq!(
        o.seen()[0].header("x-forwarded-proto"),
        Some("https"),
        "A was reached over TLS"
    );
    let r = get(&b, "/o-tls-2", &[]).await;
    assert_eq!(r.status, 200, "a pooled TLS connection is reused");
    // A name the certificate does not hold: refused, nothing reaches the origin.
    let before = o.seen().len();
    let bad = start_custom(&origin_cfg("wrong.example.test")).await;
    let r = get(&bad, "/o-tls-3", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(o.seen().len(), before);
}

/// An edge whose `[origins.o]` table is given whole.
async fn start_custom(origin_table: &str) -> Edge1 {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "[admin]\naddress = \"{admin}\"\n[[listeners]]\naddress = \"{addr}\"\n{origin_table}[default_cache_behavior]\ntarget_origin_id = \"o\"\n"
    );
    launch(&text, addr, admin).await
}

#[tokio::test]
async fn rfc9111_4_2_2_heuristic_freshness_only_where_allowed() {
    let o = Origin::start().await;
    let now = std::time::SystemTime::now();
    let lm = httpdate::fmt_http_date(now - Duration::from_secs(100_000));
    o.set_headers("/heur", &[("last-modified", lm.as_str())]);
    o.set_headers("/heur302", &[("last-modified", lm.as_str())]);
    o.set_status("/heur302", 302);
    // A strict policy (min and default TTL 0): only the RFC's own heuristic applies.
    let e = start_with(o.addr(), "default_ttl_seconds = 0", "").await;
    get(&e, "/heur", &[]).await;
    let r = get(&e, "/heur", &[]).await;
    assert_eq!(
        x_cache(&r),
        "Hit from causeway",
        "10% of the time since Last-Modified"
    );
    get(&e, "/heur302", &[]).await;
    get(&e, "/heur302", &[]).await;
    assert_eq!(
        o.hits("/heur302"),
        2,
        "a 302 is not heuristically cacheable"
    );
}

#[tokio::test]
async fn rfc9111_5_2_1_request_max_age_zero_and_no_cache_revalidate() {
    let o = Origin::start().await;
    o.set_headers(
        "/rq",
        &[("cache-control", "max-age=600"), ("etag", "\"q\"")],
    );
    let e = start(&o).await;
    get(&e, "/rq", &[]).await;
    let r = get(&e, "/rq", &[("cache-control", "max-age=0")]).await;
    assert_eq!(x_cache(&r), "RefreshHit from causeway");
    let r = get(&e, "/rq", &[("pragma", "no-cache")]).await;
    assert_eq!(
        x_cache(&r),
        "RefreshHit from causeway",
        "Pragma when there is no Cache-Control"
    );
    let r = get(&e, "/rq", &[("cache-control", "max-stale=5")]).await;
    assert_eq!(x_cache(&r), "Hit from causeway");
    assert_eq!(o.hits("/rq"), 3);
    assert!(o.seen()[1..]
        .iter()
        .all(|s| s.header("if-none-match") == Some("\"q\"")));
}

#[tokio::test]
async fn bypassed_responses_are_compressed_too() {
    use std::io::Read;
    let o = Origin::start().await;
    let page = "<p>logged in</p>\n".repeat(100);
    o.set_body("/wp-admin/index.php", page.clone());
    o.set_headers(
        "/wp-admin/index.php",
        &[("content-type", "text/html"), ("cache-control", "private")],
    );
    let e = start_with(o.addr(), "compress = true", "preset = \"wordpress\"").await;
    let r = get(&e, "/wp-admin/index.php", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&r.body[..])
        .read_to_string(&mut plain)
        .unwrap();
    assert_eq!(plain, page);
}

#[tokio::test]
async fn h2_urls_longer_than_8192_bytes_get_414() {
    let o = Origin::start().await;
    let e = start(&o).await;
    let long = format!("/{}", "a".repeat(9000));
    let r = curl_h2(format!("http://{}{long}", e.addr), &[]).await;
    assert!(r.starts_with("HTTP/2 414"), "{r}");
    assert_eq!(o.total(), 0);
}

#[tokio::test]
async fn http1_over_tls_gets_the_same_smuggling_checks_and_alt_svc() {
    let o = Origin::start().await;
    let (_e, addr) = start_tls(&o, "ELBSecurityPolicy-TLS13-1-2-2021-06").await;
    let (out, err) = curl(addr, "a.example.test", "/x", &["--http1.1"]).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}\n{err}");
    let alt = format!("alt-svc: h3=\":{}\"; ma=86400", addr.port());
    assert!(out.contains(&alt), "{out}");
    // CL + TE over TLS: AWS's classifier refuses it as in cleartext.
    let (out, _) = curl(
        addr,
        "a.example.test",
        "/smuggle",
        &[
            "--http1.1",
            "-X",
            "POST",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Length: 3",
            "--data-binary",
            "abc",
        ],
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(o.hits("/smuggle"), 0);
}

/// A drain does not wait on idle keep-alive viewers (it used to wait for its whole grace
/// period whenever a viewer held a connection open).
#[tokio::test(start_paused = true)]
async fn a_drain_closes_idle_keep_alive_connections_and_answers_a_last_request() {
    let o = Origin::builder().start().await;
    let e = start(&o).await;
    let server = e.server.clone();
    raw::check_drain_closes_idle_connections(
        e.addr,
        "/",
        causeway_dataplane::client::DRAIN_LINGER,
        Duration::ZERO,
        async move { server.shutdown().await },
    )
    .await;
}

/// A viewer that connects and sends nothing is closed once a request head is overdue. It was
/// held until it left: the check for the h2 preface waited on a peek with no deadline.
#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let o = Origin::builder().start().await;
    let e = start(&o).await;
    let c = tokio::net::TcpStream::connect(e.addr).await.unwrap();
    let header_timeout = causeway_edge::proxy::HEADER_TIMEOUT;
    assert_eq!(raw::closed_after(c).await, header_timeout);
    assert_eq!(o.total(), 0);
}
