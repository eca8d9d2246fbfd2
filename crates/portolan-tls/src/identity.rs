//! Who a peer is, read from the SAN URI of its certificate.
//!
//! Every Portolan certificate carries exactly one URI subject alternative name under the
//! `spiffe://portolan/` trust domain:
//!
//! | URI | identity |
//! |---|---|
//! | `spiffe://portolan/host/<host_id>` | [`Identity::Agent`] |
//! | `spiffe://portolan/operator/<role>/<name>` (`reader` or `admin`) | [`Identity::Operator`] |
//! | `spiffe://portolan/collector/<name>` | [`Identity::Collector`] |
//!
//! Identity always comes from the certificate the TLS handshake verified, never from what a
//! peer claims in a message.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;

/// The SPIFFE trust domain of every Portolan identity URI, with its scheme.
pub const TRUST_DOMAIN_PREFIX: &str = "spiffe://portolan/";

/// Longest `host_id` or name accepted in an identity URI, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The identity of a peer, taken from its certificate's `spiffe://portolan/…` SAN URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An agent running on one host (`spiffe://portolan/host/<host_id>`).
    Agent {
        /// The host's stable identifier, as the agent reports it in its Hello.
        host_id: String,
    },
    /// A person or tool using the query API (`spiffe://portolan/operator/<role>/<name>`).
    Operator {
        /// Who the operator is (a user or tool name).
        name: String,
        /// What the operator may do.
        role: OperatorRole,
    },
    /// A collector replica (`spiffe://portolan/collector/<name>`).
    Collector {
        /// The collector's name (usually its deployment name).
        name: String,
    },
}

/// What an operator certificate allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OperatorRole {
    /// May read inventories, flows and findings.
    Reader,
    /// May read and change (rules, finding state, host records).
    Admin,
}

impl OperatorRole {
    /// The role as it appears in identity URIs and on the command line (`reader`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Reader => "reader",
            OperatorRole::Admin => "admin",
        }
    }
}

impl fmt::Display for OperatorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OperatorRole {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "reader" => Ok(OperatorRole::Reader),
            "admin" => Ok(OperatorRole::Admin),
            other => Err(IdentityError::UnknownRole {
                role: other.to_owned(),
            }),
        }
    }
}

/// Why a certificate does not name a valid Portolan identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The peer presented no certificate at all.
    #[error("the peer presented no certificate (every connection is mutual TLS)")]
    NoCertificate,
    /// The certificate's DER could not be parsed.
    #[error("cannot parse the certificate: {reason}")]
    Unparsable {
        /// What the X.509 parser reported.
        reason: String,
    },
    /// The certificate carries no `spiffe://portolan/` SAN URI.
    #[error(
        "the certificate has no `{TRUST_DOMAIN_PREFIX}` SAN URI (issue it with `portolan pki`, or add one such URI)"
    )]
    NoUri,
    /// The certificate carries more than one `spiffe://portolan/` SAN URI.
    #[error(
        "the certificate has {} `{TRUST_DOMAIN_PREFIX}` SAN URIs ({}) but exactly one is allowed (reissue it with one identity)",
        uris.len(),
        uris.join(", ")
    )]
    SeveralUris {
        /// Every Portolan URI found, in certificate order.
        uris: Vec<String>,
    },
    /// The URI does not follow any of the Portolan identity forms.
    #[error(
        "`{uri}` is not a Portolan identity (expected `spiffe://portolan/host/<host_id>`, `spiffe://portolan/operator/<reader|admin>/<name>` or `spiffe://portolan/collector/<name>`)"
    )]
    Malformed {
        /// The offending URI.
        uri: String,
    },
    /// An operator URI names a role other than `reader` or `admin`.
    #[error("unknown operator role `{role}` (expected `reader` or `admin`)")]
    UnknownRole {
        /// The role as written.
        role: String,
    },
    /// A `host_id` or name is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error(
        "invalid {what} `{value}` (use 1 to {MAX_NAME_LEN} characters from `A-Z a-z 0-9 . _ -`, not `.` or `..` alone)"
    )]
    InvalidName {
        /// Which part was invalid: `host_id` or `name`.
        what: &'static str,
        /// The value as written.
        value: String,
    },
}

