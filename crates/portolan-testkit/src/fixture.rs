//! Driving `portolan-socket-fixture`: real listeners and connections, held in a host of
//! a lab (or in the root namespace), opened and closed when a test says so.
//!
//! # Finding the binary
//!
//! Integration tests of `portolan-testkit` itself use
//! `env!("CARGO_BIN_EXE_portolan-socket-fixture")`; cargo provides that only to the
//! package that owns the binary, and never builds the binaries of a dependency. Everyone
//! else calls [`fixture_binary`]. It looks in the target directory and profile of the
//! running test executable (`target/debug/portolan-socket-fixture`, where
//! `cargo test --workspace` or `cargo build -p portolan-testkit --bins` puts it) and uses
//! the binary found there if it is newer than its source; otherwise it runs
//! `cargo build -p portolan-testkit --bin portolan-socket-fixture` for that target
//! directory and profile first. So no build step has to run before the tests, and the
//! fixture is never missing or stale. The first on-demand build in a fresh target
//! directory may compile some dependencies again (cargo resolves features for the
//! testkit alone); later runs find the binary. Set `PORTOLAN_SOCKET_FIXTURE` to a path
//! to skip all this (a test binary copied elsewhere; a packaged test run).

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use portolan_core::Protocol;

use crate::error::{Error, Result};
use crate::netns::NetnsHost;
use crate::util::describe;

/// How long an answer may take: the fixture's own connect timeout is 5 s.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// The binary's name.
pub const FIXTURE_BIN: &str = "portolan-socket-fixture";
/// Environment variable naming the fixture binary, to skip building it.
pub const FIXTURE_ENV: &str = "PORTOLAN_SOCKET_FIXTURE";

/// A socket held by a fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FixtureId(pub u64);

impl fmt::Display for FixtureId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A running `portolan-socket-fixture`: holds sockets in one namespace until told to
/// close them or until dropped (the process is killed, and its sockets close with it).
///
/// Methods block until the fixture answers (at most a few seconds); they take `&self`,
/// so one fixture can be shared between threads.
#[derive(Debug)]
pub struct SocketFixture {
    label: String,
    pid: u32,
    io: Mutex<Io>,
}

#[derive(Debug)]
struct Io {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<std::io::Result<String>>,
}

