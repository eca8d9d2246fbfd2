//! What the store tests share: a managed ClickHouse server of their own.

#[allow(dead_code)] // not every test binary uses the sample fleet
pub mod sample;

use anyhow::Result;
use portolan_store::ClickHouseConfig;
use portolan_store::managed::{ManagedClickHouse, ManagedOptions};
use portolan_store::{BatchConfig, Store};

/// Logs of the code under test at `filter` and above, shown with the test's output.
pub fn init_tracing(filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A managed server in a temporary directory (removed after the server stops).
pub struct Server {
    pub clickhouse: ManagedClickHouse,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server, with the logs of the code under test at `log_filter`.
    pub async fn start(log_filter: &str) -> Result<Server> {
        init_tracing(log_filter);
        let dir = tempfile::tempdir()?;
        let clickhouse = ManagedClickHouse::start(ManagedOptions {
            state_dir: dir.path().to_path_buf(),
            binary: None,
        })
        .await?;
        Ok(Server {
            clickhouse,
            _dir: dir,
        })
    }

    /// How a collector reaches `database` on this server.
    #[allow(dead_code)] // not every test binary connects by configuration
    pub fn config(&self, database: &str) -> ClickHouseConfig {
        ClickHouseConfig {
            url: self.clickhouse.url(),
            database: database.to_string(),
            user: None,
            password: None,
            tls: Default::default(),
        }
    }

    /// A migrated store in its own database.
    pub async fn store(&self, database: &str) -> Result<Store> {
        Ok(self.clickhouse.migrated_store(database).await?)
    }

    /// A migrated store in its own database, grouping writes as `batching` says.
    #[allow(dead_code)] // only the group-commit tests choose their batching
    pub async fn batched_store(&self, database: &str, batching: BatchConfig) -> Result<Store> {
        Ok(self.store(database).await?.with_batching(batching))
    }

    pub async fn shutdown(self) -> Result<()> {
        self.clickhouse.shutdown().await?;
        Ok(())
    }
}
