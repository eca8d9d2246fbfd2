//! Pod names and namespaces, learnt without API rights from the kubelet's pod log
//! directories: `/var/log/pods/<namespace>_<name>_<uid>/`, one per pod on the node.
//! Kubernetes names and namespaces are DNS labels and subdomains, which never hold `_`,
//! so the three parts split unambiguously.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use portolan_core::Process;

/// Pod UID → (namespace, name).
#[derive(Debug, Default)]
pub(crate) struct PodNames {
    by_uid: HashMap<String, (String, String)>,
}

impl PodNames {
    /// Reads `dir`; an unreadable or missing directory (not a Kubernetes node, or not
    /// mounted into the agent's container) knows no pod.
    pub(crate) fn read(dir: &Path) -> PodNames {
        let Ok(entries) = fs::read_dir(dir) else {
            return PodNames::default();
        };
        let by_uid = entries
            .flatten()
            .filter_map(|e| parse_pod_dir(&e.file_name().to_string_lossy()))
            .map(|(namespace, name, uid)| (uid, (namespace, name)))
            .collect();
        PodNames { by_uid }
    }

    /// Fills the pod name and namespace of a process in a known pod.
    pub(crate) fn fill(&self, process: &mut Process) {
        if let Some((namespace, name)) = self.by_uid.get(&process.pod_uid) {
            process.pod_namespace.clone_from(namespace);
            process.pod_name.clone_from(name);
        }
    }
}

/// `<namespace>_<name>_<uid>` → (namespace, name, uid).
pub(crate) fn parse_pod_dir(entry: &str) -> Option<(String, String, String)> {
    let mut parts = entry.split('_');
    let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || [namespace, name, uid].iter().any(|p| p.is_empty()) {
        return None;
    }
    let valid = |s: &str| {
        s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    (valid(namespace) && valid(name) && valid(uid))
        .then(|| (namespace.to_string(), name.to_string(), uid.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_log_directories() {
        assert_eq!(
            parse_pod_dir(
                "kube-system_coredns-5d78c9869d-abcde_1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
            ),
            Some((
                "kube-system".into(),
                "coredns-5d78c9869d-abcde".into(),
                "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d".into()
            ))
        );
        assert_eq!(parse_pod_dir("default_web-0"), None);
        assert_eq!(parse_pod_dir("a_b_c_d"), None);
        assert_eq!(parse_pod_dir("default__uid"), None);
        assert_eq!(parse_pod_dir("Default_web_uid"), None);
    }

    #[test]
    fn a_process_in_a_known_pod_gets_its_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(
            dir.path()
                .join("shop_web-7d4b9c-x2x9q_0a1b2c3d-0000-4000-8000-000000000001"),
        )
        .expect("mkdir");
        let pods = PodNames::read(dir.path());
        let mut p = Process {
            pod_uid: "0a1b2c3d-0000-4000-8000-000000000001".into(),
            ..Process::default()
        };
        pods.fill(&mut p);
        assert_eq!(
            (p.pod_namespace.as_str(), p.pod_name.as_str()),
            ("shop", "web-7d4b9c-x2x9q")
        );
        let mut outside = Process::default();
        pods.fill(&mut outside);
        assert_eq!(outside.pod_name, "");
        assert!(
            PodNames::read(&dir.path().join("missing"))
                .by_uid
                .is_empty()
        );
    }
}
