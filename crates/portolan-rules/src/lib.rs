//! Portolan exposure rules: a YAML rule language, validated with precise errors and
//! compiled to ClickHouse SQL.
//!
//! Pure: this crate does no I/O and talks to no server. A caller reads a rule file,
//! [`parse`]s it into a [`RuleSet`], [`compile`]s each [`Rule`] to one SQL query and runs
//! the query on the store's database; every query returns rows of the [finding
//! contract](FINDING_COLUMNS).
//!
//! # A rule file
//!
//! ```yaml
//! version: 1
//! rules:
//!   - id: db-exposed-prod
//!     kind: listener
//!     severity: high
//!     description: a database listens on a public or wildcard address in production
//!     hosts:
//!       labels: {env: prod}       # every label must match (values are globs)
//!       hostname: ["db-*"]        # any glob may match
//!       host_id: [h1, h2]         # any id may match
//!     sockets:
//!       protocol: tcp             # or udp, sctp, raw, unix (a list: any of them)
//!       ports: [5432, 3306, "9200-9300"]
//!       exposure: [public, wildcard]
//!       process: "postgres*"      # globs on any owning process: process, executable,
//!                                 # user, unit, container
//!       pod: ["db-*", "shop/pg-*"] # Kubernetes pod name, or namespace/name with a `/`
//!       pod_namespace: [shop]     # the pod's Kubernetes namespace
//!       netns: [host]             # network namespaces: `host` (the agent's own) or inodes
//! ```
//!
//! A socket in another network namespace than the agent's (a pod, a container) is its
//! own finding: the subject says where (`tcp 0.0.0.0:80 in pod shop/web-1`, or
//! `in netns 4026532999` outside a known pod), the evidence carries `netns=` and `pod=`,
//! and the fingerprint includes the pod (`namespace/name`, stable across the pod's
//! restarts) or the namespace. Sockets of the host's own namespace keep the subjects and
//! fingerprints they always had.
//!
//! Kinds and their parameters are described on [`Kind`]. The SQL avoids everything that
//! Debian's `clickhouse-server` 18.16 lacks (no window functions, no CTEs, one JOIN per
//! SELECT with an explicit `ALL` strictness, no `Map`, no `DateTime64`), so the same
//! text runs there and on current servers.
//!
//! # The finding contract
//!
//! Every compiled query returns the columns of [`FINDING_COLUMNS`], in that order, all
//! of type `String`:
//!
//! | column | meaning |
//! |---|---|
//! | `rule_id` | the rule's id |
//! | `host_id` | the host the finding is about; empty for a fleet-wide finding (a scan of several hosts) |
//! | `fingerprint` | 16 upper-case hex digits of `cityHash64` over the rule id and the finding's identity (never pids, inodes, counts or times): the same situation gives the same fingerprint at every evaluation |
//! | `severity` | the rule's severity: `info`, `low`, `medium`, `high` or `critical` |
//! | `subject` | what the finding is about, for a human: `tcp 0.0.0.0:5432`, `tcp port 8080`, `203.0.113.7` |
//! | `evidence` | space-separated `key=value` pairs; values are comma-separated lists where several |
//!
//! Rows are ordered by `host_id`, then `subject`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dry_run;
mod error;
mod kind;
pub mod lifecycle;
mod model;
mod parse;
mod sql;

pub use error::{Problem, RuleError};
pub use kind::{
    BaselineScope, DriftParams, EphemeralPer, FlowPolicyParams, NewListenerParams, ScanBy, SharedBy,
};
pub use model::{
    Cidr, Glob, HostSelector, Kind, PortRange, Rule, RuleSet, Severity, SocketPredicate,
};
pub use parse::parse;
pub use sql::{FINDING_COLUMNS, Sources, compile, compile_with, glob_regex, sql_string};
