//! The embedded default: a ClickHouse server the collector runs itself.
//!
//! When no ClickHouse URL is configured, the collector starts the `clickhouse-server`
//! binary found on the machine as a child process, with a generated configuration, its
//! data under the collector's state directory and both ports on 127.0.0.1 only, waits
//! until it answers `GET /ping`, and stops it on exit. `just demo` and the store tests use
//! exactly this path.
//!
//! Layout under `<state_dir>/clickhouse/`:
//!
//! ```text
//! config.xml  users.xml  server.pid
//! data/  tmp/  user_files/  format_schemas/
//! logs/clickhouse-server.log  logs/clickhouse-server.err.log  logs/console.log
//! ```
//!
//! With [`ManagedHttps`] ([`ManagedClickHouse::start_https`]) the server also serves
//! HTTPS on a third loopback port with the given certificate, optionally requiring a
//! client certificate: how the tests hold the store's TLS to a real server.
//!
//! The ports are chosen once, by binding port 0, and kept for the life of the value:
//! [`ManagedClickHouse::stop`] and [`ManagedClickHouse::start_again`] restart the server on
//! the same ports and the same data, which is what fault tests need.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

mod config;

use self::config::{Ports, config_xml, users_xml};

/// How long [`ManagedClickHouse::start`] waits for the server to answer `/ping`.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a stop waits after SIGTERM before it sends SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
/// The same, when the value is dropped without [`ManagedClickHouse::shutdown`] (Drop
/// blocks the thread while it waits).
const DROP_GRACE: Duration = Duration::from_secs(5);

/// What [`ManagedClickHouse::start`] needs.
#[derive(Debug, Clone)]
pub struct ManagedOptions {
    /// The collector's state directory; the server lives in `<state_dir>/clickhouse/`.
    pub state_dir: PathBuf,
    /// The server binary. `None`: `clickhouse-server` on `PATH` (then in `/usr/sbin`,
    /// where Debian installs it, which is not on a normal user's `PATH`), then
    /// `clickhouse` (run as `clickhouse server`).
    pub binary: Option<PathBuf>,
}

/// HTTPS for a managed server: PEM files the server reads at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedHttps {
    /// The server's certificate (with `localhost` / `127.0.0.1` among its names for the
    /// client to verify it at [`ManagedClickHouse::https_url`]).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA certificates a client certificate must chain to: the server then requires one
    /// (`verificationMode` `strict`). `None`: no client certificate is asked.
    pub client_ca: Option<PathBuf>,
}

/// Why the managed server could not be started or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagedError {
    /// No server binary was found.
    #[error(
        "`clickhouse-server` not found on PATH: install the `clickhouse-server` package or set `clickhouse.url`"
    )]
    NotFound,
    /// The configured binary does not exist or is not executable.
    #[error(
        "`{0}` is not an executable file: fix `clickhouse.binary` or install the `clickhouse-server` package"
    )]
    BadBinary(PathBuf),
    /// A file or directory of the server could not be written or read.
    #[error(
        "cannot {what} `{path}`: {source} (check that the collector can write its state directory)"
    )]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No free loopback port could be found.
    #[error("cannot find a free port on 127.0.0.1: {0}")]
    NoPort(#[source] std::io::Error),
    /// The server process could not be started.
    #[error("cannot start `{binary}`: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server exited before it answered.
    #[error(
        "clickhouse-server exited during start-up ({status}); last lines of its logs (in `{log_dir}`):\n{tail}"
    )]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The directory with its logs.
        log_dir: PathBuf,
        /// The last lines of its logs.
        tail: String,
    },
    /// The server did not answer `/ping` in time.
    #[error(
        "clickhouse-server did not answer on {url} within {secs} s; last lines of its logs (in `{log_dir}`):\n{tail}"
    )]
    Timeout {
        /// Its URL.
        url: String,
        /// The deadline.
        secs: u64,
        /// The directory with its logs.
        log_dir: PathBuf,
        /// The last lines of its logs.
        tail: String,
    },
    /// [`ManagedClickHouse::start_again`] was called while the server runs.
    #[error("the managed clickhouse-server is already running (pid {0})")]
    AlreadyRunning(u32),
}

