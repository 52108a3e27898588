//! A LoRA's name: what users see in the library ("Cyberpunk Girl (by user@example.com)").

use std::fmt;

use serde::{Serialize, Serializer};

use crate::text::{self, TextError, TextRule};

pub const MAX_NAME_CHARS: usize = TextRule::NAME.max_chars;

/// A name of 1–255 characters after [`text::clean`] (trimmed, NFKC, one space between words, no
/// control, bidirectional or invisible characters). Unique per user by [`LoraName::key`]; other
/// users may use the same name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoraName(String);

/// Why a name was refused: the one text error, with `field` "name".
pub type NameError = TextError;

impl LoraName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        text::clean(raw, &TextRule::NAME).map(Self)
    }

    /// What names are compared by: two names with the same key are the same name to their
    /// owner ("Cat", "CAT", "Ｃａｔ", "Cat" with a zero-width joiner inside an emoji…).
    pub fn key(&self) -> String {
        text::name_key(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Display for LoraName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for LoraName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_accepts_unicode() {
        assert_eq!(
            LoraName::parse("  Cyberpunk Girl ").unwrap().as_str(),
            "Cyberpunk Girl"
        );
        assert_eq!(
            LoraName::parse("猫の騎士 🐱").unwrap().as_str(),
            "猫の騎士 🐱"
        );
    }

    #[test]
    fn rejects_empty_and_whitespace() {
        let empty = Err(TextError::Empty { field: "name" });
        assert_eq!(LoraName::parse(""), empty);
        assert_eq!(LoraName::parse(" \t\n "), empty);
    }

    #[test]
    fn counts_characters_not_bytes() {
        let ok = "é".repeat(255);
        assert!(LoraName::parse(&ok).is_ok());
        assert_eq!(
            LoraName::parse(&"é".repeat(256)).unwrap_err().code(),
            "too_long"
        );
    }

    #[test]
    fn rejects_inner_control_and_invisible_characters() {
        for (raw, code) in [
            ("a\nb", "control_character"),
            ("a\u{7}b", "control_character"),
            ("a\u{9b}b", "control_character"),
            ("a\u{200b}b", "invisible_character"),
            ("abc\u{202e}gpj.exe", "bidi_control"),
        ] {
            assert_eq!(LoraName::parse(raw).unwrap_err().code(), code, "{raw:?}");
        }
    }

    #[test]
    fn names_that_look_the_same_have_one_key() {
        let key = |s: &str| LoraName::parse(s).unwrap().key();
        assert_eq!(key("Cyberpunk Girl"), key("CYBERPUNK  girl"));
        assert_eq!(key("Cyberpunk Girl"), key("Ｃｙｂｅｒｐｕｎｋ Ｇｉｒｌ"));
        assert_eq!(LoraName::parse("Ｃａｔ").unwrap().as_str(), "Cat");
    }
}
