//! The agent's configuration: `portolan-agent.toml`, `PORTOLAN_*` variables, flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portolan_metrics::MetricsSection;
use portolan_tls::TlsFiles;
use serde::{Deserialize, Serialize};

/// Everything the agent can be configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Configuration format version; 1.
    pub version: u32,
    /// Stable host identity; must equal the host_id in the agent's certificate. Empty:
    /// the content of `/etc/machine-id`.
    pub host_id: String,
    /// Host name reported to the collector; empty: the kernel's hostname.
    pub hostname: String,
    /// How often the sockets are scanned.
    #[serde(with = "portolan_config::duration")]
    pub scan_interval: Duration,
    /// Where procfs is mounted (a container may mount the host's at `/host/proc`).
    pub proc_root: PathBuf,
    /// Attribute sockets to processes (needs CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE to
    /// see other users' processes).
    pub attribute_processes: bool,
    /// Which network namespaces to inventory: `own` (the agent's) or `all` (every
    /// container, pod and `ip netns` namespace a process under `proc_root` lives in;
    /// needs the host's PID namespace, and CAP_SYS_ADMIN to scope their wildcard binds).
    pub namespaces: crate::scan::Namespaces,
    /// The kubelet's pod log directories, where pod names and namespaces are learnt.
    pub pod_logs_dir: PathBuf,
    /// Labels of this host (`env = "prod"`, `role = "db"`).
    pub labels: BTreeMap<String, String>,
    /// Where to send inventories.
    pub collector: CollectorSection,
    /// The agent's certificate.
    pub tls: TlsFiles,
    /// Obtaining and renewing that certificate with a bootstrap token.
    pub enrollment: EnrollmentSection,
    /// Where changes wait for the collector.
    pub spool: SpoolSection,
    /// The agent's own budget of CPU and memory.
    pub footprint: FootprintSection,
    /// Prometheus metrics.
    pub metrics: MetricsSection,
}

/// `[enrollment]`: a bootstrap token (`portolan token create`) with which the agent obtains
/// its certificate by itself: it makes its key on the host (`tls.key`), enrols for its
/// host_id, writes the certificate (`tls.cert`) and renews it before it expires. Without a
/// token, `tls.cert` and `tls.key` are issued by hand (`portolan pki issue-agent`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollmentSection {
    /// The token itself (prefer `token_file`: a file keeps it out of the process list
    /// and the environment). Never printed.
    pub token: String,
    /// A file holding the token (a Kubernetes Secret, a file Ansible wrote); read at each
    /// enrollment, so a new token is picked up without a restart.
    pub token_file: PathBuf,
}

/// `[spool]`: the on-disk queue of changes the collector has not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Directory of `spool.log` (the agent needs it writable; it survives restarts).
    pub dir: PathBuf,
    /// Largest size of the spool file. When changes outgrow it while the collector is
    /// unreachable, they are folded into the newest inventory and the gap is recorded.
    #[serde(with = "portolan_config::bytes")]
    pub max_size: u64,
}

/// `[footprint]`: past these, the agent scans less often and, at the last step, stops
/// attributing new sockets to processes, until it is back under them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FootprintSection {
    /// CPU the agent may use, in percent of one core, averaged over its recent scans.
    pub max_cpu_percent: f64,
    /// Resident memory the agent may use.
    #[serde(with = "portolan_config::bytes")]
    pub max_memory: u64,
}

impl Default for SpoolSection {
    fn default() -> Self {
        SpoolSection {
            dir: PathBuf::from("/var/lib/portolan-agent"),
            max_size: 64 << 20,
        }
    }
}

impl Default for FootprintSection {
    fn default() -> Self {
        FootprintSection {
            max_cpu_percent: 5.0,
            max_memory: 128 << 20,
        }
    }
}

