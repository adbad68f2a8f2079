//! One error vocabulary from server to client: the codes of the JSON error
//! body ([`ErrorCode`]), what can go wrong talking to a cluster ([`Error`]),
//! and the one place an HTTP error answer becomes an [`Error`].

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::key::KeyError;
use crate::types::ErrorBody;

/// What can go wrong talking to a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request; `code` and `message` are its JSON
    /// error body (DESIGN.md §4). Match on `code` (see [`ErrorCode`] for
    /// what each means and what to do); `status` is for display.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status, as it came.
        status: u16,
        /// What went wrong.
        code: ErrorCode,
        /// Human sentence.
        message: String,
    },
    /// No endpoint could be reached, or none answered within the request
    /// timeout; the message names each one with its reason. Check the
    /// addresses and that kvd runs (a frozen or partitioned member accepts
    /// connections but never answers).
    #[error("no endpoint could be reached: {0}")]
    Unreachable(String),
    /// A member took a request that may not be sent twice (a membership
    /// change) and gave no answer within the bound: the change may still
    /// take effect. List the members before trying it again.
    #[error("{0}")]
    UnknownOutcome(String),
    /// The key (or prefix) is malformed; nothing was sent.
    #[error("invalid key: {0}")]
    InvalidKey(#[from] KeyError),
    /// An endpoint URL could not be used.
    #[error("invalid endpoint {0:?}: it must look like http://HOST:PORT")]
    Endpoint(String),
    /// The client could not be set up (token, CA file).
    #[error("{0}")]
    Config(String),
    /// The server answered something this client does not understand.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// A watch stream sent nothing, not even a keepalive, for longer than
    /// its bound: its member is frozen, cut off or overloaded. Watch again
    /// from [`crate::Watch::last_revision`]; the next watch starts at another
    /// endpoint.
    #[error("the watch stream from {endpoint} sent nothing for {} ms; watch again through another member", .silent.as_millis())]
    Stalled {
        /// The member the stream came from.
        endpoint: String,
        /// How long it was silent.
        silent: Duration,
    },
}

impl Error {
    /// The code of an API error: what to match on.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether this is an API error with `code`.
    pub fn is(&self, code: &ErrorCode) -> bool {
        self.code() == Some(code)
    }

    /// HTTP status of an API error, for display; match on [`Error::code`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Turns an error answer to a request made with [`crate::Client::send`]
    /// into [`Error::Api`]; a success (or 304) passes through.
    pub async fn check(resp: Response) -> Result<Response, Error> {
        check(resp).await
    }
}

/// Declares [`ErrorCode`] from one table: variant, wire name, HTTP status.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $status:literal;)*) => {
        /// The machine-readable code of an error answer (the `error` field of
        /// [`crate::ErrorBody`], DESIGN.md §4): one variant per code kvd sends,
        /// each paired with the HTTP status the server answers it with
        /// ([`ErrorCode::status`]). On the wire it is a snake_case string; a
        /// code this client does not know (from a newer server) parses to
        /// [`ErrorCode::Other`].
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
            /// A code this client does not know, as it came; treat it by the
            /// answer's status.
            Other(String),
        }

        impl ErrorCode {
            /// Every code this client knows, in table order.
            pub const KNOWN: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The name on the wire (`compare_failed`).
            pub fn as_str(&self) -> &str {
                match self {
                    $(ErrorCode::$variant => $name,)*
                    ErrorCode::Other(s) => s,
                }
            }

            /// The HTTP status the server answers this code with; 500 for
            /// [`ErrorCode::Other`].
            pub fn status(&self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                    ErrorCode::Other(_) => 500,
                }
            }

            /// The code named `s`; [`ErrorCode::Other`] when it is none this
            /// client knows.
            pub fn parse(s: &str) -> ErrorCode {
                match s {
                    $($name => ErrorCode::$variant,)*
                    other => ErrorCode::Other(other.to_owned()),
                }
            }
        }
    };
}

