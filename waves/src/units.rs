//! Quantities written with units: sizes, durations, bandwidths and change rates.
//!
//! Every parser returns a message that says what was expected, so the caller can put it
//! at the field's place. A bare number is refused: `100` could mean GB or GiB, minutes or
//! hours, and guessing is how migrations miss their windows.

use std::fmt;

use serde::Serialize;

const KIB: f64 = 1024.0;

/// Bytes. Binary (KiB, MiB, GiB, TiB) and decimal (KB, MB, GB, TB) units.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    let factor = match unit {
        "B" => 1.0,
        "KiB" => KIB,
        "MiB" => KIB * KIB,
        "GiB" => KIB * KIB * KIB,
        "TiB" => KIB * KIB * KIB * KIB,
        "PiB" => KIB * KIB * KIB * KIB * KIB,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "PB" => 1e15,
        "" => {
            return Err(format!(
                "size `{text}` has no unit: write it like 100GiB or 1.5TiB"
            ));
        }
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}`: use B, KiB, MiB, GiB, TiB, PiB, KB, MB, GB, TB or PB"
            ));
        }
    };
    to_integer(number * factor, text)
}

/// Bits per second: `100Mbit/s`, `1Gbit/s`, `1Gbps`, `50MB/s`, `20MiB/s`.
pub fn parse_bandwidth(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    let factor = match unit {
        "bit/s" | "bps" => 1.0,
        "Kbit/s" | "kbit/s" | "Kbps" | "kbps" => 1e3,
        "Mbit/s" | "Mbps" => 1e6,
        "Gbit/s" | "Gbps" => 1e9,
        "B/s" => 8.0,
        "KB/s" | "kB/s" => 8e3,
        "MB/s" => 8e6,
        "GB/s" => 8e9,
        "KiB/s" => 8.0 * KIB,
        "MiB/s" => 8.0 * KIB * KIB,
        "GiB/s" => 8.0 * KIB * KIB * KIB,
        "" => {
            return Err(format!(
                "bandwidth `{text}` has no unit: write it like 500Mbit/s or 1Gbit/s"
            ));
        }
        other => {
            return Err(format!(
                "unknown bandwidth unit `{other}` in `{text}`: use Kbit/s, Mbit/s, Gbit/s, MB/s or MiB/s"
            ));
        }
    };
    let bits = to_integer(number * factor, text)?;
    if bits == 0 {
        return Err(format!(
            "bandwidth `{text}` is zero: replication would never finish"
        ));
    }
    Ok(bits)
}

/// How fast a server's disks change: an amount per period, or a share of the used bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeRate {
    BytesPerDay(f64),
    PercentPerDay(f64),
}

impl ChangeRate {
    pub fn bytes_per_second(self, used_bytes: u64) -> f64 {
        let per_day = match self {
            ChangeRate::BytesPerDay(b) => b,
            ChangeRate::PercentPerDay(p) => used_bytes as f64 * p / 100.0,
        };
        per_day / 86_400.0
    }
}

/// `5GiB/day`, `200MiB/h`, `2%/day`.
pub fn parse_change_rate(text: &str) -> Result<ChangeRate, String> {
    let trimmed = text.trim();
    let Some((amount, period)) = trimmed.rsplit_once('/') else {
        return Err(format!(
            "change rate `{text}` has no period: write it like 5GiB/day, 200MiB/h or 2%/day"
        ));
    };
    let per_day = match period.trim() {
        "day" | "d" => 1.0,
        "h" | "hour" => 24.0,
        "week" | "w" => 1.0 / 7.0,
        other => {
            return Err(format!(
                "unknown period `{other}` in change rate `{text}`: use /day, /h or /week"
            ));
        }
    };
    let amount = amount.trim();
    if let Some(percent) = amount.strip_suffix('%') {
        let value: f64 = percent
            .trim()
            .parse()
            .map_err(|_| format!("`{percent}` in change rate `{text}` is not a number"))?;
        if !(0.0..=100.0 * 24.0).contains(&(value * per_day)) || !value.is_finite() {
            return Err(format!(
                "change rate `{text}` is out of range: from 0% up to 100% an hour (100%/h, 2400%/day)"
            ));
        }
        return Ok(ChangeRate::PercentPerDay(value * per_day));
    }
    let bytes = parse_size(amount).map_err(|e| format!("in change rate `{text}`: {e}"))?;
    Ok(ChangeRate::BytesPerDay(bytes as f64 * per_day))
}

/// A length of time. Days and weeks are calendar days in the wave's time zone (a week
/// across a change of daylight saving time keeps its wall-clock hour); smaller units are
/// exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
pub struct Dur {
    pub days: u32,
    pub seconds: u64,
}

impl Dur {
    pub const ZERO: Dur = Dur {
        days: 0,
        seconds: 0,
    };

    pub fn from_seconds(seconds: u64) -> Dur {
        Dur { days: 0, seconds }
    }

    pub fn from_days(days: u32) -> Dur {
        Dur { days, seconds: 0 }
    }

    /// Seconds, counting a day as 24 hours: for estimates and timeouts, not for calendars.
    pub fn approx_seconds(self) -> u64 {
        u64::from(self.days) * 86_400 + self.seconds
    }

    pub fn is_zero(self) -> bool {
        self.days == 0 && self.seconds == 0
    }

    /// The calendar span for arithmetic on zoned times.
    pub fn to_span(self) -> jiff::Span {
        let seconds = i64::try_from(self.seconds).unwrap_or(i64::MAX);
        jiff::Span::new()
            .try_days(i64::from(self.days))
            .and_then(|s| s.try_seconds(seconds))
            .unwrap_or_default()
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0s");
        }
        let mut out = String::new();
        let (weeks, days) = (self.days / 7, self.days % 7);
        if weeks > 0 && days == 0 && self.seconds == 0 {
            return write!(f, "{weeks}w");
        }
        if self.days > 0 {
            out.push_str(&format!("{}d", self.days));
        }
        let (h, m, s) = (
            self.seconds / 3600,
            self.seconds % 3600 / 60,
            self.seconds % 60,
        );
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if m > 0 {
            out.push_str(&format!("{m}m"));
        }
        if s > 0 {
            out.push_str(&format!("{s}s"));
        }
        f.write_str(&out)
    }
}

/// Longest duration anyone needs in a wave file: about three years.
const MAX_DURATION_DAYS: u64 = 1100;

/// `90s`, `30m`, `6h`, `1h30m`, `2d`, `1w`. Units: s, m, h, d, w.
pub fn parse_duration(text: &str) -> Result<Dur, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration: write it like 30m, 6h or 1w".to_owned());
    }
    let mut days: u64 = 0;
    let mut seconds: u64 = 0;
    let mut rest = trimmed;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "duration `{text}` is not a number followed by a unit: write it like 30m, 6h, 1h30m or 1w"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration `{text}` is too large"))?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        let scaled = |factor: u64| number.checked_mul(factor);
        let added = match unit {
            "s" | "sec" => scaled(1).map(|v| (0, v)),
            "m" | "min" => scaled(60).map(|v| (0, v)),
            "h" => scaled(3600).map(|v| (0, v)),
            "d" => Some((number, 0)),
            "w" => scaled(7).map(|v| (v, 0)),
            "" => {
                return Err(format!(
                    "duration `{text}` has no unit: write it like 30m, 6h or 1w (units s, m, h, d, w)"
                ));
            }
            other if other.starts_with(['.', ',']) => {
                return Err(format!(
                    "duration `{text}` has a fraction: write whole units, like 1h30m for an hour and a half"
                ));
            }
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{text}`: use s, m, h, d or w"
                ));
            }
        };
        let Some((d, s)) = added else {
            return Err(format!("duration `{text}` is too large"));
        };
        days = days.saturating_add(d);
        seconds = seconds.saturating_add(s);
        if days.saturating_add(seconds / 86_400) > MAX_DURATION_DAYS {
            return Err(format!(
                "duration `{text}` is longer than {MAX_DURATION_DAYS} days"
            ));
        }
    }
    Ok(Dur {
        days: u32::try_from(days).unwrap_or(u32::MAX),
        seconds,
    })
}

