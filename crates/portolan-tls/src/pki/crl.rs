//! Certificate revocation lists signed by the development CA ([`Ca::crl`]).
//!
//! A CRL is updated rather than replaced: the entries of the previous one are kept (a
//! revocation is for good), the new serials are added, and the CRL number goes up by
//! one, so that whoever reads two versions knows which is newer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::OffsetDateTime;

use super::{Ca, PkiError};
use crate::revocation::{serial_hex, strip_zeros};

/// How long a CRL is valid when nothing else is said: its CA should publish the next one
/// before then (the collector warns about a CRL past its `nextUpdate`, and keeps
/// enforcing it).
pub const DEFAULT_CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// A CRL the CA signed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssuedCrl {
    /// The CRL, PEM (`X509 CRL`): what the collector's `tls.crls` names.
    pub pem: String,
    /// Its CRL number (`1` for a first CRL; decimal, or `0x…` past 16 bytes).
    pub number: String,
    /// The serials it revokes (hexadecimal, as [`crate::serial_hex`] prints them), oldest
    /// entry first.
    pub revoked: Vec<String>,
    /// How many of them this CRL added to the previous one.
    pub added: usize,
    /// Its `nextUpdate` (whole seconds).
    pub next_update: SystemTime,
}

/// Parses a serial as people write it (`3A:F2:09`, `3af209`, `0x3af209`) into big-endian
/// bytes for [`Ca::crl`].
pub fn parse_serial(value: &str) -> Result<Vec<u8>, PkiError> {
    crate::revocation::parse_serial(value).map_err(PkiError::InvalidSerial)
}

