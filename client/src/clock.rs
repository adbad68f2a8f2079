//! Wall-clock time as kv stores it: nanoseconds since the Unix epoch (an
//! entry's `mtime_ns`), seconds for coarser stamps, and UTC calendar time
//! from either, without a date crate. Every program of the workspace reads
//! the clock here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch; 0 for a clock set before it.
pub fn now_ns() -> i64 {
    ns_of(SystemTime::now())
}

/// Now, in whole seconds since the Unix epoch; 0 for a clock set before it.
pub fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `t` in nanoseconds since the Unix epoch; 0 for a time before it.
pub fn ns_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// The time `ns` nanoseconds after the Unix epoch; the epoch for a
/// negative `ns`.
pub fn system_time(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

/// A UTC time broken into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Year.
    pub year: i64,
    /// Month, 1 to 12.
    pub month: u32,
    /// Day of the month, 1 to 31.
    pub day: u32,
    /// Hour.
    pub hour: u32,
    /// Minute.
    pub minute: u32,
    /// Second.
    pub second: u32,
    /// Day of the week, 0 = Sunday.
    pub weekday: u32,
}

impl Utc {
    /// Breaks down `ns` nanoseconds since the epoch.
    pub fn from_ns(ns: i64) -> Utc {
        let secs = ns.div_euclid(1_000_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        // Civil-from-days (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Utc {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (sod / 3600) as u32,
            minute: (sod % 3600 / 60) as u32,
            second: (sod % 60) as u32,
            weekday: (days + 4).rem_euclid(7) as u32,
        }
    }

    /// RFC 3339: `2026-11-22T02:47:43Z`.
    pub fn rfc3339(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates() {
        assert_eq!(Utc::from_ns(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Utc::from_ns(0).weekday, 4);
        assert_eq!(Utc::from_ns(951_782_400_000_000_000).rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(Utc::from_ns(-1_000_000_000).rfc3339(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn nanoseconds_and_system_time_convert_both_ways() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        assert_eq!(ns_of(t), 1_700_000_000_123_456_789);
        assert_eq!(system_time(ns_of(t)), t);
        assert_eq!(system_time(-5), UNIX_EPOCH);
        assert_eq!(ns_of(UNIX_EPOCH - Duration::from_secs(1)), 0);
        let (ns, s) = (now_ns(), now_s());
        assert!(ns > 0 && (ns / 1_000_000_000).abs_diff(s as i64) <= 1);
    }
}
