//! Enrollment's tables against a real ClickHouse server: tokens and host keys read back as
//! written, the latest write wins, uses are counted, and a retirement's deletion empties
//! the host's current state while its history stays.

mod support;
use support::Server;
use support::sample::{at, host_id, inventory, record, stats};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use portolan_core::enrollment::{KeyRecord, KeyState};
use portolan_store::HostLedger;
use portolan_store::enrollment::{StoredHostKey, StoredToken, next_version, now_secs};

fn token(id: &str, version: u64) -> StoredToken {
    StoredToken {
        id: id.into(),
        secret_sha256: "ab".repeat(32),
        host_patterns: vec!["web-*".into()],
        labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
        created_by: "spiffe://portolan/operator/admin/alice".into(),
        description: "test".into(),
        created_at: 1_760_000_000,
        expires_at: 1_760_086_400,
        max_uses: 3,
        revoked: false,
        version,
    }
}

fn key(host: &str, key: &str, state: KeyState, token: &str, version: u64) -> StoredHostKey {
    StoredHostKey {
        record: KeyRecord {
            host_id: host.into(),
            key_sha256: key.into(),
            state,
            decided_at: 1_760_000_100,
        },
        token_id: token.into(),
        labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
        requested_at: 1_760_000_100,
        decided_by: "token".into(),
        version,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_keys_round_trip_and_the_latest_wins() -> Result<()> {
    let server = Server::start("warn").await?;
    let store = server.store("enroll").await?;

    let first = token("t1", 1);
    store.write_enroll_token(&first).await?;
    store.write_enroll_token(&token("t2", 1)).await?;
    ensure!(store.enroll_token("t1").await? == Some(first.clone()));
    let revoked = StoredToken {
        revoked: true,
        version: next_version(first.version),
        ..first
    };
    store.write_enroll_token(&revoked).await?;
    ensure!(store.enroll_token("t1").await? == Some(revoked.clone()));
    ensure!(store.enroll_token("nope").await?.is_none());
    let all = store.enroll_tokens().await?;
    ensure!(all.len() == 2, "{all:?}");

    let bound = key("web-1", "k1", KeyState::Bound, "t1", 1);
    store.write_host_keys(std::slice::from_ref(&bound)).await?;
    store
        .write_host_keys(&[
            key("web-2", "k2", KeyState::Bound, "t1", 1),
            key("web-2", "k3", KeyState::Pending, "t2", 1),
        ])
        .await?;
    ensure!(store.host_keys_of("web-1").await? == vec![bound.clone()]);
    let uses = store.enroll_token_uses().await?;
    ensure!(
        uses.get("t1") == Some(&2) && uses.get("t2") == Some(&1),
        "{uses:?}"
    );
    // Approving k3 supersedes k2, in one write.
    let mut k2 = key("web-2", "k2", KeyState::Superseded, "t1", 2);
    k2.decided_by = "spiffe://portolan/operator/admin/alice".into();
    let k3 = key("web-2", "k3", KeyState::Bound, "t2", 2);
    store.write_host_keys(&[k2.clone(), k3.clone()]).await?;
    ensure!(store.host_keys_of("web-2").await? == vec![k2, k3]);
    ensure!(store.host_keys().await?.len() == 3);
    // Uses do not change with a decision.
    ensure!(store.enroll_token_uses().await? == uses);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_current_state_keeps_history() -> Result<()> {
    let server = Server::start("warn").await?;
    let store = Arc::new(server.store("retire").await?);
    for h in [0, 1] {
        let (mut ledger, _) = HostLedger::open(store.clone(), &host_id(h)).await?;
        let inv = inventory(h, 0);
        ledger.hello(record(h, &inv)).await?;
        let (_, pending) = ledger.snapshot(1, at(0), inv, &stats(0), None).await?;
        pending.wait().await?;
    }
    let (gone, kept) = (host_id(0), host_id(1));
    let before = store.current_rows(&gone).await?;
    ensure!(before > 0);
    let kept_before = store.current_rows(&kept).await?;
    let events_before = store.socket_events(&gone).await?.len();
    ensure!(store.delete_current_state(&gone).await? == before);
    // The deletion is a mutation: it completes in the background, within seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.current_rows(&gone).await? != 0 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "current rows stay after the deletion"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(store.current_rows(&kept).await? == kept_before);
    ensure!(store.socket_events(&gone).await?.len() == events_before);
    ensure!(now_secs() > 1_760_000_000);
    server.shutdown().await
}
