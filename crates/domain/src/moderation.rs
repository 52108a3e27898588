//! Content moderation (PRD 4, "Content Moderation"): anyone may report a LoRA with a reason;
//! admins review the reports and may hide the LoRA. Hiding never deletes anything (LoRAs are
//! never deleted): a hidden LoRA leaves the library, its search and its public pages, and its
//! owner still sees it, with the reason. This module holds the words of that contract (reason
//! codes, resolutions, the hidden state) and the rules of a report's text; it does no I/O.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::UserId;
use crate::text::{self, TextError, TextRule};

/// The operator alert raised when a LoRA reaches the configured number of open reports (its
/// subject is the LoRA's id).
pub const REPORTED_ALERT_KIND: &str = "lora_reported";

/// Why a LoRA was reported. The wire form is [`ReportReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportReason {
    SexualContent,
    /// Depicts or sexualises a minor.
    Minor,
    Violence,
    Hate,
    /// Made to pass as a real person without their consent.
    Impersonation,
    Copyright,
    Spam,
    /// Anything else; `details` is then required.
    Other,
}

impl ReportReason {
    pub const ALL: [ReportReason; 8] = [
        ReportReason::SexualContent,
        ReportReason::Minor,
        ReportReason::Violence,
        ReportReason::Hate,
        ReportReason::Impersonation,
        ReportReason::Copyright,
        ReportReason::Spam,
        ReportReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReportReason::SexualContent => "sexual_content",
            ReportReason::Minor => "minor",
            ReportReason::Violence => "violence",
            ReportReason::Hate => "hate",
            ReportReason::Impersonation => "impersonation",
            ReportReason::Copyright => "copyright",
            ReportReason::Spam => "spam",
            ReportReason::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<ReportReason> {
        ReportReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// `other` says nothing by itself, so it needs the reporter's words.
    pub fn requires_details(self) -> bool {
        self == ReportReason::Other
    }

    /// Every code, comma-separated, for error messages.
    pub fn codes() -> String {
        ReportReason::ALL.map(ReportReason::as_str).join(", ")
    }
}

impl fmt::Display for ReportReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an admin closed a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The LoRA was hidden (every open report of it is resolved so).
    Hidden,
    /// The report was judged unfounded; the LoRA stays.
    Dismissed,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Hidden => "hidden",
            Resolution::Dismissed => "dismissed",
        }
    }

    pub fn parse(s: &str) -> Option<Resolution> {
        [Resolution::Hidden, Resolution::Dismissed]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A LoRA's hidden state: when, why (shown to its owner) and by which admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hidden {
    pub at: DateTime<Utc>,
    pub reason: String,
    pub by: UserId,
}

/// The reporter's own words (`details`): at most 1,000 characters, multi-line.
pub const REPORT_DETAILS: TextRule = TextRule {
    field: "details",
    multiline: true,
    max_chars: 1000,
    required: false,
};

/// An admin's reason for hiding, shown to the LoRA's owner: required, at most 1,000 characters.
pub const HIDE_REASON: TextRule = TextRule {
    field: "reason",
    multiline: true,
    max_chars: 1000,
    required: true,
};

/// Why a report's input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportInputError {
    #[error("reason {0:?} is not a report reason; use one of {codes}", codes = ReportReason::codes())]
    UnknownReason(String),
    #[error("reason `other` needs `details`: say what is wrong with this LoRA")]
    DetailsRequired,
    #[error(transparent)]
    Details(#[from] TextError),
}

/// A checked report: a known reason and clean details (blank is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportInput {
    pub reason: ReportReason,
    pub details: Option<String>,
}

impl ReportInput {
    pub fn parse(reason: &str, details: Option<&str>) -> Result<Self, ReportInputError> {
        let reason = ReportReason::parse(reason)
            .ok_or_else(|| ReportInputError::UnknownReason(reason.to_owned()))?;
        let details = text::clean_optional(details, &REPORT_DETAILS)?;
        if reason.requires_details() && details.is_none() {
            return Err(ReportInputError::DetailsRequired);
        }
        Ok(Self { reason, details })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_its_code_and_serde() {
        for r in ReportReason::ALL {
            assert_eq!(ReportReason::parse(r.as_str()), Some(r));
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::String(r.as_str().into())
            );
        }
        assert_eq!(ReportReason::parse("Spam"), None, "codes are exact");
        for r in [Resolution::Hidden, Resolution::Dismissed] {
            assert_eq!(Resolution::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn other_needs_details_and_details_are_cleaned_and_bounded() {
        assert_eq!(
            ReportInput::parse("other", None),
            Err(ReportInputError::DetailsRequired)
        );
        assert_eq!(
            ReportInput::parse("other", Some("   ")),
            Err(ReportInputError::DetailsRequired),
            "blank details are none"
        );
        let ok = ReportInput::parse("other", Some("  stolen\r\nart  ")).unwrap();
        assert_eq!(ok.details.as_deref(), Some("stolen\nart"));
        assert_eq!(
            ReportInput::parse("spam", None).unwrap(),
            ReportInput {
                reason: ReportReason::Spam,
                details: None
            }
        );
        assert!(matches!(
            ReportInput::parse("spam", Some(&"x".repeat(1001))),
            Err(ReportInputError::Details(_))
        ));
        assert!(ReportInput::parse("spam", Some(&"x".repeat(1000))).is_ok());
        assert!(matches!(
            ReportInput::parse("spam", Some("a\u{202e}b")),
            Err(ReportInputError::Details(_))
        ));
        assert!(matches!(
            ReportInput::parse("nsfw", None),
            Err(ReportInputError::UnknownReason(r)) if r == "nsfw"
        ));
    }
}
