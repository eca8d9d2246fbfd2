//! The fuzz targets' bodies, shared by `fuzz/` (cargo-fuzz, nightly) and by the stable
//! test suite (a seed corpus plus random inputs), so that both exercise the same code.
//!
//! Each function takes arbitrary bytes and panics only when a law is broken: invalid
//! input must be refused with an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portolan_proto::v1 as pb;
use portolan_proto::v1::stream_inventory_request::Message as AgentMessage;
use prost::Message as _;

use crate::wire::{SnapshotAssembly, delta_from_wire, delta_to_wire, snapshot_parts};
use crate::{Inventory, ScanStats, apply, diff};

/// Most sockets and flows a fuzzed snapshot may hold (the collector's limit is larger;
/// the checks are the same).
const MAX_ITEMS: usize = 10_000;

/// Decodes `data` as one message an agent sends, and runs the collector's validation and
/// conversion on it: snapshot parts through [`SnapshotAssembly`], deltas through
/// [`delta_from_wire`] and then [`apply`] to an empty inventory.
///
/// Laws: nothing panics; whatever converts round-trips through the wire unchanged.
pub fn ingest_message(data: &[u8]) {
    let Ok(request) = pb::StreamInventoryRequest::decode(data) else {
        return;
    };
    match request.message {
        Some(AgentMessage::Snapshot(part)) => {
            let mut assembly = SnapshotAssembly::default();
            let Ok(Some((seq, inventory))) = assembly.push(part, MAX_ITEMS) else {
                return;
            };
            let mut again = SnapshotAssembly::default();
            let mut done = None;
            for part in snapshot_parts(&inventory, seq, 0, &ScanStats::default(), 7) {
                done = again
                    .push(part, MAX_ITEMS)
                    .expect("an encoded inventory decodes");
            }
            assert_eq!(done, Some((seq, inventory)), "snapshot wire round trip");
        }
        Some(AgentMessage::Delta(delta)) => {
            let Ok(delta) = delta_from_wire(delta) else {
                return;
            };
            let encoded = delta_to_wire(&delta, 2, 1, 0, &ScanStats::default());
            assert_eq!(
                delta_from_wire(encoded).as_ref(),
                Ok(&delta),
                "delta wire round trip"
            );
            // Not based on an empty inventory, usually: refused, never a panic.
            let _ = apply(&Inventory::default(), &delta);
        }
        _ => {}
    }
}

/// Builds two inventories and a third, arbitrary delta from `data` (over a small domain of
/// ports, addresses and inodes, so that keys collide often), and checks the laws of
/// [`diff`] and [`apply`]:
///
/// - `apply(a, diff(a, b)) == b`, and `diff(a, a)` is empty;
/// - a delta survives the wire unchanged;
/// - `apply(a, junk)` never panics; when it succeeds with `c`, `apply(c, diff(c, a)) == a`.
pub fn delta_laws(data: &[u8]) {
    let mut bytes = Bytes(data);
    let Some(a) = bytes.inventory() else { return };
    let Some(b) = bytes.inventory() else { return };
    let d = diff(&a, &b);
    assert_eq!(apply(&a, &d).as_ref(), Ok(&b), "apply(a, diff(a, b)) == b");
    assert!(diff(&a, &a).is_empty(), "diff(a, a) is empty");
    let encoded = delta_to_wire(&d, 2, 1, 0, &ScanStats::default());
    assert_eq!(
        delta_from_wire(encoded).as_ref(),
        Ok(&d),
        "delta wire round trip"
    );
    let Some(junk) = bytes.delta() else { return };
    let Ok(junk) = delta_from_wire(junk) else {
        return;
    };
    if let Ok(c) = apply(&a, &junk) {
        assert_eq!(
            apply(&c, &diff(&c, &a)).as_ref(),
            Ok(&a),
            "apply(c, diff(c, a)) == a"
        );
    }
}

/// Reads small choices from fuzz bytes; `None` once they run out.
struct Bytes<'a>(&'a [u8]);

const PORTS: [u32; 8] = [22, 53, 80, 443, 5432, 8080, 9000, 70_000];
const PIDS: [u32; 4] = [0, 1, 42, 4242];

