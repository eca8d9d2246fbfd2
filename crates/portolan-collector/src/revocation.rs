//! Revoked certificates: refused on every new call, and their open streams ended.
//!
//! The list itself (file format, the CRLs folded in, reload) is `portolan_tls`'s
//! [`RevocationList`]; this module enforces it. Every call passes [`Revocations::interceptor`] first (a revoked
//! peer gets PERMISSION_DENIED naming the entry). Every long-lived stream (ingest, watch)
//! registers as a [`LiveSession`] that resolves [`LiveSession::revoked`] as soon as a
//! reloaded list names its certificate, so the stream ends within the reload interval.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use portolan_tls::{PeerInfo, RevocationList, serial_hex};

use crate::enroll::Gate;
use tokio::sync::watch;
use tokio_stream::Stream;
use tonic::Status;
use tracing::{info, warn};

/// Who a live session belongs to.
#[derive(Debug, Clone)]
struct Holder {
    peer: PeerInfo,
    what: &'static str,
}

impl Holder {
    /// Why the list `list` revokes this stream's peer, if it does.
    fn listed(&self, list: &RevocationList) -> Option<String> {
        let p = &self.peer;
        list.check(&p.issuer, &p.serial, p.identity.as_ref().ok())
            .map(|reason| refusal(&reason))
    }
}

/// The revocation list in force, the enrollment gate, and the sessions open under them.
#[derive(Debug, Clone)]
pub struct Revocations {
    list: watch::Receiver<Arc<RevocationList>>,
    gate: Option<Gate>,
    live: Arc<Mutex<BTreeMap<u64, Holder>>>,
    next_id: Arc<AtomicU64>,
}

impl Revocations {
    /// Enforces the lists `list` yields (see [`portolan_tls::ServerTls::revocations`]).
    ///
    /// Must be called from within a Tokio runtime: a task logs each new list with the
    /// open sessions it ends.
    pub fn new(list: watch::Receiver<Arc<RevocationList>>) -> Revocations {
        let revocations = Revocations {
            list,
            gate: None,
            live: Arc::new(Mutex::new(BTreeMap::new())),
            next_id: Arc::new(AtomicU64::new(0)),
        };
        tokio::spawn(revocations.clone().log_changes());
        revocations
    }