impl SocketFixture {
    /// Starts the fixture `binary` in `host`'s namespace, or in this process's own
    /// namespace when `host` is `None`. Its stderr is inherited.
    pub fn spawn(host: Option<&NetnsHost>, binary: &Path) -> Result<SocketFixture> {
        let mut command = match host {
            Some(host) => host.command(binary),
            None => Command::new(binary),
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().map_err(|source| Error::Spawn {
            command: describe(&command),
            source,
        })?;
        let (stdin, stdout) = match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => (stdin, stdout),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Fixture {
                    fixture: describe(&command),
                    message: "started without pipes".to_string(),
                });
            }
        };
        // A reader thread, so that a fixture that hangs or dies fails a test with a
        // message instead of blocking it.
        let (sender, answers) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let end = line.is_err();
                if sender.send(line).is_err() || end {
                    break;
                }
            }
        });
        let mut fixture = SocketFixture {
            label: match host {
                Some(host) => format!("in `{}`", host.netns),
                None => "in the root namespace".to_string(),
            },
            pid: child.id(),
            io: Mutex::new(Io {
                child,
                stdin,
                answers,
            }),
        };
        let pid = fixture.request("pid")?;
        fixture.pid = pid
            .parse()
            .map_err(|_| fixture.error(format!("answered `{pid}` to `pid`")))?;
        fixture.label = format!("{} (pid {})", fixture.label, fixture.pid);
        Ok(fixture)
    }

    /// The fixture's pid: the owner `ss` and the agent see for its sockets.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Binds `addr` and, for TCP, listens (backlog 1024) and accepts every connection,
    /// holding them open. Port 0 picks a free port: the answer is the bound address.
    pub fn listen(&self, protocol: Protocol, addr: SocketAddr) -> Result<(FixtureId, SocketAddr)> {
        self.opened(&format!("listen {protocol} {addr}"))
    }

    /// [`SocketFixture::listen`] for TCP with SO_REUSEPORT, so that several processes can
    /// listen on the same port.
    pub fn listen_reuseport(&self, addr: SocketAddr) -> Result<(FixtureId, SocketAddr)> {
        self.opened(&format!("listen tcp {addr} reuseport"))
    }

    /// Connects to `addr` (TCP: fails after 5 s; UDP: binds the wildcard address and
    /// connects) and holds the connection. The answer is the local address.
    pub fn connect(&self, protocol: Protocol, addr: SocketAddr) -> Result<(FixtureId, SocketAddr)> {
        self.opened(&format!("connect {protocol} {addr}"))
    }

    /// The connections TCP listener `listener` accepted and still holds:
    /// (id, local address, peer address).
    pub fn accepted(
        &self,
        listener: FixtureId,
    ) -> Result<Vec<(FixtureId, SocketAddr, SocketAddr)>> {
        let answer = self.request(&format!("accepted {listener}"))?;
        answer
            .split_whitespace()
            .map(|entry| {
                let mut parts = entry.split(',');
                let id = parts.next().and_then(|p| p.parse().ok());
                let local = parts.next().and_then(|p| p.parse().ok());
                let peer = parts.next().and_then(|p| p.parse().ok());
                match (id, local, peer) {
                    (Some(id), Some(local), Some(peer)) => Ok((FixtureId(id), local, peer)),
                    _ => Err(self.error(format!("answered `{entry}` to `accepted`"))),
                }
            })
            .collect()
    }

    /// Shuts down the sending half of TCP connection `id` (sends FIN) and keeps the
    /// socket: the local end moves to FIN_WAIT, the peer's to CLOSE_WAIT.
    pub fn shutdown(&self, id: FixtureId) -> Result<()> {
        self.request(&format!("shutdown {id}")).map(drop)
    }

    /// Closes socket `id`: a listener (its accepted connections stay open), a
    /// connection, an accepted connection or a UDP socket.
    pub fn close(&self, id: FixtureId) -> Result<()> {
        self.request(&format!("close {id}")).map(drop)
    }

    fn opened(&self, command: &str) -> Result<(FixtureId, SocketAddr)> {
        let answer = self.request(command)?;
        let parsed = answer.split_once(' ').and_then(|(id, local)| {
            Some((FixtureId(id.parse().ok()?), local.trim().parse().ok()?))
        });
        parsed.ok_or_else(|| self.error(format!("answered `{answer}` to `{command}`")))
    }

    /// Sends one command and returns what follows `ok `, or the fixture's `err` message.
    fn request(&self, command: &str) -> Result<String> {
        let mut io = self.io.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(io.stdin, "{command}")
            .and_then(|()| io.stdin.flush())
            .map_err(|e| self.error(format!("cannot send `{command}`: {e} (did it exit?)")))?;
        let line = match io.answers.recv_timeout(ANSWER_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(self.error(format!("cannot read its answer: {e}"))),
            Err(RecvTimeoutError::Timeout) => {
                return Err(self.error(format!(
                    "no answer to `{command}` within {ANSWER_TIMEOUT:?}"
                )));
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = io.child.try_wait().ok().flatten();
                return Err(self.error(format!(
                    "exited ({}) before answering `{command}`",
                    status.map_or_else(|| "still running".to_string(), |s| s.to_string())
                )));
            }
        };
        if line == "ok" {
            Ok(String::new())
        } else if let Some(answer) = line.strip_prefix("ok ") {
            Ok(answer.trim().to_string())
        } else if let Some(message) = line.strip_prefix("err ") {
            Err(self.error(format!("`{command}`: {message}")))
        } else {
            Err(self.error(format!("answered `{line}` to `{command}`")))
        }
    }

    fn error(&self, message: String) -> Error {
        Error::Fixture {
            fixture: self.label.clone(),
            message,
        }
    }
}

impl Drop for SocketFixture {
    fn drop(&mut self) {
        let io = self.io.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = io.child.kill();
        let _ = io.child.wait();
    }
}

/// The path of `portolan-socket-fixture` for tests outside this crate: the one next to
/// the test executable when it is up to date, else built by cargo first (see the
/// [module docs](self)); cached for the process. `PORTOLAN_SOCKET_FIXTURE` overrides it.
pub fn fixture_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| locate_or_build().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::FixtureBinary)
}

