//! Whole inventories on the wire: a snapshot split into parts and assembled again, an
//! inventory held encoded, and deltas.

use std::collections::BTreeMap;

use portolan_proto::v1 as pb;

use super::WireError;
use crate::delta::Delta;
use crate::flow::Flow;
use crate::host::{HostState, ScanStats};
use crate::inventory::Inventory;
use crate::process::Process;
use crate::socket::Socket;

/// Splits an inventory into snapshot parts of at most `max_items` sockets plus flows
/// each. Every part carries the processes its sockets and flows reference; the first
/// carries the host facts and `stats`, the last has `last_part` set. An empty inventory
/// is one part.
pub fn snapshot_parts(
    inventory: &Inventory,
    seq: u64,
    scanned_at_unix_nanos: i64,
    stats: &ScanStats,
    max_items: usize,
) -> Vec<pb::Snapshot> {
    let max_items = max_items.max(1);
    let sockets: Vec<&Socket> = inventory.sockets.values().collect();
    let flows = inventory.flow_list();
    let mut parts = Vec::new();
    let mut si = 0;
    let mut fi = 0;
    loop {
        let s_end = (si + max_items).min(sockets.len());
        let room = max_items - (s_end - si);
        let f_end = (fi + room).min(flows.len());
        let part_sockets = &sockets[si..s_end];
        let part_flows = &flows[fi..f_end];
        let mut pids: Vec<u32> = part_sockets
            .iter()
            .flat_map(|s| s.pids.iter().copied())
            .chain(part_flows.iter().map(|f| f.key.pid))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        let first = parts.is_empty();
        parts.push(pb::Snapshot {
            seq,
            scanned_at_unix_nanos,
            host: first.then(|| pb::HostState::from(&inventory.host)),
            sockets: part_sockets.iter().map(|s| pb::Socket::from(*s)).collect(),
            flows: part_flows.iter().map(pb::Flow::from).collect(),
            processes: pids
                .iter()
                .filter_map(|pid| inventory.processes.get(pid))
                .map(pb::Process::from)
                .collect(),
            last_part: false,
            stats: first.then(|| pb::ScanStats::from(stats)),
            gap: None,
            traceparent: String::new(),
        });
        si = s_end;
        fi = f_end;
        if si >= sockets.len() && fi >= flows.len() {
            break;
        }
    }
    if let Some(last) = parts.last_mut() {
        last.last_part = true;
    }
    parts
}

/// Accumulates snapshot parts received from the network into an inventory.
#[derive(Debug, Default)]
pub struct SnapshotAssembly {
    seq: Option<u64>,
    inventory: Inventory,
    items: usize,
}

/// The snapshot parts do not form one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AssemblyError {
    /// A part's content is invalid.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A part carries another seq than the first part.
    #[error("snapshot part has seq {got} but the snapshot in progress has seq {expected}")]
    SeqMismatch {
        /// The first part's seq.
        expected: u64,
        /// This part's seq.
        got: u64,
    },
    /// The first part has no host facts.
    #[error("the first part of a snapshot must carry `host`")]
    MissingHost,
    /// The snapshot grew over the limit.
    #[error("snapshot holds more than {0} sockets and flows")]
    TooLarge(usize),
}

impl SnapshotAssembly {
    /// Adds one part. Returns the finished inventory, its seq and the first part's
    /// scan time when this was the last part.
    pub fn push(
        &mut self,
        part: pb::Snapshot,
        max_items: usize,
    ) -> Result<Option<(u64, Inventory)>, AssemblyError> {
        match self.seq {
            None => {
                let host = part.host.ok_or(AssemblyError::MissingHost)?;
                self.inventory.host = HostState::try_from(host)?;
                self.seq = Some(part.seq);
            }
            Some(expected) if expected != part.seq => {
                return Err(AssemblyError::SeqMismatch {
                    expected,
                    got: part.seq,
                });
            }
            Some(_) => {}
        }
        self.items += part.sockets.len() + part.flows.len();
        if self.items > max_items {
            return Err(AssemblyError::TooLarge(max_items));
        }
        for s in part.sockets {
            let socket = Socket::try_from(s)?;
            if self
                .inventory
                .sockets
                .insert(socket.key, socket.clone())
                .is_some()
            {
                return Err(WireError::Duplicate(socket.key.to_string()).into());
            }
        }
        for f in part.flows {
            let flow = Flow::try_from(f)?;
            if self
                .inventory
                .flows
                .insert(flow.key, flow.connections)
                .is_some()
            {
                return Err(WireError::Duplicate(flow.key.to_string()).into());
            }
        }
        for p in part.processes {
            let p = Process::try_from(p)?;
            self.inventory.processes.insert(p.pid, p);
        }
        if !part.last_part {
            return Ok(None);
        }
        let seq = self.seq.unwrap_or(part.seq);
        let mut inventory = std::mem::take(&mut self.inventory);
        inventory.retain_referenced_processes();
        *self = SnapshotAssembly::default();
        Ok(Some((seq, inventory)))
    }
}