/// The binary and how to call it.
#[derive(Debug, Clone)]
struct Binary {
    path: PathBuf,
    /// `clickhouse server …` rather than `clickhouse-server …`.
    subcommand: bool,
}

/// A ClickHouse server run by the collector as a child process.
///
/// Stopped by [`ManagedClickHouse::shutdown`], or on drop (SIGTERM, then SIGKILL after a
/// grace period; drop blocks while it waits, so prefer `shutdown().await`).
pub struct ManagedClickHouse {
    binary: Binary,
    dir: PathBuf,
    ports: Ports,
    https: Option<ManagedHttps>,
    child: Option<Child>,
}

impl fmt::Debug for ManagedClickHouse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedClickHouse")
            .field("binary", &self.binary.path)
            .field("dir", &self.dir)
            .field("ports", &self.ports)
            .field("https", &self.https)
            .field("pid", &self.pid())
            .finish()
    }
}

impl ManagedClickHouse {
    /// Finds the binary, writes the configuration under `<state_dir>/clickhouse/`, starts
    /// the server on two free loopback ports and waits until it answers `/ping`.
    ///
    /// A server left running by a previous collector that died (recorded in
    /// `server.pid`, with this directory's configuration on its command line) is stopped
    /// first: it would hold the data directory's lock.
    pub async fn start(options: ManagedOptions) -> Result<ManagedClickHouse, ManagedError> {
        ManagedClickHouse::start_with(options, None).await
    }

    /// [`ManagedClickHouse::start`], with HTTPS on a third loopback port as `https` says
    /// (see [`ManagedClickHouse::https_url`]).
    pub async fn start_https(
        options: ManagedOptions,
        https: ManagedHttps,
    ) -> Result<ManagedClickHouse, ManagedError> {
        ManagedClickHouse::start_with(options, Some(https)).await
    }

    async fn start_with(
        options: ManagedOptions,
        https: Option<ManagedHttps>,
    ) -> Result<ManagedClickHouse, ManagedError> {
        let binary = find_binary(options.binary.as_deref())?;
        let dir = options.state_dir.join("clickhouse");
        for sub in ["data", "tmp", "user_files", "format_schemas", "logs"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| ManagedError::Io {
                what: "create directory",
                path,
                source,
            })?;
        }
        let mut server = ManagedClickHouse {
            binary,
            dir,
            ports: Ports {
                http: 0,
                tcp: 0,
                https: 0,
            },
            https,
            child: None,
        };
        server.stop_stale().await;
        // Ports are probed by binding port 0; another process may take one before the
        // server binds it, so a start that fails on a taken port is retried on new ones.
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.ports = free_ports()?;
            match server.launch().await {
                Ok(()) => break,
                Err(ManagedError::Exited { tail, .. })
                    if attempt < 3 && tail.contains("Address already in use") =>
                {
                    tracing::warn!(attempt, "managed clickhouse: port taken, retrying");
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(
            url = %server.url(),
            tcp_port = server.ports.tcp,
            https_port = server.https.is_some().then_some(server.ports.https),
            dir = %server.dir.display(),
            binary = %server.binary.path.display(),
            "managed clickhouse started"
        );
        Ok(server)
    }

    /// A store on database `database` of this server (created if missing), its schema
    /// migrated: where tests, benchmarks and the demo start.
    pub async fn migrated_store(&self, database: &str) -> Result<crate::Store, crate::StoreError> {
        let store = crate::Store::connect(&crate::ClickHouseConfig {
            url: self.url(),
            database: database.to_string(),
            user: None,
            password: None,
            tls: crate::ClickHouseTls::default(),
        })
        .await?;
        store.migrate().await?;
        Ok(store)
    }

    /// The HTTP URL: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// The HTTPS URL, `https://localhost:PORT`, when the server was started with
    /// [`ManagedClickHouse::start_https`].
    pub fn https_url(&self) -> Option<String> {
        self.https
            .as_ref()
            .map(|_| format!("https://localhost:{}", self.ports.https))
    }

    /// Changes the HTTPS material (another certificate, a client CA or none): it takes
    /// effect at the next [`ManagedClickHouse::start_again`], on the same port. For
    /// tests of what clients do when a server's certificate changes.
    pub fn set_https(&mut self, https: ManagedHttps) {
        self.https = Some(https);
    }

    /// The HTTP port.
    pub fn http_port(&self) -> u16 {
        self.ports.http
    }

    /// The native-protocol port (for `clickhouse-client --port`).
    pub fn tcp_port(&self) -> u16 {
        self.ports.tcp
    }

    /// The server's log file (level `warning`); errors also go to
    /// `clickhouse-server.err.log` beside it and early start-up output to `console.log`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("logs").join("clickhouse-server.log")
    }

