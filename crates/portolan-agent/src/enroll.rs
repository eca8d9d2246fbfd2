//! The agent's certificate by enrollment: obtained with a bootstrap token when the host
//! has none, renewed over its own identity at two thirds of its life, and obtained again
//! with the token if it ever expired (a collector outage longer than its lifetime).
//!
//! The host's key is made here and never leaves the host: the collector sees CSRs only.
//! Files are replaced atomically (write, then rename), so the stream, which reads them at
//! each connection, always finds a matching certificate and key.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portolan_core::backoff::{Backoff, Jitter};
use portolan_core::enrollment::{renewal_due, renewal_retry_cap};
use portolan_proto::v1 as pb;
use portolan_proto::v1::enrollment_service_client::EnrollmentServiceClient;
use portolan_tls::TlsFiles;
use portolan_tls::enroll::{csr_der, new_key_pem};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::metrics;

/// How often an enrollment held for approval asks again.
const PENDING_POLL: Duration = Duration::from_secs(5);

/// Waits between failed enrollments.
const ENROL_BACKOFF: Backoff = Backoff {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
    jitter: Jitter::Half,
};

/// How the agent obtains and keeps its certificate.
#[derive(Debug, Clone)]
pub struct Enroller {
    files: TlsFiles,
    host_id: String,
    endpoint: String,
    server_name: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

/// What one enrollment got.
enum Enrolled {
    /// A certificate, written.
    Issued { not_after: i64 },
    /// Held for an admin's approval.
    Pending { message: String },
}

impl Enroller {
    /// The enroller of `config`'s agent for `host_id`; `None` when no token is configured
    /// (the certificate is issued by hand and replaced by whoever issues it).
    pub fn new(config: &AgentConfig, host_id: &str) -> Option<Enroller> {
        let e = &config.enrollment;
        if e.token.is_empty() && e.token_file.as_os_str().is_empty() {
            return None;
        }
        Some(Enroller {
            files: config.tls_files(),
            host_id: host_id.to_owned(),
            endpoint: config.collector.endpoint.clone(),
            server_name: (!config.collector.server_name.is_empty())
                .then(|| config.collector.server_name.clone()),
            token: (!e.token.is_empty()).then(|| e.token.clone()),
            token_file: (!e.token_file.as_os_str().is_empty()).then(|| e.token_file.clone()),
        })
    }

    /// The token, read again each time (a rotated Secret is picked up).
    fn token(&self) -> Result<String, String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let path = self.token_file.as_deref().unwrap_or(Path::new(""));
        std::fs::read_to_string(path)
            .map(|t| t.trim().to_owned())
            .map_err(|e| {
                format!(
                    "cannot read the enrollment token from {}: {e} (check `enrollment.token_file`)",
                    path.display()
                )
            })
    }

