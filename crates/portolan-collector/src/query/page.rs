//! Page tokens: opaque to clients, a keyset to the collector.
//!
//! A token holds the key of the last row of the previous page (in the answer's order)
//! and a hash of the request's filters, so that a token is refused for another request
//! instead of silently skipping rows. It is hex text of a small versioned binary form;
//! it carries no secret and needs none: a forged token can only select rows the caller
//! may read anyway.

use std::fmt;

/// The longest token accepted, in characters.
const MAX_TOKEN_CHARS: usize = 8192;
/// Format version, first byte of every token.
const VERSION: u8 = 1;

/// One component of a keyset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// A number.
    Num(u64),
    /// A string.
    Text(String),
}

/// The decoded content of a page token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageToken {
    /// [`query_hash`] of the request the token belongs to.
    pub query: u64,
    /// The key of the last row returned.
    pub key: Vec<Part>,
}

/// Why a page token is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not a token this collector issued (or of another version).
    Malformed,
    /// A token of another request (other filters).
    OtherQuery,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Malformed => f.write_str(
                "`page_token` is not a token this collector issued; send the request without it to start from the first page",
            ),
            TokenError::OtherQuery => f.write_str(
                "`page_token` belongs to a request with other filters; send the same filters as for the first page, or no token to start over",
            ),
        }
    }
}

/// A stable hash (FNV-1a, 64 bits) of a request's filters, given as their text form.
pub(crate) fn query_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl PageToken {
    /// The token's text.
    pub fn encode(&self) -> String {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&self.query.to_be_bytes());
        for part in &self.key {
            match part {
                Part::Num(n) => {
                    bytes.push(b'n');
                    bytes.extend_from_slice(&n.to_be_bytes());
                }
                Part::Text(s) => {
                    bytes.push(b's');
                    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                    bytes.extend_from_slice(&len.to_be_bytes());
                    bytes.extend_from_slice(&s.as_bytes()[..len as usize]);
                }
            }
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Decodes `text` for a request whose filters hash to `query`; `Ok(None)` for an
    /// empty token (the first page).
    pub fn decode(text: &str, query: u64) -> Result<Option<PageToken>, TokenError> {
        if text.is_empty() {
            return Ok(None);
        }
        if text.len() > MAX_TOKEN_CHARS || !text.len().is_multiple_of(2) {
            return Err(TokenError::Malformed);
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or(TokenError::Malformed)?;
        let mut r = Reader(&bytes);
        if r.byte()? != VERSION {
            return Err(TokenError::Malformed);
        }
        let hash = r.u64()?;
        let mut key = Vec::new();
        while !r.0.is_empty() {
            match r.byte()? {
                b'n' => key.push(Part::Num(r.u64()?)),
                b's' => {
                    let len = r.u32()? as usize;
                    let raw = r.take(len)?;
                    let s = String::from_utf8(raw.to_vec()).map_err(|_| TokenError::Malformed)?;
                    key.push(Part::Text(s));
                }
                _ => return Err(TokenError::Malformed),
            }
        }
        if hash != query {
            return Err(TokenError::OtherQuery);
        }
        Ok(Some(PageToken { query: hash, key }))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TokenError> {
        if self.0.len() < n {
            return Err(TokenError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, TokenError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, TokenError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, TokenError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let t = PageToken {
            query: query_hash("sockets:{}"),
            key: vec![
                Part::Text("host-1".into()),
                Part::Num(5432),
                Part::Text("tcp [::]:5432 [::]:0 #77 — ünïcode".into()),
            ],
        };
        let text = t.encode();
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
        assert_eq!(PageToken::decode(&text, t.query), Ok(Some(t.clone())));
        assert_eq!(PageToken::decode("", t.query), Ok(None));
    }

    #[test]
    fn a_token_of_other_filters_is_refused() {
        let t = PageToken {
            query: query_hash("a"),
            key: vec![Part::Num(1)],
        };
        assert_eq!(
            PageToken::decode(&t.encode(), query_hash("b")),
            Err(TokenError::OtherQuery)
        );
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let q = query_hash("q");
        let good = PageToken {
            query: q,
            key: vec![Part::Text("abc".into()), Part::Num(9)],
        }
        .encode();
        for bad in [
            "zz",
            "0",
            "not a token",
            "02",
            &good[..good.len() - 2],
            &format!("{good}73ffffffff"),
            &"ab".repeat(5000),
            "01ffffffffffffffff78",
            "é1",
        ] {
            assert!(PageToken::decode(bad, q).is_err(), "{bad}");
        }
        let message = TokenError::Malformed.to_string();
        assert!(message.starts_with("`page_token`"), "{message}");
    }

    proptest::proptest! {
        #[test]
        fn decoding_anything_never_panics(text in ".{0,64}") {
            let _ = PageToken::decode(&text, 0);
        }

        #[test]
        fn hex_of_anything_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let _ = PageToken::decode(&text, 0);
        }
    }
}
