//! Certificates by enrollment (feature `pki`): the agent's key and certificate signing
//! request, and the collector's [`Signer`], which turns a CSR into a short-lived agent
//! certificate.
//!
//! The signer is an intermediate CA issued by the fleet CA ([`crate::pki::Ca::issue_signer`])
//! and constrained three ways, so that whoever holds its key can make agent certificates
//! and nothing else:
//!
//! - `pathLenConstraint = 0`: it cannot make another CA;
//! - its extended key usage is clientAuth only: a certificate it signs can never
//!   authenticate a server (webpki checks every certificate of the path), so it cannot
//!   impersonate a collector to agents or operators;
//! - the collector accepts operator and collector identities only from certificates a CA
//!   of its `tls.ca` issued directly: an operator or collector SAN in a certificate the
//!   signer made is refused.
//!
//! [`Signer::sign_agent`] never copies anything from the CSR but its public key: the
//! certificate's identity is the host_id the token admitted, its usages are fixed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;

use crate::identity::{Identity, TRUST_DOMAIN_PREFIX, key_sha256};

/// The default lifetime of an enrolled certificate: one day.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// How far back `notBefore` is set, for peers whose clock is a little behind. Short: an
/// enrolled certificate lives a day, and a retirement refuses certificates issued before it.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a CSR was refused or a certificate could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The CSR does not parse, or its signature does not verify with its own key.
    #[error("the certificate signing request is not valid: {0} (let the agent make it)")]
    BadCsr(String),
    /// The CSR asks for an identity other than the host's agent identity.
    #[error(
        "the certificate signing request asks for `{asked}`, but enrollment only issues `{TRUST_DOMAIN_PREFIX}host/<host_id>` for the enrolled host_id"
    )]
    IdentityRequest {
        /// The subject alternative name asked for.
        asked: String,
    },
    /// The CSR asks for a CA certificate.
    #[error(
        "the certificate signing request asks for a CA certificate, which enrollment never issues"
    )]
    CaRequest,
    /// The signer's certificate or key cannot be used.
    #[error(
        "cannot load the enrollment signer from {what}: {reason} (make it with `portolan pki issue-signer`)"
    )]
    LoadSigner {
        /// Which part failed.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The key or certificate could not be generated or signed.
    #[error("cannot make {what}: {reason}")]
    Generate {
        /// What was being made.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

fn generate(what: &'static str) -> impl Fn(rcgen::Error) -> EnrollError {
    move |e| EnrollError::Generate {
        what,
        reason: e.to_string(),
    }
}

/// A new private key for a host (ECDSA P-256), PEM (PKCS#8). It never leaves the host.
pub fn new_key_pem() -> Result<String, EnrollError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map(|k| k.serialize_pem())
        .map_err(generate("the host key"))
}

/// The SHA-256 (hex) of the public key of the private key `key_pem`, as the collector
/// records it.
pub fn key_pem_sha256(key_pem: &str) -> Result<String, EnrollError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| EnrollError::BadCsr(e.to_string()))?;
    Ok(key_sha256(&rcgen::PublicKeyData::subject_public_key_info(
        &key,
    )))
}

/// A certificate signing request (DER) for `host_id`, signed with `key_pem`.
pub fn csr_der(key_pem: &str, host_id: &str) -> Result<Vec<u8>, EnrollError> {
    let key = KeyPair::from_pem(key_pem).map_err(generate("the signing request"))?;
    let identity = Identity::agent(host_id).map_err(|e| EnrollError::BadCsr(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, identity.uri());
    let uri = identity
        .uri()
        .try_into()
        .map_err(generate("the signing request"))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params
        .serialize_request(&key)
        .map(|csr| csr.der().to_vec())
        .map_err(generate("the signing request"))
}

/// What the collector needs to know of a valid CSR.
#[derive(Debug)]
pub struct CheckedCsr {
    csr: CertificateSigningRequestParams,
    /// SHA-256 (hex) of the CSR's public key.
    pub key_sha256: String,
}

/// Parses `der`, verifies its signature with its own key (proof that the requester holds
/// the key) and checks that it asks for nothing but `host_id`'s agent identity.
pub fn check_csr(der: &[u8], host_id: &str) -> Result<CheckedCsr, EnrollError> {
    use x509_parser::prelude::FromDer;
    let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| EnrollError::BadCsr(e.to_string()))?;
    let key_sha256 = key_sha256(parsed.certification_request_info.subject_pki.raw);
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
        .map_err(|e| EnrollError::BadCsr(e.to_string()))?;
    if !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
        return Err(EnrollError::CaRequest);
    }
    let wanted = Identity::agent(host_id)
        .map_err(|e| EnrollError::BadCsr(e.to_string()))?
        .uri();
    for san in &csr.params.subject_alt_names {
        let asked = match san {
            SanType::URI(uri) => uri.as_str().to_owned(),
            SanType::DnsName(name) => format!("DNS:{}", name.as_str()),
            SanType::IpAddress(ip) => format!("IP:{ip}"),
            SanType::Rfc822Name(name) => format!("email:{}", name.as_str()),
            other => format!("{other:?}"),
        };
        if asked != wanted {
            return Err(EnrollError::IdentityRequest { asked });
        }
    }
    // The subject is never copied either, but a request that names another Portolan
    // identity there is refused as clearly as one in its SANs.
    let cn = match csr.params.distinguished_name.get(&DnType::CommonName) {
        Some(rcgen::DnValue::Utf8String(s)) => Some(s.clone()),
        Some(rcgen::DnValue::PrintableString(s)) => Some(s.as_str().to_owned()),
        _ => None,
    };
    if let Some(cn) = cn
        && cn.contains(TRUST_DOMAIN_PREFIX)
        && cn != wanted
    {
        return Err(EnrollError::IdentityRequest { asked: cn });
    }
    Ok(CheckedCsr { csr, key_sha256 })
}

