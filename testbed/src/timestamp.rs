//! RFC 3339 timestamps as seconds since the epoch, for the logs the tests and benches read
//! (tracing's `2026-12-03T18:44:35.967691Z`, `ip -ts monitor`'s `2026-12-03T15:43:32.727713`).

/// Seconds since 1970-01-01T00:00:00Z, with the fraction, of `YYYY-MM-DDTHH:MM:SS[.frac]` followed
/// by `Z`, a `+hh:mm`/`-hh:mm` offset or nothing (taken as UTC: `ip -ts` run with `TZ=UTC`).
pub fn rfc3339_epoch(ts: &str) -> Option<f64> {
    let (date, time) = ts.split_once(['T', 't'])?;
    let (time, offset_s) = match time.find(['Z', 'z', '+', '-']) {
        None => (time, 0),
        Some(i) => (&time[..i], utc_offset(&time[i..])?),
    };
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (hh, mm) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?);
    let ss = t.next()?.parse::<f64>().ok()?;
    if d.next().is_some() || t.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    if !(0..24).contains(&hh) || !(0..60).contains(&mm) || !(0.0..61.0).contains(&ss) {
        return None;
    }
    Some((days_from_civil(y, m, day) * 86_400 + hh * 3600 + mm * 60 - offset_s) as f64 + ss)
}

/// `Z` or `+hh:mm`/`-hh:mm` as seconds east of UTC.
fn utc_offset(s: &str) -> Option<i64> {
    if s.eq_ignore_ascii_case("z") {
        return Some(0);
    }
    let sign = if s.starts_with('-') { -1 } else { 1 };
    let (h, m) = s.get(1..)?.split_once(':')?;
    let (h, m) = (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?);
    (h < 24 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::rfc3339_epoch;

    fn close(ts: &str, want: f64) {
        let got = rfc3339_epoch(ts).unwrap_or_else(|| panic!("{ts} did not parse"));
        assert!((got - want).abs() < 1e-6, "{ts}: {got} != {want}");
    }

    #[test]
    fn parses_utc_with_and_without_z() {
        // date -u -d 2026-12-03T15:43:32 +%s
        close("2026-12-03T15:43:32.727713", 1_796_312_612.727_713);
        close("2026-12-03T15:43:32.727713Z", 1_796_312_612.727_713);
        close("2026-12-03T18:44:35.967691Z", 1_796_323_475.967_691);
        close("1970-01-01T00:00:00Z", 0.0);
        close("2000-02-29T12:00:00Z", 951_825_600.0);
        close("1969-12-31T23:59:59Z", -1.0);
    }

    #[test]
    fn applies_offsets() {
        close("2026-12-03T16:43:32.5+01:00", 1_796_312_612.5);
        close("2026-12-03T10:13:32-05:30", 1_796_312_612.0);
    }

    #[test]
    fn refuses_what_is_not_a_timestamp() {
        for bad in [
            "",
            "2026-12-03",
            "2026-12-03 15:43:32",
            "2026-13-03T15:43:32Z",
            "2026-12-03T24:00:00Z",
            "2026-12-03T15:43Z",
            "2026-12-03T15:43:32+0100",
            "INFO starting",
            "1796312612.727713",
        ] {
            assert_eq!(rfc3339_epoch(bad), None, "{bad:?}");
        }
    }
}