    /// `<state_dir>/clickhouse`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Stops the server (SIGTERM, SIGKILL after [`STOP_GRACE`]) and keeps its
    /// configuration, ports and data for [`ManagedClickHouse::start_again`]. Stopping a
    /// stopped server does nothing.
    pub async fn stop(&mut self) -> Result<(), ManagedError> {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_GRACE).await;
            let _ = std::fs::remove_file(self.pid_file());
            tracing::info!(url = %self.url(), "managed clickhouse stopped");
        }
        Ok(())
    }

    /// Starts the server again after [`ManagedClickHouse::stop`], on the same ports and
    /// data, and waits until it answers.
    pub async fn start_again(&mut self) -> Result<(), ManagedError> {
        if let Some(pid) = self.pid() {
            return Err(ManagedError::AlreadyRunning(pid));
        }
        self.launch().await?;
        tracing::info!(url = %self.url(), "managed clickhouse restarted");
        Ok(())
    }

    /// Stops the server and consumes the value.
    pub async fn shutdown(mut self) -> Result<(), ManagedError> {
        self.stop().await
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("server.pid")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("config.xml")
    }

    /// Writes the configuration, spawns the server and waits for `/ping`.
    async fn launch(&mut self) -> Result<(), ManagedError> {
        let root = root_element(&self.binary).await;
        write_file(
            &self.config_path(),
            &config_xml(root, &self.dir, self.ports, self.https.as_ref()),
        )?;
        write_file(&self.dir.join("users.xml"), &users_xml(root))?;
        let console = self.dir.join("logs").join("console.log");
        let open_console = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&console)
                .map_err(|source| ManagedError::Io {
                    what: "open",
                    path: console.clone(),
                    source,
                })
        };
        let (stdout, stderr) = (open_console()?, open_console()?);
        let mut command = Command::new(&self.binary.path);
        if self.binary.subcommand {
            command.arg("server");
        }
        command
            .arg(format!("--config-file={}", self.config_path().display()))
            .current_dir(&self.dir)
            // Newer servers fork a watchdog parent unless told not to; we are the watchdog.
            .env("CLICKHOUSE_WATCHDOG_ENABLE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            // Its own process group: a Ctrl-C in the collector's terminal must not stop
            // the server before the collector has flushed its writes.
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().map_err(|source| ManagedError::Spawn {
            binary: self.binary.path.clone(),
            source,
        })?;
        if let Some(pid) = child.id() {
            write_file(&self.pid_file(), &format!("{pid}\n"))?;
        }
        self.child = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), ManagedError> {
        let deadline = Instant::now() + START_DEADLINE;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.http));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let _ = std::fs::remove_file(self.pid_file());
                return Err(ManagedError::Exited {
                    status,
                    log_dir: self.dir.join("logs"),
                    tail: self.log_tail(),
                });
            }
            if ping(addr).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if let Some(mut child) = self.child.take() {
                    terminate(&mut child, STOP_GRACE).await;
                }
                return Err(ManagedError::Timeout {
                    url: self.url(),
                    secs: START_DEADLINE.as_secs(),
                    log_dir: self.dir.join("logs"),
                    tail: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last lines of the error log and of the console output.
    fn log_tail(&self) -> String {
        let logs = self.dir.join("logs");
        let mut out = String::new();
        for name in ["clickhouse-server.err.log", "console.log"] {
            let tail = tail_lines(&logs.join(name), 15);
            if !tail.trim().is_empty() {
                out.push_str(&format!("--- {name}\n{tail}"));
            }
        }
        if out.is_empty() {
            out.push_str("(the logs are empty)\n");
        }
        out
    }

    /// Stops a server that a previous collector left running on this directory.
    async fn stop_stale(&self) {
        let Ok(text) = std::fs::read_to_string(self.pid_file()) else {
            return;
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let config = self.config_path();
        let ours = String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy());
        if !ours {
            return;
        }
        tracing::warn!(
            pid,
            "stopping a managed clickhouse-server left running by a previous collector"
        );
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && std::path::Path::new(&format!("/proc/{pid}")).exists() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = kill(pid, Signal::SIGKILL);
        let _ = std::fs::remove_file(self.pid_file());
    }
}

impl Drop for ManagedClickHouse {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + DROP_GRACE;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    let _ = std::fs::remove_file(self.pid_file());
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.start_kill();
        let _ = std::fs::remove_file(self.pid_file());
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL and wait.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(
            pid,
            "managed clickhouse did not stop on SIGTERM; killing it"
        );
    }
    let _ = child.kill().await;
}

