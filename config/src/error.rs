//! The one error type of config loading: it names the file, line, column, key path and rule.

use std::fmt;

/// A rule broken at a key path, before it is placed in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Dotted key path, e.g. `target_groups.wordpress.health_check.interval_seconds`.
    pub path: String,
    /// The rule that was broken, e.g. `must be 1..=300, got 0`.
    pub rule: String,
}

impl Violation {
    pub fn new(path: impl Into<String>, rule: impl Into<String>) -> Self {
        Violation {
            path: path.into(),
            rule: rule.into(),
        }
    }
}

/// Where a violation sits in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{place}: syntax: {message}")]
    Syntax { place: Place, message: String },
    /// A key is unknown, has the wrong type, or breaks a rule.
    #[error("{place}: {key}: {rule}")]
    Invalid {
        place: Place,
        key: String,
        rule: String,
    },
}

impl ConfigError {
    /// The key path the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The place in the file, if known.
    pub fn place(&self) -> Option<&Place> {
        match self {
            ConfigError::Syntax { place, .. } | ConfigError::Invalid { place, .. } => Some(place),
            ConfigError::Io { .. } => None,
        }
    }
}

/// Shorthand for validation code.
pub type Check<T> = Result<T, Violation>;

/// Fails unless `value` lies in `lo..=hi`.
pub fn in_range<T: PartialOrd + fmt::Display>(path: &str, value: T, lo: T, hi: T) -> Check<T> {
    if value < lo || value > hi {
        return Err(Violation::new(
            path,
            format!("must be {lo}..={hi}, got {value}"),
        ));
    }
    Ok(value)
}

/// Fails unless `value` is one of `allowed`.
pub fn one_of<'a>(path: &str, value: &'a str, allowed: &[&str]) -> Check<&'a str> {
    if allowed.contains(&value) {
        Ok(value)
    } else {
        Err(Violation::new(
            path,
            format!("must be one of {}, got \"{value}\"", allowed.join(", ")),
        ))
    }
}

/// Parses a socket address such as `127.0.0.1:8080` or `[::1]:80`.
pub fn socket_addr(path: &str, value: &str) -> Check<std::net::SocketAddr> {
    value.parse().map_err(|_| {
        Violation::new(
            path,
            format!("must be an IP address and port such as 127.0.0.1:8080, got \"{value}\""),
        )
    })
}
