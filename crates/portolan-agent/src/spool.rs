//! The agent's spool: every change the collector has not acknowledged yet, on disk.
//!
//! The scan loop appends to the spool whether or not a collector is reachable; the stream
//! sends from it and drops what the collector acknowledged. So a listener that opened and
//! closed while the network was down reaches history with the times it was scanned, and a
//! restarted agent still holds what it had not delivered.
//!
//! One file, `spool.log`, in the state directory:
//!
//! ```text
//! magic "portolan-spool1\n"
//! record*   kind (1 byte: 1 base, 2 delta) · length (u32 LE) · CRC-32 (IEEE) of payload (u32 LE) · payload
//! ```
//!
//! The first record is the base: a full inventory (a `pb::Snapshot` in one part) at seq
//! B. Every later record is a `pb::Delta` from the record before it (seq B+1, B+2, …). The
//! collector, not the agent, knows what is stored: on each connection its `Welcome` names
//! the last stored seq L, and everything after L is sent, the base as a snapshot when L is
//! just before it. When L does not fall in the spool's chain (another collector database,
//! a reset host), the chain is renumbered to follow L, so nothing is lost either way.
//!
//! Bounds: when appending would take the file over `max_bytes`, the whole spool is
//! replaced by one base (the newest inventory) carrying a [`pb::SpoolGap`] that says which
//! changes were folded into it; the collector records the gap. When the acknowledged
//! deltas outweigh the base, they are folded into a new base (log compaction), so the file
//! stays near the size of one inventory while the collector keeps up.
//!
//! Appends are not fsync'd: they survive the agent's death (the page cache holds them),
//! and a host crash loses at most the changes of the last scans, which the next scan
//! replaces. A torn record at the end (an append cut short) is cut off on open; a
//! rewrite goes through a temporary file, fsync and rename, so it is all or nothing.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use portolan_core::wire::{SnapshotAssembly, delta_from_wire, delta_to_wire, snapshot_parts};
use portolan_core::{Inventory, ScanStats, apply_in_place, diff};
use portolan_proto::v1 as pb;
use prost::Message;
use tracing::warn;

/// The spool file's name in the state directory.
pub const FILE_NAME: &str = "spool.log";
const MAGIC: &[u8; 16] = b"portolan-spool1\n";
const RECORD_HEADER: u64 = 9;
const KIND_BASE: u8 = 1;
const KIND_DELTA: u8 = 2;
/// Acknowledged deltas are folded into the base once they outweigh it, or this much.
const MIN_COMPACTION_BYTES: u64 = 256 * 1024;

/// The spool cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A file operation failed.
    #[error(
        "cannot {action} the spool `{path}`: {source} (the agent needs a writable `spool.dir`)"
    )]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A record the agent wrote itself no longer decodes.
    #[error("the spool `{path}` holds an unreadable record at byte {offset}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// Why.
        reason: String,
    },
}

/// What [`Spool::record`] did with a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Nothing changed since the last recorded inventory.
    Unchanged,
    /// The change was appended with this seq.
    Appended {
        /// Its seq.
        seq: u64,
    },
    /// The spool was full: it now holds one base with this seq and a gap.
    Compacted {
        /// The new base's seq.
        seq: u64,
        /// The gap it records.
        gap: pb::SpoolGap,
    },
}

/// The next message to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A full inventory (the spool's base).
    Snapshot {
        /// Its seq.
        seq: u64,
        /// The inventory.
        inventory: Inventory,
        /// When it was scanned (Unix nanoseconds).
        at: i64,
        /// The scan's statistics.
        stats: ScanStats,
        /// Changes folded into it, when the spool overflowed.
        gap: Option<pb::SpoolGap>,
    },
    /// A change from the record before it.
    Delta(pb::Delta),
}

