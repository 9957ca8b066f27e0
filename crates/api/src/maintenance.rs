//! Maintenance windows (`spec.maintenanceWindows`): five-field cron expressions (minute hour
//! day-of-month month day-of-week, UTC) naming the minutes in which an automatic change may start,
//! as Strimzi's `maintenanceTimeWindows` do (Strimzi takes Quartz's six or seven fields with
//! seconds; here the classic five, seconds are not needed for windows). Pure: the caller gives
//! the civil time.
//!
//! Each field: `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a comma list of those.
//! Day of week 0–7 (0 and 7 are Sunday) or `SUN`–`SAT`; month 1–12 or `JAN`–`DEC`. As in cron,
//! when both day fields are restricted a day matches if either does.

/// A minute in UTC, by its civil fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Minute {
    /// 0–59.
    pub minute: u8,
    /// 0–23.
    pub hour: u8,
    /// 1–31.
    pub day: u8,
    /// 1–12.
    pub month: u8,
    /// 0 = Sunday … 6 = Saturday.
    pub weekday: u8,
}

/// One parsed window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
}

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Window {
    /// Parse `expr`; the error names the field and what is accepted.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "{expr:?} has {} fields; give five: minute hour day-of-month month day-of-week (UTC), e.g. \"* 1-3 * * SAT,SUN\"",
                fields.len()
            ));
        }
        let minutes = bits(fields[0], "minute", 0, 59, &[])?;
        let hours = bits(fields[1], "hour", 0, 23, &[])?;
        let days = bits(fields[2], "day-of-month", 1, 31, &[])?;
        let months = bits(fields[3], "month", 1, 12, &MONTHS)?;
        let mut weekdays = bits(fields[4], "day-of-week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1; // 7 is Sunday too
        }
        Ok(Window {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            // As in Vixie cron: a day field starting with `*` (`*`, `*/2`) does not restrict.
            days_restricted: !fields[2].starts_with('*'),
            weekdays_restricted: !fields[4].starts_with('*'),
        })
    }

    /// Whether a change may start during minute `m`.
    pub fn contains(&self, m: Minute) -> bool {
        let has = |set: u64, v: u8| set & (1u64 << v) != 0;
        let day = has(self.days.into(), m.day);
        let weekday = has(self.weekdays.into(), m.weekday);
        let day_ok = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            _ => day && weekday,
        };
        has(self.minutes, m.minute) && has(self.hours.into(), m.hour) && has(self.months.into(), m.month) && day_ok
    }
}

/// The values a field names, as bits.
fn bits(field: &str, name: &str, min: u8, max: u8, names: &[&str]) -> Result<u64, String> {
    let bad = |what: &str| {
        let words =
            if names.is_empty() { String::new() } else { format!(" or {}-{}", names[0], names[names.len() - 1]) };
        format!(
            "{name} field {field:?}: {what}; use *, a value {min}-{max}{words}, a range a-b, a step */n or a list a,b"
        )
    };
    let value = |s: &str| -> Result<u8, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u8 + if name == "month" { 1 } else { 0 });
        }
        match s.parse::<u8>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(bad(&format!("{s:?} is not a value"))),
        }
    };
    let mut out = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                (r, s.parse::<u8>().ok().filter(|s| *s > 0).ok_or_else(|| bad("the step is not a number above 0"))?)
            }
            None => (part, 1),
        };
        let (lo, hi) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if part.contains('/') => (value(r)?, max),
                None => (value(r)?, value(r)?),
            },
        };
        if lo > hi {
            return Err(bad(&format!("the range {range:?} runs backwards")));
        }
        let mut v = lo;
        while v <= hi {
            out |= 1 << v;
            v = match v.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
    }
    Ok(out)
}

/// Whether minute `m` is in any of `windows` (no window: always). Unparseable windows never
/// match (validation rejects them first).
pub fn in_window(windows: &[String], m: Minute) -> bool {
    windows.is_empty() || windows.iter().filter_map(|w| Window::parse(w).ok()).any(|w| w.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(weekday: u8, hour: u8, minute: u8) -> Minute {
        Minute { minute, hour, day: 15, month: 6, weekday }
    }

    #[test]
    fn fields_ranges_steps_lists_and_names() {
        let w = Window::parse("*/15 1-3 * * SAT,sun").unwrap();
        assert!(w.contains(at(6, 1, 0)) && w.contains(at(0, 3, 45)));
        assert!(!w.contains(at(6, 1, 5)), "not on a 15-minute step");
        assert!(!w.contains(at(1, 2, 0)), "Monday");
        assert!(!w.contains(at(6, 4, 0)), "after the hours");
        assert!(Window::parse("0 0 * * 7").unwrap().contains(at(0, 0, 0)), "7 is Sunday");
        assert!(Window::parse("* * * JUN *").unwrap().contains(at(3, 9, 9)));
        assert!(!Window::parse("* * * 7-12 *").unwrap().contains(at(3, 9, 9)));
        // Both day fields restricted: either matches (cron).
        let either = Window::parse("* * 1 * MON").unwrap();
        assert!(either.contains(at(1, 0, 0)) && !either.contains(at(2, 0, 0)));
        assert!(either.contains(Minute { day: 1, ..at(2, 0, 0) }));
        // A day field starting with `*` restricts nothing, so the other one decides alone.
        let every_other = Window::parse("0 2 */2 * SUN").unwrap();
        assert!(every_other.contains(Minute { minute: 0, hour: 2, day: 15, month: 6, weekday: 0 }));
        assert!(!every_other.contains(Minute { minute: 0, hour: 2, day: 15, month: 6, weekday: 1 }), "not Monday 15th");
        assert!(Window::parse("5/1 * * * *").unwrap().contains(at(3, 9, 30)), "a/n runs from a to the end");
    }

    #[test]
    fn errors_name_the_field_and_the_syntax() {
        let e = Window::parse("* * *").unwrap_err();
        assert!(e.contains("has 3 fields") && e.contains("five"), "{e}");
        let e = Window::parse("* 25 * * *").unwrap_err();
        assert!(e.starts_with("hour field \"25\"") && e.contains("0-23"), "{e}");
        let e = Window::parse("* * * * FUNDAY").unwrap_err();
        assert!(e.contains("day-of-week") && e.contains("SUN-SAT"), "{e}");
        assert!(Window::parse("5-1 * * * *").unwrap_err().contains("backwards"));
        assert!(Window::parse("*/0 * * * *").unwrap_err().contains("step"));
    }

    #[test]
    fn no_window_means_any_time() {
        assert!(in_window(&[], at(0, 0, 0)));
        assert!(!in_window(&["0 0 1 1 *".to_string()], at(0, 0, 0)));
    }
}
