//! The query service in-process: the real server over in-memory mutual TLS, answering
//! from a managed ClickHouse that an agent stream filled, with the roles of
//! `portolan_collector::authz` enforced on every call.

mod support;

use std::time::Duration;

use anyhow::{Result, ensure};
use portolan_collector::config::LimitsSection;
use portolan_proto::v1 as pb;
use portolan_proto::v1::query_service_client::QueryServiceClient;
use portolan_tls::OperatorRole;
use tonic::Code;
use tonic::transport::Channel;

use support::{AgentStream, Collector, Who, hello, snapshot};

const READER: Who = Who::Operator("ann", OperatorRole::Reader);
const ADMIN: Who = Who::Operator("bob", OperatorRole::Admin);

async fn client(collector: &Collector, who: &Who) -> Result<QueryServiceClient<Channel>> {
    Ok(QueryServiceClient::new(collector.channel(who).await?))
}

/// Stores a snapshot of `host_id` with listeners on `ports`, through the ingest service.
async fn report(collector: &Collector, host_id: &str, ports: &[u16]) -> Result<()> {
    let channel = collector.channel(&Who::Agent(host_id.into())).await?;
    let mut stream = AgentStream::open(channel).await?;
    stream.send(hello(host_id)).await?;
    stream.welcome().await?;
    stream.send(snapshot(1, ports)).await?;
    stream.acked(1).await
}

#[tokio::test]
async fn a_reader_lists_hosts_and_sockets() -> Result<()> {
    let collector = Collector::start("reader_lists", LimitsSection::default()).await?;
    report(&collector, "web-1", &[22, 443]).await?;
    report(&collector, "db-1", &[5432]).await?;
    let mut reader = client(&collector, &READER).await?;

    let hosts = reader
        .list_hosts(pb::ListHostsRequest::default())
        .await?
        .into_inner();
    let ids: Vec<_> = hosts.hosts.iter().map(|h| h.host_id.as_str()).collect();
    ensure!(ids == ["db-1", "web-1"], "{ids:?}");
    ensure!(hosts.hosts.iter().all(|h| h.last_seq == 1), "{hosts:?}");

    let sockets = reader
        .list_sockets(pb::ListSocketsRequest {
            hosts: Some(pb::HostSelector {
                host_ids: vec!["web-1".into()],
                ..pb::HostSelector::default()
            }),
            listening: true,
            ..pb::ListSocketsRequest::default()
        })
        .await?
        .into_inner();
    let mut ports: Vec<_> = sockets
        .sockets
        .iter()
        .map(|s| {
            (
                s.host_id.as_str(),
                s.hostname.as_str(),
                s.socket.as_ref().map_or(0, |s| s.local_port),
            )
        })
        .collect();
    ports.sort_unstable();
    ensure!(
        ports
            == [
                ("web-1", "web-1.example", 22),
                ("web-1", "web-1.example", 443)
            ],
        "{ports:?}"
    );
    collector.stop().await
}

#[tokio::test]
async fn a_reader_is_refused_what_needs_an_admin() -> Result<()> {
    let collector = Collector::start("reader_refused", LimitsSection::default()).await?;
    let mut reader = client(&collector, &READER).await?;
    let status = reader
        .ack_finding(pb::AckFindingRequest {
            fingerprint: "f".into(),
            reason: "known".into(),
            until_unix: 0,
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a reader acknowledged a finding"))?;
    ensure!(
        status.code() == Code::PermissionDenied
            && status
                .message()
                .contains("spiffe://portolan/operator/reader/ann")
            && status
                .message()
                .contains("acknowledging a finding needs an admin one"),
        "{status:?}"
    );
    let status = reader
        .unack_finding(pb::UnackFindingRequest {
            fingerprint: "f".into(),
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a reader cleared an acknowledgement"))?;
    ensure!(status.code() == Code::PermissionDenied, "{status:?}");

    // An admin gets past the table: the finding is what is missing.
    let mut admin = client(&collector, &ADMIN).await?;
    let status = admin
        .ack_finding(pb::AckFindingRequest {
            fingerprint: "f".into(),
            reason: "known".into(),
            until_unix: 0,
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an unknown finding was acknowledged"))?;
    ensure!(status.code() == Code::NotFound, "{status:?}");
    collector.stop().await
}

#[tokio::test]
async fn an_agent_is_refused_the_query_service() -> Result<()> {
    let collector = Collector::start("agent_refused", LimitsSection::default()).await?;
    report(&collector, "web-1", &[22]).await?;
    let mut agent = client(&collector, &Who::Agent("web-1".into())).await?;
    let refused = |status: tonic::Status| {
        status.code() == Code::PermissionDenied
            && status
                .message()
                .contains("`spiffe://portolan/host/web-1` is not an operator certificate")
    };
    let status = agent
        .list_hosts(pb::ListHostsRequest::default())
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an agent listed the fleet"))?;
    ensure!(refused(status.clone()), "{status:?}");
    let status = agent
        .get_host(pb::GetHostRequest {
            host_id: "web-1".into(),
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an agent read a host"))?;
    ensure!(refused(status.clone()), "{status:?}");
    let status = agent
        .watch_host(pb::WatchHostRequest {
            host_id: "web-1".into(),
            ..pb::WatchHostRequest::default()
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("an agent watched a host"))?;
    ensure!(refused(status.clone()), "{status:?}");
    collector.stop().await
}

#[tokio::test]
async fn health_checks_are_open_to_every_fleet_certificate() -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let collector = Collector::start("health_open", LimitsSection::default()).await?;
    for who in [Who::Agent("web-1".into()), READER, ADMIN] {
        let mut health = HealthClient::new(collector.channel(&who).await?);
        for service in ["portolan.v1.IngestService", "portolan.v1.QueryService"] {
            let answer = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await?
                .into_inner();
            ensure!(
                answer.status == ServingStatus::Serving as i32,
                "{who:?} asking about {service}: {answer:?}"
            );
        }
    }
    // The health service follows readiness: NOT_SERVING while a check fails, for every
    // service and for the server as a whole, and SERVING again once it passes.
    let health = HealthClient::new(collector.channel(&READER).await?);
    for (state, expected) in [
        (
            Err("clickhouse at http://ch: connection refused".to_string()),
            ServingStatus::NotServing,
        ),
        (Ok(()), ServingStatus::Serving),
    ] {
        collector.health.set("clickhouse", state);
        for service in ["", "portolan.v1.IngestService", "portolan.v1.QueryService"] {
            let health = &health;
            portolan_testkit::eventually_async!(timeout = Duration::from_secs(5), {
                let answer = health
                    .clone()
                    .check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner();
                if answer.status == expected as i32 {
                    Ok(())
                } else {
                    Err(format!(
                        "`{service}` is {:?}, not {expected:?}",
                        answer.status
                    ))
                }
            })
        }
    }
    collector.stop().await
}
