//! Creators' public names (issue 9 item 6). A creator's e-mail is private: the library shows a
//! display name the creator chose, or one derived from the account that does not reveal the
//! address.

use crate::UserId;

/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 50;

/// A display name a creator chose: trimmed, 1 to 50 characters, no control characters and
/// nothing that reads as an e-mail address (so no one can pose as someone's address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisplayNameError {
    /// Empty, too long, or a control, bidi or invisible character (the one text rule,
    /// [`crate::text`], with its reason, character and position).
    #[error("{0}")]
    Text(crate::text::TextError),
    #[error("display_name must not contain '@' (it is shown instead of an e-mail address)")]
    At,
}

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, DisplayNameError> {
        let name = crate::text::clean(raw, &crate::text::TextRule::DISPLAY_NAME)
            .map_err(DisplayNameError::Text)?;
        if name.contains('@') {
            return Err(DisplayNameError::At);
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The name shown for a creator who chose none: their e-mail masked (`j***@e***.com`: the first
/// character of the local part and of the domain, and the top-level domain), or `creator-` and
/// the last 8 hex digits of their id (random bits; a UUIDv7 starts with its time) when no usable
/// e-mail is known.
pub fn default_display_name(id: UserId, email: Option<&str>) -> String {
    email
        .and_then(mask_email)
        .unwrap_or_else(|| format!("creator-{}", &id.0.simple().to_string()[24..]))
}

/// `jane.doe@example.co.uk` → `j***@e***.uk`; `None` for text that is not `local@domain.tld`.
pub fn mask_email(email: &str) -> Option<String> {
    let (local, domain) = email.trim().rsplit_once('@')?;
    let first = local.chars().next()?;
    let (host, tld) = domain.rsplit_once('.')?;
    let host_first = host.chars().next()?;
    if tld.is_empty()
        || !tld.chars().all(|c| c.is_ascii_alphanumeric())
        || first.is_control()
        || host_first.is_control()
    {
        return None;
    }
    Some(format!("{first}***@{host_first}***.{tld}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_masked_down_to_three_characters() {
        assert_eq!(
            mask_email("jane@example.com").as_deref(),
            Some("j***@e***.com")
        );
        assert_eq!(
            mask_email("jane.doe@mail.example.co.uk").as_deref(),
            Some("j***@m***.uk")
        );
        assert_eq!(mask_email("not-an-email"), None);
        assert_eq!(mask_email("@example.com"), None);
        assert_eq!(mask_email("jane@localhost"), None);
    }

    #[test]
    fn the_default_name_never_contains_the_address() {
        let id = UserId::new();
        let name = default_display_name(id, Some("secret.person@hidden-corp.io"));
        assert_eq!(name, "s***@h***.io");
        assert!(!name.contains("secret") && !name.contains("hidden"));
        let anon = default_display_name(id, None);
        assert!(anon.starts_with("creator-") && anon.len() == 16, "{anon}");
        assert_eq!(anon, default_display_name(id, Some("broken")), "stable");
    }

    #[test]
    fn display_names_are_trimmed_and_validated() {
        assert_eq!(DisplayName::parse("  Ann  ").unwrap().as_str(), "Ann");
        let reason = |raw: &str| match DisplayName::parse(raw) {
            Err(DisplayNameError::Text(e)) => e.code(),
            other => panic!("{raw:?}: {other:?}"),
        };
        assert_eq!(reason("   "), "empty");
        assert_eq!(reason(&"x".repeat(51)), "too_long");
        assert!(DisplayName::parse(&"é".repeat(50)).is_ok());
        assert_eq!(reason("a\u{7}b"), "control_character");
        assert_eq!(reason("Ann\u{202e}nimda"), "bidi_control");
        assert_eq!(reason("A\u{200b}nn"), "invisible_character");
        // NFKC: a full-width name is stored as its plain form.
        assert_eq!(DisplayName::parse("Ａｎｎ").unwrap().as_str(), "Ann");
        assert_eq!(DisplayName::parse("me@x.com"), Err(DisplayNameError::At));
    }
}
