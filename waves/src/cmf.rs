//! Import of Cloud Migration Factory (CMF) intake forms: a CSV with one row per server,
//! turned into one wave file per wave.
//!
//! Pure: the caller reads the form and writes the files; nothing here touches the disk or
//! the clock. Every problem is a diagnostic at the row's line and the cell's column (the
//! field number, from 1), like `intake.csv:5:6: error: server_os_family: ...`.
//!
//! What is generated is loaded back with [`load::load_sources`] before it is returned, so
//! a mistake in the emitter shows up as a diagnostic, never as a wave file that does not
//! validate. When there is any error, no wave is returned at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};

use crate::decode;
use crate::diag::{Diagnostics, Location};
use crate::load;
use crate::model::{EngineKind, OsFamily};
use crate::source::{CONFIG_FILE_NAME, SourceFile};
use crate::units::Dur;

/// A local date and time without a zone, as the window start is written.
pub use jiff::civil::DateTime as LocalDateTime;

/// Larger forms are refused: 32 MiB is about 100,000 servers.
pub const MAX_FORM_BYTES: usize = 32 * 1024 * 1024;

/// A cell is short text; anything longer is a broken export, not a value.
const MAX_CELL_CHARS: usize = 4096;

/// The limits of an AWS tag, which blueprint tags become.
const MAX_TAG_KEY_CHARS: usize = 128;
const MAX_TAG_VALUE_CHARS: usize = 256;

/// The longest name `decode::name` accepts.
const MAX_NAME_CHARS: usize = 100;

/// How the waves are placed in time and which engine runs them. The form has no dates, so
/// the windows come from here.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The start of the first wave's window, in `timezone`.
    pub first_window: DateTime,
    pub timezone: String,
    pub window_duration: Dur,
    /// Time between the window starts of consecutive waves.
    pub cadence: Dur,
    pub engine: EngineKind,
}

/// One generated wave file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedWave {
    /// `wave-1.yaml`
    pub file_name: String,
    pub wave: String,
    pub text: String,
    pub servers: usize,
}

/// A row left out because its migration strategy is not a rehost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: u64,
    pub server: String,
    pub r_type: String,
}

/// The outcome of an import. `waves` is empty whenever `diagnostics` has errors.
#[derive(Debug, Default)]
pub struct Import {
    pub waves: Vec<ImportedWave>,
    pub skipped: Vec<Skipped>,
    pub diagnostics: Diagnostics,
    /// The most common `aws_region` of the imported servers, for the configuration.
    pub aws_region: Option<String>,
}

/// The columns Wavelift reads, as CMF spells them (case-sensitive). Any other column is
/// kept as a server tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Column {
    WaveName,
    AppName,
    Cloud,
    AwsAccountId,
    AwsRegion,
    ServerName,
    ServerOsFamily,
    ServerOsVersion,
    ServerFqdn,
    ServerTier,
    ServerEnvironment,
    RType,
    SubnetIds,
    SecurityGroupIds,
    SubnetIdsTest,
    SecurityGroupIdsTest,
    InstanceType,
    Tenancy,
    IamRole,
    Tags,
    PrivateIp,
    DedicatedHostId,
}

const COLUMNS: &[(Column, &str)] = &[
    (Column::WaveName, "wave_name"),
    (Column::AppName, "app_name"),
    (Column::Cloud, "cloud"),
    (Column::AwsAccountId, "aws_accountid"),
    (Column::AwsRegion, "aws_region"),
    (Column::ServerName, "server_name"),
    (Column::ServerOsFamily, "server_os_family"),
    (Column::ServerOsVersion, "server_os_version"),
    (Column::ServerFqdn, "server_fqdn"),
    (Column::ServerTier, "server_tier"),
    (Column::ServerEnvironment, "server_environment"),
    (Column::RType, "r_type"),
    (Column::SubnetIds, "subnet_IDs"),
    (Column::SecurityGroupIds, "securitygroup_IDs"),
    (Column::SubnetIdsTest, "subnet_IDs_test"),
    (Column::SecurityGroupIdsTest, "securitygroup_IDs_test"),
    (Column::InstanceType, "instanceType"),
    (Column::Tenancy, "tenancy"),
    (Column::IamRole, "iamRole"),
    (Column::Tags, "tags"),
    (Column::PrivateIp, "private_ip"),
    (Column::DedicatedHostId, "dedicated_host_id"),
];

const REQUIRED: &[Column] = &[
    Column::WaveName,
    Column::AppName,
    Column::ServerName,
    Column::ServerOsFamily,
    Column::RType,
];

impl Column {
    fn name(self) -> &'static str {
        COLUMNS
            .iter()
            .find(|(c, _)| *c == self)
            .map_or("", |(_, name)| name)
    }

    fn from_name(name: &str) -> Option<Column> {
        COLUMNS.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
    }
}

/// Where the diagnostics of one form go.
struct Sink {
    file: Arc<str>,
    diags: Diagnostics,
}

impl Sink {
    fn error(&mut self, location: Location, message: impl Into<String>) {
        self.diags.error(&self.file, location, message);
    }

    fn warning(&mut self, location: Location, message: impl Into<String>) {
        self.diags.warning(&self.file, location, message);
    }
}

fn location(line: u64, index: usize) -> Location {
    Location::new(
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(index.saturating_add(1)).unwrap_or(u32::MAX),
    )
}

/// A cell's text for a message: short, one line, control characters escaped.
fn shown(text: &str) -> String {
    const LIMIT: usize = 60;
    let mut out: String = text
        .chars()
        .take(LIMIT)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(LIMIT).is_some() {
        out.push_str("...");
    }
    out
}

// ---------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------

/// Imports a form given as bytes: checks that it is UTF-8 text first.
pub fn import_cmf_bytes(file: &Arc<str>, bytes: &[u8], options: &ImportOptions) -> Import {
    let mut sink = Sink {
        file: Arc::clone(file),
        diags: Diagnostics::new(),
    };
    match form_text(bytes, &mut sink) {
        Some(text) => import_cmf(file, text, options),
        None => Import {
            diagnostics: sink.diags,
            ..Import::default()
        },
    }
}

fn form_text<'b>(bytes: &'b [u8], sink: &mut Sink) -> Option<&'b str> {
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

