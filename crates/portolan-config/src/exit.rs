//! The exit status convention of Portolan's three binaries (sysexits):
//! 64 bad usage or configuration, 69 a service is unavailable (ClickHouse, the
//! collector), 77 not allowed (a refused certificate, a permission), 1 anything else.
//!
//! A binary marks what it knows with [`Classified`] and maps its error chain to a status
//! with [`classify`], which also recognises [`ConfigError`] (usage) and operating system
//! errors that say which it is (a permission: not allowed; a refused or timed out
//! connection: unavailable).

use std::error::Error;
use std::io;

use crate::ConfigError;

/// Exit status for bad usage or configuration (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit status when a service the binary needs cannot be reached (`EX_UNAVAILABLE`).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// Exit status when a certificate or a permission does not allow it (`EX_NOPERM`).
pub const EXIT_NOPERM: u8 = 77;
/// Exit status for any other failure.
pub const EXIT_FAILURE: u8 = 1;

/// What kind of failure ended a binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// Bad usage or configuration: 64.
    Usage,
    /// A needed service cannot be reached: 69.
    Unavailable,
    /// Not allowed (certificate, permission): 77.
    NotAllowed,
    /// Anything else: 1.
    Failure,
}

impl Exit {
    /// The process exit status.
    pub const fn code(self) -> u8 {
        match self {
            Exit::Usage => EXIT_USAGE,
            Exit::Unavailable => EXIT_UNAVAILABLE,
            Exit::NotAllowed => EXIT_NOPERM,
            Exit::Failure => EXIT_FAILURE,
        }
    }

    /// What an operating system error of `kind` says, when it says something.
    pub fn of_io(kind: io::ErrorKind) -> Option<Exit> {
        use io::ErrorKind as K;
        match kind {
            K::PermissionDenied => Some(Exit::NotAllowed),
            K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::TimedOut
            | K::HostUnreachable
            | K::NetworkUnreachable => Some(Exit::Unavailable),
            _ => None,
        }
    }
}

/// An error marked with the exit status it ends the binary with. It displays as the
/// error it wraps, and its source is that error's, so a printed chain reads the same.
#[derive(Debug)]
pub struct Classified {
    exit: Exit,
    error: Box<dyn Error + Send + Sync + 'static>,
}

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl Error for Classified {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.error.source()
    }
}

impl Classified {
    /// Marks `error` (an error, or a message) with `exit`.
    pub fn new(exit: Exit, error: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> Self {
        Classified {
            exit,
            error: error.into(),
        }
    }

    /// The exit status it is marked with.
    pub fn exit(&self) -> Exit {
        self.exit
    }
}

/// The exit status of an error chain (`anyhow::Error::chain()`, or
/// `std::iter::successors`): the first link, from the outermost, that says one:
/// a [`Classified`] mark, a [`ConfigError`] (usage), or an operating system error
/// [`Exit::of_io`] knows. [`Exit::Failure`] when none does.
pub fn classify<'a>(chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> Exit {
    chain
        .into_iter()
        .find_map(|link| {
            if let Some(marked) = link.downcast_ref::<Classified>() {
                Some(marked.exit)
            } else if link.is::<ConfigError>() {
                Some(Exit::Usage)
            } else {
                link.downcast_ref::<io::Error>()
                    .and_then(|e| Exit::of_io(e.kind()))
            }
        })
        .unwrap_or(Exit::Failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a source, as `anyhow`'s context adds.
    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct Context {
        message: &'static str,
        #[source]
        source: Box<dyn Error + Send + Sync + 'static>,
    }

    fn context(message: &'static str, source: impl Error + Send + Sync + 'static) -> Context {
        Context {
            message,
            source: Box::new(source),
        }
    }

    fn exit_of<'a>(e: &'a (dyn Error + 'static)) -> Exit {
        classify(std::iter::successors(
            Some(e),
            |e: &&'a (dyn Error + 'static)| (*e).source(),
        ))
    }

    #[test]
    fn codes_follow_sysexits() {
        let codes = [
            Exit::Usage,
            Exit::Unavailable,
            Exit::NotAllowed,
            Exit::Failure,
        ]
        .map(Exit::code);
        assert_eq!(codes, [64, 69, 77, 1]);
    }

    #[test]
    fn a_mark_anywhere_in_the_chain_decides() {
        let marked = Classified::new(Exit::Unavailable, "cannot reach ClickHouse");
        assert_eq!(
            exit_of(&context("collector failed", marked)),
            Exit::Unavailable
        );
        let refused = Classified::new(
            Exit::NotAllowed,
            io::Error::new(io::ErrorKind::ConnectionRefused, "refused"),
        );
        // The outermost link that says something wins.
        assert_eq!(exit_of(&refused), Exit::NotAllowed);
    }

    #[test]
    fn config_and_os_errors_say_what_they_are() {
        let config = ConfigError::Invalid("`listen` is not an address".into());
        assert_eq!(exit_of(&context("cannot start", config)), Exit::Usage);
        let denied = io::Error::new(io::ErrorKind::PermissionDenied, "denied");
        assert_eq!(
            exit_of(&context("cannot read tls.key", denied)),
            Exit::NotAllowed
        );
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(exit_of(&refused), Exit::Unavailable);
        let other = io::Error::new(io::ErrorKind::InvalidData, "bad bytes");
        assert_eq!(exit_of(&context("cannot decode", other)), Exit::Failure);
    }

    #[test]
    fn a_mark_displays_as_what_it_wraps() {
        let inner = context("outer", io::Error::other("inner"));
        let marked = Classified::new(Exit::Usage, inner);
        assert_eq!(marked.to_string(), "outer");
        assert_eq!(
            marked.source().map(ToString::to_string).as_deref(),
            Some("inner")
        );
    }
}
