//! Fuzzing entry (the `key` target under `fuzz/`; not an API): the
//! invariants of key validation and of keys in request paths.

use crate::{decode_key, encode_key, key_in_prefix, normalize_prefix, validate_key, MAX_KEY_BYTES};

/// Checks the invariants on arbitrary bytes; panics when one breaks.
pub fn key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let s = text.as_ref();
    assert_eq!(decode_key(&encode_key(s)).as_deref(), Some(s), "escaping does not round-trip");
    if validate_key(s).is_ok() {
        assert!(!s.is_empty() && s.len() <= MAX_KEY_BYTES && !s.contains('\0'));
        assert!(s.split('/').all(|g| !g.is_empty() && g != "." && g != ".."), "{s:?} passed with a bad segment");
        assert_eq!(normalize_prefix(s), Ok(s));
        assert!(key_in_prefix(s, s) && key_in_prefix(s, ""));
        if let Some((parent, _)) = s.rsplit_once('/') {
            assert!(key_in_prefix(s, parent));
            assert!(!key_in_prefix(parent, s));
        }
    }
    if let Ok(p) = normalize_prefix(s) {
        assert!(p.is_empty() || validate_key(p).is_ok(), "prefix {p:?} is not a key");
    }
    // A path the server accepts decodes from escapes of exactly two hex digits.
    if let Some(k) = decode_key(s) {
        assert!(k.len() <= s.len());
        let escapes = s.bytes().filter(|b| *b == b'%').count();
        assert_eq!(s.len() - 2 * escapes, k.len(), "{s:?} decoded to {k:?}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_hold_the_invariants() {
        for s in ["app/db/url", "a%2Fb", "%+1", "%zz", "../x", "a//b", "/", "", "ü/%C3%BC", "x/.hidden/"] {
            super::key(s.as_bytes());
        }
        assert_eq!(crate::decode_key("%+1"), None);
    }
}