impl Bytes<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn address(&mut self) -> Option<Vec<u8>> {
        let b = self.byte()?;
        let ip = match b % 16 {
            // An address of the wrong length now and then: refused by the wire checks.
            15 => return Some(vec![b; usize::from(b >> 6)]),
            n if n % 5 == 0 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            n if n % 5 == 1 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            n if n % 5 == 2 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, b >> 6)),
            n if n % 5 == 3 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        Some(match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        })
    }

    fn socket(&mut self) -> Option<pb::Socket> {
        let (b0, b1, b2) = (self.byte()?, self.byte()?, self.byte()?);
        let local = self.address()?;
        let udp = b0 & 1 == 1;
        let listening = b0 & 2 == 0;
        let remote = if listening {
            vec![0; local.len()]
        } else {
            self.address()?
        };
        Some(pb::Socket {
            protocol: if udp {
                pb::Protocol::Udp as i32
            } else {
                pb::Protocol::Tcp as i32
            },
            local_address: local,
            local_port: PORTS[usize::from(b1 % 8)],
            remote_address: remote,
            remote_port: if listening {
                0
            } else {
                PORTS[usize::from((b1 >> 3) % 8)]
            },
            state: if listening && !udp {
                pb::SocketState::Listen as i32
            } else {
                1 + i32::from(b0 >> 2) % 11
            },
            inode: u64::from(b2 % 4),
            uid: u32::from(b2 >> 4),
            pids: vec![PIDS[usize::from((b2 >> 2) % 4)]],
            attribution: i32::from(b1 >> 6) + 1,
            // 0 (unspecified) when b2 is 255: refused by the wire checks.
            scope: if b2 == 255 {
                0
            } else {
                1 + i32::from(b0 >> 5) % 5
            },
            exposure: 1 + i32::from(b0 >> 5) % 5,
            ..Default::default()
        })
    }

    fn flow(&mut self) -> Option<pb::Flow> {
        let (b0, b1) = (self.byte()?, self.byte()?);
        Some(pb::Flow {
            protocol: 1 + i32::from(b0 % 2),
            direction: 1 + i32::from((b0 >> 1) % 2),
            local_address: self.address()?,
            remote_address: self.address()?,
            service_port: PORTS[usize::from(b1 % 8)],
            state: 1 + i32::from(b0 >> 4) % 11,
            pid: PIDS[usize::from((b1 >> 3) % 4)],
            // 0 connections now and then: refused by the wire checks.
            connections: u32::from(b1 >> 5),
            ..Default::default()
        })
    }

    fn process(&mut self) -> Option<pb::Process> {
        let b = self.byte()?;
        Some(pb::Process {
            pid: PIDS[usize::from(b % 4)],
            name: format!("p{}", b >> 2),
            ..Default::default()
        })
    }

    fn count(&mut self, max: u8) -> Option<usize> {
        Some(usize::from(self.byte()? % (max + 1)))
    }

    /// An inventory, or `None` when the bytes ran out or described an invalid one.
    fn inventory(&mut self) -> Option<Inventory> {
        let n = self.count(6)?;
        let sockets = (0..n).map(|_| self.socket()).collect::<Option<Vec<_>>>()?;
        let n = self.count(3)?;
        let flows = (0..n).map(|_| self.flow()).collect::<Option<Vec<_>>>()?;
        let n = self.count(3)?;
        let processes = (0..n).map(|_| self.process()).collect::<Option<Vec<_>>>()?;
        let part = pb::Snapshot {
            seq: 1,
            host: Some(pb::HostState {
                ephemeral_port_min: 32768,
                ephemeral_port_max: 60999,
                ..Default::default()
            }),
            sockets,
            flows,
            processes,
            last_part: true,
            ..Default::default()
        };
        let mut assembly = SnapshotAssembly::default();
        assembly
            .push(part, MAX_ITEMS)
            .ok()
            .flatten()
            .map(|(_, i)| i)
    }

    /// An arbitrary wire delta (usually inconsistent with any inventory).
    fn delta(&mut self) -> Option<pb::Delta> {
        let sockets = |bytes: &mut Self| -> Option<Vec<pb::Socket>> {
            let n = bytes.count(3)?;
            (0..n).map(|_| bytes.socket()).collect()
        };
        // Mostly additions: removals and changes of absent sockets are refused at once.
        let added = sockets(self)?;
        let few = |bytes: &mut Self| -> Option<Vec<pb::Socket>> {
            if bytes.byte()? < 64 {
                Some(vec![bytes.socket()?])
            } else {
                Some(Vec::new())
            }
        };
        let removed = few(self)?;
        let changed = few(self)?;
        let n = self.count(2)?;
        let flows_upserted = (0..n).map(|_| self.flow()).collect::<Option<Vec<_>>>()?;
        let n = self.count(2)?;
        let flows_removed = (0..n).map(|_| self.flow()).collect::<Option<Vec<_>>>()?;
        let n = self.count(2)?;
        let processes = (0..n).map(|_| self.process()).collect::<Option<Vec<_>>>()?;
        Some(pb::Delta {
            seq: 2,
            base_seq: 1,
            added,
            removed,
            changed,
            flows_upserted,
            flows_removed,
            processes,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::{Path, PathBuf};

    /// `fuzz/` at the root of the repository.
    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
    }

    /// Every file in `dir` by name, with its path relative to `fuzz/`; none when `dir`
    /// does not exist.
    fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut files: Vec<(String, Vec<u8>)> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|path| path.is_file())
            .map(|path| {
                let bytes = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
                let name = path
                    .strip_prefix(fuzz_dir())
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                (name, bytes)
            })
            .collect();
        files.sort();
        files
    }

    /// The inputs checked in with a fuzz target: its corpus (`fuzz/corpus/<target>/`,
    /// seeds and what `just fuzz` merged into it) and the crashes it found, kept as
    /// regressions (`fuzz/regressions/<target>/`).
    fn checked_in(target: &str) -> Vec<(String, Vec<u8>)> {
        let corpus = files(&fuzz_dir().join("corpus").join(target));
        assert!(
            !corpus.is_empty(),
            "no corpus in fuzz/corpus/{target} (it is checked in)"
        );
        let regressions = files(&fuzz_dir().join("regressions").join(target));
        println!(
            "{target}: {} corpus inputs, {} regressions",
            corpus.len(),
            regressions.len()
        );
        corpus.into_iter().chain(regressions).collect()
    }

    /// The checked-in inputs, then a few thousand random ones: the same bodies
    /// cargo-fuzz runs, on stable.
    fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
        let mut inputs = checked_in(target);
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for i in 0..4000 {
            let len = rng.usize(0..(16 + i % 512));
            inputs.push((
                format!("random input {i}"),
                (0..len).map(|_| rng.u8(..)).collect(),
            ));
        }
        inputs
    }

    /// Runs `body` on every input; a panic names the input it broke on.
    fn run(inputs: &[(String, Vec<u8>)], body: fn(&[u8])) {
        for (name, input) in inputs {
            if std::panic::catch_unwind(|| body(input)).is_err() {
                panic!("the fuzz body panicked on {name} (its message is above)");
            }
        }
    }

    #[test]
    fn ingest_message_on_seeds_and_random_bytes() {
        let inputs = corpus("ingest_message");
        let decoded = inputs
            .iter()
            .filter(|(_, input)| pb::StreamInventoryRequest::decode(input.as_slice()).is_ok())
            .count();
        assert!(decoded > 10, "{decoded} inputs decoded");
        run(&inputs, ingest_message);
    }

    #[test]
    fn delta_laws_on_seeds_and_random_bytes() {
        run(&corpus("delta_laws"), delta_laws);
    }

    #[test]
    fn a_panicking_body_names_its_input() {
        let inputs = vec![
            ("corpus/t/fine".to_string(), vec![0]),
            ("regressions/t/crash-1".to_string(), vec![1]),
        ];
        let panic = std::panic::catch_unwind(|| {
            run(&inputs, |input| assert_eq!(input, [0], "a broken law"));
        })
        .expect_err("the second input breaks the law");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("regressions/t/crash-1"), "{message}");
    }

    #[test]
    fn random_bytes_reach_the_interesting_paths() {
        // The generator must build valid inventories and applicable deltas often enough
        // for the laws to be exercised, not only refusals.
        let (mut inventories, mut applied) = (0, 0);
        for (_, input) in corpus("delta_laws") {
            let mut bytes = Bytes(&input);
            let (Some(a), Some(_)) = (bytes.inventory(), bytes.inventory()) else {
                continue;
            };
            if a.sockets.len() >= 2 {
                inventories += 1;
            }
            if let Some(Ok(junk)) = bytes.delta().map(delta_from_wire)
                && !junk.is_empty()
                && apply(&a, &junk).is_ok()
            {
                applied += 1;
            }
        }
        println!("{inventories} inventories with 2+ sockets, {applied} junk deltas applied");
        assert!(
            inventories >= 20,
            "{inventories} inventories with 2+ sockets"
        );
        assert!(applied >= 10, "{applied} junk deltas applied");
    }
}