/// `GET /ping` answers `Ok.`.
async fn ping(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        Some(text.starts_with("HTTP/1.") && text.contains(" 200 ") && text.ends_with("Ok.\n"))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn find_binary(configured: Option<&Path>) -> Result<Binary, ManagedError> {
    if let Some(path) = configured {
        if !is_executable(path) {
            return Err(ManagedError::BadBinary(path.to_path_buf()));
        }
        let single = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy() == "clickhouse");
        return Ok(Binary {
            path: path.to_path_buf(),
            subcommand: single,
        });
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/bin"] {
        let extra = PathBuf::from(extra);
        if !dirs.contains(&extra) {
            dirs.push(extra);
        }
    }
    for (name, subcommand) in [("clickhouse-server", false), ("clickhouse", true)] {
        if let Some(path) = dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p)) {
            return Ok(Binary { path, subcommand });
        }
    }
    Err(ManagedError::NotFound)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `clickhouse` for servers that know the tag (22.x and later print their version with
/// `--version`), `yandex` otherwise (18.16 knows only that one and has no `--version`).
async fn root_element(binary: &Binary) -> &'static str {
    let mut command = Command::new(&binary.path);
    if binary.subcommand {
        command.arg("server");
    }
    command
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(10), command.output()).await;
    let major = output
        .ok()
        .and_then(Result::ok)
        .filter(|o| o.status.success())
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let after = text.split("version ").nth(1)?.to_string();
            after.split('.').next()?.trim().parse::<u32>().ok()
        });
    match major {
        Some(m) if m >= 22 => "clickhouse",
        _ => "yandex",
    }
}

fn free_ports() -> Result<Ports, ManagedError> {
    // The listeners are held at once so that the ports differ.
    let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(ManagedError::NoPort);
    let (a, b, c) = (bind()?, bind()?, bind()?);
    let port = |l: &TcpListener| {
        l.local_addr()
            .map(|a| a.port())
            .map_err(ManagedError::NoPort)
    };
    Ok(Ports {
        http: port(&a)?,
        tcp: port(&b)?,
        https: port(&c)?,
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), ManagedError> {
    std::fs::write(path, text).map_err(|source| ManagedError::Io {
        what: "write",
        path: path.to_path_buf(),
        source,
    })
}

fn tail_lines(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(8192)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_binary_that_does_not_exist_says_so() {
        let err = find_binary(Some(Path::new("/nonexistent/clickhouse-server")))
            .expect_err("missing binary");
        assert!(err.to_string().contains("/nonexistent/clickhouse-server"));
    }

    /// The collector spawns the start future: it must be `Send` (compile-time check).
    #[allow(dead_code)]
    fn start_is_send() {
        fn send<T: Send>(_: T) {}
        send(ManagedClickHouse::start(ManagedOptions {
            state_dir: PathBuf::new(),
            binary: None,
        }));
    }

    #[test]
    fn free_ports_differ() {
        let ports = free_ports().expect("ports");
        assert_ne!(ports.http, ports.tcp);
        assert_ne!(ports.http, ports.https);
        assert_ne!(ports.tcp, ports.https);
    }
}
