//! YAML text to a tree of nodes that remember where they were written.
//!
//! The tree is built from the events of `saphyr-parser` with the limits that keep hostile
//! input harmless: a nesting depth, a node budget that also bounds alias expansion (the
//! "billion laughs"), and unique keys. Merge keys (`<<: *defaults`) are applied here, so
//! the decoders downstream never see them. Scalars keep their text and whether they were
//! quoted; typing is left to the decoders, which know what each field expects.

use std::collections::HashMap;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::diag::{Diagnostics, Location};

/// Deeper nesting is refused; a wave file needs about eight levels.
pub const MAX_DEPTH: usize = 64;

/// Nodes per file after alias expansion; a wave of 10,000 servers needs about 300,000.
pub const MAX_NODES: usize = 2_000_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub location: Location,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing at all after a key.
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Quoted or block scalars are always strings; only plain ones can be numbers or booleans.
    pub plain: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_location: Location,
    pub value: Node,
}

/// Places `node` and everything in it at `location` (an alias's copy of its anchor).
fn relocate(node: &mut Node, location: Location) {
    node.location = location;
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| relocate(n, location)),
        Value::Map(entries) => {
            for entry in entries {
                entry.key_location = location;
                relocate(&mut entry.value, location);
            }
        }
        Value::Null | Value::Scalar(_) => {}
    }
}

impl Node {
    /// How the node reads in a sentence: "a mapping", "the string \"abc\"".
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "nothing (null)".to_owned(),
            Value::Scalar(s) => {
                let text: String = s.text.chars().take(40).collect();
                let cut = if text.len() < s.text.len() { "..." } else { "" };
                format!("\"{}{cut}\"", text.escape_debug())
            }
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        }
    }

    pub fn as_scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }
}

fn location_of(span: &Span) -> Location {
    let line = u32::try_from(span.start.line()).unwrap_or(u32::MAX);
    let col = u32::try_from(span.start.col().saturating_add(1)).unwrap_or(u32::MAX);
    Location::new(line.max(1), col)
}

enum Frame {
    Seq {
        location: Location,
        anchor: usize,
        items: Vec<Node>,
        size: usize,
    },
    Map {
        location: Location,
        anchor: usize,
        entries: Vec<Entry>,
        pending_key: Option<(String, Location, bool)>,
        size: usize,
        bad_key: bool,
        /// Key positions, built once a mapping is large enough that a linear search for
        /// duplicates would make a hostile file of many keys quadratic.
        index: Option<HashMap<String, usize>>,
        /// Values of plain `<<` keys, merged in when the mapping ends.
        merges: Vec<Node>,
    },
}

/// Mappings up to this size look for duplicate keys by a linear search.
const LINEAR_KEY_SEARCH: usize = 32;

struct Builder<'d> {
    file: Arc<str>,
    diags: &'d mut Diagnostics,
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    documents: Vec<Node>,
    /// A duplicate key's value was left out.
    dropped: bool,
}

/// Why building stopped before the end of the file.
struct Abort;

