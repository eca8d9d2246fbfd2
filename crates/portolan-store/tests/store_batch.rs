//! Group commit against a real ClickHouse server (the managed one, one per test): many
//! hosts writing at once store what they store one by one, with one INSERT per table
//! per batch; a failed batch leaves each of its hosts recoverable; a replay changes
//! nothing. Also prints the before/after figures of the change (run with
//! `--no-capture`).

mod support;
use support::Server;
use support::sample::{at, host_id, inventory, record, stats};

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use portolan_core::{Inventory, diff};
use portolan_store::{
    BatchConfig, ChangeKind, DeltaOutcome, HostLedger, PendingWrite, Store, StoreError, StoredHost,
    WriteReceipt, WriteStats,
};

/// Writes host `h`'s step `step` as change `seq`, a delta from `prior`, through the
/// host's ledger, the way an ingest stream does, and waits until it is durable.
async fn write_step(
    ledger: &mut HostLedger,
    h: usize,
    seq: u64,
    step: usize,
    prior: &Inventory,
) -> Result<WriteReceipt, StoreError> {
    let next = inventory(h, step);
    match ledger
        .delta(seq, at(step), &diff(prior, &next), &stats(step))
        .await?
    {
        DeltaOutcome::Queued(receipt, pending) => pending.wait().await.map(|()| receipt),
        DeltaOutcome::DoesNotApply(why) => panic!("the test's delta {seq} does not apply: {why}"),
    }
}

/// Writes host `h`'s steps `0..steps` the way an ingest stream does: through the host's
/// ledger (Hello, a snapshot, then every change from what the ledger holds, no reads), a
/// heartbeat after each.
async fn write_as_stream(store: &Arc<Store>, h: usize, steps: usize) -> Result<()> {
    let (mut ledger, _) = HostLedger::open(store.clone(), &host_id(h)).await?;
    let first = inventory(h, 0);
    ledger.hello(record(h, &first)).await?;
    let (_, pending) = ledger
        .snapshot(1, at(0), first.clone(), &stats(0), None)
        .await?;
    pending.wait().await?;
    let mut current = first;
    for step in 1..steps {
        ledger
            .heartbeat(at(step), &stats(step))
            .await?
            .wait()
            .await?;
        write_step(&mut ledger, h, step as u64 + 1, step, &current).await?;
        current = inventory(h, step);
    }
    Ok(())
}

/// The same with [`Store::write_change`], which reads the stored state it needs (what
/// every change did before batching).
async fn write_reading(store: &Store, h: usize, steps: usize) -> Result<()> {
    let host = host_id(h);
    let mut current = store.load_current(&host).await?;
    let first = inventory(h, 0);
    store.upsert_host(&record(h, &first)).await?;
    store
        .write_change(
            &host,
            1,
            ChangeKind::Snapshot,
            at(0),
            &diff(&current, &first),
            &stats(0),
        )
        .await?;
    current = first;
    for step in 1..steps {
        store
            .write_heartbeat(&host, step as u64, at(step), &stats(step))
            .await?;
        let next = inventory(h, step);
        store
            .write_change(
                &host,
                step as u64 + 1,
                ChangeKind::Delta,
                at(step),
                &diff(&current, &next),
                &stats(step),
            )
            .await?;
        current = next;
    }
    Ok(())
}

/// Everything queries see of a host, minus write times.
async fn seen(store: &Store, host: &str) -> Result<String> {
    // First: it rolls back what a failed write of this store left.
    let current = store.load_current(host).await?;
    let stored = store.host(host).await?.context("host row")?;
    Ok(format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?} {} {:?}",
        current,
        store.socket_events(host).await?,
        store.flow_events(host).await?,
        store.reports(host).await?,
        store.last_seq(host).await?,
        stored.state,
        stored.seq,
        (stored.hostname, stored.labels),
    ))
}

/// INSERTs ClickHouse received into `table` of `database`: every INSERT makes one part
/// of level 0 (all rows here fall in one partition), and a merged-away part stays listed
/// (inactive) for minutes.
async fn insert_parts(store: &Store, table: &str) -> Result<u64> {
    Ok(store
        .client()
        .query("SELECT count() FROM system.parts WHERE database = ? AND table = ? AND level = 0")
        .bind(store.database())
        .bind(table)
        .fetch_one::<u64>()
        .await?)
}

