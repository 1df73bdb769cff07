//! ALB's header modification listener attributes: response fields the alb sets on every
//! response (`routing.http.response.<name>.header_value`), its own `Server` field
//! (`routing.http.response.server.enabled`), and new names for the TLS and mutual TLS fields it
//! adds to requests (`routing.http.request.<name>.header_name`).

use crate::error::Check;
use crate::Violation;
use serde::Deserialize;
use std::collections::BTreeMap;

/// AWS's attribute names for the response fields it can add, and the fields they set.
pub const RESPONSE_FIELDS: [(&str, &str); 10] = [
    ("strict_transport_security", "Strict-Transport-Security"),
    ("access_control_allow_origin", "Access-Control-Allow-Origin"),
    (
        "access_control_allow_methods",
        "Access-Control-Allow-Methods",
    ),
    (
        "access_control_allow_headers",
        "Access-Control-Allow-Headers",
    ),
    (
        "access_control_allow_credentials",
        "Access-Control-Allow-Credentials",
    ),
    (
        "access_control_expose_headers",
        "Access-Control-Expose-Headers",
    ),
    ("access_control_max_age", "Access-Control-Max-Age"),
    ("content_security_policy", "Content-Security-Policy"),
    ("x_content_type_options", "X-Content-Type-Options"),
    ("x_frame_options", "X-Frame-Options"),
];

/// AWS's attribute names for the request fields it can rename, and their usual names.
pub const REQUEST_FIELDS: [(&str, &str); 8] = [
    (
        "x_amzn_mtls_clientcert_serial_number",
        "X-Amzn-Mtls-Clientcert-Serial-Number",
    ),
    (
        "x_amzn_mtls_clientcert_issuer",
        "X-Amzn-Mtls-Clientcert-Issuer",
    ),
    (
        "x_amzn_mtls_clientcert_subject",
        "X-Amzn-Mtls-Clientcert-Subject",
    ),
    (
        "x_amzn_mtls_clientcert_validity",
        "X-Amzn-Mtls-Clientcert-Validity",
    ),
    ("x_amzn_mtls_clientcert_leaf", "X-Amzn-Mtls-Clientcert-Leaf"),
    ("x_amzn_mtls_clientcert", "X-Amzn-Mtls-Clientcert"),
    ("x_amzn_tls_version", "X-Amzn-Tls-Version"),
    ("x_amzn_tls_cipher_suite", "X-Amzn-Tls-Cipher-Suite"),
];

/// A listener's `routing` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListenerRouting {
    pub http: Option<FileListenerHttp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListenerHttp {
    pub request: Option<BTreeMap<String, FileRequestField>>,
    pub response: Option<BTreeMap<String, FileResponseField>>,
}

/// `routing.http.request.<name>.header_name`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRequestField {
    pub header_name: Option<String>,
}

/// New names for the TLS and mutual TLS fields a listener adds to requests: (usual name, new
/// name), for those renamed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestRenames(pub Vec<(&'static str, String)>);

impl RequestRenames {
    /// The name a field of this usual name goes to targets under.
    pub fn name<'a>(&'a self, usual: &'a str) -> &'a str {
        self.0
            .iter()
            .find(|(u, _)| *u == usual)
            .map_or(usual, |(_, n)| n.as_str())
    }

    /// Whether a client's request field of this name is dropped because it carries the new
    /// name of a field the alb sets: a TLS field when `tls` (the attribute that adds them is
    /// on), a mutual TLS one when `mtls` (the listener does mutual TLS).
    pub fn drops(&self, name: &[u8], tls: bool, mtls: bool) -> bool {
        self.0.iter().any(|(usual, new)| {
            new.as_bytes().eq_ignore_ascii_case(name)
                && if usual.starts_with("X-Amzn-Tls-") {
                    tls
                } else {
                    mtls
                }
        })
    }
}

/// `routing.http.response.<name>`: `header_value` for the fields, `enabled` for `server`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileResponseField {
    pub header_value: Option<String>,
    pub enabled: Option<bool>,
}

/// What a listener does to the responses its clients get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHeaders {
    /// Fields set on every response, replacing a target's own: (name as sent, value).
    pub set: Vec<(&'static str, String)>,
    /// Whether the responses the alb makes itself carry its `Server` field.
    pub server: bool,
}

impl Default for ResponseHeaders {
    fn default() -> Self {
        ResponseHeaders {
            set: Vec::new(),
            server: true,
        }
    }
}

impl ResponseHeaders {
    /// Whether `name` is one of the fields this listener sets (so a target's copy is dropped).
    pub fn replaces(&self, name: &[u8]) -> bool {
        self.set
            .iter()
            .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
    }
}

