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
    /// Kubernetes pod UID from the cgroup path (`kubepods…pod<uid>`); empty outside a pod.
    pub pod_uid: String,
    /// Pod name, when the agent could learn it (the kubelet's pod directory); empty when
    /// unknown.
    pub pod_name: String,
    /// Pod namespace (Kubernetes namespace, not network namespace), when the agent could
    /// learn it; empty when unknown.
    pub pod_namespace: String,
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

/// Extracts the Kubernetes pod UID from a cgroup path, with either cgroup driver:
///
/// - systemd: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/…`,
///   where the UID's dashes are written as underscores;
/// - cgroupfs: `/kubepods/burstable/pod<uid>/…` or `/kubepods/pod<uid>/…` (guaranteed QoS).
///
/// Returns the UID with dashes (`1d2c3b4a-…`), or an empty string outside a pod. Only
/// segments below a `kubepods` segment count, so a unit named `pod….slice` elsewhere is
/// not mistaken for a pod.
pub fn parse_pod_uid(path: &str) -> String {
    let mut in_kubepods = false;
    let mut uid = String::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        if segment == "kubepods"
            || segment.starts_with("kubepods.")
            || segment.starts_with("kubepods-")
        {
            in_kubepods = true;
        }
        if !in_kubepods {
            continue;
        }
        let stem = segment.strip_suffix(".slice").unwrap_or(segment);
        // cgroupfs: `pod<uid>`; systemd: `kubepods[-<qos>]-pod<uid>`.
        let raw = stem
            .strip_prefix("pod")
            .or_else(|| stem.rfind("-pod").and_then(|i| stem.get(i + 4..)));
        if let Some(raw) = raw
            && is_pod_uid(raw)
        {
            uid = raw.replace('_', "-");
        }
    }
    uid
}

/// A pod UID as cgroup paths carry it: a UUID (dashes, or underscores under systemd), or
/// the 32-hex hash the kubelet gives static pods.
fn is_pod_uid(s: &str) -> bool {
    let hex = s.bytes().filter(u8::is_ascii_hexdigit).count();
    let separators = s.bytes().filter(|b| *b == b'-' || *b == b'_').count();
    hex == 32 && (separators == 0 || separators == 4) && hex + separators == s.len()
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

    const POD: &str = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d";

    #[test]
    fn pod_uid_with_the_systemd_driver() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            POD.replace('-', "_")
        );
        assert_eq!(parse_pod_uid(&path), POD);
        assert_eq!(parse_cgroup(&path).1, ID);
        let guaranteed = format!(
            "/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope",
            POD.replace('-', "_")
        );
        assert_eq!(parse_pod_uid(&guaranteed), POD);
        assert_eq!(parse_cgroup(&guaranteed).1, ID);
    }

    #[test]
    fn pod_uid_with_the_cgroupfs_driver() {
        assert_eq!(
            parse_pod_uid(&format!("/kubepods/besteffort/pod{POD}/{ID}")),
            POD
        );
        assert_eq!(parse_pod_uid(&format!("/kubepods/pod{POD}/{ID}")), POD);
        assert_eq!(parse_cgroup(&format!("/kubepods/pod{POD}/{ID}")).1, ID);
        // A static pod's UID is a 32-hex hash.
        let hash = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parse_pod_uid(&format!("/kubepods/burstable/pod{hash}/{ID}")),
            hash
        );
    }

    #[test]
    fn no_pod_outside_kubepods() {
        assert_eq!(parse_pod_uid(&format!("/system.slice/pod{POD}.slice")), "");
        assert_eq!(
            parse_pod_uid(&format!("/system.slice/docker-{ID}.scope")),
            ""
        );
        assert_eq!(
            parse_pod_uid("/kubepods.slice/kubepods-burstable.slice"),
            ""
        );
        assert_eq!(parse_pod_uid("/kubepods/podnot-a-uid/x"), "");
        assert_eq!(parse_pod_uid(""), "");
    }

    proptest::proptest! {
        #[test]
        fn pod_uid_survives_both_drivers(bytes in proptest::array::uniform16(proptest::prelude::any::<u8>()), qos in 0usize..3) {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let uid = format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]);
            let class = ["", "burstable", "besteffort"][qos];
            let systemd = if class.is_empty() {
                format!("/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope", uid.replace('-', "_"))
            } else {
                format!("/kubepods.slice/kubepods-{class}.slice/kubepods-{class}-pod{}.slice/cri-containerd-{ID}.scope", uid.replace('-', "_"))
            };
            let cgroupfs = if class.is_empty() {
                format!("/kubepods/pod{uid}/{ID}")
            } else {
                format!("/kubepods/{class}/pod{uid}/{ID}")
            };
            proptest::prop_assert_eq!(parse_pod_uid(&systemd), uid.clone());
            proptest::prop_assert_eq!(parse_pod_uid(&cgroupfs), uid);
            proptest::prop_assert_eq!(parse_cgroup(&systemd).1, ID);
            proptest::prop_assert_eq!(parse_cgroup(&cgroupfs).1, ID);
        }

        #[test]
        fn parsing_never_panics(path in ".{0,200}") {
            let _ = parse_pod_uid(&path);
            let _ = parse_cgroup(&path);
        }
    }

    #[test]
    fn user_session_has_neither() {
        assert_eq!(
            parse_cgroup("/user.slice/user-1000.slice/session-3.scope"),
            (String::new(), String::new())
        );
    }
}
