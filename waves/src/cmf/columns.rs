//! The header row: which of CMF's columns the form has and where, the required ones
//! (with the nearest name when one is misspelt), and the other columns, kept as tags.

use std::collections::HashMap;

use super::cells::MAX_TAG_KEY_CHARS;
use super::{Sink, location};
use crate::decode;
use crate::rules::shown;

/// The columns Wavelift reads, as CMF spells them (case-sensitive). Any other column is
/// kept as a server tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Column {
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
    /// The address of the new instance in AWS (CMF puts it in the launch template), not
    /// the address of the server.
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

/// The columns every form has. `server_fqdn` is among them because wavelift reaches each
/// server by its host name, as CMF does.
const REQUIRED: &[Column] = &[
    Column::WaveName,
    Column::AppName,
    Column::ServerName,
    Column::ServerOsFamily,
    Column::ServerFqdn,
    Column::RType,
];

impl Column {
    pub(super) fn name(self) -> &'static str {
        COLUMNS
            .iter()
            .find(|(c, _)| *c == self)
            .map_or("", |(_, name)| name)
    }

    fn from_name(name: &str) -> Option<Column> {
        COLUMNS.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
    }
}

/// The header: where each known column is, and the other columns kept as tags.
pub(super) struct Header {
    /// The line of the header row: 1 unless blank lines come first.
    pub(super) line: u64,
    pub(super) known: HashMap<Column, usize>,
    /// Field index and name of every column that becomes a server tag.
    pub(super) extra: Vec<(usize, String)>,
    pub(super) width: usize,
    /// Columns with no name, reported once if any row fills them.
    pub(super) nameless: Vec<usize>,
}

impl Header {
    pub(super) fn has(&self, column: Column) -> bool {
        self.known.contains_key(&column)
    }
}

/// Reads the header row; `None` when a column is missing or the row is not a header.
pub(super) fn read_header(
    record: &csv::StringRecord,
    line: u64,
    sink: &mut Sink,
) -> Option<Header> {
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
                    Column::ServerFqdn if first_index.contains_key("private_ip") => {
                        ": add it with every server's host name, by which wavelift reaches it \
                         (private_ip is the address of the new instance in AWS, not of the \
                         server)"
                    }
                    Column::ServerFqdn => {
                        ": add it with every server's host name, by which wavelift reaches it"
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
    if !ok {
        return None;
    }
    ok = keep_extra_columns(&header, &explained, sink);
    ok.then_some(header)
}

/// Checks the columns kept as tags and lists them once; warns about near misses of
/// known columns. False if a column name cannot be a tag key.
fn keep_extra_columns(header: &Header, explained: &[usize], sink: &mut Sink) -> bool {
    let line = header.line;
    let mut ok = true;
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
    ok
}
