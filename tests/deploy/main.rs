//! Deployment tests: what operators install, run for real.
//!
//! - `image`: the container image `just image` builds, run by podman (runc, cgroupfs): a
//!   collector container and an agent container (host network and pid namespace, the
//!   agent's two capabilities, read-only roots) stream this host's real sockets into a
//!   real ClickHouse, and the image's own `portolan hosts` lists the host.
//!
//! They need root, podman and the image: `just test` builds it first (`just image`).

#[allow(dead_code)]
#[path = "../e2e/support.rs"]
mod support;

mod image;
mod podman;
