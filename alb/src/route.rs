//! Listener rules compiled at load into matchers, and evaluated by priority against a request:
//! host-header, path-pattern, http-header, http-request-method, query-string and source-ip.

use causeway_config::alb::{Action, Condition, Listener, Rule};
use causeway_config::cidr::Cidr;
use causeway_config::listener_headers::{RequestRenames, ResponseHeaders};
pub use causeway_dataplane::http1::uri::{glob, host_without_port, split_target};
use regex_lite::Regex;
use std::net::IpAddr;

/// Looks headers up: calls the visitor with every value of a (lower-case) header name until it
/// returns true, and says whether it did.
pub type HeaderLookup<'a> = &'a dyn Fn(&str, &mut dyn FnMut(&[u8]) -> bool) -> bool;

/// The parts of a request that rules look at.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a [u8],
    /// The path, without the query.
    pub path: &'a [u8],
    /// The query, without the `?`.
    pub query: &'a [u8],
    /// The Host, without its port, if any.
    pub host: Option<&'a [u8]>,
    /// The Host as sent (with its port, if it has one): what `regex_values` search.
    pub host_as_sent: Option<&'a [u8]>,
    pub source: IpAddr,
    pub headers: HeaderLookup<'a>,
}

impl std::fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestView")
            .field("method", &String::from_utf8_lossy(self.method))
            .field("path", &String::from_utf8_lossy(self.path))
            .field("host", &self.host.map(String::from_utf8_lossy))
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    Host(Vec<Vec<u8>>),
    Path(Vec<Vec<u8>>),
    Header(String, Vec<Vec<u8>>),
    Method(Vec<Vec<u8>>),
    Query(Vec<(Option<Vec<u8>>, Vec<u8>)>),
    Source(Vec<Cidr>),
    HostRe(Vec<Regex>),
    PathRe(Vec<Regex>),
    HeaderRe(String, Vec<Regex>),
}

/// Compiles regular expressions the config has already checked.
fn regexes(v: &[String]) -> Vec<Regex> {
    v.iter().filter_map(|r| Regex::new(r).ok()).collect()
}

/// Whether any of `res` is found in `text` (which must be UTF-8 to match at all).
fn found(res: &[Regex], text: &[u8]) -> bool {
    std::str::from_utf8(text).is_ok_and(|t| res.iter().any(|r| r.is_match(t)))
}

impl Matcher {
    fn compile(c: &Condition) -> Matcher {
        let bytes = |v: &[String]| v.iter().map(|s| s.as_bytes().to_vec()).collect();
        match c {
            Condition::HostHeader(v) => Matcher::Host(bytes(v)),
            Condition::PathPattern(v) => Matcher::Path(bytes(v)),
            Condition::HttpHeader { name, values } => Matcher::Header(name.clone(), bytes(values)),
            Condition::Method(v) => Matcher::Method(bytes(v)),
            Condition::QueryString(v) => Matcher::Query(
                v.iter()
                    .map(|(k, val)| {
                        (
                            k.as_ref().map(|k| k.as_bytes().to_vec()),
                            val.as_bytes().to_vec(),
                        )
                    })
                    .collect(),
            ),
            Condition::SourceIp(v) => Matcher::Source(v.clone()),
            Condition::HostHeaderRegex(v) => Matcher::HostRe(regexes(v)),
            Condition::PathPatternRegex(v) => Matcher::PathRe(regexes(v)),
            Condition::HttpHeaderRegex { name, values } => {
                Matcher::HeaderRe(name.clone(), regexes(values))
            }
        }
    }

