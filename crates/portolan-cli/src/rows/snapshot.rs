//! `portolan at TIME HOST`: what was open on a host at an instant.

use std::io::{self, Write};
use std::time::Duration;

use portolan_proto::v1 as pb;
use serde::Serialize;

use super::{FlowRow, SocketRow, host_name, plural};
use crate::output::{self, Context, Format, age_text};

/// A host's inventory at a past instant (JSON: one object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotDoc {
    /// The host's id.
    pub host_id: String,
    /// Its hostname (as it is now: names have no history).
    pub hostname: String,
    /// The instant asked for, Unix seconds.
    pub at_unix: i64,
    /// The last change stored at or before the instant; 0: the host had not reported
    /// yet (and the lists are empty).
    pub seq: u64,
    /// Scan time of that change, Unix seconds; 0 with `seq` 0.
    pub seq_at_unix: i64,
    /// The lists were cut (more than 100,000 sockets or flows).
    pub truncated: bool,
    /// The sockets open then, listeners first, each as `portolan sockets` prints it
    /// (`updated_unix`: its last event at or before the instant).
    pub sockets: Vec<SocketRow>,
    /// The flows present then, as `portolan flows` prints them; `null` without
    /// `--flows`.
    pub flows: Option<Vec<FlowRow>>,
}

impl SnapshotDoc {
    /// The document of an answer about `host_id` at `at_unix`; flows only when asked.
    pub fn new(host_id: &str, at_unix: i64, flows: bool, r: &pb::GetSnapshotResponse) -> Self {
        let mut sockets: Vec<SocketRow> = r.sockets.iter().map(SocketRow::from).collect();
        // Listeners first; the collector's order (port, socket) within each part.
        sockets.sort_by_key(|s| s.state != "listen");
        let host = r.host.clone().unwrap_or_default();
        SnapshotDoc {
            host_id: if host.host_id.is_empty() {
                host_id.to_string()
            } else {
                host.host_id
            },
            hostname: host.hostname,
            at_unix,
            seq: r.seq,
            seq_at_unix: r.seq_at_unix,
            truncated: r.truncated,
            sockets,
            flows: flows.then(|| r.flows.iter().map(FlowRow::from).collect()),
        }
    }

    /// The line above the tables: the host, the instant and the last change at or
    /// before it.
    pub fn header(&self, ctx: &Context) -> String {
        let host = host_name(&self.hostname, &self.host_id);
        let at = format!(
            "{host} at {} ({})",
            ctx.instant(self.at_unix),
            ctx.time(self.at_unix)
        );
        if self.seq == 0 {
            return format!(
                "{at}: no change stored at or before it (the host had not reported yet)"
            );
        }
        let listeners = self.sockets.iter().filter(|s| s.state == "listen").count();
        let mut counts = format!(
            "{}, {}",
            plural(listeners, "listener", "listeners"),
            plural(
                self.sockets.len() - listeners,
                "other socket",
                "other sockets"
            )
        );
        if let Some(flows) = &self.flows {
            counts.push_str(&format!(", {}", plural(flows.len(), "flow", "flows")));
        }
        let before = match self.at_unix - self.seq_at_unix {
            d if d <= 0 => "the same second".to_string(),
            d => format!(
                "{} earlier",
                age_text(Duration::from_secs(d.unsigned_abs()))
            ),
        };
        format!(
            "{at}: last change at or before it scanned {} ({before}, seq {}); {counts}",
            ctx.instant(self.seq_at_unix),
            self.seq
        )
    }

    /// Prints it: JSON, the sockets as CSV, or for people the header line and the
    /// tables (sockets, then flows when asked).
    pub fn write(&self, out: &mut dyn Write, ctx: &Context) -> io::Result<()> {
        match ctx.format {
            Format::Json => output::write_document(out, self),
            Format::Csv => output::write_list(out, ctx, &self.sockets),
            Format::Table | Format::Wide => {
                writeln!(out, "{}", self.header(ctx))?;
                if !self.sockets.is_empty() {
                    writeln!(out)?;
                    output::write_list(out, ctx, &self.sockets)?;
                }
                if let Some(flows) = self.flows.as_ref().filter(|f| !f.is_empty()) {
                    writeln!(out)?;
                    output::write_list(out, ctx, flows)?;
                }
                Ok(())
            }
        }
    }
}
