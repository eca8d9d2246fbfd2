//! Protocols beyond TCP and UDP: a process in a host's network namespace holds a Unix
//! listener on a path, one on an abstract name and a raw ICMP socket; the agent there
//! streams them and ClickHouse holds each with its protocol, path or protocol number,
//! host-local or wildcard exposure and owner, as `ss -xl` and `ss -w` list them inside
//! the namespace.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use portolan_core::{Protocol, Scope, SocketState};
use portolan_testkit::ss::{ss_raw, ss_unix};
use portolan_testkit::{ChildGuard, Lab, eventually_async};

use crate::support::{Cluster, Limits, stored_equals_kernel};

/// Opens the sockets, prints `ready`, then holds them.
const HOLDER: &str = r#"
import socket, sys, time
path = sys.argv[1]
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); u.bind(path); u.listen()
a = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); a.bind("\0portolan e2e"); a.listen()
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
print("ready", flush=True)
time.sleep(3600)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_and_raw_sockets_arrive_in_clickhouse() -> Result<()> {
    let lab = Lab::new("prot")?;
    let host = lab.add_host("a")?;
    let bridge = IpAddr::V4(lab.bridge_ipv4());
    let cluster = Cluster::start("protocols", &[bridge], Limits::default()).await?;
    let path = cluster.state.path().join("app server.sock");

    let mut command = host.command("python3");
    command
        .arg("-c")
        .arg(HOLDER)
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut holder = ChildGuard::spawn(&mut command)?;
    let pid = holder.id();
    let stdout = holder_stdout(&mut holder)?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "the socket holder said {line:?}");

    let _agent = cluster.spawn_agent(
        Some(&host),
        "host-proto",
        SocketAddr::new(bridge, cluster.collector_port),
        Duration::from_secs(1),
        &[],
    )?;

    let want_paths = [path.display().to_string(), "@portolan e2e".to_string()];
    let stored = eventually_async!(
        timeout = Duration::from_secs(60),
        interval = Duration::from_millis(300),
        {
            let stored = cluster
                .store
                .load_current("host-proto")
                .await
                .map_err(|e| e.to_string())?;
            let unix = stored
                .sockets
                .values()
                .filter(|s| s.key.protocol == Protocol::Unix)
                .count();
            let raw = stored
                .sockets
                .values()
                .filter(|s| s.key.protocol == Protocol::Raw)
                .count();
            if unix >= 2 && raw >= 1 {
                Ok(stored)
            } else {
                Err(format!("{unix} unix and {raw} raw sockets stored so far"))
            }
        }
    );

    // Unix: what `ss -xl` lists in the namespace, with the same paths, inodes and owner.
    let ss_listeners: Vec<_> = ss_unix(Some(&host.netns))?
        .into_iter()
        .filter(|u| u.listening)
        .collect();
    let stored_unix: Vec<_> = stored
        .sockets
        .values()
        .filter(|s| s.key.protocol == Protocol::Unix)
        .collect();
    assert_eq!(
        stored_unix.len(),
        ss_listeners.len(),
        "{stored_unix:?} {ss_listeners:?}"
    );
    for want in &want_paths {
        let s = stored_unix
            .iter()
            .find(|s| &s.path == want)
            .with_context(|| format!("no unix socket {want} stored: {stored_unix:?}"))?;
        let ss = ss_listeners
            .iter()
            .find(|u| &u.path == want)
            .with_context(|| format!("ss -xl does not list {want}"))?;
        assert_eq!(s.key.inode, ss.inode);
        assert_eq!(s.pids, vec![pid]);
        assert_eq!(ss.pids, vec![pid]);
        assert_eq!(s.state, SocketState::Listen);
        assert_eq!((s.scope, s.exposure), (Scope::Loopback, Scope::Loopback));
    }

    // Raw: port 1 (ICMP) on the wildcard, exposed as the namespace's widest address
    // (its private 10.77.N.x), like a listener there; `ss -w` agrees.
    let raw: Vec<_> = stored
        .sockets
        .values()
        .filter(|s| s.key.protocol == Protocol::Raw)
        .collect();
    let ss_raw = ss_raw(Some(&host.netns))?;
    assert_eq!(raw.len(), ss_raw.len(), "{raw:?} {ss_raw:?}");
    let icmp = raw
        .iter()
        .find(|s| s.key.local_port == 1)
        .context("no raw ICMP socket stored")?;
    assert!(icmp.key.local_address.is_unspecified());
    assert_eq!(
        (icmp.scope, icmp.exposure),
        (Scope::Wildcard, Scope::Private)
    );
    assert!(icmp.is_listener());
    assert_eq!(icmp.pids, vec![pid]);
    assert!(
        ss_raw
            .iter()
            .any(|r| r.local.port() == 1 && r.pids == vec![pid] && r.state == SocketState::Listen)
    );

    // In ClickHouse's own words: the protocol names and the path column.
    let rows = cluster.http_query(
        "SELECT protocol, path, local_port, exposure FROM sockets_current FINAL \
         WHERE host_id = 'host-proto' AND present = 1 AND protocol IN ('unix', 'raw') \
         ORDER BY protocol, path FORMAT TabSeparated",
    )?;
    let expected = format!(
        "raw\t\t1\tprivate\nunix\t{}\t0\tloopback\nunix\t{}\t0\tloopback\n",
        (&want_paths[0]).min(&want_paths[1]),
        (&want_paths[0]).max(&want_paths[1]),
    );
    assert_eq!(rows, expected);

    // The TCP/UDP comparison with `ss -tuanp` is unaffected by the new protocols.
    eventually_async!(
        timeout = Duration::from_secs(30),
        interval = Duration::from_millis(300),
        stored_equals_kernel(&cluster, "host-proto", &host).await
    );
    drop(holder);
    Ok(())
}

fn holder_stdout(holder: &mut ChildGuard) -> Result<std::process::ChildStdout> {
    holder
        .stdout
        .take()
        .context("the socket holder's stdout is piped")
}
