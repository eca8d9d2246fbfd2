//! `portolan-socket-fixture`: holds real sockets as a test tells it, one command per line
//! on stdin, one answer per line on stdout. Meant to run inside a network namespace
//! (`ip netns exec <ns> portolan-socket-fixture`); `SocketFixture` in the library
//! drives it.
//!
//! ```text
//! listen tcp 10.77.1.2:5432 [reuseport]   ok <id> <local addr:port>
//! listen udp [::]:5353                    ok <id> <local addr:port>
//! connect tcp 10.77.1.3:8080              ok <id> <local addr:port>
//! connect udp 10.77.1.3:53                ok <id> <local addr:port>
//! accepted <listener id>                  ok [<id>,<local>,<peer> …]
//! shutdown <id>                           ok <id> <local addr:port>   (TCP: sends FIN, keeps the socket)
//! close <id>                              ok <id> <local addr:port>
//! pid                                     ok <pid>
//! anything that fails                     err <message>
//! ```
//!
//! Connections a TCP listener accepts are held open (never read) until closed by id or
//! until the fixture exits; closing a listener leaves them open. The fixture exits when
//! stdin closes, closing everything.
//!
//! Keep this one file using only std and tokio: `fixture_binary` decides whether the
//! built binary is up to date by comparing it with this file alone.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// How long a TCP connect may take before the command fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

enum Held {
    Listener {
        local: SocketAddr,
        acceptor: JoinHandle<()>,
    },
    Tcp {
        local: SocketAddr,
        peer: SocketAddr,
        accepted_by: Option<u64>,
        stream: TcpStream,
    },
    Udp {
        local: SocketAddr,
        // Held to keep the socket open.
        _socket: UdpSocket,
    },
}

impl Held {
    fn local(&self) -> SocketAddr {
        match self {
            Held::Listener { local, .. } | Held::Tcp { local, .. } | Held::Udp { local, .. } => {
                *local
            }
        }
    }
}

#[derive(Default)]
struct State {
    next_id: u64,
    held: BTreeMap<u64, Held>,
}

impl State {
    fn insert(&mut self, held: Held) -> (u64, SocketAddr) {
        self.next_id += 1;
        let local = held.local();
        self.held.insert(self.next_id, held);
        (self.next_id, local)
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let state: Shared = Arc::default();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                eprintln!("portolan-socket-fixture: cannot read stdin: {e}");
                break;
            }
        };
        let answer = match execute(&state, line.trim()).await {
            Ok(answer) => format!("ok {answer}\n"),
            Err(message) => format!("err {}\n", message.replace('\n', " ")),
        };
        if stdout.write_all(answer.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
            break;
        }
    }
}

