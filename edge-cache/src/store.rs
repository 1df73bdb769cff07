//! Stored objects and the storage trait: an object is a ready-to-send head plus a `Bytes` body
//! with what RFC 9111 needs to reuse it (age, freshness, variant, validators). `Memory` keeps
//! them in moka (TinyLFU admission, weighted by bytes, per-entry expiry); a disk tier would be a
//! second `Store`.

use crate::admit::Freshness;
use crate::cache_control::Directives;
use crate::message::{all, get, Fields, Request};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One stored response.
#[derive(Debug)]
pub struct Object {
    pub status: u16,
    /// The stored header fields (no hop-by-hop, framing or Age fields).
    pub fields: Fields,
    /// Status line and stored fields with `content-length`, in HTTP/1.1 form, without the
    /// final blank line: a hit appends `Age` and `X-Cache` and sends it with the body.
    pub head: Bytes,
    pub body: Bytes,
    /// The behavior's keyed headers and cookies.
    pub variant: Vec<u8>,
    /// The fields the response varies on, and the normalised request values it was stored for.
    pub vary: Vec<(String, Vec<u8>)>,
    pub freshness: Freshness,
    pub stored_at: Instant,
    pub initial_age: Duration,
    /// Cache tags from the configured response header.
    pub tags: Vec<String>,
}

/// How a stored object may answer a request right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Serve it.
    Fresh,
    /// Serve it, and refresh it in the background (`stale-while-revalidate`).
    StaleWhileRevalidate,
    /// Validate with the origin first; `stale_if_error` says whether it may still be served
    /// if the origin fails.
    Validate { stale_if_error: bool },
}

impl Object {
    /// The current age (RFC 9111 §4.2.3).
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored_at)
    }

    pub fn etag(&self) -> Option<&[u8]> {
        get(&self.fields, "etag")
    }

    pub fn last_modified(&self) -> Option<&[u8]> {
        get(&self.fields, "last-modified")
    }

    /// Bytes this object holds, for the store's capacity.
    pub fn weight(&self) -> u64 {
        (self.head.len() + self.body.len() + self.variant.len() + 256) as u64
    }

    /// Whether this object is the variant for `req` (its keyed fields, then Vary, §4.1).
    pub fn matches(&self, variant: &[u8], req: &Request) -> bool {
        self.variant == variant
            && self.vary.iter().all(|(name, stored)| {
                let now = vary_value(req, name);
                now == *stored
            })
    }

    /// Whether it may be reused now for a request with these directives (§4.2, §4.2.4,
    /// §5.2.1; RFC 5861).
    pub fn reuse(&self, now: Instant, req: &Directives, req_no_cache: bool) -> Reuse {
        let f = &self.freshness;
        let age = self.age(now);
        let sie = |staleness: Duration| {
            !f.forbids_stale && !f.always_revalidate && staleness < f.stale_if_error
        };
        if f.always_revalidate || req_no_cache {
            return Reuse::Validate {
                stale_if_error: sie(age.saturating_sub(f.lifetime)),
            };
        }
        let within_max_age = req.max_age.is_none_or(|m| age <= Duration::from_secs(m));
        let fresh_enough = req
            .min_fresh
            .is_none_or(|m| f.lifetime.saturating_sub(age) >= Duration::from_secs(m));
        if age < f.lifetime {
            if within_max_age && fresh_enough {
                return Reuse::Fresh;
            }
            return Reuse::Validate {
                stale_if_error: false,
            };
        }
        let staleness = age - f.lifetime;
        if f.forbids_stale {
            return Reuse::Validate {
                stale_if_error: false,
            };
        }
        if req
            .max_stale
            .is_some_and(|m| staleness <= Duration::from_secs(m))
            && within_max_age
        {
            return Reuse::Fresh;
        }
        if staleness < f.stale_while_revalidate && within_max_age {
            return Reuse::StaleWhileRevalidate;
        }
        Reuse::Validate {
            stale_if_error: sie(staleness),
        }
    }

    /// How long the store should keep this object: fresh life, stale windows, and while a
    /// validator can still make it useful.
    pub fn keep_for(&self) -> Duration {
        let f = &self.freshness;
        let remaining = f.lifetime.saturating_sub(self.initial_age);
        let windows = f.stale_while_revalidate.max(f.stale_if_error);
        let keep = if self.etag().is_some() || self.last_modified().is_some() {
            f.lifetime
                .clamp(Duration::from_secs(60), Duration::from_secs(86_400))
        } else {
            Duration::ZERO
        };
        remaining + windows.max(keep) + Duration::from_secs(1)
    }
}

