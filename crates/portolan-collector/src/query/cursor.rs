//! Keyset cursors of the paged lists, to and from the parts of a page token ([`super::page`]).

use portolan_store::fleet::{FlowCursor, SocketCursor};
use portolan_store::history::{EventCursor, EventSource};

use super::QueryError;
use super::fields::invalid;
use super::page::{PageToken, Part, TokenError};

/// Decodes a request's page token into its keyset.
pub(super) fn token(text: &str, query: u64) -> Result<Option<Vec<Part>>, QueryError> {
    PageToken::decode(text, query)
        .map(|t| t.map(|t| t.key))
        .map_err(|e| invalid(e.to_string()))
}

pub(super) fn next_token(query: u64, key: Vec<Part>) -> String {
    PageToken { query, key }.encode()
}

pub(super) fn malformed() -> QueryError {
    invalid(TokenError::Malformed.to_string())
}

pub(super) fn text_part(p: Option<&Part>) -> Result<String, QueryError> {
    match p {
        Some(Part::Text(s)) => Ok(s.clone()),
        _ => Err(malformed()),
    }
}

pub(super) fn num_part(p: Option<&Part>) -> Result<u64, QueryError> {
    match p {
        Some(Part::Num(n)) => Ok(*n),
        _ => Err(malformed()),
    }
}

pub(super) fn port_part(p: Option<&Part>) -> Result<u16, QueryError> {
    u16::try_from(num_part(p)?).map_err(|_| malformed())
}

pub(super) fn socket_cursor(key: &[Part]) -> Result<SocketCursor, QueryError> {
    if key.len() != 3 {
        return Err(malformed());
    }
    Ok(SocketCursor {
        host_id: text_part(key.first())?,
        local_port: port_part(key.get(1))?,
        socket_key: text_part(key.get(2))?,
    })
}

pub(super) fn socket_key_parts(c: SocketCursor) -> Vec<Part> {
    vec![
        Part::Text(c.host_id),
        Part::Num(u64::from(c.local_port)),
        Part::Text(c.socket_key),
    ]
}

pub(super) fn flow_cursor(key: &[Part]) -> Result<FlowCursor, QueryError> {
    if key.len() != 3 {
        return Err(malformed());
    }
    Ok(FlowCursor {
        host_id: text_part(key.first())?,
        service_port: port_part(key.get(1))?,
        flow_key: text_part(key.get(2))?,
    })
}

pub(super) fn flow_key_parts(c: FlowCursor) -> Vec<Part> {
    vec![
        Part::Text(c.host_id),
        Part::Num(u64::from(c.service_port)),
        Part::Text(c.flow_key),
    ]
}

pub(super) fn event_cursor(key: &[Part]) -> Result<EventCursor, QueryError> {
    if key.len() != 4 {
        return Err(malformed());
    }
    Ok(EventCursor {
        seq: num_part(key.first())?,
        source: match num_part(key.get(1))? {
            0 => EventSource::Socket,
            1 => EventSource::Flow,
            _ => return Err(malformed()),
        },
        event: text_part(key.get(2))?,
        key: text_part(key.get(3))?,
    })
}

pub(super) fn event_key_parts(c: EventCursor) -> Vec<Part> {
    vec![
        Part::Num(c.seq),
        Part::Num(match c.source {
            EventSource::Socket => 0,
            EventSource::Flow => 1,
        }),
        Part::Text(c.event),
        Part::Text(c.key),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_through_token_parts() {
        let c = SocketCursor {
            host_id: "h".into(),
            local_port: 22,
            socket_key: "tcp 0.0.0.0:22 0.0.0.0:0 #1".into(),
        };
        assert_eq!(socket_cursor(&socket_key_parts(c.clone())).ok(), Some(c));
        let e = EventCursor {
            seq: 9,
            source: EventSource::Flow,
            event: "removed".into(),
            key: "k".into(),
        };
        assert_eq!(event_cursor(&event_key_parts(e.clone())).ok(), Some(e));
        assert!(socket_cursor(&[Part::Num(1)]).is_err());
        assert!(
            flow_cursor(&[
                Part::Text("h".into()),
                Part::Num(70_000),
                Part::Text("k".into())
            ])
            .is_err(),
            "a port over 65535"
        );
    }
}
