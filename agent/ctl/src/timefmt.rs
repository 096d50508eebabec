//! Times on the command line and on screen: parsing `--since`/`--until`
//! (RFC 3339, a date, or relative like `10m`), printing instants in the local
//! offset, and humanising durations.

use std::sync::OnceLock;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, Duration, OffsetDateTime, UtcOffset};

/// A `--since`/`--until` value that is neither RFC 3339, a date nor a
/// relative time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "Bad time {0:?}: expected RFC 3339 (2025-05-01T12:00:00Z), a date (2025-05-01), \
     a relative time before now (30s, 10m, 2h, 1d, 1w, 1h30m) or \"now\""
)]
pub struct TimeError(String);

/// Parses a point in time given on the command line, relative to `now`:
///
/// - `now`;
/// - a relative time before now: one or more `<number><unit>` with unit `s`,
///   `m`, `h`, `d` or `w` (`10m`, `1h30m`), optionally followed by ` ago`;
/// - RFC 3339 (`2025-05-01T12:00:00Z`, `2025-05-01 12:00:00+02:00`);
/// - a date (`2025-05-01`), meaning its midnight UTC.
pub fn parse_time(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, TimeError> {
    let err = || TimeError(s.to_string());
    let t = s.trim();
    if t == "now" {
        return Ok(now);
    }
    if t.starts_with(|c: char| c.is_ascii_digit()) && t.len() == 10 && t.as_bytes()[4] == b'-' {
        let date = Date::parse(t, format_description!("[year]-[month]-[day]")).map_err(|_| err())?;
        return Ok(date.midnight().assume_utc());
    }
    if let Some(ago) = parse_relative(t) {
        return now.checked_sub(ago).ok_or_else(err);
    }
    // RFC 3339 allows a space instead of the `T`; the parser does not.
    let mut fixed = t.to_string();
    if fixed.len() > 10 && fixed.as_bytes()[10] == b' ' {
        fixed.replace_range(10..11, "T");
    }
    OffsetDateTime::parse(&fixed, &Rfc3339).map_err(|_| err())
}

/// `10m`, `1h30m`, `2d ago` (a leading `-` is accepted too) as a duration.
fn parse_relative(s: &str) -> Option<Duration> {
    let s = s.strip_suffix(" ago").unwrap_or(s).trim();
    let s = s.strip_prefix('-').unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "s" | "sec" => Duration::SECOND,
            "m" | "min" => Duration::MINUTE,
            "h" => Duration::HOUR,
            "d" => Duration::DAY,
            "w" => Duration::WEEK,
            _ => return None,
        };
        total = total.checked_add(unit.checked_mul(i32::try_from(n).ok()?)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// Parses a `--since`/`--until` argument against the current time (a clap
/// value parser).
pub fn parse_time_arg(s: &str) -> Result<OffsetDateTime, TimeError> {
    parse_time(s, OffsetDateTime::now_utc())
}

/// Microseconds since the Unix epoch, clamped at 0.
pub fn to_unix_us(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn to_unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

static LOCAL_OFFSET: OnceLock<UtcOffset> = OnceLock::new();

/// Records the local UTC offset for printing times. Call it before any thread
/// is started: the `time` crate refuses to read the offset in a
/// multi-threaded process (reading the TZ environment is not thread-safe).
pub fn init_local_offset() {
    let _ = LOCAL_OFFSET.set(UtcOffset::current_local_offset().unwrap_or(UtcOffset::UTC));
}

fn local(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(LOCAL_OFFSET.get().copied().unwrap_or(UtcOffset::UTC))
}

/// An instant as journalctl's `short-iso` prints it, in the local offset:
/// `2025-05-01T12:00:00+02:00`.
pub fn format_instant(t: OffsetDateTime) -> String {
    let fmt = format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second][offset_hour sign:mandatory]:[offset_minute]"
    );
    local(t).format(fmt).unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// [`format_instant`] of microseconds since the Unix epoch.
pub fn format_unix_us(us: u64) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000) {
        Ok(t) => format_instant(t),
        Err(_) => format!("@{us}us"),
    }
}

