//! Money: integer micro-dollars (millionths of a US dollar), never a float. Prices arrive as
//! decimal text ("0.44" per hour in a setting, `0.34` in a provider's JSON) and are parsed as
//! decimals; costs are computed in integers with one rounding at the end.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An amount of US dollars in millionths. `MicroUsd(1_500_000)` is $1.50.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MicroUsd(pub i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an amount of dollars; write it like 0.44 or 12")]
pub struct MoneyError(pub String);

const PER_DOLLAR: i64 = 1_000_000;
const MILLIS_PER_HOUR: i128 = 3_600_000;

impl MicroUsd {
    pub const ZERO: MicroUsd = MicroUsd(0);

    pub fn from_dollars(dollars: i64) -> Self {
        MicroUsd(dollars.saturating_mul(PER_DOLLAR))
    }

    /// Parses decimal dollars (`"0.44"`, `"12"`, `".5"`, `"0.0000005"`, exponent notation as
    /// providers' JSON numbers print (`"5e-7"`, `"1.5E2"`), an optional leading `$` or `+`), as
    /// text so no float rounding creeps in; digits past the sixth decimal round half up.
    /// Negative amounts and anything else are refused.
    pub fn parse_dollars(text: &str) -> Result<Self, MoneyError> {
        let bad = || MoneyError(text.chars().take(40).collect());
        let t = text.trim();
        let t = t.strip_prefix('$').unwrap_or(t);
        let t = t.strip_prefix('+').unwrap_or(t);
        let (mantissa, exponent) = match t.find(['e', 'E']) {
            Some(at) => {
                let exp: i32 = t[at + 1..].parse().map_err(|_| bad())?;
                (&t[..at], exp)
            }
            None => (t, 0),
        };
        let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        // Every digit's power of ten in micro-dollars once the exponent moved the point.
        let point = whole.len() as i64 + i64::from(exponent);
        let mut micros: i64 = 0;
        for (k, d) in whole
            .bytes()
            .chain(frac.bytes())
            .map(|b| b - b'0')
            .enumerate()
        {
            let place = point - 1 - k as i64 + 6;
            if place < 0 {
                // The first digit past the sixth decimal rounds half up; the rest do not matter.
                if place == -1 && d >= 5 {
                    micros = micros.checked_add(1).ok_or_else(bad)?;
                }
                break;
            }
            if d == 0 {
                continue;
            }
            let scale = 10_i64
                .checked_pow(u32::try_from(place).map_err(|_| bad())?)
                .ok_or_else(bad)?;
            micros = i64::from(d)
                .checked_mul(scale)
                .and_then(|v| micros.checked_add(v))
                .ok_or_else(bad)?;
        }
        Ok(MicroUsd(micros))
    }

    /// Parses a provider's price, a JSON number (`0.34`, read back from the shortest text that
    /// gives the same `f64`, which is the decimal the provider wrote) or a numeric string.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, MoneyError> {
        match value {
            serde_json::Value::Number(n) => Self::parse_dollars(&n.to_string()),
            serde_json::Value::String(s) => Self::parse_dollars(s),
            other => Err(MoneyError(other.to_string().chars().take(40).collect())),
        }
    }

    /// The cost of `millis` milliseconds at `self` per hour, rounded half up to the micro-dollar.
    pub fn per_hour_for_millis(self, millis: u64) -> MicroUsd {
        let cost =
            (i128::from(self.0) * i128::from(millis) + MILLIS_PER_HOUR / 2) / MILLIS_PER_HOUR;
        MicroUsd(i64::try_from(cost).unwrap_or(i64::MAX))
    }

    /// The cost of `millis` milliseconds at `self` per second, rounded half up.
    pub fn per_second_for_millis(self, millis: u64) -> MicroUsd {
        let cost = (i128::from(self.0) * i128::from(millis) + 500) / 1000;
        MicroUsd(i64::try_from(cost).unwrap_or(i64::MAX))
    }

    pub fn saturating_add(self, other: MicroUsd) -> MicroUsd {
        MicroUsd(self.0.saturating_add(other.0))
    }

    pub fn micros(self) -> i64 {
        self.0
    }
}

impl FromStr for MicroUsd {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_dollars(s)
    }
}

/// `$1.50`, `$0.0042`, `$12`: at least two decimals once there are cents, no trailing zeros
/// beyond them.
impl fmt::Display for MicroUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let (whole, frac) = (abs / PER_DOLLAR as u64, abs % PER_DOLLAR as u64);
        if frac == 0 {
            return write!(f, "{sign}${whole}");
        }
        let mut digits = format!("{frac:06}");
        while digits.len() > 2 && digits.ends_with('0') {
            digits.pop();
        }
        write!(f, "{sign}${whole}.{digits}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_text_parses_exactly() {
        for (text, micros) in [
            ("0.34", 340_000),
            ("0.74", 740_000),
            ("1", 1_000_000),
            ("$2.5", 2_500_000),
            (".5", 500_000),
            ("0.0000005", 1),
            ("0.0000004", 0),
            ("0.1234564", 123_456),
            ("12.000001", 12_000_001),
            ("+3.", 3_000_000),
            ("0.9999995", 1_000_000),
            ("5e-7", 1),
            ("1.5E2", 150_000_000),
            ("34e-2", 340_000),
            ("1e3", 1_000_000_000),
        ] {
            assert_eq!(
                MicroUsd::parse_dollars(text),
                Ok(MicroUsd(micros)),
                "{text}"
            );
        }
        for bad in [
            "",
            ".",
            "-1",
            "-0.34",
            "1e",
            "0x10",
            "1,5",
            "NaN",
            "inf",
            " - 1",
            "1e400",
            "0.3x",
            "abc",
            "1.2.3",
            "99999999999999999",
        ] {
            assert!(MicroUsd::parse_dollars(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn provider_json_numbers_and_strings() {
        use serde_json::json;
        for (value, micros) in [
            (json!(0.34), 340_000),
            (json!("0.74"), 740_000),
            (json!(1), 1_000_000),
            (json!(0.0000005), 1),
            (json!(0.79), 790_000),
            (json!(2.49), 2_490_000),
        ] {
            assert_eq!(MicroUsd::from_json(&value), Ok(MicroUsd(micros)), "{value}");
        }
        for bad in [json!(true), json!(null), json!(-1), json!("garbage")] {
            assert!(MicroUsd::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_costs_round_once() {
        let per_hour = MicroUsd::parse_dollars("0.79").unwrap();
        // 90 minutes at $0.79/h = $1.185.
        assert_eq!(
            per_hour.per_hour_for_millis(90 * 60 * 1000),
            MicroUsd(1_185_000)
        );
        // One second: 219.44… micro-dollars → 219.
        assert_eq!(per_hour.per_hour_for_millis(1000), MicroUsd(219));
        assert_eq!(MicroUsd(500).per_second_for_millis(1500), MicroUsd(750));
        assert_eq!(MicroUsd(1).per_second_for_millis(499), MicroUsd(0));
        assert_eq!(
            MicroUsd(i64::MAX).per_hour_for_millis(u64::MAX),
            MicroUsd(i64::MAX)
        );
    }

    #[test]
    fn amounts_print_as_dollars() {
        assert_eq!(MicroUsd(1_500_000).to_string(), "$1.50");
        assert_eq!(MicroUsd(4_200).to_string(), "$0.0042");
        assert_eq!(MicroUsd(12_000_000).to_string(), "$12");
        assert_eq!(MicroUsd(1).to_string(), "$0.000001");
        assert_eq!(MicroUsd(-250_000).to_string(), "-$0.25");
    }
}
