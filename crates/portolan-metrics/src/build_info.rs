//! `portolan_build_info`: which build of which binary is running.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use crate::exposition::Family;

/// The git revision the binary was built from (12 hex digits), `PORTOLAN_BUILD_REVISION`
/// when the build set it, or `unknown` outside a git checkout.
pub const REVISION: &str = env!("PORTOLAN_BUILD_REVISION");
/// The version of the compiler that built the binary.
pub const RUSTC: &str = env!("PORTOLAN_BUILD_RUSTC");
/// The target triple the binary was built for.
pub const TARGET: &str = env!("PORTOLAN_BUILD_TARGET");
/// Portolan's version (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Encodes `portolan_build_info{binary,version,revision,rustc,target} 1`.
pub fn encode_build_info(encoder: &mut DescriptorEncoder<'_>, binary: &str) -> fmt::Result {
    let info = Family::gauge(
        "portolan_build_info",
        "Always 1; the labels say which build is running (version, git revision, compiler, target).",
    );
    info.set(
        &[
            ("binary", binary),
            ("version", VERSION),
            ("revision", REVISION),
            ("rustc", RUSTC),
            ("target", TARGET),
        ],
        1.0,
    );
    info.encode(encoder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::{Exposition, Format};

    #[test]
    fn reports_one_labelled_series() {
        let out = Exposition::new(|e| encode_build_info(e, "portolan-agent")).render(Format::Text);
        let series = out
            .lines()
            .find(|l| l.starts_with("portolan_build_info{"))
            .expect("a sample");
        assert!(series.ends_with("} 1"), "{series}");
        assert!(series.contains("binary=\"portolan-agent\""), "{series}");
        assert!(
            series.contains(&format!("version=\"{VERSION}\"")),
            "{series}"
        );
        assert!(!REVISION.is_empty() && !RUSTC.is_empty() && !TARGET.is_empty());
        // Built from a git checkout without an override: the revision is its HEAD.
        let head = std::process::Command::new("git")
            .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if let Some(head) = head
            && option_env!("PORTOLAN_BUILD_REVISION_OVERRIDDEN").is_none()
        {
            assert!(
                head.starts_with(REVISION),
                "{REVISION} is not HEAD ({head})"
            );
        }
    }
}