async fn run_fleet<F, Fut>(store: &Arc<Store>, hosts: usize, steps: usize, write: F) -> Result<()>
where
    F: Fn(Arc<Store>, usize, usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for h in 0..hosts {
        tasks.spawn(write(store.clone(), h, steps));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_hosts_at_once_store_what_they_store_one_by_one_in_few_inserts() -> Result<()> {
    let server = Server::start("warn").await?;
    let (hosts, steps) = (40, 6);
    let serial = server
        .batched_store("batch_serial", BatchConfig::unbatched())
        .await?;
    for h in 0..hosts {
        write_reading(&serial, h, steps).await?;
    }
    let batched = Arc::new(
        server
            .batched_store("batch_concurrent", BatchConfig::default())
            .await?,
    );
    run_fleet(&batched, hosts, steps, |store, h, steps| async move {
        write_as_stream(&store, h, steps).await
    })
    .await?;

    for h in 0..hosts {
        let host = host_id(h);
        assert_eq!(
            seen(&batched, &host).await?,
            seen(&serial, &host).await?,
            "{host}"
        );
    }
    assert_eq!(
        batched.load_current(&host_id(7)).await?,
        inventory(7, steps - 1)
    );

    // A batch holds the writes of many hosts: the store's count, and ClickHouse's.
    let stats = batched.write_stats();
    // Changes and heartbeats: a new host's Hello facts go with its snapshot (as ingest
    // writes them), not as a write of their own.
    let writes = (hosts * (steps + (steps - 1))) as u64;
    assert_eq!(stats.batched_writes, writes, "{stats:?}");
    assert_eq!(stats.failed_batches, 0, "{stats:?}");
    assert!(
        stats.batches * 4 <= stats.batched_writes,
        "fewer than 4 writes per batch: {stats:?}"
    );
    let changes = (hosts * steps) as u64;
    let parts = insert_parts(&batched, "socket_events").await?;
    let report_parts = insert_parts(&batched, "host_reports").await?;
    let serial_parts = insert_parts(&serial, "socket_events").await?;
    eprintln!(
        "{changes} changes of {hosts} hosts: socket_events INSERTs one by one {serial_parts}, batched {parts}; host_reports INSERTs batched {report_parts}; {stats:?}"
    );
    assert_eq!(serial_parts, changes, "one INSERT per change one by one");
    assert!(
        parts * 4 <= changes,
        "{parts} INSERTs into socket_events for {changes} changes"
    );
    assert!(report_parts <= stats.batches, "{report_parts} > {stats:?}");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_leaves_each_of_its_hosts_recoverable_and_nothing_half_committed()
-> Result<()> {
    let server = Server::start("warn").await?;
    let database = "batch_failure";
    // A long window: the writes of all hosts below share batches.
    let batching = BatchConfig {
        window: Duration::from_millis(500),
        max_rows: 100_000,
    };
    let store = Arc::new(server.batched_store(database, batching).await?);
    let hosts = 12;
    run_fleet(&store, hosts, 1, |store, h, steps| async move {
        write_as_stream(&store, h, steps).await
    })
    .await?;
    let mut committed = Vec::new();
    for h in 0..hosts {
        committed.push(seen(&store, &host_id(h)).await?);
    }
    let before = store.write_stats();

    // Each host's stream holds its state before the failure.
    let mut ledgers = Vec::new();
    for h in 0..hosts {
        let (mut ledger, _) = HostLedger::open(store.clone(), &host_id(h)).await?;
        ledger.load().await?;
        ledgers.push(ledger);
    }
    // The commit markers' table goes away: every data INSERT of the batch succeeds.
    let client = store.client();
    client
        .query("RENAME TABLE host_reports TO host_reports_away")
        .execute()
        .await?;
    let mut tasks = tokio::task::JoinSet::new();
    for (h, mut ledger) in ledgers.into_iter().enumerate() {
        tasks.spawn(async move {
            let result = write_step(&mut ledger, h, 2, 1, &inventory(h, 0)).await;
            anyhow::Ok(result)
        });
    }
    let mut errors = Vec::new();
    while let Some(done) = tasks.join_next().await {
        errors.push(done??.expect_err("no host_reports table"));
    }
    client
        .query("RENAME TABLE host_reports_away TO host_reports")
        .execute()
        .await?;
    let after = store.write_stats();
    assert!(
        after.failed_batches > before.failed_batches,
        "{before:?} {after:?}"
    );
    assert!(
        after.batches - before.batches < hosts as u64,
        "the failed writes shared batches: {before:?} {after:?}"
    );
    // At rest the first write goes at once, alone; the others arrive while it is written
    // and share the next batch.
    let shared = errors
        .iter()
        .filter(|e| matches!(e, StoreError::Batch { writes, .. } if *writes > 1))
        .count();
    assert!(shared >= hosts - 1, "{errors:?}");
    for e in &errors {
        assert!(matches!(e, StoreError::Batch { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("cannot insert into `host_reports`: "),
            "{e}"
        );
    }
    let half_written: u64 = client
        .query("SELECT count() FROM socket_events WHERE seq = 2")
        .fetch_one()
        .await?;
    assert!(half_written > 0, "the batch's data rows were written");

    // A collector that never saw the failure (another replica, a restart) recovers the
    // first half at their streams' start…
    let fresh = server
        .batched_store(database, BatchConfig::default())
        .await?;
    for h in 0..hosts / 2 {
        let recovery = fresh.recover(&host_id(h)).await?;
        assert_eq!(recovery.last_seq, 1);
        assert!(recovery.rolled_back_rows > 0, "{recovery:?}");
    }
    // …and the failed store remembers the rest before their next read.
    for (h, committed) in committed.iter().enumerate() {
        assert_eq!(&seen(&store, &host_id(h)).await?, committed, "{h}");
    }
    // Then the same change stores cleanly, and the host continues.
    for h in 0..hosts {
        let host = host_id(h);
        let (mut ledger, _) = HostLedger::open(store.clone(), &host).await?;
        let next = inventory(h, 1);
        write_step(&mut ledger, h, 2, 1, &inventory(h, 0)).await?;
        assert_eq!(store.load_current(&host).await?, next);
        assert_eq!(store.last_seq(&host).await?, 2);
    }
    server.shutdown().await
}

/// Queues the deltas of host `h` to `inventory(h, seq)` for each of `seqs`, from
/// `prior` (left at the last), without waiting for any to be stored.
async fn queue_deltas(
    ledger: &mut HostLedger,
    h: usize,
    seqs: std::ops::RangeInclusive<u64>,
    prior: &mut Inventory,
) -> Result<Vec<PendingWrite>> {
    let mut pending = Vec::new();
    for seq in seqs {
        let next = inventory(h, seq as usize);
        let change = diff(prior, &next);
        match ledger
            .delta(seq, at(seq as usize), &change, &stats(seq as usize))
            .await?
        {
            DeltaOutcome::Queued(_, write) => pending.push(write),
            DeltaOutcome::DoesNotApply(why) => anyhow::bail!("delta {seq} refused: {why}"),
        }
        *prior = next;
    }
    Ok(pending)
}

/// A stream queues its host's next changes before the last is durable (an agent catching
/// up on its spool); when one fails, none queued after it is stored, and none can be
/// queued until the host is rolled back: history never skips a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_changes_of_a_host_stop_at_the_first_that_fails() -> Result<()> {
    let server = Server::start("warn").await?;
    let store = Arc::new(
        server
            .batched_store("batch_pipeline", BatchConfig::default())
            .await?,
    );
    let (h, host) = (5, host_id(5));
    write_as_stream(&store, h, 1).await?;
    let (mut ledger, _) = HostLedger::open(store.clone(), &host).await?;
    let mut prior = inventory(h, 0);
    let client = store.client();

    // Seqs 2..=5 queued back to back: they are stored in order, all of them, and
    // without waiting for each other (some share a batch).
    let before = store.write_stats();
    for write in queue_deltas(&mut ledger, h, 2..=5, &mut prior).await? {
        write.wait().await?;
    }
    let batches = store.write_stats().batches - before.batches;
    assert!(batches < 4, "4 queued changes took {batches} batches");
    assert_eq!(store.last_seq(&host).await?, 5);
    assert_eq!(store.load_current(&host).await?, prior);

    // Seq 6 fails (no commit-marker table); 7 and 8, queued behind it, are refused
    // unwritten, and nothing more can be queued. Each write is a batch of its own here
    // (`max_rows` 1), so 7 and 8 reach their batches after 6 failed: the batcher itself
    // must refuse them.
    let store = Arc::new(
        server
            .batched_store(
                "batch_pipeline",
                BatchConfig {
                    max_rows: 1,
                    ..BatchConfig::default()
                },
            )
            .await?,
    );
    let (mut ledger, _) = HostLedger::open(store.clone(), &host).await?;
    ledger.load().await?;
    client
        .query("RENAME TABLE host_reports TO host_reports_away")
        .execute()
        .await?;
    let mut queued_prior = prior.clone();
    let pending = queue_deltas(&mut ledger, h, 6..=8, &mut queued_prior).await?;
    let mut results = Vec::new();
    for write in pending {
        results.push(write.wait().await);
    }
    client
        .query("RENAME TABLE host_reports_away TO host_reports")
        .execute()
        .await?;
    assert!(
        matches!(&results[0], Err(StoreError::Batch { writes: 1, .. })),
        "{:?}",
        results[0]
    );
    for later in &results[1..] {
        assert!(
            matches!(later, Err(StoreError::Batch { error, .. })
                if matches!(**error, StoreError::EarlierWriteFailed { .. })),
            "{later:?}"
        );
    }
    // Not a row of 7 or 8 was sent (before any rollback).
    let written_after: u64 = client
        .query("SELECT count() FROM socket_events WHERE seq >= 7")
        .fetch_one()
        .await?;
    assert_eq!(
        written_after, 0,
        "changes queued behind the failure were written"
    );
    let again = queue_deltas(&mut ledger, h, 9..=9, &mut queued_prior).await;
    let refused = again
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<StoreError>());
    assert!(
        matches!(refused, Some(StoreError::EarlierWriteFailed { .. })),
        "{:?}",
        again.map(|w| w.len())
    );

    // The rollback (the agent's next stream) leaves exactly seqs 1..=5.
    let recovery = store.recover(&host).await?;
    assert_eq!(recovery.last_seq, 5);
    assert_eq!(store.load_current(&host).await?, prior);
    let after_failure: u64 = client
        .query("SELECT count() FROM socket_events WHERE seq >= 6")
        .fetch_one()
        .await?;
    assert_eq!(
        after_failure, 0,
        "nothing of the failed change or after it is stored"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_batched_change_changes_nothing_users_see() -> Result<()> {
    let server = Server::start("warn").await?;
    let store = Arc::new(
        server
            .batched_store("batch_replay", BatchConfig::default())
            .await?,
    );
    let h = 3;
    let host = host_id(h);
    write_as_stream(&store, h, 2).await?;
    // Seq 3 carries new host facts (a new interface) besides its sockets and flows.
    let prior = store.load_current(&host).await?;
    let facts_seq = |stored: Option<StoredHost>| stored.map(|h| h.seq);
    assert_eq!(facts_seq(store.host(&host).await?), Some(1));
    let next = inventory(h, 2);
    assert_ne!(prior.host, next.host);
    let mut once = None;
    // The agent did not hear the ack of seq 3 and sends it again on a stream that still
    // holds the state before it (a replica that loaded before the write).
    let mut ledgers = Vec::new();
    for _ in 0..3 {
        let (mut ledger, _) = HostLedger::open(store.clone(), &host).await?;
        ledger.load().await?;
        ledgers.push(ledger);
    }
    for mut ledger in ledgers {
        write_step(&mut ledger, h, 3, 2, &prior).await?;
        assert_eq!(facts_seq(store.host(&host).await?), Some(3));
        let now = seen(&store, &host).await?;
        assert_eq!(store.load_current(&host).await?, next);
        match &once {
            None => once = Some(now),
            Some(once) => assert_eq!(&now, once),
        }
    }
    server.shutdown().await
}

/// One configuration's figures.
struct Figures {
    wall: Duration,
    stats: WriteStats,
}

async fn measure(
    server: &Server,
    database: &str,
    batching: BatchConfig,
    hosts: usize,
    steps: usize,
    reading: bool,
) -> Result<Figures> {
    let store = Arc::new(server.batched_store(database, batching).await?);
    let started = Instant::now();
    run_fleet(&store, hosts, steps, move |store, h, steps| async move {
        if reading {
            write_reading(&store, h, steps).await
        } else {
            write_as_stream(&store, h, steps).await
        }
    })
    .await?;
    Ok(Figures {
        wall: started.elapsed(),
        stats: store.write_stats(),
    })
}

/// Before/after in one run: the same fleet written the old way (every change reads the
/// stored rows it needs and sends its own INSERTs) and batched from what streams hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_one_by_one_against_batched() -> Result<()> {
    let server = Server::start("warn").await?;
    // Small enough for the test suite; the figures in the notes are from 100 x 5.
    let (hosts, steps) = (30, 3);
    let before = measure(
        &server,
        "figures_before",
        BatchConfig::unbatched(),
        hosts,
        steps,
        true,
    )
    .await?;
    let after = measure(
        &server,
        "figures_after",
        BatchConfig::default(),
        hosts,
        steps,
        false,
    )
    .await?;
    let rate = |f: &Figures| f.stats.rows as f64 / f.wall.as_secs_f64();
    eprintln!("{hosts} hosts x {steps} changes (+ Hello and heartbeats), concurrently:");
    for (name, f) in [("one by one", &before), ("batched", &after)] {
        eprintln!(
            "  {name:<11} INSERTs {:>6}  rows {:>6}  batches {:>4}  wall {:>7.2} s  rows/s {:>8.0}",
            f.stats.inserts,
            f.stats.rows,
            f.stats.batches,
            f.wall.as_secs_f64(),
            rate(f)
        );
    }
    eprintln!(
        "  batched / one by one: INSERTs {:.3}x, rows/s {:.2}x",
        after.stats.inserts as f64 / before.stats.inserts as f64,
        rate(&after) / rate(&before)
    );
    ensure!(
        before.stats.rows == after.stats.rows,
        "both wrote the same rows: {} vs {}",
        before.stats.rows,
        after.stats.rows
    );
    ensure!(
        after.stats.inserts * 5 < before.stats.inserts,
        "batching cut INSERTs by less than 5x: {} vs {}",
        after.stats.inserts,
        before.stats.inserts
    );
    server.shutdown().await
}
