//! Who is asking, and may they (DESIGN.md §10): the auth mode, bearer
//! tokens kept hashed in the replicated system area, and JWTs.

use axum::http::{header, HeaderMap};
use kv_client::{Access, ErrorCode, Grants};
use serde::{Deserialize, Serialize};

use crate::jwt::{looks_like_jwt, Verifier};
use crate::token::{hash_token, TokenTable};
use crate::types::{Cmp, Op, Txn};

/// Which requests need a credential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No authentication (development, loopback only).
    #[default]
    None,
    /// Reads are open; writes and admin requests need a token.
    Writes,
    /// Every request needs a token.
    All,
}

impl Mode {
    /// The name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Writes => "writes",
            Mode::All => "all",
        }
    }
}

/// The node's auth settings.
#[derive(Debug, Default)]
pub struct Auth {
    /// Mode.
    pub mode: Mode,
    /// JWT verification, when configured.
    pub jwt: Option<Verifier>,
    /// `/metrics` answers without a token even in mode `all`.
    pub open_metrics: bool,
}

/// The caller of one request and what they may do.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name or `jwt:SUBJECT`; `None` without a credential.
    pub name: Option<String>,
    /// Rights, the mode's open access included.
    pub grants: Grants,
    /// The mode.
    pub mode: Mode,
    /// What the credential stays valid on: a token's hash (until revoked)
    /// or a JWT's expiry. Long requests (watches) check it as they go.
    pub valid_while: Validity,
}

/// How long a credential holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Validity {
    /// No credential, or none needed.
    #[default]
    Always,
    /// Until the token with this hash is revoked.
    Token(String),
    /// Until this time (seconds since the epoch), a JWT's `exp` plus leeway.
    Until(u64),
}

impl Validity {
    /// Whether the credential still holds.
    pub fn holds(&self, tokens: &TokenTable) -> bool {
        match self {
            Validity::Always => true,
            Validity::Token(h) => tokens.contains_key(h),
            Validity::Until(t) => kv_client::clock::now_s() <= *t,
        }
    }
}

/// On whose behalf a write is made. The member that decides a write (the
/// leader) checks the caller again, against its own token table: a
/// member's own check may rest on a table that has not applied a
/// revocation yet.
#[derive(Debug, Clone)]
pub enum Authority {
    /// The node itself (the bootstrap admin token, before any token
    /// exists). Never sent to another member: a forwarded write always
    /// carries a client's credential, or none.
    Node,
    /// A client of another member, by the value of the `Authorization`
    /// header it sent (`None`: it sent none), which that member forwarded.
    Client(Option<String>),
    /// A client of this member, whose credential and rights this member
    /// already checked; `authorization` is the header, to forward.
    Checked {
        /// The caller, as this member worked it out.
        caller: Caller,
        /// The `Authorization` header it sent.
        authorization: Option<String>,
    },
}

impl Authority {
    /// A client request's caller, whose rights to the write were checked.
    pub fn checked(caller: &Caller, headers: &HeaderMap) -> Authority {
        Authority::Checked { caller: caller.clone(), authorization: authorization(headers).map(str::to_owned) }
    }

    /// What a member sends along with a write it forwards.
    pub fn forwarded(&self) -> Option<String> {
        match self {
            Authority::Node => None,
            Authority::Client(a) | Authority::Checked { authorization: a, .. } => a.clone(),
        }
    }
}

/// The value of a request's `Authorization` header; one that is not text
/// is refused later like any other that is not "Bearer TOKEN".
fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""))
}

/// A refused request: 401 without a usable credential, 403 without the right.
/// Travels from the leader back to a member that forwarded a write.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Denied {
    /// The status of its code, [`ErrorCode::Unauthorized`] or
    /// [`ErrorCode::Forbidden`]: a number on the peer wire.
    status: u16,
    /// Why, for the caller.
    pub message: String,
}

impl Denied {
    /// Refused for want of a usable credential.
    pub fn unauthorized(message: impl Into<String>) -> Denied {
        Denied { status: ErrorCode::Unauthorized.status(), message: message.into() }
    }

    /// Refused for want of a right.
    pub fn forbidden(message: impl Into<String>) -> Denied {
        Denied { status: ErrorCode::Forbidden.status(), message: message.into() }
    }

    /// Its code in the client API's vocabulary.
    pub fn code(&self) -> ErrorCode {
        if self.status == ErrorCode::Unauthorized.status() {
            ErrorCode::Unauthorized
        } else {
            ErrorCode::Forbidden
        }
    }
}

impl Caller {
    /// Who, for logs: the token's name, never the token.
    pub fn who(&self) -> &str {
        self.name.as_deref().unwrap_or(kv_client::ANONYMOUS)
    }

    fn deny(&self, action: &str, target: &str) -> Denied {
        tracing::warn!(who = self.who(), action, target, "request denied");
        if self.name.is_none() {
            Denied::unauthorized(format!("{action} {target:?} needs a token (Authorization: Bearer ...)"))
        } else {
            Denied::forbidden(format!("{} may not {action} {target:?}", self.who()))
        }
    }

