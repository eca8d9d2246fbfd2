//! The revocation list: certificates (by serial) and identities (by host id or operator
//! name) that must no longer be served, although their certificates still chain to a
//! trusted CA and have not expired.
//!
//! The file is plain text, one entry a line; `#` starts a comment, blank lines are
//! ignored:
//!
//! ```text
//! # laptop of alice, stolen 2025-03-02
//! serial:3A:F2:09:1C:77      # one certificate (hex, colons and case as you like)
//! host:web-1                  # every agent certificate of host `web-1`
//! operator:alice              # every operator certificate named `alice`, any role
//! ```
//!
//! Serials are compared as numbers: `0x00` padding (as DER and `openssl x509 -serial`
//! print them) does not matter. `openssl x509 -noout -serial -in cert.pem` shows a
//! certificate's serial.
//!
//! The X.509 CRLs of `tls.crls` fold into the same list ([`RevocationList::with_crls`]):
//! a CRL revokes a serial of its own issuer only, so its entries match a certificate by
//! issuer name and serial together (two CAs may hand out the same serial), while a
//! `serial:` line of the file matches that serial whoever issued it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::crl::CrlSet;
use crate::error::TlsError;
use crate::identity::{Identity, validate_name};

/// A parsed revocation list.
///
/// Each entry remembers the line it came from, so that a refusal names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    /// Serial (big-endian bytes, leading zero bytes stripped) → line.
    serials: BTreeMap<Vec<u8>, usize>,
    /// Host id → line.
    hosts: BTreeMap<String, usize>,
    /// Operator name → line.
    operators: BTreeMap<String, usize>,
    /// (issuer name DER, serial without leading zero bytes) → index in `crls`.
    crl_serials: BTreeMap<(Vec<u8>, Vec<u8>), usize>,
    /// How refusals name each CRL folded in (see [`crate::Crl::describe`]).
    crls: Vec<String>,
}

/// Why a revocation list could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason} (expected `serial:<hex>`, `host:<host_id>` or `operator:<name>`)")]
pub struct RevocationParseError {
    /// The line, starting at 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl RevocationList {
    /// An empty list: nothing is revoked.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses the text of a revocation file, refusing it whole at its first bad line (a
    /// half-read deny list would silently let someone in).
    pub fn parse(text: &str) -> Result<Self, RevocationParseError> {
        let mut list = RevocationList::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let entry = raw.split('#').next().unwrap_or_default().trim();
            if entry.is_empty() {
                continue;
            }
            let bad = |reason: String| RevocationParseError { line, reason };
            let Some((kind, value)) = entry.split_once(':') else {
                return Err(bad(format!("`{entry}` has no `kind:` prefix")));
            };
            let value = value.trim();
            match kind.trim() {
                "serial" => {
                    let serial = parse_serial(value).map_err(bad)?;
                    list.serials.insert(serial, line);
                }
                "host" => {
                    validate_name("host_id", value).map_err(|e| bad(e.to_string()))?;
                    list.hosts.insert(value.to_owned(), line);
                }
                "operator" => {
                    validate_name("name", value).map_err(|e| bad(e.to_string()))?;
                    list.operators.insert(value.to_owned(), line);
                }
                other => return Err(bad(format!("unknown kind `{other}`"))),
            }
        }
        Ok(list)
    }

    /// Reads and parses the revocation file at `path` (configuration key `tls.revoked`).
    pub fn load(path: &Path) -> Result<Self, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|error| TlsError::Read {
            key: "tls.revoked",
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text).map_err(|error| TlsError::Revocation {
            path: path.to_owned(),
            error,
        })
    }

    /// The list with every entry of the CRLs of `crls` added: a certificate whose issuer
    /// and serial a CRL lists is revoked.
    pub fn with_crls(mut self, crls: &CrlSet) -> Self {
        for crl in crls.crls() {
            let index = self.crls.len();
            self.crls.push(crl.describe());
            for serial in crl.serials() {
                self.crl_serials
                    .entry((crl.issuer().to_vec(), serial.to_vec()))
                    .or_insert(index);
            }
        }
        self
    }

    /// How many entries the list holds (lines of the file and CRL entries).
    pub fn len(&self) -> usize {
        self.serials.len() + self.hosts.len() + self.operators.len() + self.crl_serials.len()
    }

    /// How many of the entries come from CRLs.
    pub fn crl_entries(&self) -> usize {
        self.crl_serials.len()
    }

    /// Whether the list revokes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Why a peer with a certificate of `serial`, issued by `issuer` (the DER of the
    /// issuer's name, see [`PeerInfo::issuer`](crate::PeerInfo::issuer)), naming
    /// `identity`, is revoked, or `None` when it is not. The reason names the entry and
    /// where it is, e.g. ``certificate serial 3af2 is revoked (`tls.revoked` line 2)`` or
    /// ``certificate serial 3af2 is revoked (CRL `/etc/portolan/ca.crl.pem` (number 3, issuer `CN=…`))``.
    pub fn check(
        &self,
        issuer: &[u8],
        serial: &[u8],
        identity: Option<&Identity>,
    ) -> Option<String> {
        let serial = strip_zeros(serial);
        if let Some(line) = self.serials.get(serial) {
            return Some(format!(
                "certificate serial {} is revoked (`tls.revoked` line {line})",
                serial_hex(serial)
            ));
        }
        if !self.crl_serials.is_empty()
            && let Some(crl) = self
                .crl_serials
                .get(&(issuer.to_vec(), serial.to_vec()))
                .and_then(|index| self.crls.get(*index))
        {
            return Some(format!(
                "certificate serial {} is revoked ({crl})",
                serial_hex(serial)
            ));
        }
        match identity {
            Some(Identity::Agent { host_id }) => self
                .hosts
                .get(host_id)
                .map(|line| format!("host `{host_id}` is revoked (`tls.revoked` line {line})")),
            Some(Identity::Operator { name, .. }) => self
                .operators
                .get(name)
                .map(|line| format!("operator `{name}` is revoked (`tls.revoked` line {line})")),
            _ => None,
        }
    }
}

