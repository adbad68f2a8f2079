//! JWT verification against a local JWKS file (DESIGN.md §10, OIDC): the
//! signature (RS256, ES256 or EdDSA), issuer, audience, expiry and not-before
//! within a clock-skew bound; then a claim's values name roles that map to
//! prefix grants. The JWKS file is read again on SIGHUP ([`Verifier::reload`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use kv_client::Grants;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

/// The `[jwt]` section of the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// JWKS file (`{"keys": [...]}`) holding the issuer's public keys.
    pub jwks_file: PathBuf,
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (one of them, when it is a list).
    pub audience: String,
    /// Claim whose value (a string or a list of strings) names roles.
    #[serde(default = "default_claim")]
    pub claim: String,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    #[serde(default = "default_leeway")]
    pub leeway_s: u64,
    /// Longest lifetime (`exp` - `iat`, or `exp` - now) accepted, seconds.
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime_s: u64,
    /// Role name → grants.
    #[serde(default)]
    pub roles: BTreeMap<String, Grants>,
}

fn default_claim() -> String {
    "kv_roles".into()
}
fn default_leeway() -> u64 {
    60
}
fn default_max_lifetime() -> u64 {
    24 * 3600
}

#[derive(Debug, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// A public key ready to verify with.
#[derive(Debug)]
enum Key {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec(Vec<u8>),
    Ed(Vec<u8>),
}

impl Key {
    fn alg(&self) -> &'static str {
        match self {
            Key::Rsa { .. } => "RS256",
            Key::Ec(_) => "ES256",
            Key::Ed(_) => "EdDSA",
        }
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            Key::Rsa { n, e } => {
                RsaPublicKeyComponents { n, e }.verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig).is_ok()
            }
            Key::Ec(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(msg, sig).is_ok()
            }
            Key::Ed(k) => UnparsedPublicKey::new(&signature::ED25519, k).verify(msg, sig).is_ok(),
        }
    }
}

fn b64(field: &Option<String>, what: &str) -> crate::error::Result<Vec<u8>> {
    let s = field.as_deref().ok_or_else(|| crate::error::Error::Invalid(format!("key has no {what:?}")))?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| crate::error::Error::Invalid(format!("key field {what:?} is not base64url")))
}

/// Public keys, each with its `kid` if it has one.
type Keys = Vec<(Option<String>, Key)>;

/// Checks JWTs for one issuer.
#[derive(Debug)]
pub struct Verifier {
    cfg: JwtConfig,
    /// The keys as last read from the JWKS file.
    keys: RwLock<Arc<Keys>>,
}

#[derive(Debug, Deserialize)]
struct JwtHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The keys of the JWKS file of `cfg`; a key of an unsupported type is an
/// error, so a typo never silently disables a key.
fn read_keys(cfg: &JwtConfig) -> crate::error::Result<Keys> {
    use crate::error::{invalid, Context};
    let text = std::fs::read(&cfg.jwks_file)
        .with_context(|| format!("cannot read the JWKS file {}", cfg.jwks_file.display()))?;
    let jwks: Jwks =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a JWKS document", cfg.jwks_file.display()))?;
    let mut keys = Vec::new();
    for (i, k) in jwks.keys.iter().enumerate() {
        let key = (|| -> crate::error::Result<Key> {
            Ok(match (k.kty.as_str(), k.crv.as_deref()) {
                ("RSA", _) => Key::Rsa { n: b64(&k.n, "n")?, e: b64(&k.e, "e")? },
                ("EC", Some("P-256")) => Key::Ec([vec![4u8], b64(&k.x, "x")?, b64(&k.y, "y")?].concat()),
                ("OKP", Some("Ed25519")) => Key::Ed(b64(&k.x, "x")?),
                (kty, crv) => invalid!("unsupported key type {kty} {crv:?} (RSA, EC P-256, OKP Ed25519)"),
            })
        })()
        .with_context(|| format!("{}: key {i}", cfg.jwks_file.display()))?;
        if let Some(alg) = &k.alg {
            if alg != key.alg() {
                invalid!("{}: key {i} says alg {alg} but is a {} key", cfg.jwks_file.display(), key.alg());
            }
        }
        keys.push((k.kid.clone(), key));
    }
    if keys.is_empty() {
        invalid!("{} holds no keys", cfg.jwks_file.display());
    }
    Ok(keys)
}

