//! The testkit origin answers HTTP/1.1 and h2c, and reports what it saw.

use bytes::Bytes;
use causeway_testkit::{raw, Origin};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::test]
async fn http1_requests_are_counted_and_recorded() {
    let o = Origin::builder()
        .name("a")
        .status_for("/missing", 404)
        .start()
        .await;
    let r = raw::get(o.addr(), "/x?y=1", &[("X-Test", "1")])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-origin"), Some("a"));
    assert_eq!(r.text(), "origin a /x\n");
    let r = raw::get(o.addr(), "/missing", &[]).await.unwrap();
    assert_eq!(r.status, 404);
    let seen = o.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path, "/x?y=1");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].header("x-test"), Some("1"));
    assert_eq!(seen[0].version, "HTTP/1.1");
    assert_eq!(o.hits("/missing"), 1);
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let o = Origin::builder().name("h2").start().await;
    let tcp = tokio::net::TcpStream::connect(o.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(format!("http://{}/two", o.addr()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"origin h2 /two\n");
    assert_eq!(o.seen()[0].version, "HTTP/2.0");
}
