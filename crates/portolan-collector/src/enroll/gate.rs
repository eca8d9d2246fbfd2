//! The gate: which certificates may speak for their host now, by the host keys every
//! replica shares in ClickHouse.
//!
//! The gate holds every host's keys ([`KeyBook`]), re-read from the store every
//! `refresh_interval` (so a retirement or an approval on another replica takes effect
//! here within it) and updated at once by this replica's own decisions. Every call and
//! every open stream passes [`Gate::check`] (through [`crate::revocation::Revocations`]):
//! an agent certificate whose key the host no longer has (retired, superseded, denied,
//! or another key bound) is refused, and its open streams end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portolan_core::enrollment::{KeyRecord, admit};
use portolan_store::Store;
use portolan_store::enrollment::StoredHostKey;
use portolan_tls::{Identity, PeerInfo, TlsFiles};
use tokio::sync::watch;
use tracing::{debug, warn};

/// Every host's keys, by host_id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyBook {
    hosts: HashMap<String, Vec<StoredHostKey>>,
}

impl KeyBook {
    /// The book of `keys` (any order).
    pub fn new(keys: Vec<StoredHostKey>) -> KeyBook {
        let mut hosts: HashMap<String, Vec<StoredHostKey>> = HashMap::new();
        for key in keys {
            hosts
                .entry(key.record.host_id.clone())
                .or_default()
                .push(key);
        }
        KeyBook { hosts }
    }

    /// The keys of `host_id` (none for a host that never enrolled).
    pub fn keys_of(&self, host_id: &str) -> &[StoredHostKey] {
        self.hosts.get(host_id).map_or(&[], Vec::as_slice)
    }

    /// Replaces or adds `keys` (newer writes of this replica).
    fn record(&mut self, keys: &[StoredHostKey]) {
        for key in keys {
            let host = self.hosts.entry(key.record.host_id.clone()).or_default();
            match host
                .iter_mut()
                .find(|k| k.record.key_sha256 == key.record.key_sha256)
            {
                Some(old) if old.version <= key.version => *old = key.clone(),
                Some(_) => {}
                None => host.push(key.clone()),
            }
        }
    }

    fn records(&self, host_id: &str) -> Vec<KeyRecord> {
        self.keys_of(host_id)
            .iter()
            .map(|k| k.record.clone())
            .collect()
    }
}

/// The shared view of host keys, and the subjects of the trusted CAs.
#[derive(Debug, Clone)]
pub struct Gate {
    book: watch::Receiver<Arc<KeyBook>>,
    update: Arc<watch::Sender<Arc<KeyBook>>>,
    /// The subjects of the CAs of `tls.ca` (empty: not checked). Operator and collector
    /// certificates must be issued by one of them directly: an intermediate (such as the
    /// enrollment signer) signs agents only.
    anchors: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Gate {
    /// A gate over `book`, not refreshed (tests, tools).
    pub fn fixed(book: KeyBook) -> Gate {
        let (tx, rx) = watch::channel(Arc::new(book));
        Gate {
            book: rx,
            update: Arc::new(tx),
            anchors: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Loads every host key from `store` (an unreachable store leaves the book empty
    /// until the first refresh succeeds) and the CA subjects of `ca` (the collector's
    /// `tls.ca`), then re-reads both every `refresh` in a task that ends when the last
    /// clone of the gate is dropped.
    pub async fn start(store: Arc<Store>, refresh: Duration, ca: Option<TlsFiles>) -> Gate {
        let initial = match store.host_keys().await {
            Ok(keys) => KeyBook::new(keys),
            Err(e) => {
                warn!(error = %e, "cannot read the host keys yet; retrying every {refresh:?}");
                KeyBook::default()
            }
        };
        let gate = Gate::fixed(initial);
        let anchors = Arc::downgrade(&gate.anchors);
        let read_anchors = move || {
            let (Some(files), Some(anchors)) = (&ca, anchors.upgrade()) else {
                return;
            };
            match files.ca_subjects() {
                Ok(subjects) => {
                    if let Ok(mut a) = anchors.lock() {
                        *a = subjects;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot read the CA subjects; keeping the last ones read")
                }
            }
        };
        read_anchors();
        let update = Arc::downgrade(&gate.update);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(refresh.max(Duration::from_millis(100)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(update) = update.upgrade() else {
                    return;
                };
                read_anchors();
                match store.host_keys().await {
                    Ok(keys) => {
                        let book = KeyBook::new(keys);
                        update.send_if_modified(|old| {
                            let changed = **old != book;
                            if changed {
                                debug!(hosts = book.hosts.len(), "host keys changed");
                                *old = Arc::new(book);
                            }
                            changed
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot refresh the host keys; keeping the last ones read")
                    }
                }
            }
        });
        gate
    }

    /// Applies this replica's own writes at once (other replicas see them at their next
    /// refresh).
    pub fn record(&self, keys: &[StoredHostKey]) {
        self.update.send_modify(|book| {
            let mut next = (**book).clone();
            next.record(keys);
            *book = Arc::new(next);
        });
    }

    /// The keys of `host_id` as this replica knows them.
    pub fn keys_of(&self, host_id: &str) -> Vec<StoredHostKey> {
        self.book.borrow().keys_of(host_id).to_vec()
    }

    /// Sets the subjects of the trusted CAs (tests; [`Gate::start`] reads them from the
    /// CA file).
    pub fn set_anchors(&self, subjects: Vec<Vec<u8>>) {
        if let Ok(mut a) = self.anchors.lock() {
            *a = subjects;
        }
    }

    /// Why `peer` may not speak now, if it may not.
    pub fn check(&self, peer: &PeerInfo) -> Option<String> {
        let (Ok(identity), Some(cert)) = (&peer.identity, &peer.cert) else {
            return None;
        };
        match identity {
            Identity::Agent { host_id } => {
                let records = self.book.borrow().records(host_id);
                admit(host_id, &records, &cert.key_sha256, cert.not_before)
                    .err()
                    .map(|refusal| refusal.to_string())
            }
            Identity::Operator { .. } | Identity::Collector { .. } => {
                let by_intermediate = self
                    .anchors
                    .lock()
                    .is_ok_and(|a| !a.is_empty() && !a.contains(&peer.issuer));
                by_intermediate.then(|| {
                    format!("`{identity}` was not issued directly by a CA of `tls.ca`: operator and collector certificates must be (an intermediate such as the enrollment signer signs agents only); issue it with the fleet CA")
                })
            }
        }
    }

    /// A receiver that changes whenever the book does.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<KeyBook>> {
        self.book.clone()
    }
}
