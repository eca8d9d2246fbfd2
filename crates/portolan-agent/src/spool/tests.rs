use portolan_core::{Socket, apply};
use proptest::prelude::*;

use super::*;

fn listener(port: u16) -> Socket {
    let wire = pb::Socket {
        protocol: pb::Protocol::Tcp as i32,
        local_address: vec![0, 0, 0, 0],
        local_port: u32::from(port),
        remote_address: vec![0, 0, 0, 0],
        state: pb::SocketState::Listen as i32,
        inode: u64::from(port),
        attribution: pb::Attribution::Kernel as i32,
        scope: pb::Scope::Wildcard as i32,
        exposure: pb::Scope::Private as i32,
        ..pb::Socket::default()
    };
    match Socket::try_from(wire) {
        Ok(s) => s,
        Err(e) => panic!("test socket is invalid: {e}"),
    }
}

fn inventory(ports: &[u16]) -> Inventory {
    let mut inventory = Inventory::default();
    for &port in ports {
        let s = listener(port);
        inventory.sockets.insert(s.key, s);
    }
    inventory
}

/// What a collector stores: applies what the spool sends, checking the chain.
#[derive(Debug, Default)]
struct Collector {
    last_seq: u64,
    stored: Inventory,
    /// What was stored at each seq, for a collector that loses its newest changes.
    history: Vec<(u64, Inventory)>,
    snapshots: usize,
    deltas: usize,
    gaps: Vec<pb::SpoolGap>,
}

impl Collector {
    /// Drains the spool as a stream would: Welcome(last_seq), then send and acknowledge.
    fn drain(&mut self, spool: &mut Spool) {
        spool.connected(self.last_seq).expect("connected");
        while let Some(out) = spool.next_to_send().expect("next") {
            match out {
                Outgoing::Snapshot {
                    seq,
                    inventory,
                    gap,
                    ..
                } => {
                    assert!(
                        seq > self.last_seq,
                        "snapshot {seq} after {}",
                        self.last_seq
                    );
                    self.stored = inventory;
                    self.snapshots += 1;
                    self.gaps.extend(gap);
                    self.last_seq = seq;
                    self.history.push((seq, self.stored.clone()));
                }
                Outgoing::Delta(d) => {
                    assert_eq!(d.base_seq, self.last_seq, "delta {} out of chain", d.seq);
                    assert_eq!(d.seq, d.base_seq + 1);
                    let seq = d.seq;
                    let delta = delta_from_wire(d).expect("valid delta");
                    self.stored = apply(&self.stored, &delta).expect("delta applies");
                    self.deltas += 1;
                    self.last_seq = seq;
                    self.history.push((seq, self.stored.clone()));
                }
            }
            spool.acknowledged(self.last_seq).expect("ack");
        }
    }
}

fn record(spool: &mut Spool, ports: &[u16], at: i64) -> Recorded {
    spool
        .record(inventory(ports), at, &ScanStats::default())
        .expect("record")
}

#[test]
fn first_scan_is_a_snapshot_then_deltas_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
    assert_eq!(record(&mut spool, &[22], 1), Recorded::Appended { seq: 1 });
    assert_eq!(record(&mut spool, &[22], 2), Recorded::Unchanged);
    assert_eq!(
        record(&mut spool, &[22, 80], 3),
        Recorded::Appended { seq: 2 }
    );
    assert_eq!(record(&mut spool, &[80], 4), Recorded::Appended { seq: 3 });
    assert_eq!(
        spool.next_to_send().expect("next"),
        None,
        "nothing before a Welcome"
    );
    let mut collector = Collector::default();
    collector.drain(&mut spool);
    assert_eq!((collector.snapshots, collector.deltas), (1, 2));
    assert_eq!(collector.stored, inventory(&[80]));
    assert_eq!(spool.pending(), 0);
}

/// Sending ahead: `next_after(k)` is record `k + 1` whatever was acknowledged, and a
/// snapshot right after what is in flight is held back until asked for without holding.
#[test]
fn next_after_sends_ahead_of_acknowledgements_and_holds_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
    record(&mut spool, &[22], 1);
    record(&mut spool, &[22, 80], 2);
    record(&mut spool, &[80], 3);
    spool.connected(0).expect("connected");
    let seq = |out: Option<Outgoing>| out.map(|o| o.seq());
    // The snapshot (seq 1) is next; held while something is in flight, sent otherwise.
    assert_eq!(seq(spool.next_after(0, true).expect("next")), None);
    assert_eq!(seq(spool.next_after(0, false).expect("next")), Some(1));
    // Nothing acknowledged yet: each next record follows the last one sent.
    assert_eq!(seq(spool.next_after(1, true).expect("next")), Some(2));
    assert_eq!(seq(spool.next_after(2, true).expect("next")), Some(3));
    assert_eq!(seq(spool.next_after(3, true).expect("next")), None);
    // An acknowledgement past `k` wins over `k`.
    spool.acknowledged(2).expect("ack");
    assert_eq!(seq(spool.next_after(1, false).expect("next")), Some(3));
}

