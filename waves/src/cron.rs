//! Cron schedules: standard cron expressions, parsed with precise errors.
//!
//! # Syntax
//!
//! An expression has either 5 fields, `minute hour day-of-month month day-of-week`, or
//! 6 fields with seconds first, `second minute hour day-of-month month day-of-week`.
//! Fields are separated by any whitespace. Without a seconds field the second is 0.
//!
//! | field        | values | names                          |
//! |--------------|--------|--------------------------------|
//! | second       | 0-59   |                                |
//! | minute       | 0-59   |                                |
//! | hour         | 0-23   |                                |
//! | day-of-month | 1-31   |                                |
//! | month        | 1-12   | `Jan`-`Dec`                    |
//! | day-of-week  | 0-7    | `Sun`-`Sat` (0 and 7 are Sunday) |
//!
//! Names are three letters and case-insensitive. Each field is a comma list of items;
//! an item is `*`, a value `a`, a range `a-b` (names allowed, so `Mon-Fri` is 1-5), or
//! one of those followed by a step: `*/n`, `a-b/n`, and `a/n` meaning `a` through the
//! field's maximum in steps of `n`. `?` means the same as `*` but is accepted only in
//! the day-of-month and day-of-week fields.
//!
//! A range must not run backwards (`5-2`, `Fri-Mon` are errors), except that in the
//! day-of-week field a range may end on Sunday written as `0` or `Sun` (`Fri-Sun` is
//! Friday to Sunday), because Sunday is both 0 and 7. A step must be between 1 and the
//! width of the field (59 for minutes, 23 for hours, 30 for days of the month, 11 for
//! months, 7 for days of the week).
//!
//! The macros `@yearly` (= `@annually`), `@monthly`, `@weekly`, `@daily` (=
//! `@midnight`) and `@hourly` are accepted, case-insensitively, and stand for
//! `0 0 1 1 *`, `0 0 1 * *`, `0 0 * * 0`, `0 0 * * *` and `0 * * * *`.
//!
//! # Matching
//!
//! Day matching follows Vixie cron: when both the day-of-month and the day-of-week
//! field are restricted, a day matches when *either* matches (`0 0 1 * Mon` runs on
//! the 1st and on every Monday); otherwise both must match. A field is unrestricted
//! when one of its items is `*`, `?` or `*/1` (so `*/2` counts as restricted, as in
//! most modern cron implementations).
//!
//! # Time zones
//!
//! Occurrences are found in the civil (wall clock) time of the time zone of the
//! starting [`Zoned`] and converted to instants with jiff's "compatible"
//! disambiguation. A wall-clock time that falls in a DST gap is moved forward by the
//! length of the gap (02:30 on a spring-forward day becomes 03:30); a wall-clock time
//! that happens twice in a fold is used once, at its first (earlier) instant.
//! Occurrences are always strictly increasing instants, so a gap time that lands on
//! another occurrence yields it only once.
//!
//! The search jumps field by field (month, day, hour, minute, second) rather than
//! stepping through time, and it gives up after 5 years: a schedule that can never
//! fire, such as `0 0 30 2 *`, parses but has no next occurrence.

use std::fmt;

use jiff::civil::{Date, DateTime};
use jiff::{SignedDuration, Span, Zoned};

/// One field of a cron expression, used to say where an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronField {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Second => "second",
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

/// Why a cron expression could not be parsed.
///
/// `field` is the field the problem is in, or `None` when the problem is with the
/// expression as a whole (wrong number of fields, unknown macro, empty expression).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CronError {
    pub field: Option<CronField>,
    pub message: String,
}

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(f, "{field} field: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl CronError {
    fn whole(message: String) -> CronError {
        CronError {
            field: None,
            message,
        }
    }
}

/// A parsed cron schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    /// The original expression, trimmed.
    text: String,
    has_seconds: bool,
    /// Bit `n` set when second `n` matches (0-59).
    seconds: u64,
    /// Bit `n` set when minute `n` matches (0-59).
    minutes: u64,
    /// Bit `n` set when hour `n` matches (0-23).
    hours: u64,
    /// Bit `n` set when day of month `n` matches (1-31).
    days_of_month: u64,
    /// Bit `n` set when month `n` matches (1-12).
    months: u64,
    /// Bit `n` set when weekday `n` matches (0-6, Sunday is 0; 7 is folded into 0).
    days_of_week: u64,
    /// The day-of-month field has no `*`, `?` or `*/1` item.
    dom_restricted: bool,
    /// The day-of-week field has no `*`, `?` or `*/1` item.
    dow_restricted: bool,
}

/// The result of [`CronSchedule::occurrences`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occurrences {
    /// Number of occurrences found, at most the `limit` given.
    pub count: usize,
    /// The first occurrences, at most the `keep` given.
    pub first: Vec<Zoned>,
    /// True when there are more than `limit` occurrences (counting stopped early).
    pub capped: bool,
}

const FIELD_COUNT_HINT: &str =
    "expected 5 (minute hour day-of-month month day-of-week) or 6 with seconds first";

const MACROS: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

const MONTH_NAMES: &[&str] = &[
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

const DAY_NAMES: &[&str] = &["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// The static description of one field.
struct FieldSpec {
    field: CronField,
    min: u32,
    max: u32,
    /// Names and the value of the first name.
    names: Option<(&'static [&'static str], u32)>,
}

const SECOND: FieldSpec = FieldSpec {
    field: CronField::Second,
    min: 0,
    max: 59,
    names: None,
};
const MINUTE: FieldSpec = FieldSpec {
    field: CronField::Minute,
    min: 0,
    max: 59,
    names: None,
};
const HOUR: FieldSpec = FieldSpec {
    field: CronField::Hour,
    min: 0,
    max: 23,
    names: None,
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    field: CronField::DayOfMonth,
    min: 1,
    max: 31,
    names: None,
};
const MONTH: FieldSpec = FieldSpec {
    field: CronField::Month,
    min: 1,
    max: 12,
    names: Some((MONTH_NAMES, 1)),
};
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    field: CronField::DayOfWeek,
    min: 0,
    max: 7,
    names: Some((DAY_NAMES, 0)),
};

/// A parsed field: its bitset and whether it is unrestricted (`*`, `?`, `*/1`).
struct ParsedField {
    mask: u64,
    star: bool,
}

