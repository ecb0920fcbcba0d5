//! The checks of single cells: their length, launch tags, subnets and security groups,
//! the instance type, and the launch options that are the engine's business.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::columns::Column;
use super::form::Row;
use super::{Sink, location};
use crate::diag::Location;
use crate::rules::{is_aws_region, shown};

/// A cell is short text; anything longer is a broken export, not a value.
const MAX_CELL_CHARS: usize = 4096;

/// The limits of an AWS tag, which blueprint tags become.
pub(super) const MAX_TAG_KEY_CHARS: usize = 128;
const MAX_TAG_VALUE_CHARS: usize = 256;

/// Where a new instance is launched, for the test or the cutover.
#[derive(Debug, Clone, Default)]
pub(super) struct Network {
    pub(super) subnet: Option<String>,
    pub(super) security_groups: Vec<String>,
    /// The new instance's own address (CMF's `private_ip`, at cutover only).
    pub(super) private_ip: Option<IpAddr>,
}

impl Network {
    pub(super) fn is_empty(&self) -> bool {
        self.subnet.is_none() && self.security_groups.is_empty() && self.private_ip.is_none()
    }
}

/// False, with an error at each, if a cell of the row is too long to be a value.
pub(super) fn check_cell_lengths(row: &Row, sink: &mut Sink) -> bool {
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
    ok
}

pub(super) fn check_tag_value(key: &str, value: &str, at: Location, sink: &mut Sink) -> bool {
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

pub(super) fn check_instance_type(text: &str) -> Result<String, String> {
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

/// `subnet-0a1b2c3d` or `sg-0a1b2c3d`: the prefix and hexadecimal digits, as the wave
/// files take them (`wave_file::is_ec2_id`: a form's `subnet-xyz` would be written, then
/// refused when the written files load back), in lower case as EC2 writes them.
fn is_aws_id(text: &str, prefix: &str) -> bool {
    crate::wave_file::is_ec2_id(text, prefix) && !text.bytes().any(|b| b.is_ascii_uppercase())
}

/// The subnet and security groups of one launch; no address, which only the cutover has.
pub(super) fn read_network(
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
pub(super) fn parse_tags(
    text: &str,
    at: Location,
    sink: &mut Sink,
) -> Option<BTreeMap<String, String>> {
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

/// The launch options, the row's valid `aws_region` and where it is, and whether every
/// option cell is valid.
type Options = (
    Vec<(&'static str, String)>,
    Option<(String, Location)>,
    bool,
);

/// The launch settings that are the engine's business: account, region, tenancy, instance
/// profile, dedicated host.
pub(super) fn read_options(row: &Row, sink: &mut Sink) -> Options {
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
        if is_aws_region(text) {
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
