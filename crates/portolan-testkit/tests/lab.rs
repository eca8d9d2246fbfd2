//! The testkit against the real kernel: labs of hosts in network namespaces, the socket
//! fixture holding real sockets in them, and `ss` seeing what they hold. Needs root.
//!
//! - `three_hosts_hold_real_sockets_that_ss_sees`
//! - `hosts_reach_the_root_namespace_at_the_bridge_address`
//! - `an_unplugged_host_is_cut_off_until_plugged_again`
//! - `fixture_binary_builds_the_fixture_for_other_crates`
//! - `leftovers_of_dead_processes_are_cleaned_up`
//! - `without_privileges_the_error_says_to_run_as_root`
//! - `temp_state_is_removed_unless_the_test_fails`

use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use portolan_testkit::{
    Lab, NetnsHost, Protocol, SocketFixture, SocketState, SsSocket, eventually, fixture_binary,
    ss_sockets,
};

const FIXTURE: &str = env!("CARGO_BIN_EXE_portolan-socket-fixture");

fn fixture_in(host: &NetnsHost) -> Result<SocketFixture> {
    Ok(SocketFixture::spawn(Some(host), Path::new(FIXTURE))?)
}

/// The socket of `host` matching `wanted`, or an error listing what `ss` saw.
fn socket_in(
    host: &NetnsHost,
    what: &str,
    wanted: impl Fn(&SsSocket) -> bool,
) -> Result<SsSocket, String> {
    let sockets = host.sockets().map_err(|e| e.to_string())?;
    sockets.iter().find(|s| wanted(s)).cloned().ok_or_else(|| {
        format!(
            "no {what} in {host}; ss shows:\n{}",
            sockets
                .iter()
                .map(|s| format!("  {s:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn namespaces() -> Result<String> {
    let output = Command::new("ip").args(["netns", "list"]).output()?;
    ensure!(output.status.success(), "`ip netns list` failed");
    Ok(String::from_utf8(output.stdout)?)
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[test]
fn three_hosts_hold_real_sockets_that_ss_sees() -> Result<()> {
    let lab = Lab::new("kit-three")?;
    let a = lab.add_host("a")?;
    let b = lab.add_host("b")?;
    let c = lab.add_host("c")?;
    assert_eq!(a.ipv4.octets(), [10, 77, lab.subnet(), 2]);
    assert_eq!(c.ipv4.octets(), [10, 77, lab.subnet(), 4]);
    assert_eq!(
        a.ipv6.to_string(),
        format!("fd77:{}::2", lab.subnet()),
        "IPv6 uses the IPv4 digits"
    );
    assert!(a.netns.starts_with(&format!("ptl-{}-", std::process::id())));

    let fa = fixture_in(&a)?;
    let fb = fixture_in(&b)?;
    let fc = fixture_in(&c)?;
    let (listener, listening) = fa.listen(Protocol::Tcp, a.ipv4_addr(5432))?;
    assert_eq!(listening, a.ipv4_addr(5432));
    let (_, udp) = fa.listen(Protocol::Udp, "[::]:5353".parse()?)?;
    assert_eq!(udp.port(), 5353);
    let (_, listening6) = fa.listen(Protocol::Tcp, a.ipv6_addr(0))?;
    assert_ne!(listening6.port(), 0, "port 0 answers with the port picked");

    let (client, client_addr) = fb.connect(Protocol::Tcp, listening)?;
    assert_eq!(client_addr.ip(), IpAddr::V4(b.ipv4));
    let (_, client6_addr) = fc.connect(Protocol::Tcp, listening6)?;
    assert_eq!(client6_addr.ip(), IpAddr::V6(c.ipv6));

    // The server side, in A: the listeners and the accepted connection, owned by the
    // fixture.
    let pid = fa.pid();
    let found = eventually!(socket_in(&a, "TCP listener on 5432", |s| {
        s.protocol == Protocol::Tcp && s.state == SocketState::Listen && s.local == listening
    }));
    assert_eq!((found.pids, found.remote), (vec![pid], None));
    assert!(found.inode.is_some());
    let found = eventually!(socket_in(&a, "UDP socket on [::]:5353", |s| {
        s.protocol == Protocol::Udp && s.local.port() == 5353
    }));
    assert_eq!(found.state, SocketState::Listen);
    assert_eq!(found.local.ip(), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    assert_eq!(found.pids, vec![pid]);
    let accepted = eventually!(socket_in(&a, "connection accepted from B", |s| {
        s.state == SocketState::Established
            && s.local == listening
            && s.remote == Some(client_addr)
            && s.pids == vec![pid]
    }));
    assert_eq!(accepted.protocol, Protocol::Tcp);
    eventually!(socket_in(&a, "IPv6 connection accepted from C", |s| {
        s.state == SocketState::Established && s.remote == Some(client6_addr)
    }));

    // The client side, in B and C.
    let found = eventually!(socket_in(&b, "client connection to A", |s| {
        s.state == SocketState::Established && s.local == client_addr
    }));
    assert_eq!(
        (found.remote, found.pids),
        (Some(listening), vec![fb.pid()])
    );
    eventually!(socket_in(&c, "IPv6 client connection to A", |s| {
        s.state == SocketState::Established
            && s.local == client6_addr
            && s.remote == Some(listening6)
    }));

    // Closing the listener removes it and leaves the connection it accepted.
    let held = fa.accepted(listener)?;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!((held[0].1, held[0].2), (listening, client_addr));
    fa.close(listener)?;
    eventually!({
        let sockets = a.sockets().map_err(|e| e.to_string())?;
        let listening_still = sockets
            .iter()
            .any(|s| s.state == SocketState::Listen && s.local == listening);
        let connected = sockets
            .iter()
            .any(|s| s.state == SocketState::Established && s.remote == Some(client_addr));
        match (listening_still, connected) {
            (false, true) => Ok(()),
            state => Err(format!("(listening, connected) = {state:?}")),
        }
    });

    // The client closes first: A is left in CLOSE_WAIT, B in FIN_WAIT2; when A closes
    // too, B is in TIME_WAIT, held by the kernel alone.
    fb.close(client)?;
    eventually!(socket_in(&a, "CLOSE_WAIT", |s| {
        s.state == SocketState::CloseWait && s.remote == Some(client_addr)
    }));
    eventually!(socket_in(&b, "FIN_WAIT2", |s| {
        s.state == SocketState::FinWait2 && s.local == client_addr
    }));
    fa.close(held[0].0)?;
    let time_wait = eventually!(socket_in(&b, "TIME_WAIT", |s| {
        s.state == SocketState::TimeWait && s.local == client_addr
    }));
    assert_eq!((time_wait.pids, time_wait.inode), (vec![], None));

    // Errors come back as errors, and the fixture goes on.
    let err = fb
        .connect(Protocol::Tcp, a.ipv4_addr(1))
        .expect_err("nothing listens on port 1");
    assert!(err.to_string().contains("refused"), "{err}");
    fb.close(portolan_testkit::FixtureId(999))
        .expect_err("no such socket");
    assert_eq!(fb.connect(Protocol::Udp, a.ipv4_addr(5353))?.1.ip(), b.ipv4);

    // Drop removes the namespaces, the cables and the bridge.
    let bridge = lab.bridge().to_string();
    let prefix = lab.prefix().to_string();
    assert!(namespaces()?.contains(&prefix));
    drop((fa, fb, fc));
    drop(lab);
    let left = namespaces()?;
    assert!(!left.contains(&prefix), "left behind: {left}");
    assert!(!link_exists(&bridge), "bridge `{bridge}` left behind");
    Ok(())
}

#[test]
fn hosts_reach_the_root_namespace_at_the_bridge_address() -> Result<()> {
    let lab = Lab::new("kit-root")?;
    let host = lab.add_host("agent")?;
    let fixture = fixture_in(&host)?;
    for bridge in [IpAddr::V4(lab.bridge_ipv4()), IpAddr::V6(lab.bridge_ipv6())] {
        // A listener of this process, in the root namespace, as the collector's will be.
        let listener = TcpListener::bind((bridge, 0))?;
        listener.set_nonblocking(true)?;
        let (_, local) = fixture.connect(Protocol::Tcp, listener.local_addr()?)?;
        let (_, peer) = eventually!(listener.accept());
        assert_eq!(peer, local);
        let host_ip = match bridge {
            IpAddr::V4(_) => IpAddr::V4(host.ipv4),
            IpAddr::V6(_) => IpAddr::V6(host.ipv6),
        };
        assert_eq!(peer.ip(), host_ip);
    }

    // A fixture in the root namespace listens on the bridge address; the host connects.
    let root = SocketFixture::spawn(None, Path::new(FIXTURE))?;
    let (_, listening) =
        root.listen(Protocol::Tcp, SocketAddr::new(lab.bridge_ipv4().into(), 0))?;
    let (_, local) = fixture.connect(Protocol::Tcp, listening)?;
    let found = eventually!({
        ss_sockets(None)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|s| s.state == SocketState::Established && s.remote == Some(local))
            .ok_or_else(|| {
                "the accepted connection is not in the root namespace's `ss`".to_string()
            })
    });
    assert_eq!((found.local, found.pids), (listening, vec![root.pid()]));
    Ok(())
}

#[test]
fn an_unplugged_host_is_cut_off_until_plugged_again() -> Result<()> {
    let lab = Lab::new("kit-link")?;
    let server = lab.add_host("server")?;
    let client = lab.add_host("client")?;
    let fs = fixture_in(&server)?;
    let fc = fixture_in(&client)?;
    let (_, listening) = fs.listen(Protocol::Tcp, server.ipv4_addr(8080))?;
    fc.connect(Protocol::Tcp, listening)?;

    client.set_link(false)?;
    let err = fc
        .connect(Protocol::Tcp, listening)
        .expect_err("an unplugged host reaches nobody");
    let message = err.to_string();
    assert!(
        ["No route to host", "unreachable", "timed out"]
            .iter()
            .any(|m| message.contains(m)),
        "{message}"
    );

    client.set_link(true)?;
    eventually!(
        timeout = Duration::from_secs(30),
        fc.connect(Protocol::Tcp, listening)
    );
    Ok(())
}

#[test]
fn fixture_binary_builds_the_fixture_for_other_crates() -> Result<()> {
    let binary = fixture_binary()?;
    assert!(binary.is_file(), "{}", binary.display());
    assert_eq!(
        binary.file_name().and_then(|n| n.to_str()),
        Some("portolan-socket-fixture")
    );
    let fixture = SocketFixture::spawn(None, &binary)?;
    let (_, local) = fixture.listen(Protocol::Udp, "127.0.0.1:0".parse()?)?;
    assert_ne!(local.port(), 0);
    assert_eq!(fixture_binary()?, binary, "cached for the process");
    Ok(())
}

#[test]
fn leftovers_of_dead_processes_are_cleaned_up() -> Result<()> {
    // Something of a live process, which must stay.
    let live = Lab::new("kit-live")?;
    let live_host = live.add_host("a")?;
    // A process that has exited stands in for a crashed test run.
    let mut dead = Command::new("true").spawn()?;
    let pid = dead.id();
    dead.wait()?;
    let netns = format!("ptl-{pid}-0-crashed-a");
    let link = format!("ptlx{}", pid % 100_000);
    let run = |args: &[&str]| -> Result<()> {
        let status = Command::new("ip").args(args).status()?;
        if !status.success() {
            bail!("`ip {}` failed", args.join(" "));
        }
        Ok(())
    };
    // A concurrent test process's cleanup may delete the namespace while `ip` is still
    // creating it (it is a dead pid's), and `ip` then fails: that is cleanup too.
    let _ = run(&["netns", "add", &netns]);
    run(&["link", "add", &link, "type", "bridge"])?;
    run(&[
        "link",
        "set",
        "dev",
        &link,
        "alias",
        &format!("portolan-testkit pid={pid}"),
    ])?;

    let removed = Lab::cleanup_stale()?;
    // Another test process may have cleaned up first: what counts is that the leftovers
    // are gone and that nothing of a live process went with them.
    assert!(!namespaces()?.contains(&netns), "{removed:?}");
    assert!(!link_exists(&link), "{removed:?}");
    assert!(namespaces()?.contains(&live_host.netns));
    assert!(link_exists(live.bridge()));
    Ok(())
}

/// Runs this same test as `nobody` with every capability dropped; in there,
/// `PORTOLAN_TESTKIT_UNPRIVILEGED` is set and the lab must refuse with a clear message.
#[test]
fn without_privileges_the_error_says_to_run_as_root() -> Result<()> {
    if std::env::var_os("PORTOLAN_TESTKIT_UNPRIVILEGED").is_some() {
        let err = Lab::new("kit-nobody").expect_err("nobody may not create namespaces");
        assert_eq!(
            err.to_string(),
            "network namespaces need root (CAP_SYS_ADMIN): run the e2e tests as root, e.g. `sudo just test`"
        );
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&exe)
        .args([
            "--exact",
            "without_privileges_the_error_says_to_run_as_root",
            "--test-threads=1",
        ])
        .env("PORTOLAN_TESTKIT_UNPRIVILEGED", "1")
        .output()
        .context("cannot run `setpriv`")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && stdout.contains("1 passed"),
        "the unprivileged run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[test]
fn temp_state_is_removed_unless_the_test_fails() -> Result<()> {
    let state = portolan_testkit::TempState::new("kit")?;
    let spool = state.subdir("spool")?;
    assert!(spool.is_dir());
    let path = state.path().to_path_buf();
    drop(state);
    assert!(!path.exists());

    let kept = std::thread::spawn(|| {
        let state = portolan_testkit::TempState::new("kit-failing").expect("temp dir");
        let path = state.path().to_path_buf();
        std::panic::panic_any(path);
    })
    .join()
    .expect_err("the thread panicked");
    let path = kept
        .downcast::<std::path::PathBuf>()
        .expect("the path was the payload");
    assert!(path.is_dir(), "kept for inspection");
    std::fs::remove_dir_all(*path)?;
    Ok(())
}
