//! The collector's certificates, trusted CAs and revocation list, reloaded from disk while
//! it runs.
//!
//! [`ServerTls::start`] loads everything once (a problem then is fatal: the collector does
//! not start with files it cannot use) and polls the files every second (a `stat` each:
//! inode, size and modification time, so that an atomic rename, a Kubernetes secret's
//! symlink swap and an in-place rewrite are all seen). When a file changed, the whole
//! server configuration or the revocation list is built again; a file that does not load
//! is logged and the previous material stays in force until the file is fixed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::TlsError;
use crate::files::TlsFiles;
use crate::revocation::{RevocationList, serial_hex};
use crate::server::ClientAuth;

/// How often [`ServerTls`] looks at its files by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// A collector's TLS material as it is on disk now: the server configuration (certificate,
/// key, trusted CAs) for new handshakes, and the revocation list.
///
/// Dropping it stops the polling; the receivers keep the last material.
#[derive(Debug)]
pub struct ServerTls {
    config: watch::Receiver<Arc<ServerConfig>>,
    revocations: watch::Receiver<Arc<RevocationList>>,
    task: JoinHandle<()>,
}

/// What identifies one version of a file: inode, size, modification time.
type Stamp = Option<(u64, u64, i64, i64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

impl ServerTls {
    /// Loads the server configuration from `files` and the revocation list from `revoked`
    /// (`None`: nothing is revoked), then polls them every `interval`.
    ///
    /// Must be called from within a Tokio runtime (it spawns the polling task).
    pub fn start(
        files: TlsFiles,
        revoked: Option<PathBuf>,
        interval: Duration,
    ) -> Result<ServerTls, TlsError> {
        Self::start_for(files, revoked, interval, ClientAuth::Required)
    }

    /// [`ServerTls::start`], with client certificates required or optional
    /// ([`ClientAuth`]; optional when the collector serves enrollment).
    pub fn start_for(
        files: TlsFiles,
        revoked: Option<PathBuf>,
        interval: Duration,
        client_auth: ClientAuth,
    ) -> Result<ServerTls, TlsError> {
        let cert_stamps = cert_stamps(&files);
        let revoked_stamp = revoked.as_deref().map(stamp);
        let config = crate::server::server_config_for(&files, client_auth)?;
        let list = match &revoked {
            Some(path) => RevocationList::load(path)?,
            None => RevocationList::empty(),
        };
        let (config_tx, config_rx) = watch::channel(config);
        let (revoked_tx, revoked_rx) = watch::channel(Arc::new(list));
        let task = tokio::spawn(poll(
            files,
            client_auth,
            revoked,
            interval,
            (cert_stamps, revoked_stamp),
            config_tx,
            revoked_tx,
        ));
        Ok(ServerTls {
            config: config_rx,
            revocations: revoked_rx,
            task,
        })
    }

    /// The server configuration for new handshakes (see
    /// [`TlsIncoming::reloading`](crate::TlsIncoming::reloading)).
    pub fn config(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.config.clone()
    }

    /// The revocation list in force; changes when the file changes.
    pub fn revocations(&self) -> watch::Receiver<Arc<RevocationList>> {
        self.revocations.clone()
    }
}

impl Drop for ServerTls {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn cert_stamps(files: &TlsFiles) -> [Stamp; 3] {
    [stamp(&files.ca), stamp(&files.cert), stamp(&files.key)]
}

async fn poll(
    files: TlsFiles,
    client_auth: ClientAuth,
    revoked: Option<PathBuf>,
    interval: Duration,
    seen: ([Stamp; 3], Option<Stamp>),
    config_tx: watch::Sender<Arc<ServerConfig>>,
    revoked_tx: watch::Sender<Arc<RevocationList>>,
) {
    let (mut certs_seen, mut revoked_seen) = seen;
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let certs_now = cert_stamps(&files);
        if certs_now != certs_seen {
            certs_seen = certs_now;
            match crate::server::server_config_for(&files, client_auth) {
                Ok(config) => {
                    let serial = files
                        .load_cert_chain()
                        .ok()
                        .and_then(|chain| chain.first().cloned())
                        .and_then(|leaf| crate::identity::parse_certificate(&leaf).ok())
                        .map_or_else(|| "?".to_owned(), |p| serial_hex(&p.serial));
                    tracing::info!(
                        cert = %files.cert.display(),
                        ca = %files.ca.display(),
                        %serial,
                        "reloaded the tls certificate, key and trusted CAs: new connections use them"
                    );
                    config_tx.send_replace(config);
                }
                Err(e) => tracing::warn!(
                    "cannot reload the tls files: {e} (still serving the previous certificate and CAs; fix the file and it is read again)"
                ),
            }
        }
        if let Some(path) = &revoked {
            let now = stamp(path);
            if Some(now) != revoked_seen {
                revoked_seen = Some(now);
                match RevocationList::load(path) {
                    Ok(list) => {
                        tracing::info!(
                            file = %path.display(),
                            entries = list.len(),
                            "reloaded the revocation list"
                        );
                        revoked_tx.send_replace(Arc::new(list));
                    }
                    Err(e) => tracing::warn!(
                        "cannot reload the revocation list: {e} (the previous list stays in force)"
                    ),
                }
            }
        }
    }
}
