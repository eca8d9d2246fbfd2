//! `https://` ClickHouse: the HTTP client the store gives the `clickhouse` crate, and what
//! a failed handshake means in words.
//!
//! The crate is built without a TLS feature of its own; the store hands it a hyper client
//! over hyper-rustls instead, so that the server is verified against the roots the
//! configuration names ([`ClickHouseTls::ca`], else the system's, read with
//! `rustls-native-certs` as OpenSSL would: `/etc/ssl/certs`, `SSL_CERT_FILE`,
//! `SSL_CERT_DIR`), a client certificate can be presented, and the tree's one crypto
//! provider (`ring`, [`portolan_tls::crypto_provider`]) does the work. `http://` URLs go
//! through the same client without TLS and without loading any roots.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clickhouse::Client;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::StoreError;

/// TCP keep-alive of the connections to ClickHouse (the `clickhouse` crate's default).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Idle pooled connections are closed before ClickHouse's own `keep_alive_timeout` (3 s
/// by default) closes them under a request (the `clickhouse` crate's default).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How the store verifies an `https://` ClickHouse and what it presents to it; ignored for
/// `http://` URLs. The default trusts the system's CAs and presents no certificate, which
/// is what ClickHouse Cloud needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClickHouseTls {
    /// PEM file of the CA certificates to trust instead of the system's (a private CA, a
    /// self-signed server). `None`: the system's CAs.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate (optionally followed by intermediates), for
    /// servers that require one (`verificationMode` `strict`). Needs [`ClickHouseTls::key`].
    pub cert: Option<PathBuf>,
    /// PEM file of the private key of [`ClickHouseTls::cert`].
    pub key: Option<PathBuf>,
}

impl ClickHouseTls {
    /// The roots trusted, in words, for messages.
    fn trusted(&self) -> String {
        match &self.ca {
            Some(ca) => format!("the CAs in `{}`", ca.display()),
            None => "the system's CAs".to_string(),
        }
    }
}

/// Why the TLS material of the configuration cannot be used.
fn bad_file(key: &'static str, path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::TlsFile {
        key,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A client for `url` (`http://` or `https://`), its TLS set up as `tls` says.
pub(crate) fn client(url: &str, tls: &ClickHouseTls) -> Result<Client, StoreError> {
    let https = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    let mut http = HttpConnector::new();
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.enforce_http(false);
    let config = client_config(https, tls)?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let hyper = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    Ok(Client::with_http_client(hyper).with_url(url))
}

/// The rustls configuration: for an `https://` server its roots and the client
/// certificate when one is configured; for `http://` nothing is loaded (a machine without
/// CA certificates must still reach a local server) and nothing is trusted.
fn client_config(https: bool, tls: &ClickHouseTls) -> Result<ClientConfig, StoreError> {
    let roots = match (&tls.ca, https) {
        (_, false) => RootCertStore::empty(),
        (Some(path), true) => file_roots(path)?,
        (None, true) => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(portolan_tls::crypto_provider())
        .with_protocol_versions(portolan_tls::PROTOCOL_VERSIONS)
        .map_err(|e| StoreError::TlsSetup(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) | (None, Some(_)) => {
            return Err(StoreError::TlsSetup(
                "`clickhouse.tls.cert` and `clickhouse.tls.key` go together: set both or neither"
                    .into(),
            ));
        }
        (Some(_), Some(_)) if !https => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certs("clickhouse.tls.cert", cert)?;
            let key_der = private_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| {
                    bad_file(
                        "clickhouse.tls.cert",
                        cert,
                        format!(
                            "cannot be used with `clickhouse.tls.key` at {}: {e} (check that the key belongs to the certificate)",
                            key.display()
                        ),
                    )
                })?
        }
    };
    Ok(config)
}

/// The system's CA certificates; none found is an error that says what to do.
fn system_roots() -> Result<RootCertStore, StoreError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(StoreError::TlsSetup(format!(
            "no CA certificates found in the system's store{} (install the `ca-certificates` package, or set `[clickhouse.tls] ca` to the PEM file of the CA that issued the server's certificate)",
            if errors.is_empty() {
                String::new()
            } else {
                format!(": {}", errors.join("; "))
            }
        )));
    }
    Ok(roots)
}