/// The enrollment signer: an intermediate CA the collector signs agent certificates with.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    not_after: i64,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A certificate the signer made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate, then the signer's certificate, PEM.
    pub chain_pem: String,
    /// The certificate's notAfter, Unix seconds.
    pub not_after: i64,
    /// Its serial, as revocation lists name it.
    pub serial_hex: String,
}

impl Signer {
    /// Loads the signer from its certificate and key, both PEM (`portolan pki
    /// issue-signer` writes them). Refuses a certificate that is not a CA restricted to
    /// clientAuth, or a key that is not its own.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Signer, EnrollError> {
        let load = |what, reason: String| EnrollError::LoadSigner { what, reason };
        let key = KeyPair::from_pem(key_pem).map_err(|e| load("its key", e.to_string()))?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| load("its certificate", e.to_string()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| load("its certificate", e.to_string()))?;
        if !x509.is_ca() {
            return Err(load(
                "its certificate",
                "it is not a CA certificate".to_owned(),
            ));
        }
        let path_len_zero = matches!(
            x509.basic_constraints(),
            Ok(Some(bc)) if bc.value.path_len_constraint == Some(0)
        );
        if !path_len_zero {
            return Err(load(
                "its certificate",
                "its path length must be 0, so that it can never make another CA".to_owned(),
            ));
        }
        let client_only = matches!(
            x509.extended_key_usage(),
            Ok(Some(eku)) if eku.value.client_auth && !eku.value.server_auth && !eku.value.any
        );
        if !client_only {
            return Err(load(
                "its certificate",
                "its extended key usage must be clientAuth only, so that it can never sign a server certificate".to_owned(),
            ));
        }
        if x509.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
            return Err(load(
                "its key",
                "the key does not belong to the certificate".to_owned(),
            ));
        }
        let not_after = x509.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| load("its certificate", e.to_string()))?;
        Ok(Signer {
            issuer,
            cert_pem: cert_pem.to_owned(),
            not_after,
        })
    }

    /// The signer's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When the signer's own certificate expires, Unix seconds: no certificate it signs
    /// outlives it.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Signs an agent certificate for `host_id` with the key of `csr`, valid for
    /// `lifetime` from now (never past the signer's own expiry).
    pub fn sign_agent(
        &self,
        csr: CheckedCsr,
        host_id: &str,
        lifetime: Duration,
    ) -> Result<Issued, EnrollError> {
        let identity = Identity::agent(host_id).map_err(|e| EnrollError::BadCsr(e.to_string()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let now = i64::try_from(now).unwrap_or(i64::MAX);
        let lifetime = i64::try_from(lifetime.as_secs().max(1)).unwrap_or(i64::MAX);
        let not_after = now.saturating_add(lifetime).min(self.not_after);
        let not_before = now - CLOCK_SKEW.as_secs() as i64;
        let odt = |secs: i64| {
            OffsetDateTime::from_unix_timestamp(secs).map_err(|e| EnrollError::Generate {
                what: "the certificate",
                reason: e.to_string(),
            })
        };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, identity.uri());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Portolan");
        let uri = identity
            .uri()
            .try_into()
            .map_err(generate("the certificate"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = odt(not_before)?;
        params.not_after = odt(not_after)?;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.csr.public_key,
        };
        let cert = request
            .signed_by(&self.issuer)
            .map_err(generate("the certificate"))?;
        let serial = crate::certificate_serial(cert.der()).map_err(|e| EnrollError::Generate {
            what: "the certificate",
            reason: e.to_string(),
        })?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            not_after,
            serial_hex: crate::serial_hex(&serial),
        })
    }
}
