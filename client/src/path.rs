//! Percent-encoding of keys in request paths. Keys may hold any UTF-8 but `/`
//! separates segments, so everything except unreserved characters and `/` is
//! escaped by clients and unescaped by the server.

/// Escapes a key for use in a URL path, keeping `/` as is.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Unescapes a URL path back into a key; `None` when an escape is broken or
/// the result is not UTF-8.
pub fn decode_key(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            // NOTE: from_str_radix alone would take "%+1" as an escape.
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_awkward_keys() {
        for k in ["a/b", "sp ace/q?x#y%z", "ü/ñ", "a+b=c&d"] {
            let e = encode_key(k);
            assert!(!e.contains(' ') && !e.contains('?') && !e.contains('#'));
            assert_eq!(decode_key(&e).as_deref(), Some(k));
        }
    }

    #[test]
    fn refuses_broken_escapes() {
        assert_eq!(decode_key("a%2"), None);
        assert_eq!(decode_key("a%zz"), None);
        assert_eq!(decode_key("%ff%fe"), None);
    }
}