impl Outgoing {
    /// The seq of this message.
    pub fn seq(&self) -> u64 {
        match self {
            Outgoing::Snapshot { seq, .. } => *seq,
            Outgoing::Delta(d) => d.seq,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Base,
    Delta,
}

/// Where one record is in the file.
#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: Kind,
    seq: u64,
    /// Offset of the record's header.
    offset: u64,
    /// Payload length.
    len: u32,
    /// Scan time (Unix nanoseconds).
    at: i64,
}

impl Entry {
    fn size(&self) -> u64 {
        RECORD_HEADER + u64::from(self.len)
    }
}

/// The on-disk spool. See the module documentation.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    file: File,
    max_bytes: u64,
    /// File length.
    len: u64,
    /// `entries[0]` is the base, when there is one.
    entries: Vec<Entry>,
    /// The inventory after the last record (empty before the first).
    tip: Inventory,
    /// The statistics of the latest recorded scan, for a snapshot made of `tip`.
    tip_stats: ScanStats,
    /// The last seq the collector holds, once a collector said so in this run.
    acked: Option<u64>,
    /// The base's gap, kept for merging when the spool overflows again before it is sent.
    base_gap: Option<pb::SpoolGap>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, bounded to `max_bytes`. A torn record at the
    /// end is cut off; a file that is not a spool is set aside as `spool.log.unreadable`
    /// and a new spool started, so that the agent keeps working.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|source| SpoolError::Io {
            action: "create the directory of",
            path: path.clone(),
            source,
        })?;
        let loaded = match load(&path) {
            Ok(loaded) => loaded,
            Err(e @ SpoolError::Corrupt { .. }) => {
                let aside = dir.join(format!("{FILE_NAME}.unreadable"));
                warn!(error = %e, aside = %aside.display(), "setting an unreadable spool aside and starting a new one");
                std::fs::rename(&path, &aside).map_err(|source| SpoolError::Io {
                    action: "set aside",
                    path: path.clone(),
                    source,
                })?;
                Loaded::default()
            }
            Err(e) => return Err(e),
        };
        if loaded.valid_len == 0 {
            write_new_file(&path, &[])?;
        } else {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| io_error("open", &path, source))?;
            let actual = file
                .metadata()
                .map_err(|source| io_error("read", &path, source))?
                .len();
            if actual > loaded.valid_len {
                warn!(path = %path.display(), kept = loaded.valid_len, cut = actual - loaded.valid_len, "cutting a torn record off the end of the spool");
                file.set_len(loaded.valid_len)
                    .map_err(|source| io_error("truncate", &path, source))?;
            }
        }
        let file = open_append(&path)?;
        let len = file
            .metadata()
            .map_err(|source| io_error("read", &path, source))?
            .len();
        Ok(Spool {
            path,
            file,
            max_bytes,
            len,
            entries: loaded.entries,
            tip: loaded.tip,
            tip_stats: loaded.tip_stats,
            acked: None,
            base_gap: loaded.base_gap,
        })
    }

    /// Records a scan: appends the change since the last recorded inventory (the first
    /// scan becomes the base). When the file would outgrow its bound, the spool is
    /// compacted to this inventory with a gap instead.
    pub fn record(
        &mut self,
        inventory: Inventory,
        at: i64,
        stats: &ScanStats,
    ) -> Result<Recorded, SpoolError> {
        self.tip_stats.clone_from(stats);
        let Some(last) = self.entries.last().copied() else {
            let seq = self.acked.map_or(1, |a| a + 1);
            self.rewrite_with_base(seq, &inventory, at, stats, None)?;
            self.tip = inventory;
            return Ok(Recorded::Appended { seq });
        };
        let delta = diff(&self.tip, &inventory);
        if delta.is_empty() {
            return Ok(Recorded::Unchanged);
        }
        let seq = last.seq + 1;
        let payload = delta_to_wire(&delta, seq, last.seq, at, stats).encode_to_vec();
        if self.len + RECORD_HEADER + payload.len() as u64 > self.max_bytes {
            let gap = self.overflow_gap(at);
            self.rewrite_with_base(seq, &inventory, at, stats, Some(gap))?;
            self.tip = inventory;
            return Ok(Recorded::Compacted { seq, gap });
        }
        self.append(Kind::Delta, seq, at, &payload)?;
        self.tip = inventory;
        Ok(Recorded::Appended { seq })
    }

    /// A collector said it holds everything up to `last_seq`: lines the spool up with it.
    pub fn connected(&mut self, last_seq: u64) -> Result<(), SpoolError> {
        if let (Some(first), Some(last)) = (self.entries.first(), self.entries.last()) {
            let in_chain = last_seq + 1 >= first.seq && last_seq <= last.seq;
            if !in_chain {
                self.renumber(last_seq + 1)?;
            }
        }
        self.acked = Some(last_seq);
        self.compact_acknowledged()
    }

    /// The first record the collector does not hold, once connected.
    pub fn next_to_send(&self) -> Result<Option<Outgoing>, SpoolError> {
        self.next_after(0, false)
    }

    /// The first record after `seq` that the collector does not hold, once connected:
    /// with `seq` the last record sent, the next one to send while earlier ones are not
    /// acknowledged yet. With `hold_snapshot`, a snapshot right after `seq` is not read
    /// (`None`): it waits until the deltas before it are acknowledged, and reading a base
    /// (megabytes at 20,000 sockets) only to hold it back would be work per message.
    pub fn next_after(
        &self,
        seq: u64,
        hold_snapshot: bool,
    ) -> Result<Option<Outgoing>, SpoolError> {
        let Some(acked) = self.acked else {
            return Ok(None);
        };
        let after = seq.max(acked);
        // Entries are in seq order.
        let Some(entry) = self
            .entries
            .get(self.entries.partition_point(|e| e.seq <= after))
            .copied()
        else {
            return Ok(None);
        };
        if hold_snapshot && entry.kind == Kind::Base && entry.seq == seq + 1 {
            return Ok(None);
        }
        let payload = self.read_payload(&entry)?;
        match entry.kind {
            Kind::Base => {
                let base =
                    decode_base(&payload).map_err(|reason| self.corrupt(entry.offset, reason))?;
                Ok(Some(Outgoing::Snapshot {
                    seq: entry.seq,
                    inventory: base.inventory,
                    at: entry.at,
                    stats: base.stats,
                    gap: base.gap,
                }))
            }
            Kind::Delta => {
                let delta = pb::Delta::decode(payload.as_slice())
                    .map_err(|e| self.corrupt(entry.offset, e.to_string()))?;
                Ok(Some(Outgoing::Delta(delta)))
            }
        }
    }

    /// The collector stored everything up to `seq`.
    pub fn acknowledged(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.acked = Some(self.acked.map_or(seq, |a| a.max(seq)));
        self.compact_acknowledged()
    }

    /// The collector cannot apply what the spool holds (its stored state is not the
    /// base of the next delta): everything unsent becomes one snapshot of the newest
    /// inventory after `last_seq`, with a gap when changes were folded into it.
    pub fn resync(&mut self, last_seq: u64) -> Result<(), SpoolError> {
        let Some(last) = self.entries.last().copied() else {
            self.acked = Some(last_seq);
            return Ok(());
        };
        let acked = self.acked;
        let unsent_deltas = self
            .entries
            .iter()
            .filter(|e| e.kind == Kind::Delta && acked.is_none_or(|a| e.seq > a))
            .count();
        let gap = (unsent_deltas > 1).then(|| self.overflow_gap(last.at));
        let stats = self.tip_stats.clone();
        let tip = std::mem::take(&mut self.tip);
        self.rewrite_with_base(last_seq + 1, &tip, last.at, &stats, gap)?;
        self.tip = tip;
        self.acked = Some(last_seq);
        Ok(())
    }

    /// The last seq the collector holds, once known.
    pub fn acked_seq(&self) -> Option<u64> {
        self.acked
    }

    /// Records not yet acknowledged (all of them before a collector answered).
    pub fn pending(&self) -> usize {
        let acked = self.acked.unwrap_or(0);
        self.entries.iter().filter(|e| e.seq > acked).count()
    }

    /// The spool file's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// The newest recorded inventory.
    pub fn tip(&self) -> &Inventory {
        &self.tip
    }

    /// The gap to record when everything not yet acknowledged is folded into one base
    /// scanned at `to`.
    fn overflow_gap(&self, to: i64) -> pb::SpoolGap {
        let acked = self.acked;
        let dropped: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.kind == Kind::Delta && acked.is_none_or(|a| e.seq > a))
            .collect();
        let from = dropped.first().map_or(to, |e| e.at);
        let mut gap = pb::SpoolGap {
            from_unix_nanos: from,
            to_unix_nanos: to,
            dropped_changes: dropped.len() as u64,
        };
        // A base that was itself a gap and never sent: one gap covers both.
        if let (Some(previous), Some(base)) = (self.base_gap, self.entries.first())
            && acked.is_none_or(|a| base.seq > a)
        {
            gap.from_unix_nanos = gap.from_unix_nanos.min(previous.from_unix_nanos);
            gap.dropped_changes += previous.dropped_changes;
        }
        gap
    }

    /// Folds acknowledged deltas into the base once they outweigh it.
    fn compact_acknowledged(&mut self) -> Result<(), SpoolError> {
        let Some(acked) = self.acked else {
            return Ok(());
        };
        let Some(base) = self.entries.first().copied() else {
            return Ok(());
        };
        let acked_bytes: u64 = self
            .entries
            .iter()
            .skip(1)
            .filter(|e| e.seq <= acked)
            .map(Entry::size)
            .sum();
        if acked_bytes == 0 || acked_bytes < base.size().max(MIN_COMPACTION_BYTES) {
            return Ok(());
        }
        let (seq, inventory, at, stats) = self.inventory_at(acked)?;
        let rest: Vec<Entry> = self
            .entries
            .iter()
            .filter(|e| e.seq > seq)
            .copied()
            .collect();
        let mut kept = Vec::with_capacity(rest.len());
        for e in &rest {
            kept.push((*e, self.read_payload(e)?));
        }
        let base_payload = encode_base(seq, &inventory, at, &stats, None);
        self.replace_file(seq, at, &base_payload, &kept)?;
        self.base_gap = None;
        Ok(())
    }

    /// The inventory at `seq` (at most the last record's): the base with the deltas up to
    /// it applied.
    fn inventory_at(&self, seq: u64) -> Result<(u64, Inventory, i64, ScanStats), SpoolError> {
        let Some(base) = self.entries.first().copied() else {
            return Ok((seq, Inventory::default(), 0, ScanStats::default()));
        };
        let decoded =
            decode_base(&self.read_payload(&base)?).map_err(|r| self.corrupt(base.offset, r))?;
        let (mut inventory, mut at, mut stats, mut at_seq) =
            (decoded.inventory, base.at, decoded.stats, base.seq);
        for e in self.entries.iter().skip(1).filter(|e| e.seq <= seq) {
            let wire = pb::Delta::decode(self.read_payload(e)?.as_slice())
                .map_err(|err| self.corrupt(e.offset, err.to_string()))?;
            stats = wire.stats.clone().map(ScanStats::from).unwrap_or_default();
            let delta =
                delta_from_wire(wire).map_err(|err| self.corrupt(e.offset, err.to_string()))?;
            apply_in_place(&mut inventory, &delta)
                .map_err(|err| self.corrupt(e.offset, err.to_string()))?;
            at = e.at;
            at_seq = e.seq;
        }
        Ok((at_seq, inventory, at, stats))
    }

    /// Renumbers the chain so that the base gets `first_seq`.
    fn renumber(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        let Some(base) = self.entries.first().copied() else {
            return Ok(());
        };
        let mut decoded =
            decode_base(&self.read_payload(&base)?).map_err(|r| self.corrupt(base.offset, r))?;
        let mut kept = Vec::new();
        for (i, e) in self.entries.iter().skip(1).enumerate() {
            let mut delta = pb::Delta::decode(self.read_payload(e)?.as_slice())
                .map_err(|err| self.corrupt(e.offset, err.to_string()))?;
            delta.seq = first_seq + 1 + i as u64;
            delta.base_seq = delta.seq - 1;
            kept.push((
                Entry {
                    seq: delta.seq,
                    ..*e
                },
                delta.encode_to_vec(),
            ));
        }
        let gap = decoded.gap.take();
        let payload = encode_base(first_seq, &decoded.inventory, base.at, &decoded.stats, gap);
        self.replace_file(first_seq, base.at, &payload, &kept)
    }

    fn rewrite_with_base(
        &mut self,
        seq: u64,
        inventory: &Inventory,
        at: i64,
        stats: &ScanStats,
        gap: Option<pb::SpoolGap>,
    ) -> Result<(), SpoolError> {
        let payload = encode_base(seq, inventory, at, stats, gap);
        self.replace_file(seq, at, &payload, &[])?;
        self.base_gap = gap;
        Ok(())
    }

    /// Writes a new file holding a base and `deltas` (payloads given), and switches to it.
    fn replace_file(
        &mut self,
        base_seq: u64,
        base_at: i64,
        base_payload: &[u8],
        deltas: &[(Entry, Vec<u8>)],
    ) -> Result<(), SpoolError> {
        let mut records: Vec<(u8, &[u8])> = Vec::with_capacity(deltas.len() + 1);
        records.push((KIND_BASE, base_payload));
        records.extend(deltas.iter().map(|(_, p)| (KIND_DELTA, p.as_slice())));
        write_new_file(&self.path, &records)?;
        let mut entries = Vec::with_capacity(records.len());
        let mut offset = MAGIC.len() as u64;
        entries.push(Entry {
            kind: Kind::Base,
            seq: base_seq,
            offset,
            len: payload_len(base_payload),
            at: base_at,
        });
        offset += RECORD_HEADER + base_payload.len() as u64;
        for (e, payload) in deltas {
            entries.push(Entry {
                kind: Kind::Delta,
                seq: e.seq,
                offset,
                len: payload_len(payload),
                at: e.at,
            });
            offset += RECORD_HEADER + payload.len() as u64;
        }
        self.file = open_append(&self.path)?;
        self.len = offset;
        self.entries = entries;
        Ok(())
    }

    fn append(&mut self, kind: Kind, seq: u64, at: i64, payload: &[u8]) -> Result<(), SpoolError> {
        let mut record = Vec::with_capacity(RECORD_HEADER as usize + payload.len());
        encode_record(&mut record, kind_byte(kind), payload);
        self.file
            .write_all(&record)
            .map_err(|source| io_error("append to", &self.path, source))?;
        self.entries.push(Entry {
            kind,
            seq,
            offset: self.len,
            len: payload_len(payload),
            at,
        });
        self.len += record.len() as u64;
        Ok(())
    }

    fn read_payload(&self, entry: &Entry) -> Result<Vec<u8>, SpoolError> {
        let mut payload = vec![0; entry.len as usize];
        self.file
            .read_exact_at(&mut payload, entry.offset + RECORD_HEADER)
            .map_err(|source| io_error("read", &self.path, source))?;
        Ok(payload)
    }

    fn corrupt(&self, offset: u64, reason: String) -> SpoolError {
        SpoolError::Corrupt {
            path: self.path.clone(),
            offset,
            reason,
        }
    }
}

