//! Durations as users write them in manifests (`100ms`, `2s`, `1m30s`).
//!
//! Manifests keep durations as strings so that `kubectl explain` and YAML stay readable; this
//! module is the one place that turns them into numbers.

use std::time::Duration;

/// The longest duration a manifest may give (a window of a year is already far beyond what
/// keyed state per batch can hold); longer ones used to overflow into nonsense.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a manifest duration such as `100ms`, `2s` or `1m30s`: the form the API server's CEL
/// `duration()` takes (Go's), so the CRD and `sluice validate` accept the same texts. Units:
/// `h`, `m`, `s`, `ms`, `us` (or `µs`), `ns`; numbers may have a fraction (`1.5s`).
///
/// Returns a message fit to follow a field path when the text is not a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim().is_empty() {
        return Err("is empty; write a duration such as 500ms, 2s or 1m".to_string());
    }
    let bad = |why: &str| {
        format!("{text:?} is not a duration ({why}); write e.g. 500ms, 2s, 1m or 1m30s")
    };
    const UNITS: [(&str, u128); 8] = [
        ("ns", 1),
        ("us", 1_000),
        ("µs", 1_000),
        ("μs", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    let mut rest = text;
    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad("a number must come before each unit"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let Some((_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(bad(if unit.is_empty() {
                "a unit must follow each number"
            } else {
                "units are h, m, s, ms, us and ns, without spaces"
            }));
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad("the number is too large"))?
        };
        let mut part = whole.checked_mul(*scale).ok_or_else(|| bad("too long"))?;
        let mut place = *scale;
        for digit in fraction.chars().filter_map(|c| c.to_digit(10)) {
            place /= 10;
            part += u128::from(digit) * place;
        }
        total_ns = total_ns.checked_add(part).ok_or_else(|| bad("too long"))?;
        if total_ns > MAX_DURATION.as_nanos() {
            return Err(format!(
                "{text:?} is longer than the {} days a manifest duration may be",
                MAX_DURATION.as_secs() / 86_400
            ));
        }
        rest = next;
    }
    Ok(Duration::from_nanos(
        u64::try_from(total_ns).map_err(|_| bad("too long"))?,
    ))
}

/// Formats a duration the way [`parse_duration`] reads it (`2s`, `1m30s`, `100ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return format!("{}ns", d.as_nanos());
    }
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Ok(Duration::from_millis(3_723_004))
        );
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn rejects_garbage_with_advice() {
        let err = parse_duration("fast").unwrap_err();
        assert!(err.contains("\"fast\" is not a duration"), "{err}");
        assert!(parse_duration("").unwrap_err().contains("is empty"));
        assert!(parse_duration("10").is_err());
        // What the API server's CEL duration() refuses, we refuse too.
        for text in [
            "1m 30s", " 2s", "2 s", "1d", "2sec", "s", ".s", "1..2s", "-1s",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        let long = parse_duration("100000000000000000000000000h").unwrap_err();
        assert!(long.contains("too"), "{long}");
        assert!(parse_duration("9000h").unwrap_err().contains("365 days"));
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_millis(90_500)), "1m30s500ms");
        for d in [1u64, 999, 1000, 61_000, 3_600_000, 86_400_000] {
            let d = Duration::from_millis(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
