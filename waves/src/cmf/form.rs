//! Reading the form: the bytes as CSV text, the records with their line numbers, the
//! header, then every row in turn, with the diagnostics that concern the form as a whole
//! (empty, unequal rows, no rehost).

use super::columns::{Column, Header, read_header};
use super::row::{Seen, ServerDraft, read_row};
use super::{MAX_FORM_BYTES, Sink, Skipped, location};
use crate::diag::Location;

/// The servers of one application, in the order of their rows.
pub(super) struct AppDraft {
    pub(super) name: String,
    pub(super) servers: Vec<ServerDraft>,
}

/// The applications of one wave, in the order of their first rows.
pub(super) struct WaveDraft {
    pub(super) name: String,
    pub(super) apps: Vec<AppDraft>,
}

impl WaveDraft {
    pub(super) fn server_count(&self) -> usize {
        self.apps.iter().map(|a| a.servers.len()).sum()
    }
}

/// What the form holds once read: the waves (complete only if there is no error), the
/// rows left out, and what the checks across the form need.
pub(super) struct Form {
    pub(super) waves: Vec<WaveDraft>,
    pub(super) skipped: Vec<Skipped>,
    /// Rows with r_type Rehost, with or without errors.
    pub(super) rehosts: usize,
    /// The `aws_region` of every rehost row that has a valid one.
    pub(super) regions: Vec<(String, Location)>,
}

/// One row's cells, trimmed, with their places.
pub(super) struct Row<'r> {
    pub(super) record: &'r csv::StringRecord,
    pub(super) line: u64,
    pub(super) header: &'r Header,
}

impl Row<'_> {
    /// The cell of `column` if the form has the column and the cell is not empty.
    pub(super) fn get(&self, column: Column) -> Option<(&str, Location)> {
        let index = *self.header.known.get(&column)?;
        self.at(index)
    }

    /// The cell at field `index` if it is not empty.
    pub(super) fn at(&self, index: usize) -> Option<(&str, Location)> {
        let text = self.record.get(index)?.trim();
        (!text.is_empty()).then(|| (text, location(self.line, index)))
    }

    /// Where `column` is on this row (its cell may be empty), or the row's first cell.
    pub(super) fn place(&self, column: Column) -> Location {
        location(
            self.line,
            self.header.known.get(&column).copied().unwrap_or(0),
        )
    }
}

/// The form as text, or `None` with an error when the bytes are not a CSV text.
pub(super) fn form_text<'b>(bytes: &'b [u8], sink: &mut Sink) -> Option<&'b str> {
    if bytes.len() > MAX_FORM_BYTES {
        sink.error(
            Location::START,
            format!(
                "the form is larger than {} MiB: split it by wave",
                MAX_FORM_BYTES / (1024 * 1024)
            ),
        );
        return None;
    }
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        sink.error(
            Location::START,
            "the form is UTF-16 text: save it as CSV UTF-8 (comma delimited)",
        );
        return None;
    }
    if let Some(nul) = bytes.iter().position(|&b| b == 0) {
        sink.error(
            line_of_offset(bytes, nul),
            "binary file (it contains a NUL byte): an intake form is CSV text",
        );
        return None;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(err) => {
            let offset = err.valid_up_to();
            sink.error(
                line_of_offset(bytes, offset),
                format!(
                    "not valid UTF-8 (byte 0x{:02x} at offset {offset}): save the form as CSV UTF-8",
                    bytes.get(offset).copied().unwrap_or(0)
                ),
            );
            None
        }
    }
}

fn line_of_offset(bytes: &[u8], offset: usize) -> Location {
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    Location::new(u32::try_from(line).unwrap_or(u32::MAX), 1)
}

/// Line numbers from byte offsets. The csv crate places a record after blank lines at
/// the first blank line, so the start is found here: the first byte that is no line break.
struct Lines<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> Lines<'t> {
    fn new(text: &'t str) -> Lines<'t> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { text, starts }
    }

    fn of(&self, position: Option<&csv::Position>) -> u64 {
        let Some(position) = position else {
            return 1;
        };
        let mut byte = usize::try_from(position.byte()).unwrap_or(usize::MAX);
        let bytes = self.text.as_bytes();
        while bytes.get(byte).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            byte += 1;
        }
        u64::try_from(self.starts.partition_point(|&start| start <= byte)).unwrap_or(u64::MAX)
    }
}

/// Reads the whole form; `None` when there is no header or no row to read.
pub(super) fn read_form(text: &str, sink: &mut Sink) -> Option<Form> {
    if text.trim().is_empty() {
        sink.error(
            Location::START,
            "the form is empty: expected a header row with CMF's columns (wave_name, app_name, \
             server_name, server_os_family, r_type, server_fqdn, ...) and one row per server",
        );
        return None;
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let lines = Lines::new(text);
    let mut records = reader.records();
    let header = match records.next() {
        Some(Ok(record)) => read_header(&record, lines.of(record.position()), sink)?,
        Some(Err(err)) => {
            csv_error(&err, &lines, sink);
            return None;
        }
        None => {
            sink.error(Location::START, "the form has no header row");
            return None;
        }
    };
    let mut form = Form {
        waves: Vec::new(),
        skipped: Vec::new(),
        rehosts: 0,
        regions: Vec::new(),
    };
    let mut seen = Seen::default();
    let mut nameless_filled: Vec<usize> = Vec::new();
    let mut rows = 0usize;
    for result in records {
        let record = match result {
            Ok(record) => record,
            Err(err) => {
                csv_error(&err, &lines, sink);
                continue;
            }
        };
        let line = lines.of(record.position());
        if record.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        rows += 1;
        if record.len() != header.width {
            let index = record.len().min(header.width);
            sink.error(
                location(line, index),
                format!(
                    "the row has {} fields but the header has {}: every row needs one field per \
                     column (quote a cell that holds a comma)",
                    record.len(),
                    header.width
                ),
            );
            continue;
        }
        for &index in &header.nameless {
            if record.get(index).is_some_and(|c| !c.trim().is_empty())
                && !nameless_filled.contains(&index)
            {
                nameless_filled.push(index);
            }
        }
        let row = Row {
            record: &record,
            line,
            header: &header,
        };
        read_row(&row, &mut form, &mut seen, sink);
    }
    for index in nameless_filled {
        sink.warning(
            location(header.line, index),
            format!(
                "column {} has no name, so its values are left out: name it to keep them as tags",
                index + 1
            ),
        );
    }
    if rows == 0 {
        sink.error(
            location(header.line, 0),
            "the form has no rows below its header: add one row per server",
        );
        return None;
    }
    if form.rehosts == 0 {
        sink.error(
            location(
                header.line,
                header.known.get(&Column::RType).copied().unwrap_or(0),
            ),
            "no server to import: no row has r_type Rehost",
        );
    }
    Some(form)
}

fn csv_error(err: &csv::Error, lines: &Lines, sink: &mut Sink) {
    let line = lines.of(err.position());
    sink.error(
        location(line, 0),
        format!("the row cannot be read as CSV: {err}"),
    );
}
