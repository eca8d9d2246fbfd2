//! What the in-process gRPC tests share: the collector's real services
//! ([`portolan_collector::server::serve_connections`]) over in-memory connections
//! (`tokio::io::duplex`) carrying real mutual TLS with certificates of a development CA,
//! in front of a managed ClickHouse of the test's own.
//!
//! Each client connects through [`Collector::channel`] with the certificate of the
//! identity it names; the server reads the peer's identity from that certificate exactly
//! as the TCP listener does.

#![allow(dead_code)] // each test binary uses part of it

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use hyper_util::rt::TokioIo;
use portolan_collector::config::LimitsSection;
use portolan_collector::revocation::Revocations;
use portolan_collector::server::{Services, serve_connections};
use portolan_core::{Attribution, Protocol, Scope, Socket, SocketKey, SocketState};
use portolan_proto::v1 as pb;
use portolan_store::Store;
use portolan_store::managed::{ManagedClickHouse, ManagedOptions};
use portolan_tls::pki::{Ca, WriteMode};
use portolan_tls::{OperatorRole, PeerStream, TlsFiles};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The name the collector's certificate is issued for and clients verify.
const COLLECTOR_NAME: &str = "collector.portolan.test";
/// How long a condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Bytes in flight each way on one in-memory connection.
const DUPLEX_BYTES: usize = 256 * 1024;
/// Certificates' validity.
const VALIDITY: Duration = Duration::from_secs(3600);

/// Whose certificate a client presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// An agent of `host_id`.
    Agent(String),
    /// An operator.
    Operator(&'static str, OperatorRole),
}

/// A collector serving in-process, its ClickHouse and its CA.
pub struct Collector {
    pub store: Arc<Store>,
    /// The readiness the gRPC health service follows.
    pub health: portolan_metrics::Health,
    clickhouse: Option<ManagedClickHouse>,
    database: String,
    ca: Ca,
    server_tls: Arc<rustls::ServerConfig>,
    connections: mpsc::Sender<io::Result<InProcess>>,
    shutdown: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<Result<(), portolan_collector::server::ServeError>>>,
    dir: tempfile::TempDir,
    next_port: std::sync::atomic::AtomicU16,
    /// The reloading TLS material whose revocation list the services enforce, when the
    /// collector was started with a CRL ([`Collector::start_with_crl`]).
    server_reload: Option<portolan_tls::ServerTls>,
}

impl Collector {
    /// Starts ClickHouse, migrates `database` and serves the collector with `limits`.
    pub async fn start(database: &str, limits: LimitsSection) -> Result<Collector> {
        Self::start_inner(database, limits, false).await
    }

    /// As [`Collector::start`], and enforces for calls and open streams the CRL at
    /// [`Collector::crl_path`] (empty at first, signed by [`Collector::ca`]), re-read
    /// every 100 ms as the collector re-reads `tls.crls`.
    pub async fn start_with_crl(database: &str, limits: LimitsSection) -> Result<Collector> {
        Self::start_inner(database, limits, true).await
    }

