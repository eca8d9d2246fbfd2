//! Sockets and flows alike: each has an event table (history) and a current table keyed by
//! a string key, with the same columns after their heads. [`Tracked`] names the tables,
//! statements, keys and rows of each, so that the store reads, restores and converts
//! both with one piece of code.

use clickhouse::{Row, RowOwned, RowRead, RowWrite};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::history::EventSource;
use crate::rows::{FlowCurrentRow, FlowEventRow, SocketCurrentRow, SocketEventRow};
use crate::schema::{self, table};
use crate::{
    FlowEvent, FlowEventKind, SocketEvent, SocketEventKind, StoreError, StoredFlow, StoredSocket,
    history, queries,
};

/// What the store keeps of sockets or of flows: their tables, statements and rows.
pub(crate) trait Tracked {
    /// A row of the event table.
    type Event: Row + RowOwned + RowRead + DeserializeOwned;
    /// A row of the current table.
    type Current: Row + RowOwned + RowRead + RowWrite + DeserializeOwned + Serialize;
    /// A current row as the store gives it back.
    type Stored;
    /// An event row as the store gives it back.
    type StoredEvent;

    /// Which history an event is of.
    const SOURCE: EventSource;
    /// The key column (`socket_key`, `flow_key`).
    const KEY: &'static str;
    /// The event table.
    const EVENTS: &'static str;
    /// The current table.
    const CURRENT: &'static str;
    /// The present current rows of a host.
    const CURRENT_OF_HOST: &'static str;
    /// The latest current rows of some keys, present or not.
    const BY_KEY: &'static str;
    /// The history of a host.
    const EVENTS_OF_HOST: &'static str;
    /// The keys touched by uncommitted rows.
    const UNCOMMITTED_KEYS: &'static str;
    /// The committed history of some keys, oldest first.
    const LAST_EVENTS: &'static str;

    /// The columns both tables share, after their heads, in table order.
    fn columns() -> Vec<&'static str>;
    /// A current row's key.
    fn current_key(row: &Self::Current) -> &str;
    /// An event row's key.
    fn event_key(row: &Self::Event) -> &str;
    /// The current row the event leaves behind.
    fn current_after(event: Self::Event) -> Self::Current;
    /// A current row, decoded.
    fn stored(row: &Self::Current) -> Result<Self::Stored, StoreError>;
    /// An event row, decoded.
    fn stored_event(row: Self::Event) -> Result<Self::StoredEvent, StoreError>;
}

/// `socket_events` and `sockets_current`.
#[derive(Debug)]
pub(crate) struct Sockets;

/// `flow_events` and `flows_current`.
#[derive(Debug)]
pub(crate) struct Flows;

impl Tracked for Sockets {
    type Event = SocketEventRow;
    type Current = SocketCurrentRow;
    type Stored = StoredSocket;
    type StoredEvent = SocketEvent;

    const SOURCE: EventSource = EventSource::Socket;
    const KEY: &'static str = "socket_key";
    const EVENTS: &'static str = table::SOCKET_EVENTS;
    const CURRENT: &'static str = table::SOCKETS_CURRENT;
    const CURRENT_OF_HOST: &'static str = queries::CURRENT_SOCKETS;
    const BY_KEY: &'static str = queries::SOCKETS_BY_KEY;
    const EVENTS_OF_HOST: &'static str = queries::SOCKET_EVENTS;
    const UNCOMMITTED_KEYS: &'static str = queries::UNCOMMITTED_SOCKET_KEYS;
    const LAST_EVENTS: &'static str = queries::LAST_SOCKET_EVENTS;

    fn columns() -> Vec<&'static str> {
        schema::socket_columns()
    }

    fn current_key(row: &SocketCurrentRow) -> &str {
        &row.socket_key
    }

    fn event_key(row: &SocketEventRow) -> &str {
        &row.socket_key
    }

    fn current_after(e: SocketEventRow) -> SocketCurrentRow {
        let present = u8::from(e.event != SocketEventKind::Removed.as_str());
        let cols = e.cols();
        SocketCurrentRow::with_cols(e.host_id, e.socket_key, e.seq, present, e.at, cols)
    }

    fn stored(row: &SocketCurrentRow) -> Result<StoredSocket, StoreError> {
        row.stored()
    }

    fn stored_event(row: SocketEventRow) -> Result<SocketEvent, StoreError> {
        history::socket_event(row)
    }
}

impl Tracked for Flows {
    type Event = FlowEventRow;
    type Current = FlowCurrentRow;
    type Stored = StoredFlow;
    type StoredEvent = FlowEvent;

    const SOURCE: EventSource = EventSource::Flow;
    const KEY: &'static str = "flow_key";
    const EVENTS: &'static str = table::FLOW_EVENTS;
    const CURRENT: &'static str = table::FLOWS_CURRENT;
    const CURRENT_OF_HOST: &'static str = queries::CURRENT_FLOWS;
    const BY_KEY: &'static str = queries::FLOWS_BY_KEY;
    const EVENTS_OF_HOST: &'static str = queries::FLOW_EVENTS;
    const UNCOMMITTED_KEYS: &'static str = queries::UNCOMMITTED_FLOW_KEYS;
    const LAST_EVENTS: &'static str = queries::LAST_FLOW_EVENTS;

    fn columns() -> Vec<&'static str> {
        schema::flow_columns()
    }

    fn current_key(row: &FlowCurrentRow) -> &str {
        &row.flow_key
    }

    fn event_key(row: &FlowEventRow) -> &str {
        &row.flow_key
    }

    fn current_after(e: FlowEventRow) -> FlowCurrentRow {
        let present = u8::from(e.event != FlowEventKind::Removed.as_str());
        let cols = e.cols();
        FlowCurrentRow::with_cols(e.host_id, e.flow_key, e.seq, present, e.at, cols)
    }

    fn stored(row: &FlowCurrentRow) -> Result<StoredFlow, StoreError> {
        row.stored()
    }

    fn stored_event(row: FlowEventRow) -> Result<FlowEvent, StoreError> {
        history::flow_event(row)
    }
}