#[test]
fn unacknowledged_changes_survive_a_restart_and_resume_after_the_stored_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut collector = Collector::default();
    {
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
        record(&mut spool, &[22], 1);
        collector.drain(&mut spool);
        record(&mut spool, &[22, 80], 2);
        record(&mut spool, &[22, 80, 443], 3);
        record(&mut spool, &[22, 443], 4);
    }
    let mut spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(spool.tip(), &inventory(&[22, 443]));
    collector.drain(&mut spool);
    assert_eq!((collector.snapshots, collector.deltas), (1, 3));
    assert_eq!(collector.stored, inventory(&[22, 443]));
}

#[test]
fn a_torn_last_record_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
        record(&mut spool, &[22], 1);
        record(&mut spool, &[22, 80], 2);
        record(&mut spool, &[22, 80, 443], 3);
    }
    let path = dir.path().join(FILE_NAME);
    let len = std::fs::metadata(&path).expect("stat").len();
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(len - 3).expect("truncate");
    drop(file);
    let mut spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(
        spool.tip(),
        &inventory(&[22, 80]),
        "the torn third record is gone"
    );
    assert_eq!(
        record(&mut spool, &[22, 80, 8080], 4),
        Recorded::Appended { seq: 3 }
    );
    let mut collector = Collector::default();
    collector.drain(&mut spool);
    assert_eq!(collector.stored, inventory(&[22, 80, 8080]));
}

#[test]
fn a_file_that_is_not_a_spool_is_set_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(FILE_NAME), b"something else entirely").expect("write");
    let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
    assert!(dir.path().join("spool.log.unreadable").exists());
    assert_eq!(record(&mut spool, &[22], 1), Recorded::Appended { seq: 1 });
}

#[test]
fn a_full_spool_keeps_the_newest_inventory_and_records_the_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Spool::open(dir.path(), 600).expect("open");
    let mut collector = Collector::default();
    record(&mut spool, &[22], 1_000);
    collector.drain(&mut spool);
    // The collector is away: changes pile up until the 600-byte bound.
    let mut compacted = None;
    for i in 0..40u16 {
        if let Recorded::Compacted { gap, .. } =
            record(&mut spool, &[22, 1000 + i], 2_000 + i64::from(i))
        {
            compacted = Some((i, gap));
        }
        assert!(spool.bytes() <= 600, "spool is {} bytes", spool.bytes());
    }
    let (_, gap) = compacted.expect("the spool overflowed");
    assert!(gap.dropped_changes > 0);
    assert!(gap.from_unix_nanos >= 2_000 && gap.from_unix_nanos < gap.to_unix_nanos);
    collector.drain(&mut spool);
    assert_eq!(collector.stored, inventory(&[22, 1039]));
    assert_eq!(collector.gaps.len(), 1, "{:?}", collector.gaps);
    assert_eq!(
        collector.gaps[0].from_unix_nanos, 2_000,
        "the gap starts at the first unsent change"
    );
}

#[test]
fn a_collector_that_holds_another_seq_gets_the_chain_renumbered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
    record(&mut spool, &[22], 1);
    record(&mut spool, &[22, 80], 2);
    record(&mut spool, &[80], 3);
    // A host the collector knew before this agent's spool existed.
    let mut collector = Collector {
        last_seq: 57,
        ..Collector::default()
    };
    collector.drain(&mut spool);
    assert_eq!(collector.last_seq, 60);
    assert_eq!((collector.snapshots, collector.deltas), (1, 2));
    assert_eq!(collector.stored, inventory(&[80]));
    assert_eq!(
        record(&mut spool, &[80, 443], 4),
        Recorded::Appended { seq: 61 }
    );
}

#[test]
fn acknowledged_deltas_are_folded_into_the_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Spool::open(dir.path(), 64 << 20).expect("open");
    let mut collector = Collector::default();
    let ports: Vec<u16> = (1..2000).collect();
    record(&mut spool, &ports, 1);
    collector.drain(&mut spool);
    let base_size = spool.bytes();
    for i in 0..3000u16 {
        let mut now = ports.clone();
        now.push(10_000 + i);
        record(&mut spool, &now, 2 + i64::from(i));
        collector.drain(&mut spool);
    }
    assert!(
        spool.bytes() < 3 * base_size.max(MIN_COMPACTION_BYTES),
        "{} bytes",
        spool.bytes()
    );
    let reopened = Spool::open(dir.path(), 64 << 20).expect("reopen");
    assert_eq!(reopened.tip(), &collector.stored);
}

