//! Typed reading of YAML nodes, with every mistake recorded at its place.
//!
//! Decoders never stop at the first problem: a wrong value is reported and skipped, and
//! reading goes on, so one run of `validate` lists everything. A [`MapReader`] remembers
//! which keys were asked for; whatever is left over is an unknown field, reported with the
//! closest known name.

use std::sync::Arc;

use crate::diag::{Diagnostics, Location};
use crate::units;
use crate::yaml::{Entry, Node, Value};

/// The file being decoded and where its diagnostics go.
pub struct Ctx<'d> {
    pub file: Arc<str>,
    pub diags: &'d mut Diagnostics,
}

impl Ctx<'_> {
    pub fn error(&mut self, location: Location, message: impl Into<String>) {
        self.diags.error(&self.file, location, message);
    }

    pub fn warning(&mut self, location: Location, message: impl Into<String>) {
        self.diags.warning(&self.file, location, message);
    }
}

/// Reads the fields of one mapping.
pub struct MapReader<'n> {
    entries: &'n [Entry],
    used: Vec<bool>,
    asked: Vec<&'static str>,
    pub location: Location,
    what: &'static str,
}

impl<'n> MapReader<'n> {
    /// `what` names the mapping in messages: "wave", "server", "blueprint".
    pub fn new(node: &'n Node, what: &'static str, ctx: &mut Ctx) -> Option<MapReader<'n>> {
        match &node.value {
            Value::Map(entries) => Some(MapReader {
                entries,
                used: vec![false; entries.len()],
                asked: Vec::new(),
                location: node.location,
                what,
            }),
            _ => {
                ctx.error(
                    node.location,
                    format!("expected a mapping for {what}, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// The value of `key`, if present and not null.
    pub fn take(&mut self, key: &'static str) -> Option<&'n Node> {
        self.asked.push(key);
        let index = self.entries.iter().position(|e| e.key == key)?;
        self.used[index] = true;
        let node = &self.entries[index].value;
        (!node.is_null()).then_some(node)
    }

    /// Where `key` was written, if it was.
    pub fn key_location(&self, key: &str) -> Option<Location> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.key_location)
    }

    /// The value of `key`; missing, an error. A key written nearby that no one asked for
    /// yet (`nmae` for `name`) is taken as the misspelling: one error where it is written,
    /// not a missing field and an unknown one besides.
    pub fn required(&mut self, key: &'static str, ctx: &mut Ctx) -> Option<&'n Node> {
        let node = self.take(key);
        if node.is_none() {
            let what = self.what;
            let near =
                self.entries.iter().zip(&self.used).position(|(e, used)| {
                    !*used && e.key != key && closest(&e.key, &[key]).is_some()
                });
            match near {
                Some(index) => {
                    self.used[index] = true;
                    let entry = &self.entries[index];
                    ctx.error(
                        entry.key_location,
                        format!(
                            "missing field `{key}` in {what}: `{}` is written instead; did you mean `{key}`?",
                            entry.key
                        ),
                    );
                }
                None => ctx.error(self.location, format!("missing field `{key}` in {what}")),
            }
        }
        node
    }

    /// Keys a caller handles itself (for example inline secrets) count as known.
    pub fn entries(&self) -> &'n [Entry] {
        self.entries
    }

    pub fn mark_used(&mut self, key: &str) {
        if let Some(index) = self.entries.iter().position(|e| e.key == key) {
            self.used[index] = true;
        }
    }

    /// Reports every key that no one asked for, with a suggestion.
    pub fn finish(self, ctx: &mut Ctx) {
        for (entry, used) in self.entries.iter().zip(&self.used) {
            if *used {
                continue;
            }
            let message = match closest(&entry.key, &self.asked) {
                Some(near) => format!(
                    "unknown field `{}` in {}; did you mean `{near}`?",
                    entry.key, self.what
                ),
                None => {
                    let mut known: Vec<&str> = self.asked.clone();
                    known.sort_unstable();
                    known.dedup();
                    format!(
                        "unknown field `{}` in {}; expected one of: {}",
                        entry.key,
                        self.what,
                        known.join(", ")
                    )
                }
            };
            ctx.error(entry.key_location, message);
        }
    }
}

/// The known name nearest to `word`, if it is near enough to be a typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    // Edit distance costs the product of the lengths: long words are no typos anyway.
    if word.chars().count() > 64 {
        return None;
    }
    let lowered = word.to_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&lowered, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.chars().count().max(3) / 3).max(1) || lowered == c.to_lowercase())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Like [`closest`] for owned candidates (names from the definitions).
pub fn closest_owned<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let list: Vec<&'a str> = candidates.collect();
    closest(word, &list)
}