/// Imports a form: one wave file per `wave_name`, in order of first appearance.
pub fn import_cmf(file: &Arc<str>, text: &str, options: &ImportOptions) -> Import {
    let mut sink = Sink {
        file: Arc::clone(file),
        diags: Diagnostics::new(),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let timing = check_options(options, &mut sink);
    let form = read_form(text, &mut sink);
    let region = form.as_ref().and_then(|f| most_common_region(&f.regions));
    if let Some(form) = &form {
        check_regions(form, region.as_deref(), options.engine, &mut sink);
    }
    let mut import = Import {
        waves: Vec::new(),
        skipped: form.as_ref().map(|f| f.skipped.clone()).unwrap_or_default(),
        diagnostics: Diagnostics::new(),
        aws_region: region,
    };
    if let (Some(form), Some(timing)) = (form, timing)
        && !sink.diags.has_errors()
    {
        import.waves = emit_waves(file, &form.waves, options, &timing, &mut sink);
        if !sink.diags.has_errors() {
            let config = suggested_config(&import, options);
            validate_generated(&import.waves, &config, &form.waves, &mut sink);
        }
    }
    if sink.diags.has_errors() {
        import.waves.clear();
    }
    import.diagnostics = sink.diags;
    import
}

// ---------------------------------------------------------------------------------------
// Options and time
// ---------------------------------------------------------------------------------------

/// The first window start and the zone that places it and the windows after it.
struct Timing {
    first: DateTime,
    tz: TimeZone,
}

fn check_options(options: &ImportOptions, sink: &mut Sink) -> Option<Timing> {
    let mut ok = true;
    if options.window_duration.is_zero() {
        sink.error(
            Location::START,
            "the window duration must be longer than zero: set it like 8h",
        );
        ok = false;
    }
    if options.engine == EngineKind::Local {
        sink.error(
            Location::START,
            "the local engine replicates the disks listed, and an intake form lists none: \
             import with --engine mgn or --engine sim, then add disks if you switch",
        );
        ok = false;
    }
    let tz = match time_zone(&options.timezone) {
        Ok(tz) => Some(tz),
        Err(message) => {
            sink.error(Location::START, message);
            None
        }
    };
    let tz = tz?;
    ok.then_some(Timing {
        first: options.first_window,
        tz,
    })
}

/// A time zone by its IANA name, or a message with the nearest name.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if let Ok(tz) = TimeZone::get(name) {
        return Ok(tz);
    }
    let names: Vec<String> = jiff::tz::db()
        .available()
        .map(|n| n.as_str().to_owned())
        .collect();
    Err(
        match decode::closest_owned(name, names.iter().map(String::as_str)) {
            Some(near) => format!(
                "unknown time zone `{}`; did you mean `{near}`?",
                shown(name)
            ),
            None => format!(
                "unknown time zone `{}`: use an IANA name such as Europe/Rome or UTC",
                shown(name)
            ),
        },
    )
}

/// `2027-01-09 22:00` (or with a `T`): a local time without a zone.
pub fn parse_first_window(text: &str) -> Result<DateTime, String> {
    let text = text.trim();
    let has_zone = text.ends_with(['Z', 'z'])
        || text.contains('[')
        || text
            .split_once(['T', ' '])
            .is_some_and(|(_, time)| time.contains(['+', '-']));
    if has_zone {
        return Err(format!(
            "`{}` carries an offset or zone: write the local time only and pass --timezone",
            shown(text)
        ));
    }
    text.parse::<DateTime>().map_err(|_| {
        format!(
            "`{}` is not a local date and time like 2027-01-09 22:00",
            shown(text)
        )
    })
}

/// The default first window: the first Saturday at 22:00 at least 21 days after `today`,
/// so the three default phases (a week each) all lie in the future.
pub fn first_window_after(today: Date) -> Option<DateTime> {
    let earliest = today.checked_add(jiff::Span::new().days(21)).ok()?;
    let saturday = jiff::civil::Weekday::Saturday.to_monday_zero_offset();
    let wait = (saturday - earliest.weekday().to_monday_zero_offset()).rem_euclid(7);
    let day = earliest
        .checked_add(jiff::Span::new().days(i64::from(wait)))
        .ok()?;
    Some(day.at(22, 0, 0, 0))
}

/// [`first_window_after`] today in `timezone`, today being what `now` says.
pub fn default_first_window(now: SystemTime, timezone: &str) -> Result<DateTime, String> {
    let tz = time_zone(timezone)?;
    let now = jiff::Timestamp::try_from(now)
        .map_err(|err| format!("the system clock is out of range: {err}"))?;
    first_window_after(now.to_zoned(tz).date())
        .ok_or_else(|| "the default first window is out of range: pass --first-window".to_owned())
}

fn window_start(timing: &Timing, cadence: Dur, index: usize) -> Option<DateTime> {
    let n = i64::try_from(index).ok()?;
    let days = i64::from(cadence.days).checked_mul(n)?;
    let seconds = i64::try_from(cadence.seconds).ok()?.checked_mul(n)?;
    let span = jiff::Span::new()
        .try_days(days)
        .ok()?
        .try_seconds(seconds)
        .ok()?;
    timing.first.checked_add(span).ok()
}

fn format_local(time: DateTime) -> String {
    if time.second() == 0 && time.subsec_nanosecond() == 0 {
        time.strftime("%Y-%m-%d %H:%M").to_string()
    } else {
        time.strftime("%Y-%m-%d %H:%M:%S").to_string()
    }
}

// ---------------------------------------------------------------------------------------
// Reading the form
// ---------------------------------------------------------------------------------------

/// The header: where each known column is, and the other columns kept as tags.
struct Header {
    /// The line of the header row: 1 unless blank lines come first.
    line: u64,
    known: HashMap<Column, usize>,
    /// Field index and name of every column that becomes a server tag.
    extra: Vec<(usize, String)>,
    width: usize,
    /// Columns with no name, reported once if any row fills them.
    nameless: Vec<usize>,
}

impl Header {
    fn has(&self, column: Column) -> bool {
        self.known.contains_key(&column)
    }
}

/// One row's cells, trimmed, with their places.
struct Row<'r> {
    record: &'r csv::StringRecord,
    line: u64,
    header: &'r Header,
}