/// Every certificate of a CA bundle, each a trust anchor.
fn file_roots(path: &Path) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs("clickhouse.tls.ca", path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            bad_file(
                "clickhouse.tls.ca",
                path,
                format!(
                    "certificate #{} is not a usable CA certificate: {e} (the file should hold only CA certificates)",
                    i + 1
                ),
            )
        })?;
    }
    Ok(roots)
}

/// Every `CERTIFICATE` block of a PEM file; at least one.
fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_file(key, path, format!("is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad_file(key, path, "holds no PEM `CERTIFICATE` block"));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, StoreError> {
    const KEY: &str = "clickhouse.tls.key";
    let bytes = read(KEY, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            bad_file(KEY, path, "holds no PEM `PRIVATE KEY` block")
        }
        e => bad_file(KEY, path, format!("is not PEM: {e}")),
    })
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| {
        bad_file(
            key,
            path,
            format!("cannot be read: {e} (check that the file exists and that the collector's user may read it)"),
        )
    })
}

/// When `error` is a TLS failure (a handshake refused on either side, or a server that
/// does not speak TLS), what went wrong and what to configure.
pub(crate) fn diagnose(error: &clickhouse::error::Error, tls: &ClickHouseTls) -> Option<String> {
    let rustls = rustls_cause(error)?;
    let trusted = tls.trusted();
    let advice = match rustls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | rustls::Error::InvalidCertificate(CertificateError::BadSignature) => format!(
            "the server's certificate is not issued by {trusted}; set `[clickhouse.tls] ca` to the PEM file of the CA that issued it"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate does not name the host of `clickhouse.url`; use a host name (or IP address) the certificate holds".to_string(),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired; renew it on the server".to_string(),
        rustls::Error::InvalidCertificate(_) => format!(
            "the server's certificate cannot be verified against {trusted}; check `[clickhouse.tls] ca` and the server's certificate"
        ),
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::HandshakeFailure
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied,
        ) if tls.cert.is_none() => "the server requires a client certificate; set `[clickhouse.tls] cert` and `key` to one its CA issued".to_string(),
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied,
        ) => "the server refused the client certificate of `[clickhouse.tls] cert`; use one issued by a CA the server trusts (its `caConfig`)".to_string(),
        rustls::Error::InvalidMessage(_) => {
            "the server does not speak TLS on this port; use its `https_port` (8443 by default) in `clickhouse.url`, or `http://`".to_string()
        }
        _ => format!(
            "check `[clickhouse.tls]` (trusting {trusted}) and the server's `openSSL` settings"
        ),
    };
    Some(format!("{rustls}: {advice}"))
}

/// The rustls error at the root of `error`, if any. An `io::Error` that wraps another
/// error reports that error's *source* as its own source, skipping the wrapped error
/// (hyper-rustls wraps rustls' error in two of them), so the chain is followed through
/// `get_ref` there.
fn rustls_cause(error: &clickhouse::error::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = cause {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        cause = match e.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner),
                None => std::error::Error::source(io),
            },
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_a_client_certificate_is_refused_before_any_connection() {
        let err = client(
            "https://ch.example:8443",
            &ClickHouseTls {
                ca: None,
                cert: Some(PathBuf::from("/etc/portolan/ch.pem")),
                key: None,
            },
        )
        .map(|_| ())
        .expect_err("cert without key");
        assert!(err.to_string().contains("set both or neither"), "{err}");
    }

    #[test]
    fn a_missing_ca_file_names_the_key_and_the_path() {
        let err = client(
            "https://ch.example:8443",
            &ClickHouseTls {
                ca: Some(PathBuf::from("/nonexistent/ca.pem")),
                ..ClickHouseTls::default()
            },
        )
        .map(|_| ())
        .expect_err("no such file");
        let text = err.to_string();
        assert!(text.contains("`clickhouse.tls.ca`"), "{text}");
        assert!(text.contains("/nonexistent/ca.pem"), "{text}");
    }

    #[test]
    fn http_urls_need_no_tls_material() {
        // Files that do not exist are not read for a plain URL.
        let tls = ClickHouseTls {
            ca: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..ClickHouseTls::default()
        };
        assert!(client("http://127.0.0.1:8123", &tls).is_ok());
    }
}