/// AWS's limit on an attribute's value.
const MAX_VALUE: usize = 1024;

impl FileListenerRouting {
    /// Validates the `routing` table of the listener at `path` (`https`: whether it is an
    /// HTTPS listener, the only kind whose TLS fields can be renamed).
    pub fn validate(self, path: &str, https: bool) -> Check<(ResponseHeaders, RequestRenames)> {
        let http = self.http.unwrap_or_default();
        let renames = renames(path, http.request.unwrap_or_default(), https)?;
        let mut out = ResponseHeaders::default();
        let fields = http.response.unwrap_or_default();
        for (key, field) in fields {
            let p = format!("{path}.routing.http.response.{key}");
            if key == "server" {
                if field.header_value.is_some() {
                    return Err(Violation::new(
                        format!("{p}.header_value"),
                        "server takes enabled = true or false",
                    ));
                }
                out.server = field.enabled.unwrap_or(true);
                continue;
            }
            let Some(&(_, name)) = RESPONSE_FIELDS.iter().find(|(k, _)| *k == key) else {
                let known: Vec<&str> = RESPONSE_FIELDS.iter().map(|(k, _)| *k).collect();
                return Err(Violation::new(
                    p,
                    format!("must be one of server, {}", known.join(", ")),
                ));
            };
            if field.enabled.is_some() {
                return Err(Violation::new(
                    format!("{p}.enabled"),
                    "only server takes enabled; this one takes header_value",
                ));
            }
            let value = field.header_value.unwrap_or_default();
            // As on AWS, an empty value leaves the field as the target sent it.
            if value.is_empty() {
                continue;
            }
            check_value(&format!("{p}.header_value"), &value)?;
            out.set.push((name, value));
        }
        Ok((out, renames))
    }
}

/// Validates `routing.http.request`: each new name a token of at most 40 characters, used
/// once, and not the usual name of another of these fields.
fn renames(
    path: &str,
    fields: BTreeMap<String, FileRequestField>,
    https: bool,
) -> Check<RequestRenames> {
    let mut out = RequestRenames::default();
    for (key, field) in fields {
        let p = format!("{path}.routing.http.request.{key}");
        let Some(&(_, usual)) = REQUEST_FIELDS.iter().find(|(k, _)| *k == key) else {
            let known: Vec<&str> = REQUEST_FIELDS.iter().map(|(k, _)| *k).collect();
            return Err(Violation::new(
                p,
                format!("must be one of {}", known.join(", ")),
            ));
        };
        let name = field.header_name.unwrap_or_default();
        // As on AWS, an empty value keeps the usual name.
        if name.is_empty() {
            continue;
        }
        let np = format!("{p}.header_name");
        if !https {
            return Err(Violation::new(
                np,
                "only an HTTPS listener adds TLS fields to rename",
            ));
        }
        crate::alb::check_field_name(&np, &name)?;
        let clash = REQUEST_FIELDS
            .iter()
            .any(|(_, u)| *u != usual && u.eq_ignore_ascii_case(&name))
            || out.0.iter().any(|(_, n)| n.eq_ignore_ascii_case(&name));
        if clash {
            return Err(Violation::new(
                np,
                format!("\"{name}\" is already the name of another TLS field"),
            ));
        }
        out.0.push((usual, name));
    }
    Ok(out)
}