impl Row<'_> {
    /// The cell of `column` if the form has the column and the cell is not empty.
    fn get(&self, column: Column) -> Option<(&str, Location)> {
        let index = *self.header.known.get(&column)?;
        self.at(index)
    }

    fn at(&self, index: usize) -> Option<(&str, Location)> {
        let text = self.record.get(index)?.trim();
        (!text.is_empty()).then(|| (text, location(self.line, index)))
    }

    /// Where `column` is on this row (its cell may be empty), or the row's first cell.
    fn place(&self, column: Column) -> Location {
        location(
            self.line,
            self.header.known.get(&column).copied().unwrap_or(0),
        )
    }
}

#[derive(Debug, Clone, Default)]
struct Network {
    subnet: Option<String>,
    security_groups: Vec<String>,
}

/// One server as the form describes it, checked.
#[derive(Debug, Clone)]
struct ServerDraft {
    name: String,
    fqdn: Option<String>,
    ip: Option<IpAddr>,
    family: OsFamily,
    os_version: Option<String>,
    tags: BTreeMap<String, String>,
    instance_type: Option<String>,
    launch_tags: BTreeMap<String, String>,
    options: Vec<(&'static str, String)>,
    test: Network,
    cutover: Network,
}

struct AppDraft {
    name: String,
    servers: Vec<ServerDraft>,
}

struct WaveDraft {
    name: String,
    apps: Vec<AppDraft>,
}

struct Form {
    waves: Vec<WaveDraft>,
    skipped: Vec<Skipped>,
    /// Rows with r_type Rehost, with or without errors.
    rehosts: usize,
    /// The `aws_region` of every rehost row that has a valid one.
    regions: Vec<(String, Location)>,
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

/// Names and addresses seen so far, for the checks across rows.
#[derive(Default)]
struct Seen {
    servers: HashMap<String, u64>,
    hosts: HashMap<String, (String, u64)>,
    addresses: HashMap<IpAddr, (String, u64)>,
    /// Application -> (wave, line of its first row).
    apps: HashMap<String, (String, u64)>,
    /// Renamed names already warned about: (column, text as written).
    renamed: HashSet<(Column, String)>,
    /// The valid `aws_region` of the row being read.
    region: Option<(String, Location)>,
}

fn read_form(text: &str, sink: &mut Sink) -> Option<Form> {
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

fn read_header(record: &csv::StringRecord, line: u64, sink: &mut Sink) -> Option<Header> {
    let names: Vec<&str> = record.iter().map(str::trim).collect();
    if names.iter().all(|n| n.is_empty()) {
        sink.error(
            location(line, 0),
            "the header row is empty: the first row names the columns (wave_name, app_name, ...)",
        );
        return None;
    }
    if let [only] = names.as_slice() {
        for (separator, what) in [(';', "`;`"), ('\t', "tabs")] {
            if only.contains(separator) {
                sink.error(
                    location(line, 0),
                    format!(
                        "the columns are separated by {what}, not commas: save the form as CSV \
                         UTF-8 (comma delimited)"
                    ),
                );
                return None;
            }
        }
    }
    let mut header = Header {
        line,
        known: HashMap::new(),
        extra: Vec::new(),
        width: names.len(),
        nameless: Vec::new(),
    };
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    let mut ok = true;
    for (index, name) in names.iter().enumerate() {
        if name.is_empty() {
            header.nameless.push(index);
            continue;
        }
        if let Some(first) = first_index.get(name) {
            sink.error(
                location(line, index),
                format!(
                    "column `{}` appears twice (columns {} and {}): remove one",
                    shown(name),
                    first + 1,
                    index + 1
                ),
            );
            ok = false;
            continue;
        }
        first_index.insert(name, index);
        match Column::from_name(name) {
            Some(column) => {
                header.known.insert(column, index);
            }
            None => header.extra.push((index, (*name).to_owned())),
        }
    }
    // Typos of a required column are reported as the missing column, not as extra tags.
    let mut explained: Vec<usize> = Vec::new();
    for &column in REQUIRED {
        if header.has(column) {
            continue;
        }
        ok = false;
        let wanted = column.name();
        let candidates: Vec<&str> = header
            .extra
            .iter()
            .map(|(_, n)| n.as_str())
            .filter(|n| n.chars().count() <= 64)
            .collect();
        match decode::closest(wanted, &candidates) {
            Some(near) => {
                let index = header
                    .extra
                    .iter()
                    .find(|(_, n)| n == near)
                    .map_or(0, |(i, _)| *i);
                explained.push(index);
                sink.error(
                    location(line, index),
                    format!(
                        "missing required column `{wanted}`; did you mean `{}`? rename it to \
                         {wanted} (column names are case-sensitive)",
                        shown(near)
                    ),
                );
            }
            None => {
                let hint = match column {
                    Column::WaveName if first_index.contains_key("wave_id") => {
                        ": this form has `wave_id` (CMF before version 3); name the column \
                         wave_name and write the wave names"
                    }
                    Column::RType => {
                        ": add it with Rehost for every server to migrate (other strategies are \
                         left out)"
                    }
                    _ => ": add it to the header",
                };
                sink.error(
                    location(line, 0),
                    format!("missing required column `{wanted}`{hint}"),
                );
            }
        }
    }
    if !header.has(Column::ServerFqdn) && !header.has(Column::PrivateIp) {
        sink.error(
            location(line, 0),
            "missing column `server_fqdn` (or `private_ip`): wavelift reaches each server by \
             its host name or address",
        );
        ok = false;
    }
    if !ok {
        return None;
    }
    let mut kept: Vec<&str> = Vec::new();
    for (index, name) in &header.extra {
        if explained.contains(index) {
            continue;
        }
        if name.chars().count() > MAX_TAG_KEY_CHARS {
            sink.error(
                location(line, *index),
                format!(
                    "column name `{}` is longer than {MAX_TAG_KEY_CHARS} characters, the limit of \
                     a tag key: shorten it",
                    shown(name)
                ),
            );
            ok = false;
            continue;
        }
        if name == "<<" {
            sink.error(
                location(line, *index),
                "column `<<` cannot become a tag key (YAML reads it as a merge): rename it",
            );
            ok = false;
            continue;
        }
        let known: Vec<&str> = COLUMNS.iter().map(|(_, n)| *n).collect();
        match decode::closest(name, &known).filter(|n| name.chars().count() <= 64 && *n != name) {
            Some(near) => sink.warning(
                location(line, *index),
                format!(
                    "unknown column `{}`; did you mean `{near}`? it is kept as a server tag",
                    shown(name)
                ),
            ),
            None => kept.push(name),
        }
    }
    if let Some(first) = header
        .extra
        .iter()
        .find(|(i, n)| !explained.contains(i) && kept.contains(&n.as_str()))
    {
        let list: Vec<String> = kept.iter().map(|n| shown(n)).collect();
        sink.warning(
            location(line, first.0),
            format!(
                "column{} not read by wavelift, kept as server tags: {}",
                if kept.len() == 1 { "" } else { "s" },
                list.join(", ")
            ),
        );
    }
    ok.then_some(header)
}

/// Reads one row; a rehost with no error joins its wave and application.
fn read_row(row: &Row, form: &mut Form, seen: &mut Seen, sink: &mut Sink) {
    let mut ok = true;
    for index in 0..row.record.len() {
        if let Some(cell) = row.record.get(index)
            && cell.chars().count() > MAX_CELL_CHARS
        {
            sink.error(
                location(row.line, index),
                format!(
                    "the cell holds {} characters, more than {MAX_CELL_CHARS}: a cell of an \
                     intake form is short text",
                    cell.chars().count()
                ),
            );
            ok = false;
        }
    }
    if !ok {
        return;
    }
    let server_cell = row.get(Column::ServerName).map(|(t, _)| t);
    let Some((r_type, r_type_at)) = row.get(Column::RType) else {
        sink.error(
            row.place(Column::RType),
            "r_type is empty: write Rehost for a server to migrate (rows with other strategies \
             are left out)",
        );
        return;
    };
    if !r_type.eq_ignore_ascii_case("rehost") {
        let server = server_cell.unwrap_or_default().to_owned();
        let who = if server.is_empty() {
            "the row".to_owned()
        } else {
            format!("server `{}`", shown(&server))
        };
        sink.warning(
            r_type_at,
            format!(
                "r_type: {who} is `{}`, not Rehost: it is left out of the waves",
                shown(r_type)
            ),
        );
        form.skipped.push(Skipped {
            line: row.line,
            server,
            r_type: r_type.to_owned(),
        });
        return;
    }
    form.rehosts += 1;
    let wave = required_name(
        row,
        Column::WaveName,
        "the wave this server moves in",
        seen,
        sink,
    );
    let app = required_name(
        row,
        Column::AppName,
        "the application this server belongs to",
        seen,
        sink,
    );
    let server = read_server(row, seen, sink);
    if let Some(region) = seen.region.take() {
        form.regions.push(region);
    }
    let (Some(wave), Some(app), Some(server)) = (wave, app, server) else {
        return;
    };
    if let Some((app_at, (first_wave, first_line))) = row
        .get(Column::AppName)
        .map(|(_, at)| at)
        .zip(seen.apps.get(&app))
        && *first_wave != wave
    {
        sink.error(
            app_at,
            format!(
                "app_name: application `{app}` is in wave `{first_wave}` (line {first_line}), \
                 and an application moves in one wave: move this server to that wave or name \
                 another application"
            ),
        );
        return;
    }
    seen.apps
        .entry(app.clone())
        .or_insert_with(|| (wave.clone(), row.line));
    if sink.diags.has_errors() {
        // Nothing will be generated; the checks above still run on every row.
        return;
    }
    let wave_index = match form.waves.iter().position(|w| w.name == wave) {
        Some(index) => index,
        None => {
            form.waves.push(WaveDraft {
                name: wave,
                apps: Vec::new(),
            });
            form.waves.len() - 1
        }
    };
    let apps = &mut form.waves[wave_index].apps;
    match apps.iter_mut().find(|a| a.name == app) {
        Some(existing) => existing.servers.push(server),
        None => apps.push(AppDraft {
            name: app,
            servers: vec![server],
        }),
    }
}

/// A name cell that must be filled, sanitized into a Wavelift name.
fn required_name(
    row: &Row,
    column: Column,
    what: &str,
    seen: &mut Seen,
    sink: &mut Sink,
) -> Option<String> {
    let Some((text, at)) = row.get(column) else {
        sink.error(
            row.place(column),
            format!("{} is empty: write {what}", column.name()),
        );
        return None;
    };
    sanitized_name(column, text, at, seen, sink)
}

fn sanitized_name(
    column: Column,
    text: &str,
    at: Location,
    seen: &mut Seen,
    sink: &mut Sink,
) -> Option<String> {
    let name = sanitize_name(text);
    if name.is_empty() {
        sink.error(
            at,
            format!(
                "{}: `{}` has no letters or digits: use letters, digits, '-', '_' and '.'",
                column.name(),
                shown(text)
            ),
        );
        return None;
    }
    if name.chars().count() > MAX_NAME_CHARS {
        sink.error(
            at,
            format!(
                "{}: `{}` is longer than {MAX_NAME_CHARS} characters: shorten it",
                column.name(),
                shown(text)
            ),
        );
        return None;
    }
    if name != text && seen.renamed.insert((column, text.to_owned())) {
        sink.warning(
            at,
            format!("{} `{}` becomes `{name}`", column.name(), shown(text)),
        );
    }
    Some(name)
}

/// Lowercase; every run of other characters than letters, digits, `_` and `.` becomes one
/// `-`; no `-` or `.` at either end (a leading `.` would hide the wave file).
pub fn sanitize_name(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches(['-', '.']).to_owned()
}

fn read_server(row: &Row, seen: &mut Seen, sink: &mut Sink) -> Option<ServerDraft> {
    let mut ok = true;
    let name = match row.get(Column::ServerName) {
        Some((text, at)) => {
            let name = sanitized_name(Column::ServerName, text, at, seen, sink);
            if let Some(name) = &name {
                match seen.servers.get(name) {
                    Some(first) => {
                        sink.error(
                            at,
                            format!(
                                "server_name: server `{name}` is already at line {first}: each \
                                 server appears once in the form"
                            ),
                        );
                        ok = false;
                    }
                    None => {
                        seen.servers.insert(name.clone(), row.line);
                    }
                }
            }
            name
        }
        None => {
            sink.error(
                row.place(Column::ServerName),
                "server_name is empty: write the server's host name",
            );
            None
        }
    };
    let label = name.clone().unwrap_or_default();
    let family = match row.get(Column::ServerOsFamily) {
        Some((text, at)) => {
            let lowered = text.to_ascii_lowercase();
            let family = OsFamily::from_name(&lowered);
            if family.is_none() {
                let hint = decode::closest(&lowered, OsFamily::NAMES)
                    .filter(|_| text.chars().count() <= 64)
                    .map(|near| format!("; did you mean `{near}`?"))
                    .unwrap_or_default();
                sink.error(
                    at,
                    format!(
                        "server_os_family: `{}` is not linux or windows{hint}",
                        shown(text)
                    ),
                );
            }
            family
        }
        None => {
            sink.error(
                row.place(Column::ServerOsFamily),
                "server_os_family is empty: write linux or windows",
            );
            None
        }
    };
    let fqdn = row.get(Column::ServerFqdn).and_then(|(text, at)| {
        let fqdn = check_fqdn(text)
            .map_err(|message| sink.error(at, format!("server_fqdn: {message}")))
            .ok()?;
        if let Some((other, line)) = seen.hosts.get(&fqdn) {
            sink.error(
                at,
                format!(
                    "server_fqdn: `{fqdn}` is already the host name of `{other}` (line {line}): \
                     each server has its own"
                ),
            );
            return None;
        }
        seen.hosts.insert(fqdn.clone(), (label.clone(), row.line));
        Some(fqdn)
    });
    let fqdn_bad = row.get(Column::ServerFqdn).is_some() && fqdn.is_none();
    let ip = row.get(Column::PrivateIp).and_then(|(text, at)| {
        let Ok(ip) = text.parse::<IpAddr>() else {
            sink.error(
                at,
                format!(
                    "private_ip: `{}` is not an IPv4 or IPv6 address",
                    shown(text)
                ),
            );
            return None;
        };
        if let Some((other, line)) = seen.addresses.get(&ip) {
            sink.error(
                at,
                format!(
                    "private_ip: `{ip}` is already the address of `{other}` (line {line}): each \
                     server has its own"
                ),
            );
            return None;
        }
        seen.addresses.insert(ip, (label.clone(), row.line));
        Some(ip)
    });
    let ip_bad = row.get(Column::PrivateIp).is_some() && ip.is_none();
    if row.get(Column::ServerFqdn).is_none() && row.get(Column::PrivateIp).is_none() {
        let column = if row.header.has(Column::ServerFqdn) {
            Column::ServerFqdn
        } else {
            Column::PrivateIp
        };
        let who = name
            .as_deref()
            .map_or("the server".to_owned(), |n| format!("server `{n}`"));
        sink.error(
            row.place(column),
            format!(
                "{who} has neither server_fqdn nor private_ip: write the host name wavelift \
                 reaches it by"
            ),
        );
        ok = false;
    }
    ok &= !fqdn_bad && !ip_bad;
    let os_version = row.get(Column::ServerOsVersion).map(|(t, _)| t.to_owned());
    let mut tags = BTreeMap::new();
    for (index, key) in &row.header.extra {
        if let Some((value, at)) = row.at(*index) {
            ok &= check_tag_value(key, value, at, sink);
            tags.insert(key.clone(), value.to_owned());
        }
    }
    for (column, key) in [
        (Column::ServerTier, "tier"),
        (Column::ServerEnvironment, "environment"),
    ] {
        if let Some((value, at)) = row.get(column) {
            ok &= check_tag_value(column.name(), value, at, sink);
            tags.insert(key.to_owned(), value.to_owned());
        }
    }
    let launch_tags = match row.get(Column::Tags) {
        Some((text, at)) => parse_tags(text, at, sink),
        None => Some(BTreeMap::new()),
    };
    let test = read_network(
        row,
        Column::SubnetIdsTest,
        Column::SecurityGroupIdsTest,
        sink,
    );
    let cutover = read_network(row, Column::SubnetIds, Column::SecurityGroupIds, sink);
    let instance_type = row.get(Column::InstanceType).and_then(|(text, at)| {
        check_instance_type(text)
            .map_err(|message| sink.error(at, format!("instanceType: {message}")))
            .ok()
    });
    let instance_type_bad = row.get(Column::InstanceType).is_some() && instance_type.is_none();
    let (options, region, options_ok) = read_options(row, sink);
    seen.region = region;
    let (Some(name), Some(family), Some(launch_tags), Some(test), Some(cutover)) =
        (name, family, launch_tags, test, cutover)
    else {
        return None;
    };
    if !ok || instance_type_bad || !options_ok {
        return None;
    }
    Some(ServerDraft {
        name,
        fqdn,
        ip,
        family,
        os_version,
        tags,
        instance_type,
        launch_tags,
        options,
        test,
        cutover,
    })
}

fn check_tag_value(key: &str, value: &str, at: Location, sink: &mut Sink) -> bool {
    if value.chars().count() > MAX_TAG_VALUE_CHARS {
        sink.error(
            at,
            format!(
                "{}: the value is longer than {MAX_TAG_VALUE_CHARS} characters, the limit of a tag \
                 value: shorten it",
                shown(key)
            ),
        );
        return false;
    }
    true
}

/// The same rule as the wave files' `fqdn`: dot-separated labels of letters, digits and
/// `-`; lowercased, without a final dot.
fn check_fqdn(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('.');
    let valid = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if valid {
        Ok(trimmed.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{}` is not a host name: use letters, digits and '-', dot-separated",
            shown(text)
        ))
    }
}

fn check_instance_type(text: &str) -> Result<String, String> {
    let valid = text.split_once('.').is_some_and(|(family, size)| {
        !family.is_empty()
            && !size.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    });
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{}` is not an EC2 instance type like m5.large",
            shown(text)
        ))
    }
}

/// The items of a `;` list, trimmed; empty items (a trailing `;`) are dropped.
fn list_items(text: &str) -> Vec<&str> {
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// `subnet-0a1b2c3d` or `sg-0a1b2c3d`: the prefix and lowercase letters and digits.
fn is_aws_id(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix).is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    })
}

