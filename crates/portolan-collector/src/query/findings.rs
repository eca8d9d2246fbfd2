//! Findings: listing them with their acknowledgements, and acknowledging them (admins
//! only, by [`crate::authz`]).

use std::collections::{HashMap, HashSet};

use portolan_proto::v1 as pb;
use portolan_rules::lifecycle::{Finding, Status as FindingState};
use portolan_store::Store;
use portolan_store::acks::{AckRecord, StoredAck};
use portolan_store::fleet::HostFilter;
use tracing::info;

use super::cursor::{malformed, next_token, num_part, text_part, token};
use super::fields::{host_filter, instant, invalid, now_unix, page_size, required, signed};
use super::page::{Part, query_hash};
use super::{MAX_REASON_CHARS, Query, QueryError};

pub(super) fn severity_rank(s: &str) -> Option<usize> {
    portolan_rules::Severity::ALL
        .iter()
        .position(|v| v.as_str() == s)
}

pub(super) fn min_severity(value: &str) -> Result<usize, QueryError> {
    if value.is_empty() {
        return Ok(0);
    }
    severity_rank(value).ok_or_else(|| {
        invalid(format!(
            "`min_severity` is `{value}`; use info, low, medium, high or critical"
        ))
    })
}

/// The acknowledgement of `finding` in force at `now`, as sent.
pub(super) fn ack_in_force(
    finding: &Finding,
    ack: Option<&StoredAck>,
    now: u64,
) -> Option<pb::FindingAck> {
    let ack = ack.filter(|a| a.in_force(finding, now))?;
    Some(pb::FindingAck {
        acked_by: ack.acked_by.clone(),
        reason: ack.reason.clone(),
        until_unix: ack.until.map_or(0, signed),
        at_unix: signed(ack.at),
    })
}

pub(super) fn finding_pb(
    f: &Finding,
    ack: Option<&StoredAck>,
    now: u64,
    hostnames: &HashMap<String, String>,
) -> pb::Finding {
    pb::Finding {
        hostname: hostnames
            .get(f.latest.host_id.as_str())
            .cloned()
            .unwrap_or_default(),
        fingerprint: f.latest.fingerprint.clone(),
        rule_id: f.latest.rule_id.clone(),
        host_id: f.latest.host_id.clone(),
        severity: f.latest.severity.clone(),
        subject: f.latest.subject.clone(),
        evidence: f.latest.evidence.clone(),
        status: match f.status {
            FindingState::Open => pb::FindingStatus::Open,
            FindingState::Resolved => pb::FindingStatus::Resolved,
        } as i32,
        first_seen_unix: signed(f.first_seen),
        last_seen_unix: signed(f.last_seen),
        resolved_at_unix: signed(f.resolved_at),
        reopened: f.reopened,
        ack: ack_in_force(f, ack, now),
    }
}

/// Which findings a list or watch is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct FindingFilter {
    pub(super) hosts: HostFilter,
    pub(super) status: Option<FindingState>,
    pub(super) rule_id: String,
    pub(super) min_rank: usize,
    /// `Some(true)`: only acknowledged; `Some(false)`: only not.
    pub(super) acked: Option<bool>,
}

/// The findings' world at one instant: findings, acknowledgements, host names and the
/// hosts a selector picks.
pub(super) struct FindingView {
    pub(super) findings: Vec<Finding>,
    pub(super) acks: HashMap<String, StoredAck>,
    pub(super) hostnames: HashMap<String, String>,
    /// `None`: the selector selects every finding.
    pub(super) selected: Option<HashSet<String>>,
    pub(super) now: u64,
}

impl FindingView {
    pub(super) async fn read(store: &Store, hosts: &HostFilter) -> Result<FindingView, QueryError> {
        let all = store.hosts(&HostFilter::default()).await?;
        let selected = (!hosts.host_ids.is_empty() || !hosts.labels.is_empty()).then(|| {
            all.iter()
                .filter(|h| hosts.matches(&h.host_id, &h.labels))
                .map(|h| h.host_id.clone())
                .collect()
        });
        Ok(FindingView {
            findings: store.findings().await?,
            acks: store.finding_acks().await?,
            hostnames: all.into_iter().map(|h| (h.host_id, h.hostname)).collect(),
            selected,
            now: now_unix(),
        })
    }

    pub(super) fn ack(&self, f: &Finding) -> Option<&StoredAck> {
        self.acks.get(&f.latest.fingerprint)
    }

    pub(super) fn matches(&self, f: &Finding, filter: &FindingFilter) -> bool {
        filter.status.is_none_or(|s| f.status == s)
            && (filter.rule_id.is_empty() || f.latest.rule_id == filter.rule_id)
            && severity_rank(&f.latest.severity).unwrap_or(0) >= filter.min_rank
            && self
                .selected
                .as_ref()
                .is_none_or(|s| s.contains(&f.latest.host_id))
            && filter
                .acked
                .is_none_or(|want| self.ack(f).is_some_and(|a| a.in_force(f, self.now)) == want)
    }

    pub(super) fn to_pb(&self, f: &Finding) -> pb::Finding {
        finding_pb(f, self.ack(f), self.now, &self.hostnames)
    }
}

/// The order of ListFindings: most severe first, then host, subject, fingerprint.
pub(super) fn finding_order(f: &pb::Finding) -> (std::cmp::Reverse<usize>, String, String, String) {
    (
        std::cmp::Reverse(severity_rank(&f.severity).unwrap_or(0)),
        f.host_id.clone(),
        f.subject.clone(),
        f.fingerprint.clone(),
    )
}

