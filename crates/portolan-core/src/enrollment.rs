//! Enrollment decisions, pure: whether a bootstrap token admits a host, what a host's
//! known keys make of a new request, and whether a certificate may speak for its host.
//!
//! A host's identity is bound to the public key of its first enrollment (the SHA-256 of
//! its SubjectPublicKeyInfo, hex). The collector keeps one [`KeyRecord`] per (host, key)
//! and asks this module three questions:
//!
//! - [`check_token`]: does this token admit this host_id now?
//! - [`decide`]: given the host's keys, is an enrollment with this key issued, held for
//!   approval, or refused?
//! - [`admit`]: given the host's keys, may a certificate with this key and `notBefore`
//!   speak for the host (on every call and for open streams)?
//!
//! Retired keys are history: a retired host's id is free to enrol again, and certificates
//! of its retired keys (and hand-issued ones older than the retirement) are refused.

use std::fmt;

use crate::named_enum;

/// Where a host key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyState {
    /// The host's key: its certificates are issued, renewed and accepted.
    Bound,
    /// Waiting for an admin's approval; nothing is issued.
    Pending,
    /// Refused by an admin; its enrollments are refused.
    Denied,
    /// Was bound, until an admin approved another key for the host.
    Superseded,
    /// The host was retired: refused, and the host_id is free again.
    Retired,
}

impl KeyState {
    /// Every state, in lifecycle order.
    pub const ALL: [KeyState; 5] = [
        KeyState::Bound,
        KeyState::Pending,
        KeyState::Denied,
        KeyState::Superseded,
        KeyState::Retired,
    ];

    /// The state's name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Bound => "bound",
            KeyState::Pending => "pending",
            KeyState::Denied => "denied",
            KeyState::Superseded => "superseded",
            KeyState::Retired => "retired",
        }
    }
}

named_enum!(KeyState, "host key state");

/// What the collector knows of one key of one host (the latest record of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The host.
    pub host_id: String,
    /// SHA-256 of the key's SubjectPublicKeyInfo, lowercase hex; empty for the record of
    /// a retirement of a host that had no enrolled key.
    pub key_sha256: String,
    /// Where it stands.
    pub state: KeyState,
    /// When the last decision about it was taken, Unix seconds.
    pub decided_at: i64,
}

/// A bootstrap token, as far as admitting a host goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRule {
    /// Glob patterns (`*`: any run of characters) the host_id must match; empty: any.
    pub host_patterns: Vec<String>,
    /// Unix seconds after which the token admits nobody.
    pub expires_at: i64,
    /// How many host keys it may bind; 0: unlimited.
    pub max_uses: u32,
    /// How many it bound so far.
    pub uses: u32,
    /// Revoked by an admin.
    pub revoked: bool,
}

/// Why a token does not admit a host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenRefusal {
    /// Past its expiry.
    #[error(
        "the token expired at {expires_at} (Unix seconds): create a new one with `portolan token create`"
    )]
    Expired {
        /// When it expired.
        expires_at: i64,
    },
    /// Every use is spent.
    #[error(
        "the token is used up ({max_uses} of {max_uses} uses): create a new one with `portolan token create`"
    )]
    UsedUp {
        /// Its number of uses.
        max_uses: u32,
    },
    /// An admin revoked it.
    #[error("the token was revoked: create a new one with `portolan token create`")]
    Revoked,
    /// The host_id matches none of its patterns.
    #[error("host_id `{host_id}` matches none of the token's patterns ({}): use a token made for this host", .patterns.join(", "))]
    HostOutside {
        /// The host_id asked for.
        host_id: String,
        /// The token's patterns.
        patterns: Vec<String>,
    },
}

/// Whether `token` admits `host_id` at `now`. `new_binding`: the enrollment would bind a
/// new key (or record a new request for approval).
///
/// Expiry and uses limit new keys only: a host whose key is bound already proves that key
/// with its CSR, and may enrol again with its token while the token is not revoked, as when its certificate expired during a long collector outage.
/// A revoked token admits nobody.
pub fn check_token(
    token: &TokenRule,
    host_id: &str,
    now: i64,
    new_binding: bool,
) -> Result<(), TokenRefusal> {
    if token.revoked {
        return Err(TokenRefusal::Revoked);
    }
    if new_binding && now >= token.expires_at {
        return Err(TokenRefusal::Expired {
            expires_at: token.expires_at,
        });
    }
    if !token.host_patterns.is_empty()
        && !token.host_patterns.iter().any(|p| glob_matches(p, host_id))
    {
        return Err(TokenRefusal::HostOutside {
            host_id: host_id.to_owned(),
            patterns: token.host_patterns.clone(),
        });
    }
    if new_binding && token.max_uses != 0 && token.uses >= token.max_uses {
        return Err(TokenRefusal::UsedUp {
            max_uses: token.max_uses,
        });
    }
    Ok(())
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters
/// (possibly empty) and every other character for itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    // Iterative matching with one backtrack point: the last `*` seen.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// How an enrollment with a second key for a bound host is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecondKey {
    /// Refused: the host must be retired first (or its key approved by hand).
    #[default]
    Refuse,
    /// Held for an admin's approval.
    Hold,
}

