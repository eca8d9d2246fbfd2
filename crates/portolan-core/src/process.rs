//! Processes that own sockets.

use serde::Serialize;

/// A process as read from `/proc/<pid>`. Fields that could not be read are empty.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Process {
    /// Process id.
    pub pid: u32,
    /// Short name (`comm`).
    pub name: String,
    /// Resolved executable path; empty when unreadable.
    pub executable: String,
    /// Command line, arguments joined by spaces.
    pub command_line: String,
    /// Real uid.
    pub uid: u32,
    /// User name for `uid`; empty when unknown.
    pub user: String,
    /// systemd unit from the cgroup path (`nginx.service`); empty when none.
    pub systemd_unit: String,
    /// Container id from the cgroup path (docker, containerd, CRI-O); empty when none.
    pub container_id: String,
    /// Raw cgroup path (v2 unified hierarchy, or the first v1 line).
    pub cgroup: String,
}

impl Process {
    /// The name, untruncated: the kernel cuts `comm` at 15 bytes, so when the
    /// executable's file name extends it, the file name is shown (`clickhouse-server`,
    /// not `clickhouse-serv`).
    pub fn display_name(&self) -> &str {
        let base = self.executable.rsplit('/').next().unwrap_or("");
        if self.name.len() >= 15 && base.starts_with(&self.name) {
            base
        } else {
            &self.name
        }
    }
}

/// Extracts the systemd unit and container id from a cgroup path.
///
/// Recognises `…/nginx.service`, `…/docker-<64 hex>.scope`, `…/docker/<64 hex>`,
/// `…/cri-containerd-<64 hex>.scope`, `…/crio-<64 hex>.scope`, `…/libpod-<64 hex>.scope`
/// and kubepods paths ending in a 64-hex id. Returns `(unit, container_id)`, each empty
/// when absent.
pub fn parse_cgroup(path: &str) -> (String, String) {
    let mut unit = String::new();
    let mut container = String::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let stem = segment.strip_suffix(".scope").unwrap_or(segment);
        for prefix in [
            "docker-",
            "cri-containerd-",
            "crio-",
            "libpod-",
            "containerd-",
        ] {
            if let Some(id) = stem.strip_prefix(prefix)
                && is_container_id(id)
            {
                container = id.to_string();
            }
        }
        if is_container_id(stem) {
            container = stem.to_string();
        }
        if segment.ends_with(".service") {
            unit = segment.to_string();
        }
    }
    (unit, container)
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_cut_by_the_kernel_is_completed_from_the_executable() {
        let p = |name: &str, executable: &str| Process {
            name: name.into(),
            executable: executable.into(),
            ..Process::default()
        };
        assert_eq!(
            p("clickhouse-serv", "/usr/bin/clickhouse-server").display_name(),
            "clickhouse-server"
        );
        assert_eq!(
            p("postgres", "/usr/bin/postgres-15").display_name(),
            "postgres"
        );
        assert_eq!(p("kworker/0:1-eve", "").display_name(), "kworker/0:1-eve");
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn systemd_service() {
        assert_eq!(
            parse_cgroup("/system.slice/nginx.service"),
            ("nginx.service".into(), String::new())
        );
    }

    #[test]
    fn docker_scope() {
        let path = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(parse_cgroup(&path), (String::new(), ID.into()));
    }

    #[test]
    fn kubepods_containerd() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(parse_cgroup(&path).1, ID);
    }

    #[test]
    fn cgroup_v1_docker() {
        assert_eq!(parse_cgroup(&format!("/docker/{ID}")).1, ID);
    }

    #[test]
    fn user_session_has_neither() {
        assert_eq!(
            parse_cgroup("/user.slice/user-1000.slice/session-3.scope"),
            (String::new(), String::new())
        );
    }
}
