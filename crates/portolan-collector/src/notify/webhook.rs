//! Generic JSON webhooks: one `POST` per finding that opened, reopened or resolved, in
//! the order they happened, with the configured headers and
//! `Content-Type: application/json`.
//!
//! The document (version 1; a change of shape that can break a reader bumps `version`,
//! while new fields may be added within a version):
//!
//! ```json
//! {
//!   "version": 1,
//!   "id": "9F2C…-opened-1738324800",
//!   "event": "opened",
//!   "at": "2025-01-31T12:00:00Z",
//!   "link": null,
//!   "finding": {
//!     "rule_id": "database-exposed",
//!     "fingerprint": "9F2C…",
//!     "severity": "high",
//!     "host_id": "4c4c4544…",
//!     "hostname": "db-1",
//!     "subject": "tcp 0.0.0.0:5432 (postgres)",
//!     "evidence": "port=5432 scope=wildcard",
//!     "description": "A database port listens on a public or wildcard address",
//!     "status": "open",
//!     "first_seen": "2025-01-31T12:00:00Z",
//!     "last_seen": "2025-01-31T12:00:00Z",
//!     "resolved_at": null,
//!     "reopened": 0
//!   }
//! }
//! ```
//!
//! - `event`: `opened` (first time), `reopened` (again after being resolved), `resolved`.
//! - `id`: the same for every delivery of one event (retries included): deduplicate on it.
//! - `at`: the evaluation that saw the change; times are RFC 3339 UTC, seconds.
//! - `link`: `notify.external_url` filled in for this finding, `null` when not configured.
//! - `finding.status`: `open` or `resolved`; `resolved_at` is `null` while open;
//!   `hostname` and `description` are empty strings when unknown.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use tracing::warn;

use super::queue::Queue;
use super::{Change, Delivery, link, rfc3339};

/// The version of the document's shape.
pub const VERSION: u32 = 1;

/// One webhook document (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Document {
    /// Shape version: [`VERSION`].
    pub version: u32,
    /// `<fingerprint>-<event>-<at as Unix seconds>`, stable across retries.
    pub id: String,
    /// `opened`, `reopened` or `resolved`.
    pub event: &'static str,
    /// When the evaluation saw it.
    pub at: String,
    /// A link for people, when `notify.external_url` is set.
    pub link: Option<String>,
    /// The finding after the change.
    pub finding: FindingDocument,
}

/// The finding in a [`Document`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingDocument {
    /// The rule.
    pub rule_id: String,
    /// Stable identity of the finding.
    pub fingerprint: String,
    /// `info` … `critical`.
    pub severity: String,
    /// The host; empty for fleet-wide findings.
    pub host_id: String,
    /// The host's name; empty when unknown.
    pub hostname: String,
    /// What it is about.
    pub subject: String,
    /// `key=value` pairs.
    pub evidence: String,
    /// The rule's description; empty when unknown.
    pub description: String,
    /// `open` or `resolved`.
    pub status: &'static str,
    /// First seen.
    pub first_seen: String,
    /// Last matched.
    pub last_seen: String,
    /// When resolved; `null` while open.
    pub resolved_at: Option<String>,
    /// How many times it opened again after being resolved.
    pub reopened: u32,
}

impl Document {
    /// The document of `change`, seen by the evaluation at `at` (Unix seconds).
    pub fn new(change: &Change, at: u64, external_url: &str) -> Document {
        let n = &change.notice;
        let f = &n.finding;
        let link = link(external_url, f);
        Document {
            version: VERSION,
            id: format!("{}-{}-{at}", f.latest.fingerprint, change.event.as_str()),
            event: change.event.as_str(),
            at: rfc3339(at),
            link: (!link.is_empty()).then_some(link),
            finding: FindingDocument {
                rule_id: f.latest.rule_id.clone(),
                fingerprint: f.latest.fingerprint.clone(),
                severity: f.latest.severity.clone(),
                host_id: f.latest.host_id.clone(),
                hostname: n.hostname.clone(),
                subject: f.latest.subject.clone(),
                evidence: f.latest.evidence.clone(),
                description: n.description.clone(),
                status: f.status.as_str(),
                first_seen: rfc3339(f.first_seen),
                last_seen: rfc3339(f.last_seen),
                resolved_at: (f.resolved_at > 0).then(|| rfc3339(f.resolved_at)),
                reopened: f.reopened,
            },
        }
    }
}

/// One document waiting to be posted.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    body: Bytes,
    what: String,
    born: Instant,
}

impl Item {
    /// The rendered document of `change`; `None` (logged) if it cannot be rendered.
    pub(crate) fn new(change: &Change, at: u64, external_url: &str, born: Instant) -> Option<Item> {
        let document = Document::new(change, at, external_url);
        match serde_json::to_vec(&document) {
            Ok(body) => Some(Item {
                body: Bytes::from(body),
                what: document.id,
                born,
            }),
            Err(e) => {
                warn!(id = %document.id, error = %e, "cannot render a webhook document; it is not sent");
                None
            }
        }
    }
}

/// Posts queued documents one at a time, in order, until the task is aborted.
pub(crate) async fn run(mut delivery: Delivery, queue: Arc<Queue<Item>>) {
    loop {
        let item = queue.next().await;
        delivery
            .deliver::<Item>(item.body, &item.what, item.born, None)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::tests::finding;
    use crate::notify::{Event, Notice};
    use portolan_rules::lifecycle::Status;

    #[test]
    fn the_document_shape_is_stable() -> Result<(), serde_json::Error> {
        let mut notice = Notice::new(finding("00FF", Status::Resolved));
        notice.hostname = "db-1.example".into();
        let change = Change {
            event: Event::Resolved,
            notice,
        };
        let json = serde_json::to_value(Document::new(
            &change,
            1_700_000_200,
            "https://grafana/d/f?fp={fingerprint}",
        ))?;
        let expected = serde_json::json!({
            "version": 1,
            "id": "00FF-resolved-1700000200",
            "event": "resolved",
            "at": "2023-11-14T22:16:40Z",
            "link": "https://grafana/d/f?fp=00FF",
            "finding": {
                "rule_id": "database-exposed",
                "fingerprint": "00FF",
                "severity": "high",
                "host_id": "db-1",
                "hostname": "db-1.example",
                "subject": "tcp 0.0.0.0:5432 (postgres)",
                "evidence": "port=5432 scope=wildcard",
                "description": "",
                "status": "resolved",
                "first_seen": "2023-11-14T22:13:20Z",
                "last_seen": "2023-11-14T22:15:00Z",
                "resolved_at": "2023-11-14T22:16:40Z",
                "reopened": 0
            }
        });
        assert_eq!(json, expected);
        let open = Change {
            event: Event::Opened,
            notice: Notice::new(finding("00FF", Status::Open)),
        };
        let json = serde_json::to_value(Document::new(&open, 1_700_000_000, ""))?;
        assert_eq!(json["link"], serde_json::Value::Null);
        assert_eq!(json["finding"]["resolved_at"], serde_json::Value::Null);
        assert_eq!(json["finding"]["status"], "open");
        Ok(())
    }
}