impl SecondKey {
    /// Every policy.
    pub const ALL: [SecondKey; 2] = [SecondKey::Refuse, SecondKey::Hold];

    /// The policy's name in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SecondKey::Refuse => "refuse",
            SecondKey::Hold => "hold",
        }
    }
}

named_enum!(SecondKey, "second-key policy");

/// The operator's enrollment policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Policy {
    /// Every new host waits for an admin's approval (as Puppet's and Salt's key
    /// management do without autosigning).
    pub strict: bool,
    /// What a second key for a bound host gets.
    pub second_key: SecondKey,
}

/// What an enrollment request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A certificate. `new_binding`: the key becomes the host's (a token use is spent).
    Issue {
        /// Whether this binds the key now.
        new_binding: bool,
    },
    /// Nothing yet: an admin must approve. `new_request`: the key was not pending before
    /// (a token use is spent, so that a token cannot flood the approval queue).
    Hold {
        /// Whether this records the request now.
        new_request: bool,
    },
    /// Refused.
    Refuse(KeyRefusal),
}

/// Why a key may not enrol, or a certificate may not speak for its host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRefusal {
    /// The host is bound to another key.
    #[error(
        "host `{host_id}` is enrolled with another key ({bound}): an admin must retire the host (`portolan retire {host_id}`) or approve this key"
    )]
    BoundToAnotherKey {
        /// The host.
        host_id: String,
        /// The bound key's SHA-256 (hex, first 16 characters).
        bound: String,
    },
    /// An admin denied this key.
    #[error(
        "this key of host `{host_id}` was denied by an admin: it enrols again only once an admin retires the host (`portolan retire {host_id}`)"
    )]
    Denied {
        /// The host.
        host_id: String,
    },
    /// An admin approved another key for the host.
    #[error(
        "another key of host `{host_id}` was approved in place of this one: this key enrols again only once an admin retires the host (`portolan retire {host_id}`)"
    )]
    Superseded {
        /// The host.
        host_id: String,
    },
    /// The host (or this key of it) was retired.
    #[error("host `{host_id}` was retired at {at} (Unix seconds): enrol it again with a token")]
    Retired {
        /// The host.
        host_id: String,
        /// When.
        at: i64,
    },
    /// The key waits for an admin's approval.
    #[error(
        "this key of host `{host_id}` waits for an admin's approval (`portolan approve {host_id}`)"
    )]
    Pending {
        /// The host.
        host_id: String,
    },
}

/// The record of `key` among `keys` (all of one host), if there is one.
fn record_of<'a>(keys: &'a [KeyRecord], key: &str) -> Option<&'a KeyRecord> {
    keys.iter().find(|k| k.key_sha256 == key)
}

/// The key that speaks for the host: its bound key, or, should two replicas each have
/// bound one at the same instant, the first bound (then by key), so that one only ever
/// speaks.
fn bound_key(keys: &[KeyRecord]) -> Option<&KeyRecord> {
    keys.iter()
        .filter(|k| k.state == KeyState::Bound)
        .min_by(|a, b| (a.decided_at, &a.key_sha256).cmp(&(b.decided_at, &b.key_sha256)))
}

fn short(key: &str) -> String {
    key.chars().take(16).collect()
}