    /// Nothing revoked, ever (tests and tools without a list).
    pub fn none() -> Revocations {
        let (_, list) = watch::channel(Arc::new(RevocationList::empty()));
        Revocations {
            list,
            gate: None,
            live: Arc::new(Mutex::new(BTreeMap::new())),
            next_id: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The same, also refusing agent certificates whose key `gate` says may not speak
    /// for their host (retired, superseded, denied, another key bound), on every call and
    /// for open streams.
    pub fn with_gate(mut self, gate: Gate) -> Revocations {
        self.gate = Some(gate);
        self
    }

    /// The labels the token of `peer`'s key gave `host_id` (none for a certificate issued
    /// by hand, or without a gate).
    pub fn enrolled_labels(
        &self,
        peer: &PeerInfo,
        host_id: &str,
    ) -> std::collections::BTreeMap<String, String> {
        let (Some(gate), Some(cert)) = (&self.gate, &peer.cert) else {
            return Default::default();
        };
        gate.keys_of(host_id)
            .into_iter()
            .find(|k| k.record.key_sha256 == cert.key_sha256)
            .map(|k| k.labels)
            .unwrap_or_default()
    }

    /// Why `peer` is revoked now, if it is, and what to do about it.
    pub fn check(&self, peer: &PeerInfo) -> Option<String> {
        let listed = self
            .list
            .borrow()
            .check(&peer.issuer, &peer.serial, peer.identity.as_ref().ok())
            .map(|reason| refusal(&reason));
        listed.or_else(|| self.gate.as_ref().and_then(|gate| gate.check(peer)))
    }

    /// A tonic interceptor refusing calls from revoked peers with PERMISSION_DENIED
    /// (install it with `tonic::service::InterceptorLayer` in front of every service).
    pub fn interceptor(
        &self,
    ) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone + use<> {
        let revocations = self.clone();
        move |request: tonic::Request<()>| {
            if let Some(peer) = portolan_tls::peer_info(&request)
                && let Some(reason) = revocations.check(peer)
            {
                warn!(
                    remote = %peer.remote_addr,
                    identity = %describe(peer),
                    serial = %serial_hex(&peer.serial),
                    %reason,
                    "refused call: revoked certificate"
                );
                crate::metrics::global()
                    .refusals
                    .inc(&[("reason", "revoked")]);
                return Err(Status::permission_denied(reason));
            }
            Ok(request)
        }
    }

    /// Registers a long-lived stream of `peer` (`what`: `ingest`, `watch`), refusing it
    /// with PERMISSION_DENIED if the peer is revoked already.
    pub fn open(&self, peer: &PeerInfo, what: &'static str) -> Result<LiveSession, Status> {
        if let Some(reason) = self.check(peer) {
            return Err(Status::permission_denied(reason));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let holder = Holder {
            peer: peer.clone(),
            what,
        };
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, holder.clone());
        }
        Ok(LiveSession {
            id,
            holder,
            list: self.list.clone(),
            gate: self.gate.clone(),
            live: self.live.clone(),
        })
    }

    /// How many streams are open.
    pub fn live_sessions(&self) -> usize {
        self.live.lock().map_or(0, |live| live.len())
    }

    async fn log_changes(mut self) {
        while self.list.changed().await.is_ok() {
            let list = self.list.borrow_and_update().clone();
            let ending: Vec<String> = self.live.lock().map_or_else(
                |_| Vec::new(),
                |live| {
                    live.values()
                        .filter_map(|h| {
                            h.listed(&list)
                                .map(|reason| format!("{} stream of {} ({reason})", h.what, who(h)))
                        })
                        .collect()
                },
            );
            info!(
                entries = list.len(),
                crl_entries = list.crl_entries(),
                ending = ending.len(),
                "revocation list in force: {}",
                if ending.is_empty() {
                    "no open stream is revoked".to_owned()
                } else {
                    format!("ending {}", ending.join("; "))
                }
            );
        }
    }
}

/// A refusal by the deny list or a CRL: the reason and what to do. (The enrollment gate's
/// reasons say what to do themselves.)
fn refusal(reason: &str) -> String {
    format!("{reason} (issue a new certificate, or remove the entry)")
}

fn who(h: &Holder) -> String {
    match &h.peer.identity {
        Ok(identity) => format!("{identity} (serial {})", serial_hex(&h.peer.serial)),
        Err(_) => format!("serial {}", serial_hex(&h.peer.serial)),
    }
}

fn describe(peer: &PeerInfo) -> String {
    match &peer.identity {
        Ok(identity) => identity.to_string(),
        Err(_) => "(no identity)".to_owned(),
    }
}

/// One open stream of a peer; dropping it unregisters it.
#[derive(Debug)]
pub struct LiveSession {
    id: u64,
    holder: Holder,
    list: watch::Receiver<Arc<RevocationList>>,
    gate: Option<Gate>,
    live: Arc<Mutex<BTreeMap<u64, Holder>>>,
}

impl LiveSession {
    /// Resolves, with the reason, once the list in force revokes this stream's peer;
    /// never resolves otherwise.
    pub async fn revoked(&mut self) -> String {
        let mut keys = self.gate.as_ref().map(Gate::subscribe);
        let mut list_open = true;
        loop {
            let listed = self.holder.listed(&self.list.borrow_and_update());
            if let Some(keys) = keys.as_mut() {
                keys.borrow_and_update();
            }
            let gated = self
                .gate
                .as_ref()
                .and_then(|gate| gate.check(&self.holder.peer));
            if let Some(reason) = listed.or(gated) {
                return reason;
            }
            let list_changed = async {
                if list_open {
                    self.list.changed().await.is_ok()
                } else {
                    std::future::pending().await
                }
            };
            let keys_changed = async {
                match keys.as_mut() {
                    Some(keys) => keys.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                open = list_changed => list_open = open,
                open = keys_changed => {
                    if !open {
                        keys = None;
                    }
                }
            }
            // Neither can change any more: nothing will revoke this stream.
            if !list_open && keys.is_none() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The PERMISSION_DENIED status ending a revoked stream.
    pub fn status(reason: &str) -> Status {
        Status::permission_denied(format!("{reason}: the stream is closed"))
    }

    /// Wraps a response stream so that it ends with PERMISSION_DENIED as soon as the peer
    /// is revoked (dropping `inner`, which stops whatever feeds it).
    pub fn guard<S>(self, inner: S) -> Revocable<S> {
        Revocable {
            inner: Some(inner),
            revoked: Box::pin(revoked_owned(self)),
        }
    }
}

async fn revoked_owned(mut session: LiveSession) -> String {
    let reason = session.revoked().await;
    warn!(
        identity = %who(&session.holder),
        %reason,
        "ending the {} stream of a revoked certificate",
        session.holder.what
    );
    reason
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&self.id);
        }
    }
}

/// A response stream that ends with PERMISSION_DENIED when its peer is revoked.
pub struct Revocable<S> {
    inner: Option<S>,
    revoked: Pin<Box<dyn Future<Output = String> + Send>>,
}

impl<S> std::fmt::Debug for Revocable<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocable")
            .field("open", &self.inner.is_some())
            .finish()
    }
}

