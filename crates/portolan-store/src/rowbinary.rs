//! ClickHouse's RowBinary format, written straight from the domain types for the four
//! tables every change writes to (`socket_events`, `sockets_current`, `flow_events`,
//! `flows_current`).
//!
//! The columns are those [`super::schema`] defines (the `layout` tests decode what this
//! writes into the typed rows of [`super::rows`], which are what reads decode); a
//! change's rows used to be built as those structs first (two dozen `String`s cloned per
//! socket, twice) and serialized afterwards, which was half of the collector's ingest
//! CPU. Here each row is encoded once into bytes in the column order of its struct, and
//! a batch is those bytes, sent as `INSERT … FORMAT RowBinary`. The store tests read back
//! what this writes through the typed rows, on a real server.
//!
//! RowBinary: integers little-endian, `DateTime` as `UInt32`, `String` as its byte
//! length (LEB128) and bytes, `Array(T)` as its length (LEB128) and elements;
//! `LowCardinality(String)` is written as `String`.

use std::fmt::Write as _;

use portolan_core::{Flow, Process, Socket};

use super::rows::family;

/// Encoded rows of one table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Encoded {
    /// The rows of one write, back to back (what its encoder appends to).
    pub bytes: Vec<u8>,
    /// The rows of the writes appended after it ([`Encoded::append`]), each as its
    /// write encoded them: a batch is sent from them in chunks, never first copied into
    /// one buffer (which, grown by doubling, held up to four times the batch at once).
    pub appended: Vec<Vec<u8>>,
    /// How many rows in all.
    pub rows: usize,
}

impl Encoded {
    /// Appends the rows of `other`, without copying them.
    pub fn append(&mut self, other: Encoded) {
        if !other.bytes.is_empty() {
            self.appended.push(other.bytes);
        }
        self.appended
            .extend(other.appended.into_iter().filter(|b| !b.is_empty()));
        self.rows += other.rows;
    }

    /// The encoded bytes in all, in order.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len() + self.appended.iter().map(Vec::len).sum::<usize>()
    }

    /// The rows as chunks of at most `max` bytes (a row may span two), made as they
    /// are sent: small writes are gathered into one chunk, a large one is cut without
    /// copying.
    pub fn into_chunks(self, max: usize) -> Chunks {
        let left = self.len_bytes();
        Chunks {
            parts: std::iter::once(self.bytes)
                .chain(self.appended)
                .collect::<Vec<_>>()
                .into_iter(),
            cutting: bytes::Bytes::new(),
            max: max.max(1),
            left,
        }
    }
}

/// The chunks of [`Encoded::into_chunks`].
pub(crate) struct Chunks {
    parts: std::vec::IntoIter<Vec<u8>>,
    /// What is left of a part larger than a chunk.
    cutting: bytes::Bytes,
    max: usize,
    /// Bytes not yet in a chunk.
    left: usize,
}

impl Iterator for Chunks {
    type Item = bytes::Bytes;

    fn next(&mut self) -> Option<bytes::Bytes> {
        if self.cutting.len() >= self.max {
            self.left -= self.max;
            return Some(self.cutting.split_to(self.max));
        }
        if self.left == 0 {
            return None;
        }
        let mut chunk = Vec::with_capacity(self.max.min(self.left));
        chunk.extend_from_slice(&self.cutting);
        self.cutting = bytes::Bytes::new();
        while chunk.len() < self.max {
            let Some(part) = self.parts.next() else { break };
            let room = self.max - chunk.len();
            if part.len() <= room {
                chunk.extend_from_slice(&part);
            } else if chunk.is_empty() {
                // A part of a chunk or more: cut, not copied.
                self.cutting = bytes::Bytes::from(part);
                return self.next();
            } else {
                let mut part = bytes::Bytes::from(part);
                chunk.extend_from_slice(&part.split_to(room));
                self.cutting = part;
            }
        }
        self.left -= chunk.len();
        Some(bytes::Bytes::from(chunk))
    }
}

/// Appends RowBinary values to a buffer; formats addresses and keys through a scratch
/// string it reuses.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    scratch: String,
}

impl Writer {
    pub fn u8(out: &mut Vec<u8>, v: u8) {
        out.push(v);
    }

    pub fn u16(out: &mut Vec<u8>, v: u16) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// An unsigned LEB128 length.
    pub fn len(out: &mut Vec<u8>, mut n: usize) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    pub fn str(out: &mut Vec<u8>, s: &str) {
        Writer::len(out, s.len());
        out.extend_from_slice(s.as_bytes());
    }

    /// A value's `Display` as a `String` column.
    pub fn display(&mut self, out: &mut Vec<u8>, v: impl std::fmt::Display) {
        self.scratch.clear();
        // Writing into a String cannot fail.
        let _ = write!(self.scratch, "{v}");
        Writer::str(out, &self.scratch);
    }

