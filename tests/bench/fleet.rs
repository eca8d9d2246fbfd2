//! A fleet of simulated agents in one process, for the fan-in and ingest benchmarks.
//!
//! Each simulated agent has its own certificate (issued in-process by the cluster's CA),
//! its own TCP connection, TLS session and HTTP/2 connection to a real collector, and
//! speaks the real ingest protocol as `portolan-agent` does (see
//! `crates/portolan-agent/src/stream.rs`): Hello → Welcome → a full snapshot (split into
//! parts by [`snapshot_parts`]) → one delta per changed interval ([`diff`] and
//! [`delta_to_wire`]) or a heartbeat when nothing changed, up to the collector's
//! `max_in_flight` sent ahead of their acknowledgements. What is synthetic is only the inventory: `n`
//! listening sockets (TCP and UDP) owned by ten processes, of which a share is replaced
//! (closed, and a new one opened) every interval.
//!
//! The fleet counts what the collector acknowledged (and so, by the protocol's contract,
//! stored): snapshots, deltas and the socket events they carry, the latency from sending
//! a change to its acknowledgement, and the backlog of changes made but not yet
//! acknowledged.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use portolan_core::inventory::ScannedSocket;
use portolan_core::wire::{delta_to_wire, snapshot_parts};
use portolan_core::{
    Attribution, Delta, HostState, InterfaceAddress, Inventory, Process, Protocol, ScanStats,
    SocketKey, SocketState, apply_in_place, diff,
};
use portolan_proto::v1 as pb;
use portolan_proto::v1::ingest_service_client::IngestServiceClient;
use portolan_proto::v1::stream_inventory_request::Message as AgentMessage;
use portolan_proto::v1::stream_inventory_response::Message as CollectorMessage;
use portolan_tls::pki::Ca;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// Sockets + flows per snapshot part at most, as the real agent.
const SNAPSHOT_PART_ITEMS: usize = 5_000;
/// Processes owning the synthetic sockets.
const PROCESSES: u32 = 10;
/// Connection attempts of one agent before it counts as failed.
const CONNECT_ATTEMPTS: u32 = 5;

/// How the simulated agents pace their changes.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Like real agents: one scan per interval (first one at a random offset), a delta
    /// when it changed something, a heartbeat otherwise.
    Interval(Duration),
    /// As fast as the collector acknowledges: after the snapshot, `deltas` changes made
    /// beforehand, sent up to the collector's window ahead of their acknowledgements;
    /// then idle.
    Saturate { deltas: u64 },
}

/// What every simulated agent looks like.
#[derive(Debug, Clone, Copy)]
pub struct AgentShape {
    /// Sockets in the inventory.
    pub sockets: usize,
    /// Share of the sockets replaced per change (0.01: 1%); fractions of a socket are
    /// rounded at random, so that 0.5 sockets per interval changes every other interval.
    pub churn: f64,
    pub pace: Pace,
}

/// Counters of the whole fleet, updated by every agent.
#[derive(Debug, Default)]
pub struct FleetStats {
    /// Agents past Welcome.
    pub connected: AtomicU64,
    /// Agents whose stream failed for good (see [`FleetStats::last_error`]).
    pub failed: AtomicU64,
    /// Stream errors, reconnections included.
    pub errors: AtomicU64,
    pub snapshots_acked: AtomicU64,
    pub deltas_acked: AtomicU64,
    pub heartbeats: AtomicU64,
    pub resyncs: AtomicU64,
    /// Changes made (deltas queued).
    pub changes: AtomicU64,
    /// Changes made and not yet acknowledged, over the fleet: the backlog.
    pub backlog: AtomicI64,
    /// Socket events acknowledged: every socket of a first snapshot, every added,
    /// removed and changed socket of a delta (the rows `socket_events` must hold).
    pub socket_events: AtomicU64,
    /// Bytes of encoded messages sent.
    pub bytes_sent: AtomicU64,
    latencies: Mutex<Vec<u32>>,
    last_error: Mutex<Option<String>>,
}

impl FleetStats {
    /// Ack latencies (send → Ack) recorded since the last call, in microseconds.
    pub fn take_latencies(&self) -> Vec<u32> {
        match self.latencies.lock() {
            Ok(mut l) => std::mem::take(&mut *l),
            Err(_) => Vec::new(),
        }
    }

