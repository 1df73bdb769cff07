//! Phase `request_filter`, pure: which cache behavior a request falls under (first path match,
//! the default last), what it may do (allowed methods, viewer protocol policy, PURGE access),
//! whether it bypasses the cache (WordPress rules), and which client headers never reach the
//! origin.

use crate::message::{query_pairs, Request};
use causeway_config::cidr::Cidr;
use causeway_config::edge::{CacheBehavior, ViewerProtocolPolicy};
use causeway_dataplane::http1::uri::{glob, host_without_port};
use std::net::IpAddr;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `PURGE` from an allowed source.
    Purge,
    /// Answer here: status, an optional Location, and a short body.
    Local {
        status: u16,
        location: Option<String>,
        body: &'static str,
    },
    /// Go through the cache (or around it when `bypass` says why).
    Forward {
        behavior: usize,
        bypass: Option<&'static str>,
    },
}

/// Client headers that would let a viewer change what the origin serves without changing the
/// cache key (web cache poisoning); the edge never forwards them.
pub const UNKEYED_FORWARDING: &[&str] = &[
    "x-forwarded-host",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-original-url",
    "x-original-host",
    "x-rewrite-url",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "forwarded",
];

/// The behavior a path falls under: the first whose pattern matches, else the default (last).
pub fn behavior_for(behaviors: &[CacheBehavior], path: &str) -> usize {
    behaviors
        .iter()
        .position(|b| {
            b.path_pattern == "*" || glob(b.path_pattern.as_bytes(), path.as_bytes(), false)
        })
        .unwrap_or(behaviors.len().saturating_sub(1))
}

/// Decides what happens to a request.
pub fn decide(
    req: &Request,
    behaviors: &[CacheBehavior],
    wordpress: bool,
    peer: IpAddr,
    purge_allowed: &[Cidr],
) -> Decision {
    if req.method == "PURGE" {
        if purge_allowed.iter().any(|c| c.contains(peer)) {
            return Decision::Purge;
        }
        return Decision::Local {
            status: 403,
            location: None,
            body: "PURGE is not allowed from this address\n",
        };
    }
    let i = behavior_for(behaviors, &req.path);
    let b = &behaviors[i];
    match b.viewer_protocol_policy {
        ViewerProtocolPolicy::AllowAll => {}
        _ if req.scheme == "https" => {}
        ViewerProtocolPolicy::HttpsOnly => {
            return Decision::Local {
                status: 403,
                location: None,
                body: "HTTPS is required\n",
            }
        }
        ViewerProtocolPolicy::RedirectToHttps => {
            // The authority was validated when the request was read (`message::valid_authority`).
            let host = String::from_utf8_lossy(host_without_port(req.authority.as_bytes()))
                .to_ascii_lowercase();
            let mut location = format!("https://{host}{}", req.path);
            if !req.query.is_empty() {
                location.push('?');
                location.push_str(&req.query);
            }
            return Decision::Local {
                status: if req.is_get_or_head() { 301 } else { 307 },
                location: Some(location),
                body: "",
            };
        }
    }
    if !b.allowed_methods.contains(&req.method) {
        return Decision::Local {
            status: 403,
            location: None,
            body: "method not allowed for this path\n",
        };
    }
    let bypass = if !req.is_get_or_head() {
        Some("method")
    } else if wordpress {
        wordpress_bypass(req, b)
    } else {
        None
    };
    Decision::Forward {
        behavior: i,
        bypass,
    }
}

/// Paths WordPress serves per user or per request.
const WP_DYNAMIC: &[&str] = &[
    "/wp-admin/*",
    "/wp-admin",
    "/wp-login.php",
    "/wp-cron.php",
    "/xmlrpc.php",
    "/wp-comments-post.php",
];

/// Cookies that mark a logged-in, commenting, password-holding or shopping visitor.
const WP_COOKIE_PREFIXES: &[&str] = &[
    "wordpress_logged_in_",
    "wordpress_sec_",
    "wp-postpass_",
    "comment_author_",
    "woocommerce_",
];

/// Static paths: cached long, and never bypassed for cookies.
pub const WP_STATIC: &[&str] = &["/wp-content/*", "/wp-includes/*"];