/// What [`load`] found in a spool file.
#[derive(Debug, Default)]
struct Loaded {
    entries: Vec<Entry>,
    tip: Inventory,
    tip_stats: ScanStats,
    base_gap: Option<pb::SpoolGap>,
    /// Bytes up to the end of the last whole record (0: no usable file).
    valid_len: u64,
}

/// Reads a spool file, stopping at the first torn or unreadable record.
fn load(path: &Path) -> Result<Loaded, SpoolError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(source) => return Err(io_error("open", path, source)),
    };
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 16];
    match reader.read_exact(&mut magic) {
        Ok(()) if &magic == MAGIC => {}
        Ok(()) => {
            return Err(SpoolError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason: "not a Portolan spool (wrong magic)".into(),
            });
        }
        // Shorter than the magic: a file created and cut before its first write.
        Err(_) => return Ok(Loaded::default()),
    }
    let mut loaded = Loaded {
        valid_len: MAGIC.len() as u64,
        ..Loaded::default()
    };
    let mut offset = MAGIC.len() as u64;
    loop {
        let mut header = [0u8; RECORD_HEADER as usize];
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let kind = header[0];
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
        let crc = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
        let mut payload = vec![0u8; len as usize];
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        let expected_seq = loaded.entries.last().map(|e| e.seq + 1);
        let entry = match (kind, expected_seq) {
            (KIND_BASE, None) => {
                let Ok(base) = decode_base(&payload) else {
                    break;
                };
                loaded.tip = base.inventory;
                loaded.tip_stats = base.stats;
                loaded.base_gap = base.gap;
                Entry {
                    kind: Kind::Base,
                    seq: base.seq,
                    offset,
                    len,
                    at: base.at,
                }
            }
            (KIND_DELTA, Some(expected)) => {
                let Ok(wire) = pb::Delta::decode(payload.as_slice()) else {
                    break;
                };
                let (seq, at) = (wire.seq, wire.scanned_at_unix_nanos);
                if seq != expected {
                    break;
                }
                let stats = wire.stats.clone().map(ScanStats::from).unwrap_or_default();
                let Ok(delta) = delta_from_wire(wire) else {
                    break;
                };
                // Left as it was when the delta does not apply.
                if apply_in_place(&mut loaded.tip, &delta).is_err() {
                    break;
                }
                loaded.tip_stats = stats;
                Entry {
                    kind: Kind::Delta,
                    seq,
                    offset,
                    len,
                    at,
                }
            }
            _ => break,
        };
        loaded.entries.push(entry);
        offset += entry.size();
        loaded.valid_len = offset;
    }
    Ok(loaded)
}

