//! Group commit: the rows of the changes, heartbeats and Hello facts that reach the store
//! within a short window, from every stream, written with one INSERT per table.
//!
//! A collector serving thousands of agents would otherwise send ClickHouse several tiny
//! INSERTs per change, and ClickHouse (parts, merges, concurrent queries) gives out long
//! before the collector's CPU does. Here one batch is written at a time, and batches
//! start at least [`BatchConfig::window`] apart: at rest a change is written as soon as
//! it arrives, and under load every write arriving while a batch is written or while
//! the window since the last batch's start is open joins the next batch (up to
//! [`BatchConfig::max_rows`]). The INSERTs per table per second are at most one per
//! window however many agents write, and the batches grow with the load instead. A
//! batch is written data tables first (concurrently, one INSERT each), then
//! `host_reports`, whose rows are the commit markers of the batch's changes. Each
//! writer's future completes only after that last INSERT returned: an agent is
//! acknowledged only once its change is durable.
//!
//! When any INSERT of a batch fails, every host in the batch is marked dirty (the store
//! rolls back its uncommitted rows with [`super::Store::recover`] before its next read or
//! write) and every writer of the batch gets the error; so does every later write of a
//! dirty host already queued, which is refused without being written: a host's changes
//! are stored in order, or not at all past the first that failed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clickhouse::{Client, Row, RowOwned, RowWrite};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::StoreError;
use super::error::Endpoint;
use super::rowbinary::Encoded;
use super::rows::{HostRow, ReportRow};
use super::schema::table;

/// Writes waiting for a batch; past this, writers wait for room (their streams stop
/// reading from their agents, which wait for their acknowledgements).
const QUEUE: usize = 16_384;

/// How writes are grouped into batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// The least time between the starts of two batches: the longest a write waits for
    /// others to join it. Zero: no batching, every write is its own INSERTs, issued one
    /// after another.
    pub window: Duration,
    /// Rows past which a batch is written without waiting for its window to close. A
    /// single write larger than this is a batch of its own.
    pub max_rows: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            window: Duration::from_millis(250),
            max_rows: 100_000,
        }
    }
}

impl BatchConfig {
    /// No batching: each write on its own, as one INSERT per table one after another.
    pub fn unbatched() -> BatchConfig {
        BatchConfig {
            window: Duration::ZERO,
            max_rows: 0,
        }
    }
}

/// What the store has written since it connected (all of its INSERTs, batched or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// INSERT statements sent to ClickHouse.
    pub inserts: u64,
    /// Rows in them.
    pub rows: u64,
    /// Batches written (successfully or not).
    pub batches: u64,
    /// Writes (changes, heartbeats, Hello facts) that went through a batch.
    pub batched_writes: u64,
    /// Batches that failed.
    pub failed_batches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    inserts: AtomicU64,
    rows: AtomicU64,
    batches: AtomicU64,
    batched_writes: AtomicU64,
    failed_batches: AtomicU64,
}

/// The rows of one or more writes, per table: those of the four tables every change
/// writes to already encoded ([`super::rowbinary`]).
#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub socket_events: Encoded,
    pub sockets_current: Encoded,
    pub flow_events: Encoded,
    pub flows_current: Encoded,
    pub hosts: Vec<HostRow>,
    /// Written last: the commit markers.
    pub host_reports: Vec<ReportRow>,
}

impl Rows {
    fn len(&self) -> usize {
        self.socket_events.rows
            + self.sockets_current.rows
            + self.flow_events.rows
            + self.flows_current.rows
            + self.hosts.len()
            + self.host_reports.len()
    }

    fn append(&mut self, mut other: Rows) {
        self.socket_events.append(other.socket_events);
        self.sockets_current.append(other.sockets_current);
        self.flow_events.append(other.flow_events);
        self.flows_current.append(other.flows_current);
        self.hosts.append(&mut other.hosts);
        self.host_reports.append(&mut other.host_reports);
    }
}

