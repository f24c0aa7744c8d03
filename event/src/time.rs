//! Times: events carry nanoseconds (wall clock since the epoch, and CLOCK_MONOTONIC as the
//! kernel stamps them) and become text only on output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// CLOCK_MONOTONIC now, in ns: the clock the kernel stamps records with
/// (`bpf_ktime_get_ns`). Through rustix, whose call cannot fail for this clock (the vDSO
/// answers; the kernel only refuses unknown clock ids and bad pointers, neither possible here).
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // tv_sec and tv_nsec of CLOCK_MONOTONIC are never negative.
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// CLOCK_BOOTTIME now, in ns: CLOCK_MONOTONIC plus the time spent suspended (the clock of
/// `/proc/<pid>/stat` start times). Infallible for the same reason as [`monotonic_ns`].
pub fn boottime_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    // tv_sec and tv_nsec of CLOCK_BOOTTIME are never negative.
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Wall-clock time as ns since the epoch (negative before 1970), saturating at the ends of
/// i64 (year 1677 and 2262).
pub fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// Now, as ns since the epoch.
pub fn now_ns() -> i64 {
    system_time_ns(SystemTime::now())
}

/// ns since the epoch as a `SystemTime`.
pub fn ns_system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// ns since the epoch in the RFC 3339 form every output uses: UTC, nine decimals
/// (`2026-11-22T05:01:02.118000000Z`). Total: a time before 1970 (a clock set back, a damaged
/// store row) is formatted too, where humantime would panic.
pub fn format_rfc3339(ns: i64) -> String {
    if ns >= 0 {
        return humantime::format_rfc3339_nanos(ns_system_time(ns)).to_string();
    }
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// RFC 3339 text (as [`format_rfc3339`] writes it, or with fewer decimals) to ns since the
/// epoch.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    humantime::parse_rfc3339(text).ok().map(system_time_ns)
}

/// Maps CLOCK_MONOTONIC (the kernel's record times) to the wall clock, as it stood when the
/// clock was made. Events keep both: the monotonic time orders them exactly across clock
/// steps, the wall time is what people read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// wall-clock ns minus monotonic ns.
    offset_ns: i128,
}

impl Clock {
    /// The offset between the two clocks now.
    pub fn now() -> Clock {
        let mono = i128::from(monotonic_ns());
        let wall = i128::from(now_ns());
        Clock {
            offset_ns: wall - mono,
        }
    }

    /// The process's one clock: its offset is read once, at the first call, and every part of
    /// the daemon (event times, the watch loop's watermark, loss records, the detections'
    /// windows and the alert rules' timers) converts with it. Times compared with each other
    /// then never mix two offsets: an NTP step of the wall clock while the daemon runs does
    /// not close an alert group early or hold it open, nor delay a heartbeat.
    pub fn process() -> Clock {
        static PROCESS: std::sync::OnceLock<Clock> = std::sync::OnceLock::new();
        *PROCESS.get_or_init(Clock::now)
    }

    /// Now, on this clock: the monotonic time now, as wall-clock ns.
    pub fn now_ns(&self) -> i64 {
        self.wall_ns(monotonic_ns())
    }

    /// Now, on this clock, as a `SystemTime`.
    pub fn now_system_time(&self) -> SystemTime {
        ns_system_time(self.now_ns())
    }

    /// A clock with a known offset (wall ns minus monotonic ns), e.g. one read back from
    /// the store.
    pub fn with_offset(offset_ns: i64) -> Clock {
        Clock {
            offset_ns: i128::from(offset_ns),
        }
    }

    /// The offset (wall ns minus monotonic ns), saturated to i64.
    pub fn offset_ns(&self) -> i64 {
        i64::try_from(self.offset_ns).unwrap_or(if self.offset_ns > 0 {
            i64::MAX
        } else {
            i64::MIN
        })
    }

    /// The wall-clock time, in ns since the epoch, of a monotonic time.
    pub fn wall_ns(&self, mono_ns: u64) -> i64 {
        let ns = i128::from(mono_ns) + self.offset_ns;
        i64::try_from(ns).unwrap_or(if ns > 0 { i64::MAX } else { i64::MIN })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_clock_has_one_offset_and_does_not_go_back() {
        let a = Clock::process();
        let t0 = a.now_ns();
        let b = Clock::process();
        assert_eq!(a, b, "one offset for the whole process");
        assert!(b.now_ns() >= t0);
        assert_eq!(
            a.wall_ns(monotonic_ns()) / 1_000_000_000,
            a.now_ns() / 1_000_000_000
        );
    }

    #[test]
    fn rfc3339_round_trips_with_nanoseconds() {
        let ns = 1_795_000_000_123_456_789;
        let text = format_rfc3339(ns);
        assert_eq!(text, "2026-11-18T11:06:40.123456789Z");
        assert_eq!(parse_rfc3339(&text), Some(ns));
        assert_eq!(
            parse_rfc3339("2026-11-18T11:06:40Z"),
            Some(1_795_000_000_000_000_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn times_before_1970_are_formatted_not_a_panic() {
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(
            format_rfc3339(-86_400_000_000_000),
            "1969-12-31T00:00:00.000000000Z"
        );
        assert_eq!(format_rfc3339(i64::MIN), "1677-09-21T00:12:43.145224192Z");
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(format_rfc3339(i64::MAX), "2262-04-11T23:47:16.854775807Z");
    }

    #[test]
    fn times_before_the_epoch_are_negative() {
        assert_eq!(
            system_time_ns(UNIX_EPOCH - Duration::from_secs(1)),
            -1_000_000_000
        );
        assert_eq!(
            ns_system_time(-1_000_000_000),
            UNIX_EPOCH - Duration::from_secs(1)
        );
    }

    #[test]
    fn clock_maps_monotonic_to_wall() {
        let clock = Clock::with_offset(1_000);
        assert_eq!(clock.wall_ns(5), 1_005);
        assert_eq!(clock.offset_ns(), 1_000);
        let now = Clock::now();
        let wall = now.wall_ns(monotonic_ns());
        assert!((wall - now_ns()).abs() < 5_000_000_000, "{wall}");
    }

    #[test]
    fn monotonic_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