/// A decoded base record.
struct Base {
    seq: u64,
    at: i64,
    inventory: Inventory,
    stats: ScanStats,
    gap: Option<pb::SpoolGap>,
}

fn encode_base(
    seq: u64,
    inventory: &Inventory,
    at: i64,
    stats: &ScanStats,
    gap: Option<pb::SpoolGap>,
) -> Vec<u8> {
    let mut parts = snapshot_parts(inventory, seq, at, stats, usize::MAX);
    let mut part = parts.pop().unwrap_or_default();
    part.gap = gap;
    part.encode_to_vec()
}

fn decode_base(payload: &[u8]) -> Result<Base, String> {
    let part = pb::Snapshot::decode(payload).map_err(|e| e.to_string())?;
    let (seq, at, gap) = (part.seq, part.scanned_at_unix_nanos, part.gap);
    let stats = part.stats.clone().map(ScanStats::from).unwrap_or_default();
    let mut assembly = SnapshotAssembly::default();
    let (_, inventory) = assembly
        .push(part, usize::MAX)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the base is not one whole snapshot".to_string())?;
    Ok(Base {
        seq,
        at,
        inventory,
        stats,
        gap,
    })
}

fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Base => KIND_BASE,
        Kind::Delta => KIND_DELTA,
    }
}