/// Edit distance where swapping two neighbours counts as one edit (optimal string
/// alignment), since `lcoal` for `local` is the commonest typo.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, row) in d.chunks_mut(width).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j - 1] + cost)
                .min(d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// The text of a scalar, or an error naming what was found instead.
pub fn string(node: &Node, what: &str, ctx: &mut Ctx) -> Option<String> {
    match &node.value {
        Value::Scalar(s) => Some(s.text.clone()),
        _ => {
            ctx.error(
                node.location,
                format!("expected text for {what}, found {}", node.describe()),
            );
            None
        }
    }
}

/// A path to a file or folder: not empty. `file`: it names a file (one written as a
/// folder, with a trailing `/` or as `.`, is refused).
pub fn path(node: &Node, what: &str, file: bool, ctx: &mut Ctx) -> Option<String> {
    let text = string(node, what, ctx)?;
    if text.trim().is_empty() {
        ctx.error(
            node.location,
            format!(
                "{what}: is empty: write a path (relative ones are from the configuration's folder)"
            ),
        );
        return None;
    }
    let folder = text.ends_with('/')
        || text == "."
        || text == ".."
        || text.ends_with("/.")
        || text.ends_with("/..");
    if file && folder {
        ctx.error(
            node.location,
            format!("{what}: `{text}` names a folder: write the file's path"),
        );
        return None;
    }
    Some(text)
}

/// A scalar turned into a value by `parse`, whose error message is placed at the node.
pub fn parsed<T>(
    node: &Node,
    what: &str,
    ctx: &mut Ctx,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let text = string(node, what, ctx)?;
    match parse(&text) {
        Ok(value) => Some(value),
        Err(message) => {
            ctx.error(node.location, format!("{what}: {message}"));
            None
        }
    }
}

pub fn boolean(node: &Node, what: &str, ctx: &mut Ctx) -> Option<bool> {
    parsed(node, what, ctx, |text| match text {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        other => Err(format!("expected true or false, found `{other}`")),
    })
}

pub fn unsigned(node: &Node, what: &str, max: u64, ctx: &mut Ctx) -> Option<u64> {
    parsed(node, what, ctx, |text| {
        let trimmed = text.trim();
        let whole = trimmed.strip_prefix('-').unwrap_or(trimmed);
        let value: u64 = trimmed.parse().map_err(|_| {
            if !whole.is_empty() && whole.chars().all(|c| c.is_ascii_digit()) {
                format!("`{text}` is out of range: write a whole number from 0 to {max}")
            } else {
                format!("expected a whole number, found `{text}`")
            }
        })?;
        if value > max {
            return Err(format!("{value} is more than the maximum of {max}"));
        }
        Ok(value)
    })
}

pub fn number(node: &Node, what: &str, ctx: &mut Ctx) -> Option<f64> {
    parsed(node, what, ctx, |text| {
        let value: f64 = text
            .trim()
            .parse()
            .map_err(|_| format!("expected a number, found `{text}`"))?;
        if !value.is_finite() {
            return Err(format!("expected a finite number, found `{text}`"));
        }
        Ok(value)
    })
}

pub fn duration(node: &Node, what: &str, ctx: &mut Ctx) -> Option<units::Dur> {
    parsed(node, what, ctx, units::parse_duration)
}

pub fn size(node: &Node, what: &str, ctx: &mut Ctx) -> Option<u64> {
    parsed(node, what, ctx, units::parse_size)
}

/// A name used as an identifier: letters, digits, `-`, `_` and `.`, at most 100 long.
pub fn name(node: &Node, what: &str, ctx: &mut Ctx) -> Option<String> {
    parsed(node, what, ctx, crate::rules::check_name)
}

/// An email address as mail servers take it (RFC 5321's common form, as the mail
/// library checks it before sending): a local part of dot-separated atoms, `@`, and a
/// domain of two or more labels (letters, digits, `-` inside, at most 63 each).
pub fn email(node: &Node, what: &str, ctx: &mut Ctx) -> Option<String> {
    parsed(node, what, ctx, |text| {
        let text = text.trim();
        match email_problem(text) {
            None => Ok(text.to_owned()),
            Some(problem) => Err(format!("`{text}` is not an email address: {problem}")),
        }
    })
}

/// What is wrong with `text` as an email address, if anything.
pub fn email_problem(text: &str) -> Option<&'static str> {
    let Some((local, domain)) = text.rsplit_once('@') else {
        return Some("it has no `@`");
    };
    if local.len() > 64 {
        return Some("the part before `@` is longer than mail takes (64 characters)");
    }
    if domain.len() > 253 {
        return Some("the domain after `@` is longer than mail takes (253 characters)");
    }
    let atom = |a: &str| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c))
    };
    if local.is_empty() || !local.split('.').all(atom) {
        return Some(
            "the part before `@` is empty, has a character mail does not take there, or a dot at its start, its end or twice in a row",
        );
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label) {
        return Some(
            "the domain after `@` needs two or more dot-separated names of ASCII letters, digits and `-` (not at either end), none empty",
        );
    }
    None
}

