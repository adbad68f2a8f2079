//! kv-client: the wire types of kv's client API and an async client for it.
//!
//! This crate is what `kvfs`, `kvctl` and other programs link to talk to a
//! cluster. It depends on neither openraft nor fjall; the server lives in
//! `kvd`. Key validation lives here too, so every program refuses a bad key
//! the same way the server does.

mod auth;
mod client;
pub mod clock;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod key;
mod lean;
pub mod mounts;
mod pages;
mod path;
mod types;
mod watch;

pub use auth::{
    validate_token_name, Access, Grants, NewToken, TokenInfo, TokenSpec, WhoAmI, ANONYMOUS, NODE_WRITER,
    RESERVED_TOKEN_NAMES,
};
pub use client::{Client, ClientOptions, ListOptions, PutOptions, Value, DEFAULT_REQUEST_TIMEOUT, MEMBER_IDLE_CLOSE};
pub use clock::Utc;
pub use error::{Error, ErrorCode};
pub use key::{
    dirs_changed, key_in_prefix, normalize_prefix, validate_key, KeyChange, KeyError, MAX_KEY_BYTES, MAX_SEGMENT_BYTES,
};
pub use lean::{LeanError, LeanHttp};
pub use pages::{pages, Cursor, Paged, Pages};
pub use path::{decode_key, encode_key};
/// HTTP methods, for [`Client::send`].
pub use reqwest::Method;
pub use types::{
    decode_value, device_number, device_value, header, AddMember, Attrs, ClusterInfo, Compare, EntryInfo, ErrorBody,
    EventType, HistoryResponse, KeyVersion, Kind, Limits, ListResponse, MemberInfo, Meta, NodeStatus, OpResult,
    Touched, TransferLeader, TxnOp, TxnRequest, TxnResponse, WatchEvent, MAX_MAJOR, MAX_MINOR,
};
pub use watch::{Resuming, Watch, WatchMessage};
