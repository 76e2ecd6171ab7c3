//! Compile-time parsing of duration literals such as `"60s"`, `"500ms"`, `"1m30s"`, `"1.5s"`.

/// Parses a duration literal into nanoseconds.
///
/// The grammar is a sequence of `<number><unit>` pairs (Go's `time.ParseDuration` style,
/// without a sign): units `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`; fractions allowed. The total must
/// be above zero and fit in a `u64` of nanoseconds.
pub(crate) fn parse_duration_nanos(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(format!("expected a number in `{s}`"));
        }
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" => 1_000,
            "ns" => 1,
            "" => return Err(format!("missing unit in `{s}` (use h, m, s, ms, us or ns)")),
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{s}` (use h, m, s, ms, us or ns)"
                ))
            }
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse()
                .map_err(|_| format!("number too large in `{s}`"))?
        };
        let mut part = int
            .checked_mul(scale)
            .ok_or_else(|| format!("duration `{s}` is too long"))?;
        let mut div = scale;
        for d in frac.chars().take(18) {
            div /= 10;
            part += u128::from(d.to_digit(10).unwrap_or(0)) * div;
        }
        total = total
            .checked_add(part)
            .ok_or_else(|| format!("duration `{s}` is too long"))?;
        rest = next;
    }
    if total == 0 {
        return Err(format!("duration `{s}` must be above zero"));
    }
    u64::try_from(total).map_err(|_| format!("duration `{s}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration_nanos as p;

    #[test]
    fn accepts_go_style_durations() {
        assert_eq!(p("60s"), Ok(60_000_000_000));
        assert_eq!(p("500ms"), Ok(500_000_000));
        assert_eq!(p("1m30s"), Ok(90_000_000_000));
        assert_eq!(p("1.5s"), Ok(1_500_000_000));
        assert_eq!(p("2h"), Ok(7_200_000_000_000));
        assert_eq!(p("10us"), Ok(10_000));
        assert_eq!(p("10µs"), Ok(10_000));
        assert_eq!(p("7ns"), Ok(7));
        assert_eq!(p(".5s"), Ok(500_000_000));
    }

    #[test]
    fn rejects_bad_literals() {
        for bad in [
            "",
            "60",
            "s",
            "1.2.3s",
            "5 parsecs",
            "5x",
            "0s",
            "-1s",
            "99999999999h",
        ] {
            assert!(p(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