fn read_network(
    row: &Row,
    subnet_column: Column,
    groups_column: Column,
    sink: &mut Sink,
) -> Option<Network> {
    let mut network = Network::default();
    let mut ok = true;
    if let Some((text, at)) = row.get(subnet_column) {
        let items = list_items(text);
        let name = subnet_column.name();
        if let Some(bad) = items.iter().find(|s| !is_aws_id(s, "subnet-")) {
            sink.error(
                at,
                format!(
                    "{name}: `{}` is not a subnet ID like subnet-0a1b2c3d",
                    shown(bad)
                ),
            );
            ok = false;
        } else if items.len() > 1 {
            let list: Vec<String> = items.iter().map(|s| format!("`{}`", shown(s))).collect();
            sink.error(
                at,
                format!(
                    "{name}: {} subnets listed ({}): a server launches in one subnet; keep one",
                    items.len(),
                    list.join(", ")
                ),
            );
            ok = false;
        } else {
            network.subnet = items.first().map(|s| (*s).to_owned());
        }
    }
    if let Some((text, at)) = row.get(groups_column) {
        let items = list_items(text);
        if let Some(bad) = items.iter().find(|s| !is_aws_id(s, "sg-")) {
            sink.error(
                at,
                format!(
                    "{}: `{}` is not a security group ID like sg-0a1b2c3d",
                    groups_column.name(),
                    shown(bad)
                ),
            );
            ok = false;
        } else {
            network.security_groups = items.iter().map(|s| (*s).to_owned()).collect();
        }
    }
    ok.then_some(network)
}

