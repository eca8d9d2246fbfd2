//! The error type of TLS configuration and connection set-up.

use std::io;
use std::path::PathBuf;

/// Why a TLS configuration could not be built or a connection could not be set up.
///
/// Messages name the file or endpoint involved and say what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read `{key}` at {}: {} ({})", path.display(), io_reason(error), io_hint(error))]
    Read {
        /// The configuration key naming the file (`tls.ca`, `tls.cert`, `tls.key`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },
    /// A file is not valid PEM.
    #[error("cannot parse `{key}` at {} as PEM: {error} (expected the PEM files written by `portolan pki` or your CA)", path.display())]
    Pem {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        error: rustls_pki_types::pem::Error,
    },
    /// A file holds no PEM item of the kind it should.
    #[error("no {expected} found in `{key}` at {} (check that the file holds a PEM `{marker}` block)", path.display())]
    Empty {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for, in words (`certificate`, `private key`).
        expected: &'static str,
        /// The PEM label looked for (`CERTIFICATE`, `PRIVATE KEY`).
        marker: &'static str,
    },
    /// A certificate is not valid X.509 DER.
    #[error("certificate #{index} in `{key}` at {} is not a valid X.509 certificate: {reason} (replace the file with one your CA issued)", path.display())]
    BadCertificate {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Position of the certificate in the file, starting at 1.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// A certificate in the CA file cannot serve as a trust anchor.
    #[error("certificate #{index} in `tls.ca` at {} is not a usable CA certificate: {error} (the file should hold only CA certificates)", path.display())]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// Position of the certificate in the file, starting at 1.
        index: usize,
        /// What rustls said.
        error: rustls::Error,
    },
    /// The CA file could not be turned into a certificate verifier.
    #[error("cannot build a client certificate verifier from `tls.ca` at {}: {reason}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// rustls refused the certificate and key (for example, the key does not belong to the
    /// certificate).
    #[error("cannot use `tls.cert` at {} with `tls.key` at {}: {error} (check that the key belongs to the certificate)", cert.display(), key.display())]
    CertKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        error: rustls::Error,
    },
    /// The revocation list (`tls.revoked`) has a line that is not an entry.
    #[error("cannot read `tls.revoked` at {}: {error}", path.display())]
    Revocation {
        /// The revocation file.
        path: PathBuf,
        /// Which line is wrong and why.
        error: crate::revocation::RevocationParseError,
    },
    /// A CRL file (`tls.crls`) cannot be used.
    #[error("cannot use the CRL in `tls.crls` at {}: {reason}", path.display())]
    Crl {
        /// The CRL file.
        path: PathBuf,
        /// What is wrong with it and what to do.
        reason: String,
    },
    /// rustls refused the protocol versions (cannot happen with the ring provider; kept so
    /// that no configuration error is swallowed).
    #[error("cannot configure tls protocol versions: {0}")]
    Protocol(rustls::Error),
    /// The endpoint to connect to is not a valid `https://host:port` URI.
    #[error(
        "invalid endpoint `{endpoint}`: {reason} (expected e.g. `https://collector.example:7443`)"
    )]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The name to verify the server certificate against is not a DNS name or IP address.
    #[error(
        "invalid tls server name `{name}` (use the DNS name or IP address in the collector's certificate)"
    )]
    ServerName {
        /// The name as given.
        name: String,
    },
    /// The connection (TCP, TLS handshake or HTTP/2) could not be established.
    #[error("cannot connect to `{endpoint}`: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What failed: the causes in `error`, outermost first, without repetitions.
        reason: String,
        /// The error tonic returned.
        error: tonic::transport::Error,
    },
}

impl TlsError {
    /// The operating system's kind of error when a file could not be read (a permission
    /// denied is not a configuration mistake but a missing right); `None` otherwise.
    pub fn io_error_kind(&self) -> Option<io::ErrorKind> {
        match self {
            TlsError::Read { error, .. } => Some(error.kind()),
            _ => None,
        }
    }
}

/// A short lowercase reason for an I/O error, without the `(os error N)` noise.
pub(crate) fn io_reason(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no such file".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::IsADirectory => "is a directory".to_owned(),
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::TimedOut => "timed out".to_owned(),
        _ => error.to_string(),
    }
}

/// What to do about an I/O error on a certificate or key file.
pub(crate) fn io_hint(error: &io::Error) -> &'static str {
    match error.kind() {
        io::ErrorKind::NotFound => {
            "check the path in the configuration, or create the file with `portolan pki`"
        }
        io::ErrorKind::PermissionDenied => {
            "check the file's owner and mode: it must be readable by the user the service runs as"
        }
        _ => "check the path in the configuration",
    }
}

/// The causes of `error`, outermost first, joined with `: `; a cause whose text the
/// previous one already ends with (tonic repeats its inner error) and tonic's bare
/// `transport error` are left out.
pub(crate) fn describe_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        let repeated = parts.last().is_some_and(|last| last.ends_with(&text));
        if text != "transport error" && !repeated {
            parts.push(text);
        }
        current = e.source();
    }
    if parts.is_empty() {
        "transport error".to_owned()
    } else {
        parts.join(": ")
    }
}
