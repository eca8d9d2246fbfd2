//! `[enrollment]`: agents that join with a bootstrap token.

use std::path::PathBuf;
use std::time::Duration;

use portolan_core::enrollment::{Policy, SecondKey};
use serde::{Deserialize, Serialize};

/// `[enrollment]`: whether this replica enrols agents, with which signer, under which
/// policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentSection {
    /// Enrol agents: clients without a certificate may call Enroll (and nothing else),
    /// and agents renew their certificates here.
    pub enabled: bool,
    /// The signer's certificate (`portolan pki issue-signer`): an intermediate of the
    /// fleet CA that may sign agent certificates only.
    pub signer_cert: PathBuf,
    /// The signer's private key. Whoever reads it can make agent certificates for any
    /// host_id, nothing else.
    pub signer_key: PathBuf,
    /// How long an enrolled or renewed certificate is valid; agents renew at two thirds.
    #[serde(with = "portolan_config::duration")]
    pub certificate_lifetime: Duration,
    /// Hold every new host for an admin's approval (`portolan approve`).
    pub strict: bool,
    /// What an enrollment with a second key for an enrolled host gets: `refuse`, or
    /// `hold` for an admin's approval.
    pub second_key: String,
    /// How often host keys are re-read from ClickHouse, so that a retirement or an
    /// approval on another replica takes effect here.
    #[serde(with = "portolan_config::duration")]
    pub refresh_interval: Duration,
    /// Retire a host by itself once it has not reported for this long (its current
    /// state leaves, its findings resolve, its history stays; it may enrol again).
    /// `0s`: never.
    #[serde(with = "portolan_config::duration")]
    pub retire_after_silence: Duration,
}

impl Default for EnrollmentSection {
    fn default() -> Self {
        EnrollmentSection {
            enabled: false,
            signer_cert: PathBuf::from("/etc/portolan/signer.pem"),
            signer_key: PathBuf::from("/etc/portolan/signer.key"),
            certificate_lifetime: portolan_tls::enroll::DEFAULT_LIFETIME,
            strict: false,
            second_key: SecondKey::Refuse.as_str().to_owned(),
            refresh_interval: Duration::from_secs(5),
            retire_after_silence: Duration::ZERO,
        }
    }
}

impl EnrollmentSection {
    /// The enrollment policy (call after [`EnrollmentSection::validate`]).
    pub fn policy(&self) -> Policy {
        Policy {
            strict: self.strict,
            second_key: self.second_key.parse().unwrap_or_default(),
        }
    }

    /// Adds every problem of `[enrollment]` to `problems`.
    pub(crate) fn validate(&self, problems: &mut Vec<String>) {
        if let Err(e) = self.second_key.parse::<SecondKey>() {
            problems.push(format!("`enrollment.second_key`: {e}"));
        }
        if self.certificate_lifetime < Duration::from_secs(1) {
            problems.push(
                "`enrollment.certificate_lifetime` must be at least 1s (a day is the default)"
                    .into(),
            );
        }
        if self.refresh_interval < Duration::from_millis(100)
            || self.refresh_interval > Duration::from_secs(300)
        {
            problems.push(
                "`enrollment.refresh_interval` must be 100ms to 5m (it bounds how long a host retired on another replica may still stream here)"
                    .into(),
            );
        }
        if !self.retire_after_silence.is_zero()
            && self.retire_after_silence < Duration::from_secs(1)
        {
            problems
                .push("`enrollment.retire_after_silence` must be 0s (never) or at least 1s".into());
        }
        if self.enabled
            && (self.signer_cert.as_os_str().is_empty() || self.signer_key.as_os_str().is_empty())
        {
            problems.push(
                "`enrollment.enabled` is true but `enrollment.signer_cert` or `enrollment.signer_key` is empty (make them with `portolan pki issue-signer`)"
                    .into(),
            );
        }
    }
}