/// `key=value;key=value`, a trailing `;` allowed; the value may hold `=`.
fn parse_tags(text: &str, at: Location, sink: &mut Sink) -> Option<BTreeMap<String, String>> {
    let mut tags = BTreeMap::new();
    for item in list_items(text) {
        let Some((key, value)) = item.split_once('=') else {
            sink.error(
                at,
                format!(
                    "tags: `{}` is not key=value: write tags as key=value;key=value",
                    shown(item)
                ),
            );
            return None;
        };
        let (key, value) = (key.trim(), value.trim());
        let problem = if key.is_empty() {
            Some(format!(
                "`{}` has no key: write tags as key=value;key=value",
                shown(item)
            ))
        } else if key == "<<" {
            Some("`<<` cannot be a tag key (YAML reads it as a merge): rename it".to_owned())
        } else if key.chars().count() > MAX_TAG_KEY_CHARS {
            Some(format!(
                "key `{}` is longer than {MAX_TAG_KEY_CHARS} characters: shorten it",
                shown(key)
            ))
        } else if value.chars().count() > MAX_TAG_VALUE_CHARS {
            Some(format!(
                "the value of `{}` is longer than {MAX_TAG_VALUE_CHARS} characters: shorten it",
                shown(key)
            ))
        } else if tags.contains_key(key) {
            Some(format!("key `{}` is written twice: keep one", shown(key)))
        } else {
            None
        };
        if let Some(problem) = problem {
            sink.error(at, format!("tags: {problem}"));
            return None;
        }
        tags.insert(key.to_owned(), value.to_owned());
    }
    Some(tags)
}

