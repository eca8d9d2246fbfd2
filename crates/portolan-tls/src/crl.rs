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
                let crl = check(path, der, &cas)?;
                // The handshake consults the first CRL of an issuer only.
                if let Some(first) = crls.iter().find(|c: &&Crl| c.issuer == crl.issuer) {
                    return Err(bad(
                        path,
                        format!(
                            "it is a second CRL of `{}`, after `{}`: the handshake would consult only the first (keep one CRL per CA in `tls.crls`, the newest)",
                            crl.issuer_name,
                            first.path.display()
                        ),
                    ));
                }
                crls.push(crl);
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
    // rustls looks a CRL up by its issuer's name and checks it with the key of whichever
    // CA of that name issued the certificate: every such CA must be able to vouch for it,
    // or the certificates of the others would all be refused.
    let mut verifying = 0;
    let mut refusal = None;
    for signer in &signers {
        if let Ok(Some(usage)) = signer.key_usage()
            && !usage.value.crl_sign()
        {
            refusal = Some(format!(
                "its CA `{issuer_name}` may not sign CRLs (its key usage lacks `cRLSign`; publish the CRL from a CA that may)"
            ));
        } else if let Err(e) = crl.verify_signature(signer.public_key()) {
            refusal.get_or_insert(format!(
                "its signature does not verify with the key of the CA `{issuer_name}` in `tls.ca` ({e}; it was signed by another key: write it again with that CA, e.g. `portolan pki crl`)"
            ));
        } else {
            verifying += 1;
        }
    }
    if verifying == 0 {
        return Err(bad(path, refusal.unwrap_or_default()));
    }
    if verifying < signers.len() {
        return Err(bad(
            path,
            format!(
                "`tls.ca` holds {} CAs named `{issuer_name}` and only {verifying} of them signed it: rustls finds a CRL by its issuer's name, so the certificates of the other would all be refused (give each CA its own name, e.g. `portolan pki init --common-name`, or leave the CRL out until the other CA leaves `tls.ca`)",
                signers.len()
            ),
        ));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::{Ca, DEFAULT_CRL_VALIDITY};

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Dir {
            Dir(tempfile::tempdir().expect("a temporary directory"))
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.path().join(name);
            std::fs::write(&path, contents).expect("written");
            path
        }
    }

    fn load(paths: &[PathBuf], ca: &Path) -> Result<CrlSet, String> {
        CrlSet::load(paths, ca).map_err(|e| e.to_string())
    }

    #[test]
    fn pem_with_several_crls_and_der_load() {
        let dir = Dir::new();
        let (a, b) = (
            Ca::generate("ca a").expect("ca"),
            Ca::generate("ca b").expect("ca"),
        );
        let ca = dir.write("ca.pem", format!("{}{}", a.cert_pem(), b.cert_pem()));
        let crl_a = a
            .crl(None, &[vec![0x0a]], DEFAULT_CRL_VALIDITY)
            .expect("crl");
        let crl_b = b
            .crl(None, &[vec![0x0b]], DEFAULT_CRL_VALIDITY)
            .expect("crl");
        let both = dir.write("both.crl.pem", format!("{}{}", crl_a.pem, crl_b.pem));
        let der = CertificateRevocationListDer::from_pem_slice(crl_b.pem.as_bytes()).expect("pem");
        let der = dir.write("b.crl", der.as_ref());
        let set = load(std::slice::from_ref(&both), &ca).expect("loads");
        let issuers: Vec<&str> = set.crls().iter().map(Crl::issuer_name).collect();
        assert_eq!(issuers, ["CN=ca a, O=Portolan", "CN=ca b, O=Portolan"]);
        let serials: Vec<&[u8]> = set.crls()[0].serials().collect();
        assert_eq!(serials, [&[0x0a][..]]);
        assert!(set.stale(0).is_empty());
        assert_eq!(set.ders().len(), 2);
        let a_pem = dir.write("a.crl.pem", &crl_a.pem);
        let set = load(&[a_pem, der.clone()], &ca).expect("loads");
        assert_eq!(set.crls()[1].path(), der.as_path());
        assert_eq!(set.crls()[1].issuer_name(), "CN=ca b, O=Portolan");
        // Two CRLs of one CA: the handshake would read only the first.
        let e = load(&[both, der], &ca).expect_err("a second CRL of `ca b`");
        assert!(
            e.contains("a second CRL of `CN=ca b, O=Portolan`, after `")
                && e.contains("both.crl.pem"),
            "{e}"
        );
        assert!(
            load(&[], &dir.0.path().join("absent"))
                .expect("nothing to load")
                .is_empty()
        );
    }

    #[test]
    fn a_crl_past_its_next_update_is_stale_and_still_lists_its_serials() {
        let dir = Dir::new();
        let ca = Ca::generate("ca").expect("ca");
        let ca_path = dir.write("ca.pem", ca.cert_pem());
        let crl = ca
            .crl(None, &[vec![5]], Duration::from_secs(60))
            .expect("crl");
        let set = load(&[dir.write("c.pem", &crl.pem)], &ca_path).expect("loads");
        let crl = &set.crls()[0];
        let next = crl.next_update().expect("a next update");
        assert!(next - crl.this_update() == 60);
        assert!(!crl.is_stale(next) && crl.is_stale(next + 1));
        assert_eq!(set.stale(next + 1).len(), 1);
        assert_eq!(crl.serials().count(), 1);
    }

    #[test]
    fn a_crl_is_refused_when_another_trusted_ca_of_its_name_did_not_sign_it() {
        let dir = Dir::new();
        // Two trusted CAs of one name (a rotation by `portolan pki init --force`): rustls
        // would check a CRL of one against the key of the other for the other's
        // certificates, and refuse them all.
        let (old, new) = (
            Ca::generate("fleet").expect("ca"),
            Ca::generate("fleet").expect("ca"),
        );
        let twins = dir.write("twins.pem", format!("{}{}", old.cert_pem(), new.cert_pem()));
        let crl = dir.write(
            "new.crl.pem",
            new.crl(None, &[], DEFAULT_CRL_VALIDITY).expect("crl").pem,
        );
        let e = load(std::slice::from_ref(&crl), &twins).expect_err("ambiguous");
        assert!(
            e.contains(
                "`tls.ca` holds 2 CAs named `CN=fleet, O=Portolan` and only 1 of them signed it"
            ),
            "{e}"
        );
        // The same CA twice in the file (or renewed with its key) is no ambiguity.
        let same = dir.write("same.pem", format!("{}{}", new.cert_pem(), new.cert_pem()));
        assert!(load(std::slice::from_ref(&crl), &same).is_ok());
    }

    #[test]
    fn garbage_and_foreign_crls_are_refused_with_what_to_do() {
        let dir = Dir::new();
        let ca = Ca::generate("fleet").expect("ca");
        let ca_path = dir.write("ca.pem", ca.cert_pem());
        let cases: Vec<(PathBuf, &str)> = vec![
            (
                dir.write("garbage.crl", "this is not a CRL\n"),
                "neither a PEM `X509 CRL` block nor a DER CRL",
            ),
            (
                dir.write("cert.pem", ca.cert_pem()),
                "no CRL found in `tls.crls`",
            ),
            (
                dir.write("bad.der", [0x30, 0x03, 0x02, 0x01, 0x01]),
                "not a valid X.509 CRL",
            ),
            (
                dir.write(
                    "unknown.crl.pem",
                    Ca::generate("stranger")
                        .and_then(|other| other.crl(None, &[], DEFAULT_CRL_VALIDITY))
                        .expect("crl")
                        .pem,
                ),
                "issued by `CN=stranger, O=Portolan`, which is none of the CAs in `tls.ca`",
            ),
            (
                // Same name as the trusted CA, another key: a forgery or a lost CA.
                dir.write(
                    "forged.crl.pem",
                    Ca::generate("fleet")
                        .and_then(|other| other.crl(None, &[], DEFAULT_CRL_VALIDITY))
                        .expect("crl")
                        .pem,
                ),
                "signature does not verify with the key of the CA `CN=fleet, O=Portolan`",
            ),
            (dir.0.path().join("missing.crl"), "cannot read `tls.crls`"),
        ];
        for (path, expected) in cases {
            let e = load(std::slice::from_ref(&path), &ca_path).expect_err(expected);
            assert!(e.contains(expected), "{}: {e}", path.display());
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
    }
}
