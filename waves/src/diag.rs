//! Diagnostics: every problem found in the definitions, with its place.
//!
//! Validation never stops at the first problem; it collects them all here and the caller
//! prints them as `FILE:LINE:COL: error: MESSAGE`, sorted by place.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// A place in a source file; line and column count from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Location {
    pub line: u32,
    pub col: u32,
}

impl Location {
    pub const START: Location = Location { line: 1, col: 1 };

    pub fn new(line: u32, col: u32) -> Location {
        Location { line, col }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Diagnostic {
    pub file: Arc<str>,
    #[serde(flatten)]
    pub location: Location,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.location.line, self.location.col, self.severity, self.message
        )
    }
}

/// A file with more diagnostics than this is not worth reading further; the rest are
/// dropped, so a hostile file cannot fill memory with messages.
pub const MAX_PER_FILE: usize = 1000;

/// Longer messages are cut: one that quotes a huge value must still fit a terminal line.
const MAX_MESSAGE_CHARS: usize = 500;

/// `text` with its control characters escaped (`\n`, `\u{1b}`): shown on a terminal it
/// stays on its line and sends no escape sequence.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect(),
    )
}

/// A message stays on one line (control characters escaped) and within a length limit.
fn one_line(message: String) -> String {
    let clean = message.chars().all(|c| !c.is_control()) && message.len() <= MAX_MESSAGE_CHARS;
    if clean {
        return message;
    }
    let mut out: String = message
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if message.chars().nth(MAX_MESSAGE_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// The diagnostics of one run, in the order they were found.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
    per_file: std::collections::HashMap<Arc<str>, usize>,
    /// What was said already: an error inside a YAML anchor is found once for every alias
    /// that uses it, but said (and counted) once.
    said: std::collections::HashSet<(Arc<str>, Location, String)>,
}

impl Diagnostics {
    pub fn new() -> Diagnostics {
        Diagnostics::default()
    }

    pub fn error(&mut self, file: &Arc<str>, location: Location, message: impl Into<String>) {
        self.push(file, location, Severity::Error, message.into());
    }

    pub fn warning(&mut self, file: &Arc<str>, location: Location, message: impl Into<String>) {
        self.push(file, location, Severity::Warning, message.into());
    }

    fn push(&mut self, file: &Arc<str>, location: Location, severity: Severity, message: String) {
        let message = one_line(message);
        if !self
            .said
            .insert((Arc::clone(file), location, message.clone()))
        {
            return;
        }
        let count = self.per_file.entry(Arc::clone(file)).or_insert(0);
        *count += 1;
        if *count > MAX_PER_FILE {
            if *count == MAX_PER_FILE + 1 {
                self.items.push(Diagnostic {
                    file: Arc::clone(file),
                    location,
                    severity: Severity::Error,
                    message: format!(
                        "more than {MAX_PER_FILE} problems in this file; the rest are not shown"
                    ),
                });
            }
            return;
        }
        self.items.push(Diagnostic {
            file: Arc::clone(file),
            location,
            severity,
            message,
        });
    }

    pub fn extend(&mut self, other: Diagnostics) {
        for item in other.items {
            self.push(&item.file, item.location, item.severity, item.message);
        }
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.count(Severity::Error)
    }

    pub fn warning_count(&self) -> usize {
        self.count(Severity::Warning)
    }

    fn count(&self, severity: Severity) -> usize {
        self.items.iter().filter(|d| d.severity == severity).count()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sorted by file and place.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.items.sort();
        self.items.dedup();
        self.items
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }
}