/// Sends INSERTs within the store's request bound, and remembers hosts whose write
/// failed. Shared by the store and its batch task.
#[derive(Debug)]
pub(crate) struct Writer {
    client: Client,
    endpoint: Arc<Endpoint>,
    requests: Arc<Semaphore>,
    dirty: Arc<Mutex<HashSet<String>>>,
    counters: Counters,
}

impl Writer {
    pub(crate) fn new(
        client: Client,
        endpoint: Arc<Endpoint>,
        requests: Arc<Semaphore>,
        dirty: Arc<Mutex<HashSet<String>>>,
    ) -> Writer {
        Writer {
            client,
            endpoint,
            requests,
            dirty,
            counters: Counters::default(),
        }
    }

    pub(crate) fn mark_dirty(&self, host_id: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(host_id.to_string());
    }

    pub(crate) fn stats(&self) -> WriteStats {
        let c = &self.counters;
        WriteStats {
            inserts: c.inserts.load(Ordering::Relaxed),
            rows: c.rows.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            batched_writes: c.batched_writes.load(Ordering::Relaxed),
            failed_batches: c.failed_batches.load(Ordering::Relaxed),
        }
    }

    fn map_err(&self, table: &str) -> impl FnOnce(clickhouse::error::Error) -> StoreError {
        let endpoint = self.endpoint.clone();
        let table = table.to_string();
        move |error| endpoint.error("insert into", &table, error)
    }