    /// Read access to a key.
    pub fn need_read(&self, key: &str) -> Result<(), Denied> {
        if self.grants.can_read(key) {
            Ok(())
        } else {
            Err(self.deny("read", key))
        }
    }

    /// Write access to a key (or a whole prefix).
    pub fn need_write(&self, key: &str) -> Result<(), Denied> {
        if self.grants.can_write(key) {
            Ok(())
        } else {
            Err(self.deny("write", key))
        }
    }

    /// Some read access to a prefix; the answer says how much.
    pub fn need_some_read(&self, prefix: &str) -> Result<Access, Denied> {
        match self.grants.read_access(prefix) {
            Access::None => Err(self.deny("read", prefix)),
            a => Ok(a),
        }
    }

    /// The admin right.
    pub fn need_admin(&self, action: &str) -> Result<(), Denied> {
        if self.grants.admin {
            Ok(())
        } else {
            Err(self.deny(action, "cluster"))
        }
    }

    /// Every right a transaction needs: read on what it compares, write on
    /// what it puts or deletes, admin to create or revoke a token. Refused
    /// whole when one is missing.
    pub fn need_txn(&self, txn: &Txn) -> Result<(), Denied> {
        for c in &txn.compare {
            // NOTE: a prefix compare tells whether anything under the
            // prefix changed: it needs read rights on all of it.
            let (Cmp::ModRevision(k, _) | Cmp::Exists(k, _) | Cmp::PrefixUnchangedSince(k, _)) = c;
            self.need_read(k)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                Op::Put { key, .. } | Op::Delete { key, .. } => self.need_write(key)?,
                Op::CreateToken(_) | Op::RevokeToken(_) => self.need_admin("manage the tokens of")?,
                // NOTE: only a leader's proposer writes it; a client's API
                // request cannot carry it (crate::api refuses it).
                Op::SetDedupWindow(_) => self.need_admin("set the request-id window of")?,
                // NOTE: likewise only a leader's proposer.
                Op::SetRules(_) => self.need_admin("set the rules of writes of")?,
                // NOTE: only the leader records who wrote; nobody may claim it.
                Op::Writer(_) => {
                    return Err(Denied::forbidden("the writer of a request is recorded by the leader only"))
                }
            }
        }
        Ok(())
    }

    /// Refuses a caller whose credential stopped holding: a token revoked
    /// in `tokens`, or a JWT past its expiry.
    pub fn need_valid(&self, tokens: &TokenTable) -> Result<(), Denied> {
        if self.valid_while.holds(tokens) {
            Ok(())
        } else {
            tracing::warn!(who = self.who(), "revoked or expired credential refused");
            Err(Denied::unauthorized("the token was revoked or has expired"))
        }
    }

    /// Any valid credential in mode `all` (cluster status and the like).
    pub fn need_known(&self, action: &str) -> Result<(), Denied> {
        if self.mode != Mode::All || self.name.is_some() {
            Ok(())
        } else {
            Err(self.deny(action, "cluster"))
        }
    }
}

impl Auth {
    /// Works out the caller of a request from its `Authorization` header.
    pub fn caller(&self, headers: &HeaderMap, tokens: &TokenTable) -> Result<Caller, Denied> {
        self.caller_from(authorization(headers), tokens)
    }

    /// Works out the caller from the value of an `Authorization` header
    /// (`None`: the request had none), against `tokens`.
    pub fn caller_from(&self, authorization: Option<&str>, tokens: &TokenTable) -> Result<Caller, Denied> {
        let open = match self.mode {
            Mode::None => {
                return Ok(Caller { name: None, grants: Grants::all(), mode: self.mode, valid_while: Validity::Always })
            }
            Mode::Writes => Grants::read_all(),
            Mode::All => Grants::default(),
        };
        let Some(v) = authorization else {
            return Ok(Caller { name: None, grants: open, mode: self.mode, valid_while: Validity::Always });
        };
        let unauthorized = |m: &str| Denied::unauthorized(m.to_owned());
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("Authorization must be \"Bearer TOKEN\""))?;
        let (name, mut grants, valid_while) = if looks_like_jwt(token) {
            let Some(jwt) = &self.jwt else {
                return Err(unauthorized("this cluster accepts no JWTs (no [jwt] section in its config)"));
            };
            let v = jwt.verify(token, kv_client::clock::now_s()).map_err(|reason| {
                tracing::warn!(reason, "JWT refused");
                unauthorized(&format!("JWT refused: {reason}"))
            })?;
            (v.name, v.grants, Validity::Until(v.valid_until))
        } else {
            let hash = hash_token(token);
            let Some(rec) = tokens.get(&hash) else {
                tracing::warn!("unknown or revoked token refused");
                return Err(unauthorized("unknown or revoked token"));
            };
            (rec.name.clone(), rec.grants.clone(), Validity::Token(hash))
        };
        grants.merge(&open);
        Ok(Caller { name: Some(name), grants, mode: self.mode, valid_while })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::types::TokenRecord;