/// Looks like a JWT (three base64url parts), not an opaque token.
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.split('.').count() == 3
}

impl Verifier {
    /// Loads the JWKS file; a key of an unsupported type is an error, so a
    /// typo never silently disables a key.
    pub fn load(cfg: JwtConfig) -> crate::error::Result<Verifier> {
        let keys = read_keys(&cfg)?;
        Ok(Verifier { cfg, keys: RwLock::new(Arc::new(keys)) })
    }

    /// Reads the JWKS file again (key rotation at the issuer): tokens are
    /// checked against its keys from now on. On an error the keys read
    /// before stay. Returns how many keys it holds.
    pub fn reload(&self) -> crate::error::Result<usize> {
        let keys = read_keys(&self.cfg)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(n)
    }

    /// The JWKS file.
    pub fn jwks_file(&self) -> &std::path::Path {
        &self.cfg.jwks_file
    }

    /// Verifies a JWT at time `now` (seconds since the epoch): who it names
    /// and what they may do, or why it was refused.
    pub fn verify(&self, token: &str, now: u64) -> Result<Verified, String> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("malformed JWT".into());
        };
        let dec = |x: &str| URL_SAFE_NO_PAD.decode(x).map_err(|_| "malformed JWT (base64)".to_owned());
        let header: JwtHeader = serde_json::from_slice(&dec(h)?).map_err(|_| "malformed JWT header".to_owned())?;
        let sig = dec(s)?;
        let msg = &token.as_bytes()[..h.len() + 1 + p.len()];
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner).clone();
        let candidates: Vec<&Key> = keys
            .iter()
            .filter(|(kid, k)| k.alg() == header.alg && (header.kid.is_none() || kid.is_none() || *kid == header.kid))
            .map(|(_, k)| k)
            .collect();
        if candidates.is_empty() {
            return Err(format!("no key for alg {} kid {:?}", header.alg, header.kid));
        }
        if !candidates.iter().any(|k| k.verify(msg, &sig)) {
            return Err("bad JWT signature".into());
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&dec(p)?).map_err(|_| "malformed JWT claims".to_owned())?;
        let num = |name: &str| claims.get(name).and_then(serde_json::Value::as_u64);
        let leeway = self.cfg.leeway_s;
        let exp = num("exp").ok_or("JWT has no exp")?;
        if now > exp + leeway {
            return Err("JWT expired".into());
        }
        if num("nbf").is_some_and(|nbf| nbf > now + leeway) {
            return Err("JWT not valid yet".into());
        }
        let start = num("iat").unwrap_or(now).min(now);
        if exp.saturating_sub(start) > self.cfg.max_lifetime_s {
            return Err("JWT lives longer than max_lifetime_s".into());
        }
        if claims.get("iss").and_then(|v| v.as_str()) != Some(self.cfg.issuer.as_str()) {
            return Err("JWT has the wrong issuer".into());
        }
        let aud_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => *a == self.cfg.audience,
            Some(serde_json::Value::Array(v)) => v.iter().any(|a| a.as_str() == Some(self.cfg.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err("JWT has the wrong audience".into());
        }
        let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("?");
        let roles: Vec<&str> = match claims.get(&self.cfg.claim) {
            Some(serde_json::Value::String(r)) => vec![r.as_str()],
            Some(serde_json::Value::Array(v)) => v.iter().filter_map(|r| r.as_str()).collect(),
            _ => vec![],
        };
        let mut grants = Grants::default();
        for r in roles {
            if let Some(g) = self.cfg.roles.get(r) {
                grants.merge(g);
            }
        }
        Ok(Verified { name: format!("jwt:{sub}"), grants, valid_until: exp + leeway })
    }
}