    /// One INSERT of `rows` into `table` (none when `rows` is empty), within the
    /// request bound.
    pub(crate) async fn insert<T>(&self, table: &'static str, rows: &[T]) -> Result<u64, StoreError>
    where
        T: Row + RowOwned + RowWrite,
    {
        if rows.is_empty() {
            return Ok(0);
        }
        // The semaphore is never closed: `Err` cannot happen, and would only mean no bound.
        let _turn = self.requests.acquire().await.ok();
        self.counters.inserts.fetch_add(1, Ordering::Relaxed);
        let mut insert = self
            .client
            .insert::<T>(table)
            .await
            .map_err(self.map_err(table))?;
        for row in rows {
            insert.write(row).await.map_err(self.map_err(table))?;
        }
        insert.end().await.map_err(self.map_err(table))?;
        self.counters
            .rows
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(rows.len() as u64)
    }

    /// One `INSERT … FORMAT RowBinary` of rows already encoded (none when there are
    /// none), sent in LZ4-compressed chunks, within the request bound.
    pub(crate) async fn insert_encoded(
        &self,
        table: &'static str,
        rows: Encoded,
    ) -> Result<u64, StoreError> {
        /// Bytes compressed and sent at a time.
        const CHUNK: usize = 1 << 20;
        if rows.rows == 0 {
            return Ok(0);
        }
        let _turn = self.requests.acquire().await.ok();
        self.counters.inserts.fetch_add(1, Ordering::Relaxed);
        let mut insert = self
            .client
            .insert_formatted_with(format!("INSERT INTO {table} FORMAT RowBinary"));
        let n = rows.rows as u64;
        for chunk in rows.into_chunks(CHUNK) {
            insert.send(chunk).await.map_err(self.map_err(table))?;
        }
        insert.end().await.map_err(self.map_err(table))?;
        self.counters.rows.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Writes `rows` one table after another, `host_reports` last.
    async fn write_sequential(&self, rows: Rows) -> Result<(), StoreError> {
        self.insert_encoded(table::SOCKET_EVENTS, rows.socket_events)
            .await?;
        self.insert_encoded(table::FLOW_EVENTS, rows.flow_events)
            .await?;
        self.insert_encoded(table::SOCKETS_CURRENT, rows.sockets_current)
            .await?;
        self.insert_encoded(table::FLOWS_CURRENT, rows.flows_current)
            .await?;
        self.insert(table::HOSTS, &rows.hosts).await?;
        self.insert(table::HOST_REPORTS, &rows.host_reports).await?;
        Ok(())
    }

    /// Writes `rows`: the data tables at the same time, then `host_reports`.
    async fn write_concurrent(&self, rows: Rows) -> Result<(), StoreError> {
        let Rows {
            socket_events,
            sockets_current,
            flow_events,
            flows_current,
            hosts,
            host_reports,
        } = rows;
        tokio::try_join!(
            self.insert_encoded(table::SOCKET_EVENTS, socket_events),
            self.insert_encoded(table::FLOW_EVENTS, flow_events),
            self.insert_encoded(table::SOCKETS_CURRENT, sockets_current),
            self.insert_encoded(table::FLOWS_CURRENT, flows_current),
            self.insert(table::HOSTS, &hosts),
        )?;
        self.insert(table::HOST_REPORTS, &host_reports).await?;
        Ok(())
    }

    /// Whether a write of `host_id` failed and is not rolled back yet.
    pub(crate) fn is_dirty(&self, host_id: &str) -> bool {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(host_id)
    }

    async fn write_batch(&self, jobs: Vec<Job>) {
        let mut rows = Rows::default();
        let mut hosts = Vec::with_capacity(jobs.len());
        let mut done = Vec::with_capacity(jobs.len());
        for job in jobs {
            // A host whose earlier write failed is rolled back before it writes again:
            // its later changes are not written past the gap.
            if self.is_dirty(&job.host_id) {
                let _ = job.done.send(Err(BatchFailure {
                    writes: 1,
                    error: Arc::new(StoreError::EarlierWriteFailed {
                        host_id: job.host_id,
                    }),
                }));
                continue;
            }
            rows.append(job.rows);
            hosts.push(job.host_id);
            done.push(job.done);
        }
        let c = &self.counters;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.batched_writes
            .fetch_add(hosts.len() as u64, Ordering::Relaxed);
        let row_count = rows.len();
        let result = self.write_concurrent(rows).await;
        match result {
            Ok(()) => {
                tracing::debug!(writes = hosts.len(), rows = row_count, "batch stored");
                for d in done {
                    let _ = d.send(Ok(()));
                }
            }
            Err(error) => {
                c.failed_batches.fetch_add(1, Ordering::Relaxed);
                // Before anyone hears of the failure: each host's next write first rolls
                // back what this batch left of it.
                for host in &hosts {
                    self.mark_dirty(host);
                }
                tracing::warn!(writes = hosts.len(), rows = row_count, %error, "batched write failed; its hosts are rolled back before their next write");
                let error = Arc::new(error);
                let writes = hosts.len();
                for d in done {
                    let _ = d.send(Err(BatchFailure {
                        writes,
                        error: error.clone(),
                    }));
                }
            }
        }
    }
}

/// Why a batch failed, as each of its writers hears it.
#[derive(Debug)]
struct BatchFailure {
    writes: usize,
    error: Arc<StoreError>,
}

/// One write waiting for its batch.
struct Job {
    host_id: String,
    rows: Rows,
    done: oneshot::Sender<Result<(), BatchFailure>>,
}

/// A write queued for a batch: [`PendingWrite::wait`] resolves
/// once it is stored, or failed.
#[derive(Debug)]
pub struct PendingWrite {
    state: Pending,
}

#[derive(Debug)]
enum Pending {
    Done(Result<(), StoreError>),
    Queued {
        result: oneshot::Receiver<Result<(), BatchFailure>>,
        host_id: String,
        writer: Arc<Writer>,
    },
}

impl PendingWrite {
    pub(crate) fn done(result: Result<(), StoreError>) -> PendingWrite {
        PendingWrite {
            state: Pending::Done(result),
        }
    }

    /// Waits until the write is durable in ClickHouse, or failed (its host is then
    /// rolled back before its next read or write).
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.state {
            Pending::Done(result) => result,
            Pending::Queued {
                result,
                host_id,
                writer,
            } => match result.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(failure)) => Err(StoreError::Batch {
                    writes: failure.writes,
                    error: failure.error,
                }),
                Err(_) => {
                    writer.mark_dirty(&host_id);
                    Err(StoreError::BatchLost)
                }
            },
        }
    }
}