/// AWS's rule for a value: at most 1 KiB of letters, digits, spaces and
/// `_:;.,\/"'?!(){}[]@<>=-+*#&|~^%` (so never a control byte that could end a field).
fn check_value(path: &str, value: &str) -> Check<()> {
    if value.len() > MAX_VALUE {
        return Err(Violation::new(
            path,
            format!("at most {MAX_VALUE} bytes, got {}", value.len()),
        ));
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || b" _:;.,\\/\"'?!(){}[]@<>=-+*#&|~^%`".contains(&b);
    if let Some(bad) = value.bytes().find(|&b| !allowed(b)) {
        return Err(Violation::new(
            path,
            format!("may not contain the byte 0x{bad:02x}; letters, digits, spaces and _:;.,\\/\"'?!(){{}}[]@<>=-+*#&|~^%` only"),
        ));
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        return Err(Violation::new(path, "may not start or end with a space"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Check<ResponseHeaders> {
        let routing: FileListenerRouting = toml::from_str(text).unwrap();
        routing.validate("listeners[0]", true).map(|(r, _)| r)
    }

    fn renamed(text: &str, https: bool) -> Result<RequestRenames, String> {
        let routing: FileListenerRouting = toml::from_str(text).unwrap();
        routing
            .validate("listeners[0]", https)
            .map(|(_, r)| r)
            .map_err(|e| format!("{}: {}", e.path, e.rule))
    }

    #[test]
    fn tls_fields_are_renamed_and_renamed_copies_dropped() {
        let r = renamed(
            "http.request.x_amzn_mtls_clientcert_subject.header_name = \"X-Client-Subject\"\n\
             http.request.x_amzn_tls_version.header_name = \"X-Tls\"\n\
             http.request.x_amzn_mtls_clientcert_leaf.header_name = \"\"\n",
            true,
        )
        .unwrap();
        assert_eq!(r.name("X-Amzn-Mtls-Clientcert-Subject"), "X-Client-Subject");
        assert_eq!(r.name("X-Amzn-Tls-Version"), "X-Tls");
        assert_eq!(
            r.name("X-Amzn-Mtls-Clientcert-Leaf"),
            "X-Amzn-Mtls-Clientcert-Leaf"
        );
        assert!(r.drops(b"x-client-subject", false, true));
        assert!(
            !r.drops(b"x-client-subject", true, false),
            "no mutual TLS here"
        );
        assert!(r.drops(b"X-TLS", true, false));
        assert!(!r.drops(b"x-tls", false, true), "the TLS fields are off");
        assert!(!r.drops(b"x-other", true, true));
        for (text, https, want) in [
            (
                "http.request.x_amzn_tls_version.header_name = \"X-Tls\"",
                false,
                "listeners[0].routing.http.request.x_amzn_tls_version.header_name: only an HTTPS listener",
            ),
            (
                "http.request.x_amzn_tls_version.header_name = \"X Tls\"",
                true,
                "listeners[0].routing.http.request.x_amzn_tls_version.header_name: must be a header name",
            ),
            (
                "http.request.x_amzn_tls_version.header_name = \"X-Amzn-Tls-Cipher-Suite\"",
                true,
                "listeners[0].routing.http.request.x_amzn_tls_version.header_name: \"X-Amzn-Tls-Cipher-Suite\" is already",
            ),
            (
                "http.request.x_amzn_tls_version.header_name = \"X-A\"\nhttp.request.x_amzn_tls_cipher_suite.header_name = \"x-a\"",
                true,
                "listeners[0].routing.http.request.x_amzn_tls_version.header_name: \"X-A\" is already",
            ),
            (
                "http.request.x_amzn_trace_id.header_name = \"X-Trace\"",
                true,
                "listeners[0].routing.http.request.x_amzn_trace_id: must be one of",
            ),
        ] {
            let err = renamed(text, https).unwrap_err();
            assert!(err.starts_with(want), "{text}: {err}");
        }
    }

    #[test]
    fn fields_are_set_server_turned_off_and_empty_values_ignored() {
        let h = table(
            "http.response.strict_transport_security.header_value = \"max-age=31536000; includeSubDomains\"\n\
             http.response.x_frame_options.header_value = \"DENY\"\n\
             http.response.content_security_policy.header_value = \"\"\n\
             http.response.server.enabled = false\n",
        )
        .unwrap();
        assert!(!h.server);
        assert_eq!(
            h.set,
            vec![
                (
                    "Strict-Transport-Security",
                    "max-age=31536000; includeSubDomains".to_owned()
                ),
                ("X-Frame-Options", "DENY".to_owned()),
            ]
        );
        assert!(h.replaces(b"x-frame-options") && !h.replaces(b"content-security-policy"));
        assert_eq!(table("").unwrap(), ResponseHeaders::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        for (text, want) in [
            (
                "http.response.x_powered_by.header_value = \"PHP\"",
                "listeners[0].routing.http.response.x_powered_by: must be one of server, strict_transport_security",
            ),
            (
                "http.response.x_frame_options.header_value = \"DENY\\r\\nSet-Cookie: a=b\"",
                "listeners[0].routing.http.response.x_frame_options.header_value: may not contain the byte 0x0d",
            ),
            (
                "http.response.server.header_value = \"nginx\"",
                "listeners[0].routing.http.response.server.header_value: server takes enabled",
            ),
            (
                "http.response.x_frame_options.enabled = true",
                "listeners[0].routing.http.response.x_frame_options.enabled: only server takes enabled",
            ),
            (
                "http.response.x_frame_options.header_value = \" DENY\"",
                "listeners[0].routing.http.response.x_frame_options.header_value: may not start or end",
            ),
        ] {
            let err = table(text).map(|_| ()).unwrap_err();
            let err = format!("{}: {}", err.path, err.rule);
            assert!(err.starts_with(want), "{text}: {err}");
        }
        let long = format!(
            "http.response.content_security_policy.header_value = \"{}\"",
            "a".repeat(1025)
        );
        let err = table(&long).map(|_| ()).unwrap_err();
        assert!(err.rule.contains("at most 1024 bytes, got 1025"), "{err:?}");
    }
}