/// An inventory kept as its protobuf encoding (one snapshot part): what a collector
/// stream holds of its host between two messages. A hundred sockets take about 4 KiB
/// encoded and 40 KiB as an [`Inventory`] of B-trees, and a collector holds one per
/// connected agent; decoding it again for the next delta costs microseconds per socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedInventory {
    pub(super) bytes: Vec<u8>,
}

impl EncodedInventory {
    /// Encodes `inventory`.
    pub fn encode(inventory: &Inventory) -> EncodedInventory {
        let part = snapshot_parts(inventory, 0, 0, &ScanStats::default(), usize::MAX)
            .pop()
            .unwrap_or_default();
        let mut bytes = prost::Message::encode_to_vec(&part);
        bytes.shrink_to_fit();
        EncodedInventory { bytes }
    }

    /// The inventory again; fails only on bytes [`EncodedInventory::encode`] did not write.
    pub fn decode(&self) -> Result<Inventory, AssemblyError> {
        let part = <pb::Snapshot as prost::Message>::decode(self.bytes.as_slice())
            .map_err(|e| WireError::Decode(e.to_string()))?;
        SnapshotAssembly::default()
            .push(part, usize::MAX)?
            .map(|(_, inventory)| inventory)
            .ok_or(AssemblyError::MissingHost)
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for no bytes at all (never the encoding of an inventory, which has host facts).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Encodes a delta.
pub fn delta_to_wire(
    delta: &Delta,
    seq: u64,
    base_seq: u64,
    scanned_at_unix_nanos: i64,
    stats: &ScanStats,
) -> pb::Delta {
    pb::Delta {
        seq,
        base_seq,
        scanned_at_unix_nanos,
        host: delta.host.as_ref().map(pb::HostState::from),
        added: delta.added.iter().map(pb::Socket::from).collect(),
        removed: delta.removed.iter().map(pb::Socket::from).collect(),
        changed: delta.changed.iter().map(pb::Socket::from).collect(),
        flows_upserted: delta.flows_upserted.iter().map(pb::Flow::from).collect(),
        flows_removed: delta.flows_removed.iter().map(pb::Flow::from).collect(),
        processes: delta.processes.iter().map(pb::Process::from).collect(),
        stats: Some(pb::ScanStats::from(stats)),
        traceparent: String::new(),
    }
}

/// Decodes and validates a delta's content (seq numbers are the caller's business).
pub fn delta_from_wire(d: pb::Delta) -> Result<Delta, WireError> {
    fn sockets(v: Vec<pb::Socket>) -> Result<Vec<Socket>, WireError> {
        v.into_iter().map(Socket::try_from).collect()
    }
    fn flows(v: Vec<pb::Flow>) -> Result<Vec<Flow>, WireError> {
        v.into_iter().map(Flow::try_from).collect()
    }
    let delta = Delta {
        host: d.host.map(HostState::try_from).transpose()?,
        added: sockets(d.added)?,
        removed: sockets(d.removed)?,
        changed: sockets(d.changed)?,
        flows_upserted: flows(d.flows_upserted)?,
        flows_removed: flows(d.flows_removed)?,
        processes: d
            .processes
            .into_iter()
            .map(Process::try_from)
            .collect::<Result<_, _>>()?,
    };
    let mut seen = std::collections::BTreeSet::new();
    for s in delta
        .added
        .iter()
        .chain(&delta.removed)
        .chain(&delta.changed)
    {
        if !seen.insert(s.key) {
            return Err(WireError::Duplicate(s.key.to_string()));
        }
    }
    let mut seen_flows = std::collections::BTreeSet::new();
    for f in delta.flows_upserted.iter().chain(&delta.flows_removed) {
        if !seen_flows.insert(f.key) {
            return Err(WireError::Duplicate(f.key.to_string()));
        }
    }
    Ok(delta)
}

/// Processes by pid, for looking up owners while storing.
pub fn process_index(processes: &[Process]) -> BTreeMap<u32, &Process> {
    processes.iter().map(|p| (p.pid, p)).collect()
}