fn payload_len(payload: &[u8]) -> u32 {
    u32::try_from(payload.len()).unwrap_or(u32::MAX)
}

fn encode_record(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&payload_len(payload).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Writes `path` anew (magic and records) through a temporary file, fsync and rename.
fn write_new_file(path: &Path, records: &[(u8, &[u8])]) -> Result<(), SpoolError> {
    let tmp = path.with_extension("log.tmp");
    let file = File::create(&tmp).map_err(|source| io_error("create", &tmp, source))?;
    let mut out = BufWriter::new(file);
    let mut record = Vec::new();
    out.write_all(MAGIC)
        .map_err(|source| io_error("write", &tmp, source))?;
    for (kind, payload) in records {
        record.clear();
        encode_record(&mut record, *kind, payload);
        out.write_all(&record)
            .map_err(|source| io_error("write", &tmp, source))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| io_error("write", &tmp, e.into_error()))?;
    file.sync_all()
        .map_err(|source| io_error("sync", &tmp, source))?;
    std::fs::rename(&tmp, path).map_err(|source| io_error("replace", path, source))?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(dir)
    {
        // Makes the rename itself durable; a failure only weakens crash safety.
        let _ = dir.sync_all();
    }
    Ok(())
}

fn open_append(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(|source| io_error("open", path, source))
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> SpoolError {
    SpoolError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
#[path = "spool/tests.rs"]
mod tests;
