//! Statelessness: two collectors against one ClickHouse both serve agents, a host moves
//! from one replica to the other without losing or duplicating anything, and a replayed
//! delta is acknowledged without being stored twice.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use portolan_proto::v1 as pb;
use portolan_proto::v1::stream_inventory_request::Message as AgentMessage;
use portolan_testkit::eventually_async;

use crate::refusals::{Ending, attempt_at, files, hello, listener_socket, snapshot};
use crate::support::{Cluster, Limits};

fn delta(seq: u64, added: Vec<pb::Socket>, removed: Vec<pb::Socket>) -> AgentMessage {
    AgentMessage::Delta(pb::Delta {
        seq,
        base_seq: seq - 1,
        scanned_at_unix_nanos: 1_700_000_000_000_000_000
            + i64::try_from(seq).unwrap_or(0) * 1_000_000_000,
        added,
        removed,
        stats: Some(pb::ScanStats::default()),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_share_one_clickhouse() -> Result<()> {
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut cluster = Cluster::start("replicas", &[localhost], Limits::default()).await?;
    let first = cluster.collector_port;
    let second = cluster.add_collector().await?;
    let endpoint = |port: u16| format!("https://127.0.0.1:{port}");

    // Real agents on this host, one streaming to each replica, both get stored.
    let interval = Duration::from_secs(1);
    let _a1 = cluster.spawn_agent(
        None,
        "replica-agent-1",
        SocketAddr::new(localhost, first),
        interval,
        &[],
    )?;
    let _a2 = cluster.spawn_agent(
        None,
        "replica-agent-2",
        SocketAddr::new(localhost, second),
        interval,
        &[],
    )?;
    for host_id in ["replica-agent-1", "replica-agent-2"] {
        let store = &cluster.store;
        let listeners = eventually_async!(
            timeout = Duration::from_secs(60),
            interval = Duration::from_millis(250),
            {
                let sockets = store
                    .current_sockets(host_id)
                    .await
                    .map_err(|e| e.to_string())?;
                if sockets.is_empty() {
                    Err(format!("nothing stored for {host_id} yet"))
                } else {
                    Ok(sockets.len())
                }
            }
        );
        println!("{host_id}: {listeners} sockets stored through its replica");
    }

    // A host streams seq 1 and 2 through the first replica...
    let (cert, key) = cluster.pki.agent("moving-host")?;
    let tls = portolan_tls::client_config(&files(&cluster, &cert, &key))?;
    let ending = attempt_at(
        &endpoint(first),
        tls.clone(),
        vec![
            hello("moving-host"),
            snapshot(1, vec![listener_socket(22)], vec![]),
            delta(2, vec![listener_socket(80)], vec![]),
        ],
    )
    .await;
    assert!(
        matches!(&ending, Ending::Acked(s) if s == &[1, 2]),
        "first replica: {ending:?}"
    );

    // ...the first replica dies, the host moves to the second, which continues from what
    // ClickHouse holds. The delta whose ack was "lost" is replayed: acknowledged, not
    // stored again. Then the host goes on.
    cluster.kill_collector(0);
    let ending = attempt_at(
        &endpoint(second),
        tls,
        vec![
            hello("moving-host"),
            delta(2, vec![listener_socket(80)], vec![]),
            delta(3, vec![], vec![listener_socket(22)]),
        ],
    )
    .await;
    assert!(
        matches!(&ending, Ending::Acked(s) if s == &[2, 3]),
        "second replica: {ending:?}"
    );

    let store = &cluster.store;
    assert_eq!(store.last_seq("moving-host").await?, 3);
    let current: Vec<u16> = store
        .current_sockets("moving-host")
        .await?
        .iter()
        .map(|s| s.socket.key.local_port)
        .collect();
    assert_eq!(current, [80], "current state after the hand-over");
    let mut events: Vec<(u64, String, u16)> = store
        .socket_events("moving-host")
        .await?
        .into_iter()
        .map(|e| (e.seq, e.event.as_str().to_string(), e.socket.key.local_port))
        .collect();
    events.sort();
    assert_eq!(
        events,
        [
            (1, "added".to_string(), 22),
            (2, "added".to_string(), 80),
            (3, "removed".to_string(), 22)
        ],
        "history: each event once, none duplicated by the replay"
    );
    let reports = store.reports("moving-host").await?;
    let changes = reports.iter().filter(|r| r.kind != "heartbeat").count();
    assert_eq!(changes, 3, "one commit marker per seq: {reports:?}");
    Ok(())
}
