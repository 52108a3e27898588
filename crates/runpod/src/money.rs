//! Prices as integer micro-dollars, parsed from the decimal text of a JSON number or string
//! without going through `f64` arithmetic.
//!
//! `costPerHr` arrives as a JSON number in GraphQL (`0.34`) and as a string in the REST spec's
//! example (`"0.74"`). serde_json already holds a number as `f64`, but its `Display` prints the
//! shortest text that reads back to the same `f64` (`0.34`, `5e-7`), which is the decimal the
//! server wrote; we parse that text, never multiply the float.

/// Micro-dollars per dollar.
pub const MICROS_PER_DOLLAR: i64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a non-negative decimal amount: {0:?}")]
pub struct ParseMoneyError(pub String);

/// Parses a non-negative decimal (`"0.34"`, `"1"`, `"5e-7"`, `"1.5E2"`) into micro-dollars,
/// keeping 6 fractional digits and rounding half up beyond that.
pub fn parse_micros(text: &str) -> Result<i64, ParseMoneyError> {
    let err = || ParseMoneyError(text.chars().take(40).collect());
    let s = text.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(at) => {
            let exp: i32 = s[at + 1..].parse().map_err(|_| err())?;
            (&s[..at], exp)
        }
        None => (s, 0),
    };
    let (int_part, frac_part) = match mantissa.split_once('.') {
        Some((i, f)) => (i, f),
        None => (mantissa, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(err());
    }
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return Err(err());
    }
    // All digits, and where the decimal point sits among them once the exponent is applied.
    let digits: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let point = int_part.len() as i64 + i64::from(exponent);
    // Value = sum(d_k * 10^(point - 1 - k)); micros = value * 10^6.
    let mut micros: i64 = 0;
    let mut round_up = false;
    for (k, &d) in digits.iter().enumerate() {
        let place = point - 1 - k as i64 + 6; // power of ten of this digit in micros
        if place >= 0 {
            if d == 0 {
                continue;
            }
            let scale = 10_i64
                .checked_pow(u32::try_from(place).map_err(|_| err())?)
                .ok_or_else(err)?;
            micros = micros
                .checked_add(i64::from(d).checked_mul(scale).ok_or_else(err)?)
                .ok_or_else(err)?;
        } else if place == -1 {
            round_up = d >= 5;
            break;
        } else {
            break;
        }
    }
    if round_up {
        micros = micros.checked_add(1).ok_or_else(err)?;
    }
    Ok(micros)
}

/// Parses a JSON number or numeric string (`costPerHr`) into micro-dollars.
pub fn micros_from_json(value: &serde_json::Value) -> Result<i64, ParseMoneyError> {
    match value {
        serde_json::Value::Number(n) => parse_micros(&n.to_string()),
        serde_json::Value::String(s) => parse_micros(s),
        other => Err(ParseMoneyError(
            other.to_string().chars().take(40).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_decimal_text_into_micros() {
        assert_eq!(parse_micros("0.34"), Ok(340_000));
        assert_eq!(parse_micros("0.74"), Ok(740_000));
        assert_eq!(parse_micros("1"), Ok(1_000_000));
        assert_eq!(parse_micros("12.5"), Ok(12_500_000));
        assert_eq!(parse_micros("0.000001"), Ok(1));
        assert_eq!(parse_micros(".5"), Ok(500_000));
        assert_eq!(parse_micros("3."), Ok(3_000_000));
        assert_eq!(parse_micros("0"), Ok(0));
    }

    #[test]
    fn rounds_half_up_beyond_six_digits() {
        assert_eq!(parse_micros("0.0000005"), Ok(1));
        assert_eq!(parse_micros("0.0000004999"), Ok(0));
        assert_eq!(parse_micros("0.1234565"), Ok(123_457));
        assert_eq!(parse_micros("0.9999995"), Ok(1_000_000));
    }

    #[test]
    fn reads_exponent_notation() {
        assert_eq!(parse_micros("5e-7"), Ok(1));
        assert_eq!(parse_micros("1.5E2"), Ok(150_000_000));
        assert_eq!(parse_micros("34e-2"), Ok(340_000));
    }

    #[test]
    fn json_numbers_and_strings() {
        assert_eq!(micros_from_json(&json!(0.34)), Ok(340_000));
        assert_eq!(micros_from_json(&json!("0.74")), Ok(740_000));
        assert_eq!(micros_from_json(&json!(1)), Ok(1_000_000));
        assert_eq!(micros_from_json(&json!(0.0000005)), Ok(1));
        assert_eq!(micros_from_json(&json!(0.79)), Ok(790_000));
        assert_eq!(micros_from_json(&json!(2.49)), Ok(2_490_000));
        assert!(micros_from_json(&json!(true)).is_err());
        assert!(micros_from_json(&json!(null)).is_err());
    }

    #[test]
    fn rejects_negative_and_garbage() {
        for bad in [
            "-0.34", "", ".", "abc", "0.3.4", "1e", "0x10", "1,5", "NaN", "inf", " - 1", "1e400",
        ] {
            assert!(parse_micros(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(micros_from_json(&json!(-1)).is_err());
        assert!(micros_from_json(&json!("garbage")).is_err());
    }
}