    async fn start_inner(database: &str, limits: LimitsSection, crl: bool) -> Result<Collector> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("portolan_collector=debug,portolan_store=info")
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir()?;
        let clickhouse = ManagedClickHouse::start(ManagedOptions {
            state_dir: dir.path().join("state"),
            binary: None,
        })
        .await
        .context("cannot start a managed ClickHouse (is clickhouse-server installed?)")?;
        let store = Arc::new(clickhouse.migrated_store(database).await?);
        let ca = Ca::generate("portolan grpc tests")?;
        let server_files = Self::files_of(
            &ca,
            dir.path(),
            "collector",
            ca.issue_collector("c1", &[COLLECTOR_NAME.into()], &[], VALIDITY)?,
        )?;
        let server_tls = portolan_tls::server_config(&server_files)?;
        let (server_reload, revocations) = if crl {
            let path = dir.path().join("ca.crl.pem");
            let empty = ca.crl(None, &[], VALIDITY)?;
            std::fs::write(&path, empty.pem)?;
            let reload = portolan_tls::ServerTls::start(
                server_files.clone(),
                portolan_tls::RevocationFiles {
                    revoked: None,
                    crls: vec![path],
                },
                Duration::from_millis(100),
            )?;
            let revocations = Revocations::new(reload.revocations());
            (Some(reload), revocations)
        } else {
            (None, Revocations::none())
        };
        let (connections, incoming) = mpsc::channel(16);
        let (shutdown, stop) = oneshot::channel::<()>();
        let health = portolan_metrics::Health::new();
        let services = Services {
            limits,
            collector_name: "c1".into(),
            store: store.clone(),
            revocations,
            enrollment: portolan_collector::enroll::Enrollment::new(
                store.clone(),
                portolan_collector::enroll::Gate::fixed(Default::default()),
                None,
                Default::default(),
                portolan_tls::enroll::DEFAULT_LIFETIME,
            ),
            health: health.clone(),
        };
        let serving = tokio::spawn(serve_connections(
            services,
            ReceiverStream::new(incoming),
            async {
                let _ = stop.await;
            },
        ));
        Ok(Collector {
            store,
            health,
            clickhouse: Some(clickhouse),
            database: database.into(),
            ca,
            server_tls,
            connections,
            shutdown: Some(shutdown),
            serving: Some(serving),
            dir,
            next_port: std::sync::atomic::AtomicU16::new(40000),
            server_reload,
        })
    }

    /// The collector's CA, which signs client certificates and the CRL.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The CRL file a collector of [`Collector::start_with_crl`] enforces.
    pub fn crl_path(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crl.pem")
    }

    fn files_of(
        ca: &Ca,
        dir: &std::path::Path,
        name: &str,
        cert: portolan_tls::pki::IssuedCert,
    ) -> Result<TlsFiles> {
        let ca_files = ca.write_files(dir, "ca", WriteMode::Overwrite)?;
        let files = cert.write_files(dir, name, WriteMode::Overwrite)?;
        Ok(TlsFiles {
            ca: ca_files.cert,
            cert: files.cert,
            key: files.key,
        })
    }

    /// A channel to the collector presenting `who`'s certificate. Each connection it
    /// makes is a fresh in-memory stream with its own TLS handshake.
    pub async fn channel(&self, who: &Who) -> Result<Channel> {
        Ok(self.channel_with_cert(who).await?.0)
    }

    /// As [`Collector::channel`]; also gives the certificate the client presents.
    pub async fn channel_with_cert(
        &self,
        who: &Who,
    ) -> Result<(Channel, portolan_tls::pki::IssuedCert)> {
        let (name, cert) = match who {
            Who::Agent(host_id) => (
                format!("agent-{host_id}"),
                self.ca.issue_agent(host_id, VALIDITY)?,
            ),
            Who::Operator(name, role) => (
                format!("operator-{name}"),
                self.ca.issue_operator(name, *role, VALIDITY)?,
            ),
        };
        let channel = self.channel_presenting(&name, &cert).await?;
        Ok((channel, cert))
    }

    /// A channel to the collector presenting `cert`, its files written under `name`.
    pub async fn channel_presenting(
        &self,
        name: &str,
        cert: &portolan_tls::pki::IssuedCert,
    ) -> Result<Channel> {
        let files = Self::files_of(&self.ca, self.dir.path(), name, cert.clone())?;
        let client_tls = portolan_tls::client_config(&files)?;
        let acceptor = TlsAcceptor::from(self.server_tls.clone());
        let connections = self.connections.clone();
        let port = self
            .next_port
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let connector = tower::service_fn(move |_: Uri| {
            let acceptor = acceptor.clone();
            let connections = connections.clone();
            let client_tls = client_tls.clone();
            async move {
                let (client_io, server_io) = tokio::io::duplex(DUPLEX_BYTES);
                // The server's half of the handshake runs as the listener's would.
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(server_io).await {
                        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
                        let _ = connections.send(Ok(InProcess::new(tls, remote))).await;
                    }
                });
                let server_name = rustls_pki_types::ServerName::try_from(COLLECTOR_NAME)
                    .map_err(io::Error::other)?;
                let tls = TlsConnector::from(client_tls)
                    .connect(server_name, client_io)
                    .await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        });
        Ok(Endpoint::from_static("http://collector.portolan.test")
            .connect_with_connector(connector)
            .await?)
    }

    /// Runs `sql` on the test's database; the answer, trimmed.
    pub async fn sql(&self, sql: &str) -> Result<String> {
        let url = self
            .clickhouse
            .as_ref()
            .ok_or_else(|| anyhow!("ClickHouse stopped"))?
            .url();
        let (database, sql) = (self.database.clone(), sql.to_string());
        let body = tokio::task::spawn_blocking(move || {
            portolan_testkit::clickhouse::http_query(&url, &database, &sql)
        })
        .await??;
        Ok(body.trim().to_string())
    }

    /// Rows of `table` about `host_id`.
    pub async fn rows(&self, table: &str, host_id: &str) -> Result<u64> {
        let answer = self
            .sql(&format!(
                "SELECT count() FROM {table} WHERE host_id = '{host_id}'"
            ))
            .await?;
        answer
            .parse()
            .with_context(|| format!("ClickHouse answered `{answer}` to a count"))
    }

    /// Stops serving and stops ClickHouse.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(serving) = self.serving.take() {
            serving.abort();
        }
        if let Some(clickhouse) = self.clickhouse.take() {
            clickhouse.shutdown().await?;
        }
        Ok(())
    }
}

/// A server-side TLS connection over an in-memory stream: the collector's own connection
/// type, with the peer's identity read from its certificate as over TCP.
pub type InProcess = PeerStream<DuplexStream>;

