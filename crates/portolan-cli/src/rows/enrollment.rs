//! `portolan token list` and `portolan keys`: enrollment tokens and host keys.

use std::collections::BTreeMap;

use portolan_proto::v1 as pb;
use serde::Serialize;

use super::{labels, labels_text};
use crate::output::{Column, Paint, Record};

/// One enrollment token (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRow {
    /// Public id (the part before the `.`).
    pub id: String,
    /// Host_id patterns it admits; empty: any.
    pub host_patterns: Vec<String>,
    /// Labels its hosts carry.
    pub labels: BTreeMap<String, String>,
    /// Keys it bound, and its limit (0: unlimited).
    pub uses: u32,
    /// See `uses`.
    pub max_uses: u32,
    /// Unix seconds.
    pub created_unix: i64,
    /// Unix seconds.
    pub expires_unix: i64,
    /// Revoked by an admin.
    pub revoked: bool,
    /// The admin who created it.
    pub created_by: String,
    /// Free text.
    pub description: String,
}

impl From<&pb::EnrollmentToken> for TokenRow {
    fn from(t: &pb::EnrollmentToken) -> Self {
        TokenRow {
            id: t.id.clone(),
            host_patterns: t.host_patterns.clone(),
            labels: labels(&t.labels),
            uses: t.uses,
            max_uses: t.max_uses,
            created_unix: t.created_at,
            expires_unix: t.expires_at,
            revoked: t.revoked,
            created_by: t.created_by.clone(),
            description: t.description.clone(),
        }
    }
}

impl Record for TokenRow {
    const COLUMNS: &'static [Column<Self>] = &[
        Column::<Self>::key("ID", "id", |r, _| r.id.clone()),
        Column::<Self>::key("HOSTS", "host_patterns", |r, ctx| {
            match (r.host_patterns.is_empty(), ctx.machine()) {
                (true, false) => "*".into(),
                _ => r.host_patterns.join(" "),
            }
        }),
        Column::<Self>::key("USES", "uses", |r, ctx| match (r.max_uses, ctx.machine()) {
            (_, true) => r.uses.to_string(),
            (0, false) => format!("{}/∞", r.uses),
            (max, false) => format!("{}/{max}", r.uses),
        }),
        Column::<Self>::key("EXPIRES", "expires", |r, ctx| ctx.deadline(r.expires_unix)),
        Column::<Self>::key("REVOKED", "revoked", |r, ctx| {
            match (ctx.machine(), r.revoked) {
                (true, revoked) => revoked.to_string(),
                (false, true) => "revoked".into(),
                (false, false) => String::new(),
            }
        })
        .paint(|r| r.revoked.then_some(Paint::Red)),
        Column::<Self>::free("LABELS", "labels", 8, |r, _| labels_text(&r.labels)),
        Column::<Self>::key("MAX USES", "max_uses", |r, _| r.max_uses.to_string()).wide(),
        Column::<Self>::key("CREATED", "created", |r, ctx| ctx.time(r.created_unix)).wide(),
        Column::<Self>::key("BY", "created_by", |r, _| r.created_by.clone()).wide(),
        Column::<Self>::free("DESCRIPTION", "description", 8, |r, _| {
            r.description.clone()
        })
        .wide(),
    ];
}

/// One key of one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostKeyRow {
    /// The host.
    pub host_id: String,
    /// SHA-256 of the key, hex (empty for the record of a retirement of a host that had
    /// no enrolled key).
    pub key_sha256: String,
    /// `bound`, `pending`, `denied`, `superseded` or `retired`.
    pub state: String,
    /// The token it enrolled with.
    pub token_id: String,
    /// Labels the token gave the host.
    pub labels: BTreeMap<String, String>,
    /// Unix seconds of its first request.
    pub requested_unix: i64,
    /// Unix seconds of the last decision.
    pub decided_unix: i64,
    /// Who decided.
    pub decided_by: String,
}

impl From<&pb::HostKey> for HostKeyRow {
    fn from(k: &pb::HostKey) -> Self {
        HostKeyRow {
            host_id: k.host_id.clone(),
            key_sha256: k.key_sha256.clone(),
            state: k.state.clone(),
            token_id: k.token_id.clone(),
            labels: labels(&k.labels),
            requested_unix: k.requested_at,
            decided_unix: k.decided_at,
            decided_by: k.decided_by.clone(),
        }
    }
}

impl Record for HostKeyRow {
    const COLUMNS: &'static [Column<Self>] = &[
        Column::<Self>::key("HOST ID", "host_id", |r, _| r.host_id.clone()),
        Column::<Self>::key("KEY", "key_sha256", |r, ctx| {
            if ctx.machine() || r.key_sha256.len() <= 16 {
                r.key_sha256.clone()
            } else {
                r.key_sha256[..16].to_owned()
            }
        }),
        Column::<Self>::key("STATE", "state", |r, _| r.state.clone()).paint(|r| {
            match r.state.as_str() {
                "pending" => Some(Paint::Yellow),
                "denied" | "retired" | "superseded" => Some(Paint::Dim),
                _ => None,
            }
        }),
        Column::<Self>::key("TOKEN", "token_id", |r, _| r.token_id.clone()),
        Column::<Self>::key("REQUESTED", "requested", |r, ctx| {
            ctx.time(r.requested_unix)
        }),
        Column::<Self>::key("DECIDED", "decided", |r, ctx| ctx.time(r.decided_unix)),
        Column::<Self>::key("BY", "decided_by", |r, _| r.decided_by.clone()).wide(),
        Column::<Self>::free("LABELS", "labels", 8, |r, _| labels_text(&r.labels)).wide(),
    ];
}
