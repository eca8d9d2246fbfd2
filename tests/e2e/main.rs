//! End-to-end tests: real binaries, real ClickHouse, real mutual TLS, hosts in network
//! namespaces with real sockets between them; `ss` is the oracle of what the kernel holds.
//!
//! - `cli_history`: the CLI's past and live verbs (`at`, `history`, `ack`, `watch`,
//!   `rules test`) run as the real binary: what was open then and not now, admins alone
//!   acknowledge, a watch prints what opens after it started.
//! - `history`: the query API's past and live RPCs over mutual TLS: a host's sockets at
//!   an instant (not now), the history of a port, a new listener streamed within
//!   seconds, paging that returns every socket once, acknowledgements by admins only.
//! - `metrics`: `/metrics` of an agent and a collector after real streaming: scans,
//!   acknowledgements, one connected agent, rows written.
//! - `pipeline`: three hosts stream their inventories; ClickHouse equals `ss` in each
//!   host; listeners opened and closed show up within two scan intervals.
//! - `refusals`: no client certificate, another CA, a certificate for another host, a
//!   non-agent certificate, oversized and malformed messages: refused with a clear status,
//!   nothing stored, other agents unaffected.
//! - `query`: the CLI's first verbs (`hosts`, `host`, `sockets`, `who-listens`, `flows`,
//!   `findings`) equal the sockets the test opened; refusals exit 77, 69 and 64.
//! - `reconnect`, `replicas`: a collector killed mid-stream and restarted; two replicas
//!   sharing one ClickHouse.
//! - `rules`: every rule kind raised by real sockets, alerted to Alertmanager and a
//!   webhook, resolved when undone; the time from socket to alert.

mod cli_history;
mod history;
mod metrics;
mod pipeline;
mod query;
mod reconnect;
mod refusals;
mod replicas;
mod rules;
mod support;
