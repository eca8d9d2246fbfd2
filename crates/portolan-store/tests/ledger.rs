//! The host ledger against a real ClickHouse server (the managed one, one per test): the
//! one write path of ingest stores what the read-everything-from-ClickHouse path
//! (`Store::write_change`, kept as the oracle) stores, across a stream that resumes with
//! deltas; and Hello facts follow the host whatever the stream sends next.

mod support;
use support::Server;
use support::sample::{at, inventory, record, stats};

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use portolan_core::{Inventory, diff};
use portolan_store::{ChangeKind, DeltaOutcome, HostLedger, PendingWrite, Store};

const HOST: usize = 7;

async fn durable(pending: PendingWrite) -> Result<()> {
    pending.wait().await.context("a ledger write failed")
}

/// Queues the delta from `prior` to step `step` as `seq` and waits until it is durable.
async fn ledger_delta(
    ledger: &mut HostLedger,
    seq: u64,
    step: usize,
    prior: &Inventory,
) -> Result<()> {
    let change = diff(prior, &inventory(HOST, step));
    match ledger.delta(seq, at(step), &change, &stats(step)).await? {
        DeltaOutcome::Queued(_, pending) => durable(pending).await,
        DeltaOutcome::DoesNotApply(why) => anyhow::bail!("delta {seq} refused: {why}"),
    }
}