/// What an enrollment of `host_id` with `key` gets, given the host's known `keys` and the
/// operator's `policy`. The token was checked already ([`check_token`]).
pub fn decide(host_id: &str, keys: &[KeyRecord], key: &str, policy: Policy) -> Decision {
    match record_of(keys, key).map(|r| r.state) {
        Some(KeyState::Bound) if bound_key(keys).is_some_and(|b| b.key_sha256 == key) => {
            return Decision::Issue { new_binding: false };
        }
        Some(KeyState::Bound) => {
            return Decision::Refuse(KeyRefusal::BoundToAnotherKey {
                host_id: host_id.to_owned(),
                bound: bound_key(keys)
                    .map(|b| short(&b.key_sha256))
                    .unwrap_or_default(),
            });
        }
        Some(KeyState::Pending) => return Decision::Hold { new_request: false },
        Some(KeyState::Denied) => {
            return Decision::Refuse(KeyRefusal::Denied {
                host_id: host_id.to_owned(),
            });
        }
        Some(KeyState::Superseded) => {
            return Decision::Refuse(KeyRefusal::Superseded {
                host_id: host_id.to_owned(),
            });
        }
        // A retired key enrols afresh, like any new key of a free host_id.
        Some(KeyState::Retired) | None => {}
    }
    if let Some(bound) = bound_key(keys) {
        return match policy.second_key {
            SecondKey::Hold => Decision::Hold { new_request: true },
            SecondKey::Refuse => Decision::Refuse(KeyRefusal::BoundToAnotherKey {
                host_id: host_id.to_owned(),
                bound: short(&bound.key_sha256),
            }),
        };
    }
    if policy.strict {
        Decision::Hold { new_request: true }
    } else {
        Decision::Issue { new_binding: true }
    }
}

/// When the host was last retired, if ever.
pub fn retired_at(keys: &[KeyRecord]) -> Option<i64> {
    keys.iter()
        .filter(|k| k.state == KeyState::Retired)
        .map(|k| k.decided_at)
        .max()
}

/// Whether a host whose last retirement was at `retired_at` and that last reported at
/// `last_seen` (Unix seconds, `None`: never) is retired now: retired, and silent since.
/// A host that reports again after its retirement (it enrolled again) is not.
pub fn retired_since(retired_at: Option<i64>, last_seen: Option<i64>) -> Option<i64> {
    let at = retired_at?;
    match last_seen {
        Some(seen) if seen > at => None,
        _ => Some(at),
    }
}

/// Whether a certificate of `host_id` with `key`, valid from `not_before` (Unix seconds),
/// may speak for the host, given the host's known `keys`.
///
/// A key with a record must be bound. A key without one (a certificate issued by hand
/// with `portolan pki issue-agent`) is accepted unless the host is bound to another key,
/// or was retired after the certificate was issued.
pub fn admit(
    host_id: &str,
    keys: &[KeyRecord],
    key: &str,
    not_before: i64,
) -> Result<(), KeyRefusal> {
    let host_id = host_id.to_owned();
    match record_of(keys, key).map(|r| (r.state, r.decided_at)) {
        Some((KeyState::Bound, _)) => match bound_key(keys) {
            Some(first) if first.key_sha256 != key => Err(KeyRefusal::BoundToAnotherKey {
                host_id,
                bound: short(&first.key_sha256),
            }),
            _ => Ok(()),
        },
        Some((KeyState::Pending, _)) => Err(KeyRefusal::Pending { host_id }),
        Some((KeyState::Denied, _)) => Err(KeyRefusal::Denied { host_id }),
        Some((KeyState::Superseded, _)) => Err(KeyRefusal::Superseded { host_id }),
        Some((KeyState::Retired, at)) => Err(KeyRefusal::Retired { host_id, at }),
        None => {
            if let Some(bound) = bound_key(keys) {
                return Err(KeyRefusal::BoundToAnotherKey {
                    host_id,
                    bound: short(&bound.key_sha256),
                });
            }
            match retired_at(keys) {
                Some(at) if not_before <= at => Err(KeyRefusal::Retired { host_id, at }),
                _ => Ok(()),
            }
        }
    }
}

/// When a certificate received at `received` (Unix seconds) and valid until `not_after`
/// is due for renewal: at two thirds of the time it had left when it arrived, so that a
/// third of its life is left for retries.
pub fn renewal_due(received: i64, not_after: i64) -> i64 {
    let life = not_after.saturating_sub(received).max(0);
    received.saturating_add(life.saturating_mul(2) / 3)
}

