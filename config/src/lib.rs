//! Causeway's config: a raw serde layer (`File*`, `deny_unknown_fields`), then validated types.
//!
//! Every error names the file, line, column, key path and the rule broken, for example
//! `alb.toml:14:3: target_groups.wordpress.health_check.interval_seconds: must be 1..=300, got 0`.

pub mod alb;
pub mod cidr;
pub mod common;
pub mod control;
pub mod edge;
pub mod error;
pub mod jwt;
pub mod listener_headers;
pub mod nlb;
pub mod oidc;
pub mod source;
pub mod targets;
pub mod tls;

pub use error::{ConfigError, Place, Violation};

use serde::de::DeserializeOwned;
use source::SourceIndex;
use std::path::{Path, PathBuf};

/// Why validation failed: a rule in this file, or an error in a file this one refers to.
#[derive(Debug)]
pub enum Invalid {
    Here(Violation),
    Elsewhere(ConfigError),
}

impl From<Violation> for Invalid {
    fn from(v: Violation) -> Self {
        Invalid::Here(v)
    }
}

impl From<ConfigError> for Invalid {
    fn from(e: ConfigError) -> Self {
        Invalid::Elsewhere(e)
    }
}

/// What a config file needs to know while it validates.
#[derive(Debug, Clone)]
pub struct Context {
    /// The folder of the file, against which relative paths inside it resolve.
    pub dir: PathBuf,
}

impl Context {
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }
}

/// A raw file type that validates into its checked form.
pub trait ConfigFile: DeserializeOwned {
    type Valid;
    fn validate(self, cx: &Context) -> Result<Self::Valid, Invalid>;
}

/// The largest config or targets file read: a path such as `/dev/zero` or a runaway generator
/// gets an error, not all of memory.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads a config or targets file as UTF-8 text, at most `MAX_FILE_BYTES`.
pub fn read_text(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let io = |source| ConfigError::Io {
        file: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} MiB", MAX_FILE_BYTES >> 20),
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8: {e}"),
        ))
    })
}

/// Reads, parses and validates the file at `path`.
pub fn load<F: ConfigFile>(path: &Path) -> Result<F::Valid, ConfigError> {
    let text = read_text(path)?;
    let dir = path
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    parse::<F>(&path.display().to_string(), &text, &Context { dir })
}

/// Parses and validates `text`, reporting errors against the file name `file`.
pub fn parse<F: ConfigFile>(file: &str, text: &str, cx: &Context) -> Result<F::Valid, ConfigError> {
    let raw: F = deserialize(file, text)?;
    raw.validate(cx).map_err(|e| match e {
        Invalid::Here(v) => place_violation(file, text, v),
        Invalid::Elsewhere(e) => e,
    })
}

/// The serde step alone, with serde's errors placed in the file.
pub fn deserialize<F: DeserializeOwned>(file: &str, text: &str) -> Result<F, ConfigError> {
    toml::from_str::<F>(text).map_err(|e| {
        let index = SourceIndex::new(text);
        let offset = e.span().map_or(0, |s| s.start);
        let (line, column) = index.line_col(offset);
        let place = Place {
            file: file.to_owned(),
            line,
            column,
        };
        let message = e.message().trim().to_owned();
        if toml::de::DeTable::parse(text).is_err() {
            return ConfigError::Syntax { place, message };
        }
        let key = unknown_field(&message)
            .and_then(|field| {
                index.path_at(offset).map(|p| {
                    if p.ends_with(field) {
                        p.to_owned()
                    } else {
                        format!("{p}.{field}")
                    }
                })
            })
            .or_else(|| index.path_at(offset).map(str::to_owned))
            .unwrap_or_else(|| "(top level)".to_owned());
        ConfigError::Invalid {
            place,
            key,
            rule: message,
        }
    })
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Places a violation at its key in `text`.
pub fn place_violation(file: &str, text: &str, v: Violation) -> ConfigError {
    let index = SourceIndex::new(text);
    let (line, column) = index.line_col(index.locate(&v.path));
    ConfigError::Invalid {
        place: Place {
            file: file.to_owned(),
            line,
            column,
        },
        key: v.path,
        rule: v.rule,
    }
}

/// Which binary a file is for; used by `--check` in tools that check any file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Alb,
    Nlb,
    Edge,
    Control,
}

/// Validates `path` as a file of `kind`, returning nothing but the verdict.
pub fn check(kind: Kind, path: &Path) -> Result<(), ConfigError> {
    match kind {
        Kind::Alb => load::<alb::FileAlb>(path).map(drop),
        Kind::Nlb => load::<nlb::FileNlb>(path).map(drop),
        Kind::Edge => load::<edge::FileEdge>(path).map(drop),
        Kind::Control => load::<control::FileControl>(path).map(drop),
    }
}