    /// The last stream error any agent saw.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn record_latency(&self, d: Duration) {
        if let Ok(mut l) = self.latencies.lock() {
            l.push(u32::try_from(d.as_micros()).unwrap_or(u32::MAX));
        }
    }

    fn record_error(&self, e: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(format!("{e:#}"));
        }
    }
}

/// The `q`-quantile (0..=1) of `values` (sorted in place), in milliseconds.
pub fn quantile_ms(values: &mut [u32], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable();
    let i = ((values.len() as f64 - 1.0) * q).round() as usize;
    f64::from(values[i.min(values.len() - 1)]) / 1000.0
}

/// A fleet of simulated agents streaming to one collector.
pub struct Fleet {
    ca: Arc<Ca>,
    endpoint: String,
    shape: AgentShape,
    prefix: String,
    pub stats: Arc<FleetStats>,
    /// Agents make no changes while this is set (they still heartbeat).
    quiet: Arc<AtomicBool>,
    go: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    connects: Arc<Semaphore>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// A fleet of agents named `<prefix>-<n>` with certificates from `ca`, streaming to
    /// `https://127.0.0.1:<port>`. At most `concurrent_connects` handshakes run at once.
    /// With `hold`, agents connect and wait for [`Fleet::go`] before their snapshot.
    pub fn new(
        ca: Ca,
        port: u16,
        prefix: &str,
        shape: AgentShape,
        concurrent_connects: usize,
        hold: bool,
    ) -> Fleet {
        Fleet {
            ca: Arc::new(ca),
            endpoint: format!("https://127.0.0.1:{port}"),
            shape,
            prefix: prefix.to_string(),
            stats: Arc::new(FleetStats::default()),
            quiet: Arc::new(AtomicBool::new(false)),
            go: watch::channel(!hold).0,
            stop: watch::channel(false).0,
            connects: Arc::new(Semaphore::new(concurrent_connects.max(1))),
            tasks: Vec::new(),
        }
    }

    /// Agents started so far.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Starts agents until the fleet has `n`; each gets its certificate now.
    pub fn grow_to(&mut self, n: usize) -> Result<()> {
        while self.tasks.len() < n {
            let index = self.tasks.len();
            let host_id = format!("{}-{index:05}", self.prefix);
            let issued = self
                .ca
                .issue_agent(&host_id, Duration::from_secs(24 * 3600))
                .with_context(|| format!("cannot issue a certificate for {host_id}"))?;
            let tls = client_config(&self.ca, &issued.cert_pem, &issued.key_pem)?;
            let agent = SimAgent::new(index, host_id, self.shape);
            let run = Run {
                endpoint: self.endpoint.clone(),
                tls,
                stats: self.stats.clone(),
                quiet: self.quiet.clone(),
                go: self.go.subscribe(),
                stop: self.stop.subscribe(),
                connects: self.connects.clone(),
            };
            self.tasks.push(tokio::spawn(agent.run(run)));
        }
        Ok(())
    }

    /// Lets held agents send their snapshots.
    pub fn go(&self) {
        self.go.send_replace(true);
    }

    /// Stops or resumes changes (agents heartbeat meanwhile).
    pub fn set_quiet(&self, quiet: bool) {
        self.quiet.store(quiet, Ordering::Relaxed);
    }

