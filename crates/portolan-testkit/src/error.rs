//! The testkit's error type.

use std::io;

/// What went wrong while setting up or driving a test fixture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process lacks the capabilities to create network namespaces.
    #[error(
        "network namespaces need root (CAP_SYS_ADMIN): run the e2e tests as root, e.g. `sudo just test`"
    )]
    NotRoot,
    /// A command ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// A command could not be started.
    #[error("cannot run `{command}`: {source} (is it installed and on PATH?)")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another I/O error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A lab or host name that cannot become part of a namespace name.
    #[error("invalid name `{0}`: use 1 to 24 lowercase ASCII letters, digits and `-`")]
    InvalidName(String),
    /// A lab already has a host of this name.
    #[error("lab `{lab}` already has a host `{name}`: give each host its own name")]
    DuplicateHost {
        /// The lab's prefix.
        lab: String,
        /// The name.
        name: String,
    },
    /// Every lab subnet `10.77.1.0/24` … `10.77.254.0/24` is taken.
    #[error(
        "no free lab subnet in 10.77.1.0/24..10.77.254.0/24 (leftover `ptlbr*` bridges? `Lab::cleanup_stale` removes those of dead test processes)"
    )]
    NoFreeSubnet,
    /// A lab holds at most 253 hosts.
    #[error("lab `{0}` is full: a lab holds at most 253 hosts")]
    LabFull(String),
    /// The socket fixture refused a command, answered something unexpected or died.
    #[error("socket fixture `{fixture}`: {message}")]
    Fixture {
        /// Which fixture (its namespace and pid).
        fixture: String,
        /// What happened.
        message: String,
    },
    /// The fixture binary could not be found or built.
    #[error("cannot find or build `portolan-socket-fixture`: {0}")]
    FixtureBinary(String),
    /// A line of `ss` output that does not parse.
    #[error("cannot parse `ss` line `{line}`: {reason}")]
    SsParse {
        /// The line.
        line: String,
        /// What was expected.
        reason: String,
    },
    /// ClickHouse answered an HTTP query with an error.
    #[error("ClickHouse at {url} refused `{query}`: {response}")]
    ClickHouse {
        /// The server.
        url: String,
        /// The query.
        query: String,
        /// What it answered, status line and body.
        response: String,
    },
}

/// Result with the testkit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