#[test]
fn resync_sends_the_newest_inventory_after_the_collectors_seq() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
    record(&mut spool, &[22], 1);
    spool.connected(0).expect("connected");
    record(&mut spool, &[22, 80], 2);
    let latest = ScanStats {
        sockets: 7,
        ..ScanStats::default()
    };
    spool.record(inventory(&[80]), 3, &latest).expect("record");
    spool.resync(9).expect("resync");
    match spool.next_to_send().expect("next") {
        Some(Outgoing::Snapshot {
            seq,
            inventory: inv,
            gap,
            stats,
            ..
        }) => {
            assert_eq!(
                stats, latest,
                "the snapshot carries the latest scan's figures"
            );
            assert_eq!(seq, 10);
            assert_eq!(inv, inventory(&[80]));
            assert!(gap.is_some(), "two unsent deltas were folded");
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

/// `spool.log` as an earlier build wrote it (its CRC-32 hand-written, before `crc32fast`):
/// a base with port 22, then deltas to [22, 80] and [22, 80, 443], none acknowledged.
const EARLIER_SPOOL: &[u8] = include_bytes!("testdata/spool.log");

#[test]
fn a_spool_an_earlier_build_wrote_still_reads_and_is_written_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(FILE_NAME), EARLIER_SPOOL).expect("write");
    let mut spool = Spool::open(dir.path(), 1 << 20).expect("open");
    assert!(!dir.path().join("spool.log.unreadable").exists());
    assert_eq!(spool.tip(), &inventory(&[22, 80, 443]));
    let mut collector = Collector::default();
    collector.drain(&mut spool);
    assert_eq!((collector.snapshots, collector.deltas), (1, 2));
    assert_eq!(collector.stored, inventory(&[22, 80, 443]));

    let fresh = tempfile::tempdir().expect("tempdir");
    {
        let mut spool = Spool::open(fresh.path(), 1 << 20).expect("open");
        record(&mut spool, &[22], 1);
        record(&mut spool, &[22, 80], 2);
        record(&mut spool, &[22, 80, 443], 3);
    }
    let written = std::fs::read(fresh.path().join(FILE_NAME)).expect("read");
    assert_eq!(written, EARLIER_SPOOL, "the same records, the same bytes");
}

#[test]
fn a_record_whose_crc_does_not_match_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = EARLIER_SPOOL.to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(dir.path().join(FILE_NAME), bytes).expect("write");
    let spool = Spool::open(dir.path(), 1 << 20).expect("open");
    assert_eq!(
        spool.tip(),
        &inventory(&[22, 80]),
        "the third record is gone"
    );
}

/// One step of the model: scans, the collector coming and going, restarts.
#[derive(Debug, Clone)]
enum Step {
    Scan(Vec<u16>),
    Deliver,
    Restart,
    CollectorLosesTail,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => proptest::collection::vec(1u16..40, 0..8).prop_map(Step::Scan),
        2 => Just(Step::Deliver),
        1 => Just(Step::Restart),
        1 => Just(Step::CollectorLosesTail),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the order of scans, deliveries, restarts and a collector forgetting its
    /// newest changes, and however small the bound: after a final delivery the collector
    /// holds the newest scan, seqs only grow, and nothing is sent that does not follow.
    #[test]
    fn the_collector_ends_with_the_newest_scan(
        steps in proptest::collection::vec(step(), 1..40),
        max_bytes in prop_oneof![Just(300u64), Just(2_000u64), Just(1u64 << 20)],
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spool = Spool::open(dir.path(), max_bytes).expect("open");
        let mut collector = Collector::default();
        let mut newest: Option<Inventory> = None;
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Scan(ports) => {
                    record(&mut spool, &ports, i as i64 + 1);
                    newest = Some(inventory(&ports));
                }
                Step::Deliver => collector.drain(&mut spool),
                Step::Restart => spool = Spool::open(dir.path(), max_bytes).expect("reopen"),
                Step::CollectorLosesTail => {
                    // A collector restored from an older backup: it holds less.
                    collector.history.pop();
                    let (seq, stored) = collector.history.last().cloned().unwrap_or_default();
                    collector.last_seq = seq;
                    collector.stored = stored;
                }
            }
        }
        collector.drain(&mut spool);
        if let Some(newest) = newest {
            prop_assert_eq!(&collector.stored, &newest);
        }
    }
}