impl FieldSpec {
    fn err(&self, message: String) -> CronError {
        CronError {
            field: Some(self.field),
            message,
        }
    }

    fn allows_question_mark(&self) -> bool {
        matches!(self.field, CronField::DayOfMonth | CronField::DayOfWeek)
    }

    fn range_text(&self) -> String {
        if self.field == CronField::DayOfWeek {
            format!("{}-{} (0 and 7 are Sunday)", self.min, self.max)
        } else {
            format!("{}-{}", self.min, self.max)
        }
    }

    fn parse(&self, text: &str) -> Result<ParsedField, CronError> {
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '*' | '?' | ',' | '-' | '/')))
        {
            return Err(self.err(format!("unexpected character {c:?} in {text:?}")));
        }
        let mut mask = 0u64;
        let mut star = false;
        for item in text.split(',') {
            if item.is_empty() {
                return Err(self.err(format!("empty item in list {text:?}")));
            }
            let (item_mask, item_star) = self.parse_item(item)?;
            mask |= item_mask;
            star |= item_star;
        }
        Ok(ParsedField { mask, star })
    }

    /// Parses one comma-separated item: a base (`*`, `?`, `a`, `a-b`) and an
    /// optional `/step`.
    fn parse_item(&self, item: &str) -> Result<(u64, bool), CronError> {
        let (base, step) = match item.split_once('/') {
            None => (item, None),
            Some((base, step)) => {
                if step.contains('/') {
                    return Err(self.err(format!("more than one \"/\" in {item:?}")));
                }
                (base, Some(self.parse_step(step, item)?))
            }
        };
        if base.is_empty() {
            return Err(self.err(format!("missing value before \"/\" in {item:?}")));
        }
        let (start, end, star) = if base == "*" || base == "?" {
            if base == "?" && !self.allows_question_mark() {
                return Err(self.err(
                    "\"?\" is only allowed in the day-of-month and day-of-week fields".to_string(),
                ));
            }
            (self.min, self.max, step.unwrap_or(1) == 1)
        } else if let Some((a, b)) = base.split_once('-') {
            if b.contains('-') {
                return Err(self.err(format!("more than one \"-\" in {item:?}")));
            }
            if a.is_empty() {
                return Err(self.err(format!("range {item:?} has no start")));
            }
            if b.is_empty() {
                return Err(self.err(format!("range {item:?} has no end")));
            }
            let start = self.parse_value(a)?;
            let mut end = self.parse_value(b)?;
            // Sunday is both 0 and 7, so `Fri-Sun` / `5-0` mean Friday to Sunday.
            if self.field == CronField::DayOfWeek && end == 0 && start > 0 {
                end = 7;
            }
            if start > end {
                return Err(self.err(format!("range {a}-{b} runs backwards; write {b}-{a}")));
            }
            (start, end, false)
        } else {
            let value = self.parse_value(base)?;
            match step {
                None => (value, value, false),
                Some(_) => (value, self.max, false),
            }
        };
        let step = step.unwrap_or(1);
        let mut mask = 0u64;
        let mut v = start;
        while v <= end {
            mask |= 1u64 << v;
            v += step;
        }
        if self.field == CronField::DayOfWeek && mask & (1 << 7) != 0 {
            mask = (mask & !(1 << 7)) | 1;
        }
        Ok((mask, star))
    }

    fn parse_step(&self, step: &str, item: &str) -> Result<u32, CronError> {
        if step.is_empty() {
            return Err(self.err(format!("missing step after \"/\" in {item:?}")));
        }
        if !step.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.err(format!("step must be a number, found {step:?} in {item:?}")));
        }
        let widest = self.max - self.min;
        match step.parse::<u32>() {
            Ok(0) => Err(self.err(format!(
                "step 0 in {item:?} is not allowed; the smallest step is 1"
            ))),
            Ok(n) if n <= widest => Ok(n),
            _ => Err(self.err(format!(
                "step {step} in {item:?} is out of range 1-{widest}"
            ))),
        }
    }

    fn parse_value(&self, text: &str) -> Result<u32, CronError> {
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u32>() {
                Ok(v) if (self.min..=self.max).contains(&v) => Ok(v),
                Ok(v) => Err(self.err(format!("value {v} is out of range {}", self.range_text()))),
                Err(_) => Err(self.err(format!(
                    "value {text} is out of range {}",
                    self.range_text()
                ))),
            };
        }
        let Some((names, first)) = self.names else {
            return Err(self.err(format!("expected a number, found {text:?}")));
        };
        let kind = if self.field == CronField::Month {
            "month"
        } else {
            "day"
        };
        if !text.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(self.err(format!(
                "expected a number or a {kind} name, found {text:?}"
            )));
        }
        match names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
            Some(i) => Ok(first + i as u32),
            None => Err(self.err(format!(
                "unknown {kind} name {text:?} (expected {} or {}-{})",
                names.join(", "),
                self.min,
                self.max
            ))),
        }
    }
}

