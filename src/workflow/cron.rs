//! Cron schedules of workflows: which minutes a cron workflow's runs start at.
//!
//! The five fields of a classic crontab line, in UTC: minute (0-59), hour
//! (0-23), day of month (1-31), month (1-12 or `jan`-`dec`) and day of week
//! (0-6 from Sunday, 7 also Sunday, or `sun`-`sat`). Each field is `*`, a
//! value, a range `a-b`, any of these with a step (`*/15`, `8-18/2`), or a
//! comma-separated list of them. When both day fields are restricted, a day
//! matching either is taken (as cron and Temporal do). Also `@yearly`
//! (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`,
//! and `@every <duration>` (`@every 90s`, `@every 2h`): every multiple of the
//! duration since the Unix epoch.
//!
//! ```
//! use retrace::types::Timestamp;
//! use retrace::workflow::CronSchedule;
//!
//! let schedule = CronSchedule::parse("30 9 * * mon-fri").unwrap();
//! // 2026-12-05 is a Saturday: the next slot is Monday 09:30 UTC.
//! let saturday = Timestamp(1_796_428_800_000);
//! assert_eq!(schedule.next_after(saturday), Some(Timestamp(1_796_635_800_000)));
//! assert!(CronSchedule::parse("61 * * * *").is_err());
//! ```

use crate::types::Timestamp;

/// Bytes of a cron expression, at most.
pub const CRON_SCHEDULE_BYTES_MAX: usize = 256;
/// How far ahead the next slot is looked for: a schedule with no slot in
/// this window (`0 0 30 2 *`) is refused.
pub const CRON_HORIZON_DAYS_MAX: u64 = 5 * 366;

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// A cron expression that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron schedule {expression:?}: {reason}")]
pub struct CronError {
    /// The expression given.
    pub expression: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A parsed cron schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CronSchedule {
    /// The minutes whose fields all match.
    Fields(Fields),
    /// Every multiple of this many milliseconds since the Unix epoch.
    Every { interval_ms: u64 },
}

/// The allowed values of each field, as bit sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Both day fields are restricted: a day matching either is taken.
    days_either: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DAY_OF_WEEK: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl CronSchedule {
    /// Parses a cron expression (see the module's documentation).
    pub fn parse(expression: &str) -> Result<CronSchedule, CronError> {
        let fail = |reason: String| CronError {
            expression: expression.chars().take(CRON_SCHEDULE_BYTES_MAX).collect(),
            reason,
        };
        if expression.len() > CRON_SCHEDULE_BYTES_MAX {
            let bytes = expression.len();
            return Err(fail(format!(
                "{bytes} bytes, more than the limit of {CRON_SCHEDULE_BYTES_MAX}"
            )));
        }
        let text = expression.trim().to_ascii_lowercase();
        let schedule = match text.as_str() {
            "@yearly" | "@annually" => parse_fields("0 0 1 1 *"),
            "@monthly" => parse_fields("0 0 1 * *"),
            "@weekly" => parse_fields("0 0 * * 0"),
            "@daily" | "@midnight" => parse_fields("0 0 * * *"),
            "@hourly" => parse_fields("0 * * * *"),
            _ => match text.strip_prefix("@every ") {
                Some(duration) => parse_every(duration.trim()),
                None if text.starts_with('@') => Err(format!("unknown macro {text:?}")),
                None => parse_fields(&text),
            },
        }
        .map_err(fail)?;
        if schedule.next_after(Timestamp(0)).is_none() {
            return Err(fail("no time ever matches it".to_string()));
        }
        Ok(schedule)
    }

    /// The first slot strictly after `after`, within
    /// [`CRON_HORIZON_DAYS_MAX`] days; `None` if there is none.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let next = match self {
            CronSchedule::Every { interval_ms } => {
                let slots = after.as_millis() / interval_ms + 1;
                Some(Timestamp(slots.checked_mul(*interval_ms)?))
            }
            CronSchedule::Fields(fields) => fields.next_after(after),
        };
        debug_assert!(next.is_none_or(|next| next > after));
        next
    }
}

fn parse_every(duration: &str) -> Result<CronSchedule, String> {
    let interval =
        humantime::parse_duration(duration).map_err(|e| format!("@every {duration:?}: {e}"))?;
    let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    if interval_ms < 1_000 {
        return Err(format!(
            "@every {duration}: the interval must be at least 1s"
        ));
    }
    Ok(CronSchedule::Every { interval_ms })
}

fn parse_fields(text: &str) -> Result<CronSchedule, String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [minute, hour, day_of_month, month, day_of_week] = parts[..] else {
        return Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week) or a macro, found {}",
            parts.len()
        ));
    };
    let mut days_of_week = parse_field(&DAY_OF_WEEK, day_of_week)?;
    if days_of_week & (1 << 7) != 0 {
        days_of_week = (days_of_week | 1) & !(1 << 7); // 7 is Sunday too
    }
    Ok(CronSchedule::Fields(Fields {
        minutes: parse_field(&MINUTE, minute)?,
        hours: parse_field(&HOUR, hour)?,
        days_of_month: parse_field(&DAY_OF_MONTH, day_of_month)?,
        months: parse_field(&MONTH, month)?,
        days_of_week,
        days_either: !day_of_month.starts_with('*') && !day_of_week.starts_with('*'),
    }))
}

