//! Request fields: each checked and turned into what the store asks for, or refused
//! with INVALID_ARGUMENT saying what to send instead.

use std::time::{SystemTime, UNIX_EPOCH};

use portolan_core::wire::{protocol_from_wire, scope_from_wire};
use portolan_core::{Protocol, Scope};
use portolan_proto::v1 as pb;
use portolan_store::fleet::HostFilter;

use super::{DEFAULT_LIMIT, MAX_ID_BYTES, MAX_LIMIT, QueryError};

pub(super) fn invalid(message: impl Into<String>) -> QueryError {
    QueryError::Invalid(message.into())
}

pub(super) fn host_filter(selector: Option<pb::HostSelector>) -> HostFilter {
    let selector = selector.unwrap_or_default();
    HostFilter {
        host_ids: selector.host_ids,
        labels: selector.labels.into_iter().collect(),
    }
}

/// A protocol filter: unspecified means both.
pub(super) fn protocol(value: i32) -> Result<Option<Protocol>, QueryError> {
    if value == pb::Protocol::Unspecified as i32 {
        return Ok(None);
    }
    protocol_from_wire(value)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

pub(super) fn scope(value: i32) -> Result<Scope, QueryError> {
    scope_from_wire("exposures", value).map_err(|e| invalid(e.to_string()))
}

/// An optional filter string (pod glob, container id prefix): at most a Kubernetes name's
/// length.
pub(super) fn bounded(field: &str, value: String) -> Result<String, QueryError> {
    if value.len() > portolan_core::wire::MAX_NAME_BYTES {
        return Err(invalid(format!(
            "`{field}` is {} bytes long, over {}",
            value.len(),
            portolan_core::wire::MAX_NAME_BYTES
        )));
    }
    Ok(value)
}

pub(super) fn port(field: &str, value: u32) -> Result<u16, QueryError> {
    u16::try_from(value).map_err(|_| invalid(format!("`{field}` is {value}, over 65535")))
}

/// A required identifier field: present and of sane length.
pub(super) fn required(field: &str, value: &str, hint: &str) -> Result<(), QueryError> {
    if value.is_empty() {
        return Err(invalid(format!("`{field}` is required ({hint})")));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(invalid(format!(
            "`{field}` is {} bytes long, over {MAX_ID_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// An instant field: `0` is `None`; negative values are refused.
pub(super) fn instant(field: &str, value: i64) -> Result<Option<u64>, QueryError> {
    match u64::try_from(value) {
        Ok(0) => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(_) => Err(invalid(format!(
            "`{field}` is {value}; give Unix seconds (0: none)"
        ))),
    }
}

/// The page size of a request: `page_size`, else `limit`, else the default; at most
/// [`MAX_LIMIT`].
pub(super) fn page_size(page_size: u32, limit: u32) -> u32 {
    match (page_size, limit) {
        (0, 0) => DEFAULT_LIMIT,
        (0, l) => l.min(MAX_LIMIT),
        (p, _) => p.min(MAX_LIMIT),
    }
}

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub(super) fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub(super) fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(page_size(0, 0), DEFAULT_LIMIT);
        assert_eq!(page_size(0, 5), 5);
        assert_eq!(page_size(2, 5), 2);
        assert_eq!(page_size(u32::MAX, 0), MAX_LIMIT);
        assert_eq!(page_size(0, u32::MAX), MAX_LIMIT);
    }

    #[test]
    fn instants_refuse_negative_values() {
        assert_eq!(instant("at_unix", 0).ok(), Some(None));
        assert_eq!(instant("at_unix", 5).ok(), Some(Some(5)));
        let e = instant("at_unix", -1).expect_err("negative");
        assert!(e.to_string().starts_with("`at_unix` is -1"), "{e}");
    }
}
