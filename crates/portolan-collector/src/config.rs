//! The collector's configuration: `portolan-collector.toml`, `PORTOLAN_*` variables, flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use portolan_metrics::MetricsSection;
use portolan_tls::TlsFiles;
use serde::{Deserialize, Serialize};

mod clickhouse;
mod enrollment;
mod redact;

pub use clickhouse::{ClickHouseSection, ClickHouseTlsSection};
pub use enrollment::EnrollmentSection;
pub use redact::REDACTED;
pub(crate) use redact::without_credentials;

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
    /// Certificates, trusted CAs and the revocation list (all reloaded when they change).
    pub tls: TlsSection,
    /// Where inventories are stored.
    pub clickhouse: ClickHouseSection,
    /// Bounds on what an agent may send.
    pub limits: LimitsSection,
    /// Agents that join with a bootstrap token.
    pub enrollment: EnrollmentSection,
    /// Exposure rules.
    pub rules: RulesSection,
    /// Where findings are sent.
    pub notify: NotifySection,
    /// Prometheus metrics.
    pub metrics: MetricsSection,
}

/// `[notify]`: where the evaluating replica sends findings as they open, reopen and
/// resolve. Receivers are tables in arrays (`[[notify.alertmanager]]`,
/// `[[notify.webhook]]`); from the environment, set a whole array as inline TOML
/// (`PORTOLAN_NOTIFY_WEBHOOK='[{ url = "http://hooks:8080/portolan" }]'`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifySection {
    /// Alertmanager-compatible receivers (Alertmanager's v2 alerts API).
    pub alertmanager: Vec<AlertmanagerReceiver>,
    /// Generic JSON webhooks: one document per opened, reopened or resolved finding.
    pub webhook: Vec<WebhookReceiver>,
    /// Notifications each receiver keeps waiting while it is slow or down; past that the
    /// oldest are dropped (and counted and logged).
    pub queue_size: u32,
    /// Attempts per notification, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// A notification is not retried once it is this old (counted from the evaluation
    /// that produced it).
    #[serde(with = "portolan_config::duration")]
    pub max_age: Duration,
    /// Wait before the first retry; each further retry waits twice as long, with jitter.
    #[serde(with = "portolan_config::duration")]
    pub backoff: Duration,
    /// The longest wait between two attempts (also caps a receiver's `Retry-After`).
    #[serde(with = "portolan_config::duration")]
    pub max_backoff: Duration,
    /// A link for people, sent as Alertmanager's `generatorURL` and the webhook's
    /// `link`, e.g. a Grafana dashboard. `{fingerprint}`, `{rule_id}` and `{host_id}` are
    /// replaced (URL-encoded). Empty: no link.
    pub external_url: String,
}

impl Default for NotifySection {
    fn default() -> Self {
        NotifySection {
            alertmanager: Vec::new(),
            webhook: Vec::new(),
            queue_size: 1000,
            max_attempts: 10,
            max_age: Duration::from_secs(15 * 60),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            external_url: String::new(),
        }
    }
}

/// `[[notify.alertmanager]]`: one Alertmanager (for an HA cluster, list each instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertmanagerReceiver {
    /// Base URL, e.g. `http://alertmanager:9093` (with its route prefix if it has one);
    /// alerts are posted to `<url>/api/v2/alerts`.
    pub url: String,
    /// How long one request may take, connecting included.
    #[serde(with = "portolan_config::duration")]
    pub timeout: Duration,
    /// How often the firing alerts are sent again while nothing changes. Alerts are
    /// valid for 4 × max(this, `rules.interval`): Alertmanager resolves them by itself
    /// if the collector stops sending.
    #[serde(with = "portolan_config::duration")]
    pub resend_interval: Duration,
    /// Labels added to every alert, e.g. `{ cluster = "eu-1" }`.
    pub labels: BTreeMap<String, String>,
    /// HTTP headers sent with every request, e.g. `{ Authorization = "Basic …" }`.
    pub headers: BTreeMap<String, String>,
    /// PEM file of the CA certificates to trust for an `https://` URL instead of the
    /// system's; empty: the system's.
    pub ca: String,
}