/// Splits `1.5 TiB` into 1.5 and "TiB".
fn split_number(text: &str) -> Result<(f64, &str), String> {
    let trimmed = text.trim();
    let end = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(trimmed.len());
    let number = &trimmed[..end];
    if number.is_empty() {
        return Err(format!("`{text}` does not start with a number"));
    }
    let value: f64 = number
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{number}` in `{text}` is not a number"))?;
    Ok((value, trimmed[end..].trim()))
}

fn to_integer(value: f64, text: &str) -> Result<u64, String> {
    if !value.is_finite() || value < 0.0 || value >= u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(value.round() as u64)
}

/// Bytes for people: 1.5 TiB, 200 GiB, 12 MiB.
pub fn format_bytes(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 || unit == 0 {
        format!("{value:.0} {}", units[unit])
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Bits per second for people: 940 Mbit/s, 1.2 Gbit/s.
pub fn format_bandwidth(bits_per_second: f64) -> String {
    let units = ["bit/s", "Kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"];
    let mut value = bits_per_second;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if value >= 100.0 || unit == 0 {
        format!("{value:.0} {}", units[unit])
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Seconds for people: 3d 4h, 5h 20m, 12m, 40s.
pub fn format_seconds(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "never".to_owned();
    }
    let total = seconds.max(0.0).round() as u64;
    let (d, h, m, s) = (
        total / 86_400,
        total % 86_400 / 3600,
        total % 3600 / 60,
        total % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100GiB"), Ok(100 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("1.5 TiB"), Ok(1_649_267_441_664));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(
            parse_size("100"),
            Err("size `100` has no unit: write it like 100GiB or 1.5TiB".to_owned())
        );
        assert!(parse_size("10 GiBs").is_err_and(|e| e.contains("unknown size unit `GiBs`")));
        assert!(parse_size("GiB").is_err_and(|e| e.contains("does not start with a number")));
        assert!(parse_size("1e400GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Dur::from_seconds(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Dur::from_seconds(5400)));
        assert_eq!(parse_duration("1w"), Ok(Dur::from_days(7)));
        assert_eq!(
            parse_duration("2d 6h").map(|d| d.approx_seconds()),
            Ok(194_400)
        );
        assert!(parse_duration("6").is_err_and(|e| e.contains("has no unit")));
        assert!(
            parse_duration("6 hours").is_err_and(|e| e.contains("unknown duration unit `hours`"))
        );
        assert!(
            parse_duration("1.5h").is_err_and(|e| e
                == "duration `1.5h` has a fraction: write whole units, like 1h30m for an hour and a half")
        );
        assert!(parse_duration("h").is_err_and(|e| e.contains("not a number")));
        assert!(parse_duration("99999999999999999999999s").is_err_and(|e| e.contains("too large")));
        assert!(parse_duration("5000d").is_err_and(|e| e.contains("longer than")));
        assert_eq!(Dur::from_seconds(5400).to_string(), "1h30m");
        assert_eq!(Dur::from_days(14).to_string(), "2w");
    }

    #[test]
    fn bandwidths_and_change_rates() {
        assert_eq!(parse_bandwidth("1Gbit/s"), Ok(1_000_000_000));
        assert_eq!(parse_bandwidth("50 MB/s"), Ok(400_000_000));
        assert!(parse_bandwidth("0Mbit/s").is_err_and(|e| e.contains("zero")));
        assert_eq!(
            parse_change_rate("2%/day"),
            Ok(ChangeRate::PercentPerDay(2.0))
        );
        assert_eq!(
            parse_change_rate("1GiB/h"),
            Ok(ChangeRate::BytesPerDay(24.0 * 1024.0 * 1024.0 * 1024.0))
        );
        assert!(parse_change_rate("5GiB").is_err_and(|e| e.contains("no period")));
        assert!(parse_change_rate("3000%/day").is_err_and(|e| e.contains("up to 100% an hour")));
        assert!(parse_change_rate("5GiB/month").is_err_and(|e| e.contains("unknown period")));
    }
}
