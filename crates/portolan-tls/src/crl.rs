//! X.509 certificate revocation lists (CRLs) that the CAs the collector trusts publish
//! (configuration key `tls.crls`).
//!
//! A CRL file holds one or more CRLs, PEM (`X509 CRL` blocks, as `portolan pki crl` and
//! `openssl ca -gencrl` write them) or one DER CRL. Every CRL must be signed by one of the
//! CAs in `tls.ca`: one that is not would make rustls refuse every certificate of the CA
//! it names, so [`CrlSet::load`] refuses it with an error that says so.
//!
//! The CRLs are enforced twice: in the TLS handshake (rustls' verifier, see
//! [`server_config_with_crls`](crate::server::server_config_with_crls)), and for calls and
//! open streams through the [`RevocationList`](crate::RevocationList) they are folded
//! into ([`RevocationList::with_crls`](crate::RevocationList::with_crls)), so that the
//! stream of a certificate revoked while connected ends at the next reload.
//!
//! An expired CRL (past its `nextUpdate`) stays in force and is logged: it is the last
//! word its CA said, and refusing every certificate of that CA until someone publishes a
//! new one would lock the whole fleet out (see [`Crl::is_stale`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::error::TlsError;

/// The configuration key of CRL files, as errors name it.
const KEY: &str = "tls.crls";

/// One CRL, checked against the trusted CAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    path: PathBuf,
    der: CertificateRevocationListDer<'static>,
    issuer: Vec<u8>,
    issuer_name: String,
    number: Option<String>,
    this_update: i64,
    next_update: Option<i64>,
    serials: BTreeSet<Vec<u8>>,
}

impl Crl {
    /// The file it came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The CRL as DER, for rustls' verifier.
    pub fn der(&self) -> &CertificateRevocationListDer<'static> {
        &self.der
    }

    /// The DER of the issuer's name, as certificates of that issuer carry it.
    pub fn issuer(&self) -> &[u8] {
        &self.issuer
    }

    /// The issuer's name for people, e.g. `CN=Portolan development CA, O=Portolan`.
    pub fn issuer_name(&self) -> &str {
        &self.issuer_name
    }

    /// The CRL number (`cRLNumber` extension), if it has one: decimal, or `0x…` past
    /// 16 bytes.
    pub fn number(&self) -> Option<&str> {
        self.number.as_deref()
    }

    /// `thisUpdate`, in Unix seconds.
    pub fn this_update(&self) -> i64 {
        self.this_update
    }

    /// `nextUpdate`, in Unix seconds, if it has one.
    pub fn next_update(&self) -> Option<i64> {
        self.next_update
    }

    /// The serials it revokes (big-endian, leading zero bytes stripped).
    pub fn serials(&self) -> impl Iterator<Item = &[u8]> {
        self.serials.iter().map(Vec::as_slice)
    }

    /// Whether it is past its `nextUpdate` at `now` (Unix seconds). A stale CRL still
    /// revokes what it lists; the collector only warns that its CA should publish a new
    /// one.
    pub fn is_stale(&self, now: i64) -> bool {
        self.next_update.is_some_and(|next| next < now)
    }

    /// How refusals name it: ``CRL `/etc/portolan/fleet.crl.pem` (number 3, issuer `CN=…`)``.
    pub fn describe(&self) -> String {
        let mut out = format!("CRL `{}` (", self.path.display());
        if let Some(number) = &self.number {
            let _ = write!(out, "number {number}, ");
        }
        let _ = write!(out, "issuer `{}`)", self.issuer_name);
        out
    }
}

/// Every CRL of the `tls.crls` files, each checked against the CAs of `tls.ca`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrlSet {
    crls: Vec<Crl>,
}

impl CrlSet {
    /// No CRLs: the handshake checks no revocation status.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads every CRL of the files at `paths` and checks each against the CA
    /// certificates in the file at `ca` (`tls.ca`): its issuer must be one of them, with
    /// the `cRLSign` key usage, and its signature must verify with that CA's key.
    pub fn load(paths: &[PathBuf], ca: &Path) -> Result<CrlSet, TlsError> {
        if paths.is_empty() {
            return Ok(CrlSet::empty());
        }
        let cas = crate::files::load_certs("tls.ca", ca)?;
        let mut crls = Vec::new();
        for path in paths {
            let bytes = std::fs::read(path).map_err(|error| TlsError::Read {
                key: KEY,
                path: path.clone(),
                error,
            })?;
            for der in split(path, &bytes)? {
                crls.push(check(path, der, &cas)?);
            }
        }
        Ok(CrlSet { crls })
    }

