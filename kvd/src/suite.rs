//! openraft's own storage conformance suite, run on the fjall store.

use openraft::testing::{StoreBuilder, Suite};

use crate::log_store::LogStore;
use crate::sm::StateMachine;
use crate::store::Store;
use crate::types::{StorageError, TypeConfig};

struct FjallBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for FjallBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let store = Store::open(dir.path()).map_err(|e| openraft::StorageIOError::write(&std::io::Error::other(e)))?;
        let sm = StateMachine::open(store.clone(), 1000).map_err(|e| openraft::StorageIOError::write(&e))?;
        Ok((dir, LogStore::new(store, 0)?, sm))
    }
}

#[test]
fn fjall_store_passes_openraft_suite() -> Result<(), StorageError> {
    let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    Suite::test_all(FjallBuilder)
}
