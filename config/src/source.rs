//! Maps byte offsets in a TOML file to line/column and key paths, and key paths back to places.

use std::ops::Range;
use toml::de::{DeTable, DeValue};

/// One key in the document: its dotted path, where the key is, and where its value is.
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    key: Range<usize>,
    value: Range<usize>,
}

/// A parsed index of every key in a TOML document, for error reporting only.
#[derive(Debug, Default)]
pub struct SourceIndex {
    text: String,
    entries: Vec<Entry>,
}

impl SourceIndex {
    /// Indexes `text`. A document that does not parse yields an empty index; the serde layer
    /// reports the syntax error itself.
    pub fn new(text: &str) -> Self {
        let mut entries = Vec::new();
        if let Ok(doc) = DeTable::parse(text) {
            walk_table(doc.get_ref(), "", &mut entries);
        }
        SourceIndex {
            text: text.to_owned(),
            entries,
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    /// Where the key `path` is written. Falls back to the nearest parent that is written
    /// (so a missing required key points at its table), then to the top of the file.
    pub fn locate(&self, path: &str) -> usize {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.iter().find(|e| e.path == p) {
                return e.key.start;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return 0,
            }
        }
    }

    /// The deepest key path whose key or value contains `offset`.
    pub fn path_at(&self, offset: usize) -> Option<&str> {
        self.entries
            .iter()
            .filter(|e| e.key.contains(&offset) || e.value.contains(&offset))
            .max_by_key(|e| e.path.len())
            .map(|e| e.path.as_str())
    }
}

fn join(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if plain {
        key.to_owned()
    } else {
        format!("\"{key}\"")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk_table(table: &DeTable<'_>, prefix: &str, out: &mut Vec<Entry>) {
    for (k, v) in table.iter() {
        let path = join(prefix, k.get_ref());
        out.push(Entry {
            path: path.clone(),
            key: k.span(),
            value: v.span(),
        });
        walk_value(v.get_ref(), &path, k.span(), out);
    }
}

fn walk_value(value: &DeValue<'_>, path: &str, key: Range<usize>, out: &mut Vec<Entry>) {
    match value {
        DeValue::Table(t) => walk_table(t, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                // An element of an array of tables has no key of its own: point at its body.
                let span = item.span();
                let key_span = if matches!(item.get_ref(), DeValue::Table(_)) {
                    span.clone()
                } else {
                    key.clone()
                };
                out.push(Entry {
                    path: p.clone(),
                    key: key_span.clone(),
                    value: span,
                });
                walk_value(item.get_ref(), &p, key_span, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "a = 1\n[t]\n  b = 2\n[[l]]\nc = 3\n[[l]]\nc = 4\n";

    #[test]
    fn locates_nested_keys_and_array_elements() {
        let idx = SourceIndex::new(DOC);
        assert_eq!(idx.line_col(idx.locate("t.b")), (3, 3));
        assert_eq!(idx.line_col(idx.locate("l[1].c")), (7, 1));
        // A missing key falls back to its parent.
        assert_eq!(idx.line_col(idx.locate("t.missing")), (2, 2));
    }

    #[test]
    fn finds_path_at_offset() {
        let idx = SourceIndex::new(DOC);
        let off = DOC.find("c = 4").unwrap();
        assert_eq!(idx.path_at(off), Some("l[1].c"));
    }
}
