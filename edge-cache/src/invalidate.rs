//! Invalidation: `PURGE <url>` from allowed sources (every variant of that URL), and the admin
//! API `POST /invalidations` with paths (a trailing `*` matches a prefix) and cache tags.

use crate::logging;
use crate::message::Request;
use crate::respond::{EdgeResult, Reply};
use crate::Edge;
use causeway_dataplane::Snapshot;
use serde_json::json;
use std::sync::Arc;

/// The path and query of a primary key (`scheme://host/path?query`).
pub fn key_target(key: &str) -> &str {
    let rest = key.split_once("://").map_or(key, |(_, r)| r);
    rest.find('/').map_or("/", |i| &rest[i..])
}

/// Whether an invalidation path matches a key's target: a trailing `*` matches any suffix
/// (query included); otherwise the path must be equal, whatever the query.
pub fn path_matches(pattern: &str, target: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => target.starts_with(prefix),
        None => target.split('?').next() == Some(pattern),
    }
}

/// Answers a PURGE: drops every variant stored for the URL, under both schemes.
pub fn purge(snap: &Snapshot<Edge>, req: &Request) -> Reply {
    let c = &snap.compiled;
    let b = &c.behaviors[crate::request_filter::behavior_for(&c.behaviors, &req.path)];
    let mut removed = 0;
    for scheme in ["http", "https"] {
        let r = Request {
            scheme,
            ..req.clone()
        };
        let key = crate::cache_key::primary(&r, &b.cache_key, snap.config.wordpress);
        removed += c.store.remove(&key);
    }
    logging::invalidated("purge", removed);
    let (entries, bytes) = c.store.usage();
    logging::metrics().store_usage(entries, bytes);
    let body = json!({ "purged": removed }).to_string() + "\n";
    Reply::local(200, &[], "application/json", &body, EdgeResult::Miss)
}

/// `POST /invalidations` on the admin port: `{"paths": [...], "tags": [...]}`.
pub fn admin(
    method: &str,
    path: &str,
    body: &[u8],
    snap: &Arc<Snapshot<Edge>>,
) -> Option<(u16, serde_json::Value)> {
    if path != "/invalidations" {
        return None;
    }
    if method != "POST" {
        return Some((405, json!({ "error": "use POST" })));
    }
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Some((400, json!({ "error": format!("invalid JSON: {e}") }))),
    };
    let list = |name: &str| -> Result<Vec<String>, String> {
        match v.get(name) {
            None => Ok(Vec::new()),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("{name} must be strings"))
                })
                .collect(),
            Some(_) => Err(format!("{name} must be a list")),
        }
    };
    let (paths, tags) = match (list("paths"), list("tags")) {
        (Ok(p), Ok(t)) => (p, t),
        (Err(e), _) | (_, Err(e)) => return Some((400, json!({ "error": e }))),
    };
    if paths.is_empty() && tags.is_empty() {
        return Some((400, json!({ "error": "give paths or tags" })));
    }
    if let Some(bad) = paths.iter().find(|p| !p.starts_with('/')) {
        return Some((
            400,
            json!({ "error": format!("path must start with /: {bad}") }),
        ));
    }
    let store = &snap.compiled.store;
    let by_path = if paths.is_empty() {
        0
    } else {
        store.remove_if(&|key, _| {
            let t = key_target(key);
            paths.iter().any(|p| path_matches(p, t))
        })
    };
    let by_tag = if tags.is_empty() {
        0
    } else {
        store.remove_if(&|_, o| o.tags.iter().any(|t| tags.contains(t)))
    };
    if !paths.is_empty() {
        logging::invalidated("path", by_path);
    }
    if !tags.is_empty() {
        logging::invalidated("tag", by_tag);
    }
    let (entries, bytes) = store.usage();
    logging::metrics().store_usage(entries, bytes);
    Some((
        200,
        json!({ "invalidated": by_path + by_tag, "by_path": by_path, "by_tag": by_tag }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidation_paths() {
        assert_eq!(key_target("http://h:8080/a/b?x=1"), "/a/b?x=1");
        assert!(path_matches("/a/*", "/a/b?x=1"));
        assert!(path_matches("/a/b", "/a/b?x=1"));
        assert!(!path_matches("/a/b", "/a/bc"));
        assert!(path_matches("/*", "/"));
        assert!(!path_matches("/b/*", "/a/b"));
    }
}
