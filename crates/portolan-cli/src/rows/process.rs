//! A process that owns sockets or flows, as it appears inside socket and flow rows: the
//! domain's [`Process`], whose field names are the JSON shape (an element of a socket's
//! `processes`, or a flow's `process`).

use portolan_core::Process;
use portolan_proto::v1 as pb;

/// The process an answer names, field for field. Not validated again: the collector
/// validated it when the agent sent it.
pub fn process_row(p: &pb::Process) -> Process {
    Process {
        pid: p.pid,
        name: p.name.clone(),
        executable: p.executable.clone(),
        command_line: p.command_line.clone(),
        uid: p.uid,
        user: p.user.clone(),
        systemd_unit: p.systemd_unit.clone(),
        container_id: p.container_id.clone(),
        cgroup: p.cgroup.clone(),
        pod_uid: p.pod_uid.clone(),
        pod_name: p.pod_name.clone(),
        pod_namespace: p.pod_namespace.clone(),
    }
}

/// `pid/name` with the untruncated name, as in the PROCESS column.
pub fn label(p: &Process) -> String {
    format!("{}/{}", p.pid, p.display_name())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, executable: &str) -> Process {
        process_row(&pb::Process {
            pid: 7,
            name: name.into(),
            executable: executable.into(),
            ..pb::Process::default()
        })
    }

    #[test]
    fn a_name_cut_by_the_kernel_is_completed_from_the_executable() {
        let p = row("clickhouse-serv", "/usr/bin/clickhouse-server");
        assert_eq!(label(&p), "7/clickhouse-server");
        // Short names, and names the executable does not extend, stay.
        assert_eq!(label(&row("sshd", "/usr/sbin/sshd")), "7/sshd");
        assert_eq!(
            label(&row(
                "postgres: walwr",
                "/usr/lib/postgresql/15/bin/postgres"
            )),
            "7/postgres: walwr"
        );
    }
}