/// [`format_instant`] of milliseconds since the Unix epoch.
pub fn format_unix_ms(ms: i64) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => format_instant(t),
        Err(_) => format!("@{ms}ms"),
    }
}

/// A duration in words, largest units first, at most `parts` non-zero
/// components: `humanize_secs(90061, 4)` is `1d 1h 1m 1s`,
/// `humanize_secs(90061, 2)` is `1d 1h`.
pub fn humanize_secs(secs: u64, parts: usize) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut rest = secs;
    let mut out = Vec::new();
    for (size, name) in units {
        let n = rest / size;
        rest %= size;
        if n > 0 && out.len() < parts {
            out.push(format!("{n}{name}"));
        }
    }
    if out.is_empty() {
        "0s".to_string()
    } else {
        out.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-05-01 12:00:00 UTC);

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(parse_time("10m", NOW).unwrap(), datetime!(2025-05-01 11:50:00 UTC));
        assert_eq!(parse_time("2h", NOW).unwrap(), datetime!(2025-05-01 10:00:00 UTC));
        assert_eq!(parse_time("1d", NOW).unwrap(), datetime!(2025-04-30 12:00:00 UTC));
        assert_eq!(parse_time("1w", NOW).unwrap(), datetime!(2025-04-24 12:00:00 UTC));
        assert_eq!(parse_time("30s", NOW).unwrap(), datetime!(2025-05-01 11:59:30 UTC));
        assert_eq!(parse_time("1h30m", NOW).unwrap(), datetime!(2025-05-01 10:30:00 UTC));
        assert_eq!(parse_time("5min ago", NOW).unwrap(), datetime!(2025-05-01 11:55:00 UTC));
        assert_eq!(parse_time("-1h", NOW).unwrap(), datetime!(2025-05-01 11:00:00 UTC));
        assert_eq!(parse_time("now", NOW).unwrap(), NOW);
    }

    #[test]
    fn rfc3339_and_dates_parse() {
        assert_eq!(
            parse_time("2025-04-01T08:30:00Z", NOW).unwrap(),
            datetime!(2025-04-01 08:30:00 UTC)
        );
        assert_eq!(
            parse_time("2025-04-01T08:30:00+02:00", NOW).unwrap(),
            datetime!(2025-04-01 06:30:00 UTC)
        );
        assert_eq!(
            parse_time("2025-04-01 08:30:00.5Z", NOW).unwrap(),
            datetime!(2025-04-01 08:30:00.5 UTC)
        );
        assert_eq!(
            parse_time("2025-04-01", NOW).unwrap(),
            datetime!(2025-04-01 00:00:00 UTC)
        );
    }

    #[test]
    fn bad_times_are_refused_with_the_accepted_forms() {
        for bad in [
            "",
            "10",
            "m",
            "10x",
            "yesterday",
            "2025-13-01",
            "2025-04-01T08:30:00",
            "1h 30m",
            "99999999999d",
        ] {
            let e = parse_time(bad, NOW).unwrap_err().to_string();
            assert!(e.contains("RFC 3339") && e.contains("10m"), "{bad}: {e}");
        }
    }

    #[test]
    fn unix_conversions_round_trip() {
        let t = datetime!(2025-05-01 12:00:00.123456 UTC);
        assert_eq!(to_unix_us(t), 1_746_100_800_123_456);
        assert_eq!(to_unix_ms(t), 1_746_100_800_123);
        assert_eq!(to_unix_us(datetime!(1960-01-01 00:00:00 UTC)), 0);
    }

    #[test]
    fn instants_print_like_short_iso() {
        // No offset recorded in tests: UTC.
        assert_eq!(format_unix_ms(1_746_100_800_123), "2025-05-01T12:00:00+00:00");
        assert_eq!(format_unix_us(1_746_100_800_000_000), "2025-05-01T12:00:00+00:00");
    }

    #[test]
    fn durations_read_largest_first() {
        assert_eq!(humanize_secs(0, 4), "0s");
        assert_eq!(humanize_secs(59, 4), "59s");
        assert_eq!(humanize_secs(90_061, 4), "1d 1h 1m 1s");
        assert_eq!(humanize_secs(90_061, 2), "1d 1h");
        assert_eq!(humanize_secs(7_205, 4), "2h 5s");
    }
}
