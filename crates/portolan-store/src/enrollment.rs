//! Enrollment's state: bootstrap tokens (hashed) and host keys, in ClickHouse so that
//! every collector replica sees the same tokens, bindings and retirements.
//!
//! - `enroll_tokens`: one row per token, the latest per id wins (`version`). The secret
//!   is stored as its SHA-256 only.
//! - `host_keys`: one row per (host, key), the latest wins: where the key stands
//!   ([`KeyState`]), the token it came with, the token's labels, who decided and when.
//!   A token's uses are the keys recorded with it.
//!
//! What a decision means is `portolan_core::enrollment`'s; this module reads and writes.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use clickhouse::Row;
use portolan_core::enrollment::{KeyRecord, KeyState};
use serde::{Deserialize, Serialize};

use super::rows::{to_datetime, to_nanos};
use super::schema::table;
use super::{Store, StoreError};

/// `enroll_tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub(crate) struct TokenRow {
    pub(crate) id: String,
    pub(crate) secret_sha256: String,
    pub(crate) host_patterns: Vec<String>,
    pub(crate) label_keys: Vec<String>,
    pub(crate) label_values: Vec<String>,
    pub(crate) created_by: String,
    pub(crate) description: String,
    pub(crate) created_at: u32,
    pub(crate) expires_at: u32,
    pub(crate) max_uses: u32,
    pub(crate) revoked: u8,
    pub(crate) version: u64,
}

/// `host_keys`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub(crate) struct HostKeyRow {
    pub(crate) host_id: String,
    pub(crate) key_sha256: String,
    pub(crate) state: String,
    pub(crate) token_id: String,
    pub(crate) label_keys: Vec<String>,
    pub(crate) label_values: Vec<String>,
    pub(crate) requested_at: u32,
    pub(crate) decided_at: u32,
    pub(crate) decided_by: String,
    pub(crate) version: u64,
}

/// Every token, latest row per id.
pub(crate) const ALL_TOKENS: &str =
    "SELECT ?fields FROM enroll_tokens FINAL ORDER BY created_at, id";
/// One token.
pub(crate) const TOKEN_BY_ID: &str = "SELECT ?fields FROM enroll_tokens FINAL WHERE id = ?";
/// How many keys each token recorded.
pub(crate) const TOKEN_USES: &str = "SELECT token_id, toUInt64(count()) FROM host_keys FINAL WHERE token_id != '' GROUP BY token_id ORDER BY token_id";
/// How many keys one token recorded.
pub(crate) const USES_OF_TOKEN: &str =
    "SELECT toUInt64(count()) FROM host_keys FINAL WHERE token_id = ?";
/// Every key of one host.
pub(crate) const KEYS_OF_HOST: &str =
    "SELECT ?fields FROM host_keys FINAL WHERE host_id = ? ORDER BY key_sha256";
/// Every key of every host.
pub(crate) const ALL_KEYS: &str =
    "SELECT ?fields FROM host_keys FINAL ORDER BY host_id, key_sha256";
/// Removes a retired host's current sockets (history stays).
pub(crate) const DELETE_CURRENT_SOCKETS: &str =
    "ALTER TABLE sockets_current DELETE WHERE host_id = ?";
/// Removes a retired host's current flows (history stays).
pub(crate) const DELETE_CURRENT_FLOWS: &str = "ALTER TABLE flows_current DELETE WHERE host_id = ?";
/// How many current rows a host has, sockets and flows.
pub(crate) const COUNT_CURRENT: &str = "SELECT (SELECT count() FROM sockets_current WHERE host_id = ?) + (SELECT count() FROM flows_current WHERE host_id = ?)";

/// A bootstrap token as stored (its secret only hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Public identifier.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// Glob patterns a host_id must match; empty: any.
    pub host_patterns: Vec<String>,
    /// Labels every host enrolled with it carries.
    pub labels: BTreeMap<String, String>,
    /// The admin who created it (identity URI).
    pub created_by: String,
    /// Free text.
    pub description: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// 0: unlimited.
    pub max_uses: u32,
    /// Revoked by an admin.
    pub revoked: bool,
    /// Orders writes of the same token.
    pub version: u64,
}

