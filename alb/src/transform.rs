//! ALB's rule transforms, as pure functions: `url-rewrite` and `host-header-rewrite` of a
//! request the rule forwards, applied after routing (the routing decision stands).

use causeway_config::alb::{Rewrite, Transforms};
use regex_lite::Regex;

/// A rule's transforms, compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    host: Option<(Regex, String)>,
    url: Option<(Regex, String)>,
}

/// What the transforms made of a request: `None` where nothing matched (the original goes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// The new request target (path and query).
    pub target: Option<String>,
    /// The new Host.
    pub host: Option<String>,
}

/// A pattern matched but what it made is not a valid request target or Host; ALB answers 500.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    #[error("url-rewrite made an invalid request target")]
    Url,
    #[error("host-header-rewrite made an invalid Host")]
    Host,
}

/// ALB's limit on a request line; a rewritten target may not exceed it either.
const MAX_TARGET: usize = 16 * 1024;

impl Compiled {
    /// Compiles a rule's transforms (their regexes were checked when the config loaded);
    /// `None` when it has none.
    pub fn of(t: &Transforms) -> Option<Compiled> {
        let compile = |r: &Option<Rewrite>| {
            r.as_ref()
                .and_then(|r| Regex::new(&r.regex).ok().map(|re| (re, r.replace.clone())))
        };
        (t.host.is_some() || t.url.is_some()).then(|| Compiled {
            host: compile(&t.host),
            url: compile(&t.url),
        })
    }

    /// Applies the transforms to a request whose target (origin-form: path and query) and
    /// Host (as sent) are these. Every match is replaced; no match leaves the part as it was.
    pub fn apply(&self, target: &[u8], host: Option<&[u8]>) -> Result<Rewritten, TransformError> {
        let mut out = Rewritten::default();
        if let Some((re, replace)) = &self.url {
            if let Some(new) = rewrite(re, replace, target) {
                if !valid_target(new.as_bytes()) {
                    return Err(TransformError::Url);
                }
                out.target = Some(new);
            }
        }
        if let (Some((re, replace)), Some(host)) = (&self.host, host) {
            if let Some(new) = rewrite(re, replace, host) {
                if !valid_authority(new.as_bytes()) {
                    return Err(TransformError::Host);
                }
                out.host = Some(new);
            }
        }
        Ok(out)
    }
}

/// `input` with every match of `re` replaced, if there is one (non-UTF-8 input never matches).
fn rewrite(re: &Regex, replace: &str, input: &[u8]) -> Option<String> {
    let input = std::str::from_utf8(input).ok()?;
    re.is_match(input)
        .then(|| re.replace_all(input, replace).into_owned())
}

/// An origin-form request target: `/`, then visible ASCII only (no space, no fragment).
fn valid_target(t: &[u8]) -> bool {
    t.first() == Some(&b'/')
        && t.len() <= MAX_TARGET
        && t.iter().all(|&b| (b'!'..=b'~').contains(&b) && b != b'#')
}

/// A Host value: a valid host name or IP literal, and an optional port of 1 to 5 digits.
fn valid_authority(a: &[u8]) -> bool {
    let host = crate::route::host_without_port(a);
    let port = &a[host.len()..];
    crate::action::valid_host(host)
        && (port.is_empty()
            || (port[0] == b':'
                && (2..=6).contains(&port.len())
                && port[1..].iter().all(u8::is_ascii_digit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(host: Option<(&str, &str)>, url: Option<(&str, &str)>) -> Compiled {
        let r = |x: Option<(&str, &str)>| {
            x.map(|(regex, replace)| Rewrite {
                regex: regex.into(),
                replace: replace.into(),
            })
        };
        Compiled::of(&Transforms {
            host: r(host),
            url: r(url),
        })
        .unwrap()
    }

    /// AWS's own examples, and what no match, a query, and an invalid result do.
    #[test]
    fn rewrites_as_alb_documents_them() {
        let t = compiled(
            Some((r"^mywebsite-(.+)\.com$", "internal.dev.$1.myweb.com")),
            Some((r"^/dp/([A-Za-z0-9]+)/?$", "/product.php?id=$1")),
        );
        assert_eq!(
            t.apply(b"/dp/B09G3HRMW", Some(b"mywebsite-example.com")),
            Ok(Rewritten {
                target: Some("/product.php?id=B09G3HRMW".into()),
                host: Some("internal.dev.example.myweb.com".into()),
            })
        );
        assert_eq!(
            t.apply(b"/dp/B09G3HRMW?ref=1", Some(b"www.example.com")),
            Ok(Rewritten::default()),
            "the anchored pattern does not match a target with a query; nothing changes"
        );
        let prefix = compiled(None, Some((r"^/blog/", "/")));
        assert_eq!(
            prefix
                .apply(b"/blog/2024/hello?p=1", None)
                .unwrap()
                .target
                .as_deref(),
            Some("/2024/hello?p=1")
        );
        let bad = compiled(Some(("^(.*)$", "$1 evil")), Some(("^/(.*)$", "$1")));
        assert_eq!(
            bad.apply(b"/x", None),
            Err(TransformError::Url),
            "no leading /"
        );
        assert_eq!(
            bad.apply(b"x", Some(b"a.example")),
            Err(TransformError::Host),
            "a space in the Host"
        );
        let port = compiled(Some((r":8443$", ":443")), None);
        assert_eq!(
            port.apply(b"/", Some(b"shop.example:8443"))
                .unwrap()
                .host
                .as_deref(),
            Some("shop.example:443")
        );
        assert_eq!(
            compiled(Some(("example", "bad/host")), None).apply(b"/", Some(b"example")),
            Err(TransformError::Host)
        );
    }
}