/// The longest wait between two renewal attempts at `now` for a certificate valid until
/// `not_after` (seconds): a quarter of what is left, between 1 second and 5 minutes, so
/// that several attempts fit before it expires.
pub fn renewal_retry_cap(now: i64, not_after: i64) -> i64 {
    (not_after.saturating_sub(now) / 4).clamp(1, 300)
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Issue { .. } => f.write_str("issued"),
            Decision::Hold { .. } => f.write_str("pending"),
            Decision::Refuse(r) => write!(f, "refused: {r}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(key: &str, state: KeyState, at: i64) -> KeyRecord {
        KeyRecord {
            host_id: "h".into(),
            key_sha256: key.into(),
            state,
            decided_at: at,
        }
    }

    fn token() -> TokenRule {
        TokenRule {
            host_patterns: vec!["web-*".into(), "db-?".into()],
            expires_at: 1000,
            max_uses: 2,
            uses: 0,
            revoked: false,
        }
    }

    #[test]
    fn globs_match_runs_and_literals() {
        assert!(glob_matches("web-*", "web-1"));
        assert!(glob_matches("web-*", "web-"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*-prod-*", "eu-prod-web-1"));
        assert!(glob_matches("a*b*c", "aXbYbZc"));
        assert!(!glob_matches("web-*", "db-1"));
        assert!(!glob_matches("a*b*c", "aXbYbZ"));
        assert!(!glob_matches("web", "web-1"));
        // `?` is not special: host_ids cannot contain it, so the pattern matches nothing.
        assert!(!glob_matches("db-?", "db-1"));
    }

    #[test]
    fn a_token_admits_within_its_rules_only() {
        let t = token();
        assert_eq!(check_token(&t, "web-1", 10, true), Ok(()));
        assert!(matches!(
            check_token(&t, "mail-1", 10, true),
            Err(TokenRefusal::HostOutside { .. })
        ));
        assert!(matches!(
            check_token(&t, "web-1", 1000, true),
            Err(TokenRefusal::Expired { expires_at: 1000 })
        ));
        // A bound key enrols again after expiry.
        assert_eq!(check_token(&t, "web-1", 1000, false), Ok(()));
        let used = TokenRule { uses: 2, ..token() };
        assert!(matches!(
            check_token(&used, "web-1", 10, true),
            Err(TokenRefusal::UsedUp { max_uses: 2 })
        ));
        // Re-enrolling a bound key spends no use.
        assert_eq!(check_token(&used, "web-1", 10, false), Ok(()));
        let revoked = TokenRule {
            revoked: true,
            ..token()
        };
        assert_eq!(
            check_token(&revoked, "web-1", 10, false),
            Err(TokenRefusal::Revoked)
        );
        let unlimited = TokenRule {
            max_uses: 0,
            uses: 1_000_000,
            host_patterns: vec![],
            ..token()
        };
        assert_eq!(check_token(&unlimited, "anything", 10, true), Ok(()));
    }

    #[test]
    fn first_key_binds_second_is_refused_or_held() {
        let open = Policy::default();
        assert_eq!(
            decide("h", &[], "k1", open),
            Decision::Issue { new_binding: true }
        );
        let bound = [rec("k1", KeyState::Bound, 1)];
        assert_eq!(
            decide("h", &bound, "k1", open),
            Decision::Issue { new_binding: false }
        );
        assert!(matches!(
            decide("h", &bound, "k2", open),
            Decision::Refuse(KeyRefusal::BoundToAnotherKey { .. })
        ));
        let hold = Policy {
            second_key: SecondKey::Hold,
            ..open
        };
        assert_eq!(
            decide("h", &bound, "k2", hold),
            Decision::Hold { new_request: true }
        );
        let pending = [
            rec("k1", KeyState::Bound, 1),
            rec("k2", KeyState::Pending, 2),
        ];
        assert_eq!(
            decide("h", &pending, "k2", hold),
            Decision::Hold { new_request: false }
        );
    }

    #[test]
    fn strict_holds_every_new_host() {
        let strict = Policy {
            strict: true,
            ..Policy::default()
        };
        assert_eq!(
            decide("h", &[], "k1", strict),
            Decision::Hold { new_request: true }
        );
        // Once approved (bound), it is issued.
        assert_eq!(
            decide("h", &[rec("k1", KeyState::Bound, 1)], "k1", strict),
            Decision::Issue { new_binding: false }
        );
    }

    #[test]
    fn retirement_frees_the_host_id_and_refuses_older_certificates() {
        let retired = [rec("k1", KeyState::Retired, 100)];
        assert_eq!(
            decide("h", &retired, "k2", Policy::default()),
            Decision::Issue { new_binding: true }
        );
        assert!(matches!(
            admit("h", &retired, "k1", 50),
            Err(KeyRefusal::Retired { at: 100, .. })
        ));
        // A hand-issued certificate from before the retirement is refused, a newer one not.
        assert!(admit("h", &retired, "hand", 99).is_err());
        assert_eq!(admit("h", &retired, "hand", 101), Ok(()));
        // A host never enrolled: hand-issued certificates speak for it.
        assert_eq!(admit("h", &[], "hand", 0), Ok(()));
        // A host retired without any key (hand-issued only).
        let record = [rec("", KeyState::Retired, 100)];
        assert!(admit("h", &record, "hand", 10).is_err());
    }

    #[test]
    fn only_the_bound_key_speaks_for_an_enrolled_host() {
        let keys = [
            rec("k1", KeyState::Superseded, 1),
            rec("k2", KeyState::Bound, 2),
            rec("k3", KeyState::Denied, 3),
            rec("k4", KeyState::Pending, 4),
        ];
        assert_eq!(admit("h", &keys, "k2", 0), Ok(()));
        for key in ["k1", "k3", "k4", "hand"] {
            assert!(admit("h", &keys, key, 10).is_err(), "{key}");
        }
    }

    fn state() -> impl Strategy<Value = KeyState> {
        prop::sample::select(KeyState::ALL.to_vec())
    }

    #[test]
    fn a_host_is_retired_until_it_reports_again() {
        assert_eq!(retired_since(None, Some(5)), None);
        assert_eq!(retired_since(Some(10), Some(5)), Some(10));
        assert_eq!(retired_since(Some(10), Some(10)), Some(10));
        assert_eq!(retired_since(Some(10), None), Some(10));
        assert_eq!(retired_since(Some(10), Some(11)), None);
    }

    #[test]
    fn renewal_is_due_at_two_thirds() {
        assert_eq!(renewal_due(0, 86_400), 57_600);
        assert_eq!(renewal_due(100, 109), 106);
        assert_eq!(
            renewal_due(100, 50),
            100,
            "an expired certificate is due now"
        );
        assert_eq!(renewal_retry_cap(0, 86_400), 300);
        assert_eq!(renewal_retry_cap(0, 8), 2);
        assert_eq!(renewal_retry_cap(10, 5), 1);
    }

    proptest! {
        /// Renewal is due after the certificate arrived and before it expires, leaving at
        /// least a third of its life for retries.
        #[test]
        fn renewal_leaves_a_third_for_retries(received in 0i64..4_000_000_000, life in 0i64..10_000_000) {
            let due = renewal_due(received, received + life);
            prop_assert!(due >= received && due <= received + life);
            prop_assert!(received + life - due >= life / 3);
        }

        /// A literal pattern (no `*`) matches exactly itself; `*` alone matches anything;
        /// a pattern built from a text by replacing any slice with `*` matches that text.
        #[test]
        fn glob_laws(text in "[a-z0-9.-]{0,12}", cut in (0usize..13, 0usize..13), other in "[a-z0-9.-]{0,12}") {
            prop_assert!(glob_matches("*", &text));
            prop_assert_eq!(glob_matches(&text, &other), text == other);
            let (a, b) = (cut.0.min(text.len()), cut.1.min(text.len()));
            let (a, b) = (a.min(b), a.max(b));
            let pattern = format!("{}*{}", &text[..a], &text[b..]);
            prop_assert!(glob_matches(&pattern, &text));
        }

        /// Whatever the host's keys: a key is issued only if it is bound or binds now with
        /// no other key bound; at most one key of a host ever speaks for it.
        #[test]
        fn one_key_speaks_for_a_host(
            states in prop::collection::vec(state(), 0..5),
            strict in any::<bool>(),
            hold in any::<bool>(),
            asked in 0usize..6,
        ) {
            // Two bound keys happen when two replicas bind at the same instant: the first
            // bound still speaks alone.
            let keys: Vec<KeyRecord> = states.iter().enumerate()
                .map(|(i, s)| rec(&format!("k{i}"), *s, (i as i64) / 2)).collect();
            let policy = Policy { strict, second_key: if hold { SecondKey::Hold } else { SecondKey::Refuse } };
            let key = format!("k{asked}");
            let decision = decide("h", &keys, &key, policy);
            let speaking = bound_key(&keys).map(|k| k.key_sha256.clone());
            if let Decision::Issue { new_binding } = decision {
                prop_assert!(speaking.is_none() || speaking == Some(key.clone()));
                if new_binding { prop_assert!(!strict); }
            }
            let admitted: Vec<&KeyRecord> = keys.iter()
                .filter(|k| admit("h", &keys, &k.key_sha256, 1_000).is_ok()).collect();
            prop_assert!(admitted.len() <= 1);
            if let (Some(one), Some(speaking)) = (admitted.first(), speaking) {
                prop_assert_eq!(&one.key_sha256, &speaking);
            }
        }
    }
}