/// Checks that `value` is a valid `host_id` or name: 1 to [`MAX_NAME_LEN`] characters from
/// `[A-Za-z0-9._-]`, and not `.` or `..` (which URI normalisation would swallow).
///
/// `what` names the part in the error (`"host_id"`, `"name"`).
pub fn validate_name(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let charset_ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if value.is_empty()
        || value.len() > MAX_NAME_LEN
        || !charset_ok
        || value == "."
        || value == ".."
    {
        return Err(IdentityError::InvalidName {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

impl Identity {
    /// An agent identity, after checking `host_id`.
    pub fn agent(host_id: impl Into<String>) -> Result<Self, IdentityError> {
        let host_id = host_id.into();
        validate_name("host_id", &host_id)?;
        Ok(Identity::Agent { host_id })
    }

    /// An operator identity, after checking `name`.
    pub fn operator(name: impl Into<String>, role: OperatorRole) -> Result<Self, IdentityError> {
        let name = name.into();
        validate_name("name", &name)?;
        Ok(Identity::Operator { name, role })
    }

    /// A collector identity, after checking `name`.
    pub fn collector(name: impl Into<String>) -> Result<Self, IdentityError> {
        let name = name.into();
        validate_name("name", &name)?;
        Ok(Identity::Collector { name })
    }

    /// Parses one `spiffe://portolan/…` URI.
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed {
            uri: uri.to_owned(),
        };
        let path = uri
            .strip_prefix(TRUST_DOMAIN_PREFIX)
            .ok_or_else(malformed)?;
        let segments: Vec<&str> = path.split('/').collect();
        match segments.as_slice() {
            ["host", host_id] => Identity::agent(*host_id),
            ["collector", name] => Identity::collector(*name),
            ["operator", role, name] => {
                let role = role.parse()?;
                Identity::operator(*name, role)
            }
            _ => Err(malformed()),
        }
    }

    /// The URI that names this identity in a certificate, e.g. `spiffe://portolan/host/web-1`.
    pub fn uri(&self) -> String {
        match self {
            Identity::Agent { host_id } => format!("{TRUST_DOMAIN_PREFIX}host/{host_id}"),
            Identity::Operator { name, role } => {
                format!("{TRUST_DOMAIN_PREFIX}operator/{role}/{name}")
            }
            Identity::Collector { name } => format!("{TRUST_DOMAIN_PREFIX}collector/{name}"),
        }
    }

    /// The agent's `host_id`, if this is an agent.
    pub fn host_id(&self) -> Option<&str> {
        match self {
            Identity::Agent { host_id } => Some(host_id),
            _ => None,
        }
    }
}

impl fmt::Display for Identity {
    /// Shows the identity URI.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::from_uri(s)
    }
}

/// Whether a SAN URI belongs to the Portolan trust domain (and so must be a valid identity).
fn is_portolan_uri(uri: &str) -> bool {
    let Some(rest) = uri.get(..TRUST_DOMAIN_PREFIX.len()) else {
        return uri.eq_ignore_ascii_case(TRUST_DOMAIN_PREFIX.trim_end_matches('/'));
    };
    // Scheme and trust domain compare case-insensitively so that `SPIFFE://Portolan/…`
    // is reported as malformed rather than silently ignored.
    rest.eq_ignore_ascii_case(TRUST_DOMAIN_PREFIX)
}

/// Picks the one identity out of a certificate's SAN URIs. URIs outside the Portolan
/// trust domain are ignored; none or several Portolan URIs are an error.
pub fn identity_from_uris<'a>(
    uris: impl IntoIterator<Item = &'a str>,
) -> Result<Identity, IdentityError> {
    let ours: Vec<&str> = uris.into_iter().filter(|u| is_portolan_uri(u)).collect();
    match ours.as_slice() {
        [] => Err(IdentityError::NoUri),
        [one] => Identity::from_uri(one),
        several => Err(IdentityError::SeveralUris {
            uris: several.iter().map(|u| (*u).to_owned()).collect(),
        }),
    }
}

/// Reads the identity from a DER-encoded X.509 certificate's SAN URIs.
///
/// This does not verify the certificate: call it on certificates that the TLS handshake
/// has already verified (see [`crate::server::PeerInfo`]).
pub fn identity_from_der(cert_der: &[u8]) -> Result<Identity, IdentityError> {
    parse_certificate(cert_der).and_then(|parsed| parsed.identity)
}

/// The serial number of a DER certificate (big-endian bytes), as revocation lists name
/// it (see [`crate::serial_hex`]).
pub fn certificate_serial(cert_der: &[u8]) -> Result<Vec<u8>, IdentityError> {
    parse_certificate(cert_der).map(|parsed| parsed.serial)
}

/// The SHA-256 of a DER SubjectPublicKeyInfo, lowercase hex: how enrollment names a
/// host's key.
pub fn key_sha256(spki_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// What enrollment checks of a peer certificate besides its identity and issuer: its key
/// and validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// SHA-256 of the certificate's public key ([`key_sha256`]).
    pub key_sha256: String,
    /// `notBefore`, Unix seconds.
    pub not_before: i64,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// What Portolan reads from a peer certificate: its identity, serial number and facts.
pub(crate) struct ParsedCertificate {
    pub(crate) identity: Result<Identity, IdentityError>,
    pub(crate) serial: Vec<u8>,
    pub(crate) issuer: Vec<u8>,
    pub(crate) facts: CertFacts,
}

/// Parses a certificate once for both identity and serial.
pub(crate) fn parse_certificate(cert_der: &[u8]) -> Result<ParsedCertificate, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| IdentityError::Unparsable {
            reason: e.to_string(),
        })?;
    let serial = cert.raw_serial().to_vec();
    let issuer = cert.issuer().as_raw().to_vec();
    let identity =
        match cert.subject_alternative_name() {
            Err(e) => Err(IdentityError::Unparsable {
                reason: format!("subject alternative names: {e}"),
            }),
            Ok(None) => Err(IdentityError::NoUri),
            Ok(Some(san)) => identity_from_uris(san.value.general_names.iter().filter_map(
                |name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                },
            )),
        };
    let facts = CertFacts {
        key_sha256: key_sha256(cert.public_key().raw),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    Ok(ParsedCertificate {
        identity,
        serial,
        issuer,
        facts,
    })
}