error_codes! {
    /// The request is malformed (a header, the body, an id): fix it.
    BadRequest = "bad_request", 400;
    /// The query string is malformed (`limit`, `rev`, a flag): fix it.
    BadQuery = "bad_query", 400;
    /// The JSON body does not parse or has unknown fields: fix it.
    BadJson = "bad_json", 400;
    /// A key or prefix breaks the rules of DESIGN.md §2: nothing was written.
    InvalidKey = "invalid_key", 400;
    /// Plain HTTP sent to a TLS port: use an `https://` URL.
    TlsRequired = "tls_required", 400;
    /// No token, or one the cluster does not know (or revoked): pass a
    /// valid token.
    Unauthorized = "unauthorized", 401;
    /// The token does not grant this: ask for a token that does.
    Forbidden = "forbidden", 403;
    /// The key, member or token does not exist (or no such endpoint).
    NotFound = "not_found", 404;
    /// The path does not take this method.
    MethodNotAllowed = "method_not_allowed", 405;
    /// `member add` named a node that belongs to a cluster already or
    /// cannot join: nothing changed.
    NotJoinable = "not_joinable", 409;
    /// The write's request id is older than the cluster remembers ids for:
    /// nothing was written; read the keys, and send new writes with new ids.
    RequestIdExpired = "request_id_expired", 409;
    /// A resent token creation whose first attempt made the token: its
    /// secret is gone; revoke it and create it again.
    TokenCreatedEarlier = "token_created_earlier", 409;
    /// A token of that name exists: revoke it first or pick another name.
    Exists = "exists", 409;
    /// The revision a watch would start from is compacted: list again and
    /// watch from the listing's revision.
    Compacted = "compacted", 410;
    /// A condition (`If-Match`, `If-None-Match: *`) does not hold: nothing
    /// was written.
    CompareFailed = "compare_failed", 412;
    /// The value or request is over the cluster's limit: nothing was written.
    TooLarge = "too_large", 413;
    /// The server failed on its side; the message says how.
    Internal = "internal", 500;
    /// No leader, no quorum, or a member that cannot serve yet: nothing was
    /// written; retry (on another member).
    Unavailable = "unavailable", 503;
    /// The write was taken but not confirmed in time: it may still apply;
    /// resend it with the same request id to learn which.
    UnknownOutcome = "unknown_outcome", 504;
    /// The cluster's disk is (nearly) full: writes are refused.
    NoSpace = "no_space", 507;
}

impl ErrorCode {
    /// The code a bare HTTP status stands for, for an error answer without
    /// a JSON body (a proxy, a server that failed early): the one code the
    /// server pairs with that status, or [`ErrorCode::BadRequest`] for 400.
    pub fn from_status(status: u16) -> Option<ErrorCode> {
        let mut codes = ErrorCode::KNOWN.iter().filter(|c| c.status() == status);
        match (codes.next(), codes.next()) {
            (Some(only), None) => Some(only.clone()),
            _ if status == ErrorCode::BadRequest.status() => Some(ErrorCode::BadRequest),
            _ => None,
        }
    }

    /// The request itself is wrong (a 400: bad key, body, query): fix it,
    /// never retry it as it is.
    pub fn is_invalid_request(&self) -> bool {
        self.status() == ErrorCode::BadRequest.status()
    }

