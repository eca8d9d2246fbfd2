//! Where the store's ClickHouse is and what it is: version and schema flavour.

use crate::ClickHouseTls;
use crate::schema::Flavor;

/// Where the store's ClickHouse is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClickHouseConfig {
    /// HTTP URL, e.g. `http://127.0.0.1:8123` or `https://abc.clickhouse.cloud:8443`.
    pub url: String,
    /// Database; created when missing. Letters, digits and `_`.
    pub database: String,
    /// User; `None`: the server's `default` user.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// How an `https://` server is verified and what the store presents to it.
    pub tls: ClickHouseTls,
}

/// What the server is, detected once at [`crate::Store::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerInfo {
    /// `SELECT version()`, first three components.
    pub version: (u32, u32, u32),
    /// True for servers before [`crate::schema::MODERN_SINCE`]: legacy schema, row validation
    /// off.
    pub legacy: bool,
}

impl ServerInfo {
    /// Which schema dialect the server gets.
    pub fn flavor(&self) -> Flavor {
        if self.legacy {
            Flavor::Legacy
        } else {
            Flavor::Modern
        }
    }

    pub(crate) fn describe(&self) -> String {
        let (a, b, c) = self.version;
        if self.legacy {
            format!(
                "clickhouse {a}.{b}.{c}: legacy schema path (no TTL, no LowCardinality, row validation off)"
            )
        } else {
            format!(
                "clickhouse {a}.{b}.{c}: modern schema path (LowCardinality, TTL on history, row validation on)"
            )
        }
    }
}

/// Parses `18.16.1`, `24.8.4.13`, `25.3.1.2703-lts` into the first three components.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.trim().split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}
