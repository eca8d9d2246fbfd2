//! Small helpers: running commands, free ports, temporary state directories.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result, io_error};

/// Runs `command` to completion; its stdout on success, an error naming the command and
/// carrying its stderr otherwise.
pub(crate) fn run(command: &mut Command) -> Result<String> {
    let line = describe(command);
    let output = command.output().map_err(|source| Error::Spawn {
        command: line.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip` with `args`.
pub(crate) fn ip<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    run(Command::new("ip").args(args))
}

/// The command line of `command`, for messages.
pub(crate) fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// True when a process with this pid exists.
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it). Racy by nature:
/// prefer binding port 0 and asking the socket, and use this only where a port must be
/// chosen before the process that binds it starts.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_error("cannot bind 127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(io_error("cannot read the address of a bound socket"))?
        .port();
    Ok(port)
}

/// A temporary directory for one test's state (an agent's spool, a collector's data).
///
/// Removed on drop, except when the thread is panicking (the test failed): then it is
/// kept and its path printed, so the state can be inspected.
#[derive(Debug)]
pub struct TempState {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TempState {
    /// Creates `$TMPDIR/portolan-<label>-XXXXXX`.
    pub fn new(label: &str) -> Result<TempState> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("portolan-{label}-"))
            .tempdir()
            .map_err(io_error(format!(
                "cannot create a temporary directory for `{label}`"
            )))?;
        let path = dir.path().to_path_buf();
        Ok(TempState {
            dir: Some(dir),
            path,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory, created as a directory.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        std::fs::create_dir_all(&path)
            .map_err(io_error(format!("cannot create `{}`", path.display())))?;
        Ok(path)
    }

    /// Keeps the directory after drop and returns its path.
    pub fn keep(mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.path.clone()
    }
}

impl Drop for TempState {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            let path = dir.keep();
            eprintln!("test failed: state kept in `{}`", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_joins_program_and_args() {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", "x", "ss"]);
        assert_eq!(describe(&command), "ip netns exec x ss");
    }
}