impl Default for AlertmanagerReceiver {
    fn default() -> Self {
        AlertmanagerReceiver {
            url: String::new(),
            timeout: Duration::from_secs(10),
            resend_interval: Duration::from_secs(60),
            labels: BTreeMap::new(),
            headers: BTreeMap::new(),
            ca: String::new(),
        }
    }
}

/// `[[notify.webhook]]`: one HTTP endpoint that receives a JSON document per change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookReceiver {
    /// The URL documents are posted to, e.g. `https://hooks.example.com/portolan`.
    pub url: String,
    /// How long one request may take, connecting included.
    #[serde(with = "portolan_config::duration")]
    pub timeout: Duration,
    /// HTTP headers sent with every request, e.g. `{ Authorization = "Bearer …" }`.
    pub headers: BTreeMap<String, String>,
    /// PEM file of the CA certificates to trust for an `https://` URL instead of the
    /// system's; empty: the system's.
    pub ca: String,
}

impl Default for WebhookReceiver {
    fn default() -> Self {
        WebhookReceiver {
            url: String::new(),
            timeout: Duration::from_secs(10),
            headers: BTreeMap::new(),
            ca: String::new(),
        }
    }
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

/// `[tls]`: the collector's certificate and key, the CAs client certificates must chain
/// to, the CRLs they publish, and the revocation list. Every file is re-read within a
/// second of changing; a file that does not load is logged and the previous material
/// stays in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// CA certificates client certificates must chain to (several during a CA rotation).
    pub ca: PathBuf,
    /// This collector's certificate (optionally followed by intermediates).
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
    /// Revocation list: one entry a line, `serial:<hex>` (one certificate),
    /// `host:<host_id>` (every agent certificate of a host) or `operator:<name>`; `#`
    /// starts a comment. Listed peers are refused with PERMISSION_DENIED and their open
    /// streams end within seconds. Empty: nothing is revoked.
    pub revoked: PathBuf,
    /// X.509 CRL files (PEM or DER) published by the CAs of `ca`, e.g. one per CA. A
    /// certificate a CRL lists is refused in the handshake, its calls get
    /// PERMISSION_DENIED and its open streams end within seconds; certificates of a CA
    /// without CRL are accepted. Each CRL must be signed by a CA of `ca`. A CRL past its
    /// next update still applies (and is logged): refresh it before then. Empty: none.
    pub crls: Vec<PathBuf>,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            ca: PathBuf::from("/etc/portolan/ca.pem"),
            cert: PathBuf::from("/etc/portolan/collector.pem"),
            key: PathBuf::from("/etc/portolan/collector.key"),
            revoked: PathBuf::new(),
            crls: Vec::new(),
        }
    }
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
    /// Messages per second one agent (host id) may send, heartbeats included, on average;
    /// past that and `max_message_burst` its stream ends with RESOURCE_EXHAUSTED.
    pub max_messages_per_second: u32,
    /// Messages an agent may send at once above the rate (a snapshot in many parts).
    pub max_message_burst: u32,
    /// Snapshots and deltas an agent may send before the first is acknowledged: how far
    /// an agent catching up on its spool runs ahead of ClickHouse.
    pub max_in_flight: u32,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            version: 1,
            name: String::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            state_dir: PathBuf::from("/var/lib/portolan-collector"),
            tls: TlsSection::default(),
            clickhouse: ClickHouseSection::default(),
            limits: LimitsSection::default(),
            enrollment: EnrollmentSection::default(),
            rules: RulesSection::default(),
            notify: NotifySection::default(),
            metrics: MetricsSection::default(),
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_message_bytes: 16 * 1024 * 1024,
            max_sockets_per_message: 20_000,
            max_snapshot_items: 1_000_000,
            max_messages_per_second: 20,
            max_message_burst: 200,
            max_in_flight: 16,
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
        self.clickhouse.validate(&mut problems);
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
        if self.limits.max_in_flight == 0 || self.limits.max_in_flight > 1024 {
            problems.push(
                "`limits.max_in_flight` must be 1 to 1024 (16 lets an agent catch up on its spool without waiting for each acknowledgement)"
                    .into(),
            );
        }
        if self.limits.max_messages_per_second == 0 || self.limits.max_message_burst == 0 {
            problems.push(
                "`limits.max_messages_per_second` and `limits.max_message_burst` must be positive"
                    .into(),
            );
        }
        if self.rules.evaluate && self.rules.files.is_empty() {
            problems.push("`rules.evaluate` is true but `rules.files` names no rule file".into());
        }
        if self.rules.interval < std::time::Duration::from_secs(1) {
            problems.push("`rules.interval` is under 1s".into());
        }
        if self.tls.crls.iter().any(|p| p.as_os_str().is_empty()) {
            problems.push(
                "`tls.crls` names an empty path; list CRL files, e.g. `crls = [\"/etc/portolan/ca.crl.pem\"]`, or none (`crls = []`)"
                    .into(),
            );
        }
        self.enrollment.validate(&mut problems);
        self.notify.validate(&mut problems);
        self.metrics.validate(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The TLS files as portolan-tls wants them.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.tls.ca.clone(),
            cert: self.tls.cert.clone(),
            key: self.tls.key.clone(),
        }
    }

    /// The revocation list file, when one is configured.
    pub fn revoked_file(&self) -> Option<PathBuf> {
        (!self.tls.revoked.as_os_str().is_empty()).then(|| self.tls.revoked.clone())
    }

    /// Where revocations come from: the deny list and the CRLs.
    pub fn revocation_files(&self) -> portolan_tls::RevocationFiles {
        portolan_tls::RevocationFiles {
            revoked: self.revoked_file(),
            crls: self.tls.crls.clone(),
        }
    }
}

