//! Validated object keys.

use std::fmt;

use crate::StoreError;

/// A validated, relative object key: non-empty `/`-separated segments, none of them `.` or `..`,
/// no leading or trailing `/`, made of printable ASCII other than space, `\`, `#`, `%` and `?`
/// (those four are excluded because the local-filesystem backend and URL encoding treat them
/// specially).
///
/// Keys order by their string, byte-wise, which is also the order `list` returns.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

fn segment_error(segment: &str) -> Option<&'static str> {
    if segment.is_empty() {
        return Some("empty segment (leading, trailing or doubled `/`)");
    }
    if segment == "." || segment == ".." {
        return Some("`.` and `..` segments are not allowed");
    }
    if segment.contains('/') {
        return Some("`/` inside a segment");
    }
    if segment.chars().any(|c| !is_key_char(c)) {
        return Some("only printable ASCII other than space, `\\`, `#`, `%` and `?` is allowed");
    }
    None
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '\\' | '#' | '%' | '?')
}

impl Key {
    /// Parse and validate a key such as `cache/0000000000000001.seg`.
    pub fn parse(s: &str) -> Result<Key, StoreError> {
        if s.is_empty() {
            return Err(invalid(s, "a key must not be empty"));
        }
        for segment in s.split('/') {
            if let Some(reason) = segment_error(segment) {
                return Err(invalid(s, reason));
            }
        }
        Ok(Key(s.to_owned()))
    }

    /// Build a key from segments, each validated like a single segment.
    pub fn from_segments<I, S>(segments: I) -> Result<Key, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = String::new();
        for segment in segments {
            let segment = segment.as_ref();
            if let Some(reason) = segment_error(segment) {
                return Err(invalid(segment, reason));
            }
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(segment);
        }
        if out.is_empty() {
            return Err(invalid("", "a key needs at least one segment"));
        }
        Ok(Key(out))
    }

    /// This key with one more segment appended.
    ///
    /// # Panics
    /// When `segment` is not a valid single segment (empty, `.`/`..`, contains `/` or a forbidden
    /// character). Segments come from code (hex ids, fixed names), never from users; use
    /// [`Key::from_segments`] or [`Key::parse`] for untrusted input.
    pub fn join(&self, segment: &str) -> Key {
        if let Some(reason) = segment_error(segment) {
            panic!("invalid key segment {segment:?}: {reason}");
        }
        Key(format!("{}/{}", self.0, segment))
    }

    /// `self` followed by every segment of `rest`.
    pub fn concat(&self, rest: &Key) -> Key {
        Key(format!("{}/{}", self.0, rest.0))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// What follows `prefix/` when this key lies under the whole-segment prefix `prefix`
    /// (`a/b/c` under `a` gives `b/c`; `a/bc` is not under `a/b`; a key is not under itself).
    pub fn strip_prefix(&self, prefix: &Key) -> Option<&str> {
        self.0
            .strip_prefix(prefix.0.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
    }

    /// Whether this key equals `prefix` or lies under it.
    pub fn starts_with(&self, prefix: &Key) -> bool {
        self == prefix || self.strip_prefix(prefix).is_some()
    }
}

fn invalid(key: &str, reason: &str) -> StoreError {
    StoreError::InvalidKey {
        key: key.escape_debug().to_string(),
        reason: reason.to_owned(),
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_keys() {
        for k in ["a", "a/b", "cache/00000000000000ff.seg", "x-y_z.1/~=+,@:!"] {
            assert_eq!(Key::parse(k).unwrap().as_str(), k);
        }
    }

    #[test]
    fn rejects_invalid_keys() {
        for k in [
            "", "/a", "a/", "a//b", ".", "a/../b", "a/./b", "a b", "a\\b", "a#1", "é", "a\n", "a%b",
        ] {
            assert!(
                matches!(Key::parse(k), Err(StoreError::InvalidKey { .. })),
                "{k:?}"
            );
        }
    }

    #[test]
    fn join_segments_prefix() {
        let k = Key::parse("a/b").unwrap().join("c.seg");
        assert_eq!(k.as_str(), "a/b/c.seg");
        assert_eq!(k.file_name(), "c.seg");
        assert_eq!(k.strip_prefix(&Key::parse("a").unwrap()), Some("b/c.seg"));
        assert_eq!(k.strip_prefix(&Key::parse("a/b/c.seg").unwrap()), None);
        assert_eq!(
            Key::parse("a/bc")
                .unwrap()
                .strip_prefix(&Key::parse("a/b").unwrap()),
            None
        );
        assert_eq!(Key::from_segments(["a", "b", "c.seg"]).unwrap(), k);
        assert!(Key::from_segments(["a/b"]).is_err());
        assert!(Key::from_segments(Vec::<String>::new()).is_err());
    }

    #[test]
    #[should_panic(expected = "invalid key segment")]
    fn join_panics_on_bad_segment() {
        let _ = Key::parse("a").unwrap().join("..");
    }

    #[test]
    fn order_is_string_order() {
        let mut keys: Vec<Key> = [
            "b",
            "a/b",
            "a",
            "a-b",
            "0000000000000010",
            "000000000000000f",
        ]
        .iter()
        .map(|s| Key::parse(s).unwrap())
        .collect();
        keys.sort();
        let mut strings: Vec<&str> = keys.iter().map(Key::as_str).collect();
        let sorted = strings.clone();
        strings.sort();
        assert_eq!(strings, sorted);
    }
}
