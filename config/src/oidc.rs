//! ALB's `authenticate-oidc` and `authenticate-cognito` actions: an OpenID Connect identity
//! provider (for Cognito, a user pool's) that a rule's (or a listener's default action's)
//! requests sign in with before the action runs.

use crate::error::{in_range, one_of, Check, Violation};
use crate::Context;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// AWS's `AuthenticateOidcActionConfig`, in snake case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuthenticateOidc {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub user_info_endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    pub scope: Option<String>,
    pub session_cookie_name: Option<String>,
    pub session_timeout_seconds: Option<i64>,
    pub on_unauthenticated_request: Option<String>,
    #[serde(default)]
    pub authentication_request_extra_params: BTreeMap<String, String>,
    /// Ours: a PEM file of CA certificates trusted for the IdP's endpoints besides the
    /// system's (an IdP with a private CA).
    pub trusted_ca_file: Option<String>,
}

/// What a request that has no valid session gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnauthenticated {
    /// A redirect to the IdP (the default).
    Authenticate,
    /// 401.
    Deny,
    /// The action runs, without the user's claims.
    Allow,
}

/// An HTTPS endpoint, split for the client that calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    /// As configured.
    pub raw: String,
    /// The host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The path and query, at least `/`.
    pub path_and_query: String,
}

impl HttpsUrl {
    /// Parses an absolute `https://host[:port][/path][?query]` URL: no user info, no fragment.
    pub fn parse(s: &str) -> Result<HttpsUrl, &'static str> {
        let rest = s
            .strip_prefix("https://")
            .ok_or("must be a full URL starting with https://")?;
        if s.bytes().any(|b| !(b'!'..=b'~').contains(&b)) || s.contains('#') {
            return Err("must be visible ASCII without spaces or a fragment");
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err("must not carry user information");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or("an IPv6 host needs its closing ]")?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("needs a host");
        }
        let port = match port {
            None => 443,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or("has a bad port")?,
        };
        Ok(HttpsUrl {
            raw: s.to_owned(),
            host: host.to_ascii_lowercase(),
            port,
            path_and_query: path,
        })
    }
}

/// A validated `authenticate-oidc` action.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthenticateOidc {
    pub issuer: String,
    pub authorization_endpoint: HttpsUrl,
    pub token_endpoint: HttpsUrl,
    pub user_info_endpoint: HttpsUrl,
    pub client_id: String,
    pub client_secret: String,
    /// Space-separated scopes (ALB's default `openid`).
    pub scope: String,
    /// ALB's default `AWSELBAuthSessionCookie`; the cookies are this name plus `-0`, `-1`, ...
    pub session_cookie_name: String,
    /// ALB's `SessionTimeout` (7 days by default, at most 7 days).
    pub session_timeout: Duration,
    pub on_unauthenticated: OnUnauthenticated,
    /// Added to the authorization redirect's query, in name order.
    pub extra_params: Vec<(String, String)>,
    pub trusted_ca_file: Option<PathBuf>,
}

/// The query parameters the alb sets itself, which extra parameters may not replace.
const RESERVED: &[&str] = &[
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "nonce",
];

/// Whether `s` is a cookie name (an HTTP token).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl FileAuthenticateOidc {
    pub fn validate(self, path: &str, cx: &Context) -> Check<AuthenticateOidc> {
        let url = |key: &str, v: &str| {
            HttpsUrl::parse(v).map_err(|rule| Violation::new(format!("{path}.{key}"), rule))
        };
        let text = |key: &str, v: String, max: usize| -> Check<String> {
            if v.is_empty() || v.len() > max || v.bytes().any(|b| !(b' '..=b'~').contains(&b)) {
                return Err(Violation::new(
                    format!("{path}.{key}"),
                    format!("must be 1..={max} visible ASCII characters"),
                ));
            }
            Ok(v)
        };
        let issuer = text("issuer", self.issuer, 2048)?;
        if !issuer.starts_with("https://") {
            return Err(Violation::new(
                format!("{path}.issuer"),
                "must be a full URL starting with https://",
            ));
        }
        let scope = text("scope", self.scope.unwrap_or_else(|| "openid".into()), 1024)?;
        let session_cookie_name = self
            .session_cookie_name
            .unwrap_or_else(|| "AWSELBAuthSessionCookie".into());
        if !is_token(&session_cookie_name) || session_cookie_name.len() > 64 {
            return Err(Violation::new(
                format!("{path}.session_cookie_name"),
                "must be 1..=64 characters of a cookie name (letters, digits, !#$%&'*+-.^_`|~)",
            ));
        }
        let timeout = in_range(
            &format!("{path}.session_timeout_seconds"),
            self.session_timeout_seconds.unwrap_or(604_800),
            1,
            604_800,
        )?;
        let on_unauthenticated = match one_of(
            &format!("{path}.on_unauthenticated_request"),
            self.on_unauthenticated_request
                .as_deref()
                .unwrap_or("authenticate"),
            &["authenticate", "deny", "allow"],
        )? {
            "deny" => OnUnauthenticated::Deny,
            "allow" => OnUnauthenticated::Allow,
            _ => OnUnauthenticated::Authenticate,
        };
        let extra_key = format!("{path}.authentication_request_extra_params");
        if self.authentication_request_extra_params.len() > 10 {
            return Err(Violation::new(extra_key, "at most 10 parameters"));
        }
        for name in self.authentication_request_extra_params.keys() {
            if RESERVED.contains(&name.as_str()) || !is_token(name) {
                return Err(Violation::new(
                    format!("{extra_key}.{name}"),
                    "must be a parameter name the alb does not set itself",
                ));
            }
        }
        Ok(AuthenticateOidc {
            issuer,
            authorization_endpoint: url("authorization_endpoint", &self.authorization_endpoint)?,
            token_endpoint: url("token_endpoint", &self.token_endpoint)?,
            user_info_endpoint: url("user_info_endpoint", &self.user_info_endpoint)?,
            client_id: text("client_id", self.client_id, 1024)?,
            client_secret: text("client_secret", self.client_secret, 1024)?,
            scope,
            session_cookie_name,
            session_timeout: Duration::from_secs(timeout as u64),
            on_unauthenticated,
            extra_params: self
                .authentication_request_extra_params
                .into_iter()
                .collect(),
            trusted_ca_file: self.trusted_ca_file.map(|f| cx.resolve(&f)),
        })
    }
}