impl NotifySection {
    /// Adds every problem of `[notify]` to `problems`.
    fn validate(&self, problems: &mut Vec<String>) {
        if self.queue_size == 0 {
            problems.push("`notify.queue_size` is 0; use at least 1".into());
        }
        if self.max_attempts == 0 {
            problems.push("`notify.max_attempts` is 0; use at least 1 (1: no retry)".into());
        }
        if self.backoff.is_zero() || self.backoff > self.max_backoff {
            problems.push(format!(
                "`notify.backoff` ({}) must be positive and at most `notify.max_backoff` ({})",
                humantime::format_duration(self.backoff),
                humantime::format_duration(self.max_backoff)
            ));
        }
        let url = &self.external_url;
        if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
            problems.push(format!(
                "`notify.external_url` is `{}`; use an http:// or https:// URL",
                self.external_url
            ));
        }
        for (i, r) in self.alertmanager.iter().enumerate() {
            let key = format!("notify.alertmanager[{i}]");
            receiver_problems(&key, &r.url, r.timeout, &r.headers, problems);
            if r.resend_interval < Duration::from_secs(1) {
                problems.push(format!("`{key}.resend_interval` is under 1s"));
            }
            for name in r.labels.keys() {
                if !crate::notify::is_label_name(name) {
                    problems.push(format!(
                        "`{key}.labels`: `{name}` is not a label name; use letters, digits and `_`, not starting with a digit"
                    ));
                }
            }
        }
        for (i, r) in self.webhook.iter().enumerate() {
            let key = format!("notify.webhook[{i}]");
            receiver_problems(&key, &r.url, r.timeout, &r.headers, problems);
        }
    }
}