type Options = (
    Vec<(&'static str, String)>,
    Option<(String, Location)>,
    bool,
);

/// The launch settings that are the engine's business: account, region, tenancy, instance
/// profile, dedicated host.
fn read_options(row: &Row, sink: &mut Sink) -> Options {
    let mut options = Vec::new();
    let mut ok = true;
    if let Some((text, at)) = row.get(Column::AwsAccountId) {
        if text.len() == 12 && text.chars().all(|c| c.is_ascii_digit()) {
            options.push(("aws_account_id", text.to_owned()));
        } else {
            let hint = if text.contains(['E', 'e']) && text.contains('+') {
                ": a spreadsheet turned it into a number; format the column as text and write \
                 the 12 digits"
            } else {
                ""
            };
            sink.error(
                at,
                format!(
                    "aws_accountid: `{}` is not an AWS account ID (12 digits){hint}",
                    shown(text)
                ),
            );
            ok = false;
        }
    }
    let mut region = None;
    if let Some((text, at)) = row.get(Column::AwsRegion) {
        if is_region(text) {
            options.push(("aws_region", text.to_owned()));
            region = Some((text.to_owned(), at));
        } else {
            sink.error(
                at,
                format!(
                    "aws_region: `{}` is not an AWS Region name like eu-west-1",
                    shown(text)
                ),
            );
            ok = false;
        }
    }
    if let Some((text, at)) = row.get(Column::Tenancy) {
        let known = ["Shared", "Dedicated", "Dedicated host"];
        match known.iter().find(|k| k.eq_ignore_ascii_case(text)) {
            Some(value) => options.push(("tenancy", (*value).to_owned())),
            None => {
                sink.error(
                    at,
                    format!(
                        "tenancy: `{}` is not Shared, Dedicated or Dedicated host",
                        shown(text)
                    ),
                );
                ok = false;
            }
        }
    }
    if let Some((text, _)) = row.get(Column::IamRole) {
        options.push(("iam_instance_profile", text.to_owned()));
    }
    if let Some((text, at)) = row.get(Column::DedicatedHostId) {
        if is_aws_id(text, "h-") {
            options.push(("dedicated_host_id", text.to_owned()));
        } else {
            sink.error(
                at,
                format!(
                    "dedicated_host_id: `{}` is not a dedicated host ID like h-0a1b2c3d",
                    shown(text)
                ),
            );
            ok = false;
        }
    }
    (options, region, ok)
}

/// The rule of the configuration's `engines.mgn.region`.
fn is_region(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty())
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The region most rows name; on a tie, the one named first.
fn most_common_region(regions: &[(String, Location)]) -> Option<String> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for (region, _) in regions {
        match counts.iter_mut().find(|(r, _)| r == region) {
            Some((_, n)) => *n += 1,
            None => counts.push((region, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max()?;
    counts
        .iter()
        .find(|(_, n)| *n == best)
        .map(|(r, _)| (*r).to_owned())
}

fn check_regions(form: &Form, region: Option<&str>, engine: EngineKind, sink: &mut Sink) {
    if engine != EngineKind::Mgn || form.rehosts == 0 {
        return;
    }
    let Some(region) = region else {
        sink.error(
            Location::START,
            "no row has an aws_region, and the mgn engine needs one: fill the aws_region column \
             or import with --engine sim",
        );
        return;
    };
    let mut warned: Vec<&str> = Vec::new();
    for (other, at) in &form.regions {
        if other != region && !warned.contains(&other.as_str()) {
            warned.push(other);
            sink.warning(
                *at,
                format!(
                    "aws_region: `{other}` is not `{region}`, the region of the suggested \
                     configuration: the mgn engine works in one region; import these servers \
                     with a configuration of their own"
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writing YAML
// ---------------------------------------------------------------------------------------

/// Words YAML 1.1 or 1.2 reads as something other than text.
const RESERVED_WORDS: &[&str] = &["null", "true", "false", "yes", "no", "on", "off", "y", "n"];

/// A scalar the loader reads back exactly as `text`: plain when that is unambiguous,
/// otherwise double-quoted.
fn scalar(text: &str) -> String {
    if is_plain_safe(text) {
        text.to_owned()
    } else {
        quoted(text)
    }
}

/// Plain only for a letter followed by letters, digits, `-`, `_`, `.`, `/` and inner
/// spaces, and never a word YAML types (`yes`, `null`, `inf`, ...). Everything else is
/// quoted: numbers, dates, `:`, `#`, leading `-`, ...
fn is_plain_safe(text: &str) -> bool {
    let Some(first) = text.chars().next() else {
        return false;
    };
    first.is_ascii_alphabetic()
        && !text.ends_with(' ')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | ' '))
        && !RESERVED_WORDS.contains(&text.to_ascii_lowercase().as_str())
        && text.parse::<f64>().is_err()
}

/// A YAML double-quoted scalar: printable characters as they are, the rest escaped.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            // Not printable in YAML, or read as a line break by some parsers.
            '\u{0}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

fn flow_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|s| scalar(s)).collect();
    format!("[{}]", items.join(", "))
}

/// A name for a comment line: no line breaks or other control characters.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn file_name_for(wave: &str) -> String {
    // `wavelift.yaml` is the configuration's name.
    if format!("{wave}.yaml") == CONFIG_FILE_NAME {
        format!("{wave}-wave.yaml")
    } else {
        format!("{wave}.yaml")
    }
}

fn emit_waves(
    file: &Arc<str>,
    waves: &[WaveDraft],
    options: &ImportOptions,
    timing: &Timing,
    sink: &mut Sink,
) -> Vec<ImportedWave> {
    let mut out = Vec::with_capacity(waves.len());
    for (index, wave) in waves.iter().enumerate() {
        let Some(start) = window_start(timing, options.cadence, index) else {
            sink.error(
                Location::START,
                format!(
                    "the window of wave `{}` is out of range: choose an earlier --first-window or \
                     a shorter --cadence",
                    wave.name
                ),
            );
            continue;
        };
        if let AmbiguousOffset::Gap { .. } = timing.tz.to_ambiguous_zoned(start).offset() {
            sink.error(
                Location::START,
                format!(
                    "the window of wave `{}` would start at {}, which does not exist in {} (the \
                     clocks skip it for daylight saving time): choose another --first-window time",
                    wave.name,
                    format_local(start),
                    options.timezone
                ),
            );
            continue;
        }
        let text = wave_text(file, wave, options, start);
        out.push(ImportedWave {
            file_name: file_name_for(&wave.name),
            wave: wave.name.clone(),
            text,
            servers: wave.apps.iter().map(|a| a.servers.len()).sum(),
        });
    }
    out
}

fn wave_text(
    file: &Arc<str>,
    wave: &WaveDraft,
    options: &ImportOptions,
    start: DateTime,
) -> String {
    let mut y = String::new();
    let servers: usize = wave.apps.iter().map(|a| a.servers.len()).sum();
    let _ = writeln!(
        y,
        "# Imported from {} by `wavelift import cmf`: {} application{}, {servers} server{}.",
        comment_text(file),
        wave.apps.len(),
        if wave.apps.len() == 1 { "" } else { "s" },
        if servers == 1 { "" } else { "s" },
    );
    y.push_str(
        "# The window was set by the import, not by the form: check it before you plan the wave.\n",
    );
    y.push_str("version: 1\n");
    let _ = writeln!(y, "name: {}", scalar(&wave.name));
    let _ = writeln!(y, "engine: {}", scalar(options.engine.as_str()));
    y.push_str("window:\n");
    let _ = writeln!(y, "  start: {}", scalar(&format_local(start)));
    let _ = writeln!(
        y,
        "  duration: {}",
        scalar(&options.window_duration.to_string())
    );
    let _ = writeln!(y, "  timezone: {}", scalar(&options.timezone));
    y.push_str("applications:\n");
    for app in &wave.apps {
        let _ = writeln!(y, "  - name: {}", scalar(&app.name));
        y.push_str("    servers:\n");
        for server in &app.servers {
            server_text(&mut y, server);
        }
    }
    y
}

fn map_lines(y: &mut String, indent: &str, key: &str, map: &BTreeMap<String, String>) {
    if map.is_empty() {
        return;
    }
    let _ = writeln!(y, "{indent}{key}:");
    for (k, v) in map {
        let _ = writeln!(y, "{indent}  {}: {}", scalar(k), scalar(v));
    }
}

fn server_text(y: &mut String, server: &ServerDraft) {
    const I: &str = "        ";
    let _ = writeln!(y, "      - name: {}", scalar(&server.name));
    if let Some(fqdn) = &server.fqdn {
        let _ = writeln!(y, "{I}fqdn: {}", scalar(fqdn));
    }
    if let Some(ip) = &server.ip {
        let _ = writeln!(y, "{I}ip: {}", scalar(&ip.to_string()));
    }
    let _ = writeln!(y, "{I}os:");
    let _ = writeln!(y, "{I}  family: {}", scalar(server.family.as_str()));
    if let Some(version) = &server.os_version {
        let _ = writeln!(y, "{I}  version: {}", scalar(version));
    }
    map_lines(y, I, "tags", &server.tags);
    let both = server.instance_type.is_some()
        || !server.launch_tags.is_empty()
        || !server.options.is_empty();
    let has = |n: &Network| n.subnet.is_some() || !n.security_groups.is_empty();
    if !both && !has(&server.test) && !has(&server.cutover) {
        return;
    }
    let _ = writeln!(y, "{I}blueprints:");
    if both {
        let _ = writeln!(y, "{I}  both:");
        if let Some(instance_type) = &server.instance_type {
            let _ = writeln!(y, "{I}    instance_type: {}", scalar(instance_type));
        }
        map_lines(y, &format!("{I}    "), "tags", &server.launch_tags);
        if !server.options.is_empty() {
            let _ = writeln!(y, "{I}    options:");
            for (key, value) in &server.options {
                let _ = writeln!(y, "{I}      {key}: {}", scalar(value));
            }
        }
    }
    for (key, network) in [("test", &server.test), ("cutover", &server.cutover)] {
        if !has(network) {
            continue;
        }
        let _ = writeln!(y, "{I}  {key}:");
        if let Some(subnet) = &network.subnet {
            let _ = writeln!(y, "{I}    subnet: {}", scalar(subnet));
        }
        if !network.security_groups.is_empty() {
            let _ = writeln!(
                y,
                "{I}    security_groups: {}",
                flow_list(&network.security_groups)
            );
        }
    }
}

/// A configuration file (`wavelift.yaml`) under which the imported waves are valid:
/// `engines.default` and, for mgn, `engines.mgn.region`, the most common `aws_region` of
/// the form.
pub fn suggested_config(import: &Import, options: &ImportOptions) -> String {
    let mut y = String::new();
    y.push_str("# Wavelift configuration suggested by `wavelift import cmf`.\n");
    y.push_str(
        "# Database, reports, CMDB and sites keep their built-in defaults: review them before \
         the first run.\n",
    );
    y.push_str("version: 1\n");
    y.push_str("engines:\n");
    let _ = writeln!(y, "  default: {}", scalar(options.engine.as_str()));
    if options.engine == EngineKind::Mgn {
        y.push_str("  mgn:\n");
        match &import.aws_region {
            Some(region) => {
                let _ = writeln!(
                    y,
                    "    region: {}   # the most common aws_region of the form",
                    scalar(region)
                );
            }
            None => y.push_str("    region: null   # no row names an aws_region: write yours\n"),
        }
    }
    y
}

/// Loads what was generated, as `wavelift validate` would, and reports any difference.
fn validate_generated(waves: &[ImportedWave], config: &str, drafts: &[WaveDraft], sink: &mut Sink) {
    let config = SourceFile {
        name: Arc::from(CONFIG_FILE_NAME),
        text: config.to_owned(),
    };
    let sources: Vec<SourceFile> = waves
        .iter()
        .map(|w| SourceFile {
            name: Arc::from(w.file_name.as_str()),
            text: w.text.clone(),
        })
        .collect();
    let loaded = load::load_sources(Some(&config), PathBuf::new(), &sources);
    let failed = loaded.diagnostics.has_errors();
    sink.diags.extend(loaded.diagnostics);
    let expected: Vec<(&str, usize)> = drafts
        .iter()
        .map(|d| {
            (
                d.name.as_str(),
                d.apps.iter().map(|a| a.servers.len()).sum(),
            )
        })
        .collect();
    let mut found: Vec<(&str, usize)> = loaded
        .definitions
        .waves
        .iter()
        .map(|w| (w.name.value.as_str(), w.server_count()))
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort_unstable();
    found.sort_unstable();
    if failed || found != expected_sorted {
        sink.error(
            Location::START,
            "the generated wave files do not load back as imported: this is a bug in the \
             importer; please report it with the form",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_name("Wave 1"), "wave-1");
        assert_eq!(sanitize_name("App 01 - HR"), "app-01-hr");
        assert_eq!(sanitize_name("  .hidden."), "hidden");
        assert_eq!(sanitize_name("WEB_01.corp"), "web_01.corp");
        assert_eq!(sanitize_name("Ñandú"), "and");
        assert_eq!(sanitize_name("!!!"), "");
    }

    #[test]
    fn plain_only_where_unambiguous() {
        for plain in [
            "wave-1",
            "Red Hat Enterprise Linux 7",
            "Europe/Rome",
            "m5.large",
        ] {
            assert_eq!(scalar(plain), plain);
        }
        for typed in [
            "yes",
            "No",
            "null",
            "~",
            "true",
            "inf",
            "NaN",
            "123",
            "1e3",
            "0x1f",
            "10.0.0.1",
            "2027-01-09 22:00",
            "a: b",
            "a #b",
            "-x",
            "",
            " x",
            "x ",
            "@x",
            "[x]",
            "a,b",
        ] {
            assert!(scalar(typed).starts_with('"'), "{typed} must be quoted");
        }
        assert_eq!(
            quoted("a\"b\\c\nd\u{7f}\u{85}é"),
            "\"a\\\"b\\\\c\\nd\\u007f\\u0085é\""
        );
    }

    #[test]
    fn default_window_is_a_saturday_three_weeks_out() {
        let cases = [
            // Friday: 21 days later is a Friday, the next day a Saturday.
            (
                jiff::civil::date(2026, 12, 18),
                jiff::civil::date(2027, 1, 9),
            ),
            // Saturday: 21 days later is a Saturday.
            (
                jiff::civil::date(2026, 12, 19),
                jiff::civil::date(2027, 1, 9),
            ),
            // Sunday: six more days.
            (
                jiff::civil::date(2026, 12, 20),
                jiff::civil::date(2027, 1, 16),
            ),
        ];
        for (today, expected) in cases {
            assert_eq!(first_window_after(today), Some(expected.at(22, 0, 0, 0)));
        }
    }

    #[test]
    fn first_window_is_local_time_only() {
        assert_eq!(
            parse_first_window("2027-01-09 22:00"),
            Ok(jiff::civil::date(2027, 1, 9).at(22, 0, 0, 0))
        );
        assert!(parse_first_window("2027-01-09T22:00+01:00").is_err_and(|e| e.contains("offset")));
        assert!(parse_first_window("next saturday").is_err_and(|e| e.contains("not a local")));
    }
}