    /// An `Array(String)` of one field of each process.
    fn strs<'p>(
        out: &mut Vec<u8>,
        processes: &[Option<&'p Process>],
        field: impl Fn(&'p Process) -> &'p str,
    ) {
        Writer::len(out, processes.len());
        for p in processes {
            Writer::str(out, p.map_or("", &field));
        }
    }

    /// The columns [`super::rows::SocketCols`] holds, in its order. `processes` are what
    /// is known of each of `socket.pids`, in the same order.
    pub fn socket_cols(
        &mut self,
        out: &mut Vec<u8>,
        socket: &Socket,
        processes: &[Option<&Process>],
    ) {
        let k = &socket.key;
        Writer::str(out, k.protocol.as_str());
        Writer::u8(out, family(k.local_address));
        self.display(out, k.local_address);
        Writer::u16(out, k.local_port);
        self.display(out, k.remote_address);
        Writer::u16(out, k.remote_port);
        Writer::str(out, socket.state.as_str());
        Writer::u64(out, k.inode);
        Writer::u32(out, socket.uid);
        Writer::u8(out, u8::from(socket.is_listener()));
        Writer::str(out, socket.attribution.as_str());
        Writer::str(out, socket.scope.as_str());
        Writer::str(out, socket.exposure.as_str());
        Writer::len(out, socket.pids.len());
        for pid in &socket.pids {
            Writer::u32(out, *pid);
        }
        Writer::len(out, processes.len());
        for p in processes {
            Writer::u8(out, u8::from(p.is_some()));
        }
        Writer::strs(out, processes, |p| &p.name);
        Writer::strs(out, processes, |p| &p.executable);
        Writer::strs(out, processes, |p| &p.command_line);
        Writer::len(out, processes.len());
        for p in processes {
            Writer::u32(out, p.map_or(0, |p| p.uid));
        }
        Writer::strs(out, processes, |p| &p.user);
        Writer::strs(out, processes, |p| &p.systemd_unit);
        Writer::strs(out, processes, |p| &p.container_id);
        Writer::strs(out, processes, |p| &p.cgroup);
        // The first pid's process, when known.
        let first = processes.first().copied().flatten();
        let field = |f: fn(&Process) -> &str| first.map_or("", f);
        Writer::str(out, field(|p| &p.name));
        Writer::str(out, field(|p| &p.executable));
        Writer::str(out, field(|p| &p.systemd_unit));
        Writer::str(out, field(|p| &p.container_id));
        Writer::u64(out, k.netns);
        Writer::strs(out, processes, |p| &p.pod_uid);
        Writer::strs(out, processes, |p| &p.pod_name);
        Writer::strs(out, processes, |p| &p.pod_namespace);
        Writer::str(out, field(|p| &p.pod_uid));
        Writer::str(out, field(|p| &p.pod_name));
        Writer::str(out, field(|p| &p.pod_namespace));
        Writer::str(out, &socket.path);
    }

    /// The columns [`super::rows::FlowCols`] holds, in its order.
    pub fn flow_cols(&mut self, out: &mut Vec<u8>, flow: &Flow, process: Option<&Process>) {
        let k = &flow.key;
        let field = |f: fn(&Process) -> &str| process.map_or("", f);
        Writer::str(out, k.protocol.as_str());
        Writer::str(out, k.direction.as_str());
        Writer::u8(out, family(k.local_address));
        self.display(out, k.local_address);
        self.display(out, k.remote_address);
        Writer::u16(out, k.service_port);
        Writer::str(out, k.state.as_str());
        Writer::u32(out, k.pid);
        Writer::u32(out, flow.connections);
        Writer::u8(out, u8::from(process.is_some()));
        Writer::str(out, field(|p| &p.name));
        Writer::str(out, field(|p| &p.executable));
        Writer::str(out, field(|p| &p.command_line));
        Writer::u32(out, process.map_or(0, |p| p.uid));
        Writer::str(out, field(|p| &p.user));
        Writer::str(out, field(|p| &p.systemd_unit));
        Writer::str(out, field(|p| &p.container_id));
        Writer::str(out, field(|p| &p.cgroup));
        Writer::u64(out, k.netns);
        Writer::str(out, field(|p| &p.pod_uid));
        Writer::str(out, field(|p| &p.pod_name));
        Writer::str(out, field(|p| &p.pod_namespace));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_lengths() {
        for (n, bytes) in [
            (0usize, vec![0u8]),
            (1, vec![1]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (300, vec![0xac, 0x02]),
            (16_384, vec![0x80, 0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            Writer::len(&mut out, n);
            assert_eq!(out, bytes, "{n}");
        }
    }

    #[test]
    fn strings_and_integers() {
        let mut out = Vec::new();
        Writer::str(&mut out, "tcp");
        Writer::u16(&mut out, 0x0102);
        Writer::u32(&mut out, 7);
        Writer::u64(&mut out, 1);
        Writer::default().display(&mut out, std::net::IpAddr::from([10, 0, 0, 1]));
        assert_eq!(
            out,
            [
                &[3u8, b't', b'c', b'p'][..],
                &[2, 1],
                &[7, 0, 0, 0],
                &[1, 0, 0, 0, 0, 0, 0, 0],
                &[8],
                b"10.0.0.1",
            ]
            .concat()
        );
    }

    proptest::proptest! {
        /// Chunks hold the appended writes' bytes in order, each at most `max` bytes,
        /// and none but the last is short: as few INSERT blocks as the bytes allow.
        #[test]
        fn chunks_are_the_bytes_in_order_and_full(
            writes in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..20),
            max in 1usize..40,
        ) {
            let mut all = Encoded::default();
            for (i, bytes) in writes.iter().enumerate() {
                let one = Encoded { bytes: bytes.clone(), appended: Vec::new(), rows: i };
                all.append(one);
            }
            let total: usize = writes.iter().map(Vec::len).sum();
            proptest::prop_assert_eq!(all.len_bytes(), total);
            let chunks: Vec<_> = all.into_chunks(max).collect();
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            proptest::prop_assert_eq!(joined, writes.concat());
            for (i, chunk) in chunks.iter().enumerate() {
                proptest::prop_assert!(chunk.len() <= max);
                proptest::prop_assert!(!chunk.is_empty());
                if i + 1 < chunks.len() {
                    proptest::prop_assert_eq!(chunk.len(), max);
                }
            }
        }
    }
}
