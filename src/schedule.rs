//! Schedules: a six-field cron expression (seconds first) read in an IANA time zone, and the
//! slots it defines. A slot is one instant the schedule fires; the daemon backs up each slot
//! once, records it, and counts slots missed while no instance ran. Pure: the clock is an
//! argument, so tests pin behaviour across daylight-saving changes without waiting.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use crate::config::{CatchUp, ScheduleConfig};

/// A parsed `[[schedule]]` entry.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub cron: Cron,
    pub timezone: Tz,
    pub tables: Vec<String>,
    /// The label its backups carry.
    pub label: String,
    pub catch_up: CatchUp,
}

impl Schedule {
    /// Parses the cron expression (exactly six fields, seconds first) and the time zone
    /// (an IANA name; UTC when absent). The error names the schedule and says what to write.
    pub fn parse(config: &ScheduleConfig) -> Result<Schedule, String> {
        let name = &config.name;
        let parser = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(&config.cron).map_err(|e| {
            format!(
                "[[schedule]] {name:?}: cron {:?} is not a six-field expression with seconds first ({e}); for example \"0 0 3 * * *\" is 03:00:00 every day",
                config.cron
            )
        })?;
        let timezone: Tz = match config.timezone.as_deref() {
            None => Tz::UTC,
            Some(zone) => zone.parse().map_err(|_| {
                format!(
                    "[[schedule]] {name:?}: timezone {zone:?} is not an IANA time zone name (like \"Europe/Berlin\" or \"UTC\")"
                )
            })?,
        };
        Ok(Schedule {
            name: name.clone(),
            cron,
            timezone,
            tables: config.tables.clone(),
            label: config
                .label
                .clone()
                .unwrap_or_else(|| format!("schedule {name}")),
            catch_up: config.catch_up,
        })
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.timezone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|n| n.with_timezone(&Utc))
    }

    /// The latest slot at or before `t`: after a long outage the slot to catch up on, found
    /// without walking through every slot in between.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.timezone);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|n| n.with_timezone(&Utc))
    }

    /// Every slot in `(from, to]`, oldest first, at most `limit` of them (a daemon that was
    /// down for a year must not list every second of it).
    pub fn slots_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from;
        while out.len() < limit {
            match self.next_after(t) {
                Some(n) if n <= to => {
                    out.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        out
    }
}

/// `2026-03-29T03:30:00+02:00`: a slot as its time zone sees it, for messages.
pub fn local(slot: DateTime<Utc>, zone: Tz) -> String {
    zone.from_utc_datetime(&slot.naive_utc()).to_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, zone: Option<&str>) -> Result<Schedule, String> {
        Schedule::parse(&ScheduleConfig {
            name: "nightly".into(),
            cron: cron.into(),
            timezone: zone.map(Into::into),
            tables: Vec::new(),
            label: None,
            catch_up: CatchUp::Latest,
        })
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn bad_crons_and_zones_name_the_schedule() {
        for (cron, zone, text) in [
            ("0 3 * * *", None, "not a six-field expression"),
            ("0 0 25 * * *", None, "not a six-field expression"),
            ("0 0 3 * * * 2026", None, "not a six-field expression"),
            ("0 0 3 * * *", Some("Mars/Olympus"), "not an IANA time zone"),
        ] {
            let e = schedule(cron, zone).unwrap_err();
            assert!(e.contains("\"nightly\"") && e.contains(text), "{e}");
        }
        assert!(schedule("*/2 * * * * *", Some("Europe/Berlin")).is_ok());
    }

    #[test]
    fn slots_follow_the_time_zone_once_a_day_across_daylight_saving() {
        let s = schedule("0 30 2 * * *", Some("Europe/Berlin")).unwrap();
        // Spring forward (2026-03-29, 02:00 -> 03:00): 02:30 does not exist that day, and the
        // slot still fires once. Fall back (2026-10-25, 03:00 -> 02:00): 02:30 happens twice,
        // and the slot fires once.
        for (from, to) in [
            ("2026-03-27T12:00:00Z", "2026-03-31T12:00:00Z"),
            ("2026-10-23T12:00:00Z", "2026-10-27T12:00:00Z"),
        ] {
            let slots = s.slots_between(utc(from), utc(to), 100);
            let days: Vec<String> = slots
                .iter()
                .map(|t| local(*t, s.timezone)[..10].to_string())
                .collect();
            let mut unique = days.clone();
            unique.dedup();
            assert_eq!(days.len(), 4, "{slots:?}");
            assert_eq!(unique, days, "a day fired twice: {slots:?}");
        }
        // Ordinary days: 02:30 Berlin is 01:30 UTC in winter, 00:30 UTC in summer.
        assert_eq!(
            s.next_after(utc("2026-01-10T00:00:00Z")),
            Some(utc("2026-01-10T01:30:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-07-10T00:00:00Z")),
            Some(utc("2026-07-10T00:30:00Z"))
        );
    }

    #[test]
    fn the_latest_slot_is_found_without_walking_a_long_outage() {
        let s = schedule("0 0 3 * * *", Some("Europe/Berlin")).unwrap();
        // 03:00 Berlin on 30 March 2026 is 01:00 UTC (summer time began the day before).
        assert_eq!(
            s.latest_at_or_before(utc("2026-03-30T12:00:00Z")),
            Some(utc("2026-03-30T01:00:00Z"))
        );
        // Inclusive: a slot exactly now is the latest.
        assert_eq!(
            s.latest_at_or_before(utc("2026-03-30T01:00:00Z")),
            Some(utc("2026-03-30T01:00:00Z"))
        );
        let every_second = schedule("* * * * * *", None).unwrap();
        let now = utc("2027-01-01T00:00:00Z");
        assert_eq!(every_second.latest_at_or_before(now), Some(now));
    }

    #[test]
    fn slots_are_strictly_after_and_bounded() {
        let s = schedule("*/2 * * * * *", None).unwrap();
        let t = utc("2026-11-25T12:00:00Z");
        assert_eq!(s.next_after(t), Some(utc("2026-11-25T12:00:02Z")));
        let slots = s.slots_between(t, utc("2026-11-25T12:00:10Z"), 100);
        assert_eq!(slots.len(), 5);
        assert_eq!(s.slots_between(t, utc("2027-11-25T12:00:00Z"), 3).len(), 3);
    }
}