    /// The caller's token is missing, unknown or lacks the right.
    pub fn is_denied(&self) -> bool {
        matches!(self, ErrorCode::Unauthorized | ErrorCode::Forbidden)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for ErrorCode {
    fn from(s: String) -> ErrorCode {
        match ErrorCode::parse(&s) {
            ErrorCode::Other(_) => ErrorCode::Other(s),
            known => known,
        }
    }
}

impl From<&str> for ErrorCode {
    fn from(s: &str) -> ErrorCode {
        ErrorCode::parse(s)
    }
}

impl From<ErrorCode> for String {
    fn from(c: ErrorCode) -> String {
        match c {
            ErrorCode::Other(s) => s,
            known => known.as_str().to_owned(),
        }
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Turns an error status into [`Error::Api`].
pub(crate) async fn check(resp: Response) -> Result<Response, Error> {
    let status = resp.status();
    if answered_ok(status) {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    Err(api_error(status, &body))
}

/// Whether `status` is an answer, not an error.
pub(crate) fn answered_ok(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::NOT_MODIFIED
}

/// The [`Error::Api`] an error answer with `status` and `body` is.
pub(crate) fn api_error(status: StatusCode, body: &[u8]) -> Error {
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        // NOTE: a code this client does not know (a newer server's) is read
        // by its status when that names one, as before codes were parsed.
        Ok(ErrorBody { error: ErrorCode::Other(name), message }) => match ErrorCode::from_status(status.as_u16()) {
            Some(known) => (known, format!("{message} ({name})")),
            None => (ErrorCode::Other(name), message),
        },
        Ok(b) => (b.error, b.message),
        Err(_) => (
            ErrorCode::from_status(status.as_u16()).unwrap_or_else(|| ErrorCode::Other("http".to_owned())),
            String::from_utf8_lossy(body).trim().to_owned(),
        ),
    };
    Error::Api { status: status.as_u16(), code, message }
}

/// An answer's body that could not be read: cut off by the request
/// timeout (the member stopped sending), or broken.
pub(crate) fn body_error(e: &reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Unreachable(format!("the answer stopped coming before the request timeout: {}", error_chain(e)))
    } else {
        Error::Protocol(error_chain(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error `check` makes of an answer with `status` and `body`.
    fn checked(status: u16, body: &str) -> Error {
        let resp = response_of(status, body);
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(check(resp)).expect_err("an error answer")
    }

    fn response_of(status: u16, body: &str) -> Response {
        let r = http::Response::builder().status(status).body(body.to_owned()).expect("response");
        Response::from(r)
    }

    #[test]
    fn an_unknown_code_is_read_by_its_status_when_that_names_one() {
        let e = checked(404, r#"{"error":"key_gone","message":"m"}"#);
        assert_eq!(e.code(), Some(&ErrorCode::NotFound));
        assert!(e.to_string().contains("key_gone"), "{e}");
        let e = checked(409, r#"{"error":"key_gone","message":"m"}"#);
        assert_eq!(e.code(), Some(&ErrorCode::Other("key_gone".into())), "409 names several codes");
        let e = checked(412, r#"{"error":"compare_failed","message":"m"}"#);
        assert_eq!(e.code(), Some(&ErrorCode::CompareFailed));
        let e = checked(502, "bad gateway");
        assert_eq!(e.code(), Some(&ErrorCode::Other("http".into())));
        assert_eq!(e.status(), Some(502));
    }

    #[test]
    fn every_code_round_trips_through_json_as_its_name() {
        for code in ErrorCode::KNOWN {
            let json = serde_json::to_string(code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(&serde_json::from_str::<ErrorCode>(&json).expect("parse"), code);
            assert_eq!(code.to_string(), code.as_str());
            assert!(!matches!(ErrorCode::parse(code.as_str()), ErrorCode::Other(_)), "{code}");
        }
        let names: std::collections::HashSet<&str> = ErrorCode::KNOWN.iter().map(ErrorCode::as_str).collect();
        assert_eq!(names.len(), ErrorCode::KNOWN.len(), "two codes share a name");
    }

    #[test]
    fn an_unknown_code_parses_to_other_and_goes_back_out_unchanged() {
        let body: ErrorBody = serde_json::from_str(r#"{"error":"quota_exceeded","message":"m"}"#).expect("parse");
        assert_eq!(body.error, ErrorCode::Other("quota_exceeded".into()));
        assert_eq!(body.error.status(), 500);
        let out = serde_json::to_string(&body).expect("serialize");
        assert_eq!(out, r#"{"error":"quota_exceeded","message":"m"}"#);
        let known: ErrorBody = serde_json::from_str(r#"{"error":"compacted","message":"m"}"#).expect("parse");
        assert_eq!(known.error, ErrorCode::Compacted);
    }

    #[test]
    fn a_body_is_the_code_as_a_string_and_the_message() {
        let body = ErrorBody { error: ErrorCode::CompareFailed, message: "m".into() };
        let out = serde_json::to_string(&body).expect("serialize");
        assert_eq!(out, r#"{"error":"compare_failed","message":"m"}"#);
    }

    #[test]
    fn statuses_are_the_ones_of_design_section_4() {
        use ErrorCode::*;
        let want: &[(ErrorCode, u16)] = &[
            (BadRequest, 400),
            (BadQuery, 400),
            (BadJson, 400),
            (InvalidKey, 400),
            (TlsRequired, 400),
            (Unauthorized, 401),
            (Forbidden, 403),
            (NotFound, 404),
            (MethodNotAllowed, 405),
            (NotJoinable, 409),
            (RequestIdExpired, 409),
            (TokenCreatedEarlier, 409),
            (Exists, 409),
            (Compacted, 410),
            (CompareFailed, 412),
            (TooLarge, 413),
            (Internal, 500),
            (Unavailable, 503),
            (UnknownOutcome, 504),
            (NoSpace, 507),
        ];
        assert_eq!(want.len(), ErrorCode::KNOWN.len(), "a code without its status here");
        for (code, status) in want {
            assert_eq!(code.status(), *status, "{code}");
        }
    }

    #[test]
    fn a_bare_status_stands_for_its_only_code() {
        assert_eq!(ErrorCode::from_status(404), Some(ErrorCode::NotFound));
        assert_eq!(ErrorCode::from_status(503), Some(ErrorCode::Unavailable));
        assert_eq!(ErrorCode::from_status(400), Some(ErrorCode::BadRequest));
        assert_eq!(ErrorCode::from_status(409), None, "four codes share it");
        assert_eq!(ErrorCode::from_status(502), None);
        assert!(ErrorCode::InvalidKey.is_invalid_request() && !ErrorCode::NotFound.is_invalid_request());
        assert!(ErrorCode::Forbidden.is_denied() && !ErrorCode::Compacted.is_denied());
    }
}