/// `[collector]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorSection {
    /// `https://host:port` of the collector (or its load balancer).
    pub endpoint: String,
    /// Name to verify in the collector's certificate; empty: the endpoint's host.
    pub server_name: String,
    /// How long to wait for the collector to acknowledge a snapshot or delta.
    #[serde(with = "portolan_config::duration")]
    pub ack_timeout: Duration,
    /// Longest wait between reconnection attempts (backoff doubles up to it, with jitter).
    #[serde(with = "portolan_config::duration")]
    pub max_backoff: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            version: 1,
            host_id: String::new(),
            hostname: String::new(),
            scan_interval: Duration::from_secs(10),
            proc_root: PathBuf::from("/proc"),
            attribute_processes: true,
            namespaces: crate::scan::Namespaces::Own,
            pod_logs_dir: PathBuf::from("/var/log/pods"),
            labels: BTreeMap::new(),
            collector: CollectorSection::default(),
            tls: TlsFiles {
                ca: PathBuf::from("/etc/portolan/ca.pem"),
                cert: PathBuf::from("/etc/portolan/agent.pem"),
                key: PathBuf::from("/etc/portolan/agent.key"),
            },
            enrollment: EnrollmentSection::default(),
            spool: SpoolSection::default(),
            footprint: FootprintSection::default(),
            metrics: MetricsSection::default(),
        }
    }
}

impl Default for CollectorSection {
    fn default() -> Self {
        CollectorSection {
            endpoint: "https://localhost:7443".into(),
            server_name: String::new(),
            ack_timeout: Duration::from_secs(60),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl AgentConfig {
    /// Checks what types alone cannot, reporting every problem at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.version != 1 {
            problems.push(format!(
                "`version` is {}; this agent reads version 1",
                self.version
            ));
        }
        if self.scan_interval < Duration::from_millis(100) {
            problems.push(format!(
                "`scan_interval` is {}; use at least 100ms",
                humantime::format_duration(self.scan_interval)
            ));
        }
        if !(self.collector.endpoint.starts_with("https://")) {
            problems.push(format!(
                "`collector.endpoint` is `{}`; it must start with https:// (Portolan speaks mutual TLS only)",
                self.collector.endpoint
            ));
        }
        if self.spool.max_size < 1 << 20 {
            problems.push(format!(
                "`spool.max_size` is {}; use at least 1MiB (the spool must hold one inventory)",
                portolan_config::bytes::format(self.spool.max_size)
            ));
        }
        if self.footprint.max_cpu_percent.is_nan() || self.footprint.max_cpu_percent <= 0.0 {
            problems.push(format!(
                "`footprint.max_cpu_percent` is {}; it must be above 0",
                self.footprint.max_cpu_percent
            ));
        }
        if self.footprint.max_memory < 8 << 20 {
            problems.push(format!(
                "`footprint.max_memory` is {}; use at least 8MiB",
                portolan_config::bytes::format(self.footprint.max_memory)
            ));
        }
        self.metrics.validate(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The TLS files as portolan-tls wants them.
    pub fn tls_files(&self) -> TlsFiles {
        self.tls.clone()
    }

    /// `host_id`, or `/etc/machine-id` when empty.
    pub fn resolve_host_id(&self) -> Result<String, String> {
        if !self.host_id.is_empty() {
            return Ok(self.host_id.clone());
        }
        read_trimmed(Path::new("/etc/machine-id"))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "`host_id` is empty and /etc/machine-id is unreadable: set `host_id` (or PORTOLAN_HOST_ID)".into())
    }

    /// `hostname`, or the kernel's hostname when empty.
    pub fn resolve_hostname(&self) -> String {
        if !self.hostname.is_empty() {
            return self.hostname.clone();
        }
        read_trimmed(&self.proc_root.join("sys/kernel/hostname")).unwrap_or_default()
    }
}

/// Reads a small text file, trimmed; `None` when unreadable.
pub fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// `PRETTY_NAME` of /etc/os-release, empty when unknown.
pub fn os_pretty_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default()
}
