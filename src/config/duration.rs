//! Go-style durations: `300ms`, `1.5s`, `1m30s`, `2h`; a bare number means seconds.

use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration string. Units: `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`, combinable (`1h2m3.5s`).
/// A bare number (integer or decimal) means seconds. Negative values are rejected.
pub fn parse(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".to_string());
    }
    let unsigned = s.strip_prefix('+').unwrap_or(s);
    if unsigned.starts_with('-') {
        return Err(format!("invalid duration \"{input}\": must not be negative"));
    }
    if let Some(nanos) = parse_bare_seconds(unsigned) {
        return to_duration(nanos, input);
    }
    let bad = || format!("invalid duration \"{input}\" (expected e.g. 30s, 1m30s, 300ms, 1.5s)");
    let mut rest = unsigned;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &after_dot[..frac_len];
            rest = &after_dot[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_len =
            rest.char_indices().find(|(_, c)| c.is_ascii_digit() || *c == '.').map(|(i, _)| i).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3_600 * NANOS_PER_SEC,
            _ => return Err(bad()),
        };
        let part = scaled(int_part, frac_part, scale).ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    to_duration(total, input)
}

/// `"10"`, `"1.5"`, `".5"` as seconds, in nanoseconds; `None` when the string is not a bare number.
fn parse_bare_seconds(s: &str) -> Option<u128> {
    let (int_part, frac_part) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part.bytes().all(|b| b.is_ascii_digit()) || !frac_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    scaled(int_part, frac_part, NANOS_PER_SEC)
}

/// `int.frac * scale`, truncated to whole nanoseconds.
fn scaled(int_part: &str, frac_part: &str, scale: u128) -> Option<u128> {
    let int: u128 = if int_part.is_empty() { 0 } else { int_part.parse().ok()? };
    let mut value = int.checked_mul(scale)?;
    let mut place = scale;
    for digit in frac_part.bytes() {
        place /= 10;
        if place == 0 {
            break;
        }
        value = value.checked_add(u128::from(digit - b'0') * place)?;
    }
    Some(value)
}

fn to_duration(nanos: u128, input: &str) -> Result<Duration, String> {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| format!("invalid duration \"{input}\": too large"))?;
    // The remainder is < 1e9 and always fits.
    let sub = (nanos % NANOS_PER_SEC) as u32;
    Ok(Duration::new(secs, sub))
}

/// Seconds given as a native number (YAML/JSON `30` or `1.5`).
pub fn from_secs_f64(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() {
        return Err(format!("invalid duration {secs}"));
    }
    if secs < 0.0 {
        return Err(format!("invalid duration {secs}: must not be negative"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {secs}: too large"))
}

/// Formats a duration so that [`parse`] reads it back exactly: `0s`, `300ms`, `1m30s`, `2h0m0s`, `1.5s`.
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    let sub = d.subsec_nanos();
    if secs == 0 {
        return match sub {
            0 => "0s".to_string(),
            n if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
            n if n % 1_000 == 0 => format!("{}us", n / 1_000),
            n => format!("{n}ns"),
        };
    }
    let hours = secs / 3_600;
    let minutes = (secs % 3_600) / 60;
    let seconds = secs % 60;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&seconds.to_string());
    if sub > 0 {
        let frac = format!("{sub:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('s');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_combinations() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("1h2m3s4ms5us6ns").unwrap(), Duration::new(3723, 4_005_006));
        assert_eq!(parse("10µs").unwrap(), Duration::from_micros(10));
        assert_eq!(parse(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("+1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("1.25").unwrap(), Duration::from_millis(1250));
        assert_eq!(parse(" 7 ").unwrap(), Duration::from_secs(7));
    }

    #[test]
    fn rejects_garbage_and_negatives() {
        for bad in ["", "abc", "10x", "s", "1.s.", "-1s", "-5", "1m-3s", "1 s", "."] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse("-1s").unwrap_err().contains("negative"));
    }

    #[test]
    fn native_seconds() {
        assert_eq!(from_secs_f64(1.5).unwrap(), Duration::from_millis(1500));
        assert!(from_secs_f64(-1.0).is_err());
        assert!(from_secs_f64(f64::NAN).is_err());
    }

    #[test]
    fn format_round_trips() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_micros(15), "15us"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(7200), "2h0m0s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::new(61, 1), "1m1.000000001s"),
        ];
        for (d, text) in cases {
            assert_eq!(format(d), text);
            assert_eq!(parse(text).unwrap(), d, "round trip of {text}");
        }
    }
}
