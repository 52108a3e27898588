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

    /// Parses decimal dollars (`"0.44"`, `"12"`, `"0.0000005"`, an optional leading `$`), as
    /// text so no float rounding creeps in; digits past the sixth decimal round half up.
    /// Negative amounts and anything else are refused.
    pub fn parse_dollars(text: &str) -> Result<Self, MoneyError> {
        let bad = || MoneyError(text.to_owned());
        let t = text.trim();
        let t = t.strip_prefix('$').unwrap_or(t);
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut micros: i64 = 0;
        for (i, b) in frac.bytes().take(6).enumerate() {
            micros += i64::from(b - b'0') * 10_i64.pow(5 - i as u32);
        }
        if frac.as_bytes().get(6).is_some_and(|b| *b >= b'5') {
            micros += 1;
        }
        whole
            .checked_mul(PER_DOLLAR)
            .and_then(|w| w.checked_add(micros))
            .map(MicroUsd)
            .ok_or_else(bad)
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
            "1e3",
            "0.3x",
            "abc",
            "1.2.3",
            "99999999999999999",
        ] {
            assert!(MicroUsd::parse_dollars(bad).is_err(), "{bad}");
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
