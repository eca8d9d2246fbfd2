//! The collector's gRPC server: mutual TLS in front, the ingest and query services behind.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use portolan_proto::v1::enrollment_service_server::EnrollmentServiceServer;
use portolan_proto::v1::ingest_service_server::IngestServiceServer;
use portolan_proto::v1::query_service_server::QueryServiceServer;
use portolan_tls::PeerInfo;
use portolan_tls::{AcceptOptions, ClientAuth, ServerTls, TlsIncoming};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::server::NamedService;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;

use crate::authz::AuthorizeLayer;
use crate::config::{CollectorConfig, LimitsSection};
use crate::enroll::{Enrollment, Gate, SignerFiles, SignerHandle};
use crate::ingest::Ingest;
use crate::query::Query;
use crate::revocation::Revocations;
use portolan_metrics::Health;
use portolan_store::Store;

/// HTTP/2 flow-control window of one stream: how much an agent may send before the
/// collector has read it.
const STREAM_WINDOW_BYTES: u32 = 256 * 1024;
/// HTTP/2 flow-control window of one connection (all its streams).
const CONNECTION_WINDOW_BYTES: u32 = 512 * 1024;
/// Streams one connection may open at once: an agent needs one; an operator's client may
/// multiplex many watches, which the query service bounds itself (and answers
/// RESOURCE_EXHAUSTED), so this must stay above that bound: a lower one makes the
/// client's next stream wait instead of being told.
const MAX_STREAMS_PER_CONNECTION: u32 = 2 * crate::query::DEFAULT_MAX_WATCHES as u32;
/// Largest header block a client may send (gRPC metadata is small).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] portolan_tls::TlsError),
    /// The enrollment signer is unusable.
    #[error(transparent)]
    Signer(#[from] portolan_tls::enroll::EnrollError),
    /// The reflection service could not be built from the embedded descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    /// The HTTP/2 server failed.
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves ingest on `listener` until `shutdown` resolves. Only clients presenting a
/// certificate that chains to `tls.ca` and that no CRL of `tls.crls` lists get past the
/// handshake, and only those not listed in `tls.revoked` (nor in a CRL since) get past
/// the first call. The `[tls]` files are re-read when they
/// change ([`ServerTls`]): new connections get the new certificate and CAs, and open
/// streams of a newly revoked certificate end.
pub async fn serve(
    config: &CollectorConfig,
    collector_name: &str,
    store: Arc<Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let enrollment = &config.enrollment;
    // Clients without a certificate get through the handshake only where they can enrol;
    // the authorisation table lets them call Enroll and nothing else.
    let client_auth = if enrollment.enabled {
        ClientAuth::Optional
    } else {
        ClientAuth::Required
    };
    let tls = ServerTls::start_for(
        config.tls_files(),
        config.revocation_files(),
        portolan_tls::DEFAULT_RELOAD_INTERVAL,
        client_auth,
    )?;
    let incoming = TlsIncoming::reloading(listener, tls.config(), AcceptOptions::default());
    let gate = Gate::start(
        store.clone(),
        enrollment.refresh_interval,
        Some(config.tls_files()),
    )
    .await;
    let signer = if enrollment.enabled {
        let files = SignerFiles {
            cert: enrollment.signer_cert.clone(),
            key: enrollment.signer_key.clone(),
        };
        Some(SignerHandle::load(files)?)
    } else {
        None
    };
    let revocations = Revocations::new(tls.revocations()).with_gate(gate.clone());
    let enrollment_service = Enrollment::new(
        store.clone(),
        gate,
        signer,
        enrollment.policy(),
        enrollment.certificate_lifetime,
    )
    .with_settle(
        enrollment.refresh_interval + config.clickhouse.batch_window + Duration::from_secs(2),
    );
    let _retiring = (!enrollment.retire_after_silence.is_zero()).then(|| {
        AbortOnDrop(
            tokio::spawn(retire_silent_hosts(
                enrollment_service.clone(),
                enrollment.retire_after_silence,
            ))
            .abort_handle(),
        )
    });
    let services = Services {
        limits: config.limits.clone(),
        collector_name: collector_name.to_owned(),
        enrollment: enrollment_service,
        store,
        revocations,
        health: crate::health::global().health(),
    };
    serve_connections(services, incoming, shutdown).await?;
    drop(tls);
    Ok(())
}

/// What the collector serves: its store, limits, name and revocation list.
#[derive(Debug, Clone)]
pub struct Services {
    /// The `[limits]` every agent's stream is held to.
    pub limits: LimitsSection,
    /// The collector's name, stored with each host it serves.
    pub collector_name: String,
    /// Where inventories are stored and queries answered from.
    pub store: Arc<Store>,
    /// The revoked certificates, refused on every call.
    pub revocations: Revocations,
    /// Enrollment: agents' certificates, tokens and host keys.
    pub enrollment: Enrollment,
    /// The readiness the gRPC health service reports: SERVING while ready, NOT_SERVING
    /// while not ([`crate::health`]).
    pub health: Health,
}

/// Serves the ingest, query, health and reflection services on the connections
/// `incoming` yields, until `shutdown` resolves. Every call passes the revocation check,
/// then the authorisation table ([`crate::authz`]), before any service.
///
/// Connections must carry the peer's [`portolan_tls::PeerInfo`] as their connect info
/// ([`TlsIncoming`] yields such; so may an in-process transport).
pub async fn serve_connections<I, IO, IE>(
    services: Services,
    incoming: I,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected<ConnectInfo = PeerInfo> + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Services {
        limits,
        collector_name,
        store,
        revocations,
        enrollment,
        health: readiness,
    } = services;
    let enrollment = EnrollmentServiceServer::new(enrollment);
    let query =
        QueryServiceServer::new(Query::new(store.clone()).with_revocations(revocations.clone()));
    let ingest = IngestServiceServer::new(
        Ingest::new(store, limits.clone(), &collector_name).with_revocations(revocations.clone()),
    )
    .max_decoding_message_size(limits.max_message_bytes as usize);
    // Health checking (grpc.health.v1) and reflection, for load balancers and grpcurl.
    // Both still sit behind mutual TLS: any certificate of the fleet's CA may ask.
    // Every service, and the server as a whole (""), follow the collector's readiness.
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let mut ready = readiness.subscribe();
    let follow = tokio::spawn(async move {
        loop {
            let status = if *ready.borrow_and_update() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for service in [
                "",
                <IngestServiceServer<Ingest> as NamedService>::NAME,
                <QueryServiceServer<Query> as NamedService>::NAME,
                <EnrollmentServiceServer<Enrollment> as NamedService>::NAME,
            ] {
                health_reporter.set_service_status(service, status).await;
            }
            if ready.changed().await.is_err() {
                return;
            }
        }
    });
    let _stop_following = AbortOnDrop(follow.abort_handle());
    // Reflection in both its versions: `v1`, and `v1alpha`, the only one that Python's
    // grpcio-reflection, older grpcurl releases and many other stock clients ask for.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(portolan_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection = reflection()
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    tonic::transport::Server::builder()
        // Every call of a revoked certificate is refused here, before any service.
        .layer(tonic::service::InterceptorLayer::new(
            revocations.interceptor(),
        ))
        // Then who may call what, declared once for every RPC.
        .layer(AuthorizeLayer)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        // What one connection may make the collector hold. An agent has one stream and a
        // few messages in flight (`limits.max_in_flight`), so hyper's defaults (1 MiB windows per stream and per
        // connection, 200 streams) only let a connection park megabytes here while its
        // writes wait on ClickHouse: thousands of agents times that is gigabytes. A
        // window of 256 KiB still carries a 5,000-socket snapshot part in a few round
        // trips.
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .add_service(ingest)
        .add_service(query)
        .add_service(enrollment)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Retires the hosts silent for `silence`, checking a tenth as often (at most every
/// minute); a failure is logged and tried again at the next check.
async fn retire_silent_hosts(enrollment: Enrollment, silence: std::time::Duration) {
    let every = (silence / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(60),
    );
    // Silence counts from this replica's start too: after an outage of the collectors (or
    // of ClickHouse) longer than `silence`, hosts get that long to reconnect before any
    // is retired, instead of the whole fleet at the first check.
    let started = std::time::SystemTime::now();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let retired = enrollment.retire_silent(silence, started).await;
        if !retired.is_empty() {
            tracing::info!(hosts = ?retired, "retired hosts silent for {}", humantime::format_duration(silence));
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