/// Why the WordPress preset sends a GET or HEAD around the cache, if it does.
pub fn wordpress_bypass(req: &Request, b: &CacheBehavior) -> Option<&'static str> {
    let path = req.path.as_bytes();
    if WP_DYNAMIC.iter().any(|p| glob(p.as_bytes(), path, false)) {
        return Some("wordpress dynamic path");
    }
    for (name, pair) in query_pairs(&req.query) {
        if pair == "preview=true" || name == "p" || name == "page_id" || name == "preview_id" {
            return Some("wordpress preview");
        }
    }
    if WP_STATIC.contains(&b.path_pattern.as_str()) {
        return None;
    }
    let logged_in = req.cookies().any(|(n, _)| {
        WP_COOKIE_PREFIXES
            .iter()
            .any(|p| n.starts_with(p.as_bytes()))
    });
    if logged_in {
        return Some("wordpress session cookie");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_config::edge::{CacheKeyPolicy, OriginRequestPolicy, Selection};
    use std::time::Duration;

    fn behavior(pattern: &str, methods: &[&str], vpp: ViewerProtocolPolicy) -> CacheBehavior {
        CacheBehavior {
            path_pattern: pattern.into(),
            target_origin_id: "o".into(),
            allowed_methods: methods.iter().map(|m| m.to_string()).collect(),
            viewer_protocol_policy: vpp,
            min_ttl: Duration::ZERO,
            default_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(600),
            compress: false,
            cache_key: CacheKeyPolicy {
                query_strings: Selection::All,
                headers: vec![],
                cookies: Selection::None,
            },
            origin_request: OriginRequestPolicy {
                headers: Selection::All,
                cookies: Selection::All,
                query_strings: Selection::All,
            },
        }
    }

    fn req(method: &str, path: &str, query: &str, cookie: Option<&str>) -> Request {
        let mut headers = vec![("host".to_string(), b"example.com".to_vec())];
        if let Some(c) = cookie {
            headers.push(("cookie".into(), c.as_bytes().to_vec()));
        }
        Request {
            method: method.into(),
            scheme: "http",
            authority: "example.com".into(),
            path: path.into(),
            query: query.into(),
            headers,
            body: Default::default(),
        }
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn all_behaviors() -> Vec<CacheBehavior> {
        vec![
            behavior(
                "/wp-content/*",
                &["GET", "HEAD"],
                ViewerProtocolPolicy::AllowAll,
            ),
            behavior(
                "/secure/*",
                &["GET", "HEAD"],
                ViewerProtocolPolicy::RedirectToHttps,
            ),
            behavior("/only/*", &["GET", "HEAD"], ViewerProtocolPolicy::HttpsOnly),
            behavior(
                "*",
                &["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"],
                ViewerProtocolPolicy::AllowAll,
            ),
        ]
    }

    #[test]
    fn first_matching_behavior_wins_and_default_is_last() {
        let b = all_behaviors();
        assert_eq!(behavior_for(&b, "/wp-content/a.css"), 0);
        assert_eq!(behavior_for(&b, "/secure/x"), 1);
        assert_eq!(behavior_for(&b, "/other"), 3);
        assert_eq!(
            behavior_for(&b, "/WP-CONTENT/a.css"),
            3,
            "patterns are case-sensitive"
        );
    }

    #[test]
    fn viewer_protocol_policy_and_methods() {
        let b = all_behaviors();
        let d = decide(&req("GET", "/secure/x", "a=1", None), &b, false, LOCAL, &[]);
        assert_eq!(
            d,
            Decision::Local {
                status: 301,
                location: Some("https://example.com/secure/x?a=1".into()),
                body: ""
            }
        );
        let d = decide(&req("POST", "/secure/x", "", None), &b, false, LOCAL, &[]);
        assert!(matches!(d, Decision::Local { status: 307, .. }));
        let d = decide(&req("GET", "/only/x", "", None), &b, false, LOCAL, &[]);
        assert!(matches!(d, Decision::Local { status: 403, .. }));
        let d = decide(
            &req("POST", "/wp-content/x", "", None),
            &b,
            false,
            LOCAL,
            &[],
        );
        assert!(matches!(d, Decision::Local { status: 403, .. }), "{d:?}");
        let d = decide(&req("POST", "/x", "", None), &b, false, LOCAL, &[]);
        assert_eq!(
            d,
            Decision::Forward {
                behavior: 3,
                bypass: Some("method")
            }
        );
    }

    #[test]
    fn purge_needs_an_allowed_source() {
        let b = all_behaviors();
        let allowed = [Cidr::parse("127.0.0.0/8").unwrap()];
        let r = req("PURGE", "/x", "", None);
        assert_eq!(decide(&r, &b, false, LOCAL, &allowed), Decision::Purge);
        let other: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(matches!(
            decide(&r, &b, false, other, &allowed),
            Decision::Local { status: 403, .. }
        ));
    }

    #[test]
    fn wordpress_bypass_rules() {
        let b = all_behaviors();
        let bypass = |r: Request| match decide(&r, &b, true, LOCAL, &[]) {
            Decision::Forward { bypass, .. } => bypass,
            d => panic!("{d:?}"),
        };
        for p in [
            "/wp-admin/",
            "/wp-admin/edit.php",
            "/wp-login.php",
            "/wp-cron.php",
            "/xmlrpc.php",
            "/wp-comments-post.php",
        ] {
            assert!(bypass(req("GET", p, "", None)).is_some(), "{p}");
        }
        for q in ["preview=true", "p=12", "page_id=3&x=1"] {
            assert!(bypass(req("GET", "/", q, None)).is_some(), "{q}");
        }
        for c in [
            "wordpress_logged_in_abc=1",
            "x=1; wordpress_sec_abc=2",
            "wp-postpass_123=x",
            "comment_author_1=me",
            "woocommerce_items_in_cart=1",
        ] {
            assert!(
                bypass(req("GET", "/hello-world/", "", Some(c))).is_some(),
                "{c}"
            );
            assert!(
                bypass(req("GET", "/wp-json/wp/v2/posts", "", Some(c))).is_some(),
                "{c}"
            );
        }
        assert_eq!(
            bypass(req(
                "GET",
                "/hello-world/",
                "",
                Some("wordpress_test_cookie=1")
            )),
            None
        );
        assert_eq!(bypass(req("GET", "/wp-json/wp/v2/posts", "", None)), None);
        assert_eq!(
            bypass(req("GET", "/hello-world/", "utm_source=x", None)),
            None
        );
        assert_eq!(
            bypass(req(
                "GET",
                "/wp-content/a.css",
                "",
                Some("wordpress_logged_in_x=1")
            )),
            None,
            "static files are shared even for logged-in visitors"
        );
    }
}