    /// Waits until `done` holds, checking every 100 ms; fails after `timeout` with
    /// `what` and the fleet's counters.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&FleetStats) -> bool,
    ) -> Result<Duration> {
        let started = Instant::now();
        while !done(&self.stats) {
            if started.elapsed() > timeout {
                bail!("{what}: not within {timeout:?} ({})", self.describe());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(started.elapsed())
    }

    /// The counters, for messages.
    pub fn describe(&self) -> String {
        let s = &self.stats;
        format!(
            "{} agents, {} connected, {} failed, {} errors, {} snapshots and {} deltas acknowledged, backlog {}, {} resyncs; last error: {}",
            self.len(),
            s.connected.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            s.errors.load(Ordering::Relaxed),
            s.snapshots_acked.load(Ordering::Relaxed),
            s.deltas_acked.load(Ordering::Relaxed),
            s.backlog.load(Ordering::Relaxed),
            s.resyncs.load(Ordering::Relaxed),
            s.last_error().unwrap_or_else(|| "none".into()),
        )
    }

    /// Ends every agent's stream and waits for the tasks.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// A client configuration presenting `cert_pem`, trusting the CA: what `portolan_tls`
/// builds from files, built from memory.
fn client_config(ca: &Ca, cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).context("CA certificate")?)
        .context("cannot trust the CA certificate")?;
    let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).context("agent cert")?];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("agent key")?;
    let mut config = rustls::ClientConfig::builder_with_provider(portolan_tls::crypto_provider())
        .with_protocol_versions(portolan_tls::PROTOCOL_VERSIONS)
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("cannot use the agent certificate")?;
    config.alpn_protocols = vec![portolan_tls::ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// What an agent task shares with the fleet.
struct Run {
    endpoint: String,
    tls: Arc<rustls::ClientConfig>,
    stats: Arc<FleetStats>,
    quiet: Arc<AtomicBool>,
    go: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    connects: Arc<Semaphore>,
}

/// One change made and not acknowledged yet.
struct Change {
    seq: u64,
    delta: pb::Delta,
    events: u64,
}

/// One simulated agent: its synthetic host and the chain of inventories it made.
struct SimAgent {
    host_id: String,
    shape: AgentShape,
    rng: u64,
    host: HostState,
    sockets: Vec<ScannedSocket>,
    processes: Vec<Process>,
    /// The inventory after the last change made.
    inventory: Inventory,
    /// The seq of the last change made.
    seq: u64,
    /// With [`Pace::Saturate`], the changes to send, made before the fleet goes: the
    /// benchmark then times the collector, not this simulator's scans and diffs (which
    /// share the machine's cores with it).
    planned: VecDeque<Delta>,
    next_socket: u64,
    eth0: Ipv4Addr,
}

impl SimAgent {
    fn new(index: usize, host_id: String, shape: AgentShape) -> SimAgent {
        let eth0 = Ipv4Addr::new(
            10,
            1 + (index / 62_500) as u8,
            (index / 250 % 250) as u8,
            (index % 250) as u8 + 1,
        );
        let host = HostState {
            interfaces: vec![
                InterfaceAddress {
                    interface: "eth0".into(),
                    address: IpAddr::V4(eth0),
                    prefix_len: 8,
                    netns: 0,
                },
                InterfaceAddress {
                    interface: "lo".into(),
                    address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    prefix_len: 8,
                    netns: 0,
                },
            ],
            ephemeral_ports: Some((32_768, 60_999)),
        };
        let processes = (0..PROCESSES)
            .map(|i| Process {
                pid: 1_000 + i,
                name: format!("svc{i}"),
                executable: format!("/usr/sbin/svc{i}"),
                command_line: format!("/usr/sbin/svc{i} --config /etc/svc{i}.conf"),
                uid: 0,
                user: "root".into(),
                systemd_unit: format!("svc{i}.service"),
                container_id: String::new(),
                cgroup: format!("/system.slice/svc{i}.service"),
                pod_uid: String::new(),
                pod_name: String::new(),
                pod_namespace: String::new(),
            })
            .collect();
        let mut agent = SimAgent {
            host_id,
            shape,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            host,
            sockets: Vec::new(),
            processes,
            inventory: Inventory::default(),
            seq: 0,
            planned: VecDeque::new(),
            next_socket: 0,
            eth0,
        };
        agent.sockets = (0..shape.sockets).map(|_| agent.new_socket()).collect();
        agent.inventory = agent.build();
        if let Pace::Saturate { deltas } = shape.pace
            && shape.churn > 0.0
            && shape.sockets > 0
        {
            let mut at = agent.inventory.clone();
            // Every planned scan changes something (a churn too small for one socket
            // per scan still replaces one now and then): exactly `deltas` changes.
            while (agent.planned.len() as u64) < deltas {
                if let Some((delta, next)) = agent.churn(&at) {
                    agent.planned.push_back(delta);
                    at = next;
                }
            }
        }
        agent
    }

    /// splitmix64.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn new_socket(&mut self) -> ScannedSocket {
        let n = self.next_socket;
        self.next_socket += 1;
        let protocol = if n % 5 == 4 {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let local_address = match n % 3 {
            0 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            1 => IpAddr::V4(self.eth0),
            _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let pid = 1_000 + (n % u64::from(PROCESSES)) as u32;
        ScannedSocket {
            key: SocketKey {
                protocol,
                local_address,
                local_port: 1_024 + (n % 60_000) as u16,
                remote_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                remote_port: 0,
                inode: 100_000 + n,
                netns: 0,
            },
            state: SocketState::Listen,
            uid: 0,
            pids: vec![pid],
            attribution: Attribution::Owned,
            path: String::new(),
        }
    }

    fn build(&self) -> Inventory {
        Inventory::from_scan(
            self.host.clone(),
            self.sockets.iter().cloned(),
            self.processes.iter().cloned(),
        )
    }

    fn stats(&self) -> ScanStats {
        let udp = self
            .sockets
            .iter()
            .filter(|s| s.key.protocol == Protocol::Udp)
            .count() as u32;
        let all = self.sockets.len() as u32;
        ScanStats {
            sockets: all,
            listeners: all,
            scan_duration_micros: 800,
            state_counts: [("LISTEN".to_string(), all - udp), ("UDP".to_string(), udp)]
                .into_iter()
                .collect(),
            namespaces: 1,
            ..ScanStats::default()
        }
    }

    /// One scan: replaces the churned share of the sockets (or, saturating, takes the
    /// next planned change); the change, if any.
    fn scan(&mut self) -> Option<Change> {
        let delta = if matches!(self.shape.pace, Pace::Saturate { .. }) {
            let delta = self.planned.pop_front()?;
            apply_in_place(&mut self.inventory, &delta)
                .expect("the planned changes apply one after another");
            delta
        } else {
            let from = std::mem::take(&mut self.inventory);
            let Some((delta, next)) = self.churn(&from) else {
                self.inventory = from;
                return None;
            };
            self.inventory = next;
            delta
        };
        let events = (delta.added.len() + delta.removed.len() + delta.changed.len()) as u64;
        self.seq += 1;
        let wire = delta_to_wire(&delta, self.seq, self.seq - 1, now_nanos(), &self.stats());
        Some(Change {
            seq: self.seq,
            delta: wire,
            events,
        })
    }

    /// Replaces the churned share of the sockets: the delta from `from` (the inventory
    /// the sockets made before) and the inventory after; `None` when none churned.
    fn churn(&mut self, from: &Inventory) -> Option<(Delta, Inventory)> {
        let wanted = self.sockets.len() as f64 * self.shape.churn;
        let mut k = wanted.floor() as usize;
        if (self.random() as f64 / u64::MAX as f64) < wanted - wanted.floor() {
            k += 1;
        }
        let k = k.min(self.sockets.len());
        if k == 0 {
            return None;
        }
        for _ in 0..k {
            let i = (self.random() % self.sockets.len() as u64) as usize;
            self.sockets[i] = self.new_socket();
        }
        let next = self.build();
        Some((diff(from, &next), next))
    }

    async fn run(mut self, mut run: Run) {
        let mut attempt = 0;
        loop {
            if *run.stop.borrow() {
                return;
            }
            let result = self.session(&mut run).await;
            match result {
                Ok(()) => return,
                Err(e) => {
                    run.stats.record_error(&e);
                    attempt += 1;
                    if attempt >= CONNECT_ATTEMPTS {
                        run.stats.failed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    let wait = Duration::from_millis(200 + self.random() % 2_000);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// One stream, until `stop` or an error. A stream that reached Welcome resets the
    /// connection attempts only by returning; a broken stream after Welcome is an error
    /// like a failed connection.
    async fn session(&mut self, run: &mut Run) -> Result<()> {
        let channel = {
            let _permit = run.connects.acquire().await.context("fleet stopped")?;
            portolan_tls::connect(
                &run.endpoint,
                run.tls.clone(),
                portolan_tls::ConnectOptions {
                    connect_timeout: Duration::from_secs(30),
                    ..portolan_tls::ConnectOptions::default()
                },
            )
            .await
            .with_context(|| format!("{} cannot connect", self.host_id))?
        };
        let mut client = IngestServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<pb::StreamInventoryRequest>(4);
        let stats = run.stats.clone();
        let send = |message: AgentMessage| {
            let tx = tx.clone();
            let stats = stats.clone();
            async move {
                let request = pb::StreamInventoryRequest {
                    message: Some(message),
                };
                stats.bytes_sent.fetch_add(
                    prost::Message::encoded_len(&request) as u64,
                    Ordering::Relaxed,
                );
                tx.send(request)
                    .await
                    .map_err(|_| anyhow::anyhow!("the stream to the collector closed"))
            }
        };
        send(AgentMessage::Hello(pb::Hello {
            host_id: self.host_id.clone(),
            hostname: self.host_id.clone(),
            labels: [("env".to_string(), "bench".to_string())].into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel: "6.1.0-bench".into(),
            os: "Debian GNU/Linux 12 (bookworm)".into(),
            scan_interval_ms: match self.shape.pace {
                Pace::Interval(d) => d.as_millis() as u64,
                Pace::Saturate { .. } => 1_000,
            },
        }))
        .await?;
        let mut inbound = client
            .stream_inventory(ReceiverStream::new(rx))
            .await
            .context("the collector refused the stream")?
            .into_inner();
        let welcome = match inbound.message().await? {
            Some(pb::StreamInventoryResponse {
                message: Some(CollectorMessage::Welcome(w)),
            }) => w,
            other => bail!("expected Welcome, got {other:?}"),
        };
        run.stats.connected.fetch_add(1, Ordering::Relaxed);
        let _connected = Gauge(run.stats.clone());
        let max_items = (usize::try_from(welcome.max_sockets_per_message)
            .unwrap_or(SNAPSHOT_PART_ITEMS)
            .clamp(1, SNAPSHOT_PART_ITEMS)
            / 2)
        .max(1);
        while !*run.go.borrow_and_update() {
            run.go.changed().await.context("fleet stopped")?;
        }

        // The snapshot, at the collector's seq + 1; what was made before is in it.
        let first = welcome.last_seq == 0;
        self.seq = welcome.last_seq + 1;
        let snapshot_seq = self.seq;
        for part in snapshot_parts(
            &self.inventory,
            self.seq,
            now_nanos(),
            &self.stats(),
            max_items,
        ) {
            send(AgentMessage::Snapshot(part)).await?;
        }
        let sent = Instant::now();
        self.await_ack(&mut inbound, snapshot_seq).await?;
        run.stats.record_latency(sent.elapsed());
        run.stats.snapshots_acked.fetch_add(1, Ordering::Relaxed);
        if first {
            run.stats
                .socket_events
                .fetch_add(self.inventory.sockets.len() as u64, Ordering::Relaxed);
        }

        // As the agent does: up to the collector's window sent ahead of the acks.
        let window = usize::try_from(welcome.max_in_flight)
            .unwrap_or(1)
            .clamp(1, 64);
        let mut pending: VecDeque<Change> = VecDeque::new();
        // When each of the first `sent_at.len()` changes of `pending` was sent.
        let mut sent_at: VecDeque<Instant> = VecDeque::new();
        let mut ticker = match self.shape.pace {
            Pace::Interval(interval) => {
                let offset =
                    Duration::from_micros(self.random() % interval.as_micros().max(1) as u64);
                let mut t =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(t)
            }
            Pace::Saturate { .. } => None,
        };
        let result: Result<()> = async {
            loop {
                while ticker.is_none()
                    && pending.len() < window
                    && let Some(change) = self.scan()
                {
                    run.stats.changes.fetch_add(1, Ordering::Relaxed);
                    run.stats.backlog.fetch_add(1, Ordering::Relaxed);
                    pending.push_back(change);
                }
                while sent_at.len() < pending.len().min(window) {
                    let next = &pending[sent_at.len()];
                    send(AgentMessage::Delta(next.delta.clone())).await?;
                    sent_at.push_back(Instant::now());
                }
                tokio::select! {
                    _ = async {
                        match ticker.as_mut() {
                            Some(t) => { t.tick().await; }
                            None => std::future::pending::<()>().await,
                        }
                    } => {
                        let change = if run.quiet.load(Ordering::Relaxed) { None } else { self.scan() };
                        match change {
                            Some(change) => {
                                run.stats.changes.fetch_add(1, Ordering::Relaxed);
                                run.stats.backlog.fetch_add(1, Ordering::Relaxed);
                                pending.push_back(change);
                            }
                            None if pending.is_empty() => {
                                send(AgentMessage::Heartbeat(pb::Heartbeat {
                                    last_seq: self.seq,
                                    at_unix_nanos: now_nanos(),
                                    stats: Some(pb::ScanStats::from(&self.stats())),
                                    traceparent: String::new(),
                                }))
                                .await?;
                                run.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {}
                        }
                    }
                    message = inbound.message() => {
                        match message? {
                            None => bail!("the collector closed the stream"),
                            Some(pb::StreamInventoryResponse { message: Some(CollectorMessage::Ack(ack)) }) => {
                                let Some(front) = pending.front() else { continue };
                                if ack.seq < front.seq { continue; }
                                let newest = pending.get(sent_at.len().saturating_sub(1)).map_or(0, |c| c.seq);
                                if ack.seq > newest {
                                    bail!("collector acknowledged seq {} but {newest} is the last sent", ack.seq);
                                }
                                while let Some(front) = pending.front().filter(|c| c.seq <= ack.seq) {
                                    if let Some(sent) = sent_at.pop_front() {
                                        run.stats.record_latency(sent.elapsed());
                                    }
                                    run.stats.deltas_acked.fetch_add(1, Ordering::Relaxed);
                                    run.stats.backlog.fetch_sub(1, Ordering::Relaxed);
                                    run.stats.socket_events.fetch_add(front.events, Ordering::Relaxed);
                                    pending.pop_front();
                                }
                            }
                            Some(pb::StreamInventoryResponse { message: Some(CollectorMessage::Resync(r)) }) => {
                                run.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                                bail!("the collector asked for a resync: {}", r.reason);
                            }
                            Some(other) => bail!("unexpected message from the collector: {other:?}"),
                        }
                    }
                    _ = run.stop.changed() => return Ok(()),
                }
            }
        }
        .await;
        if result.is_err() {
            run.stats
                .backlog
                .fetch_sub(pending.len() as i64, Ordering::Relaxed);
        }
        result
    }

    async fn await_ack(
        &self,
        inbound: &mut tonic::Streaming<pb::StreamInventoryResponse>,
        seq: u64,
    ) -> Result<()> {
        loop {
            match inbound.message().await? {
                Some(pb::StreamInventoryResponse {
                    message: Some(CollectorMessage::Ack(ack)),
                }) if ack.seq == seq => return Ok(()),
                Some(pb::StreamInventoryResponse {
                    message: Some(CollectorMessage::Ack(ack)),
                }) if ack.seq < seq => continue,
                None => bail!("the collector closed the stream"),
                other => bail!("{}: expected Ack({seq}), got {other:?}", self.host_id),
            }
        }
    }
}

/// Counts a connected agent until dropped.
struct Gauge(Arc<FleetStats>);

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Raises this process's open-file limit to at least `wanted` (children, such as the
/// collector the cluster starts, inherit it); the limit in force.
pub fn raise_fd_limit(wanted: u64) -> Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("cannot read RLIMIT_NOFILE")?;
    if soft >= wanted {
        return Ok(soft);
    }
    // Root may raise the hard limit too; otherwise the hard limit is the ceiling.
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted.max(hard)).is_ok() {
        return Ok(wanted);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("cannot raise RLIMIT_NOFILE")?;
    if hard < wanted {
        bail!(
            "the open-file limit is {hard}, under the {wanted} this run needs (raise it with `ulimit -n {wanted}` as root)"
        );
    }
    Ok(hard)
}

/// CPU time (user + system) of a process in seconds, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the state.
    (ticks(11) + ticks(12)) / 100.0
}

/// The pid of the `clickhouse-server` whose command line mentions `dir`.
pub fn clickhouse_pid(dir: &std::path::Path) -> Option<u32> {
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains("clickhouse") && cmdline.contains(&dir)).then_some(pid)
    })
}

/// `<target dir>/bench/<name>.json`: the target dir is `$CARGO_TARGET_DIR`, or the one
/// this example was built in.
pub fn write_json(name: &str, doc: &serde_json::Value) -> Result<std::path::PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => {
            // target/<profile>/examples/<name> → target
            let exe = std::env::current_exe()?;
            exe.ancestors()
                .nth(3)
                .context("the example is not inside a cargo target directory")?
                .to_path_buf()
        }
    };
    let dir = target.join("bench");
    let path = dir.join(format!("{name}.json"));
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, format!("{doc:#}\n")))
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(path)
}

/// A whole number from the environment, or `default`.
pub fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("`{name}` is `{v}`; give a whole number")),
        Err(_) => Ok(default),
    }
}

/// A list of whole numbers (`500,1000,2000`) from the environment, or `default`.
pub fn env_list(name: &str, default: &[u64]) -> Result<Vec<u64>> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .map(|n| {
                n.trim().parse().with_context(|| {
                    format!("`{name}` is `{v}`; give whole numbers separated by commas")
                })
            })
            .collect(),
        Err(_) => Ok(default.to_vec()),
    }
}

/// A decimal number from the environment, or `default`.
pub fn env_float(name: &str, default: f64) -> Result<f64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("`{name}` is `{v}`; give a number")),
        Err(_) => Ok(default),
    }
}
