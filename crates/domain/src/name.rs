//! A LoRA's name: what users see in the library ("Cyberpunk Girl (by user@example.com)").

use std::fmt;

use serde::{Serialize, Serializer};

pub const MAX_NAME_CHARS: usize = 255;

/// A trimmed name of 1–255 characters with no control characters. Unique per user; other users
/// may use the same name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoraName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name must not be empty; give the LoRA a name such as \"Cyberpunk Girl\"")]
    Empty,
    #[error("name is {0} characters long; use at most 255")]
    TooLong(usize),
    #[error("name contains a control character (such as a newline or tab); use plain text")]
    ControlCharacter,
}

impl LoraName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(NameError::Empty);
        }
        let chars = trimmed.chars().count();
        if chars > MAX_NAME_CHARS {
            return Err(NameError::TooLong(chars));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        Ok(Self(trimmed.to_owned()))
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
        assert_eq!(LoraName::parse(""), Err(NameError::Empty));
        assert_eq!(LoraName::parse(" \t\n "), Err(NameError::Empty));
    }

    #[test]
    fn counts_characters_not_bytes() {
        let ok = "é".repeat(255);
        assert!(LoraName::parse(&ok).is_ok());
        assert_eq!(
            LoraName::parse(&"é".repeat(256)),
            Err(NameError::TooLong(256))
        );
    }

    #[test]
    fn rejects_inner_control_characters() {
        assert_eq!(LoraName::parse("a\nb"), Err(NameError::ControlCharacter));
        assert_eq!(LoraName::parse("a\u{7}b"), Err(NameError::ControlCharacter));
        assert_eq!(
            LoraName::parse("a\u{9b}b"),
            Err(NameError::ControlCharacter)
        );
    }
}
