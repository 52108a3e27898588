//! A finding reported to the user: a stable machine code plus a sentence that names the file
//! and says what to do.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Stable snake_case identifier, e.g. `too_small_dimensions`; clients switch on it.
    pub code: &'static str,
    /// Human-readable sentence, shown as is.
    pub message: String,
}

impl Problem {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Sizes as users read them: binary units, one decimal, no trailing `.0` (`12.4 MB`, `100 KB`).
pub fn format_bytes(n: u64) -> String {
    const KB: f64 = 1024.0;
    const MB: f64 = 1024.0 * 1024.0;
    let n_f = n as f64;
    let (value, unit) = if n_f >= MB {
        (n_f / MB, "MB")
    } else if n_f >= KB {
        (n_f / KB, "KB")
    } else {
        return if n == 1 {
            "1 byte".to_owned()
        } else {
            format!("{n} bytes")
        };
    };
    let s = format!("{value:.1}");
    let s = s.strip_suffix(".0").unwrap_or(&s);
    format!("{s} {unit}")
}

/// Pixel counts as megapixels, without needless decimals (`40`, `10000`, `0.3`).
pub fn format_megapixels(pixels: u64) -> String {
    let mp = pixels as f64 / 1_000_000.0;
    if mp >= 10.0 {
        format!("{}", mp.round() as u64)
    } else {
        let s = format!("{mp:.1}");
        s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sizes_for_people() {
        assert_eq!(format_bytes(0), "0 bytes");
        assert_eq!(format_bytes(1), "1 byte");
        assert_eq!(format_bytes(100 * 1024), "100 KB");
        assert_eq!(format_bytes(10 * 1024 * 1024), "10 MB");
        assert_eq!(format_bytes(13_002_342), "12.4 MB");
        assert_eq!(format_megapixels(40_000_000), "40");
        assert_eq!(format_megapixels(10_000_000_000), "10000");
        assert_eq!(format_megapixels(300_000), "0.3");
    }
}
