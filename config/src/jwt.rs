//! ALB's `jwt-validation` action: a bearer JWT in a request's `Authorization` field, checked
//! against an issuer and the keys its JWKS endpoint publishes, before the rule's action runs.

use crate::error::{one_of, Check, Violation};
use crate::oidc::HttpsUrl;
use crate::Context;
use serde::Deserialize;
use std::path::PathBuf;

/// AWS's `JwtValidationActionConfig`, in snake case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwtValidation {
    pub issuer: String,
    pub jwks_endpoint: String,
    #[serde(default)]
    pub additional_claims: Vec<FileClaim>,
    /// Ours: a PEM file of CA certificates trusted for the JWKS endpoint besides the system's.
    pub trusted_ca_file: Option<String>,
}

/// AWS's `JwtValidationActionAdditionalClaim`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClaim {
    pub name: String,
    pub format: String,
    pub values: Vec<String>,
}

/// How a claim's value is written in the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimFormat {
    /// A string, which must be one of the values.
    SingleString,
    /// An array of strings, which must hold every value.
    StringArray,
    /// A string of space-separated values (as OAuth's `scope`), which must hold every value.
    SpaceSeparated,
}

/// A claim the token must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub name: String,
    pub format: ClaimFormat,
    pub values: Vec<String>,
}

/// A validated `jwt-validation` action.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtValidation {
    pub issuer: String,
    pub jwks_endpoint: HttpsUrl,
    pub claims: Vec<Claim>,
    pub trusted_ca_file: Option<PathBuf>,
}

/// The claims checked always, which `additional_claims` may not name.
const BUILT_IN: &[&str] = &["exp", "iss", "nbf", "iat"];

impl FileJwtValidation {
    pub fn validate(self, path: &str, cx: &Context) -> Check<JwtValidation> {
        if self.issuer.is_empty()
            || self.issuer.len() > 256
            || self.issuer.bytes().any(|b| !(b'!'..=b'~').contains(&b))
        {
            return Err(Violation::new(
                format!("{path}.issuer"),
                "must be 1..=256 visible ASCII characters",
            ));
        }
        if self.jwks_endpoint.len() > 256 {
            return Err(Violation::new(
                format!("{path}.jwks_endpoint"),
                "must be at most 256 characters",
            ));
        }
        let jwks_endpoint = HttpsUrl::parse(&self.jwks_endpoint)
            .map_err(|rule| Violation::new(format!("{path}.jwks_endpoint"), rule))?;
        if self.additional_claims.len() > 10 {
            return Err(Violation::new(
                format!("{path}.additional_claims"),
                "at most 10 claims",
            ));
        }
        let mut claims = Vec::new();
        for (i, c) in self.additional_claims.into_iter().enumerate() {
            let cp = format!("{path}.additional_claims[{i}]");
            if c.name.is_empty() || BUILT_IN.contains(&c.name.as_str()) || c.name.len() > 256 {
                return Err(Violation::new(
                    format!("{cp}.name"),
                    "must name a claim other than exp, iss, nbf and iat (checked always)",
                ));
            }
            let format = match one_of(
                &format!("{cp}.format"),
                &c.format,
                &["single-string", "string-array", "space-separated-values"],
            )? {
                "single-string" => ClaimFormat::SingleString,
                "string-array" => ClaimFormat::StringArray,
                _ => ClaimFormat::SpaceSeparated,
            };
            if c.values.is_empty() || c.values.len() > 10 {
                return Err(Violation::new(format!("{cp}.values"), "1..=10 values"));
            }
            for v in &c.values {
                let spaced = format == ClaimFormat::SpaceSeparated && v.contains(' ');
                if v.is_empty() || v.len() > 256 || spaced {
                    return Err(Violation::new(
                        format!("{cp}.values"),
                        "each value 1..=256 characters, without spaces for space-separated-values",
                    ));
                }
            }
            claims.push(Claim {
                name: c.name,
                format,
                values: c.values,
            });
        }
        Ok(JwtValidation {
            issuer: self.issuer,
            jwks_endpoint,
            claims,
            trusted_ca_file: self.trusted_ca_file.map(|f| cx.resolve(&f)),
        })
    }
}

/// A rule's (`prefix` empty) or a default action's (`prefix` `default_`) `jwt_validation`, on
/// an HTTPS listener.
pub fn validate_action(
    path: &str,
    prefix: &str,
    file: Option<FileJwtValidation>,
    https: bool,
    cx: &Context,
) -> Check<Option<std::sync::Arc<JwtValidation>>> {
    let Some(file) = file else {
        return Ok(None);
    };
    let key = format!("{path}.{prefix}jwt_validation");
    let v = file.validate(&key, cx)?;
    if !https {
        return Err(Violation::new(
            key,
            "jwt_validation works on HTTPS listeners only",
        ));
    }
    Ok(Some(std::sync::Arc::new(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_checked_against_aws_limits() {
        let cx = Context { dir: ".".into() };
        let file = |claims: Vec<FileClaim>| FileJwtValidation {
            issuer: "https://idp.example.com".into(),
            jwks_endpoint: "https://idp.example.com/.well-known/jwks.json".into(),
            additional_claims: claims,
            trusted_ca_file: None,
        };
        let claim = |name: &str, format: &str, values: &[&str]| FileClaim {
            name: name.into(),
            format: format.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let v = file(vec![claim("scope", "space-separated-values", &["read"])])
            .validate("r", &cx)
            .unwrap();
        assert_eq!(v.jwks_endpoint.path_and_query, "/.well-known/jwks.json");
        assert_eq!(v.claims[0].format, ClaimFormat::SpaceSeparated);
        for (bad, key) in [
            (
                claim("exp", "single-string", &["1"]),
                "r.additional_claims[0].name",
            ),
            (
                claim("aud", "number", &["1"]),
                "r.additional_claims[0].format",
            ),
            (
                claim("aud", "single-string", &[]),
                "r.additional_claims[0].values",
            ),
            (
                claim("scope", "space-separated-values", &["a b"]),
                "r.additional_claims[0].values",
            ),
        ] {
            assert_eq!(file(vec![bad]).validate("r", &cx).unwrap_err().path, key);
        }
        let mut f = file(Vec::new());
        f.jwks_endpoint = "http://idp.example.com/jwks".into();
        assert_eq!(f.validate("r", &cx).unwrap_err().path, "r.jwks_endpoint");
    }
}