/// The items of a list; a single scalar is not silently taken as a list of one.
pub fn list<'n>(node: &'n Node, what: &str, ctx: &mut Ctx) -> &'n [Node] {
    match &node.value {
        Value::Seq(items) => items,
        _ => {
            ctx.error(
                node.location,
                format!("expected a list for {what}, found {}", node.describe()),
            );
            &[]
        }
    }
}

/// A mapping of names to text, such as tags.
pub fn string_map(
    node: &Node,
    what: &str,
    ctx: &mut Ctx,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    match &node.value {
        Value::Map(entries) => {
            for entry in entries {
                match &entry.value.value {
                    Value::Scalar(s) => {
                        out.insert(entry.key.clone(), s.text.clone());
                    }
                    Value::Null => {
                        out.insert(entry.key.clone(), String::new());
                    }
                    _ => ctx.error(
                        entry.value.location,
                        format!(
                            "expected text for {what} `{}`, found {}",
                            entry.key,
                            entry.value.describe()
                        ),
                    ),
                }
            }
        }
        _ => ctx.error(
            node.location,
            format!("expected a mapping for {what}, found {}", node.describe()),
        ),
    }
    out
}

/// Any YAML value as JSON, for free-form engine options. Plain scalars become numbers
/// and booleans where they read as such.
/// A plain scalar as a JSON number when it is one JSON keeps as written: a whole number
/// within 64 bits, or a decimal fraction that is finite. Anything else (`inf`, `NaN`,
/// `1e400`, an id of 26 digits) stays text, never null or rounded.
fn plain_number(text: &str) -> Option<serde_json::Value> {
    if let Ok(n) = text.parse::<i64>() {
        return Some(n.into());
    }
    if let Ok(n) = text.parse::<u64>() {
        return Some(n.into());
    }
    let digits = text.trim_start_matches(['-', '+']);
    let decimal = digits.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && digits.contains(['.', 'e', 'E'])
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'));
    let value = text
        .parse::<f64>()
        .ok()
        .filter(|v| decimal && v.is_finite())?;
    serde_json::Number::from_f64(value).map(serde_json::Value::Number)
}

pub fn to_json(node: &Node) -> serde_json::Value {
    match &node.value {
        Value::Null => serde_json::Value::Null,
        Value::Scalar(s) if s.plain => match s.text.as_str() {
            "true" => serde_json::Value::Bool(true),
            "false" => serde_json::Value::Bool(false),
            text => {
                plain_number(text).unwrap_or_else(|| serde_json::Value::String(text.to_owned()))
            }
        },
        Value::Scalar(s) => serde_json::Value::String(s.text.clone()),
        Value::Seq(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => serde_json::Value::Object(
            entries
                .iter()
                .map(|e| (e.key.clone(), to_json(&e.value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_kept_as_written_or_as_text() {
        let number = |t: &str| plain_number(t).map(|v| v.to_string());
        assert_eq!(number("42").as_deref(), Some("42"));
        assert_eq!(number("-7").as_deref(), Some("-7"));
        assert_eq!(
            number("18446744073709551615").as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(number("1.5").as_deref(), Some("1.5"));
        assert_eq!(number("2.5e3").as_deref(), Some("2500.0"));
        for text in [
            "NaN",
            "nan",
            "inf",
            "-inf",
            "infinity",
            ".inf",
            "1e400",
            "99999999999999999999999999",
            "123456789012345678901",
            "0x1F",
            "1_000",
            "v1.2",
        ] {
            assert_eq!(number(text), None, "{text}");
        }
    }

    #[test]
    fn suggestions_catch_typos_only() {
        let known = ["window", "phases", "applications", "engine"];
        assert_eq!(closest("windw", &known), Some("window"));
        assert_eq!(closest("lcoal", &["local", "sim", "mgn"]), Some("local"));
        assert_eq!(closest("Engine", &known), Some("engine"));
        assert_eq!(closest("aplications", &known), Some("applications"));
        assert_eq!(closest("colour", &known), None);
    }
}
