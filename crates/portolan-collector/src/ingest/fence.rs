//! One ingest stream per host in a collector: a newer stream supersedes the older one,
//! and starts only once the older one has finished what it was writing.
//!
//! Two streams of one host can overlap: an agent killed while its network was down
//! leaves a TCP connection whose queued data the kernel still delivers when the network
//! comes back (an orphaned socket), while the restarted agent has already connected. Each
//! stream reads the host's stored seq when it starts; if both wrote, the older would write
//! under the newer one's feet, and the newer would find its deltas no longer apply. So the
//! newer stream signals the older (which ends at its next message) and waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedMutexGuard, watch};

/// The hosts' stream slots of one collector.
#[derive(Debug, Default)]
pub(crate) struct HostStreams {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

#[derive(Debug)]
struct Slot {
    /// Held by the host's current stream for its whole life.
    held: Arc<tokio::sync::Mutex<()>>,
    /// The generation of the newest stream; older streams end when it changes.
    newest: watch::Sender<u64>,
}

/// A stream's hold on its host: while it lives, no newer stream of the host writes.
#[derive(Debug)]
pub(crate) struct Claim {
    generation: u64,
    newest: watch::Receiver<u64>,
    _held: OwnedMutexGuard<()>,
}

impl HostStreams {
    /// Takes the host's slot: tells the current stream (if any) to end, and waits until
    /// it has.
    pub(crate) async fn claim(&self, host_id: &str) -> Claim {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(host_id.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    held: Arc::new(tokio::sync::Mutex::new(())),
                    newest: watch::channel(0).0,
                })
            })
            .clone();
        let mut generation = 0;
        slot.newest.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let newest = slot.newest.subscribe();
        let held = slot.held.clone().lock_owned().await;
        Claim {
            generation,
            newest,
            _held: held,
        }
    }
}

impl Claim {
    /// Resolves when a newer stream of the same host wants the slot.
    pub(crate) async fn superseded(&mut self) {
        loop {
            if *self.newest.borrow_and_update() != self.generation {
                return;
            }
            if self.newest.changed().await.is_err() {
                // The slot is never dropped while a claim lives; wait forever otherwise.
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_newer_stream_supersedes_and_waits_for_the_older() {
        let streams = Arc::new(HostStreams::default());
        let mut first = streams.claim("h").await;
        let other_host = streams.claim("other").await;
        let second = {
            let streams = streams.clone();
            tokio::spawn(async move { streams.claim("h").await })
        };
        // The first is told to end, and the second waits until it does.
        tokio::time::timeout(Duration::from_secs(5), first.superseded())
            .await
            .expect("the older stream is superseded");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !second.is_finished(),
            "the newer stream waits for the older"
        );
        drop(first);
        let mut second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the newer stream gets the slot")
            .expect("claim task");
        // Nothing newer: the second is not superseded; another host is unaffected.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), second.superseded())
                .await
                .is_err()
        );
        drop(other_host);
    }
}