impl Builder<'_> {
    fn error(&mut self, location: Location, message: impl Into<String>) {
        self.diags.error(&self.file, location, message);
    }

    fn count(&mut self, n: usize, location: Location) -> Result<(), Abort> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            self.error(
                location,
                format!(
                    "more than {MAX_NODES} values after expanding aliases (an alias bomb?): \
                     reduce the aliases or split the file"
                ),
            );
            return Err(Abort);
        }
        Ok(())
    }

    fn push_frame(&mut self, frame: Frame, location: Location) -> Result<(), Abort> {
        if self.stack.len() >= MAX_DEPTH {
            self.error(
                location,
                format!("nesting deeper than {MAX_DEPTH} levels: a definition never needs this"),
            );
            return Err(Abort);
        }
        self.count(1, location)?;
        self.stack.push(frame);
        Ok(())
    }

    /// A finished node goes to its parent, or becomes a document.
    fn complete(&mut self, node: Node, size: usize, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.documents.push(node),
            Some(Frame::Seq {
                items, size: total, ..
            }) => {
                items.push(node);
                *total += size;
            }
            Some(Frame::Map {
                entries,
                pending_key,
                size: total,
                bad_key,
                index,
                merges,
                ..
            }) => {
                *total += size;
                if *bad_key {
                    *bad_key = false;
                    return;
                }
                match pending_key.take() {
                    None => match node.value {
                        Value::Scalar(s) => *pending_key = Some((s.text, node.location, s.plain)),
                        Value::Null => *pending_key = Some((String::new(), node.location, false)),
                        _ => {
                            *bad_key = true;
                            let location = node.location;
                            self.error(
                                location,
                                "a key must be a plain name, not a list or mapping",
                            );
                        }
                    },
                    Some((key, key_location, plain)) => {
                        if plain && key == "<<" {
                            merges.push(node);
                            return;
                        }
                        if index.is_none() && entries.len() >= LINEAR_KEY_SEARCH {
                            *index = Some(
                                entries
                                    .iter()
                                    .enumerate()
                                    .map(|(i, e)| (e.key.clone(), i))
                                    .collect(),
                            );
                        }
                        let first = match index {
                            Some(index) => index.get(&key).map(|&i| &entries[i]),
                            None => entries.iter().find(|e| e.key == key),
                        };
                        if let Some(first) = first {
                            self.dropped = true;
                            let first_line = first.key_location.line;
                            self.diags.error(
                                &self.file,
                                key_location,
                                format!(
                                    "duplicate key `{key}` (first written on line {first_line})"
                                ),
                            );
                        } else {
                            if let Some(index) = index {
                                index.insert(key.clone(), entries.len());
                            }
                            entries.push(Entry {
                                key,
                                key_location,
                                value: node,
                            });
                        }
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: Event<'_>, span: Span) -> Result<(), Abort> {
        let location = location_of(&span);
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, location)?;
                let plain = style == ScalarStyle::Plain;
                let forced_string = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                if let Some(tag) = &tag
                    && !tag.is_yaml_core_schema()
                {
                    self.error(
                        location,
                        format!("tags such as `{tag}` are not supported: remove the tag"),
                    );
                }
                let value = if plain && !forced_string && is_null_text(&text) {
                    Value::Null
                } else {
                    Value::Scalar(Scalar {
                        text: text.into_owned(),
                        plain: plain && !forced_string,
                    })
                };
                self.complete(Node { location, value }, 1, anchor);
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((node, size)) => {
                    let (mut node, size) = (node.clone(), *size);
                    self.count(size, location)?;
                    // The copy is where the alias is: what is wrong with it, or repeats
                    // another value (a server name, an address), is said there.
                    relocate(&mut node, location);
                    self.complete(node, size, 0);
                }
                None => {
                    self.error(location, "alias to an unknown anchor");
                    return Err(Abort);
                }
            },
            Event::SequenceStart(anchor, tag) => {
                if let Some(tag) = tag.filter(|t| !t.is_yaml_core_schema()) {
                    self.error(location, format!("tags such as `{tag}` are not supported"));
                }
                let frame = Frame::Seq {
                    location,
                    anchor,
                    items: Vec::new(),
                    size: 1,
                };
                self.push_frame(frame, location)?;
            }
            Event::MappingStart(anchor, tag) => {
                if let Some(tag) = tag.filter(|t| !t.is_yaml_core_schema()) {
                    self.error(location, format!("tags such as `{tag}` are not supported"));
                }
                let frame = Frame::Map {
                    location,
                    anchor,
                    entries: Vec::new(),
                    pending_key: None,
                    size: 1,
                    bad_key: false,
                    index: None,
                    merges: Vec::new(),
                };
                self.push_frame(frame, location)?;
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq {
                    location,
                    anchor,
                    items,
                    size,
                }) => {
                    let node = Node {
                        location,
                        value: Value::Seq(items),
                    };
                    self.complete(node, size, anchor);
                }
                Some(Frame::Map {
                    location,
                    anchor,
                    entries,
                    size,
                    merges,
                    ..
                }) => {
                    let entries = self.apply_merge_keys(entries, merges);
                    let node = Node {
                        location,
                        value: Value::Map(entries),
                    };
                    self.complete(node, size, anchor);
                }
                None => {}
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => {}
        }
        Ok(())
    }

    /// `<<: *base` (or `<<: [*a, *b]`) copies the keys of the merged mappings that the
    /// mapping does not set itself; the earlier mapping in a list wins. Only a plain `<<`
    /// merges; a quoted `"<<"` is an ordinary key.
    fn apply_merge_keys(&mut self, mut own: Vec<Entry>, merges: Vec<Node>) -> Vec<Entry> {
        if merges.is_empty() {
            return own;
        }
        let mut sources: Vec<Node> = Vec::new();
        for merge in merges {
            match merge.value {
                Value::Map(_) => sources.push(merge),
                Value::Seq(items) => sources.extend(items),
                _ => self.error(
                    merge.location,
                    "`<<` merges a mapping or a list of mappings; found something else",
                ),
            }
        }
        let mut present: std::collections::HashSet<String> =
            own.iter().map(|e| e.key.clone()).collect();
        for source in sources {
            match source.value {
                Value::Map(source_entries) => {
                    for entry in source_entries {
                        if present.insert(entry.key.clone()) {
                            own.push(entry);
                        }
                    }
                }
                _ => self.error(source.location, "`<<` can only merge mappings"),
            }
        }
        own
    }
}

