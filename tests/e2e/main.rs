//! End-to-end tests: real binaries, real ClickHouse, real mutual TLS, hosts in network
//! namespaces with real sockets between them; `ss` is the oracle of what the kernel holds.
//!
//! - `cli_history`: the CLI's past and live verbs (`at`, `history`, `ack`, `watch`,
//!   `rules test`) run as the real binary: what was open then and not now, admins alone
//!   acknowledge, a watch prints what opens after it started.
//! - `clickhouse_tls`: the collector stores an agent's inventory in a ClickHouse served
//!   over HTTPS with a private CA's certificate; its `/readyz` names a TLS failure and
//!   what to configure when the server's certificate changes to an untrusted one.
//! - `faults`: the collector SIGKILLed, ClickHouse stopped for 30 s under load, the
//!   network cut for a minute, the agent killed holding unacknowledged changes — while
//!   listeners open and close: every opening and closing stored once, at its scan time,
//!   and ClickHouse equal to `ss` afterwards.
//! - `history`: the query API's past and live RPCs over mutual TLS: a host's sockets at
//!   an instant (not now), the history of a port, a new listener streamed within
//!   seconds, paging that returns every socket once, acknowledgements by admins only.
//! - `health`: probes fail when they should: ClickHouse stopped turns the collector's
//!   `/readyz` 503 and its gRPC health NOT_SERVING within seconds, and back when it
//!   returns; an agent whose spool overflows with no collector is not ready until it
//!   connects again.
//! - `hostile`: an agent with a valid certificate sends oversized, undecodable,
//!   malformed, out-of-order and another host's data, huge strings and a flood: each
//!   refused with its own status and logged, nothing stored, a real agent unaffected.
//! - `metrics`: `/metrics` of an agent and a collector after real streaming: scans,
//!   acknowledgements, one connected agent, rows written.
//! - `namespaces`: one agent on a node (its own PID namespace) inventories the pods and
//!   container in child network namespaces: ClickHouse equals `ss` inside each, every
//!   socket attributed to its namespace, process, container and pod, wildcard binds
//!   scoped by their own namespace's interfaces.
//! - `pipeline`: three hosts stream their inventories; ClickHouse equals `ss` in each
//!   host; listeners opened and closed show up within two scan intervals.
//! - `protocols`: Unix listeners (on a path and an abstract name) and a raw ICMP socket
//!   in a host's namespace reach ClickHouse with their paths, protocol numbers, exposure
//!   and owner, as `ss -xl` and `ss -w` list them there.
//! - `refusals`: no client certificate, another CA, a certificate for another host, a
//!   non-agent certificate, oversized and malformed messages: refused with a clear status,
//!   nothing stored, other agents unaffected.
//! - `proxy`: `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` through a real tinyproxy: an agent
//!   streams through its CONNECT tunnel, wrong credentials are refused with a message
//!   naming the proxy, `NO_PROXY` goes direct, webhook notifications are forwarded.
//! - `query`: the CLI's first verbs (`hosts`, `host`, `sockets`, `who-listens`, `flows`,
//!   `findings`) equal the sockets the test opened; refusals exit 77, 69 and 64.
//! - `revocation`: a certificate revoked while its stream is open (ended within
//!   seconds, reconnects refused, nothing more stored), an operator's watch ended;
//!   renewed agent and collector certificates and a new CA taken up without a restart.
//! - `reconnect`, `replicas`: a collector killed mid-stream and restarted; two replicas
//!   sharing one ClickHouse.
//! - `rules`: every rule kind raised by real sockets, alerted to Alertmanager and a
//!   webhook, resolved when undone; the time from socket to alert.
//! - `traces`: OpenTelemetry over OTLP: one delta's trace runs from the agent's `send`
//!   through the collector's `ingest` to its `store`; without the variable, or with an
//!   endpoint where nothing listens, data lands as usual and the exporter warns once.

mod cli_history;
mod clickhouse_tls;
mod enrollment;
mod faults;
mod grafana;
mod health;
mod history;
mod hostile;
mod metrics;
mod namespaces;
mod pipeline;
mod protocols;
mod proxy;
mod query;
mod reconnect;
mod refusals;
mod replicas;
mod revocation;
mod rules;
mod support;
mod traces;