fn locate_or_build() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(FIXTURE_ENV) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "`{FIXTURE_ENV}` names `{}`, which is not a file",
                path.display()
            ))
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the test executable: {e}"))?;
    let layout = TargetLayout::of(&exe).ok_or_else(|| {
        format!(
            "`{}` is not in a cargo target directory; set `{FIXTURE_ENV}` to the fixture's path",
            exe.display()
        )
    })?;
    let binary = layout.binary(FIXTURE_BIN);
    // The binary compiles this one file (and tokio): newer than the file is up to date.
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/socket_fixture.rs");
    let modified = |path: &Path| path.metadata().and_then(|m| m.modified()).ok();
    let fresh = match (modified(&binary), modified(&source)) {
        (Some(built), Some(written)) => built >= written,
        // Sources elsewhere (tests copied to another machine): use what was built.
        (Some(_), None) => true,
        (None, _) => false,
    };
    if fresh {
        return Ok(binary);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--quiet",
            "--package",
            "portolan-testkit",
            "--bin",
            FIXTURE_BIN,
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .args(["--profile", &layout.profile]);
    if let Some(triple) = &layout.triple {
        command.args(["--target", triple]);
    }
    command.env("CARGO_TARGET_DIR", &layout.target_dir);
    match command.output() {
        Ok(output) if output.status.success() => Ok(binary),
        Ok(output) => Err(format!(
            "`{}` failed ({}): {}",
            describe(&command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        // No cargo (a copied test binary): use what is there.
        Err(_) if binary.is_file() => Ok(binary),
        Err(e) => Err(format!(
            "cannot run `{}`: {e}; build it with `cargo build -p portolan-testkit --bins` or set `{FIXTURE_ENV}`",
            describe(&command)
        )),
    }
}

/// Where a test executable sits: `<target>/[<triple>/]<profile dir>/deps/<exe>`.
#[derive(Debug, PartialEq, Eq)]
struct TargetLayout {
    target_dir: PathBuf,
    triple: Option<String>,
    profile_dir: PathBuf,
    /// The cargo profile for `--profile` (`dev` builds into `debug`).
    profile: String,
}

impl TargetLayout {
    /// Recognises the layout from the executable's path: the target directory is the
    /// nearest ancestor holding `CACHEDIR.TAG`.
    fn of(exe: &Path) -> Option<TargetLayout> {
        let target_dir = exe
            .ancestors()
            .skip(1)
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())?;
        TargetLayout::from_parts(target_dir, exe)
    }

    fn from_parts(target_dir: &Path, exe: &Path) -> Option<TargetLayout> {
        let inner: Vec<String> = exe
            .strip_prefix(target_dir)
            .ok()?
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        // [profile, deps|examples, exe] or [triple, profile, deps|examples, exe]; a
        // binary directly in the profile directory: [profile, exe].
        let (triple, profile_dir) = match inner.as_slice() {
            [profile, _] | [profile, _, _] => (None, profile.clone()),
            [triple, profile, _, _] => (Some(triple.clone()), profile.clone()),
            _ => return None,
        };
        let profile = match profile_dir.as_str() {
            "debug" => "dev".to_string(),
            other => other.to_string(),
        };
        let mut dir = target_dir.to_path_buf();
        if let Some(triple) = &triple {
            dir.push(triple);
        }
        dir.push(&profile_dir);
        Some(TargetLayout {
            target_dir: target_dir.to_path_buf(),
            triple,
            profile_dir: dir,
            profile,
        })
    }

    fn binary(&self, name: &str) -> PathBuf {
        self.profile_dir.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_of_a_test_executable() {
        let layout = TargetLayout::from_parts(
            Path::new("/w/target"),
            Path::new("/w/target/debug/deps/e2e-0123abcd"),
        )
        .expect("recognised");
        assert_eq!(
            layout,
            TargetLayout {
                target_dir: "/w/target".into(),
                triple: None,
                profile_dir: "/w/target/debug".into(),
                profile: "dev".into(),
            }
        );
        assert_eq!(
            layout.binary(FIXTURE_BIN),
            Path::new("/w/target/debug/portolan-socket-fixture")
        );
    }

    #[test]
    fn layout_with_a_target_triple_and_a_custom_profile() {
        let layout = TargetLayout::from_parts(
            Path::new("/t"),
            Path::new("/t/x86_64-unknown-linux-gnu/release/deps/bench-1"),
        )
        .expect("recognised");
        assert_eq!(layout.triple.as_deref(), Some("x86_64-unknown-linux-gnu"));
        assert_eq!(layout.profile, "release");
        assert_eq!(
            layout.binary(FIXTURE_BIN),
            Path::new("/t/x86_64-unknown-linux-gnu/release/portolan-socket-fixture")
        );
    }

    #[test]
    fn paths_outside_a_target_dir_are_not_recognised() {
        assert_eq!(
            TargetLayout::from_parts(Path::new("/t"), Path::new("/t/a/b/c/d/e")),
            None
        );
    }
}
