//! The collector's configuration: `portolan-collector.toml`, `PORTOLAN_*` variables, flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use portolan_tls::TlsFiles;
use serde::{Deserialize, Serialize};

/// Everything the collector can be configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Configuration format version; 1.
    pub version: u32,
    /// This replica's name in logs and in the `hosts` table; empty: the machine's hostname.
    pub name: String,
    /// Address the gRPC server listens on (mutual TLS only).
    pub listen: SocketAddr,
    /// Directory for the managed ClickHouse and other local state.
    pub state_dir: PathBuf,
    /// Certificates.
    pub tls: TlsFiles,
    /// Where inventories are stored.
    pub clickhouse: ClickHouseSection,
    /// Bounds on what an agent may send.
    pub limits: LimitsSection,
    /// Exposure rules.
    pub rules: RulesSection,
}

/// `[rules]`: the exposure rules this replica evaluates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesSection {
    /// Whether this replica evaluates the rules. One evaluating replica is enough: set it
    /// on exactly one collector.
    pub evaluate: bool,
    /// Rule files (YAML), e.g. the default pack `deploy/rules/default.yaml`.
    pub files: Vec<PathBuf>,
    /// How often the rules run.
    #[serde(with = "portolan_config::duration")]
    pub interval: std::time::Duration,
}

impl Default for RulesSection {
    fn default() -> Self {
        RulesSection {
            evaluate: false,
            files: Vec::new(),
            interval: std::time::Duration::from_secs(30),
        }
    }
}

/// `[clickhouse]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSection {
    /// HTTP URL of the ClickHouse server. Empty: run a managed local ClickHouse from the
    /// `clickhouse-server` binary on this machine, with its data under `state_dir`.
    pub url: String,
    /// Database; created when missing.
    pub database: String,
    /// User; empty for `default`.
    pub user: String,
    /// Password; empty for none. Prefer `PORTOLAN_CLICKHOUSE_PASSWORD` to the file.
    pub password: String,
    /// Path of the `clickhouse-server` binary for the managed server; empty: search PATH.
    pub binary: String,
}

/// `[limits]`: every input is bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest encoded message accepted, in bytes.
    pub max_message_bytes: u32,
    /// Most sockets + flows + processes in one message.
    pub max_sockets_per_message: u32,
    /// Most sockets + flows in one snapshot (all parts together).
    pub max_snapshot_items: u32,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            version: 1,
            name: String::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            state_dir: PathBuf::from("/var/lib/portolan-collector"),
            tls: TlsFiles {
                ca: PathBuf::from("/etc/portolan/ca.pem"),
                cert: PathBuf::from("/etc/portolan/collector.pem"),
                key: PathBuf::from("/etc/portolan/collector.key"),
            },
            clickhouse: ClickHouseSection::default(),
            limits: LimitsSection::default(),
            rules: RulesSection::default(),
        }
    }
}

impl Default for ClickHouseSection {
    fn default() -> Self {
        ClickHouseSection {
            url: String::new(),
            database: "portolan".into(),
            user: String::new(),
            password: String::new(),
            binary: String::new(),
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_message_bytes: 16 * 1024 * 1024,
            max_sockets_per_message: 20_000,
            max_snapshot_items: 1_000_000,
        }
    }
}

impl CollectorConfig {
    /// Checks what types alone cannot, reporting every problem at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.version != 1 {
            problems.push(format!(
                "`version` is {}; this collector reads version 1",
                self.version
            ));
        }
        if self.clickhouse.database.is_empty()
            || !self
                .clickhouse
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            problems.push(format!(
                "`clickhouse.database` is `{}`; use letters, digits and `_`",
                self.clickhouse.database
            ));
        }
        if self.limits.max_message_bytes < 64 * 1024 {
            problems.push(
                "`limits.max_message_bytes` is under 64 KiB; agents could not send a snapshot part"
                    .into(),
            );
        }
        if self.limits.max_sockets_per_message == 0 || self.limits.max_snapshot_items == 0 {
            problems.push(
                "`limits.max_sockets_per_message` and `limits.max_snapshot_items` must be positive"
                    .into(),
            );
        }
        if self.rules.evaluate && self.rules.files.is_empty() {
            problems.push("`rules.evaluate` is true but `rules.files` names no rule file".into());
        }
        if self.rules.interval < std::time::Duration::from_secs(1) {
            problems.push("`rules.interval` is under 1s".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The TLS files as portolan-tls wants them.
    pub fn tls_files(&self) -> TlsFiles {
        self.tls.clone()
    }
}
