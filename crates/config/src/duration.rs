//! Durations in operator notation: "30s", "5m", "1h30m", "2d", "50ms", or plain seconds.
//!
//! Milliseconds exist for the few settings that live below a second (the HA sync link's
//! `ack-timeout`, sub-second retransmission timers); everything else is written in seconds and up.

use std::time::Duration;

pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut any = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let part = match c {
            // "ms" is milliseconds; an "m" followed by anything else is minutes ("1m30s").
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                Duration::from_millis(n)
            }
            's' => Duration::from_secs(n),
            'm' => Duration::from_secs(n.checked_mul(60)?),
            'h' => Duration::from_secs(n.checked_mul(3600)?),
            'd' => Duration::from_secs(n.checked_mul(86400)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
        any = true;
    }
    (num.is_empty() && any).then_some(total)
}

pub fn format_duration(d: Duration) -> String {
    let mut s = d.as_secs();
    let ms = d.subsec_millis();
    if s == 0 && ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(86400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')] {
        if s >= unit {
            out.push_str(&format!("{}{}", s / unit, name));
            s %= unit;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_operator_notation() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172800)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("10s5"), None);
        assert_eq!(parse_duration("50ms"), Some(Duration::from_millis(50)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1s500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5mss"), None);
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(secs in 0u64..10_000_000, ms in 0u64..1000) {
            let d = Duration::from_secs(secs) + Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "[0-9smhd ]{0,12}") {
            let _ = parse_duration(&s);
        }
    }
}
