//! Access rights (DESIGN.md §10): what a token or JWT may do, and the wire
//! types of the token API. The server enforces them; kvfs uses the same
//! rules to answer `EACCES` for what its token cannot see.

use serde::{Deserialize, Serialize};

use crate::key::{key_in_prefix, normalize_prefix, KeyError};

/// Rights on the keyspace: read and read-write prefixes, or everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Prefixes that may be read (`""`: everything).
    #[serde(default)]
    pub read: Vec<String>,
    /// Prefixes that may be read and written.
    #[serde(default)]
    pub write: Vec<String>,
    /// Everything, plus membership, snapshots and tokens.
    #[serde(default)]
    pub admin: bool,
}

/// How much of a prefix a caller may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The prefix and everything below it.
    Full,
    /// Only parts below it: listings and watches are filtered.
    Partial,
    /// Nothing at or below it.
    None,
}

impl Grants {
    /// Every right.
    pub fn all() -> Grants {
        Grants { read: vec![], write: vec![], admin: true }
    }

    /// Read access to everything, nothing else.
    pub fn read_all() -> Grants {
        Grants { read: vec![String::new()], write: vec![], admin: false }
    }

    /// Normalizes every prefix (no trailing `/`), refusing malformed ones.
    pub fn normalized(self) -> Result<Grants, KeyError> {
        let norm = |v: Vec<String>| -> Result<Vec<String>, KeyError> {
            let mut out: Vec<String> =
                v.iter().map(|p| normalize_prefix(p).map(str::to_owned)).collect::<Result<_, _>>()?;
            out.sort();
            out.dedup();
            Ok(out)
        };
        Ok(Grants { read: norm(self.read)?, write: norm(self.write)?, admin: self.admin })
    }

    /// Adds another set of rights to these.
    pub fn merge(&mut self, other: &Grants) {
        self.read.extend(other.read.iter().cloned());
        self.write.extend(other.write.iter().cloned());
        self.admin |= other.admin;
    }

    fn readable(&self) -> impl Iterator<Item = &String> {
        self.read.iter().chain(self.write.iter())
    }

    /// Whether `key` may be read (a write grant includes reading).
    pub fn can_read(&self, key: &str) -> bool {
        self.admin || self.readable().any(|g| key_in_prefix(key, g))
    }

    /// Whether `key` (or with a prefix, all of it) may be written.
    pub fn can_write(&self, key: &str) -> bool {
        self.admin || self.write.iter().any(|g| key_in_prefix(key, g))
    }

    /// How much of `prefix` may be read.
    pub fn read_access(&self, prefix: &str) -> Access {
        if self.can_read(prefix) {
            Access::Full
        } else if self.readable().any(|g| key_in_prefix(g, prefix)) {
            Access::Partial
        } else {
            Access::None
        }
    }

    /// Whether a listing may show `key`: it is readable, or a directory on
    /// the way to something readable.
    pub fn can_see(&self, key: &str) -> bool {
        self.can_read(key) || self.readable().any(|g| g.len() > key.len() && key_in_prefix(g, key))
    }
}

/// `GET /v1/auth/whoami`: who the server takes the caller for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The server's auth mode: `none`, `writes` or `all`.
    pub mode: String,
    /// Token name (or `jwt:SUBJECT`); `None` without a credential.
    pub name: Option<String>,
    /// What the caller may do, open access of the mode included.
    pub grants: Grants,
}

/// `POST /v1/auth/tokens`: a token to create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// Unique name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Prefixes it may read.
    #[serde(default)]
    pub read: Vec<String>,
    /// Prefixes it may read and write.
    #[serde(default)]
    pub write: Vec<String>,
    /// Everything, plus membership, snapshots and tokens.
    #[serde(default)]
    pub admin: bool,
}

impl TokenSpec {
    /// The rights asked for.
    pub fn grants(&self) -> Grants {
        Grants { read: self.read.clone(), write: self.write.clone(), admin: self.admin }
    }
}

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Name.
    pub name: String,
    /// Rights.
    pub grants: Grants,
    /// Creation time, ns since the epoch.
    pub created_ns: i64,
}

/// The answer to a token creation: the secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// The token.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The secret to send as `Authorization: Bearer ...`.
    pub token: String,
}

/// Checks a token name.
pub fn validate_token_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("a token name is 1 to 64 characters".into());
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(format!("token name {name:?} may hold only A-Z, a-z, 0-9, '.', '_' and '-'"));
    }
    // NOTE: the history names writers without a token so.
    if RESERVED_TOKEN_NAMES.contains(&name) {
        return Err(format!("token name {name:?} is reserved: the history names writers without a token so"));
    }
    Ok(())
}

/// The writer the history names for a request without a credential.
pub const ANONYMOUS: &str = "anonymous";
/// The writer the history names for the node's own requests.
pub const NODE_WRITER: &str = "kvd";
/// Names the history gives writers that are not tokens.
pub const RESERVED_TOKEN_NAMES: [&str; 2] = [ANONYMOUS, NODE_WRITER];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_s_own_writer_names_are_no_token_names() {
        for name in RESERVED_TOKEN_NAMES {
            assert!(validate_token_name(name).is_err(), "{name}");
        }
        assert!(validate_token_name("deployer").is_ok());
    }

    fn g(read: &[&str], write: &[&str]) -> Grants {
        Grants {
            read: read.iter().map(|s| s.to_string()).collect(),
            write: write.iter().map(|s| s.to_string()).collect(),
            admin: false,
        }
    }

    #[test]
    fn prefixes_hold_whole_segments() {
        let r = g(&["app"], &["app/db"]);
        assert!(r.can_read("app") && r.can_read("app/x") && !r.can_read("apple") && !r.can_read("db/x"));
        assert!(r.can_write("app/db/url") && !r.can_write("app/x"));
        assert!(g(&[""], &[]).can_read("anything/at/all"));
        assert!(Grants::all().can_write("x"));
    }

    #[test]
    fn access_to_a_prefix_is_full_partial_or_none() {
        let r = g(&["app/web"], &[]);
        assert_eq!(r.read_access("app/web/x"), Access::Full);
        assert_eq!(r.read_access("app"), Access::Partial);
        assert_eq!(r.read_access(""), Access::Partial);
        assert_eq!(r.read_access("db"), Access::None);
        assert_eq!(r.read_access("app/webx"), Access::None);
        assert!(r.can_see("app") && r.can_see("app/web") && !r.can_see("app/db") && !r.can_see("app/webx"));
    }

    #[test]
    fn grants_are_normalized_and_checked() {
        let n = g(&["app/", "app"], &[""]).normalized().expect("valid");
        assert_eq!(n.read, vec!["app".to_owned()]);
        assert_eq!(n.write, vec![String::new()]);
        assert!(g(&["a/../b"], &[]).normalized().is_err());
    }

    #[test]
    fn token_names_are_plain() {
        assert!(validate_token_name("ci-deploy.2").is_ok());
        assert!(validate_token_name("").is_err());
        assert!(validate_token_name("a b").is_err());
        assert!(validate_token_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn token_spec_json_is_flat() {
        let s: TokenSpec = serde_json::from_str(r#"{"name":"r","read":["app"]}"#).expect("json");
        assert_eq!(s.grants().read, vec!["app".to_owned()]);
        assert!(serde_json::from_str::<TokenSpec>(r#"{"name":"r","reed":["app"]}"#).is_err());
    }
}
