//! The collector's certificates, trusted CAs, CRLs and revocation list, reloaded from disk
//! while it runs.
//!
//! [`ServerTls::start`] loads everything once (a problem then is fatal: the collector does
//! not start with files it cannot use) and polls the files every second (a `stat` each:
//! inode, size and modification time, so that an atomic rename, a Kubernetes secret's
//! symlink swap and an in-place rewrite are all seen). When a file changed, the whole
//! server configuration or the revocation list is built again; a file that does not load
//! is logged and the previous material stays in force until the file is fixed.
//!
//! CRLs (`tls.crls`) feed both: the server configuration refuses their certificates in the
//! handshake, and the revocation list ends the open streams of those certificates. They
//! are checked against the CA file again whenever it or they change. A CRL past its
//! `nextUpdate` stays in force and is logged once when it goes stale.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::ServerConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::crl::CrlSet;
use crate::error::TlsError;
use crate::files::TlsFiles;
use crate::revocation::{RevocationList, serial_hex};
use crate::server::ClientAuth;

/// How often [`ServerTls`] looks at its files by default.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Where a collector's revocations come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationFiles {
    /// The deny list (`tls.revoked`, see [`RevocationList`]); `None`: none.
    pub revoked: Option<PathBuf>,
    /// The CRL files (`tls.crls`, see [`CrlSet`]); empty: none.
    pub crls: Vec<PathBuf>,
}

/// A collector's TLS material as it is on disk now: the server configuration (certificate,
/// key, trusted CAs, CRLs) for new handshakes, and the revocation list (deny list and CRL
/// entries) for calls and open streams.
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

/// The stamps of every file, as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamps {
    /// `ca`, `cert`, `key`.
    certs: [Stamp; 3],
    revoked: Option<Stamp>,
    crls: Vec<Stamp>,
}

impl Stamps {
    fn of(files: &TlsFiles, revocation: &RevocationFiles) -> Stamps {
        Stamps {
            certs: [stamp(&files.ca), stamp(&files.cert), stamp(&files.key)],
            revoked: revocation.revoked.as_deref().map(stamp),
            crls: revocation.crls.iter().map(|p| stamp(p)).collect(),
        }
    }
}

/// What the polling task holds between ticks.
struct State {
    files: TlsFiles,
    client_auth: ClientAuth,
    revocation: RevocationFiles,
    seen: Stamps,
    /// The deny list as last loaded, without CRL entries.
    deny: RevocationList,
    crls: CrlSet,
    /// The CRLs reported stale, by path and number, so each is logged once.
    stale: Vec<String>,
    config_tx: watch::Sender<Arc<ServerConfig>>,
    revoked_tx: watch::Sender<Arc<RevocationList>>,
}

impl ServerTls {
    /// Loads the server configuration from `files`, the CRLs and the deny list that
    /// `revocation` names, then polls them every `interval`.
    ///
    /// Must be called from within a Tokio runtime (it spawns the polling task).
    pub fn start(
        files: TlsFiles,
        revocation: RevocationFiles,
        interval: Duration,
    ) -> Result<ServerTls, TlsError> {
        Self::start_for(files, revocation, interval, ClientAuth::Required)
    }

    /// [`ServerTls::start`], with client certificates required or optional
    /// ([`ClientAuth`]; optional when the collector serves enrollment).
    pub fn start_for(
        files: TlsFiles,
        revocation: RevocationFiles,
        interval: Duration,
        client_auth: ClientAuth,
    ) -> Result<ServerTls, TlsError> {
        let seen = Stamps::of(&files, &revocation);
        let crls = CrlSet::load(&revocation.crls, &files.ca)?;
        let config = crate::server::server_config_for(&files, &crls, client_auth)?;
        let deny = match &revocation.revoked {
            Some(path) => RevocationList::load(path)?,
            None => RevocationList::empty(),
        };
        let list = deny.clone().with_crls(&crls);
        let (config_tx, config_rx) = watch::channel(config);
        let (revoked_tx, revoked_rx) = watch::channel(Arc::new(list));
        let mut state = State {
            files,
            client_auth,
            revocation,
            seen,
            deny,
            crls,
            stale: Vec::new(),
            config_tx,
            revoked_tx,
        };
        state.report_stale();
        let task = tokio::spawn(poll(state, interval));
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

    /// The revocation list in force (deny list and CRL entries); changes when a file
    /// changes.
    pub fn revocations(&self) -> watch::Receiver<Arc<RevocationList>> {
        self.revocations.clone()
    }
}

impl Drop for ServerTls {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn poll(mut state: State, interval: Duration) {
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        state.tick();
    }
}

impl State {
    /// Reloads what changed since the last tick.
    fn tick(&mut self) {
        let now = Stamps::of(&self.files, &self.revocation);
        let certs_changed = now.certs != self.seen.certs;
        // The CRLs are checked against the CA file: a new one checks them again.
        let crls_changed = now.crls != self.seen.crls
            || (!self.revocation.crls.is_empty() && now.certs[0] != self.seen.certs[0]);
        let revoked_changed = now.revoked != self.seen.revoked;
        self.seen = now;
        let mut crls_ok = true;
        if crls_changed {
            match CrlSet::load(&self.revocation.crls, &self.files.ca) {
                Ok(crls) => {
                    tracing::info!(
                        crls = crls.crls().len(),
                        revoked = crls
                            .crls()
                            .iter()
                            .map(|c| c.serials().count())
                            .sum::<usize>(),
                        "reloaded the CRLs: new handshakes and open streams use them"
                    );
                    self.crls = crls;
                    self.report_stale();
                }
                Err(e) => {
                    crls_ok = false;
                    tracing::warn!(
                        "cannot reload the CRLs: {e} (the previous CRLs, certificate and CAs stay in force; fix the file and it is read again)"
                    );
                }
            }
        } else {
            self.report_stale();
        }
        if (certs_changed || crls_changed) && crls_ok {
            self.reload_config(certs_changed);
        }
        let mut list_changed = crls_changed && crls_ok;
        if revoked_changed && let Some(path) = &self.revocation.revoked {
            match RevocationList::load(path) {
                Ok(deny) => {
                    tracing::info!(
                        file = %path.display(),
                        entries = deny.len(),
                        "reloaded the revocation list"
                    );
                    self.deny = deny;
                    list_changed = true;
                }
                Err(e) => tracing::warn!(
                    "cannot reload the revocation list: {e} (the previous list stays in force)"
                ),
            }
        }
        if list_changed {
            let list = self.deny.clone().with_crls(&self.crls);
            self.revoked_tx.send_replace(Arc::new(list));
        }
    }

    fn reload_config(&self, certs_changed: bool) {
        let files = &self.files;
        match crate::server::server_config_for(files, &self.crls, self.client_auth) {
            Ok(config) => {
                if certs_changed {
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
                }
                self.config_tx.send_replace(config);
            }
            Err(e) => tracing::warn!(
                "cannot reload the tls files: {e} (still serving the previous certificate and CAs; fix the file and it is read again)"
            ),
        }
    }

    /// Logs each CRL once when it is (or becomes) past its `nextUpdate`.
    fn report_stale(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let stale: Vec<String> = self
            .crls
            .stale(now)
            .into_iter()
            .map(|crl| {
                if !self.stale.contains(&crl.describe()) {
                    tracing::warn!(
                        "{} is past its next update ({}s ago): it still applies, and certificates of its CA are still accepted unless it lists them; publish a new one (e.g. `portolan pki crl`)",
                        crl.describe(),
                        now - crl.next_update().unwrap_or(now)
                    );
                }
                crl.describe()
            })
            .collect();
        self.stale = stale;
    }
}