/// A serial as lowercase hex without leading zeros (`0` for zero), as logs and refusals
/// print it.
pub fn serial_hex(serial: &[u8]) -> String {
    let serial = strip_zeros(serial);
    if serial.is_empty() {
        return "0".to_owned();
    }
    let mut out = String::with_capacity(serial.len() * 2);
    for b in serial {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The serial without its leading zero bytes, as lists compare serials.
pub(crate) fn strip_zeros(serial: &[u8]) -> &[u8] {
    let first = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    &serial[first..]
}

/// `3A:F2:09`, `3af209`, `0x3af209` → bytes without leading zeros.
pub(crate) fn parse_serial(value: &str) -> Result<Vec<u8>, String> {
    let digits: String = value
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if digits.is_empty() || digits.len() > 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "serial `{value}` is not hexadecimal (at most 32 bytes, e.g. `3A:F2:09` or `3af209`)"
        ));
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|e| format!("serial `{value}`: {e}"))?;
    Ok(strip_zeros(&bytes).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::OperatorRole;

    #[test]
    fn entries_match_serials_hosts_and_operators() {
        let list = RevocationList::parse(
            "# comment\n\nserial:00:3A:f2  # padded, mixed case\nhost:web-1\noperator:alice\n",
        )
        .expect("valid list");
        assert_eq!(list.len(), 3);
        let web2 = Identity::agent("web-2").expect("valid");
        assert_eq!(
            list.check(&[], &[0x3a, 0xf2], Some(&web2)).as_deref(),
            Some("certificate serial 3af2 is revoked (`tls.revoked` line 3)")
        );
        assert_eq!(
            list.check(&[], &[0x00, 0x3a, 0xf2], None).as_deref(),
            Some("certificate serial 3af2 is revoked (`tls.revoked` line 3)")
        );
        assert_eq!(list.check(&[], &[0x3a, 0xf3], Some(&web2)), None);
        let web1 = Identity::agent("web-1").expect("valid");
        assert_eq!(
            list.check(&[], &[1], Some(&web1)).as_deref(),
            Some("host `web-1` is revoked (`tls.revoked` line 4)")
        );
        let alice = Identity::operator("alice", OperatorRole::Reader).expect("valid");
        assert!(list.check(&[], &[1], Some(&alice)).is_some());
        // A host id does not revoke an operator of the same name, nor the reverse.
        let op_web1 = Identity::operator("web-1", OperatorRole::Admin).expect("valid");
        assert_eq!(list.check(&[], &[1], Some(&op_web1)), None);
        let agent_alice = Identity::agent("alice").expect("valid");
        assert_eq!(list.check(&[], &[1], Some(&agent_alice)), None);
    }

    #[test]
    fn a_bad_line_refuses_the_whole_file_and_names_the_line() {
        for (text, line, what) in [
            ("host:ok\n3af2\n", 2, "no `kind:` prefix"),
            ("serial:xyz\n", 1, "not hexadecimal"),
            ("serial:\n", 1, "not hexadecimal"),
            ("\n\nuser:bob\n", 3, "unknown kind `user`"),
            ("host:a/b\n", 1, "invalid host_id"),
        ] {
            let e = RevocationList::parse(text).expect_err(text);
            assert_eq!(e.line, line, "{text}");
            assert!(e.to_string().contains(what), "{text}: {e}");
        }
        assert!(RevocationList::parse("").expect("empty").is_empty());
    }

    #[test]
    fn serials_print_as_lowercase_hex_without_padding() {
        assert_eq!(serial_hex(&[0, 0x0a, 0xbc]), "0abc");
        assert_eq!(serial_hex(&[]), "0");
        assert_eq!(parse_serial("0xABC").expect("hex"), vec![0x0a, 0xbc]);
    }
}