/// "a, b, c or d"
fn join_or(names: &[&str]) -> String {
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// The lowest set bit of `mask` at position `from` or above.
fn next_bit(mask: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let rest = mask & (u64::MAX << from);
    if rest == 0 {
        None
    } else {
        Some(rest.trailing_zeros())
    }
}

const ONE_SECOND: SignedDuration = SignedDuration::from_secs(1);

/// Upper bound on the steps of the field-by-field search for one civil match. Each
/// step moves to a later month, day, hour or minute, and 5 years need far fewer.
const MAX_SEARCH_STEPS: usize = 100_000;

/// Upper bound on civil matches skipped in `next_after` because a fold maps them to
/// an instant not after the start (a second-level schedule in a one-hour fold skips
/// 3600; the longest folds in history are about a day).
const MAX_FOLD_SKIPS: usize = 200_000;

impl CronSchedule {
    /// Parses a cron expression (5 fields, 6 fields with seconds first, or a macro).
    pub fn parse(expr: &str) -> Result<CronSchedule, CronError> {
        let text = expr.trim();
        if text.is_empty() {
            return Err(CronError::whole(format!(
                "cron expression is empty; {FIELD_COUNT_HINT}"
            )));
        }
        let fields: Vec<&str> = text.split_whitespace().collect();
        if let Some(first) = fields.first().filter(|f| f.starts_with('@')) {
            let Some((_, expansion)) = MACROS.iter().find(|(m, _)| m.eq_ignore_ascii_case(first))
            else {
                let names: Vec<&str> = MACROS.iter().map(|(m, _)| *m).collect();
                return Err(CronError::whole(format!(
                    "unknown macro {first:?} (expected {})",
                    join_or(&names)
                )));
            };
            if fields.len() > 1 {
                return Err(CronError::whole(format!(
                    "unexpected text after {first:?}; a macro stands alone"
                )));
            }
            let mut schedule = Self::parse_fields(&expansion.split(' ').collect::<Vec<_>>())?;
            schedule.text = text.to_string();
            return Ok(schedule);
        }
        let mut schedule = Self::parse_fields(&fields)?;
        schedule.text = text.to_string();
        Ok(schedule)
    }

    fn parse_fields(fields: &[&str]) -> Result<CronSchedule, CronError> {
        let (second, rest) = match fields {
            [_, _, _, _, _] => (None, fields),
            [second, rest @ ..] if fields.len() == 6 => (Some(*second), rest),
            _ => {
                let n = fields.len();
                let noun = if n == 1 { "field" } else { "fields" };
                let extra = if n == 7 {
                    "; a year field is not supported"
                } else {
                    ""
                };
                return Err(CronError::whole(format!(
                    "found {n} {noun}; {FIELD_COUNT_HINT}{extra}"
                )));
            }
        };
        let [minute, hour, dom, month, dow] = rest else {
            return Err(CronError::whole(format!(
                "found {} fields; {FIELD_COUNT_HINT}",
                fields.len()
            )));
        };
        let seconds = match second {
            Some(text) => SECOND.parse(text)?.mask,
            None => 1,
        };
        let minutes = MINUTE.parse(minute)?;
        let hours = HOUR.parse(hour)?;
        let dom = DAY_OF_MONTH.parse(dom)?;
        let months = MONTH.parse(month)?;
        let dow = DAY_OF_WEEK.parse(dow)?;
        Ok(CronSchedule {
            text: String::new(),
            has_seconds: second.is_some(),
            seconds,
            minutes: minutes.mask,
            hours: hours.mask,
            days_of_month: dom.mask,
            months: months.mask,
            days_of_week: dow.mask,
            dom_restricted: !dom.star,
            dow_restricted: !dow.star,
        })
    }

    /// True when the expression has a seconds field (6 fields).
    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    /// The original expression, trimmed.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first occurrence strictly after `after`, in `after`'s time zone. None if
    /// none within 5 years (e.g. "0 0 30 2 *").
    pub fn next_after(&self, after: &Zoned) -> Option<Zoned> {
        let tz = after.time_zone();
        let base = after.datetime();
        let limit = Span::new()
            .try_years(5)
            .ok()
            .and_then(|five| base.checked_add(five).ok())
            .unwrap_or(DateTime::MAX);
        let whole_second = DateTime::new(
            base.year(),
            base.month(),
            base.day(),
            base.hour(),
            base.minute(),
            base.second(),
            0,
        )
        .ok()?;
        let mut start = whole_second.checked_add(ONE_SECOND).ok()?;
        for _ in 0..MAX_FOLD_SKIPS {
            let dt = self.next_civil(start, limit)?;
            let zoned = tz.to_ambiguous_zoned(dt).compatible().ok()?;
            if zoned.timestamp() > after.timestamp() {
                return Some(zoned);
            }
            // Only in a fold: `dt` is later on the wall clock than `after` but its
            // first instant is not, because `after` is in the repeated hour.
            start = dt.checked_add(ONE_SECOND).ok()?;
        }
        None
    }

    /// Number of occurrences in (from, until], and the first up to `keep` of them;
    /// stops counting at `limit` (returns (count_capped, first_few, capped: bool)).
    pub fn occurrences(
        &self,
        from: &Zoned,
        until: &Zoned,
        keep: usize,
        limit: usize,
    ) -> Occurrences {
        let end = until.timestamp();
        let mut result = Occurrences {
            count: 0,
            first: Vec::new(),
            capped: false,
        };
        let mut current = from.clone();
        // At most `limit` occurrences are counted, plus one to learn whether there
        // are more.
        for _ in 0..=limit {
            let Some(next) = self.next_after(&current) else {
                break;
            };
            if next.timestamp() > end {
                break;
            }
            if result.count == limit {
                result.capped = true;
                break;
            }
            result.count += 1;
            if result.first.len() < keep {
                result.first.push(next.clone());
            }
            current = next;
        }
        result
    }

    /// The days of `year`-`month` that match, as a bitset (bit `d` for day `d`).
    fn day_mask(&self, year: i16, month: u32) -> Option<u64> {
        let first = Date::new(year, i8::try_from(month).ok()?, 1).ok()?;
        let days = u32::try_from(first.days_in_month()).ok()?;
        let first_weekday = u32::try_from(first.weekday().to_sunday_zero_offset()).ok()?;
        let mut by_weekday = 0u64;
        for day in 1..=days {
            if self.days_of_week & (1u64 << ((first_weekday + day - 1) % 7)) != 0 {
                by_weekday |= 1u64 << day;
            }
        }
        let valid = (u64::MAX >> (63 - days)) & !1;
        let by_day = self.days_of_month & valid;
        Some(if self.dom_restricted && self.dow_restricted {
            by_day | by_weekday
        } else {
            by_day & by_weekday
        })
    }

    /// The first civil date-time at or after `start` (whole seconds) that matches,
    /// if it is not after `limit`.
    fn next_civil(&self, start: DateTime, limit: DateTime) -> Option<DateTime> {
        let mut year = start.year();
        let mut month = u32::try_from(start.month()).ok()?;
        let mut day = u32::try_from(start.day()).ok()?;
        let mut hour = u32::try_from(start.hour()).ok()?;
        let mut minute = u32::try_from(start.minute()).ok()?;
        let mut second = u32::try_from(start.second()).ok()?;
        for _ in 0..MAX_SEARCH_STEPS {
            if year > limit.year() {
                return None;
            }
            match next_bit(self.months, month) {
                None => {
                    year = year.checked_add(1)?;
                    (month, day, hour, minute, second) = (1, 1, 0, 0, 0);
                    continue;
                }
                Some(m) if m != month => (month, day, hour, minute, second) = (m, 1, 0, 0, 0),
                Some(_) => {}
            }
            match next_bit(self.day_mask(year, month)?, day) {
                None => {
                    (month, day, hour, minute, second) = (month + 1, 1, 0, 0, 0);
                    continue;
                }
                Some(d) if d != day => (day, hour, minute, second) = (d, 0, 0, 0),
                Some(_) => {}
            }
            match next_bit(self.hours, hour) {
                None => {
                    (day, hour, minute, second) = (day + 1, 0, 0, 0);
                    continue;
                }
                Some(h) if h != hour => (hour, minute, second) = (h, 0, 0),
                Some(_) => {}
            }
            match next_bit(self.minutes, minute) {
                None => {
                    (hour, minute, second) = (hour + 1, 0, 0);
                    continue;
                }
                Some(m) if m != minute => (minute, second) = (m, 0),
                Some(_) => {}
            }
            match next_bit(self.seconds, second) {
                None => {
                    (minute, second) = (minute + 1, 0);
                    continue;
                }
                Some(s) => second = s,
            }
            let found = DateTime::new(
                year,
                i8::try_from(month).ok()?,
                i8::try_from(day).ok()?,
                i8::try_from(hour).ok()?,
                i8::try_from(minute).ok()?,
                i8::try_from(second).ok()?,
                0,
            )
            .ok()?;
            return (found <= limit).then_some(found);
        }
        None
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::TimeZone;

    /// Parses `expr` and checks the error's Display.
    fn check_error(expr: &str, expected: &str) {
        match CronSchedule::parse(expr) {
            Ok(schedule) => panic!("{expr:?} parsed as {schedule:?}, expected error {expected:?}"),
            Err(err) => assert_eq!(err.to_string(), expected, "error for {expr:?}"),
        }
    }

    fn parse(expr: &str) -> CronSchedule {
        match CronSchedule::parse(expr) {
            Ok(schedule) => schedule,
            Err(err) => panic!("{expr:?} failed to parse: {err}"),
        }
    }

    fn zoned(tz: &str, civil: &str) -> Zoned {
        let tz = match TimeZone::get(tz) {
            Ok(tz) => tz,
            Err(err) => panic!("time zone {tz:?}: {err}"),
        };
        let dt: DateTime = match civil.parse() {
            Ok(dt) => dt,
            Err(err) => panic!("datetime {civil:?}: {err}"),
        };
        match tz.to_ambiguous_zoned(dt).compatible() {
            Ok(z) => z,
            Err(err) => panic!("{civil:?} in {tz:?}: {err}"),
        }
    }

    /// Wall clock time plus offset, e.g. "2026-10-25T02:30:00+02".
    fn show(z: &Zoned) -> String {
        format!("{}{}", z.datetime(), z.offset())
    }

    /// The next `expected.len()` occurrences of `expr` after `start` (civil, in
    /// `tz`), each shown as wall clock time plus offset.
    fn check_next(expr: &str, tz: &str, start: &str, expected: &[&str]) {
        let schedule = parse(expr);
        let mut current = zoned(tz, start);
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            match schedule.next_after(&current) {
                Some(next) => {
                    assert!(next.timestamp() > current.timestamp(), "{expr:?} went back");
                    got.push(show(&next));
                    current = next;
                }
                None => break,
            }
        }
        assert_eq!(
            got, expected,
            "occurrences of {expr:?} from {start} in {tz}"
        );
    }

    #[test]
    fn parse_errors() {
        let hint =
            "expected 5 (minute hour day-of-month month day-of-week) or 6 with seconds first";
        let table: &[(&str, String)] = &[
            ("", format!("cron expression is empty; {hint}")),
            ("  \t\n ", format!("cron expression is empty; {hint}")),
            ("*", format!("found 1 field; {hint}")),
            ("* * * *", format!("found 4 fields; {hint}")),
            (
                "* * * * * * *",
                format!("found 7 fields; {hint}; a year field is not supported"),
            ),
            (
                "@reboot",
                "unknown macro \"@reboot\" (expected @yearly, @annually, @monthly, @weekly, \
                 @daily, @midnight or @hourly)"
                    .to_string(),
            ),
            (
                "@daily 5",
                "unexpected text after \"@daily\"; a macro stands alone".to_string(),
            ),
        ];
        for (expr, expected) in table {
            check_error(expr, expected);
        }
        let table: &[(&str, &str)] = &[
            // Out of range, one per field.
            (
                "60 * * * * *",
                "second field: value 60 is out of range 0-59",
            ),
            ("60 * * * *", "minute field: value 60 is out of range 0-59"),
            ("* 24 * * *", "hour field: value 24 is out of range 0-23"),
            (
                "* * 0 * *",
                "day-of-month field: value 0 is out of range 1-31",
            ),
            (
                "* * 32 * *",
                "day-of-month field: value 32 is out of range 1-31",
            ),
            ("* * * 0 *", "month field: value 0 is out of range 1-12"),
            ("* * * 13 *", "month field: value 13 is out of range 1-12"),
            (
                "* * * * 9",
                "day-of-week field: value 9 is out of range 0-7 (0 and 7 are Sunday)",
            ),
            (
                "* * * * 1-8",
                "day-of-week field: value 8 is out of range 0-7 (0 and 7 are Sunday)",
            ),
            (
                "99999999999 * * * *",
                "minute field: value 99999999999 is out of range 0-59",
            ),
            (
                "0 0 1,40 * *",
                "day-of-month field: value 40 is out of range 1-31",
            ),
            // Steps.
            (
                "*/0 * * * *",
                "minute field: step 0 in \"*/0\" is not allowed; the smallest step is 1",
            ),
            (
                "0 0 * * 1-5/0",
                "day-of-week field: step 0 in \"1-5/0\" is not allowed; the smallest step is 1",
            ),
            (
                "*/60 * * * *",
                "minute field: step 60 in \"*/60\" is out of range 1-59",
            ),
            (
                "0 */24 * * *",
                "hour field: step 24 in \"*/24\" is out of range 1-23",
            ),
            (
                "*/ * * * *",
                "minute field: missing step after \"/\" in \"*/\"",
            ),
            (
                "*/x * * * *",
                "minute field: step must be a number, found \"x\" in \"*/x\"",
            ),
            (
                "*/2/3 * * * *",
                "minute field: more than one \"/\" in \"*/2/3\"",
            ),
            (
                "/5 * * * *",
                "minute field: missing value before \"/\" in \"/5\"",
            ),
            // Ranges.
            (
                "5-2 * * * *",
                "minute field: range 5-2 runs backwards; write 2-5",
            ),
            (
                "0 0 * * Fri-Mon",
                "day-of-week field: range Fri-Mon runs backwards; write Mon-Fri",
            ),
            (
                "0 0 * Dec-Jan *",
                "month field: range Dec-Jan runs backwards; write Jan-Dec",
            ),
            (
                "0 0 20-10 * *",
                "day-of-month field: range 20-10 runs backwards; write 10-20",
            ),
            (
                "1-2-3 * * * *",
                "minute field: more than one \"-\" in \"1-2-3\"",
            ),
            ("-5 * * * *", "minute field: range \"-5\" has no start"),
            ("5- * * * *", "minute field: range \"5-\" has no end"),
            // Names.
            (
                "0 0 * * Fro",
                "day-of-week field: unknown day name \"Fro\" (expected Sun, Mon, Tue, Wed, Thu, \
                 Fri, Sat or 0-7)",
            ),
            (
                "0 0 * * Monday",
                "day-of-week field: unknown day name \"Monday\" (expected Sun, Mon, Tue, Wed, \
                 Thu, Fri, Sat or 0-7)",
            ),
            (
                "0 0 1 Jam *",
                "month field: unknown month name \"Jam\" (expected Jan, Feb, Mar, Apr, May, Jun, \
                 Jul, Aug, Sep, Oct, Nov, Dec or 1-12)",
            ),
            (
                "0 0 * * 5x",
                "day-of-week field: expected a number or a day name, found \"5x\"",
            ),
            (
                "0 0 * 1a *",
                "month field: expected a number or a month name, found \"1a\"",
            ),
            (
                "abc * * * *",
                "minute field: expected a number, found \"abc\"",
            ),
            (
                "0 Mon * * *",
                "hour field: expected a number, found \"Mon\"",
            ),
            (
                "0 0 L * *",
                "day-of-month field: expected a number, found \"L\"",
            ),
            (
                "*-5 * * * *",
                "minute field: expected a number, found \"*\"",
            ),
            // `?` only in the day fields.
            (
                "? * * * *",
                "minute field: \"?\" is only allowed in the day-of-month and day-of-week fields",
            ),
            // Lists.
            ("1,,2 * * * *", "minute field: empty item in list \"1,,2\""),
            (
                "0 0 1, * *",
                "day-of-month field: empty item in list \"1,\"",
            ),
            // Junk.
            (
                "5é * * * *",
                "minute field: unexpected character 'é' in \"5é\"",
            ),
            (
                "0 0 * * 🙂",
                "day-of-week field: unexpected character '🙂' in \"🙂\"",
            ),
            (
                "0 9.5 * * *",
                "hour field: unexpected character '.' in \"9.5\"",
            ),
            (
                "0 0 * * 1;2",
                "day-of-week field: unexpected character ';' in \"1;2\"",
            ),
            (
                "0 0 # * *",
                "day-of-month field: unexpected character '#' in \"#\"",
            ),
            (
                "0 0 * * \u{0}",
                "day-of-week field: unexpected character '\\0' in \"\\0\"",
            ),
        ];
        for (expr, expected) in table {
            check_error(expr, expected);
        }
    }

    #[test]
    fn error_fields() {
        let table: &[(&str, Option<CronField>)] = &[
            ("", None),
            ("* * * *", None),
            ("@nope", None),
            ("x * * * * *", Some(CronField::Second)),
            ("x * * * *", Some(CronField::Minute)),
            ("* x * * *", Some(CronField::Hour)),
            ("* * x * *", Some(CronField::DayOfMonth)),
            ("* * * x *", Some(CronField::Month)),
            ("* * * * x", Some(CronField::DayOfWeek)),
        ];
        for (expr, field) in table {
            match CronSchedule::parse(expr) {
                Ok(s) => panic!("{expr:?} parsed as {s:?}"),
                Err(err) => assert_eq!(err.field, *field, "field of error for {expr:?}"),
            }
        }
    }

    #[test]
    fn accepted_forms() {
        for expr in [
            "* * * * *",
            "0 0 ? * *",
            "0 0 * * ?",
            "0,15,30,45 0-23/2 1-31 Jan-DEC sun-sat",
            "5/15 * * * *",
            "0 0 * * Fri-Sun",
            "0 0 * * 5-0",
            "0 0 * * 7",
            "0 0 * * 7-7",
            "@YEARLY",
            "  @hourly  ",
            "0 0 30 2 *",
            "0\t0\n*  *   *",
            "59 59 23 31 12 7",
            "01 09 * * *",
        ] {
            parse(expr);
        }
    }

    #[test]
    fn accessors_and_display() {
        let s = parse("  30 */5 * * * *  ");
        assert!(s.has_seconds());
        assert_eq!(s.as_str(), "30 */5 * * * *");
        assert_eq!(s.to_string(), "30 */5 * * * *");
        let s = parse("@Daily");
        assert!(!s.has_seconds());
        assert_eq!(s.as_str(), "@Daily");
        assert!(!parse("*/15 * * * *").has_seconds());
        assert_eq!(CronField::DayOfMonth.to_string(), "day-of-month");
        assert_eq!(CronField::DayOfWeek.to_string(), "day-of-week");
        assert_eq!(CronField::Second.to_string(), "second");
        let err = CronError {
            field: None,
            message: "boom".to_string(),
        };
        assert_eq!(err.to_string(), "boom");
    }

    #[test]
    fn sunday_is_0_and_7() {
        let a = parse("0 0 * * 7");
        let b = parse("0 0 * * 0");
        let c = parse("0 0 * * Sun");
        assert_eq!(a.days_of_week, b.days_of_week);
        assert_eq!(a.days_of_week, c.days_of_week);
        assert_eq!(a.days_of_week, 1);
        assert_eq!(parse("0 0 * * 0-7").days_of_week, 0b111_1111);
        assert_eq!(parse("0 0 * * Fri-Sun").days_of_week, 0b110_0001);
        assert_eq!(parse("0 0 * * 5-0").days_of_week, 0b110_0001);
        // Saturday 2026-05-09 -> Sundays.
        let expected = ["2026-05-10T00:00:00+02", "2026-05-17T00:00:00+02"];
        check_next("0 0 * * 7", "Europe/Rome", "2026-05-09T12:00", &expected);
        check_next("0 0 * * 0", "Europe/Rome", "2026-05-09T12:00", &expected);
    }

    #[test]
    fn next_occurrences() {
        let table: &[(&str, &str, &str, &[&str])] = &[
            (
                "*/15 * * * *",
                "UTC",
                "2026-05-09T10:07:30",
                &[
                    "2026-05-09T10:15:00+00",
                    "2026-05-09T10:30:00+00",
                    "2026-05-09T10:45:00+00",
                    "2026-05-09T11:00:00+00",
                ],
            ),
            // Exactly on an occurrence: strictly after.
            (
                "*/15 * * * *",
                "UTC",
                "2026-05-09T10:15:00",
                &["2026-05-09T10:30:00+00"],
            ),
            // Sub-second after an occurrence.
            (
                "* * * * * *",
                "UTC",
                "2026-05-09T10:15:00.5",
                &["2026-05-09T10:15:01+00", "2026-05-09T10:15:02+00"],
            ),
            // Friday evening to Monday morning.
            (
                "0 9 * * Mon-Fri",
                "Europe/Rome",
                "2026-05-08T18:30",
                &[
                    "2026-05-11T09:00:00+02",
                    "2026-05-12T09:00:00+02",
                    "2026-05-13T09:00:00+02",
                    "2026-05-14T09:00:00+02",
                    "2026-05-15T09:00:00+02",
                    "2026-05-18T09:00:00+02",
                ],
            ),
            (
                "30 */5 * * * *",
                "UTC",
                "2026-05-09T10:04:59",
                &[
                    "2026-05-09T10:05:30+00",
                    "2026-05-09T10:10:30+00",
                    "2026-05-09T10:15:30+00",
                ],
            ),
            (
                "@daily",
                "America/New_York",
                "2026-12-31T23:59:59",
                &["2027-01-01T00:00:00-05", "2027-01-02T00:00:00-05"],
            ),
            (
                "@hourly",
                "UTC",
                "2026-05-09T23:00",
                &["2026-05-10T00:00:00+00", "2026-05-10T01:00:00+00"],
            ),
            (
                "@weekly",
                "UTC",
                "2026-05-09T23:00",
                &["2026-05-10T00:00:00+00", "2026-05-17T00:00:00+00"],
            ),
            (
                "@monthly",
                "UTC",
                "2026-05-09T23:00",
                &["2026-06-01T00:00:00+00", "2026-07-01T00:00:00+00"],
            ),
            (
                "@annually",
                "UTC",
                "2026-05-09T23:00",
                &["2027-01-01T00:00:00+00", "2028-01-01T00:00:00+00"],
            ),
            // Vixie: day-of-month OR day-of-week when both are restricted.
            // 2026-06-01 is a Monday; July 1 a Wednesday.
            (
                "0 0 1 * Mon",
                "UTC",
                "2026-06-20T00:00",
                &[
                    "2026-06-22T00:00:00+00",
                    "2026-06-29T00:00:00+00",
                    "2026-07-01T00:00:00+00",
                    "2026-07-06T00:00:00+00",
                ],
            ),
            // Only one of them restricted: AND (here day-of-week only).
            (
                "0 0 * * Mon",
                "UTC",
                "2026-06-28T00:00",
                &["2026-06-29T00:00:00+00", "2026-07-06T00:00:00+00"],
            ),
            (
                "0 0 1 * ?",
                "UTC",
                "2026-06-28T00:00",
                &["2026-07-01T00:00:00+00", "2026-08-01T00:00:00+00"],
            ),
            // `*/1` is unrestricted, `*/2` is restricted.
            (
                "0 0 13 * */1",
                "UTC",
                "2026-06-01T00:00",
                &["2026-06-13T00:00:00+00", "2026-07-13T00:00:00+00"],
            ),
            // Odd days of the month, or Saturdays (Jun 13 2026 is a Saturday).
            (
                "0 0 */2 * Sat",
                "UTC",
                "2026-06-10T00:00",
                &[
                    "2026-06-11T00:00:00+00",
                    "2026-06-13T00:00:00+00",
                    "2026-06-15T00:00:00+00",
                ],
            ),
            // Day 31 skips short months.
            (
                "0 12 31 * *",
                "UTC",
                "2026-01-31T12:00",
                &[
                    "2026-03-31T12:00:00+00",
                    "2026-05-31T12:00:00+00",
                    "2026-07-31T12:00:00+00",
                    "2026-08-31T12:00:00+00",
                ],
            ),
            // Feb 29 from a non-leap year, and across the 2100 non-leap year.
            (
                "0 0 29 2 *",
                "UTC",
                "2026-03-01T00:00",
                &["2028-02-29T00:00:00+00", "2032-02-29T00:00:00+00"],
            ),
            ("0 0 29 Feb *", "UTC", "2096-03-01T00:00", &[]),
            // Step from a start value, list and range steps.
            (
                "5/20 * * * *",
                "UTC",
                "2026-05-09T10:00",
                &[
                    "2026-05-09T10:05:00+00",
                    "2026-05-09T10:25:00+00",
                    "2026-05-09T10:45:00+00",
                    "2026-05-09T11:05:00+00",
                ],
            ),
            (
                "0 8-17/4,23 * * *",
                "UTC",
                "2026-05-09T00:00",
                &[
                    "2026-05-09T08:00:00+00",
                    "2026-05-09T12:00:00+00",
                    "2026-05-09T16:00:00+00",
                    "2026-05-09T23:00:00+00",
                    "2026-05-10T08:00:00+00",
                ],
            ),
            (
                "0 0 1 Jan,Jul *",
                "UTC",
                "2026-05-09T00:00",
                &["2026-07-01T00:00:00+00", "2027-01-01T00:00:00+00"],
            ),
            // Year rollover for seconds.
            (
                "59 59 23 31 12 *",
                "UTC",
                "2026-12-31T23:59:59",
                &["2027-12-31T23:59:59+00"],
            ),
            // Never fires.
            ("0 0 30 2 *", "UTC", "2026-01-01T00:00", &[]),
            ("0 0 31 4,6,9,11 *", "UTC", "2026-01-01T00:00", &[]),
        ];
        for (expr, tz, start, expected) in table {
            check_next(expr, tz, start, expected);
        }
    }

    #[test]
    fn dst_gap_and_fold() {
        let table: &[(&str, &str, &[&str])] = &[
            // 2026-03-29 02:00-03:00 does not exist in Rome: 02:30 maps to 03:30.
            (
                "30 2 * * *",
                "2026-03-28T12:00",
                &["2026-03-29T03:30:00+02", "2026-03-30T02:30:00+02"],
            ),
            // Gap times that land on other occurrences appear once.
            (
                "*/30 * * * *",
                "2026-03-29T01:00",
                &[
                    "2026-03-29T01:30:00+01",
                    "2026-03-29T03:00:00+02",
                    "2026-03-29T03:30:00+02",
                    "2026-03-29T04:00:00+02",
                ],
            ),
            (
                "0 0-5 * * *",
                "2026-03-29T00:30",
                &[
                    "2026-03-29T01:00:00+01",
                    "2026-03-29T03:00:00+02",
                    "2026-03-29T04:00:00+02",
                    "2026-03-29T05:00:00+02",
                    "2026-03-30T00:00:00+02",
                ],
            ),
            // 2026-10-25 02:00-03:00 happens twice in Rome: 02:30 runs once.
            (
                "30 2 * * *",
                "2026-10-24T12:00",
                &["2026-10-25T02:30:00+02", "2026-10-26T02:30:00+01"],
            ),
            (
                "*/30 * * * *",
                "2026-10-25T01:45",
                &[
                    "2026-10-25T02:00:00+02",
                    "2026-10-25T02:30:00+02",
                    "2026-10-25T03:00:00+01",
                    "2026-10-25T03:30:00+01",
                ],
            ),
        ];
        for (expr, start, expected) in table {
            check_next(expr, "Europe/Rome", start, expected);
        }

        // Starting inside the second pass of the fold: no time goes backwards and
        // the repeated wall-clock times are skipped.
        let first_pass = zoned("Europe/Rome", "2026-10-25T02:10");
        assert_eq!(show(&first_pass), "2026-10-25T02:10:00+02");
        let second_pass = match first_pass.checked_add(SignedDuration::from_hours(1)) {
            Ok(z) => z,
            Err(err) => panic!("{err}"),
        };
        assert_eq!(show(&second_pass), "2026-10-25T02:10:00+01");
        let next = |expr: &str, from: &Zoned| parse(expr).next_after(from).map(|z| show(&z));
        assert_eq!(
            next("*/15 * * * *", &second_pass).as_deref(),
            Some("2026-10-25T03:00:00+01")
        );
        assert_eq!(
            next("* * * * * *", &second_pass).as_deref(),
            Some("2026-10-25T03:00:00+01")
        );
        assert_eq!(
            next("*/15 * * * *", &first_pass).as_deref(),
            Some("2026-10-25T02:15:00+02")
        );
    }

    #[test]
    fn occurrences_count_and_cap() {
        let s = parse("*/30 * * * *");
        let from = zoned("UTC", "2026-05-09T00:00");
        let until = zoned("UTC", "2026-05-10T00:00");
        // (from, until]: 00:30 .. 24:00 is 48 occurrences.
        let occ = s.occurrences(&from, &until, 3, 1000);
        assert_eq!(occ.count, 48);
        assert!(!occ.capped);
        let first: Vec<String> = occ.first.iter().map(show).collect();
        assert_eq!(
            first,
            [
                "2026-05-09T00:30:00+00",
                "2026-05-09T01:00:00+00",
                "2026-05-09T01:30:00+00"
            ]
        );
        // Exactly at the limit is not capped; one below is.
        let occ = s.occurrences(&from, &until, 100, 48);
        assert_eq!((occ.count, occ.first.len(), occ.capped), (48, 48, false));
        let occ = s.occurrences(&from, &until, 100, 47);
        assert_eq!((occ.count, occ.first.len(), occ.capped), (47, 47, true));
        let occ = s.occurrences(&from, &until, 0, 10);
        assert_eq!((occ.count, occ.first.len(), occ.capped), (10, 0, true));
        let occ = s.occurrences(&from, &until, 5, 0);
        assert_eq!((occ.count, occ.first.len(), occ.capped), (0, 0, true));
        // Empty and reversed intervals.
        let occ = s.occurrences(&from, &from, 5, 10);
        assert_eq!((occ.count, occ.capped), (0, false));
        let occ = s.occurrences(&until, &from, 5, 10);
        assert_eq!((occ.count, occ.capped), (0, false));
        // Never-firing schedule.
        let occ = parse("0 0 30 2 *").occurrences(&from, &zoned("UTC", "2040-01-01T00:00"), 5, 10);
        assert_eq!((occ.count, occ.capped), (0, false));
        // Results are in `from`'s time zone, `until` may be in another.
        let rome = zoned("Europe/Rome", "2026-05-09T00:00");
        let occ = parse("0 * * * *").occurrences(&rome, &until, 1, 100);
        assert_eq!(occ.count, 24 + 2);
        assert_eq!(
            occ.first.iter().map(show).collect::<Vec<_>>(),
            ["2026-05-09T01:00:00+02"]
        );
    }

    #[test]
    fn occurrences_are_fast_and_long_counts_span_years() {
        let s = parse("*/30 * * * *");
        let from = zoned("Europe/Rome", "2026-01-01T00:00");
        let until = zoned("Europe/Rome", "2030-01-01T00:00");
        let occ = s.occurrences(&from, &until, 1000, 1000);
        assert_eq!((occ.count, occ.first.len(), occ.capped), (1000, 1000, true));
        for pair in occ.first.windows(2) {
            if let [a, b] = pair {
                assert!(a.timestamp() < b.timestamp());
            }
        }
        // A full year of */30 across both DST changes: 365 days * 48 wall-clock
        // times, minus the two in the spring gap (02:00 and 02:30 become 03:00 and
        // 03:30, which are occurrences anyway); in the fold each is used once.
        let until = zoned("Europe/Rome", "2027-01-01T00:00");
        let occ = s.occurrences(&from, &until, 0, 1_000_000);
        assert_eq!(occ.count, 365 * 48 - 2);
        // Daily over 20 years (gaps between occurrences are far below 5 years).
        let occ = parse("@daily").occurrences(
            &zoned("UTC", "2020-01-01T00:00"),
            &zoned("UTC", "2040-01-01T00:00"),
            0,
            usize::MAX,
        );
        assert_eq!(occ.count, 7305);
        assert!(!occ.capped);
        // Leap days over 20 years: 2024 .. 2036 (gaps of 4 years).
        let occ = parse("0 0 29 2 *").occurrences(
            &zoned("UTC", "2020-03-01T00:00"),
            &zoned("UTC", "2040-01-01T00:00"),
            10,
            100,
        );
        assert_eq!(occ.count, 4);
    }

    #[test]
    fn extreme_dates_do_not_panic() {
        // The last representable instant is 9999-12-30T22:00:00Z.
        let s = parse("* * * * * *");
        let last = zoned("UTC", "9999-12-30T22:00:00");
        assert!(s.next_after(&last).is_none());
        let nearly = zoned("UTC", "9999-12-30T21:59:59");
        assert_eq!(
            s.next_after(&nearly).map(|z| show(&z)).as_deref(),
            Some("9999-12-30T22:00:00+00")
        );
        assert!(parse("0 0 1 1 *").next_after(&nearly).is_none());
        assert!(parse("0 0 31 12 *").next_after(&nearly).is_none());
        let tokyo = zoned("Asia/Tokyo", "9999-12-31T07:00");
        assert!(parse("* * * * *").next_after(&tokyo).is_none());
        let first = zoned("UTC", "-009999-01-03T00:00");
        assert_eq!(
            parse("@monthly")
                .next_after(&first)
                .map(|z| show(&z))
                .as_deref(),
            Some("-009999-02-01T00:00:00+00")
        );
        let occ = parse("@yearly").occurrences(&first, &last, 2, usize::MAX);
        assert_eq!((occ.count, occ.capped), (9999 + 9999, false));
    }

    /// A small deterministic xorshift generator for the randomized tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            let i = (self.next() % items.len() as u64) as usize;
            items.get(i).copied().unwrap_or_default()
        }
    }

    #[test]
    fn random_text_never_panics() {
        let pieces = [
            "0",
            "1",
            "5",
            "7",
            "9",
            "12",
            "31",
            "60",
            "*",
            "?",
            "/",
            "-",
            ",",
            " ",
            "\t",
            "@",
            "Mon",
            "jan",
            "x",
            "é",
            "🙂",
            "\u{0}",
            "daily",
            "99999999999999999999",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let from = zoned("Europe/Rome", "2026-03-29T01:59:59");
        for _ in 0..20_000 {
            let len = rng.next() % 16;
            let expr: String = (0..len).map(|_| rng.pick(&pieces)).collect();
            if let Ok(schedule) = CronSchedule::parse(&expr)
                && let Some(next) = schedule.next_after(&from)
            {
                assert!(next.timestamp() > from.timestamp(), "{expr:?}");
            }
        }
    }

    /// Whether `dt` matches, checked directly against the bitsets.
    fn naive_matches(s: &CronSchedule, dt: DateTime) -> bool {
        let bit = |mask: u64, v: i8| mask & (1u64 << v) != 0;
        let dom = bit(s.days_of_month, dt.day());
        let dow = bit(s.days_of_week, dt.weekday().to_sunday_zero_offset());
        let day = if s.dom_restricted && s.dow_restricted {
            dom || dow
        } else {
            dom && dow
        };
        day && bit(s.seconds, dt.second())
            && bit(s.minutes, dt.minute())
            && bit(s.hours, dt.hour())
            && bit(s.months, dt.month())
    }

    #[test]
    fn search_agrees_with_naive_scan() {
        let minutes = ["*", "0", "*/7", "5-10", "59", "0,30", "15/20", "*/1"];
        let hours = ["*", "0", "23", "*/5", "9-17", "3,4"];
        let doms = ["*", "?", "1", "31", "*/2", "10-12", "29", "L"];
        let months = ["*", "2", "Feb-Mar", "*/4", "12"];
        let dows = ["*", "?", "0", "7", "Mon-Fri", "Sat", "5-0", "*/3"];
        let mut rng = Rng(12345);
        let mut checked = 0;
        for _ in 0..400 {
            let expr = format!(
                "{} {} {} {} {}",
                rng.pick(&minutes),
                rng.pick(&hours),
                rng.pick(&doms),
                rng.pick(&months),
                rng.pick(&dows)
            );
            let Ok(schedule) = CronSchedule::parse(&expr) else {
                continue;
            };
            let day = rng.next() % 365;
            let start = zoned("UTC", "2027-01-01T00:00").checked_add(SignedDuration::from_secs(
                (day * 86_400 + rng.next() % 86_400) as i64,
            ));
            let Ok(start) = start else {
                panic!("start");
            };
            // Impossible schedules (day 31 or 29 of February only) have none.
            let next = schedule.next_after(&start).map(|z| z.datetime());
            if let Some(next) = next {
                assert!(naive_matches(&schedule, next), "{expr:?} -> {next}");
            }
            // No matching minute was skipped, when the gap is short enough to scan.
            let mut t = start.datetime();
            let mut scanned = 0;
            while scanned < 5_000 {
                t = match t.checked_add(SignedDuration::from_mins(1)) {
                    Ok(t) => t,
                    Err(err) => panic!("{err}"),
                };
                let t =
                    match DateTime::new(t.year(), t.month(), t.day(), t.hour(), t.minute(), 0, 0) {
                        Ok(t) => t,
                        Err(err) => panic!("{err}"),
                    };
                if next.is_some_and(|next| t >= next) {
                    break;
                }
                assert!(
                    !naive_matches(&schedule, t),
                    "{expr:?} from {start}: skipped {t}"
                );
                scanned += 1;
            }
            checked += 1;
        }
        assert!(checked > 200, "only {checked} schedules checked");
    }
}