/// What users can read of a host, with the write times (which differ by design) left out.
async fn stored(store: &Store, host: &str) -> Result<String> {
    let mut out = String::new();
    let h = store.host(host).await?.context("the host is stored")?;
    out += &format!(
        "host {:?} {:?} {:?} seq {}\n",
        h.hostname, h.labels, h.state, h.seq
    );
    for s in store.current_sockets(host).await? {
        out += &format!("socket {:?} {:?} seq {}\n", s.socket, s.processes, s.seq);
    }
    for f in store.current_flows(host).await? {
        out += &format!("flow {:?} {:?} seq {}\n", f.flow, f.process, f.seq);
    }
    for e in store.socket_events(host).await? {
        out += &format!("socket event {e:?}\n");
    }
    for e in store.flow_events(host).await? {
        out += &format!("flow event {e:?}\n");
    }
    for r in store.reports(host).await? {
        out += &format!("report {} {} {:?}\n", r.seq, r.kind, r.stats);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_stores_what_the_oracle_stores() -> Result<()> {
    let server = Server::start("portolan_store=info").await?;
    let by_ledger = Arc::new(server.store("ledger_path").await?);
    let oracle = server.store("oracle_path").await?;
    let host = support::sample::host_id(HOST);

    // The ledger path: a stream with a snapshot and deltas, then a second stream (an
    // agent reconnected) that resumes with deltas on a ledger that reads the stored state.
    let (mut ledger, recovery) = HostLedger::open(by_ledger.clone(), &host).await?;
    ensure!(
        recovery.last_seq == 0,
        "a new host has no seq: {recovery:?}"
    );
    ledger.hello(record(HOST, &inventory(HOST, 0))).await?;
    let (_, pending) = ledger
        .snapshot(1, at(0), inventory(HOST, 0), &stats(0), None)
        .await?;
    durable(pending).await?;
    for step in 1..4 {
        ledger_delta(
            &mut ledger,
            step as u64 + 1,
            step,
            &inventory(HOST, step - 1),
        )
        .await?;
        if step == 2 {
            ledger.rest(); // held encoded while idle, decoded by the next delta
        }
    }
    drop(ledger);
    let (mut ledger, recovery) = HostLedger::open(by_ledger.clone(), &host).await?;
    ensure!(
        recovery.last_seq == 4,
        "the second stream resumes at 4: {recovery:?}"
    );
    ledger.hello(record(HOST, &inventory(HOST, 0))).await?;
    ensure!(
        !ledger.holds_state(),
        "a new stream reads the stored state on its first delta"
    );
    for step in 4..7 {
        ledger_delta(
            &mut ledger,
            step as u64 + 1,
            step,
            &inventory(HOST, step - 1),
        )
        .await?;
    }

    // The oracle: the same Hello facts and changes, each reading what it needs.
    oracle
        .upsert_host(&record(HOST, &inventory(HOST, 0)))
        .await?;
    oracle
        .write_change(
            &host,
            1,
            ChangeKind::Snapshot,
            at(0),
            &diff(&Inventory::default(), &inventory(HOST, 0)),
            &stats(0),
        )
        .await?;
    for step in 1..7 {
        let change = diff(&inventory(HOST, step - 1), &inventory(HOST, step));
        oracle
            .write_change(
                &host,
                step as u64 + 1,
                ChangeKind::Delta,
                at(step),
                &change,
                &stats(step),
            )
            .await?;
    }

    let (ours, theirs) = (
        stored(&by_ledger, &host).await?,
        stored(&oracle, &host).await?,
    );
    ensure!(
        ours.lines().count() > 30,
        "the comparison covers the history:\n{ours}"
    );
    ensure!(
        ours == theirs,
        "the ledger stored\n{ours}\nthe oracle stored\n{theirs}"
    );
    ensure!(
        by_ledger.load_current(&host).await? == inventory(HOST, 6),
        "the stored state is the last scan"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_facts_follow_the_host_on_a_stream_that_resumes_with_deltas() -> Result<()> {
    let server = Server::start("portolan_store=info").await?;
    let store = Arc::new(server.store("hello_facts").await?);
    let host = support::sample::host_id(HOST);

    let (mut ledger, _) = HostLedger::open(store.clone(), &host).await?;
    ensure!(
        !ledger.hello(record(HOST, &inventory(HOST, 0))).await?,
        "a new host's facts are stored with its snapshot"
    );
    let (_, pending) = ledger
        .snapshot(1, at(0), inventory(HOST, 0), &stats(0), None)
        .await?;
    durable(pending).await?;
    ledger_delta(&mut ledger, 2, 1, &inventory(HOST, 0)).await?;
    drop(ledger);

    // The agent restarts with new labels, hostname and version; its spool lines up with
    // the store, so it resumes with a delta and sends no snapshot.
    let mut changed = record(HOST, &inventory(HOST, 0));
    changed.labels = BTreeMap::from([
        ("env".into(), "staging".into()),
        ("role".into(), "db".into()),
    ]);
    changed.hostname = "node7.example".into();
    changed.agent_version = "0.2.0".into();
    let (mut ledger, recovery) = HostLedger::open(store.clone(), &host).await?;
    ensure!(recovery.last_seq == 2, "{recovery:?}");
    ensure!(
        ledger.hello(changed.clone()).await?,
        "changed Hello facts are written"
    );
    let stored_host = store.host(&host).await?.context("stored")?;
    ensure!(
        stored_host.labels == changed.labels
            && stored_host.hostname == changed.hostname
            && stored_host.agent_version == changed.agent_version,
        "the new facts are stored at Hello: {stored_host:?}"
    );
    ensure!(
        stored_host.state == inventory(HOST, 1).host,
        "the host facts stay those of the last change: {stored_host:?}"
    );
    ledger_delta(&mut ledger, 3, 2, &inventory(HOST, 1)).await?;
    let after = store.host(&host).await?.context("stored")?;
    ensure!(
        after.labels == changed.labels,
        "a delta keeps the new labels: {after:?}"
    );
    ensure!(
        after.state == inventory(HOST, 2).host,
        "and brings its host facts: {after:?}"
    );

    // The same facts again: nothing is written.
    drop(ledger);
    let (mut ledger, _) = HostLedger::open(store.clone(), &host).await?;
    ensure!(
        !ledger.hello(changed).await?,
        "unchanged Hello facts write nothing"
    );
    server.shutdown().await
}