    /// The CRLs, in the order of the files.
    pub fn crls(&self) -> &[Crl] {
        &self.crls
    }

    /// Whether there is no CRL.
    pub fn is_empty(&self) -> bool {
        self.crls.is_empty()
    }

    /// The CRLs as DER, for rustls' verifier.
    pub fn ders(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.crls.iter().map(|crl| crl.der.clone()).collect()
    }

    /// The CRLs past their `nextUpdate` at `now` (Unix seconds).
    pub fn stale(&self, now: i64) -> Vec<&Crl> {
        self.crls.iter().filter(|crl| crl.is_stale(now)).collect()
    }
}

/// A CRL number for people: decimal, or `0x…` hexadecimal when it does not fit 128 bits.
pub(crate) fn number_text(number: &[u8]) -> String {
    let number = crate::revocation::strip_zeros(number);
    if number.len() <= 16 {
        let value = number
            .iter()
            .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
        value.to_string()
    } else {
        format!("0x{}", crate::revocation::serial_hex(number))
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Crl {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The CRLs of a file: every `X509 CRL` block of a PEM file, or the file itself as DER.
fn split(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let text_start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    if bytes[text_start..].starts_with(b"-----BEGIN") {
        let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsError::Pem {
                key: KEY,
                path: path.to_owned(),
                error,
            })?;
        if crls.is_empty() {
            return Err(TlsError::Empty {
                key: KEY,
                path: path.to_owned(),
                expected: "CRL",
                marker: "X509 CRL",
            });
        }
        return Ok(crls);
    }
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    Err(bad(
        path,
        "it is neither a PEM `X509 CRL` block nor a DER CRL (use the file `portolan pki crl` or your CA wrote)",
    ))
}

fn check(
    path: &Path,
    der: CertificateRevocationListDer<'static>,
    cas: &[CertificateDer<'_>],
) -> Result<Crl, TlsError> {
    let (rest, crl) = x509_parser::parse_x509_crl(&der)
        .map_err(|e| bad(path, format!("it is not a valid X.509 CRL: {e}")))?;
    if !rest.is_empty() {
        return Err(bad(
            path,
            "it has bytes after the CRL (a DER file holds one CRL; use PEM for several)",
        ));
    }
    let issuer = crl.issuer().as_raw().to_vec();
    let issuer_name = crl.issuer().to_string();
    // Several CAs may share a name (a rotation that kept it): any of them may have signed.
    let signers: Vec<_> = cas
        .iter()
        .filter_map(|ca| x509_parser::parse_x509_certificate(ca).ok())
        .map(|(_, cert)| cert)
        .filter(|cert| cert.subject().as_raw() == issuer.as_slice())
        .collect();
    if signers.is_empty() {
        return Err(bad(
            path,
            format!(
                "it is issued by `{issuer_name}`, which is none of the CAs in `tls.ca` (a CRL only counts when signed by a CA the collector trusts: add that CA to `tls.ca`, or remove the CRL)"
            ),
        ));
    }
    let mut last_error = String::new();
    let mut verified = false;
    for signer in &signers {
        if let Ok(Some(usage)) = signer.key_usage()
            && !usage.value.crl_sign()
        {
            last_error = format!(
                "its CA `{issuer_name}` may not sign CRLs (its key usage lacks `cRLSign`; publish the CRL from a CA that may)"
            );
            continue;
        }
        match crl.verify_signature(signer.public_key()) {
            Ok(()) => {
                verified = true;
                break;
            }
            Err(e) => {
                last_error = format!(
                    "its signature does not verify with the key of the CA `{issuer_name}` in `tls.ca` ({e}; it was signed by another key: write it again with that CA, e.g. `portolan pki crl`)"
                );
            }
        }
    }
    if !verified {
        return Err(bad(path, last_error));
    }
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| crate::revocation::strip_zeros(r.raw_serial()).to_vec())
        .collect();
    let number = crl.crl_number().map(|n| number_text(&n.to_bytes_be()));
    let this_update = crl.last_update().timestamp();
    let next_update = crl.next_update().map(|t| t.timestamp());
    Ok(Crl {
        path: path.to_owned(),
        der,
        issuer,
        issuer_name,
        number,
        this_update,
        next_update,
        serials,
    })
}