fn is_null_text(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// Parses YAML text into one node per document. On a syntax error or a broken limit the
/// diagnostic is recorded and `None` is returned: nothing half-built is passed on.
pub fn parse_documents(file: &Arc<str>, text: &str, diags: &mut Diagnostics) -> Option<Vec<Node>> {
    parse_documents_noting(file, text, diags).map(|(documents, _)| documents)
}

/// [`parse_documents`], and whether a duplicate key's value was left out (what it held
/// is not read, so a reference to it is not an error of its own).
pub fn parse_documents_noting(
    file: &Arc<str>,
    text: &str,
    diags: &mut Diagnostics,
) -> Option<(Vec<Node>, bool)> {
    let mut builder = Builder {
        file: Arc::clone(file),
        diags,
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        documents: Vec::new(),
        dropped: false,
    };
    let mut parser = Parser::new_from_str(text);
    while let Some(next) = parser.next_event() {
        match next {
            Ok((event, span)) => {
                if builder.on_event(event, span).is_err() {
                    return None;
                }
            }
            Err(err) => {
                let marker = err.marker();
                let mut location = Location::new(
                    u32::try_from(marker.line()).unwrap_or(u32::MAX).max(1),
                    u32::try_from(marker.col().saturating_add(1)).unwrap_or(u32::MAX),
                );
                if err.info().contains("found a tab") {
                    // The parser says where the value it was reading began; the tab is
                    // where the user must look.
                    if let Some(at) = first_tab_from(text, location) {
                        location = at;
                    }
                }
                let message = if err.info().contains("recursion limit") {
                    format!(
                        "nesting deeper than the parser allows ({}): a definition never needs this",
                        err.info()
                    )
                } else {
                    format!("YAML syntax: {}{}", err.info(), syntax_hint(err.info()))
                };
                builder.error(location, message);
                return None;
            }
        }
    }
    Some((builder.documents, builder.dropped))
}

/// Where the first tab at or after `from` lies.
fn first_tab_from(text: &str, from: Location) -> Option<Location> {
    let start = from.line as usize;
    for (i, line) in text.lines().enumerate().skip(start.saturating_sub(1)) {
        let skip = if i + 1 == start {
            (from.col as usize).saturating_sub(1)
        } else {
            0
        };
        if let Some(column) = line.chars().skip(skip).position(|c| c == '\t') {
            let line = u32::try_from(i + 1).ok()?;
            let column = u32::try_from(skip + column + 1).ok()?;
            return Some(Location::new(line, column));
        }
    }
    None
}

/// What usually causes a YAML syntax error, where the parser's words do not say it.
fn syntax_hint(info: &str) -> &'static str {
    if info.contains("unknown anchor")
        || info.contains("did not find expected alphabetic or numeric character")
    {
        // `*/30 * * * *` unquoted reads as an alias.
        "; a value that starts with `*` (a cron schedule) must be quoted, like \"*/30 * * * *\""
    } else if info.contains("tab") {
        "; indent with spaces, not tabs"
    } else if info.contains("must be followed by a valid YAML whitespace") {
        "; write a space after the `:` (not a tab)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<Vec<Node>>, Vec<String>) {
        let file: Arc<str> = Arc::from("t.yaml");
        let mut diags = Diagnostics::new();
        let docs = parse_documents(&file, text, &mut diags);
        let messages = diags.into_sorted().iter().map(|d| d.to_string()).collect();
        (docs, messages)
    }

    #[test]
    fn locations_count_from_one() {
        let (docs, errors) = parse("a: 1\nb:\n  - x\n");
        assert!(errors.is_empty(), "{errors:?}");
        let docs = docs.unwrap_or_default();
        let Some(Value::Map(entries)) = docs.first().map(|d| &d.value) else {
            panic!("expected a mapping: {docs:?}");
        };
        assert_eq!(entries[0].key_location, Location::new(1, 1));
        assert_eq!(entries[1].key_location, Location::new(2, 1));
        let Value::Seq(items) = &entries[1].value.value else {
            panic!("expected a list");
        };
        assert_eq!(items[0].location, Location::new(3, 5));
    }

    #[test]
    fn duplicate_keys_are_reported_with_the_first_line() {
        let (_, errors) = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(
            errors,
            ["t.yaml:3:1: error: duplicate key `a` (first written on line 1)"]
        );
    }

    #[test]
    fn merge_keys_fill_missing_keys_only() {
        let (docs, errors) = parse("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n");
        assert!(errors.is_empty(), "{errors:?}");
        let docs = docs.unwrap_or_default();
        let Some(Value::Map(top)) = docs.first().map(|d| &d.value) else {
            panic!("expected a mapping");
        };
        let Value::Map(used) = &top[1].value.value else {
            panic!("expected a mapping");
        };
        let pairs: Vec<(&str, &str)> = used
            .iter()
            .filter_map(|e| Some((e.key.as_str(), e.value.as_scalar()?.text.as_str())))
            .collect();
        assert_eq!(pairs, [("y", "3"), ("x", "1")]);
        // A quoted "<<" is an ordinary key.
        let (docs, errors) = parse("base: &b {x: 1}\nuse: {\"<<\": *b}\n");
        assert!(errors.is_empty(), "{errors:?}");
        let docs = docs.unwrap_or_default();
        let Some(Value::Map(top)) = docs.first().map(|d| &d.value) else {
            panic!("expected a mapping");
        };
        let Value::Map(used) = &top[1].value.value else {
            panic!("expected a mapping");
        };
        assert_eq!(used[0].key, "<<");
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let names = ["b", "c", "d", "e", "f", "g", "h", "i"];
        let mut prev = "a";
        for name in names {
            text.push_str(&format!(
                "{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
            prev = name;
        }
        let (docs, errors) = parse(&text);
        assert!(docs.is_none());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("alias bomb"), "{errors:?}");
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let text = "[".repeat(100_000);
        let (docs, errors) = parse(&text);
        assert!(docs.is_none());
        assert!(errors[0].contains("nesting deeper than"), "{errors:?}");
        let text = "a:\n".to_owned()
            + &(1..200)
                .map(|i| format!("{}b:\n", " ".repeat(i)))
                .collect::<String>();
        let (docs, errors) = parse(&text);
        assert!(docs.is_none());
        assert!(errors[0].contains("nesting deeper than 64"), "{errors:?}");
    }

    #[test]
    fn many_keys_and_many_documents_stay_linear() {
        let keys: String = (0..200_000).map(|i| format!("k{i}: {i}\n")).collect();
        let (docs, errors) = parse(&(keys.clone() + "k7: again\n"));
        assert_eq!(docs.map(|d| d.len()), Some(1));
        assert_eq!(
            errors,
            ["t.yaml:200001:1: error: duplicate key `k7` (first written on line 8)"]
        );
        let (docs, _) = parse(&"---\n".repeat(100_000));
        assert_eq!(docs.map(|d| d.len()), Some(100_000));
    }

    #[test]
    fn syntax_errors_have_a_place() {
        let (docs, errors) = parse("a: [1, 2\nb: 3\n");
        assert!(docs.is_none());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("t.yaml:"), "{errors:?}");
        assert!(errors[0].contains("YAML syntax"), "{errors:?}");
    }

    #[test]
    fn quoted_scalars_are_never_null() {
        let (docs, _) = parse("a: ''\nb: ~\nc: \"null\"\n");
        let docs = docs.unwrap_or_default();
        let Some(Value::Map(entries)) = docs.first().map(|d| &d.value) else {
            panic!("expected a mapping");
        };
        assert!(!entries[0].value.is_null());
        assert!(entries[1].value.is_null());
        assert!(!entries[2].value.is_null());
    }
}