    fn matches(&self, r: &RequestView<'_>) -> bool {
        match self {
            Matcher::Host(pats) => r
                .host
                .is_some_and(|h| pats.iter().any(|p| glob(p, h, true))),
            Matcher::Path(pats) => pats.iter().any(|p| glob(p, r.path, false)),
            Matcher::Header(name, pats) => {
                (r.headers)(name, &mut |v| pats.iter().any(|p| glob(p, v, true)))
            }
            Matcher::Method(ms) => ms.iter().any(|m| m.as_slice() == r.method),
            Matcher::Query(pairs) => r.query.split(|&b| b == b'&').any(|param| {
                let (k, v) = match param.iter().position(|&b| b == b'=') {
                    Some(i) => (&param[..i], &param[i + 1..]),
                    None => (param, &b""[..]),
                };
                pairs.iter().any(|(pk, pv)| {
                    pk.as_ref().is_none_or(|pk| glob(pk, k, true)) && glob(pv, v, true)
                })
            }),
            Matcher::Source(cidrs) => cidrs.iter().any(|c| c.contains(r.source)),
            Matcher::HostRe(res) => r.host_as_sent.is_some_and(|h| found(res, h)),
            Matcher::PathRe(res) => found(res, r.path),
            Matcher::HeaderRe(name, res) => (r.headers)(name, &mut |v| found(res, v)),
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledRule {
    priority: u32,
    matchers: Vec<Matcher>,
    action: Action,
    transforms: Option<crate::transform::Compiled>,
}

/// One listener's rules, in priority order, and its default action.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<CompiledRule>,
    default: Action,
    /// The listener's header modification, applied to every response its clients get.
    pub response_headers: ResponseHeaders,
    /// The listener's new names for the TLS fields requests carry to targets.
    pub request_renames: std::sync::Arc<RequestRenames>,
    /// The authenticate actions, by their rule's priority (0 for the default action's).
    providers: Vec<(u32, std::sync::Arc<crate::auth::Provider>)>,
    /// The jwt-validation actions, by their rule's priority (0 for the default action's).
    validators: Vec<(u32, std::sync::Arc<crate::jwt::Validator>)>,
}

impl Router {
    /// A listener's router; `Err` when an authenticate action's IdP CA file cannot be read.
    pub fn compile(l: &Listener) -> Result<Router, String> {
        let mut providers = Vec::new();
        let auths = l.default_authenticate.iter().map(|a| (0, a)).chain(
            l.rules
                .iter()
                .filter_map(|r| Some((r.priority, r.authenticate.as_ref()?))),
        );
        for (priority, a) in auths {
            let tls = crate::idp::client_config(a.trusted_ca_file.as_deref())?;
            let p = crate::auth::Provider::new(a.clone(), tls);
            providers.push((priority, std::sync::Arc::new(p)));
        }
        let mut validators = Vec::new();
        let jwts = l.default_jwt.iter().map(|j| (0, j)).chain(
            l.rules
                .iter()
                .filter_map(|r| Some((r.priority, r.jwt.as_ref()?))),
        );
        for (priority, j) in jwts {
            let ca = j.trusted_ca_file.as_deref();
            let cache =
                crate::jwt::cache_for(&j.jwks_endpoint, ca, || crate::idp::client_config(ca))?;
            let v = crate::jwt::Validator {
                cfg: j.clone(),
                cache,
            };
            validators.push((priority, std::sync::Arc::new(v)));
        }
        Ok(Router {
            response_headers: l.response_headers.clone(),
            request_renames: std::sync::Arc::new(l.request_renames.clone()),
            providers,
            validators,
            ..Self::from_rules(&l.rules, l.default_action.clone())
        })
    }

    /// Whether any of this listener's actions authenticates (a sign-in, or a JWT).
    pub fn authenticates(&self) -> bool {
        !self.providers.is_empty() || !self.validators.is_empty()
    }

    /// Whether any of this listener's actions signs users in (and so serves the callback).
    pub fn signs_in(&self) -> bool {
        !self.providers.is_empty()
    }

    /// The jwt-validation action of a routed request's rule (`None`: the default action).
    pub fn validator(
        &self,
        priority: Option<u32>,
    ) -> Option<&std::sync::Arc<crate::jwt::Validator>> {
        let at = priority.unwrap_or(0);
        self.validators
            .iter()
            .find(|(p, _)| *p == at)
            .map(|(_, v)| v)
    }

    /// The authenticate action of the rule at `priority` (0: the default action).
    pub fn provider_at(&self, priority: u32) -> Option<&std::sync::Arc<crate::auth::Provider>> {
        self.providers
            .iter()
            .find(|(p, _)| *p == priority)
            .map(|(_, a)| a)
    }

    /// The authenticate action of a routed request's rule (`None`: the default action).
    pub fn provider(
        &self,
        priority: Option<u32>,
    ) -> Option<&std::sync::Arc<crate::auth::Provider>> {
        if self.providers.is_empty() {
            return None;
        }
        self.provider_at(priority.unwrap_or(0))
    }

    pub fn from_rules(rules: &[Rule], default: Action) -> Router {
        let mut rules: Vec<CompiledRule> = rules
            .iter()
            .map(|r| CompiledRule {
                priority: r.priority,
                matchers: r.conditions.iter().map(Matcher::compile).collect(),
                action: r.action.clone(),
                transforms: crate::transform::Compiled::of(&r.transforms),
            })
            .collect();
        rules.sort_by_key(|r| r.priority);
        Router {
            rules,
            default,
            response_headers: ResponseHeaders::default(),
            request_renames: Default::default(),
            providers: Vec::new(),
            validators: Vec::new(),
        }
    }

    /// The action of the first rule whose conditions all match, or the default action.
    /// Also returns the matched rule's priority (`None` for the default).
    pub fn route(&self, r: &RequestView<'_>) -> (&Action, Option<u32>) {
        let (action, priority, _) = self.route_with_transforms(r);
        (action, priority)
    }

    /// [`Self::route`], with the matched rule's transforms (the default action has none).
    pub fn route_with_transforms(
        &self,
        r: &RequestView<'_>,
    ) -> (&Action, Option<u32>, Option<&crate::transform::Compiled>) {
        for rule in &self.rules {
            if rule.matchers.iter().all(|m| m.matches(r)) {
                return (&rule.action, Some(rule.priority), rule.transforms.as_ref());
            }
        }
        (&self.default, None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_wildcards() {
        assert!(glob(b"/wp-admin/*", b"/wp-admin/", false));
        assert!(glob(b"/wp-admin/*", b"/wp-admin/post.php", false));
        assert!(!glob(b"/wp-admin/*", b"/wp-admin", false));
        assert!(glob(b"*.example.com", b"www.Example.com", true));
        assert!(!glob(b"*.example.com", b"example.com", true));
        assert!(glob(b"img?.example.com", b"img1.example.com", true));
        assert!(!glob(b"img?.example.com", b"img12.example.com", true));
        assert!(glob(b"*a*b*", b"xxaxxbxx", false));
        assert!(!glob(b"/A", b"/a", false), "paths are case-sensitive");
        assert!(glob(b"*", b"", false));
    }

    #[test]
    fn target_and_host_helpers() {
        assert_eq!(split_target(b"/a/b?x=1&y"), (&b"/a/b"[..], &b"x=1&y"[..]));
        assert_eq!(split_target(b"/a"), (&b"/a"[..], &b""[..]));
        assert_eq!(host_without_port(b"example.com:8080"), b"example.com");
        assert_eq!(host_without_port(b"[::1]:80"), b"[::1]");
        assert_eq!(host_without_port(b"example.com"), b"example.com");
    }

    fn fwd(tg: &str) -> Action {
        Action::Forward {
            target_groups: vec![(tg.into(), 1)],
            group_stickiness: None,
        }
    }

    fn rule(priority: u32, conditions: Vec<Condition>, tg: &str) -> Rule {
        Rule {
            priority,
            conditions,
            action: fwd(tg),
            transforms: Default::default(),
            authenticate: None,
            jwt: None,
        }
    }

    fn view<'a>(
        method: &'a str,
        target: &'a str,
        host: &'a str,
        headers: HeaderLookup<'a>,
        source: &str,
    ) -> RequestView<'a> {
        let (path, query) = split_target(target.as_bytes());
        RequestView {
            method: method.as_bytes(),
            path,
            query,
            host: Some(host_without_port(host.as_bytes())),
            host_as_sent: Some(host.as_bytes()),
            source: source.parse().unwrap(),
            headers,
        }
    }

    fn routed(router: &Router, r: &RequestView<'_>) -> String {
        match router.route(r).0 {
            Action::Forward { target_groups, .. } => target_groups[0].0.clone(),
            other => format!("{other:?}"),
        }
    }

    /// `regex_values`: a search (anchor with `^` and `$`), case-sensitive unless `(?i)`; the
    /// Host's regexes see its port; the path's see no query.
    #[test]
    fn regex_values_search_the_host_with_its_port_the_path_and_headers() {
        let rules = vec![
            rule(
                1,
                vec![Condition::HostHeaderRegex(vec![
                    r"^shop\.example\.com:8443$".into(),
                ])],
                "shop-8443",
            ),
            rule(
                2,
                vec![Condition::PathPatternRegex(vec![
                    r"^/api/v[0-9]+/".into(),
                    r"\.php$".into(),
                ])],
                "api-or-php",
            ),
            rule(
                3,
                vec![Condition::HttpHeaderRegex {
                    name: "user-agent".into(),
                    values: vec![r"(?i)bot\b".into()],
                }],
                "bots",
            ),
        ];
        let router = Router::from_rules(&rules, fwd("default"));
        let none = |_: &str, _: &mut dyn FnMut(&[u8]) -> bool| false;
        let bot =
            |n: &str, f: &mut dyn FnMut(&[u8]) -> bool| n == "user-agent" && f(b"GoogleBOT/2.1");
        let ext = "192.0.2.1";
        for (target, host, headers, want) in [
            (
                "/",
                "shop.example.com:8443",
                &none as HeaderLookup<'_>,
                "shop-8443",
            ),
            ("/", "shop.example.com", &none, "default"),
            ("/", "shop.example.com:84430", &none, "default"),
            ("/api/v2/items", "www.x", &none, "api-or-php"),
            ("/API/v2/items", "www.x", &none, "default"),
            ("/wp-login.php", "www.x", &none, "api-or-php"),
            ("/wp-login.php?x=1", "www.x", &none, "api-or-php"),
            ("/index.php.bak", "www.x", &none, "default"),
            ("/", "www.x", &bot, "bots"),
        ] {
            assert_eq!(
                routed(&router, &view("GET", target, host, headers, ext)),
                want,
                "{host}{target}"
            );
        }
    }

    #[test]
    fn every_condition_and_priority_order() {
        let rules = vec![
            rule(
                50,
                vec![Condition::PathPattern(vec!["/wp-admin/*".into()])],
                "admin",
            ),
            rule(10, vec![Condition::HostHeader(vec!["api.*".into()])], "api"),
            rule(
                20,
                vec![Condition::HttpHeader {
                    name: "x-canary".into(),
                    values: vec!["yes".into()],
                }],
                "canary",
            ),
            rule(30, vec![Condition::Method(vec!["POST".into()])], "writes"),
            rule(
                40,
                vec![Condition::QueryString(vec![(
                    Some("preview".into()),
                    "true".into(),
                )])],
                "preview",
            ),
            rule(
                45,
                vec![Condition::SourceIp(
                    vec![Cidr::parse("10.0.0.0/8").unwrap()],
                )],
                "internal",
            ),
            rule(
                60,
                vec![
                    Condition::PathPattern(vec!["/both".into()]),
                    Condition::Method(vec!["GET".into()]),
                ],
                "both",
            ),
        ];
        let router = Router::from_rules(&rules, fwd("default"));
        let none = |_: &str, _: &mut dyn FnMut(&[u8]) -> bool| false;
        let canary = |n: &str, f: &mut dyn FnMut(&[u8]) -> bool| n == "x-canary" && f(b"YES");
        let ext = "192.0.2.1";
        assert_eq!(
            routed(&router, &view("GET", "/", "www.x", &none, ext)),
            "default"
        );
        assert_eq!(
            routed(&router, &view("GET", "/wp-admin/x", "www.x", &none, ext)),
            "admin"
        );
        assert_eq!(
            routed(&router, &view("GET", "/wp-admin/x", "API.x", &none, ext)),
            "api",
            "priority 10 first"
        );
        assert_eq!(
            routed(&router, &view("GET", "/", "www.x", &canary, ext)),
            "canary"
        );
        assert_eq!(
            routed(&router, &view("POST", "/", "www.x", &none, ext)),
            "writes"
        );
        assert_eq!(
            routed(
                &router,
                &view("GET", "/?a=1&Preview=TRUE", "www.x", &none, ext)
            ),
            "preview"
        );
        assert_eq!(
            routed(
                &router,
                &view("GET", "/?preview=false", "www.x", &none, ext)
            ),
            "default"
        );
        assert_eq!(
            routed(&router, &view("GET", "/", "www.x", &none, "10.9.9.9")),
            "internal"
        );
        assert_eq!(
            routed(&router, &view("GET", "/both", "www.x", &none, ext)),
            "both"
        );
        assert_eq!(
            routed(&router, &view("PUT", "/both", "www.x", &none, ext)),
            "default",
            "all conditions must match"
        );
        let (_, prio) = router.route(&view("GET", "/both", "www.x", &none, ext));
        assert_eq!(prio, Some(60));
    }
}
