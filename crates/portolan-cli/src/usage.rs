//! Telling errors the user fixes (exit 64) from the others (exit 1).

use std::error::Error;
use std::fmt;
use std::io;

/// An error the user fixes by changing the command line or the files it names.
///
/// It shows as its inner error does (same text, same causes), so the chain printed by
/// `main` reads the same; `main` only looks for it to pick the exit code.
#[derive(Debug)]
pub struct UsageError(Box<dyn Error + Send + Sync + 'static>);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Error for UsageError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

/// Marks `error` as the user's to fix.
pub fn usage(error: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> anyhow::Error {
    anyhow::Error::new(UsageError(error.into()))
}

/// Whether any error in the chain is a [`UsageError`].
pub fn is_usage(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<UsageError>())
}

/// Whether the error is a closed stdout (`portolan … | head`), which is not a failure.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
