//! UTC calendar arithmetic for spend-cap periods, from unix seconds, without a date library.
//!
//! Caps are per UTC calendar day and calendar month, so all we need is "which day" and "which
//! month" a unix second falls in. Days are plain division; months need the civil date, from
//! Howard Hinnant's `civil_from_days` (proleptic Gregorian, exact for every i64 day we can
//! reach from a u64 of seconds). See <https://howardhinnant.github.io/date_algorithms.html>.

/// Seconds in a UTC day (unix time has no leap seconds).
pub const SECS_PER_DAY: u64 = 86_400;

/// A UTC calendar date.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CivilDate {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
}

/// Days since 1970-01-01 for a unix second.
#[inline]
pub fn day_index(unix_secs: u64) -> u64 {
    unix_secs / SECS_PER_DAY
}

/// The UTC calendar date of a day index (days since 1970-01-01).
pub fn civil_from_days(days: i64) -> CivilDate {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each 400-year era's years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    CivilDate { year, month, day }
}

/// Days since 1970-01-01 of a UTC calendar date (the inverse of [`civil_from_days`]); used by
/// tests and by callers that need a period's start.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A month index that increases by one per calendar month (year * 12 + month - 1), for a unix
/// second. Two instants are in the same UTC month iff their indexes are equal.
#[inline]
pub fn month_index(unix_secs: u64) -> i64 {
    let date = civil_from_days(day_index(unix_secs) as i64);
    date.year * 12 + (date.month as i64 - 1)
}

/// Unix seconds of the UTC midnight that starts the day after `unix_secs`' day.
pub fn next_day_start(unix_secs: u64) -> u64 {
    (day_index(unix_secs) + 1) * SECS_PER_DAY
}

/// Day index (days since 1970-01-01) of the first day of `unix_secs`' UTC month.
pub fn month_start_day(unix_secs: u64) -> u64 {
    let date = civil_from_days(day_index(unix_secs) as i64);
    days_from_civil(date.year, date.month, 1).max(0) as u64
}

/// Unix seconds of the UTC midnight that starts the month after `unix_secs`' month.
pub fn next_month_start(unix_secs: u64) -> u64 {
    let date = civil_from_days(day_index(unix_secs) as i64);
    let (y, m) = if date.month == 12 {
        (date.year + 1, 1)
    } else {
        (date.year, date.month + 1)
    };
    days_from_civil(y, m, 1) as u64 * SECS_PER_DAY
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i64, m: u32, d: u32) -> CivilDate {
        CivilDate {
            year: y,
            month: m,
            day: d,
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), date(1970, 1, 1));
        assert_eq!(civil_from_days(-1), date(1969, 12, 31));
        // 2000 is a leap year (divisible by 400), 1900 and 2100 are not.
        assert_eq!(
            civil_from_days(days_from_civil(2000, 2, 29)),
            date(2000, 2, 29)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2100, 2, 28) + 1),
            date(2100, 3, 1)
        );
        // 2024-02-29 00:00:00 UTC = 1709164800.
        assert_eq!(
            civil_from_days(day_index(1_709_164_800) as i64),
            date(2024, 2, 29)
        );
        // 2025-01-01 00:00:00 UTC = 1735689600; one second earlier is the last of 2024.
        assert_eq!(
            civil_from_days(day_index(1_735_689_599) as i64),
            date(2024, 12, 31)
        );
        assert_eq!(
            civil_from_days(day_index(1_735_689_600) as i64),
            date(2025, 1, 1)
        );
    }

    #[test]
    fn round_trip_and_monotone_over_centuries() {
        let mut prev = civil_from_days(-1);
        for days in 0..(400 * 366) {
            let d = civil_from_days(days);
            assert_eq!(days_from_civil(d.year, d.month, d.day), days);
            assert!(d > prev, "{d:?} after {prev:?}");
            assert!((1..=12).contains(&d.month) && (1..=31).contains(&d.day));
            prev = d;
        }
    }

    #[test]
    fn month_index_and_period_starts() {
        let dec31_last = 1_735_689_599; // 2024-12-31 23:59:59
        let jan1 = 1_735_689_600; // 2025-01-01 00:00:00
        assert_eq!(month_index(jan1), month_index(dec31_last) + 1);
        assert_eq!(month_index(jan1), 2025 * 12);
        assert_eq!(next_day_start(dec31_last), jan1);
        assert_eq!(next_month_start(dec31_last), jan1);
        assert_eq!(
            next_month_start(jan1),
            days_from_civil(2025, 2, 1) as u64 * SECS_PER_DAY
        );
        // A day that is not the month's last: the month does not change at midnight.
        let feb10 = days_from_civil(2025, 2, 10) as u64 * SECS_PER_DAY;
        assert_eq!(month_index(feb10 - 1), month_index(feb10));
        assert_eq!(month_start_day(feb10 + 5), days_from_civil(2025, 2, 1) as u64);
        assert_eq!(month_start_day(jan1), days_from_civil(2025, 1, 1) as u64);
        assert_eq!(
            next_month_start(feb10),
            days_from_civil(2025, 3, 1) as u64 * SECS_PER_DAY
        );
    }
}
