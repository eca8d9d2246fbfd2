//! The scanner under churn: processes that exit mid-scan and sockets that open and close
//! while it runs never fail a scan, never panic, and never lose a socket that stays.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portolan_agent::scan::{ScanOptions, Scanner};

/// A short-lived process that owns a listener and a connection, then exits.
fn short_lived_owner(port: u16) -> std::io::Result<Child> {
    Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket,time\nl=socket.socket(); l.bind(('127.0.0.1',0)); l.listen()\nc=socket.create_connection(('127.0.0.1',{port}))\ntime.sleep(0.02)"
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

#[test]
fn scans_survive_processes_and_sockets_vanishing_mid_scan() -> Result<(), Box<dyn std::error::Error>>
{
    // A listener that stays for the whole test: every scan must see it, owned by us.
    let stable = TcpListener::bind("127.0.0.1:0")?;
    let stable_port = stable.local_addr()?.port();
    stable.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));

    // Sockets opening and closing in this process as fast as they can.
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            // Bounded, so that TIME_WAIT sockets never crowd the ephemeral port range.
            while !stop.load(Ordering::Relaxed) && n < 3_000 {
                std::thread::sleep(Duration::from_micros(500));
                if let Ok(l) = TcpListener::bind("127.0.0.1:0")
                    && let Ok(addr) = l.local_addr()
                {
                    let _c = TcpStream::connect(addr);
                    n += 1;
                }
            }
            n
        })
    };
    // Processes owning sockets, exiting while the scanner walks /proc.
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut children: Vec<Child> = Vec::new();
            let mut spawned = 0u64;
            while !stop.load(Ordering::Relaxed) && spawned < 300 {
                if let Ok(child) = short_lived_owner(stable_port) {
                    children.push(child);
                    spawned += 1;
                }
                children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
                std::thread::sleep(Duration::from_millis(5));
            }
            // A child may still wait in connect() for a listener nobody accepts on now.
            for mut c in children {
                let _ = c.kill();
                let _ = c.wait();
            }
            spawned
        })
    };

    let mut scanner = Scanner::new(ScanOptions::default());
    let started = Instant::now();
    let mut scans = 0;
    let mut gone = 0u32;
    let me = std::process::id();
    while started.elapsed() < Duration::from_secs(5) {
        // Drain accepts so the listener's queue does not fill.
        while stable.accept().is_ok() {}
        let scan = scanner.scan()?;
        let stable_socket = scan
            .sockets
            .iter()
            .find(|s| {
                s.key.local_port == stable_port && s.state == portolan_core::SocketState::Listen
            })
            .ok_or("the stable listener is missing from a scan")?;
        // Between fork and exec a child holds its parent's descriptors too: the kernel
        // (and so the scan) then lists it as a second owner. This process always is one.
        assert!(
            stable_socket.pids.contains(&me),
            "the stable listener's owners {:?} lack {me}",
            stable_socket.pids
        );
        gone += scan.stats.unattributed_process_gone;
        scans += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let opened = churn.join().map_err(|_| "churn thread panicked")?;
    let spawned = spawner.join().map_err(|_| "spawner thread panicked")?;
    println!(
        "{scans} scans, all complete, while {opened} sockets opened and closed and {spawned} owning processes came and went ({gone} sockets seen without owner because theirs had just exited)"
    );
    assert!(scans >= 10, "only {scans} scans in 5 s");
    assert!(
        spawned >= 10,
        "only {spawned} processes spawned: the test did not churn"
    );
    Ok(())
}