/// Problems of the keys every receiver has.
fn receiver_problems(
    key: &str,
    url: &str,
    timeout: Duration,
    headers: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) {
    if let Err(e) = crate::notify::http::Endpoint::parse(url) {
        problems.push(format!("`{key}.url`: {e}"));
    }
    if timeout < Duration::from_millis(100) {
        problems.push(format!("`{key}.timeout` is under 100ms"));
    }
    for (name, value) in headers {
        if let Err(e) = crate::notify::http::header(name, value) {
            problems.push(format!("`{key}.headers`: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crls_come_from_the_environment_and_an_empty_path_is_a_problem()
    -> Result<(), portolan_config::ConfigError> {
        let env = BTreeMap::from([(
            "PORTOLAN_TLS_CRLS".to_string(),
            "[\"/etc/portolan/fleet.crl.pem\", \"/etc/portolan/enrol.crl\"]".to_string(),
        )]);
        let config: CollectorConfig =
            portolan_config::load(None, &env, "PORTOLAN_", toml::Table::new())?;
        assert_eq!(
            config.tls.crls,
            [
                PathBuf::from("/etc/portolan/fleet.crl.pem"),
                PathBuf::from("/etc/portolan/enrol.crl")
            ]
        );
        assert_eq!(config.revocation_files().crls, config.tls.crls);
        assert_eq!(config.validate(), Ok(()));
        let mut config = CollectorConfig::default();
        config.tls.crls = vec![PathBuf::new()];
        let problems = config.validate().expect_err("an empty path");
        assert!(
            problems[0].starts_with("`tls.crls` names an empty path"),
            "{problems:?}"
        );
        Ok(())
    }

    #[test]
    fn every_notify_problem_is_reported() {
        let mut config = CollectorConfig::default();
        config.notify.queue_size = 0;
        config.notify.backoff = Duration::from_secs(120);
        config.notify.alertmanager.push(AlertmanagerReceiver {
            url: "ftp://am".into(),
            labels: BTreeMap::from([("1bad".to_string(), "x".to_string())]),
            ..AlertmanagerReceiver::default()
        });
        config.notify.webhook.push(WebhookReceiver {
            url: String::new(),
            headers: BTreeMap::from([("bad header".to_string(), "x".to_string())]),
            timeout: Duration::ZERO,
            ..WebhookReceiver::default()
        });
        let problems = config.validate().expect_err("invalid");
        let text = problems.join("\n");
        for expected in [
            "`notify.queue_size`",
            "`notify.backoff`",
            "`notify.alertmanager[0].url`",
            "`notify.alertmanager[0].labels`",
            "`notify.webhook[0].url`",
            "`notify.webhook[0].headers`",
            "`notify.webhook[0].timeout`",
        ] {
            assert!(text.contains(expected), "{expected} missing in:\n{text}");
        }
        assert_eq!(problems.len(), 7, "{text}");
    }

    #[test]
    fn receivers_load_from_toml_and_from_the_environment()
    -> Result<(), portolan_config::ConfigError> {
        let dir =
            std::env::temp_dir().join(format!("portolan-notify-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|error| portolan_config::ConfigError::Read {
            path: dir.display().to_string(),
            error,
        })?;
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[notify]\nqueue_size = 5\n[[notify.alertmanager]]\nurl = \"http://am:9093\"\nresend_interval = \"2m\"\nlabels = { cluster = \"eu\" }\n",
        )
        .map_err(|error| portolan_config::ConfigError::Read {
            path: file.display().to_string(),
            error,
        })?;
        let env = BTreeMap::from([(
            "PORTOLAN_NOTIFY_WEBHOOK".to_string(),
            "[{ url = \"http://hooks/p\", headers = { Authorization = \"Bearer t\" } }]"
                .to_string(),
        )]);
        let config: CollectorConfig =
            portolan_config::load(Some(&file), &env, "PORTOLAN_", toml::Table::new())?;
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(config.notify.queue_size, 5);
        assert_eq!(
            config.notify.alertmanager[0].resend_interval,
            Duration::from_secs(120)
        );
        assert_eq!(
            config.notify.alertmanager[0].timeout,
            Duration::from_secs(10)
        );
        assert_eq!(config.notify.webhook[0].url, "http://hooks/p");
        assert_eq!(
            config.notify.webhook[0]
                .headers
                .get("Authorization")
                .map(String::as_str),
            Some("Bearer t")
        );
        assert_eq!(config.validate(), Ok(()));
        Ok(())
    }
}
