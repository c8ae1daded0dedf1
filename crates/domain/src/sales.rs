//! Revenue in tumbling windows of event time.
//!
//! The `analytics` group adds each confirmed order to the window of every
//! [`Granularity`] its confirmation's envelope time falls in: windows are
//! half-open (`[start, start + width)`), aligned to UTC (a day window starts
//! at midnight UTC), and do not overlap. A query names windows by their
//! start, so `from..to` reads every window that starts in it.
//!
//! Windows are rows in the database, not state held in memory until they
//! close, so an event that arrives late still lands in its own window: the
//! revenue of a window is exact whenever its events arrive. What lateness
//! changes is only what a reader saw before: [`is_late`] tells which events
//! changed a window already past its grace, and those are counted
//! (`orderflow_stream_late_events_total`), never dropped.

use serde::{Deserialize, Serialize};

use crate::{Timestamp, ValidationError};

/// The width of a tumbling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Minute,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 2] = [Granularity::Minute, Granularity::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Day => "day",
        }
    }

    pub fn parse(value: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|g| g.as_str() == value)
            .ok_or_else(|| {
                ValidationError::new(
                    "granularity",
                    format!("must be `minute` or `day`, not `{value}`"),
                )
            })
    }

    pub fn width(self) -> chrono::Duration {
        match self {
            Granularity::Minute => chrono::Duration::minutes(1),
            Granularity::Day => chrono::Duration::days(1),
        }
    }

    /// The most windows one read may span: a week of minutes, ten years of
    /// days. A wider range is refused rather than read slowly.
    pub fn max_windows(self) -> i32 {
        match self {
            Granularity::Minute => 7 * 24 * 60,
            Granularity::Day => 3_660,
        }
    }

    /// The start of the window `at` falls in.
    pub fn window_start(self, at: Timestamp) -> Timestamp {
        chrono::DateTime::from_timestamp_millis(self.window_start_millis(at.timestamp_millis()))
            .expect("a window start within chrono's range")
    }

    /// [`Self::window_start`] in milliseconds since the Unix epoch, for a
    /// caller that keeps time as integers (the view counts of every
    /// product read).
    pub fn window_start_millis(self, millis: i64) -> i64 {
        let width = self.width().num_milliseconds();
        millis.div_euclid(width) * width
    }
}

impl std::fmt::Display for Granularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked range of windows to read: `from` before `to`, no more than
/// [`Granularity::max_windows`] apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRange {
    pub granularity: Granularity,
    pub from: Timestamp,
    pub to: Timestamp,
}

impl WindowRange {
    pub fn new(
        granularity: Granularity,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Self, ValidationError> {
        if from >= to {
            return Err(ValidationError::new(
                "from",
                format!("must be before `to` ({from} is not before {to})"),
            ));
        }
        let most = granularity.width() * granularity.max_windows();
        if to - from > most {
            return Err(ValidationError::new(
                "to",
                format!(
                    "a range of {granularity} windows may span at most {} windows ({} days)",
                    granularity.max_windows(),
                    most.num_days()
                ),
            ));
        }
        Ok(Self {
            granularity,
            from,
            to,
        })
    }

    /// The `count` windows up to now's: the default range of a read.
    pub fn latest(granularity: Granularity, count: i32, now: Timestamp) -> Self {
        let to = granularity.window_start(now) + granularity.width();
        Self {
            granularity,
            from: to - granularity.width() * count,
            to,
        }
    }
}

/// Whether an event at `at` comes past the grace of its narrowest window:
/// that window ended (`start + width`) more than `grace` before the
/// `watermark` (the newest event time seen), so a reader may have taken
/// the window as final.
pub fn is_late(at: Timestamp, watermark: Timestamp, grace: chrono::Duration) -> bool {
    let narrowest = Granularity::Minute;
    narrowest.window_start(at) + narrowest.width() + grace < watermark
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn windows_are_half_open_and_aligned_to_utc() {
        use Granularity::{Day, Minute};
        for (granularity, at_, start, why) in [
            (
                Minute,
                "2026-03-01T10:15:59.999Z",
                "2026-03-01T10:15:00Z",
                "the last instant",
            ),
            (
                Minute,
                "2026-03-01T10:16:00Z",
                "2026-03-01T10:16:00Z",
                "the end is the next start",
            ),
            (
                Day,
                "2026-03-01T23:59:59.999Z",
                "2026-03-01T00:00:00Z",
                "midnight UTC",
            ),
            (
                Day,
                "2026-03-02T00:00:00Z",
                "2026-03-02T00:00:00Z",
                "the next day",
            ),
            (
                Day,
                "1969-12-31T12:00:00Z",
                "1969-12-31T00:00:00Z",
                "before the epoch too",
            ),
        ] {
            assert_eq!(granularity.window_start(at(at_)), at(start), "{why}");
        }
    }

    #[test]
    fn granularities_parse_by_name_only() {
        assert_eq!(Granularity::parse("minute"), Ok(Granularity::Minute));
        assert_eq!(Granularity::parse("day"), Ok(Granularity::Day));
        let error = Granularity::parse("hour").unwrap_err();
        assert_eq!(error.field, "granularity");
        assert!(error.message.contains("`hour`"), "{error}");
    }

    #[test]
    fn a_range_is_ordered_and_bounded() {
        let from = at("2026-03-01T00:00:00Z");
        let week = chrono::Duration::days(7);
        assert!(WindowRange::new(Granularity::Minute, from, from + week).is_ok());
        let error = WindowRange::new(
            Granularity::Minute,
            from,
            from + week + chrono::Duration::minutes(1),
        )
        .unwrap_err();
        assert_eq!(error.field, "to");
        assert!(WindowRange::new(Granularity::Day, from, from + week * 2).is_ok());
        assert_eq!(
            WindowRange::new(Granularity::Day, from, from)
                .unwrap_err()
                .field,
            "from"
        );
        let latest = WindowRange::latest(Granularity::Minute, 60, at("2026-03-01T10:15:30Z"));
        assert_eq!(
            (latest.from, latest.to),
            (at("2026-03-01T09:16:00Z"), at("2026-03-01T10:16:00Z")),
            "the current window and the 59 before it"
        );
    }

    #[test]
    fn an_event_is_late_once_its_minute_plus_the_grace_lies_behind_the_watermark() {
        let grace = chrono::Duration::seconds(30);
        let watermark = at("2026-03-01T10:20:00Z");
        // Its window [10:19:00, 10:20:00) ended just now: within the grace.
        assert!(!is_late(at("2026-03-01T10:19:10Z"), watermark, grace));
        // [10:19:00 - 1 min) ended 10:19:00 + 30 s = 10:19:30 < 10:20: late.
        assert!(is_late(at("2026-03-01T10:18:59Z"), watermark, grace));
        // Exactly at the grace's end is not late yet.
        assert!(!is_late(
            at("2026-03-01T10:18:59Z"),
            at("2026-03-01T10:19:30Z"),
            grace
        ));
        // Events newer than the watermark (out of order, ahead) never are.
        assert!(!is_late(at("2026-03-01T10:25:00Z"), watermark, grace));
    }
}
