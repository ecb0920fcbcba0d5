//! The region of the import: the most common `aws_region` of the form becomes the
//! suggested configuration's `engines.mgn.region`, and rows in other regions are warned
//! about, since the mgn engine works in one region.

use super::Sink;
use super::form::Form;
use crate::diag::Location;
use crate::model::EngineKind;

/// The region most rows name; on a tie, the one named first.
pub(super) fn most_common_region(regions: &[(String, Location)]) -> Option<String> {
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

/// For the mgn engine: an error if no row names a region, a warning at the first row of
/// every other region.
pub(super) fn check_regions(
    form: &Form,
    region: Option<&str>,
    engine: EngineKind,
    sink: &mut Sink,
) {
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
