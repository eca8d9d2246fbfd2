//! Errors of rule files.

use std::fmt;

/// One problem in a rule file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file name the caller gave to [`crate::parse`].
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what was expected; lowercase, names in backticks.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// Why a rule file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The file is not valid YAML; nothing else was checked.
    #[error("{0}")]
    Yaml(Problem),
    /// The file is YAML but not a valid rule file: every problem found, in file order.
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

impl RuleError {
    /// Every problem, in file order.
    pub fn problems(&self) -> &[Problem] {
        match self {
            RuleError::Yaml(p) => std::slice::from_ref(p),
            RuleError::Invalid(ps) => ps,
        }
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}
