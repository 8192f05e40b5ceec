//! Diagnostics with a `file:line:column` position, as `rowgate check` prints them.

use std::fmt;
use std::path::{Path, PathBuf};

/// How bad a diagnostic is: errors stop a policy from loading, warnings do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a configuration or policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    pub fn error(file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(file, pos, Severity::Error, message)
    }

    pub fn warning(file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(file, pos, Severity::Warning, message)
    }

    fn new(file: &Path, pos: Pos, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            severity,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A 1-based line and column in a source file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    /// The start of a file, for problems that belong to the file as a whole.
    pub const START: Pos = Pos { line: 1, column: 1 };
}

impl From<serde_saphyr::Location> for Pos {
    fn from(loc: serde_saphyr::Location) -> Self {
        Pos {
            line: loc.line().max(1),
            column: loc.column().max(1),
        }
    }
}

/// Turns a YAML parse error into a diagnostic at the position the parser names.
pub fn from_yaml_error(file: &Path, err: &serde_saphyr::Error) -> Diagnostic {
    let pos = err.location().map(Pos::from).unwrap_or(Pos::START);
    let text = err.to_string();
    // The parser appends its own " at line N, column M"; the prefix says it already.
    let message = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    Diagnostic::error(file, pos, message)
}

/// YAML options for every file rowgate reads: no snippets in messages, and the
/// crate's default limits against alias bombs and oversized documents.
pub fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { with_snippet: false }
}