async fn execute(state: &Shared, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["pid"] => Ok(std::process::id().to_string()),
        ["listen", "tcp", addr, options @ ..] => {
            let reuseport = match options {
                [] => false,
                ["reuseport"] => true,
                _ => return Err(format!("unknown options `{}`", options.join(" "))),
            };
            listen_tcp(state, parse_addr(addr)?, reuseport).await
        }
        ["listen", "udp", addr] => {
            let addr = parse_addr(addr)?;
            let socket = UdpSocket::bind(addr)
                .await
                .map_err(|e| format!("bind udp {addr}: {e}"))?;
            let local = socket.local_addr().map_err(|e| e.to_string())?;
            let (id, local) = lock(state).insert(Held::Udp {
                local,
                _socket: socket,
            });
            Ok(format!("{id} {local}"))
        }
        ["connect", "tcp", addr] => {
            let addr = parse_addr(addr)?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| format!("connect tcp {addr}: timed out after {CONNECT_TIMEOUT:?}"))?
                .map_err(|e| format!("connect tcp {addr}: {e}"))?;
            let local = stream.local_addr().map_err(|e| e.to_string())?;
            let (id, local) = lock(state).insert(Held::Tcp {
                local,
                peer: addr,
                accepted_by: None,
                stream,
            });
            Ok(format!("{id} {local}"))
        }
        ["connect", "udp", addr] => {
            let addr = parse_addr(addr)?;
            let any: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse().map_err(|_| "unreachable")?
            } else {
                "[::]:0".parse().map_err(|_| "unreachable")?
            };
            let socket = UdpSocket::bind(any)
                .await
                .map_err(|e| format!("bind udp {any}: {e}"))?;
            socket
                .connect(addr)
                .await
                .map_err(|e| format!("connect udp {addr}: {e}"))?;
            let local = socket.local_addr().map_err(|e| e.to_string())?;
            let (id, local) = lock(state).insert(Held::Udp {
                local,
                _socket: socket,
            });
            Ok(format!("{id} {local}"))
        }
        ["accepted", id] => {
            let listener = parse_id(id)?;
            let state = lock(state);
            if !matches!(state.held.get(&listener), Some(Held::Listener { .. })) {
                return Err(format!("no listener {listener}"));
            }
            let entries: Vec<String> = state
                .held
                .iter()
                .filter_map(|(id, held)| match held {
                    Held::Tcp {
                        local,
                        peer,
                        accepted_by: Some(by),
                        ..
                    } if *by == listener => Some(format!("{id},{local},{peer}")),
                    _ => None,
                })
                .collect();
            Ok(entries.join(" "))
        }
        ["shutdown", id] => {
            let id = parse_id(id)?;
            // Take the stream out while shutting it down: the lock is not held across
            // the await.
            let held = lock(state).held.remove(&id);
            match held {
                Some(Held::Tcp {
                    local,
                    peer,
                    accepted_by,
                    mut stream,
                }) => {
                    let result = stream.shutdown().await;
                    lock(state).held.insert(
                        id,
                        Held::Tcp {
                            local,
                            peer,
                            accepted_by,
                            stream,
                        },
                    );
                    result.map_err(|e| format!("shutdown {id}: {e}"))?;
                    Ok(format!("{id} {local}"))
                }
                Some(other) => {
                    lock(state).held.insert(id, other);
                    Err(format!("{id} is not a TCP connection"))
                }
                None => Err(format!("no socket {id}")),
            }
        }
        ["close", id] => {
            let id = parse_id(id)?;
            let held = lock(state).held.remove(&id);
            match held {
                Some(Held::Listener { local, acceptor }) => {
                    // The listener lives in the acceptor task: it is closed once the
                    // aborted task has been dropped.
                    acceptor.abort();
                    let _ = acceptor.await;
                    Ok(format!("{id} {local}"))
                }
                Some(other) => Ok(format!("{id} {}", other.local())),
                None => Err(format!("no socket {id}")),
            }
        }
        _ => Err(format!("unknown command `{line}`")),
    }
}

async fn listen_tcp(state: &Shared, addr: SocketAddr, reuseport: bool) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("listen tcp {addr}: {e}");
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    socket.set_reuseaddr(true).map_err(fail)?;
    if reuseport {
        socket.set_reuseport(true).map_err(fail)?;
    }
    socket.bind(addr).map_err(fail)?;
    let listener = socket.listen(1024).map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    let mut state_guard = lock(state);
    let id = state_guard.next_id + 1;
    let acceptor_state = Arc::clone(state);
    let acceptor = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let local = stream.local_addr().unwrap_or(local);
                    lock(&acceptor_state).insert(Held::Tcp {
                        local,
                        peer,
                        accepted_by: Some(id),
                        stream,
                    });
                }
                Err(e) => {
                    eprintln!("portolan-socket-fixture: accept on {local}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let (inserted, _) = state_guard.insert(Held::Listener { local, acceptor });
    debug_assert_eq!(inserted, id);
    Ok(format!("{id} {local}"))
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not an address:port (IPv6 in brackets)"))
}

fn parse_id(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a socket id"))
}