/// Gathers writes into batches (see the module documentation).
#[derive(Debug)]
pub(crate) struct Batcher {
    config: BatchConfig,
    writer: Arc<Writer>,
    /// The queue of the batch task; started by the first write (on the runtime of that
    /// write), and again should that runtime have gone.
    queue: Mutex<Option<mpsc::Sender<Job>>>,
}

impl Batcher {
    pub(crate) fn new(config: BatchConfig, writer: Arc<Writer>) -> Batcher {
        Batcher {
            config,
            writer,
            queue: Mutex::new(None),
        }
    }

    pub(crate) fn config(&self) -> BatchConfig {
        self.config
    }

    pub(crate) fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Writes `rows` of `host_id` (with other writes when batching): resolves once they
    /// are all stored, `host_reports` last. On failure the host is marked dirty.
    pub(crate) async fn commit(&self, host_id: &str, rows: Rows) -> Result<(), StoreError> {
        self.enqueue(host_id, rows).await?.wait().await
    }

    /// Queues `rows` of `host_id` for the next batch and returns once they are queued:
    /// the [`PendingWrite`] resolves once they are stored. The writes of one host are
    /// stored in the order they were queued, and none after one that failed. Without
    /// batching the rows are written before this returns.
    pub(crate) async fn enqueue(
        &self,
        host_id: &str,
        rows: Rows,
    ) -> Result<PendingWrite, StoreError> {
        if rows.len() == 0 {
            return Ok(PendingWrite::done(Ok(())));
        }
        if self.config.window.is_zero() {
            let result = self.writer.write_sequential(rows).await;
            if result.is_err() {
                self.writer.mark_dirty(host_id);
            }
            return Ok(PendingWrite::done(result));
        }
        let (done, result) = oneshot::channel();
        let mut job = Job {
            host_id: host_id.to_string(),
            rows,
            done,
        };
        // A queue whose task is gone (its runtime ended) is replaced once.
        for attempt in 0..2 {
            match self.sender(attempt > 0).send(job).await {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => job = back,
            }
            if attempt == 1 {
                return Err(StoreError::BatchLost);
            }
        }
        Ok(PendingWrite {
            state: Pending::Queued {
                result,
                host_id: host_id.to_string(),
                writer: self.writer.clone(),
            },
        })
    }

    fn sender(&self, renew: bool) -> mpsc::Sender<Job> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = queue.as_ref().filter(|tx| !renew && !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(gather(rx, self.config, self.writer.clone()));
        *queue = Some(tx.clone());
        tx
    }
}

/// The batch task (see the module documentation): writes one batch at a time, each
/// started at least `config.window` after the one before. Ends when the store is dropped.
async fn gather(mut queue: mpsc::Receiver<Job>, config: BatchConfig, writer: Arc<Writer>) {
    let mut last_start: Option<tokio::time::Instant> = None;
    loop {
        let Some(first) = queue.recv().await else {
            return;
        };
        let now = tokio::time::Instant::now();
        let not_before = last_start.map_or(now, |t| (t + config.window).max(now));
        let mut rows = first.rows.len();
        let mut jobs = vec![first];
        // Everything already queued joins at once; then what arrives until `not_before`.
        while rows < config.max_rows {
            match tokio::time::timeout_at(not_before, queue.recv()).await {
                Ok(Some(job)) => {
                    rows += job.rows.len();
                    jobs.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
        last_start = Some(tokio::time::Instant::now());
        writer.write_batch(jobs).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_append_and_count() {
        let mut a = Rows::default();
        let b = Rows {
            hosts: vec![crate::empty_host_row("h")],
            ..Rows::default()
        };
        assert_eq!(a.len(), 0);
        a.append(b);
        a.append(Rows {
            hosts: vec![crate::empty_host_row("g")],
            ..Rows::default()
        });
        assert_eq!(a.len(), 2);
        assert_eq!(a.hosts[1].host_id, "g");
    }

    #[test]
    fn unbatched_means_no_window() {
        assert!(BatchConfig::unbatched().window.is_zero());
        assert!(!BatchConfig::default().window.is_zero());
    }
}
