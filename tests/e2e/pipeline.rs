//! The foundation: agents in three hosts stream what their kernels hold; ClickHouse ends
//! up holding exactly that.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Result;
use portolan_core::{Protocol, Scope};
use portolan_testkit::{Lab, SocketFixture, eventually_async, fixture_binary};

use crate::support::{Cluster, Limits, describe_difference, inventory_from_ss, view};

const INTERVAL: Duration = Duration::from_secs(2);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_stream_what_their_kernels_hold() -> Result<()> {
    let lab = Lab::new("pipe")?;
    let hosts = [lab.add_host("a")?, lab.add_host("b")?, lab.add_host("c")?];
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let cluster = Cluster::start("pipeline", &[bridge], Limits::default()).await?;
    let store = &cluster.store;
    let fixture = fixture_binary()?;

    // Real listeners in every host: TCP and UDP, IPv4 and IPv6, loopback, private and
    // wildcard binds.
    let mut fixtures = Vec::new();
    for host in &hosts {
        let f = SocketFixture::spawn(Some(host), &fixture)?;
        f.listen(Protocol::Tcp, addr("127.0.0.1:6379"))?;
        f.listen(Protocol::Tcp, host.ipv4_addr(5432))?;
        f.listen(Protocol::Tcp, addr("0.0.0.0:8080"))?;
        f.listen(Protocol::Tcp, addr("[::]:9200"))?;
        f.listen(Protocol::Tcp, host.ipv6_addr(443))?;
        f.listen(Protocol::Udp, addr("0.0.0.0:5353"))?;
        f.listen(Protocol::Udp, addr("[::1]:53"))?;
        f.listen(Protocol::Udp, host.ipv4_addr(9999))?;
        fixtures.push(f);
    }
    // Real connections between the hosts, over IPv4 and IPv6.
    let [a, b, c] = &hosts;
    for _ in 0..3 {
        fixtures[1].connect(Protocol::Tcp, a.ipv4_addr(5432))?;
    }
    fixtures[2].connect(Protocol::Tcp, a.ipv4_addr(8080))?;
    fixtures[0].connect(Protocol::Tcp, b.ipv6_addr(9200))?;
    fixtures[2].connect(Protocol::Tcp, b.ipv6_addr(443))?;
    fixtures[0].connect(Protocol::Udp, c.ipv4_addr(9999))?;

    let mut agents = Vec::new();
    for (host, role) in hosts.iter().zip(["db", "app", "app"]) {
        agents.push(cluster.spawn_agent(
            Some(host),
            &format!("host-{}", host.name),
            SocketAddr::new(bridge, cluster.collector_port),
            INTERVAL,
            &[("env", "test"), ("role", role)],
        )?);
    }

    // ClickHouse equals what `ss` shows in each host at the same moment: same sockets,
    // same states, same owners, same flows.
    for (host, f) in hosts.iter().zip(&fixtures) {
        let host_id = format!("host-{}", host.name);
        let stored = eventually_async!(
            timeout = Duration::from_secs(90),
            interval = Duration::from_millis(500),
            {
                let before = host.sockets().map_err(|e| e.to_string())?;
                let stored = store
                    .load_current(&host_id)
                    .await
                    .map_err(|e| e.to_string())?;
                let after = host.sockets().map_err(|e| e.to_string())?;
                if before != after {
                    return Err("the kernel's sockets changed while reading; again".to_string());
                }
                let kernel = inventory_from_ss(&after, stored.host.clone());
                let (s, k) = (view(&stored), view(&kernel));
                if s.0.is_empty() {
                    return Err(format!(
                        "nothing stored for {host_id} yet; agent log:\n{}",
                        cluster.agent_log(&host_id)
                    ));
                }
                if s == k {
                    Ok(stored)
                } else {
                    Err(describe_difference(&s, &k))
                }
            }
        );
        println!(
            "{host_id}: ClickHouse equals ss: {} sockets, {} flows",
            stored.sockets.len(),
            stored.flows.len()
        );

        // The fixture's sockets are attributed to the fixture's process.
        let pid = f.pid();
        let process = stored
            .processes
            .get(&pid)
            .expect("the fixture's process is stored");
        assert!(process.name.starts_with("portolan-socket"), "{process:?}");
        assert!(
            process.executable.ends_with("portolan-socket-fixture"),
            "{process:?}"
        );
        let owned = stored
            .sockets
            .values()
            .filter(|s| s.pids == vec![pid])
            .count();
        assert_eq!(
            owned, 8,
            "the fixture's 8 listeners are attributed to pid {pid}"
        );

        // Scopes: resolved against the host's own interfaces.
        let scope_of = |port: u16, protocol: Protocol| {
            stored
                .sockets
                .values()
                .find(|s| s.key.local_port == port && s.key.protocol == protocol)
                .map(|s| (s.scope, s.exposure))
        };
        assert_eq!(
            scope_of(6379, Protocol::Tcp),
            Some((Scope::Loopback, Scope::Loopback))
        );
        assert_eq!(
            scope_of(5432, Protocol::Tcp),
            Some((Scope::Private, Scope::Private))
        );
        assert_eq!(
            scope_of(8080, Protocol::Tcp),
            Some((Scope::Wildcard, Scope::Private))
        );
        assert_eq!(
            scope_of(9200, Protocol::Tcp),
            Some((Scope::Wildcard, Scope::Private))
        );
        assert_eq!(
            scope_of(443, Protocol::Tcp),
            Some((Scope::Private, Scope::Private))
        );
        assert_eq!(
            scope_of(53, Protocol::Udp),
            Some((Scope::Loopback, Scope::Loopback))
        );

        let facts = store.host(&host_id).await?.expect("host row");
        assert_eq!(facts.labels.get("env").map(String::as_str), Some("test"));
        assert!(
            facts
                .state
                .interfaces
                .iter()
                .any(|i| i.address == IpAddr::V4(host.ipv4)),
            "{:?}",
            facts.state
        );
        assert!(facts.state.ephemeral_ports.is_some());
    }

    // A listener closed on host a disappears from ClickHouse within two scan intervals.
    let listener_id = {
        let (id, _) = fixtures[0].listen(Protocol::Tcp, a.ipv4_addr(7000))?;
        eventually_async!(
            timeout = Duration::from_secs(30),
            interval = Duration::from_millis(100),
            {
                let current = store
                    .load_current("host-a")
                    .await
                    .map_err(|e| e.to_string())?;
                current
                    .sockets
                    .values()
                    .any(|s| s.key.local_port == 7000)
                    .then_some(())
                    .ok_or_else(|| "port 7000 not stored yet".to_string())
            }
        );
        id
    };
    let closed_at = Instant::now();
    fixtures[0].close(listener_id)?;
    eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(100),
        {
            let current = store
                .load_current("host-a")
                .await
                .map_err(|e| e.to_string())?;
            (!current.sockets.values().any(|s| s.key.local_port == 7000))
                .then_some(())
                .ok_or_else(|| "port 7000 still stored".to_string())
        }
    );
    let gone_after = closed_at.elapsed();
    println!(
        "listener closed on host-a: gone from ClickHouse after {gone_after:?} (scan interval {INTERVAL:?})"
    );
    assert!(
        gone_after <= 2 * INTERVAL,
        "closing took {gone_after:?}, over two scan intervals"
    );

    // A listener opened on host b appears within two scan intervals, with its owner.
    let opened_at = Instant::now();
    fixtures[1].listen(Protocol::Udp, addr("[::]:7001"))?;
    let socket = eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(100),
        {
            let current = store
                .load_current("host-b")
                .await
                .map_err(|e| e.to_string())?;
            current
                .sockets
                .values()
                .find(|s| s.key.local_port == 7001)
                .cloned()
                .ok_or_else(|| "port 7001 not stored yet".to_string())
        }
    );
    let seen_after = opened_at.elapsed();
    println!(
        "listener opened on host-b: in ClickHouse after {seen_after:?} (scan interval {INTERVAL:?})"
    );
    assert!(
        seen_after <= 2 * INTERVAL,
        "opening took {seen_after:?}, over two scan intervals"
    );
    assert_eq!(socket.pids, vec![fixtures[1].pid()]);

    // History keeps both events of host a's short-lived listener.
    let events = store.socket_events("host-a").await?;
    let on_7000: Vec<_> = events
        .iter()
        .filter(|e| e.socket.key.local_port == 7000)
        .map(|e| e.event.as_str())
        .collect();
    assert_eq!(
        on_7000,
        ["added", "removed"],
        "history of port 7000 on host-a"
    );

    drop(agents);
    Ok(())
}