impl Ca {
    /// Signs a CRL revoking the serials of `previous` (PEM or DER of a CRL this CA signed
    /// before; `None` for a first CRL) and the serials `revoke` (big-endian bytes, e.g.
    /// from [`Ca::serial_of`] or [`crate::RevocationList`]-style hex), numbered one above
    /// `previous`, valid from now for `validity`.
    ///
    /// A serial already listed keeps its entry (and revocation time).
    pub fn crl(
        &self,
        previous: Option<&[u8]>,
        revoke: &[Vec<u8>],
        validity: Duration,
    ) -> Result<IssuedCrl, PkiError> {
        const MAX_VALIDITY: Duration = Duration::from_secs(366 * 24 * 3600);
        if validity < Duration::from_secs(1) || validity > MAX_VALIDITY {
            return Err(PkiError::InvalidCrlValidity(validity));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let odt = |secs: u64| {
            i64::try_from(secs)
                .ok()
                .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
                .ok_or(PkiError::InvalidCrlValidity(validity))
        };
        let this_update = odt(now)?;
        let next_update_secs = now.saturating_add(validity.as_secs());
        let next_update = odt(next_update_secs)?;

        let (mut entries, number) = match previous {
            Some(bytes) => self.previous_entries(bytes)?,
            None => (Vec::new(), Vec::new()),
        };
        let mut added = 0;
        for serial in revoke {
            let serial = strip_zeros(serial);
            if serial.is_empty() {
                return Err(PkiError::InvalidSerial(
                    "0 is not a certificate serial".to_owned(),
                ));
            }
            if serial.len() > 20 {
                return Err(PkiError::InvalidSerial(format!(
                    "{} is longer than 20 bytes, more than any certificate serial",
                    serial_hex(serial)
                )));
            }
            if entries
                .iter()
                .any(|e: &RevokedCertParams| strip_zeros(e.serial_number.as_ref()) == serial)
            {
                continue;
            }
            entries.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: this_update,
                reason_code: None,
                invalidity_date: None,
            });
            added += 1;
        }
        let number = increment(&number);
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&number),
            issuing_distribution_point: None,
            revoked_certs: entries,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| super::generate_error("the CRL", e))?;
        let pem = crl.pem().map_err(|e| super::generate_error("the CRL", e))?;
        Ok(IssuedCrl {
            pem,
            number: crate::crl::number_text(&number),
            revoked: params
                .revoked_certs
                .iter()
                .map(|e| serial_hex(e.serial_number.as_ref()))
                .collect(),
            added,
            next_update: UNIX_EPOCH + Duration::from_secs(next_update_secs),
        })
    }

    /// The serial of `cert_pem`, a certificate this CA issued (big-endian bytes). Fails
    /// for a certificate of another CA: this CA's CRL cannot revoke it.
    pub fn serial_of(&self, cert_pem: &str) -> Result<Vec<u8>, PkiError> {
        let foreign = |reason: String| PkiError::ForeignCertificate { reason };
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| foreign(format!("it is not a PEM certificate ({e})")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| foreign(format!("it is not a valid X.509 certificate ({e})")))?;
        let ca_der = self.cert_der()?;
        let (_, ca) =
            x509_parser::parse_x509_certificate(&ca_der).map_err(|e| PkiError::LoadCa {
                what: "ca certificate",
                reason: e.to_string(),
            })?;
        if cert.issuer().as_raw() != ca.subject().as_raw()
            || cert.verify_signature(Some(ca.public_key())).is_err()
        {
            return Err(foreign(format!(
                "it was issued by `{}`, not by this CA `{}`",
                cert.issuer(),
                ca.subject()
            )));
        }
        Ok(strip_zeros(cert.raw_serial()).to_vec())
    }

    fn cert_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        CertificateDer::from_pem_slice(self.cert.cert_pem.as_bytes()).map_err(|e| {
            PkiError::LoadCa {
                what: "ca certificate",
                reason: e.to_string(),
            }
        })
    }

    /// The entries and number (big-endian) of a CRL this CA signed.
    fn previous_entries(
        &self,
        bytes: &[u8],
    ) -> Result<(Vec<RevokedCertParams>, Vec<u8>), PkiError> {
        let previous = |reason: String| PkiError::PreviousCrl { reason };
        let der = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            CertificateRevocationListDer::from_pem_slice(bytes)
                .map_err(|e| previous(format!("it holds no PEM `X509 CRL` block ({e})")))?
        } else {
            CertificateRevocationListDer::from(bytes.to_vec())
        };
        let (_, crl) = x509_parser::parse_x509_crl(&der)
            .map_err(|e| previous(format!("it is not a valid X.509 CRL ({e})")))?;
        let ca_der = self.cert_der()?;
        let (_, ca) =
            x509_parser::parse_x509_certificate(&ca_der).map_err(|e| PkiError::LoadCa {
                what: "ca certificate",
                reason: e.to_string(),
            })?;
        if crl.issuer().as_raw() != ca.subject().as_raw()
            || crl.verify_signature(ca.public_key()).is_err()
        {
            return Err(previous(format!(
                "it was signed by `{}`, not by this CA `{}`",
                crl.issuer(),
                ca.subject()
            )));
        }
        let mut entries = Vec::new();
        for revoked in crl.iter_revoked_certificates() {
            let revocation_time =
                OffsetDateTime::from_unix_timestamp(revoked.revocation_date.timestamp())
                    .map_err(|e| previous(format!("a revocation date is out of range ({e})")))?;
            entries.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(strip_zeros(revoked.raw_serial())),
                revocation_time,
                reason_code: revoked.reason_code().and_then(|(_, code)| reason(code.0)),
                invalidity_date: None,
            });
        }
        let number = crl
            .crl_number()
            .map(|n| n.to_bytes_be())
            .unwrap_or_default();
        Ok((entries, number))
    }
}

/// rcgen's reason for an RFC 5280 reason code (`None` for unspecified and unknown codes).
fn reason(code: u8) -> Option<RevocationReason> {
    Some(match code {
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        8 => RevocationReason::RemoveFromCrl,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => return None,
    })
}