impl<S, T> Stream for Revocable<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(reason) = this.revoked.as_mut().poll(cx) {
            this.inner = None;
            return Poll::Ready(Some(Err(LiveSession::status(&reason))));
        }
        Pin::new(inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portolan_tls::Identity;
    use std::time::Duration;
    use tokio_stream::StreamExt;

    fn peer(host: &str, serial: &[u8]) -> PeerInfo {
        PeerInfo::new(
            "127.0.0.1:1".parse().expect("addr"),
            Identity::agent(host),
            serial.to_vec(),
        )
    }

    #[tokio::test]
    async fn open_streams_end_when_their_peer_is_revoked_and_others_go_on() {
        let (tx, rx) = watch::channel(Arc::new(RevocationList::empty()));
        let revocations = Revocations::new(rx);
        let a = peer("host-a", &[0x0a]);
        let b = peer("host-b", &[0x0b]);
        let (a_tx, a_rx) = tokio::sync::mpsc::channel::<Result<u32, Status>>(4);
        let (b_tx, b_rx) = tokio::sync::mpsc::channel::<Result<u32, Status>>(4);
        let mut a_stream = revocations
            .open(&a, "ingest")
            .expect("not revoked")
            .guard(tokio_stream::wrappers::ReceiverStream::new(a_rx));
        let mut b_stream = revocations
            .open(&b, "ingest")
            .expect("not revoked")
            .guard(tokio_stream::wrappers::ReceiverStream::new(b_rx));
        assert_eq!(revocations.live_sessions(), 2);
        a_tx.send(Ok(1)).await.expect("open");
        assert_eq!(a_stream.next().await.map(|r| r.ok()), Some(Some(1)));

        tx.send_replace(Arc::new(
            RevocationList::parse("serial:0a\n").expect("list"),
        ));
        let ended = tokio::time::timeout(Duration::from_secs(1), a_stream.next())
            .await
            .expect("ends at once")
            .expect("an item")
            .expect_err("a status");
        assert_eq!(ended.code(), tonic::Code::PermissionDenied);
        assert!(
            ended.message().contains("serial 0a is revoked"),
            "{ended:?}"
        );
        assert!(a_stream.next().await.is_none());
        assert!(a_tx.is_closed(), "the feeding channel is dropped");

        b_tx.send(Ok(2)).await.expect("open");
        assert_eq!(b_stream.next().await.map(|r| r.ok()), Some(Some(2)));
        drop(a_stream);
        assert_eq!(revocations.live_sessions(), 1);

        let refused = revocations.open(&a, "watch").expect_err("revoked");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        tx.send_replace(Arc::new(
            RevocationList::parse("host:host-b\n").expect("list"),
        ));
        let ended = tokio::time::timeout(Duration::from_secs(1), b_stream.next())
            .await
            .expect("ends at once")
            .expect("an item")
            .expect_err("a status");
        assert!(ended.message().contains("host `host-b` is revoked"));
    }
}