/// AWS's `AuthenticateCognitoActionConfig`, in snake case, plus the app client's secret: ALB
/// reads it from Cognito, Causeway takes it from the config. A user pool is an OpenID Connect
/// provider, so this validates into an [`AuthenticateOidc`] for the pool's endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuthenticateCognito {
    /// `arn:aws:cognito-idp:<region>:<account>:userpool/<pool id>`.
    pub user_pool_arn: String,
    pub user_pool_client_id: String,
    /// The pool's domain prefix (`<prefix>.auth.<region>.amazoncognito.com`), or its custom
    /// domain (a name with a dot, optionally with a port).
    pub user_pool_domain: String,
    pub client_secret: String,
    pub scope: Option<String>,
    pub session_cookie_name: Option<String>,
    pub session_timeout_seconds: Option<i64>,
    pub on_unauthenticated_request: Option<String>,
    #[serde(default)]
    pub authentication_request_extra_params: BTreeMap<String, String>,
    /// Ours, as for `authenticate_oidc`: CAs trusted for the pool's custom domain besides the
    /// system's.
    pub trusted_ca_file: Option<String>,
}

impl FileAuthenticateCognito {
    /// The user pool's issuer and endpoints, then [`FileAuthenticateOidc::validate`].
    pub fn validate(self, path: &str, cx: &Context) -> Check<AuthenticateOidc> {
        let (region, pool) = parse_pool_arn(&self.user_pool_arn)
            .ok_or_else(|| {
                Violation::new(
                    format!("{path}.user_pool_arn"),
                    "must be a user pool ARN: arn:aws:cognito-idp:<region>:<account>:userpool/<pool id>",
                )
            })?;
        let domain = &self.user_pool_domain;
        let label = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
        let base = if domain.contains('.') {
            if !domain.bytes().all(|b| label(b) || b == b'.' || b == b':') {
                return Err(Violation::new(
                    format!("{path}.user_pool_domain"),
                    "a custom domain must be a host name (with an optional :port)",
                ));
            }
            format!("https://{domain}")
        } else if !domain.is_empty() && domain.len() <= 63 && domain.bytes().all(label) {
            format!("https://{domain}.auth.{region}.amazoncognito.com")
        } else {
            return Err(Violation::new(
                format!("{path}.user_pool_domain"),
                "must be the pool's domain prefix (letters, digits, -) or its custom domain",
            ));
        };
        FileAuthenticateOidc {
            issuer: format!("https://cognito-idp.{region}.amazonaws.com/{pool}"),
            authorization_endpoint: format!("{base}/oauth2/authorize"),
            token_endpoint: format!("{base}/oauth2/token"),
            user_info_endpoint: format!("{base}/oauth2/userInfo"),
            client_id: self.user_pool_client_id,
            client_secret: self.client_secret,
            scope: self.scope,
            session_cookie_name: self.session_cookie_name,
            session_timeout_seconds: self.session_timeout_seconds,
            on_unauthenticated_request: self.on_unauthenticated_request,
            authentication_request_extra_params: self.authentication_request_extra_params,
            trusted_ca_file: self.trusted_ca_file,
        }
        .validate(path, cx)
        .map_err(|v| match v.path.rsplit('.').next() {
            // The pool's client id is the OIDC client id.
            Some("client_id") => Violation::new(format!("{path}.user_pool_client_id"), v.rule),
            _ => v,
        })
    }
}

