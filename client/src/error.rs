//! What can go wrong talking to a cluster, and the one place an HTTP error
//! answer becomes an [`Error`].

use std::time::Duration;

use reqwest::{Response, StatusCode};

use crate::key::KeyError;
use crate::types::ErrorBody;

/// What can go wrong talking to a cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request; `code` and `message` are its JSON
    /// error body (DESIGN.md §4). Fix the request, or retry on 503.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Machine-readable code.
        code: String,
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
    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
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
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(b) => (b.error, b.message),
        Err(_) => ("http".to_owned(), String::from_utf8_lossy(&body).trim().to_owned()),
    };
    Err(Error::Api { status: status.as_u16(), code, message })
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
