//! Where a binary finds its CA, certificate and key, and how they are loaded.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsError;

/// The three PEM files of one mutual-TLS participant, as they appear in a binary's TOML
/// configuration (`[tls]` with `ca`, `cert` and `key`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificates to trust for peers. May hold several certificates: during a CA
    /// rotation, every one of them is trusted.
    pub ca: PathBuf,
    /// This participant's certificate, optionally followed by intermediate certificates.
    pub cert: PathBuf,
    /// The private key of `cert` (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Loads every CA certificate of the `ca` file into a trust store.
    pub fn load_roots(&self) -> Result<RootCertStore, TlsError> {
        let certs = load_certs("tls.ca", &self.ca)?;
        let mut roots = RootCertStore::empty();
        for (i, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|error| TlsError::BadCa {
                path: self.ca.clone(),
                index: i + 1,
                error,
            })?;
        }
        Ok(roots)
    }

    /// Loads the certificate chain of the `cert` file (leaf first).
    pub fn load_cert_chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        load_certs("tls.cert", &self.cert)
    }

    /// Loads the private key of the `key` file.
    pub fn load_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let bytes = read("tls.key", &self.key)?;
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| match error {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
                key: "tls.key",
                path: self.key.clone(),
                expected: "private key",
                marker: "PRIVATE KEY",
            },
            error => TlsError::Pem {
                key: "tls.key",
                path: self.key.clone(),
                error,
            },
        })
    }
}

/// When a certificate is valid, in Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// `notBefore`.
    pub not_before: i64,
    /// `notAfter`.
    pub not_after: i64,
}

impl TlsFiles {
    /// The validity of the `cert` file's leaf certificate (the first).
    pub fn cert_validity(&self) -> Result<Validity, TlsError> {
        let certs = load_certs("tls.cert", &self.cert)?;
        validity("tls.cert", &self.cert, 1, &certs[0])
    }

    /// The subject names (DER) of the `ca` file's certificates: the issuers a certificate
    /// issued directly by a trusted CA names. Unparsable certificates are left out (the
    /// trust store refuses them anyway).
    pub fn ca_subjects(&self) -> Result<Vec<Vec<u8>>, TlsError> {
        let certs = load_certs("tls.ca", &self.ca)?;
        Ok(certs
            .iter()
            .filter_map(|c| x509_parser::parse_x509_certificate(c).ok())
            .map(|(_, c)| c.subject().as_raw().to_vec())
            .collect())
    }

    /// The validity of the `ca` file's certificate that expires first: when it expires,
    /// peers whose chains end there are refused.
    pub fn ca_validity(&self) -> Result<Validity, TlsError> {
        let certs = load_certs("tls.ca", &self.ca)?;
        let mut earliest: Option<Validity> = None;
        for (i, cert) in certs.iter().enumerate() {
            let v = validity("tls.ca", &self.ca, i + 1, cert)?;
            if earliest.is_none_or(|e| v.not_after < e.not_after) {
                earliest = Some(v);
            }
        }
        // `load_certs` yields at least one certificate.
        earliest.ok_or_else(|| TlsError::Empty {
            key: "tls.ca",
            path: self.ca.clone(),
            expected: "certificate",
            marker: "CERTIFICATE",
        })
    }
}

fn validity(
    key: &'static str,
    path: &Path,
    index: usize,
    cert: &CertificateDer<'_>,
) -> Result<Validity, TlsError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::BadCertificate {
            key,
            path: path.to_owned(),
            index,
            reason: e.to_string(),
        })?;
    let v = x509.validity();
    Ok(Validity {
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

/// Reads a whole file, naming the configuration key in the error.
fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        key,
        path: path.to_owned(),
        error,
    })
}

/// Reads every `CERTIFICATE` block of a PEM file; at least one must be there.
pub(crate) fn load_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            key,
            path: path.to_owned(),
            error,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            key,
            path: path.to_owned(),
            expected: "certificate",
            marker: "CERTIFICATE",
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_validity_of_the_leaf_and_the_earliest_ca() {
        use crate::pki::Ca;
        use std::time::Duration;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let long =
            Ca::generate_with_validity("long", Duration::from_secs(400 * 86_400)).expect("a CA");
        let short =
            Ca::generate_with_validity("short", Duration::from_secs(30 * 86_400)).expect("a CA");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, format!("{}{}", long.cert_pem(), short.cert_pem())).expect("written");
        let files = TlsFiles {
            ca: ca.clone(),
            cert: ca.clone(),
            key: dir.path().join("none.key"),
        };
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        };
        let earliest = files.ca_validity().expect("a readable CA file");
        assert_eq!(earliest.not_after, unix(short.not_after()));
        let leaf = files.cert_validity().expect("a readable certificate");
        assert_eq!(leaf.not_after, unix(long.not_after()));
        assert!(leaf.not_before < leaf.not_after);
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("written");
        let err = files.ca_validity().expect_err("not a certificate");
        assert!(
            err.to_string().contains("not a valid X.509 certificate"),
            "{err}"
        );
    }

    #[test]
    fn deserializes_from_toml_keys() {
        let files: TlsFiles = toml::from_str(
            "ca = \"/etc/portolan/ca.pem\"\ncert = \"/etc/portolan/agent.pem\"\nkey = \"/etc/portolan/agent.key\"\n",
        )
        .expect("valid config");
        assert_eq!(files.key, PathBuf::from("/etc/portolan/agent.key"));
        assert!(
            toml::from_str::<TlsFiles>("ca = \"a\"\ncert = \"b\"\nkey = \"c\"\ncrt = \"d\"\n")
                .is_err()
        );
    }

    #[test]
    fn missing_file_names_key_path_and_remedy() {
        let files = TlsFiles {
            ca: "/nonexistent/portolan/ca.pem".into(),
            cert: "/nonexistent/portolan/agent.pem".into(),
            key: "/nonexistent/portolan/agent.key".into(),
        };
        let e = files.load_key().expect_err("file is missing");
        assert_eq!(
            e.to_string(),
            "cannot read `tls.key` at /nonexistent/portolan/agent.key: no such file (check the path in the configuration, or create the file with `portolan pki`)"
        );
        let e = files.load_roots().expect_err("file is missing");
        assert!(
            e.to_string()
                .starts_with("cannot read `tls.ca` at /nonexistent/portolan/ca.pem")
        );
    }
}
