//! API tokens as the state machine keeps them: a name, rights and the hash
//! of the secret, never the secret itself.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Tokens by the hash of their secret.
pub type TokenTable = std::collections::HashMap<String, TokenRecord>;

/// A token as the system area stores it: a hash, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Unique name.
    pub name: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// Rights.
    pub grants: kv_client::Grants,
    /// Creation time, ns.
    pub created_ns: i64,
}

impl TokenRecord {
    /// The record of a token: its hash, never the secret itself.
    pub fn new(name: &str, grants: kv_client::Grants, secret: &str, created_ns: i64) -> TokenRecord {
        TokenRecord { name: name.to_owned(), hash: hash_token(secret), grants, created_ns }
    }
}

/// SHA-256 of a token, hex: what the system area stores.
pub fn hash_token(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The system has no randomness to make a token secret from.
#[derive(Debug, thiserror::Error)]
#[error("no randomness for a token")]
pub struct NoRandomness;

/// A new random token: `kv_` and 256 bits in base64url.
pub fn new_token() -> Result<String, NoRandomness> {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).map_err(|_| NoRandomness)?;
    Ok(format!("kv_{}", URL_SAFE_NO_PAD.encode(b)))
}

/// A token record with a fresh secret, made at `now_ns`; the secret is
/// returned, not stored.
pub fn new_token_record(
    name: &str,
    grants: kv_client::Grants,
    now_ns: i64,
) -> Result<(TokenRecord, String), NoRandomness> {
    let token = new_token()?;
    Ok((TokenRecord::new(name, grants, &token, now_ns), token))
}