/// A request field's normalised value for Vary matching (`accept-encoding` as the edge
/// normalises it).
pub fn vary_value(req: &Request, name: &str) -> Vec<u8> {
    if name == "accept-encoding" {
        return crate::cache_key::accept_encoding(req).as_bytes().to_vec();
    }
    crate::cache_key::normalize_field(all(&req.headers, name))
}

/// The variants stored under one primary key.
pub type Variants = Arc<Vec<Arc<Object>>>;

/// A cache storage tier.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Every variant stored under `key`.
    fn get(&self, key: &str) -> Option<Variants>;
    /// Stores `obj`, replacing the variant it matches.
    fn put(&self, key: &str, obj: Arc<Object>);
    /// Drops every variant under `key`; returns how many objects went.
    fn remove(&self, key: &str) -> usize;
    /// Drops every object for which `pred(key, object)` holds; returns how many went.
    fn remove_if(&self, pred: &dyn Fn(&str, &Object) -> bool) -> usize;
    /// (objects, bytes) held.
    fn usage(&self) -> (u64, u64);
    /// (entries, bytes) held, as cheaply as the tier can tell (may lag a little).
    fn usage_hint(&self) -> (u64, u64);
}

/// The in-memory tier.
#[derive(Debug)]
pub struct Memory {
    cache: moka::sync::Cache<String, Variants>,
}

struct Expiry;

impl moka::Expiry<String, Variants> for Expiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Variants,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        value.iter().map(|o| o.keep_for()).max()
    }

    fn expire_after_update(
        &self,
        key: &String,
        value: &Variants,
        updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

impl Memory {
    /// A store holding at most `capacity` bytes.
    pub fn new(capacity: u64) -> Memory {
        let cache = moka::sync::Cache::builder()
            .max_capacity(capacity)
            .weigher(|_k: &String, v: &Variants| {
                let w: u64 = v.iter().map(|o| o.weight()).sum();
                w.min(u64::from(u32::MAX)) as u32
            })
            .expire_after(Expiry)
            .eviction_listener(|_k, _v, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    metrics::counter!("causeway_edge_evictions_total").increment(1);
                }
            })
            .build();
        Memory { cache }
    }
}

impl Store for Memory {
    fn get(&self, key: &str) -> Option<Variants> {
        self.cache.get(key)
    }

