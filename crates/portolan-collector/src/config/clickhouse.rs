//! `[clickhouse]` and `[clickhouse.tls]`: where inventories are stored, how the collector
//! proves who it is to the server, and how it verifies the server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portolan_store::{ClickHouseConfig, ClickHouseTls};
use serde::{Deserialize, Serialize};

/// `[clickhouse]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseSection {
    /// HTTP(S) URL of the ClickHouse server, e.g. `https://abc.eu-west-1.aws.clickhouse.cloud:8443`.
    /// Empty: run a managed local ClickHouse from the `clickhouse-server` binary on this
    /// machine, with its data under `state_dir`.
    pub url: String,
    /// Database; created when missing.
    pub database: String,
    /// User; empty for `default`.
    pub user: String,
    /// Password; empty for none. Prefer `password_file` or `PORTOLAN_CLICKHOUSE_PASSWORD`
    /// to writing it here.
    pub password: String,
    /// A file holding the password (its first line; a Kubernetes Secret or systemd
    /// credential mounted as a file). Empty: `password`.
    pub password_file: String,
    /// Path of the `clickhouse-server` binary for the managed server; empty: search PATH.
    pub binary: String,
    /// Group commit: batches of the changes and heartbeats of all agents are written one
    /// at a time, one INSERT per table, and start at least this long apart. At rest a
    /// change is written at once; under load, what arrives meanwhile joins the next
    /// batch. Longer: fewer, larger INSERTs (less merging for ClickHouse) and later
    /// acknowledgements under load. `"0s"`: every change is written on its own.
    #[serde(with = "portolan_config::duration")]
    pub batch_window: Duration,
    /// A batch holding this many rows is written without waiting for the window to close.
    pub batch_max_rows: u32,
    /// TLS to an `https://` URL.
    pub tls: ClickHouseTlsSection,
}

/// `[clickhouse.tls]`: how an `https://` server is verified and what the collector
/// presents to it. All empty (the default): the system's CAs, no client certificate,
/// which is what ClickHouse Cloud needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseTlsSection {
    /// PEM file of the CA certificates to trust for the server instead of the system's
    /// (a private CA, a self-signed server). Empty: the system's.
    pub ca: String,
    /// PEM file of a client certificate, for servers that require one. Needs `key`.
    pub cert: String,
    /// PEM file of the private key of `cert`.
    pub key: String,
}

impl Default for ClickHouseSection {
    fn default() -> Self {
        ClickHouseSection {
            url: String::new(),
            database: "portolan".into(),
            user: String::new(),
            password: String::new(),
            password_file: String::new(),
            binary: String::new(),
            batch_window: portolan_store::BatchConfig::default().window,
            batch_max_rows: 100_000,
            tls: ClickHouseTlsSection::default(),
        }
    }
}

fn path(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

impl ClickHouseSection {
    /// How the store groups writes.
    pub fn batching(&self) -> portolan_store::BatchConfig {
        if self.batch_window.is_zero() {
            return portolan_store::BatchConfig::unbatched();
        }
        portolan_store::BatchConfig {
            window: self.batch_window,
            max_rows: self.batch_max_rows as usize,
        }
    }

    /// How the store reaches the server at `url` (this section's, or the managed
    /// server's): credentials, the password read from `password_file` when one is named,
    /// and TLS.
    pub fn store_config(&self, url: String) -> Result<ClickHouseConfig, PasswordFileError> {
        Ok(ClickHouseConfig {
            url,
            database: self.database.clone(),
            user: (!self.user.is_empty()).then(|| self.user.clone()),
            password: self.password()?,
            tls: ClickHouseTls {
                ca: path(&self.tls.ca),
                cert: path(&self.tls.cert),
                key: path(&self.tls.key),
            },
        })
    }

    /// `password`, or the first line of `password_file`; `None` when neither is set.
    fn password(&self) -> Result<Option<String>, PasswordFileError> {
        if self.password_file.is_empty() {
            return Ok((!self.password.is_empty()).then(|| self.password.clone()));
        }
        let file = Path::new(&self.password_file);
        let text = std::fs::read_to_string(file).map_err(|error| PasswordFileError {
            path: file.to_path_buf(),
            error,
        })?;
        let line = text.lines().next().unwrap_or_default();
        Ok((!line.is_empty()).then(|| line.to_string()))
    }

    /// Adds every problem of `[clickhouse]` to `problems`.
    pub(super) fn validate(&self, problems: &mut Vec<String>) {
        if self.database.is_empty()
            || !self
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            problems.push(format!(
                "`clickhouse.database` is `{}`; use letters, digits and `_`",
                self.database
            ));
        }
        if self.batch_window > Duration::from_secs(5) {
            problems.push(
                "`clickhouse.batch_window` is over 5s; agents would wait that long for each acknowledgement (250ms is plenty)"
                    .into(),
            );
        }
        if !self.batch_window.is_zero() && self.batch_max_rows == 0 {
            problems.push(
                "`clickhouse.batch_max_rows` must be positive (set `clickhouse.batch_window = \"0s\"` to write every change on its own)"
                    .into(),
            );
        }
        if !self.password.is_empty() && !self.password_file.is_empty() {
            problems.push(
                "`clickhouse.password` and `clickhouse.password_file` are both set; keep one (the file)"
                    .into(),
            );
        }
        let url = self.url.to_ascii_lowercase();
        let https = url.starts_with("https://");
        if !self.url.is_empty() && !https && !url.starts_with("http://") {
            problems.push(format!(
                "`clickhouse.url` is `{}`; use an http:// or https:// URL (ClickHouse's HTTP interface, 8123 or 8443 by default)",
                super::without_credentials(&self.url)
            ));
        }
        let tls = &self.tls;
        if tls.cert.is_empty() != tls.key.is_empty() {
            problems.push(
                "`clickhouse.tls.cert` and `clickhouse.tls.key` go together: set both or neither"
                    .into(),
            );
        }
        let tls_set = !(tls.ca.is_empty() && tls.cert.is_empty() && tls.key.is_empty());
        if tls_set && !https {
            problems.push(
                "`[clickhouse.tls]` is set but `clickhouse.url` is not an https:// URL; use the server's https:// URL (its `https_port`) or clear `[clickhouse.tls]`"
                    .into(),
            );
        }
    }
}

