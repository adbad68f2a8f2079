//! Key validation (DESIGN.md §2), shared by the server and every client so a
//! bad key is refused the same way everywhere.

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Longest segment of a key, in bytes.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty; every key has at least one segment.
    #[error("key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("key is {0} bytes long; the limit is {MAX_KEY_BYTES}")]
    TooLong(usize),
    /// A segment is longer than [`MAX_SEGMENT_BYTES`].
    #[error("segment {0:?} is longer than {MAX_SEGMENT_BYTES} bytes")]
    SegmentTooLong(String),
    /// Two slashes in a row, or a leading or trailing slash.
    #[error("key {0:?} has an empty segment (leading, trailing or doubled '/')")]
    EmptySegment(String),
    /// A segment is `.` or `..`.
    #[error("key {0:?} has a '.' or '..' segment")]
    DotSegment(String),
    /// The key holds a NUL byte.
    #[error("key contains a NUL byte")]
    Nul,
}

impl KeyError {
    /// True when the refusal is about length (`ENAMETOOLONG` in a mount).
    pub fn is_too_long(&self) -> bool {
        matches!(self, KeyError::TooLong(_) | KeyError::SegmentTooLong(_))
    }
}

/// Checks that `key` is a valid key: `seg/seg/seg`, segments non-empty, not
/// `.` or `..`, no NUL, each at most 255 bytes, the whole at most 4096 bytes.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    if key.contains('\0') {
        return Err(KeyError::Nul);
    }
    for seg in key.split('/') {
        match seg {
            "" => return Err(KeyError::EmptySegment(key.to_owned())),
            "." | ".." => return Err(KeyError::DotSegment(key.to_owned())),
            s if s.len() > MAX_SEGMENT_BYTES => return Err(KeyError::SegmentTooLong(s.chars().take(32).collect())),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a prefix (for list, watch and recursive delete): empty means the
/// whole keyspace, one trailing `/` is allowed; otherwise it is a key. Returns
/// the prefix without the trailing slash.
pub fn normalize_prefix(prefix: &str) -> Result<&str, KeyError> {
    let p = prefix.strip_suffix('/').unwrap_or(prefix);
    if p.is_empty() {
        return Ok(p);
    }
    validate_key(p)?;
    Ok(p)
}

/// True when `key` is `prefix` itself or lies below it (`prefix/...`); the
/// empty prefix holds every key. `app` holds `app/x` but not `apple`.
pub fn key_in_prefix(key: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || (key.starts_with(prefix) && (key.len() == prefix.len() || key.as_bytes()[prefix.len()] == b'/'))
}

/// One key's change within a write, for [`dirs_changed`]: the key, whether
/// it existed before this change, and after it `None` (deleted) or whether
/// it is a new entry (made by this write).
pub type KeyChange<'a> = (&'a str, bool, Option<bool>);

/// The directories a write changes the entries of, as a file system's
/// directory mtime sees them, from its changes in order: the parents of
/// the keys that existed before the write and not after it, or the other
/// way round, or were deleted and put again (a rename over them); not a
/// directory the write changed itself, nor one that is a key's only as its
/// parent prefix (the caller keeps those with an entry of kind `dir`).
pub fn dirs_changed<'a>(changes: impl IntoIterator<Item = KeyChange<'a>>) -> std::collections::BTreeSet<String> {
    // Each key's state before the write (its first change) and after it
    // (its last).
    let mut net: std::collections::BTreeMap<&str, (bool, Option<bool>)> = std::collections::BTreeMap::new();
    for (key, before, after) in changes {
        net.entry(key).or_insert((before, None)).1 = after;
    }
    net.iter()
        .filter(|(_, (before, after))| match after {
            None => *before,
            Some(new) => !*before || *new,
        })
        .filter_map(|(k, _)| k.rsplit_once('/').map(|(p, _)| p))
        .filter(|p| !net.contains_key(p))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        for k in ["a", "app/db/url", "a.b/c-d_e", "ü/ñ", "x/.hidden", "..x/y.."] {
            assert_eq!(validate_key(k), Ok(()), "{k}");
        }
    }

    #[test]
    fn refuses_bad_keys() {
        assert_eq!(validate_key(""), Err(KeyError::Empty));
        assert!(matches!(validate_key("/a"), Err(KeyError::EmptySegment(_))));
        assert!(matches!(validate_key("a/"), Err(KeyError::EmptySegment(_))));
        assert!(matches!(validate_key("a//b"), Err(KeyError::EmptySegment(_))));
        assert!(matches!(validate_key("a/../b"), Err(KeyError::DotSegment(_))));
        assert!(matches!(validate_key("."), Err(KeyError::DotSegment(_))));
        assert_eq!(validate_key("a\0b"), Err(KeyError::Nul));
    }

    #[test]
    fn length_limits_are_exact() {
        let seg = "s".repeat(255);
        assert_eq!(validate_key(&seg), Ok(()));
        let long = "s".repeat(256);
        assert!(validate_key(&long).is_err_and(|e| e.is_too_long()));
        // 16 segments of 255 bytes plus 15 slashes = 4095 bytes: allowed.
        let key = vec![seg.as_str(); 16].join("/");
        assert_eq!(key.len(), 4095);
        assert_eq!(validate_key(&key), Ok(()));
        let key = format!("{key}/ab");
        assert_eq!(validate_key(&key), Err(KeyError::TooLong(4098)));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(key_in_prefix("app", "app"));
        assert!(key_in_prefix("app/x", "app"));
        assert!(!key_in_prefix("apple", "app"));
        assert!(key_in_prefix("anything", ""));
        assert_eq!(normalize_prefix("app/"), Ok("app"));
        assert_eq!(normalize_prefix(""), Ok(""));
        assert!(normalize_prefix("a//").is_err());
    }
}