    /// The host's key, made now if the host has none yet (mode 0600).
    fn key(&self) -> Result<String, String> {
        match std::fs::read_to_string(&self.files.key) {
            Ok(key) => Ok(key),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = new_key_pem().map_err(|e| e.to_string())?;
                write_atomically(&self.files.key, key.as_bytes(), 0o600)?;
                info!(key = %self.files.key.display(), "made this host's key; it never leaves the host");
                Ok(key)
            }
            Err(e) => Err(format!(
                "cannot read the key {}: {e} (check `tls.key` and its permissions)",
                self.files.key.display()
            )),
        }
    }

    fn connect_options(&self) -> portolan_tls::ConnectOptions {
        portolan_tls::ConnectOptions {
            server_name: self.server_name.clone(),
            ..portolan_tls::ConnectOptions::default()
        }
    }

    /// The certificate's notAfter, if a certificate is there and matches the key.
    fn current_not_after(&self) -> Option<i64> {
        portolan_tls::client_config(&self.files).ok()?;
        self.files.cert_validity().ok().map(|v| v.not_after)
    }

    /// The host's CSR and a client of the collector's enrollment service over `tls`.
    async fn request(
        &self,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<(Vec<u8>, EnrollmentServiceClient<tonic::transport::Channel>), String> {
        let key = self.key()?;
        let csr = csr_der(&key, &self.host_id).map_err(|e| e.to_string())?;
        let channel = portolan_tls::connect(&self.endpoint, tls, self.connect_options())
            .await
            .map_err(|e| e.to_string())?;
        Ok((csr, EnrollmentServiceClient::new(channel)))
    }

    /// Writes a certificate the collector issued, unless it is already expired (its
    /// signer running out).
    fn store(&self, chain_pem: &str, not_after: i64) -> Result<i64, String> {
        if not_after <= now() {
            return Err(format!(
                "the collector issued a certificate valid only until {not_after} (Unix seconds), already past: its enrollment signer may be expiring; ask an admin"
            ));
        }
        write_atomically(&self.files.cert, chain_pem.as_bytes(), 0o644)?;
        Ok(not_after)
    }

    async fn enrol_once(&self) -> Result<Enrolled, String> {
        let token = self.token()?;
        let tls =
            portolan_tls::server_only_client_config(&self.files.ca).map_err(|e| e.to_string())?;
        let (csr_der, mut client) = self.request(tls).await?;
        let answer = client
            .enroll(pb::EnrollRequest {
                token,
                host_id: self.host_id.clone(),
                csr_der,
            })
            .await
            .map_err(refused)?
            .into_inner();
        match answer.status.as_str() {
            "issued" => Ok(Enrolled::Issued {
                not_after: self.store(&answer.certificate_chain_pem, answer.not_after)?,
            }),
            "pending" => Ok(Enrolled::Pending {
                message: answer.message,
            }),
            other => Err(format!(
                "the collector answered an unknown status `{other}`"
            )),
        }
    }

    async fn renew_once(&self) -> Result<i64, String> {
        let tls = portolan_tls::client_config(&self.files).map_err(|e| e.to_string())?;
        let (csr_der, mut client) = self.request(tls).await?;
        let answer = client
            .renew(pb::RenewRequest { csr_der })
            .await
            .map_err(refused)?
            .into_inner();
        self.store(&answer.certificate_chain_pem, answer.not_after)
    }

    /// Returns once the host has a usable certificate: the one on disk, or one obtained
    /// with the token (waiting for an admin's approval if the collector holds it). Gives
    /// up only when `stop` is set.
    pub async fn obtain(&self, stop: &mut watch::Receiver<bool>) -> bool {
        if self
            .current_not_after()
            .is_some_and(|not_after| not_after > now())
        {
            return true;
        }
        let mut failures = 0u32;
        let mut said: Option<String> = None;
        loop {
            match self.enrol_once().await {
                Ok(Enrolled::Issued { not_after }) => {
                    metrics::global().enrollments.inc(&[("result", "issued")]);
                    info!(host_id = %self.host_id, cert = %self.files.cert.display(), not_after, "enrolled: certificate obtained with the bootstrap token");
                    return true;
                }
                Ok(Enrolled::Pending { message }) => {
                    metrics::global().enrollments.inc(&[("result", "pending")]);
                    if said.as_deref() != Some(message.as_str()) {
                        warn!(host_id = %self.host_id, "enrollment {message}; asking again every {}s", PENDING_POLL.as_secs());
                        said = Some(message);
                    }
                    failures = 0;
                    if sleep_or_stop(PENDING_POLL, stop).await {
                        return false;
                    }
                }
                Err(e) => {
                    metrics::global().enrollments.inc(&[("result", "failed")]);
                    failures = failures.saturating_add(1);
                    // One line per distinct problem, not one per attempt.
                    if said.as_deref() != Some(e.as_str()) {
                        warn!(host_id = %self.host_id, error = %e, "cannot enrol: no certificate until this is fixed; retrying by itself");
                        said = Some(e);
                    }
                    if sleep_or_stop(ENROL_BACKOFF.wait(failures, fastrand::f64()), stop).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Keeps the certificate valid until `stop`: renews it at two thirds of its life,
    /// retries with backoff until it expires, and enrols again with the token if it did.
    pub async fn maintain(self, mut stop: watch::Receiver<bool>) {
        loop {
            let Some(not_after) = self.current_not_after() else {
                if !self.obtain(&mut stop).await {
                    return;
                }
                continue;
            };
            let received = received_at(&self.files.cert).min(not_after);
            let due = renewal_due(received, not_after);
            if sleep_or_stop(until(due), &mut stop).await {
                return;
            }
            let mut failures = 0u32;
            loop {
                match self.renew_once().await {
                    Ok(next) => {
                        metrics::global().renewals.inc(&[("result", "ok")]);
                        info!(host_id = %self.host_id, not_after = next, "renewed the certificate");
                        break;
                    }
                    Err(e) => {
                        metrics::global().renewals.inc(&[("result", "failed")]);
                        failures = failures.saturating_add(1);
                        let now = now();
                        if now >= not_after {
                            warn!(host_id = %self.host_id, error = %e, expired_at = not_after, "the certificate expired before it could be renewed: enrolling again with the bootstrap token (give the agent a valid token if this persists)");
                            if !self.obtain(&mut stop).await {
                                return;
                            }
                            break;
                        }
                        let cap =
                            Duration::from_secs(renewal_retry_cap(now, not_after).unsigned_abs());
                        let wait = ENROL_BACKOFF.wait(failures, fastrand::f64()).min(cap);
                        warn!(host_id = %self.host_id, error = %e, expires_at = not_after, retry_in = ?wait, "cannot renew the certificate; retrying (the error says why: an unreachable collector, or a host retired or whose key was replaced, see `portolan keys`)");
                        if sleep_or_stop(wait, &mut stop).await {
                            return;
                        }
                    }
                }
            }
        }
    }
}

fn refused(s: tonic::Status) -> String {
    format!("the collector refused: {:?}: {}", s.code(), s.message())
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn until(at: i64) -> Duration {
    Duration::from_secs(at.saturating_sub(now()).max(0).unsigned_abs())
}

/// When the certificate file was written (its modification time), Unix seconds.
fn received_at(cert: &Path) -> i64 {
    std::fs::metadata(cert)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(now, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Sleeps for `d`; true if `stop` was set meanwhile.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Writes `path` through a temporary file and a rename, so that a reader sees the old
/// content or the new, never a part.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let err = |e: std::io::Error| {
        format!(
            "cannot write {}: {e} (the agent needs its certificate directory writable)",
            path.display()
        )
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or("portolan".into(), |n| n.to_string_lossy())
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    // The rename itself must survive a power cut: a key the collector bound must not
    // vanish with the directory entry that named it.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}
