//! The real cluster: [`Cluster`] over the HTTP client, every call bounded
//! in time.

use std::time::Duration;

use kv_client::{Client, ErrorCode, ListOptions, Paged, PutOptions, TxnRequest, TxnResponse, WatchMessage};

use crate::cluster::{Batch, Cluster, Events, Failure, Page, Written};

thread_local! {
    /// The runtime and client of a thread's cluster calls.
    static THREAD_CLIENT: std::cell::RefCell<Option<(tokio::runtime::Runtime, Client)>> =
        const { std::cell::RefCell::new(None) };
}

/// A kv cluster reached over HTTP.
pub struct Remote {
    /// The client (fails over between endpoints).
    pub client: Client,
    /// Bound on one call.
    pub timeout: Duration,
}

/// What a client error means to a mount.
pub fn failure(e: &kv_client::Error) -> Failure {
    match e {
        kv_client::Error::Api { code, .. } => match code {
            ErrorCode::CompareFailed => Failure::Conflict,
            ErrorCode::Compacted => Failure::Compacted,
            ErrorCode::TooLarge => Failure::TooLarge,
            ErrorCode::NoSpace => Failure::NoSpace,
            ErrorCode::NotFound => Failure::NotFound,
            c if c.is_denied() => Failure::Denied,
            c if c.is_invalid_request() => Failure::Invalid { too_long: false },
            _ => Failure::Unavailable,
        },
        kv_client::Error::InvalidKey(k) => Failure::Invalid { too_long: k.is_too_long() },
        _ => Failure::Unavailable,
    }
}

impl Remote {
    /// Runs a client call, waiting at most the bound.
    ///
    /// NOTE: the call runs on the calling thread, on a runtime and a client
    /// of that thread's own: its socket is read and written right here. On
    /// a shared runtime, the connection's task ran on a worker thread and
    /// two thread wake-ups were added to every write.
    fn call<T>(&self, what: &str, f: impl AsyncFnOnce(&Client) -> Result<T, kv_client::Error>) -> Result<T, Failure> {
        let result = THREAD_CLIENT.with(|cell| -> Result<_, Failure> {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
                    tracing::error!(error = %e, "cannot start a runtime for cluster calls");
                    Failure::Unavailable
                })?;
                let client = self.client.with_endpoints(self.client.endpoints()).map_err(|e| {
                    tracing::error!(error = %e, "cannot set up a client for cluster calls");
                    Failure::Unavailable
                })?;
                *slot = Some((rt, client));
            }
            let (rt, client) = slot.as_ref().ok_or(Failure::Unavailable)?;
            Ok(rt.block_on(async { tokio::time::timeout(self.timeout, f(client)).await }))
        })?;
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, op = what, "cluster request failed");
                Err(failure(&e))
            }
            Err(_) => {
                tracing::warn!(
                    op = what,
                    timeout_ms = self.timeout.as_millis() as u64,
                    "cluster did not answer in time"
                );
                Err(Failure::Unavailable)
            }
        }
    }

    /// Who the cluster takes the mount's token for.
    pub fn whoami(&self) -> Result<kv_client::WhoAmI, Failure> {
        self.call("whoami", async |c| c.whoami().await)
    }
}

impl Cluster for Remote {
    fn put(&self, key: &str, value: Vec<u8>, opts: &PutOptions) -> Result<u64, Failure> {
        self.put_at(key, value, opts).map(|w| w.revision)
    }

    fn put_at(&self, key: &str, value: Vec<u8>, opts: &PutOptions) -> Result<Written, Failure> {
        self.call("write", async |c| c.put(key, value.clone(), opts).await).map(|r| Written::of(&r))
    }

    fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, Failure> {
        self.call("txn", async |c| c.txn(txn).await)
    }

    fn delete(&self, key: &str) -> Result<u64, Failure> {
        self.delete_at(key).map(|w| w.revision)
    }

    fn delete_at(&self, key: &str) -> Result<Written, Failure> {
        self.call("delete", async |c| c.delete(key, false, None).await).map(|r| Written::of(&r))
    }

    fn probe(&self) -> Result<(), Failure> {
        self.call("probe", async |c| c.get_json("/health/ready").await).map(|_| ())
    }

    fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Page, Failure> {
        let opts = ListOptions {
            recursive: true,
            values: true,
            limit: Some(limit),
            after: after.map(str::to_owned),
            ..Default::default()
        };
        let page = self.call("list", async |c| c.list(prefix, &opts).await)?;
        let next_after = page.next_cursor().map(str::to_owned);
        Ok(Page { revision: page.revision, entries: page.entries, next_after })
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Box<dyn Events>, Failure> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
            tracing::error!(error = %e, "cannot start a runtime for the watch");
            Failure::Unavailable
        })?;
        // NOTE: from the endpoint after the one whose stream failed, so a
        // frozen member is not the first one asked again: the watch moves
        // the choice of member it shares with `self.client` past its own
        // when it fails.
        let client = self.client.with_own_connections().map_err(|_| Failure::Unavailable)?;
        let watch = rt.block_on(client.watch(prefix, Some(after))).map_err(|e| {
            tracing::warn!(error = %e, "cannot watch");
            failure(&e)
        })?;
        tracing::info!(endpoint = watch.endpoint(), after, "watching");
        Ok(Box::new(RemoteEvents { rt, watch, pending: Vec::new() }))
    }
}

/// A watch stream, cut into whole revisions.
struct RemoteEvents {
    rt: tokio::runtime::Runtime,
    watch: kv_client::Watch,
    pending: Vec<kv_client::WatchEvent>,
}

impl Events for RemoteEvents {
    fn next(&mut self) -> Result<Option<Batch>, Failure> {
        loop {
            let ev = match self.rt.block_on(self.watch.next_message()) {
                Ok(Some(WatchMessage::Event(ev))) => ev,
                Ok(Some(WatchMessage::Progress { revision })) => {
                    if self.pending.is_empty() {
                        return Ok(Some(Batch { revision, events: Vec::new() }));
                    }
                    continue;
                }
                Ok(None) => return Ok(None),
                Err(e) => {
                    tracing::warn!(error = %e, endpoint = self.watch.endpoint(), "watch stream failed");
                    return Err(failure(&e));
                }
            };
            let revision = ev.revision;
            self.pending.push(ev);
            // NOTE: the last event of a revision carries the resume id.
            if self.watch.last_revision() == Some(revision) {
                return Ok(Some(Batch { revision, events: std::mem::take(&mut self.pending) }));
            }
        }
    }

    fn quiet_after(&self) -> Option<Duration> {
        // NOTE: two missed keepalives; the client gives the stream up at three.
        self.watch.keepalive().map(|k| k * 2)
    }

    fn endpoint(&self) -> Option<String> {
        Some(self.watch.endpoint().to_owned())
    }
}