impl Query {
    /// A known finding, or NOT_FOUND.
    pub(super) async fn known_finding(&self, fingerprint: &str) -> Result<Finding, QueryError> {
        self.store.finding(fingerprint).await?.ok_or_else(|| {
            QueryError::NotFound(format!(
                "no finding with fingerprint `{fingerprint}` (`portolan findings` lists them)"
            ))
        })
    }

    pub(super) fn finding_filter(
        hosts: Option<pb::HostSelector>,
        status: i32,
        rule_id: String,
        severity: &str,
        acked: i32,
    ) -> Result<FindingFilter, QueryError> {
        let status = match pb::FindingStatus::try_from(status) {
            Ok(pb::FindingStatus::Unspecified) => None,
            Ok(pb::FindingStatus::Open) => Some(FindingState::Open),
            Ok(pb::FindingStatus::Resolved) => Some(FindingState::Resolved),
            Err(_) => {
                return Err(invalid(format!(
                    "`status` {status} is not a finding status"
                )));
            }
        };
        let acked = match pb::AckFilter::try_from(acked) {
            Ok(pb::AckFilter::Unspecified) => None,
            Ok(pb::AckFilter::Acked) => Some(true),
            Ok(pb::AckFilter::Unacked) => Some(false),
            Err(_) => return Err(invalid(format!("`acked` {acked} is not an ack filter"))),
        };
        Ok(FindingFilter {
            hosts: host_filter(hosts),
            status,
            rule_id,
            min_rank: min_severity(severity)?,
            acked,
        })
    }

    pub(super) async fn list_findings_inner(
        &self,
        r: pb::ListFindingsRequest,
    ) -> Result<pb::ListFindingsResponse, QueryError> {
        let filter = Self::finding_filter(r.hosts, r.status, r.rule_id, &r.min_severity, r.acked)?;
        let hash = query_hash(&format!("findings:{filter:?}"));
        let after = match token(&r.page_token, hash)? {
            Some(key) if key.len() == 4 => Some((
                std::cmp::Reverse(
                    usize::try_from(num_part(key.first())?).map_err(|_| malformed())?,
                ),
                text_part(key.get(1))?,
                text_part(key.get(2))?,
                text_part(key.get(3))?,
            )),
            Some(_) => return Err(malformed()),
            None => None,
        };
        let size = page_size(r.page_size, r.limit) as usize;
        let view = FindingView::read(&self.store, &filter.hosts).await?;
        let mut findings: Vec<pb::Finding> = view
            .findings
            .iter()
            .filter(|f| view.matches(f, &filter))
            .map(|f| view.to_pb(f))
            .filter(|f| after.as_ref().is_none_or(|a| finding_order(f) > *a))
            .collect();
        findings.sort_by_key(finding_order);
        let (findings, truncated) = portolan_store::fleet::page(findings, size);
        let next_page_token = match findings.last() {
            Some(last) if truncated => {
                let (rank, host, subject, fingerprint) = finding_order(last);
                next_token(
                    hash,
                    vec![
                        Part::Num(rank.0 as u64),
                        Part::Text(host),
                        Part::Text(subject),
                        Part::Text(fingerprint),
                    ],
                )
            }
            _ => String::new(),
        };
        Ok(pb::ListFindingsResponse {
            findings,
            truncated,
            next_page_token,
        })
    }

    /// The admin acknowledging or clearing, and the finding.
    pub(super) async fn ack_inner(
        &self,
        acked_by: String,
        fingerprint: String,
        ack: Option<(String, Option<u64>)>,
    ) -> Result<pb::Finding, QueryError> {
        required(
            "fingerprint",
            &fingerprint,
            "`portolan findings` shows the fingerprints",
        )?;
        let finding = self.known_finding(&fingerprint).await?;
        let acked = ack.is_some();
        let (reason, until) = ack.unwrap_or_default();
        let stored = self
            .store
            .write_finding_ack(&AckRecord {
                finding: finding.clone(),
                acked,
                acked_by: acked_by.clone(),
                reason,
                until,
            })
            .await
            .map_err(QueryError::Write)?;
        info!(
            fingerprint = %fingerprint,
            rule_id = %finding.latest.rule_id,
            host_id = %finding.latest.host_id,
            by = %acked_by,
            until = ?until,
            "{}",
            if acked { "finding acknowledged" } else { "finding acknowledgement cleared" }
        );
        let hostnames = self.hostnames().await?;
        Ok(finding_pb(&finding, Some(&stored), now_unix(), &hostnames))
    }

    pub(super) async fn ack_finding_inner(
        &self,
        acked_by: String,
        r: pb::AckFindingRequest,
    ) -> Result<pb::AckFindingResponse, QueryError> {
        let reason = r.reason.trim().to_string();
        if reason.is_empty() {
            return Err(invalid(
                "`reason` is required: say why the finding needs no action",
            ));
        }
        let chars = reason.chars().count();
        if chars > MAX_REASON_CHARS {
            return Err(invalid(format!(
                "`reason` is {chars} characters long, over {MAX_REASON_CHARS}; shorten it"
            )));
        }
        let until = instant("until_unix", r.until_unix)?;
        if let Some(until) = until {
            if until <= now_unix() {
                return Err(invalid(format!(
                    "`until_unix` {until} is not in the future; give a later time, or 0 to acknowledge until the finding's status changes"
                )));
            }
            if until > u64::from(u32::MAX) {
                return Err(invalid(format!(
                    "`until_unix` {until} is after 2106, the last instant the store holds"
                )));
            }
        }
        let finding = self
            .ack_inner(acked_by, r.fingerprint, Some((reason, until)))
            .await?;
        Ok(pb::AckFindingResponse {
            finding: Some(finding),
        })
    }
}
