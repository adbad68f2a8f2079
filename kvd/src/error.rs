//! Why kvd cannot start or restore: one error type for the library, whose
//! message names what was being done and why it failed.

/// A failure to start a node or restore a data dir.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting, file or data dir is not usable as it is; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// `what` failed because of `source` (and what caused that, in turn).
    #[error("{what}: {}", chain(source.as_ref()))]
    Failed {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file or socket operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The data dir cannot be locked or opened.
    #[error(transparent)]
    Open(Box<crate::store::OpenError>),
    /// The database failed.
    #[error(transparent)]
    Db(Box<fjall::Error>),
    /// The Raft log or state machine failed.
    #[error(transparent)]
    Storage(Box<crate::types::StorageError>),
    /// Raft stopped.
    #[error(transparent)]
    Raft(Box<openraft::error::Fatal<crate::types::NodeId>>),
}

/// An error and its causes, outermost first, joined by ": ".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

macro_rules! boxed_from {
    ($($variant:ident($t:ty)),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(
    Open(crate::store::OpenError),
    Db(fjall::Error),
    Storage(crate::types::StorageError),
    Raft(openraft::error::Fatal<crate::types::NodeId>)
);

/// A result of [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names what a fallible step was doing, for [`Error::Failed`].
pub(crate) trait Context<T> {
    /// The error, as a failure of `what`.
    fn context(self, what: impl Into<String>) -> Result<T>;
    /// The error, as a failure of what `what` says, worked out only then.
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Box<dyn std::error::Error + Send + Sync>>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Failed { what: what.into(), source: e.into() })
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Failed { what: what().into(), source: e.into() })
    }
}

/// Returns [`Error::Invalid`] with a formatted message.
macro_rules! invalid {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Invalid(format!($($arg)*)))
    };
}
pub(crate) use invalid;