/// The facts of a DER certificate ([`CertFacts`]).
pub fn certificate_facts(cert_der: &[u8]) -> Result<CertFacts, IdentityError> {
    parse_certificate(cert_der).map(|parsed| parsed.facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert_eq!(
            Identity::from_uri("spiffe://portolan/host/web-1.prod_eu"),
            Ok(Identity::Agent {
                host_id: "web-1.prod_eu".into()
            })
        );
        assert_eq!(
            Identity::from_uri("spiffe://portolan/operator/admin/alice"),
            Ok(Identity::Operator {
                name: "alice".into(),
                role: OperatorRole::Admin
            })
        );
        assert_eq!(
            Identity::from_uri("spiffe://portolan/operator/reader/grafana"),
            Ok(Identity::Operator {
                name: "grafana".into(),
                role: OperatorRole::Reader
            })
        );
        assert_eq!(
            Identity::from_uri("spiffe://portolan/collector/c0"),
            Ok(Identity::Collector { name: "c0".into() })
        );
    }

    #[test]
    fn uri_round_trips() {
        for uri in [
            "spiffe://portolan/host/0123456789abcdef",
            "spiffe://portolan/operator/reader/bob",
            "spiffe://portolan/operator/admin/bob",
            "spiffe://portolan/collector/collector-0",
        ] {
            let id = Identity::from_uri(uri).expect("valid uri");
            assert_eq!(id.uri(), uri);
            assert_eq!(id.to_string(), uri);
            assert_eq!(uri.parse::<Identity>().as_ref(), Ok(&id));
        }
    }

    #[test]
    fn rejects_bad_role() {
        assert_eq!(
            Identity::from_uri("spiffe://portolan/operator/root/alice"),
            Err(IdentityError::UnknownRole {
                role: "root".into()
            })
        );
    }

    #[test]
    fn rejects_bad_names() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "spiffe://portolan/host/",
            "spiffe://portolan/host/has space",
            "spiffe://portolan/host/slash%2F",
            "spiffe://portolan/host/ümlaut",
            "spiffe://portolan/host/..",
            "spiffe://portolan/host/.",
            "spiffe://portolan/collector/a:b",
            &format!("spiffe://portolan/host/{long}"),
        ] {
            assert!(
                matches!(
                    Identity::from_uri(bad),
                    Err(IdentityError::InvalidName { .. })
                ),
                "{bad} should be an invalid name, got {:?}",
                Identity::from_uri(bad)
            );
        }
        let max = "a".repeat(MAX_NAME_LEN);
        assert!(Identity::agent(max).is_ok());
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in [
            "spiffe://portolan/host",
            "spiffe://portolan/host/a/b",
            "spiffe://portolan/operator/alice",
            "spiffe://portolan/robot/r2",
            "spiffe://portolan/",
            "spiffe://other/host/a",
            "https://portolan/host/a",
        ] {
            assert!(
                matches!(
                    Identity::from_uri(bad),
                    Err(IdentityError::Malformed { .. })
                ),
                "{bad} should be malformed, got {:?}",
                Identity::from_uri(bad)
            );
        }
    }

    #[test]
    fn exactly_one_portolan_uri() {
        assert_eq!(identity_from_uris([]), Err(IdentityError::NoUri));
        assert_eq!(
            identity_from_uris(["spiffe://other.org/host/a", "https://example.com"]),
            Err(IdentityError::NoUri)
        );
        assert_eq!(
            identity_from_uris(["spiffe://other.org/host/a", "spiffe://portolan/host/a"]),
            Ok(Identity::Agent {
                host_id: "a".into()
            })
        );
        assert_eq!(
            identity_from_uris(["spiffe://portolan/host/a", "spiffe://portolan/host/b"]),
            Err(IdentityError::SeveralUris {
                uris: vec![
                    "spiffe://portolan/host/a".into(),
                    "spiffe://portolan/host/b".into()
                ]
            })
        );
        // A differently cased trust domain is ours, and wrong, rather than ignored.
        assert!(matches!(
            identity_from_uris(["SPIFFE://Portolan/host/a"]),
            Err(IdentityError::Malformed { .. })
        ));
    }

    #[test]
    fn garbage_der_is_unparsable() {
        assert!(matches!(
            identity_from_der(b"not a certificate"),
            Err(IdentityError::Unparsable { .. })
        ));
    }

    #[test]
    fn messages_are_lowercase_and_helpful() {
        let e = IdentityError::SeveralUris {
            uris: vec![
                "spiffe://portolan/host/a".into(),
                "spiffe://portolan/host/b".into(),
            ],
        };
        assert_eq!(
            e.to_string(),
            "the certificate has 2 `spiffe://portolan/` SAN URIs (spiffe://portolan/host/a, spiffe://portolan/host/b) but exactly one is allowed (reissue it with one identity)"
        );
        let e = Identity::agent("a b").expect_err("space is invalid");
        assert_eq!(
            e.to_string(),
            "invalid host_id `a b` (use 1 to 128 characters from `A-Z a-z 0-9 . _ -`, not `.` or `..` alone)"
        );
    }
}
