//! Deployment tests: what operators install, run for real.
//!
//! - `image`: the container image `just image` builds, run by podman (runc, cgroupfs): a
//!   collector container and an agent container (host network and pid namespace, the
//!   agent's two capabilities, read-only roots) stream this host's real sockets into a
//!   real ClickHouse, and the image's own `portolan hosts` lists the host.
//! - `chart`: the Helm chart's rendered Deployments and DaemonSet, played by `podman kube
//!   play` from the same image (converted only where podman 4.3 or the missing kubelet
//!   require, `kube`): the agent's inventory reaches ClickHouse through the collector, every
//!   declared probe answers, every process runs as its security context says.
//!
//! They need root, podman and the image: `just test` builds it first (`just image`).

#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;

mod chart;
mod image;
mod kube;
mod podman;