    fn table(token: &str) -> Arc<TokenTable> {
        let rec = TokenRecord::new("reader", Grants { read: vec!["app".into()], ..Grants::default() }, token, 0);
        Arc::new(TokenTable::from([(rec.hash.clone(), rec)]))
    }

    fn bearer(t: &str) -> HeaderMap {
        HeaderMap::from_iter([(header::AUTHORIZATION, format!("Bearer {t}").parse().expect("header"))])
    }

    #[test]
    fn modes_decide_what_is_open() {
        let t = crate::token::new_token().expect("token");
        assert!(t.starts_with("kv_") && t.len() > 40);
        let tokens = table(&t);
        let none = Auth { mode: Mode::None, ..Auth::default() };
        assert!(none.caller(&HeaderMap::new(), &tokens).expect("open").need_write("x").is_ok());
        let writes = Auth { mode: Mode::Writes, ..Auth::default() };
        let anon = writes.caller(&HeaderMap::new(), &tokens).expect("anonymous");
        assert!(anon.need_read("db/x").is_ok());
        assert_eq!(anon.need_write("db/x").expect_err("no token").code(), ErrorCode::Unauthorized);
        let all = Auth { mode: Mode::All, ..Auth::default() };
        let anon = all.caller(&HeaderMap::new(), &tokens).expect("anonymous");
        assert_eq!(anon.need_read("app/x").expect_err("no token").code(), ErrorCode::Unauthorized);
        assert!(anon.need_known("status").is_err());
        let reader = all.caller(&bearer(&t), &tokens).expect("known token");
        assert!(reader.need_read("app/x").is_ok());
        assert_eq!(reader.need_read("db/x").expect_err("outside").code(), ErrorCode::Forbidden);
        assert_eq!(reader.need_write("app/x").expect_err("read-only").code(), ErrorCode::Forbidden);
        assert_eq!(reader.need_some_read("").expect("partial"), Access::Partial);
        assert_eq!(all.caller(&bearer("kv_nope"), &tokens).expect_err("unknown").code(), ErrorCode::Unauthorized);
        let bad = HeaderMap::from_iter([(header::AUTHORIZATION, "Basic eA==".parse().expect("header"))]);
        assert_eq!(all.caller(&bad, &tokens).expect_err("not bearer").code(), ErrorCode::Unauthorized);
        assert!(all.caller(&bearer("eyJ.a.b"), &tokens).expect_err("no jwt").message.contains("JWT"));
    }

    #[test]
    fn a_transaction_needs_every_right_it_uses_and_a_live_credential() {
        let t = crate::token::new_token().expect("token");
        let rec = TokenRecord::new(
            "app",
            Grants { read: vec!["app".into()], write: vec!["app".into()], admin: false },
            &t,
            0,
        );
        let tokens = TokenTable::from([(rec.hash.clone(), rec)]);
        let auth = Auth { mode: Mode::All, ..Auth::default() };
        let app = auth.caller_from(Some(&format!("Bearer {t}")), &tokens).expect("known token");
        let put = |k: &str| Op::Put { key: k.into(), value: None, attrs: Default::default() };
        let txn = |compare, success: Vec<Op>| Txn { compare, success, failure: vec![] };
        assert!(app.need_txn(&txn(vec![Cmp::Exists("app/a".into(), true)], vec![put("app/b")])).is_ok());
        assert_eq!(
            app.need_txn(&txn(vec![Cmp::Exists("db/a".into(), true)], vec![])).expect_err("compare").code(),
            ErrorCode::Forbidden
        );
        assert_eq!(
            app.need_txn(&txn(vec![], vec![put("app/b"), put("db/b")])).expect_err("one op").code(),
            ErrorCode::Forbidden
        );
        let since = |p: &str| vec![Cmp::PrefixUnchangedSince(p.into(), 3)];
        assert!(app.need_txn(&txn(since("app"), vec![put("app/b")])).is_ok());
        assert!(app.need_txn(&txn(since("app/x"), vec![])).is_ok());
        for outside in ["", "db", "ap"] {
            let e = app.need_txn(&txn(since(outside), vec![put("app/b")])).expect_err("prefix compare");
            assert_eq!(e.code(), ErrorCode::Forbidden, "{outside:?}");
        }
        let revoke = txn(vec![], vec![Op::RevokeToken("admin".into())]);
        assert_eq!(app.need_txn(&revoke).expect_err("tokens need admin").code(), ErrorCode::Forbidden);
        let anon = auth.caller_from(None, &tokens).expect("anonymous");
        assert_eq!(
            anon.need_txn(&txn(vec![], vec![put("app/b")])).expect_err("no token").code(),
            ErrorCode::Unauthorized
        );
        assert!(app.need_valid(&tokens).is_ok());
        assert_eq!(app.need_valid(&TokenTable::new()).expect_err("revoked").code(), ErrorCode::Unauthorized);
        assert!(anon.need_valid(&TokenTable::new()).is_ok(), "no credential, nothing to revoke");
    }
}
