//! `portolan_tls_certificate_*`: when the process's own certificate and its CAs expire.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use crate::exposition::Family;

/// The validity window of one certificate, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// `notBefore`.
    pub not_before: i64,
    /// `notAfter`.
    pub not_after: i64,
}

/// Encodes `portolan_tls_certificate_expiry_timestamp_seconds{role}` and
/// `portolan_tls_certificate_not_before_timestamp_seconds{role}` for each `(role,
/// validity)`: `role` is the binary's own (`agent`, `collector`) or `ca`. A file that
/// could not be read is left out (its absence is what an alert on `absent()` sees), and
/// counted in `portolan_tls_certificate_read_errors` by role.
pub fn encode_certificates(
    encoder: &mut DescriptorEncoder<'_>,
    certificates: &[(&str, Option<Validity>)],
) -> fmt::Result {
    let expiry = Family::gauge(
        "portolan_tls_certificate_expiry_timestamp_seconds",
        "When the certificate expires (notAfter, Unix seconds), by role: this binary's own, or ca (the earliest of the CA file).",
    );
    let not_before = Family::gauge(
        "portolan_tls_certificate_not_before_timestamp_seconds",
        "When the certificate became valid (notBefore, Unix seconds), by role.",
    );
    let unreadable = Family::gauge(
        "portolan_tls_certificate_read_errors",
        "1 when the certificate file of the role could not be read or parsed at this scrape.",
    );
    for (role, validity) in certificates {
        match validity {
            Some(v) => {
                expiry.set(&[("role", role)], v.not_after as f64);
                not_before.set(&[("role", role)], v.not_before as f64);
                unreadable.set(&[("role", role)], 0.0);
            }
            None => unreadable.set(&[("role", role)], 1.0),
        }
    }
    expiry.encode(encoder)?;
    not_before.encode(encoder)?;
    unreadable.encode(encoder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::{Exposition, Format};

    #[test]
    fn renders_expiry_by_role() {
        let v = Validity {
            not_before: 1_700_000_000,
            not_after: 1_800_000_000,
        };
        let out =
            Exposition::new(move |e| encode_certificates(e, &[("agent", Some(v)), ("ca", None)]))
                .render(Format::Text);
        assert!(out.contains(
            "portolan_tls_certificate_expiry_timestamp_seconds{role=\"agent\"} 1800000000\n"
        ));
        assert!(out.contains(
            "portolan_tls_certificate_not_before_timestamp_seconds{role=\"agent\"} 1700000000\n"
        ));
        assert!(out.contains("portolan_tls_certificate_read_errors{role=\"ca\"} 1\n"));
        assert!(!out.contains("expiry_timestamp_seconds{role=\"ca\"}"));
    }
}