/// The bit set of the values one field allows.
fn parse_field(field: &Field, text: &str) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s >= 1)
                    .ok_or_else(|| format!("{} field: bad step in {item:?}", field.name))?;
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = match range {
            "*" => (field.min, field.max),
            _ => match range.split_once('-') {
                Some((a, b)) => (value(field, a)?, value(field, b)?),
                None if step > 1 => (value(field, range)?, field.max),
                None => {
                    let v = value(field, range)?;
                    (v, v)
                }
            },
        };
        if low > high {
            return Err(format!(
                "{} field: range {range:?} runs backwards",
                field.name
            ));
        }
        for v in (low..=high).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

fn value(field: &Field, text: &str) -> Result<u32, String> {
    let named = field.names.iter().position(|n| *n == text);
    let v = match named {
        Some(index) => index as u32 + field.min.min(1),
        None => text
            .parse()
            .map_err(|_| format!("{} field: {text:?} is not a number", field.name))?,
    };
    if !(field.min..=field.max).contains(&v) {
        return Err(format!(
            "{} field: {v} is outside {}-{}",
            field.name, field.min, field.max
        ));
    }
    Ok(v)
}

impl Fields {
    fn day_matches(&self, day: u64) -> bool {
        let (_, month, day_of_month) = civil_from_days(day);
        if self.months & (1 << month) == 0 {
            return false;
        }
        // 1970-01-01 was a Thursday (4).
        let day_of_week = (day + 4) % 7;
        let by_month = self.days_of_month & (1 << day_of_month) != 0;
        let by_week = self.days_of_week & (1 << day_of_week) != 0;
        if self.days_either {
            by_month || by_week
        } else {
            by_month && by_week
        }
    }

    fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let first_minute = after.as_millis() / MINUTE_MS + 1;
        let first_day = first_minute * MINUTE_MS / DAY_MS;
        for day in first_day..first_day + CRON_HORIZON_DAYS_MAX {
            if !self.day_matches(day) {
                continue;
            }
            for hour in 0..24 {
                if self.hours & (1 << hour) == 0 {
                    continue;
                }
                for minute in 0..60 {
                    let at = day * DAY_MS + hour * HOUR_MS + minute * MINUTE_MS;
                    if self.minutes & (1 << minute) != 0 && at >= first_minute * MINUTE_MS {
                        return Some(Timestamp(at));
                    }
                }
            }
        }
        None
    }
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (i64, u64, u64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T00:00:00Z, a Tuesday.
    const DEC_1: u64 = 1_796_083_200_000;

    fn next(expression: &str, after_ms: u64) -> u64 {
        CronSchedule::parse(expression)
            .unwrap()
            .next_after(Timestamp(after_ms))
            .unwrap()
            .as_millis()
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(DEC_1 / DAY_MS), (2026, 12, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn every_minute_is_the_next_whole_minute() {
        assert_eq!(next("* * * * *", DEC_1), DEC_1 + MINUTE_MS);
        assert_eq!(next("* * * * *", DEC_1 + 1), DEC_1 + MINUTE_MS);
    }

    #[test]
    fn steps_ranges_and_lists_pick_their_minutes() {
        assert_eq!(
            next("*/15 * * * *", DEC_1 + 16 * MINUTE_MS),
            DEC_1 + 30 * MINUTE_MS
        );
        assert_eq!(
            next("5,50 * * * *", DEC_1 + 6 * MINUTE_MS),
            DEC_1 + 50 * MINUTE_MS
        );
        assert_eq!(
            next("0 8-18/2 * * *", DEC_1 + 9 * HOUR_MS),
            DEC_1 + 10 * HOUR_MS
        );
    }

    #[test]
    fn days_of_week_and_month_names_are_understood() {
        // Tuesday the 1st: the next Friday is the 4th.
        assert_eq!(next("0 0 * * fri", DEC_1), DEC_1 + 3 * DAY_MS);
        assert_eq!(next("0 0 1 jan *", DEC_1), DEC_1 + 31 * DAY_MS);
        assert_eq!(next("0 0 * * 7", DEC_1), next("0 0 * * sun", DEC_1));
    }

    #[test]
    fn restricted_day_fields_take_a_day_matching_either() {
        // The 15th, or any Friday: Friday the 4th comes first.
        assert_eq!(next("0 0 15 * fri", DEC_1), DEC_1 + 3 * DAY_MS);
    }

    #[test]
    fn macros_and_every_intervals_parse() {
        assert_eq!(next("@hourly", DEC_1), DEC_1 + HOUR_MS);
        assert_eq!(next("@daily", DEC_1), DEC_1 + DAY_MS);
        assert_eq!(next("@every 90s", 100_000), 180_000);
        assert_eq!(next("@every 2s", 4_000), 6_000);
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let reason = |e: &str| CronSchedule::parse(e).unwrap_err().reason;
        assert!(reason("* * *").contains("expected 5 fields"));
        assert!(reason("61 * * * *").contains("minute field: 61 is outside 0-59"));
        assert!(reason("* * * * bogus").contains("not a number"));
        assert!(reason("5-1 * * * *").contains("runs backwards"));
        assert!(reason("*/0 * * * *").contains("bad step"));
        assert!(reason("0 0 30 2 *").contains("no time ever matches"));
        assert!(reason("@every 10ms").contains("at least 1s"));
        assert!(reason("@sometimes").contains("unknown macro"));
        assert!(reason(&"* ".repeat(200)).contains("more than the limit"));
    }
}