/// `number + 1`, big-endian, without leading zero bytes (empty is zero).
fn increment(number: &[u8]) -> Vec<u8> {
    let mut out = strip_zeros(number).to_vec();
    for byte in out.iter_mut().rev() {
        if *byte == 0xff {
            *byte = 0;
        } else {
            *byte += 1;
            return out;
        }
    }
    out.insert(0, 1);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CrlSet, RevocationList};

    #[test]
    fn numbers_count_up_across_bytes() {
        assert_eq!(increment(&[]), vec![1]);
        assert_eq!(increment(&[0, 1]), vec![2]);
        assert_eq!(increment(&[0xff]), vec![1, 0]);
        assert_eq!(increment(&[1, 0xff, 0xff]), vec![2, 0, 0]);
        assert_eq!(crate::crl::number_text(&[1, 0]), "256");
        assert_eq!(
            crate::crl::number_text(&[0x11; 17]),
            format!("0x{}", "11".repeat(17))
        );
    }

    #[test]
    fn a_crl_keeps_its_entries_counts_up_and_loads_against_its_ca() -> Result<(), PkiError> {
        let ca = Ca::generate("crl ca")?;
        let a = ca.issue_agent("web-1", Duration::from_secs(3600))?;
        let b = ca.issue_agent("web-2", Duration::from_secs(3600))?;
        let first = ca.crl(None, &[ca.serial_of(&a.cert_pem)?], DEFAULT_CRL_VALIDITY)?;
        assert_eq!((first.number.as_str(), first.added), ("1", 1));
        let second = ca.crl(
            Some(first.pem.as_bytes()),
            &[ca.serial_of(&b.cert_pem)?, ca.serial_of(&a.cert_pem)?],
            DEFAULT_CRL_VALIDITY,
        )?;
        assert_eq!((second.number.as_str(), second.added), ("2", 1));
        assert_eq!(
            second.revoked,
            vec![
                a.serial_hex().unwrap_or_default(),
                b.serial_hex().unwrap_or_default()
            ]
        );

        let dir = tempfile::tempdir().map_err(|error| PkiError::Write {
            path: "tempdir".into(),
            error,
        })?;
        let ca_path = dir.path().join("ca.pem");
        let crl_path = dir.path().join("ca.crl.pem");
        std::fs::write(&ca_path, ca.cert_pem()).expect("written");
        std::fs::write(&crl_path, &second.pem).expect("written");
        let set = CrlSet::load(std::slice::from_ref(&crl_path), &ca_path).expect("loads");
        assert_eq!(set.crls()[0].number(), Some("2"));
        let list = RevocationList::empty().with_crls(&set);
        let issuer = crate::server::PeerInfo::from_certificate(
            "127.0.0.1:1".parse().expect("addr"),
            Some(&CertificateDer::from_pem_slice(a.cert_pem.as_bytes()).expect("pem")),
        );
        let reason = list
            .check(&issuer.issuer, &issuer.serial, None)
            .expect("revoked by the CRL");
        assert!(reason.contains("number 2, issuer `CN=crl ca"), "{reason}");
        assert!(reason.contains(&crl_path.display().to_string()), "{reason}");
        // The same serial under another issuer is not this CRL's business.
        assert_eq!(list.check(b"another issuer", &issuer.serial, None), None);
        Ok(())
    }

    #[test]
    fn a_crl_or_certificate_of_another_ca_is_refused() -> Result<(), PkiError> {
        let ca = Ca::generate("ours")?;
        let other = Ca::generate("theirs")?;
        let theirs = other.crl(None, &[vec![7]], DEFAULT_CRL_VALIDITY)?;
        let e = ca
            .crl(Some(theirs.pem.as_bytes()), &[], DEFAULT_CRL_VALIDITY)
            .expect_err("signed by another CA");
        assert!(e.to_string().contains("not by this CA `CN=ours"), "{e}");
        let cert = other.issue_agent("h", Duration::from_secs(60))?;
        let e = ca.serial_of(&cert.cert_pem).expect_err("another CA's");
        assert!(e.to_string().contains("issued by `CN=theirs"), "{e}");
        assert!(matches!(
            ca.crl(Some(b"garbage"), &[], DEFAULT_CRL_VALIDITY),
            Err(PkiError::PreviousCrl { .. })
        ));
        assert!(matches!(
            ca.crl(None, &[vec![0, 0]], DEFAULT_CRL_VALIDITY),
            Err(PkiError::InvalidSerial(_))
        ));
        assert!(matches!(
            ca.crl(None, &[], Duration::ZERO),
            Err(PkiError::InvalidCrlValidity(_))
        ));
        Ok(())
    }
}