/// The one authenticate action of a rule (`prefix` empty) or of a listener's default action
/// (`prefix` `default_`): `authenticate_oidc` or `authenticate_cognito`, on an HTTPS listener.
pub fn one_authenticate(
    path: &str,
    prefix: &str,
    oidc: Option<FileAuthenticateOidc>,
    cognito: Option<FileAuthenticateCognito>,
    https: bool,
    cx: &Context,
) -> Check<Option<std::sync::Arc<AuthenticateOidc>>> {
    let key = |kind: &str| format!("{path}.{prefix}authenticate_{kind}");
    let (kind, a) = match (oidc, cognito) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(Violation::new(
                key("cognito"),
                format!("takes one authenticate action: {prefix}authenticate_oidc or this"),
            ))
        }
        (Some(o), None) => ("oidc", o.validate(&key("oidc"), cx)),
        (None, Some(c)) => ("cognito", c.validate(&key("cognito"), cx)),
    };
    if !https {
        return Err(Violation::new(
            key(kind),
            "authenticate actions work on HTTPS listeners only",
        ));
    }
    a.map(|a| Some(std::sync::Arc::new(a)))
}

/// The region and pool id of a Cognito user pool ARN.
fn parse_pool_arn(arn: &str) -> Option<(&str, &str)> {
    let mut parts = arn.splitn(6, ':');
    let (arn_, partition, service, region, account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let pool = resource.strip_prefix("userpool/")?;
    let region_ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let pool_ok = pool.split_once('_').is_some_and(|(r, id)| {
        r == region && !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    let ok = arn_ == "arn"
        && partition.starts_with("aws")
        && service == "cognito-idp"
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit());
    (ok && region_ok && pool_ok).then_some((region, pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cognito_user_pool_becomes_its_oidc_endpoints() {
        let file = |arn: &str, domain: &str| FileAuthenticateCognito {
            user_pool_arn: arn.into(),
            user_pool_client_id: "abc123".into(),
            user_pool_domain: domain.into(),
            client_secret: "s3cret".into(),
            scope: None,
            session_cookie_name: None,
            session_timeout_seconds: None,
            on_unauthenticated_request: None,
            authentication_request_extra_params: BTreeMap::new(),
            trusted_ca_file: None,
        };
        let cx = Context { dir: ".".into() };
        let arn = "arn:aws:cognito-idp:eu-west-1:123456789012:userpool/eu-west-1_AbC12";
        let a = file(arn, "wp-fleet").validate("r", &cx).unwrap();
        assert_eq!(
            a.issuer,
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbC12"
        );
        assert_eq!(
            a.authorization_endpoint.raw,
            "https://wp-fleet.auth.eu-west-1.amazoncognito.com/oauth2/authorize"
        );
        assert_eq!(
            a.token_endpoint.raw,
            "https://wp-fleet.auth.eu-west-1.amazoncognito.com/oauth2/token"
        );
        assert_eq!(
            a.user_info_endpoint.raw,
            "https://wp-fleet.auth.eu-west-1.amazoncognito.com/oauth2/userInfo"
        );
        assert_eq!(
            (a.client_id.as_str(), a.scope.as_str()),
            ("abc123", "openid")
        );
        // A custom domain, with a port.
        let a = file(arn, "login.example.com:8443")
            .validate("r", &cx)
            .unwrap();
        assert_eq!(a.token_endpoint.host, "login.example.com");
        assert_eq!(a.token_endpoint.port, 8443);
        assert_eq!(a.token_endpoint.path_and_query, "/oauth2/token");
        // Bad ARNs and domains name their key.
        for bad in [
            "arn:aws:cognito-idp:eu-west-1:123456789012:userpool/us-east-1_AbC12",
            "arn:aws:cognito-idp:eu-west-1:1234:userpool/eu-west-1_AbC12",
            "arn:aws:iam::123456789012:role/x",
            "eu-west-1_AbC12",
        ] {
            let e = file(bad, "wp-fleet").validate("r", &cx).unwrap_err();
            assert_eq!(e.path, "r.user_pool_arn", "{bad}");
        }
        for bad in ["", "wp_fleet", "bad domain.com", "https://x.example.com"] {
            let e = file(arn, bad).validate("r", &cx).unwrap_err();
            assert_eq!(e.path, "r.user_pool_domain", "{bad:?}");
        }
        let mut f = file(arn, "wp-fleet");
        f.user_pool_client_id = String::new();
        assert_eq!(
            f.validate("r", &cx).unwrap_err().path,
            "r.user_pool_client_id"
        );
    }

    #[test]
    fn https_urls_are_split_for_the_client() {
        let u = HttpsUrl::parse("https://Idp.Example.com/oauth2/token").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path_and_query.as_str()),
            ("idp.example.com", 443, "/oauth2/token")
        );
        let u = HttpsUrl::parse("https://127.0.0.1:8443?x=1").unwrap();
        assert_eq!((u.port, u.path_and_query.as_str()), (8443, "/?x=1"));
        let u = HttpsUrl::parse("https://[::1]:9000/u").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9000));
        for bad in [
            "http://idp/x",
            "https:///x",
            "https://a@idp/x",
            "https://idp:0/x",
            "https://idp/x#f",
            "https://idp/a b",
        ] {
            assert!(HttpsUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