/// A TCP listener on `0.0.0.0:port`, as an agent reports it.
pub fn listener(port: u16) -> pb::Socket {
    pb::Socket::from(&Socket {
        key: SocketKey {
            protocol: Protocol::Tcp,
            local_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            local_port: port,
            remote_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            remote_port: 0,
            inode: u64::from(port),
            netns: 0,
        },
        state: SocketState::Listen,
        uid: 0,
        pids: Vec::new(),
        attribution: Attribution::Owned,
        scope: Scope::Wildcard,
        exposure: Scope::Private,
        path: String::new(),
    })
}

fn now_nanos() -> i64 {
    UNIX_EPOCH
        .elapsed()
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The agent's first message.
pub fn hello(host_id: &str) -> pb::StreamInventoryRequest {
    message(pb::stream_inventory_request::Message::Hello(pb::Hello {
        host_id: host_id.into(),
        hostname: format!("{host_id}.example"),
        agent_version: "test".into(),
        kernel: "6.1".into(),
        os: "linux".into(),
        scan_interval_ms: 1000,
        ..pb::Hello::default()
    }))
}

/// A whole snapshot in one part: seq `seq`, listeners on `ports`.
pub fn snapshot(seq: u64, ports: &[u16]) -> pb::StreamInventoryRequest {
    message(pb::stream_inventory_request::Message::Snapshot(
        pb::Snapshot {
            seq,
            scanned_at_unix_nanos: now_nanos(),
            host: Some(pb::HostState::default()),
            sockets: ports.iter().copied().map(listener).collect(),
            last_part: true,
            ..pb::Snapshot::default()
        },
    ))
}

/// A delta from `seq - 1` to `seq` adding listeners on `ports`.
pub fn delta(base_seq: u64, seq: u64, ports: &[u16]) -> pb::StreamInventoryRequest {
    message(pb::stream_inventory_request::Message::Delta(pb::Delta {
        seq,
        base_seq,
        scanned_at_unix_nanos: now_nanos(),
        added: ports.iter().copied().map(listener).collect(),
        ..pb::Delta::default()
    }))
}

fn message(m: pb::stream_inventory_request::Message) -> pb::StreamInventoryRequest {
    pb::StreamInventoryRequest { message: Some(m) }
}

/// One agent stream: what it sends and what the collector answers.
pub struct AgentStream {
    pub outbound: mpsc::Sender<pb::StreamInventoryRequest>,
    pub inbound: tonic::Streaming<pb::StreamInventoryResponse>,
}

impl AgentStream {
    /// Opens the ingest stream on `channel`.
    pub async fn open(channel: Channel) -> Result<AgentStream, tonic::Status> {
        let (outbound, rx) = mpsc::channel(16);
        let mut client = pb::ingest_service_client::IngestServiceClient::new(channel);
        let inbound = client
            .stream_inventory(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(AgentStream { outbound, inbound })
    }

    /// Sends `m`.
    pub async fn send(&self, m: pb::StreamInventoryRequest) -> Result<()> {
        self.outbound
            .send(m)
            .await
            .map_err(|_| anyhow!("the stream is closed"))
    }

    /// The collector's next message, within [`DEADLINE`]; the status the stream ended
    /// with as an error.
    pub async fn next(&mut self) -> Result<Answer> {
        let next = tokio::time::timeout(DEADLINE, self.inbound.message())
            .await
            .map_err(|_| anyhow!("no answer within {DEADLINE:?}"))?;
        match next {
            Ok(Some(pb::StreamInventoryResponse { message: Some(m) })) => Ok(Answer::Message(m)),
            Ok(Some(_)) => bail!("an empty answer"),
            Ok(None) => Ok(Answer::Closed),
            Err(status) => Ok(Answer::Ended(status)),
        }
    }

    /// Expects `Welcome`; its `last_seq`.
    pub async fn welcome(&mut self) -> Result<u64> {
        match self.next().await? {
            Answer::Message(pb::stream_inventory_response::Message::Welcome(w)) => Ok(w.last_seq),
            other => bail!("expected Welcome, got {other:?}"),
        }
    }

    /// Expects `Ack(seq)`.
    pub async fn acked(&mut self, seq: u64) -> Result<()> {
        match self.next().await? {
            Answer::Message(pb::stream_inventory_response::Message::Ack(a)) if a.seq == seq => {
                Ok(())
            }
            other => bail!("expected Ack({seq}), got {other:?}"),
        }
    }

    /// Expects the stream to end with a status; the status.
    pub async fn ended(&mut self) -> Result<tonic::Status> {
        match self.next().await? {
            Answer::Ended(status) => Ok(status),
            other => bail!("expected the stream to end with a status, got {other:?}"),
        }
    }
}

/// What the collector said on an agent stream.
#[derive(Debug)]
pub enum Answer {
    /// A message.
    Message(pb::stream_inventory_response::Message),
    /// The stream ended with this status.
    Ended(tonic::Status),
    /// The stream ended without an error.
    Closed,
}