/// One key of one host as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHostKey {
    /// The decision-relevant part.
    pub record: KeyRecord,
    /// The token it enrolled with (empty for a retirement record or an adopted key).
    pub token_id: String,
    /// The token's labels, given to the host.
    pub labels: BTreeMap<String, String>,
    /// Unix seconds of the first request with this key.
    pub requested_at: i64,
    /// Who decided: an admin's identity URI, `token` or `policy`.
    pub decided_by: String,
    /// Orders writes of the same key.
    pub version: u64,
}

fn labels_of(keys: Vec<String>, values: Vec<String>) -> BTreeMap<String, String> {
    keys.into_iter().zip(values).collect()
}

fn secs(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

impl From<TokenRow> for StoredToken {
    fn from(r: TokenRow) -> StoredToken {
        StoredToken {
            labels: labels_of(r.label_keys, r.label_values),
            id: r.id,
            secret_sha256: r.secret_sha256,
            host_patterns: r.host_patterns,
            created_by: r.created_by,
            description: r.description,
            created_at: i64::from(r.created_at),
            expires_at: i64::from(r.expires_at),
            max_uses: r.max_uses,
            revoked: r.revoked != 0,
            version: r.version,
        }
    }
}

impl From<&StoredToken> for TokenRow {
    fn from(t: &StoredToken) -> TokenRow {
        TokenRow {
            id: t.id.clone(),
            secret_sha256: t.secret_sha256.clone(),
            host_patterns: t.host_patterns.clone(),
            label_keys: t.labels.keys().cloned().collect(),
            label_values: t.labels.values().cloned().collect(),
            created_by: t.created_by.clone(),
            description: t.description.clone(),
            created_at: secs(t.created_at),
            expires_at: secs(t.expires_at),
            max_uses: t.max_uses,
            revoked: u8::from(t.revoked),
            version: t.version,
        }
    }
}

impl From<HostKeyRow> for StoredHostKey {
    fn from(r: HostKeyRow) -> StoredHostKey {
        StoredHostKey {
            record: KeyRecord {
                host_id: r.host_id,
                key_sha256: r.key_sha256,
                // A state this version does not know refuses the key: the safe reading.
                state: r.state.parse().unwrap_or(KeyState::Denied),
                decided_at: i64::from(r.decided_at),
            },
            labels: labels_of(r.label_keys, r.label_values),
            token_id: r.token_id,
            requested_at: i64::from(r.requested_at),
            decided_by: r.decided_by,
            version: r.version,
        }
    }
}

impl From<&StoredHostKey> for HostKeyRow {
    fn from(k: &StoredHostKey) -> HostKeyRow {
        HostKeyRow {
            host_id: k.record.host_id.clone(),
            key_sha256: k.record.key_sha256.clone(),
            state: k.record.state.as_str().to_owned(),
            token_id: k.token_id.clone(),
            label_keys: k.labels.keys().cloned().collect(),
            label_values: k.labels.values().cloned().collect(),
            requested_at: secs(k.requested_at),
            decided_at: secs(k.record.decided_at),
            decided_by: k.decided_by.clone(),
            version: k.version,
        }
    }
}

/// A version above `previous` and at least the time now (nanoseconds): the latest write
/// wins even when replicas' clocks disagree a little.
pub fn next_version(previous: u64) -> u64 {
    to_nanos(SystemTime::now()).max(previous.saturating_add(1))
}

/// Unix seconds now.
pub fn now_secs() -> i64 {
    i64::from(to_datetime(SystemTime::now()))
}

impl Store {
    /// Every token (revoked and expired ones too), oldest first.
    pub async fn enroll_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let rows: Vec<TokenRow> = self
            .fetch(table::ENROLL_TOKENS, self.client.query(ALL_TOKENS))
            .await?;
        Ok(rows.into_iter().map(StoredToken::from).collect())
    }

    /// One token.
    pub async fn enroll_token(&self, id: &str) -> Result<Option<StoredToken>, StoreError> {
        let rows: Vec<TokenRow> = self
            .fetch(
                table::ENROLL_TOKENS,
                self.client.query(TOKEN_BY_ID).bind(id),
            )
            .await?;
        Ok(rows.into_iter().next().map(StoredToken::from))
    }

    /// Writes a token (a new one, or a new version of one).
    pub async fn write_enroll_token(&self, token: &StoredToken) -> Result<(), StoreError> {
        self.insert(table::ENROLL_TOKENS, &[TokenRow::from(token)])
            .await?;
        Ok(())
    }

    /// How many keys each token recorded (tokens without any are absent).
    pub async fn enroll_token_uses(&self) -> Result<HashMap<String, u32>, StoreError> {
        let _turn = self.turn().await;
        let rows: Vec<(String, u64)> = self
            .client
            .query(TOKEN_USES)
            .fetch_all()
            .await
            .map_err(self.map_err("read", table::HOST_KEYS))?;
        Ok(rows
            .into_iter()
            .map(|(id, n)| (id, u32::try_from(n).unwrap_or(u32::MAX)))
            .collect())
    }

    /// How many keys the token `id` recorded.
    pub async fn enroll_token_uses_of(&self, id: &str) -> Result<u32, StoreError> {
        let _turn = self.turn().await;
        let n: u64 = self
            .client
            .query(USES_OF_TOKEN)
            .bind(id)
            .fetch_one()
            .await
            .map_err(self.map_err("read", table::HOST_KEYS))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Every key of `host_id`.
    pub async fn host_keys_of(&self, host_id: &str) -> Result<Vec<StoredHostKey>, StoreError> {
        let rows: Vec<HostKeyRow> = self
            .fetch(
                table::HOST_KEYS,
                self.client.query(KEYS_OF_HOST).bind(host_id),
            )
            .await?;
        Ok(rows.into_iter().map(StoredHostKey::from).collect())
    }

    /// Every key of every host.
    pub async fn host_keys(&self) -> Result<Vec<StoredHostKey>, StoreError> {
        let rows: Vec<HostKeyRow> = self
            .fetch(table::HOST_KEYS, self.client.query(ALL_KEYS))
            .await?;
        Ok(rows.into_iter().map(StoredHostKey::from).collect())
    }

    /// Writes keys' new states (one INSERT: a decision that changes two keys, such as an
    /// approval superseding the bound key, lands whole or not at all).
    pub async fn write_host_keys(&self, keys: &[StoredHostKey]) -> Result<(), StoreError> {
        let rows: Vec<HostKeyRow> = keys.iter().map(HostKeyRow::from).collect();
        self.insert(table::HOST_KEYS, &rows).await?;
        Ok(())
    }

    /// Removes `host_id`'s current sockets and flows (its history stays), and returns how
    /// many rows there were. ClickHouse deletes in the background (a mutation): the rows
    /// leave within seconds.
    pub async fn delete_current_state(&self, host_id: &str) -> Result<u64, StoreError> {
        let _turn = self.turn().await;
        let before: u64 = self
            .client
            .query(COUNT_CURRENT)
            .bind(host_id)
            .bind(host_id)
            .fetch_one()
            .await
            .map_err(self.map_err("read", table::SOCKETS_CURRENT))?;
        for (statement, table) in [
            (DELETE_CURRENT_SOCKETS, table::SOCKETS_CURRENT),
            (DELETE_CURRENT_FLOWS, table::FLOWS_CURRENT),
        ] {
            self.client
                .query(statement)
                .bind(host_id)
                .execute()
                .await
                .map_err(self.map_err("delete from", table))?;
        }
        Ok(before)
    }

    /// How many current socket and flow rows `host_id` has (removed ones included).
    pub async fn current_rows(&self, host_id: &str) -> Result<u64, StoreError> {
        let _turn = self.turn().await;
        self.client
            .query(COUNT_CURRENT)
            .bind(host_id)
            .bind(host_id)
            .fetch_one()
            .await
            .map_err(self.map_err("read", table::SOCKETS_CURRENT))
    }
}