/// `clickhouse.password_file` cannot be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read `clickhouse.password_file` at {}: {error} (check that it exists and that the collector's user may read it)",
    path.display()
)]
pub struct PasswordFileError {
    /// The file.
    pub path: PathBuf,
    /// What the operating system said.
    #[source]
    pub error: std::io::Error,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::CollectorConfig;

    fn problems(section: ClickHouseSection) -> Vec<String> {
        let mut out = Vec::new();
        section.validate(&mut out);
        out
    }

    #[test]
    fn tls_and_password_problems_are_reported() {
        let text = problems(ClickHouseSection {
            url: "http://ch:8123".into(),
            password: "a".into(),
            password_file: "/run/secrets/ch".into(),
            tls: ClickHouseTlsSection {
                ca: String::new(),
                cert: "/etc/portolan/ch.pem".into(),
                key: String::new(),
            },
            ..ClickHouseSection::default()
        })
        .join("\n");
        for expected in [
            "`clickhouse.password_file` are both set",
            "`clickhouse.tls.cert` and `clickhouse.tls.key` go together",
            "`[clickhouse.tls]` is set but `clickhouse.url` is not an https:// URL",
        ] {
            assert!(text.contains(expected), "{expected} missing in:\n{text}");
        }
        let bad_scheme = problems(ClickHouseSection {
            url: "tcp://u:secret@ch:9000".into(),
            ..ClickHouseSection::default()
        });
        assert_eq!(bad_scheme.len(), 1, "{bad_scheme:?}");
        assert!(bad_scheme[0].contains("`tcp://ch:9000`"), "{bad_scheme:?}");
        assert!(
            problems(ClickHouseSection {
                url: "HTTPS://ch.example:8443".into(),
                tls: ClickHouseTlsSection {
                    ca: "/etc/portolan/ch-ca.pem".into(),
                    cert: "/etc/portolan/ch.pem".into(),
                    key: "/etc/portolan/ch.key".into(),
                },
                ..ClickHouseSection::default()
            })
            .is_empty()
        );
    }

    #[test]
    fn the_tls_table_and_the_password_file_load_from_toml_and_the_environment()
    -> Result<(), portolan_config::ConfigError> {
        let file = std::env::temp_dir().join(format!(
            "portolan-clickhouse-config-{}.toml",
            std::process::id()
        ));
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|error| portolan_config::ConfigError::Read {
                path: path.display().to_string(),
                error,
            })
        };
        write(
            &file,
            "[clickhouse]\nurl = \"https://ch.example:8443\"\n[clickhouse.tls]\nca = \"/etc/portolan/ch-ca.pem\"\n",
        )?;
        let env = BTreeMap::from([
            (
                "PORTOLAN_CLICKHOUSE_TLS_CERT".to_string(),
                "/etc/portolan/ch.pem".to_string(),
            ),
            (
                "PORTOLAN_CLICKHOUSE_TLS_KEY".to_string(),
                "/etc/portolan/ch.key".to_string(),
            ),
            (
                "PORTOLAN_CLICKHOUSE_PASSWORD".to_string(),
                "from-the-environment".to_string(),
            ),
        ]);
        let config: CollectorConfig =
            portolan_config::load(Some(&file), &env, "PORTOLAN_", toml::Table::new())?;
        let _ = std::fs::remove_file(&file);
        assert_eq!(config.validate(), Ok(()));
        let store = config
            .clickhouse
            .store_config(config.clickhouse.url.clone())
            .expect("no password file to read");
        assert_eq!(store.password.as_deref(), Some("from-the-environment"));
        assert_eq!(
            store.tls,
            ClickHouseTls {
                ca: Some(PathBuf::from("/etc/portolan/ch-ca.pem")),
                cert: Some(PathBuf::from("/etc/portolan/ch.pem")),
                key: Some(PathBuf::from("/etc/portolan/ch.key")),
            }
        );
        Ok(())
    }

    #[test]
    fn the_password_file_gives_its_first_line_and_a_missing_one_says_what_to_check() {
        let dir = std::env::temp_dir().join(format!("portolan-ch-password-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let file = dir.join("password");
        std::fs::write(&file, "s3cret\n").expect("written");
        let section = ClickHouseSection {
            password_file: file.display().to_string(),
            ..ClickHouseSection::default()
        };
        let store = section
            .store_config("https://ch:8443".into())
            .expect("a readable file");
        assert_eq!(store.password.as_deref(), Some("s3cret"));
        let _ = std::fs::remove_dir_all(&dir);
        let err = section
            .store_config("https://ch:8443".into())
            .expect_err("the file is gone");
        let text = err.to_string();
        assert!(text.contains("`clickhouse.password_file`"), "{text}");
        assert!(text.contains(&file.display().to_string()), "{text}");
    }
}
