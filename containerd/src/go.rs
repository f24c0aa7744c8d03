//! Go's encodings as containerd writes them, in one place: `encoding/binary` varints (the
//! snapshotters' ids, sizes, meta.db's version), `time.Time.MarshalBinary` (timestamps in the
//! bolt buckets) and `time.Time.MarshalText` (the content store's ingest `startedat` and
//! `updatedat` files).

use std::time::{Duration, SystemTime};

/// Go's `binary.Uvarint`: `None` when truncated or over 64 bits. Trailing bytes are ignored, as
/// containerd ignores them.
pub fn uvarint(b: &[u8]) -> Option<u64> {
    let mut x: u64 = 0;
    let mut shift = 0u32;
    for (i, &byte) in b.iter().enumerate() {
        if i == 10 {
            return None;
        }
        if byte < 0x80 {
            if i == 9 && byte > 1 {
                return None;
            }
            return Some(x | (u64::from(byte) << shift));
        }
        x |= u64::from(byte & 0x7f) << shift;
        shift += 7;
    }
    None
}

/// Go's `binary.Varint` (zigzag).
pub fn varint(b: &[u8]) -> Option<i64> {
    let u = uvarint(b)?;
    let x = (u >> 1) as i64;
    Some(if u & 1 != 0 { !x } else { x })
}

/// Go's `time.Time.MarshalBinary` (versions 1 and 2) as a `SystemTime`.
pub fn go_time(b: &[u8]) -> Option<SystemTime> {
    let version = *b.first()?;
    let want = match version {
        1 => 15,
        2 => 16,
        _ => return None,
    };
    if b.len() != want {
        return None;
    }
    let sec = i64::from_be_bytes(b.get(1..9)?.try_into().ok()?);
    let nsec = u32::from_be_bytes(b.get(9..13)?.try_into().ok()?);
    if nsec >= 1_000_000_000 {
        return None;
    }
    // Seconds since January 1, year 1.
    let unix = sec.checked_sub(62_135_596_800)?;
    if unix >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::new(unix as u64, nsec))
    } else {
        SystemTime::UNIX_EPOCH
            .checked_sub(Duration::from_secs(unix.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nsec)))
    }
}

/// Go's `time.Time.MarshalText` (RFC 3339 with nanoseconds and a `Z` or `±hh:mm` offset), as
/// containerd writes `startedat` and `updatedat`.
pub fn parse_go_time(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() || frac.len() > 9 {
            return None;
        }
        nanos = frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32);
    }
    let offset: i64 = match s.get(i..)? {
        "Z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    let t = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs as u64))?
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    t.checked_add(Duration::from_nanos(u64::from(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_varints_and_times() {
        assert_eq!(uvarint(&[1]), Some(1));
        assert_eq!(uvarint(&[0x80, 0x01]), Some(128));
        assert_eq!(uvarint(&[0x80]), None, "truncated");
        assert_eq!(uvarint(&[]), None);
        assert_eq!(uvarint(&[0xff; 11]), None, "too long");
        assert_eq!(
            uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Some(u64::MAX)
        );
        assert_eq!(
            uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            None,
            "overflow"
        );
        assert_eq!(varint(&[0xbe, 0x06]), Some(415));
        assert_eq!(varint(&[0x01]), Some(-1));
        assert_eq!(varint(&[0x06]), Some(3));
        // 2023-ish timestamp from the fixture; version 1, UTC.
        let t = go_time(&[
            0x01, 0, 0, 0, 0x0e, 0xe2, 0x94, 0x6f, 0x72, 0x2c, 0x48, 0x6e, 0x21, 0xff, 0xff,
        ])
        .unwrap();
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert!((1_600_000_000..2_000_000_000).contains(&secs), "{secs}");
        assert_eq!(go_time(&[0x01, 0, 0]), None);
        assert_eq!(go_time(&[9; 15]), None);
        assert_eq!(
            go_time(&[
                1, 0, 0, 0, 0x0e, 0xe2, 0x94, 0x6f, 0x72, 0xff, 0xff, 0xff, 0xff, 0, 0
            ]),
            None,
            "nanoseconds out of range"
        );
        assert_eq!(
            go_time(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Some(SystemTime::UNIX_EPOCH - Duration::from_secs(62_135_596_800)),
            "year 1"
        );
    }

    #[test]
    fn go_times() {
        let t = parse_go_time("2026-11-22T07:54:56.273704467Z").unwrap();
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1_795_334_096);
        assert_eq!(d.subsec_nanos(), 273_704_467);
        let t2 = parse_go_time("2026-11-22T08:54:56.273704467+01:00").unwrap();
        assert_eq!(t, t2);
        assert_eq!(
            parse_go_time("1970-01-01T00:00:00Z"),
            Some(SystemTime::UNIX_EPOCH)
        );
        for bad in [
            "garbage",
            "2026-13-01T00:00:00Z",
            "2026-11-22T07:54:56",
            "2026-11-22T07:54:56.Z",
        ] {
            assert_eq!(parse_go_time(bad), None, "{bad}");
        }
    }
}