/// A verified JWT.
#[derive(Debug)]
pub struct Verified {
    /// `jwt:SUBJECT`.
    pub name: String,
    /// Rights from its roles.
    pub grants: Grants,
    /// Until when it holds (seconds since the epoch).
    pub valid_until: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn enc(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn setup() -> (tempfile::TempDir, Verifier, Ed25519KeyPair) {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
        let dir = tempfile::tempdir().expect("tempdir");
        let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(kp.public_key().as_ref())}]});
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).expect("write");
        let cfg = JwtConfig {
            jwks_file: path,
            issuer: "https://idp".into(),
            audience: "kv".into(),
            claim: "kv_roles".into(),
            leeway_s: 30,
            max_lifetime_s: 3600,
            roles: BTreeMap::from([(
                "app-reader".to_owned(),
                Grants { read: vec!["app".into()], write: vec![], admin: false },
            )]),
        };
        (dir, Verifier::load(cfg).expect("load"), kp)
    }

    fn sign(kp: &Ed25519KeyPair, claims: serde_json::Value) -> String {
        let msg = format!("{}.{}", enc(&serde_json::json!({"alg": "EdDSA", "kid": "k1"})), enc(&claims));
        format!("{msg}.{}", URL_SAFE_NO_PAD.encode(kp.sign(msg.as_bytes()).as_ref()))
    }

    #[test]
    fn a_good_token_maps_roles_to_grants() {
        let (_d, v, kp) = setup();
        let t = sign(
            &kp,
            serde_json::json!({"iss": "https://idp", "aud": ["x", "kv"], "sub": "ann",
            "iat": 1000, "exp": 1600, "kv_roles": ["app-reader", "unknown"]}),
        );
        assert!(looks_like_jwt(&t));
        let Verified { name, grants: g, valid_until } = v.verify(&t, 1200).expect("valid");
        assert_eq!((name.as_str(), valid_until), ("jwt:ann", 1630));
        assert!(g.can_read("app/x") && !g.can_read("db/x") && !g.can_write("app/x"));
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let (_d, v, kp) = setup();
        let ok = serde_json::json!({"iss": "https://idp", "aud": "kv", "iat": 1000, "exp": 1600});
        let with = |k: &str, val: serde_json::Value| {
            let mut c = ok.clone();
            c[k] = val;
            sign(&kp, c)
        };
        assert_eq!(v.verify(&sign(&kp, ok.clone()), 1700).expect_err("expired"), "JWT expired");
        assert!(v.verify(&sign(&kp, ok.clone()), 1620).is_ok(), "within the leeway");
        assert!(v.verify(&with("iss", "https://evil".into()), 1200).expect_err("iss").contains("issuer"));
        assert!(v.verify(&with("aud", "other".into()), 1200).expect_err("aud").contains("audience"));
        assert!(v.verify(&with("exp", 100_000.into()), 1200).expect_err("lifetime").contains("longer"));
        assert!(v.verify(&with("nbf", 1500.into()), 1200).expect_err("nbf").contains("not valid yet"));
        let good = sign(&kp, ok.clone());
        let forged = format!("{}x", &good[..good.len() - 1]);
        assert!(v.verify(&forged, 1200).is_err());
        let other =
            Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key").as_ref())
                .expect("key");
        assert_eq!(v.verify(&sign(&other, ok.clone()), 1200).expect_err("wrong key"), "bad JWT signature");
        let none = format!("{}.{}.", enc(&serde_json::json!({"alg": "none"})), enc(&ok));
        assert!(v.verify(&none, 1200).is_err());
    }

    #[test]
    fn a_reload_takes_the_new_keys_and_a_bad_file_keeps_the_old() {
        let (d, v, old) = setup();
        let claims = serde_json::json!({"iss": "https://idp", "aud": "kv", "iat": 1000, "exp": 1600});
        let new =
            Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key").as_ref())
                .expect("key");
        let path = d.path().join("jwks.json");
        let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(new.public_key().as_ref())}]});
        std::fs::write(&path, jwks.to_string()).expect("write");
        assert!(v.verify(&sign(&new, claims.clone()), 1200).is_err(), "the new key before the reload");
        assert_eq!(v.reload().expect("reload"), 1);
        assert!(v.verify(&sign(&new, claims.clone()), 1200).is_ok(), "the new key after it");
        assert!(v.verify(&sign(&old, claims.clone()), 1200).is_err(), "the old key is gone");
        for bad in ["{\"keys\": []}", "not json", "{\"keys\": [{\"kty\": \"oct\"}]}"] {
            std::fs::write(&path, bad).expect("write");
            assert!(v.reload().is_err(), "{bad}");
            assert!(v.verify(&sign(&new, claims.clone()), 1200).is_ok(), "kept after {bad}");
        }
        std::fs::remove_file(&path).expect("rm");
        assert!(v.reload().expect_err("missing").to_string().contains("cannot read the JWKS file"));
        assert!(v.verify(&sign(&new, claims), 1200).is_ok(), "kept after a missing file");
    }
}
