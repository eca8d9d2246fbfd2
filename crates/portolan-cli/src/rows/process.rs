//! A process that owns sockets or flows, as it appears inside socket and flow rows.

use portolan_proto::v1 as pb;
use serde::Serialize;

/// A process (JSON: an element of a socket's `processes`, or a flow's `process`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessRow {
    /// Process id.
    pub pid: u32,
    /// `comm` (at most 15 bytes).
    pub name: String,
    /// Resolved `/proc/<pid>/exe`; empty when unreadable.
    pub executable: String,
    /// Command line, arguments joined by spaces.
    pub command_line: String,
    /// Real user id.
    pub uid: u32,
    /// User name; empty when unknown.
    pub user: String,
    /// systemd unit from the cgroup path (`nginx.service`); empty when none.
    pub systemd_unit: String,
    /// Container id from the cgroup path; empty when none.
    pub container_id: String,
    /// The cgroup path.
    pub cgroup: String,
}

impl From<&pb::Process> for ProcessRow {
    fn from(p: &pb::Process) -> Self {
        ProcessRow {
            pid: p.pid,
            name: p.name.clone(),
            executable: p.executable.clone(),
            command_line: p.command_line.clone(),
            uid: p.uid,
            user: p.user.clone(),
            systemd_unit: p.systemd_unit.clone(),
            container_id: p.container_id.clone(),
            cgroup: p.cgroup.clone(),
        }
    }
}

impl ProcessRow {
    /// `pid/name`, as in the PROCESS column.
    pub fn label(&self) -> String {
        format!("{}/{}", self.pid, self.display_name())
    }

    /// The name, untruncated: the kernel cuts `comm` at 15 bytes, so when the
    /// executable's file name extends it, the file name is shown
    /// (`clickhouse-server`, not `clickhouse-serv`).
    pub fn display_name(&self) -> &str {
        let base = self.executable.rsplit('/').next().unwrap_or("");
        if self.name.len() >= 15 && base.starts_with(&self.name) {
            base
        } else {
            &self.name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, executable: &str) -> ProcessRow {
        ProcessRow::from(&pb::Process {
            pid: 7,
            name: name.into(),
            executable: executable.into(),
            ..pb::Process::default()
        })
    }

    #[test]
    fn a_name_cut_by_the_kernel_is_completed_from_the_executable() {
        let p = row("clickhouse-serv", "/usr/bin/clickhouse-server");
        assert_eq!(p.label(), "7/clickhouse-server");
        // Short names, and names the executable does not extend, stay.
        assert_eq!(row("sshd", "/usr/sbin/sshd").label(), "7/sshd");
        assert_eq!(
            row("postgres: walwr", "/usr/lib/postgresql/15/bin/postgres").label(),
            "7/postgres: walwr"
        );
    }
}