    fn put(&self, key: &str, obj: Arc<Object>) {
        let mut list: Vec<Arc<Object>> = self
            .cache
            .get(key)
            .map(|v| {
                v.iter()
                    .filter(|o| !(o.variant == obj.variant && o.vary == obj.vary))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        // A bounded number of variants per key: the newest win.
        if list.len() >= 16 {
            list.remove(0);
        }
        list.push(obj);
        self.cache.insert(key.to_string(), Arc::new(list));
    }

    fn remove(&self, key: &str) -> usize {
        self.cache.remove(key).map(|v| v.len()).unwrap_or(0)
    }

    fn remove_if(&self, pred: &dyn Fn(&str, &Object) -> bool) -> usize {
        let mut removed = 0;
        for (k, v) in self.cache.iter() {
            let keep: Vec<Arc<Object>> = v.iter().filter(|o| !pred(&k, o)).cloned().collect();
            if keep.len() == v.len() {
                continue;
            }
            removed += v.len() - keep.len();
            if keep.is_empty() {
                self.cache.invalidate(k.as_str());
            } else {
                self.cache.insert(k.to_string(), Arc::new(keep));
            }
        }
        removed
    }

    fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        let objects = self.cache.iter().map(|(_, v)| v.len() as u64).sum();
        (objects, self.cache.weighted_size())
    }

    fn usage_hint(&self) -> (u64, u64) {
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(lifetime: u64, swr: u64, sie: u64, forbids_stale: bool) -> Object {
        Object {
            status: 200,
            fields: vec![("etag".into(), b"\"v1\"".to_vec())],
            head: Bytes::from_static(b"HTTP/1.1 200 OK\r\ncontent-length: 2"),
            body: Bytes::from_static(b"hi"),
            variant: vec![],
            vary: vec![],
            freshness: Freshness {
                lifetime: Duration::from_secs(lifetime),
                stale_while_revalidate: Duration::from_secs(swr),
                stale_if_error: Duration::from_secs(sie),
                forbids_stale,
                always_revalidate: false,
                strip_fields: vec![],
            },
            stored_at: Instant::now(),
            initial_age: Duration::ZERO,
            tags: vec![],
        }
    }

    const NONE: Directives = Directives {
        max_age: None,
        s_maxage: None,
        no_store: false,
        no_cache: false,
        no_cache_fields: Vec::new(),
        private: false,
        private_fields: Vec::new(),
        public: false,
        must_revalidate: false,
        proxy_revalidate: false,
        stale_while_revalidate: None,
        stale_if_error: None,
        immutable: false,
        no_transform: false,
        only_if_cached: false,
        max_stale: None,
        min_fresh: None,
        conflicting: false,
    };

    #[tokio::test(start_paused = true)]
    async fn rfc5861_stale_while_revalidate_window_on_a_paused_clock() {
        let o = object(10, 20, 0, false);
        assert_eq!(o.reuse(Instant::now(), &NONE, false), Reuse::Fresh);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(o.age(Instant::now()), Duration::from_secs(10));
        assert_eq!(
            o.reuse(Instant::now(), &NONE, false),
            Reuse::StaleWhileRevalidate
        );
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(
            o.reuse(Instant::now(), &NONE, false),
            Reuse::StaleWhileRevalidate
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            o.reuse(Instant::now(), &NONE, false),
            Reuse::Validate {
                stale_if_error: false
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rfc5861_stale_if_error_window_on_a_paused_clock() {
        let o = object(10, 0, 60, false);
        tokio::time::advance(Duration::from_secs(69)).await;
        assert_eq!(
            o.reuse(Instant::now(), &NONE, false),
            Reuse::Validate {
                stale_if_error: true
            }
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            o.reuse(Instant::now(), &NONE, false),
            Reuse::Validate {
                stale_if_error: false
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rfc9111_4_2_4_must_revalidate_forbids_any_stale_use() {
        let o = object(10, 100, 100, true);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            o.reuse(Instant::now(), &NONE, false),
            Reuse::Validate {
                stale_if_error: false
            }
        );
        let d = Directives {
            max_stale: Some(u64::MAX),
            ..NONE
        };
        assert_eq!(
            o.reuse(Instant::now(), &d, false),
            Reuse::Validate {
                stale_if_error: false
            },
            "not even with max-stale"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rfc9111_5_2_1_request_directives() {
        let o = object(100, 0, 0, false);
        tokio::time::advance(Duration::from_secs(50)).await;
        let max_age = Directives {
            max_age: Some(30),
            ..NONE
        };
        assert_eq!(
            o.reuse(Instant::now(), &max_age, false),
            Reuse::Validate {
                stale_if_error: false
            }
        );
        let min_fresh = Directives {
            min_fresh: Some(60),
            ..NONE
        };
        assert_eq!(
            o.reuse(Instant::now(), &min_fresh, false),
            Reuse::Validate {
                stale_if_error: false
            }
        );
        assert_eq!(
            o.reuse(Instant::now(), &NONE, true),
            Reuse::Validate {
                stale_if_error: false
            }
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        let max_stale = Directives {
            max_stale: Some(20),
            ..NONE
        };
        assert_eq!(o.reuse(Instant::now(), &max_stale, false), Reuse::Fresh);
    }

    #[test]
    fn the_memory_store_keeps_variants_and_removes_them_together() {
        let m = Memory::new(1 << 20);
        let mut a = object(10, 0, 0, false);
        a.variant = b"lang:de".to_vec();
        let mut b = object(10, 0, 0, false);
        b.variant = b"lang:fr".to_vec();
        m.put("http://h/x", Arc::new(a));
        m.put("http://h/x", Arc::new(b));
        assert_eq!(m.get("http://h/x").unwrap().len(), 2);
        let mut a2 = object(10, 0, 0, false);
        a2.variant = b"lang:de".to_vec();
        m.put("http://h/x", Arc::new(a2));
        assert_eq!(
            m.get("http://h/x").unwrap().len(),
            2,
            "a variant is replaced, not added"
        );
        m.put("http://h/y", Arc::new(object(10, 0, 0, false)));
        assert_eq!(m.remove("http://h/x"), 2);
        assert!(m.get("http://h/x").is_none());
        assert_eq!(m.remove_if(&|k, _| k.ends_with("/y")), 1);
        assert_eq!(m.usage().0, 0);
    }
}
