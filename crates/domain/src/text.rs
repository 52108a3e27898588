//! Text that people type: LoRA names, descriptions, trigger words, captions, file names. Every
//! way text comes in (JSON, multipart, reference intake, the CLI) goes through [`clean`] with
//! its field's [`TextRule`], so the same characters are refused everywhere, with the same error.
//!
//! Two strings that look the same must be the same: text is normalised to NFKC (full-width,
//! ligature and compatibility forms become their plain letters), and characters that show
//! nothing or reorder what is shown are refused — control characters (except newline and tab in
//! multi-line fields), bidirectional controls (`abc\u{202e}txt.exe` shows as `abcexe.txt`), and
//! invisible format characters (zero-width space, BOM, soft hyphen, word joiner, fillers…).
//! What some scripts need is kept where it does its job: a zero-width joiner inside an emoji
//! sequence or between two letters of a script that uses it, a zero-width non-joiner between
//! such letters, a variation selector after a visible character, tag characters of a flag.
//! Names are compared by [`name_key`]: the clean name case-folded, without those joiners and
//! selectors, so "Cat", "CAT" and "Ｃａｔ" are one name.

use std::fmt;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeEmoji, UnicodeGeneralCategory};

/// How one field's text is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRule {
    /// The field's name in errors ("name", "description", …).
    pub field: &'static str,
    /// Newlines and tabs allowed (kept as `\n` and `\t`; `\r\n` and `\r` become `\n`). Single-line
    /// text has every run of white space turned into one space.
    pub multiline: bool,
    /// Most characters after normalising.
    pub max_chars: usize,
    /// Whether blank text is an error (otherwise it comes back as `""`).
    pub required: bool,
}

impl TextRule {
    pub const NAME: Self = Self {
        field: "name",
        multiline: false,
        max_chars: 255,
        required: true,
    };
    pub const DESCRIPTION: Self = Self {
        field: "description",
        multiline: true,
        max_chars: 10_000,
        required: false,
    };
    /// One entry of `params.trigger_words` (the parameter error names the list).
    pub const TRIGGER_WORD: Self = Self {
        field: "trigger word",
        multiline: false,
        max_chars: 64,
        required: true,
    };
    pub const CAPTION: Self = Self {
        field: "caption",
        multiline: true,
        max_chars: 16 * 1024,
        required: false,
    };
    pub const FILE_NAME: Self = Self {
        field: "file_name",
        multiline: false,
        max_chars: 255,
        required: false,
    };
    /// Identifiers chosen by clients (a reference's `character_id`).
    pub const IDENTIFIER: Self = Self {
        field: "character_id",
        multiline: false,
        max_chars: 255,
        required: true,
    };
}

/// Why a character is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharClass {
    /// C0/C1 controls, line and paragraph separators.
    Control,
    /// Bidirectional embeddings, overrides, isolates and marks.
    Bidi,
    /// Format characters and fillers that show nothing.
    Invisible,
}

/// Text that breaks its field's rule. [`TextError::code`] is a stable reason for clients;
/// the message names the field, and for a refused character the character and its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    Empty {
        field: &'static str,
    },
    TooLong {
        field: &'static str,
        chars: usize,
        max: usize,
    },
    Forbidden {
        field: &'static str,
        class: CharClass,
        ch: char,
        /// 1-based index of the character in the text as sent.
        position: usize,
    },
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty { field } => write!(f, "{field} must not be empty"),
            Self::TooLong { field, chars, max } => {
                write!(f, "{field} is {chars} characters long; use at most {max}")
            }
            Self::Forbidden {
                field,
                class,
                ch,
                position,
            } => write!(
                f,
                "{field} contains {} {} at position {position} (counting characters from 1); {}",
                class.describe(),
                CharName(*ch),
                class.advice()
            ),
        }
    }
}

impl std::error::Error for TextError {}

impl TextError {
    /// `empty`, `too_long`, `control_character`, `bidi_control` or `invisible_character`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Empty { .. } => "empty",
            Self::TooLong { .. } => "too_long",
            Self::Forbidden { class, .. } => match class {
                CharClass::Control => "control_character",
                CharClass::Bidi => "bidi_control",
                CharClass::Invisible => "invisible_character",
            },
        }
    }

    pub fn field(&self) -> &'static str {
        match self {
            Self::Empty { field } | Self::TooLong { field, .. } | Self::Forbidden { field, .. } => {
                field
            }
        }
    }

    /// The refused character as `U+XXXX` and its 1-based position, when one is at fault.
    pub fn character(&self) -> Option<(String, usize)> {
        match self {
            Self::Forbidden { ch, position, .. } => {
                Some((format!("U+{:04X}", u32::from(*ch)), *position))
            }
            _ => None,
        }
    }
}

impl CharClass {
    fn describe(self) -> &'static str {
        match self {
            Self::Control => "the control character",
            Self::Bidi => "the bidirectional control",
            Self::Invisible => "the invisible character",
        }
    }

    fn advice(self) -> &'static str {
        match self {
            Self::Control => {
                "use plain text (newlines and tabs only where several lines are allowed)"
            }
            Self::Bidi => "remove it; it changes the order in which the text is shown",
            Self::Invisible => "remove it; it shows nothing but makes the text differ",
        }
    }
}

/// `U+202E (right-to-left override)`: the code point, and its name for the usual suspects.
struct CharName(char);

impl fmt::Display for CharName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            '\0' => "null",
            '\t' => "tab",
            '\n' => "line feed",
            '\r' => "carriage return",
            '\u{7f}' => "delete",
            '\u{ad}' => "soft hyphen",
            '\u{34f}' => "combining grapheme joiner",
            '\u{61c}' => "Arabic letter mark",
            '\u{200b}' => "zero width space",
            '\u{200c}' => "zero width non-joiner",
            '\u{200d}' => "zero width joiner",
            '\u{200e}' => "left-to-right mark",
            '\u{200f}' => "right-to-left mark",
            '\u{2028}' => "line separator",
            '\u{2029}' => "paragraph separator",
            '\u{202a}' => "left-to-right embedding",
            '\u{202b}' => "right-to-left embedding",
            '\u{202c}' => "pop directional formatting",
            '\u{202d}' => "left-to-right override",
            '\u{202e}' => "right-to-left override",
            '\u{2060}' => "word joiner",
            '\u{2066}' => "left-to-right isolate",
            '\u{2067}' => "right-to-left isolate",
            '\u{2068}' => "first strong isolate",
            '\u{2069}' => "pop directional isolate",
            '\u{2800}' => "braille pattern blank",
            '\u{3164}' => "Hangul filler",
            '\u{feff}' => "byte order mark / zero width no-break space",
            '\u{fe00}'..='\u{fe0f}' | '\u{e0100}'..='\u{e01ef}' => "variation selector",
            '\u{e0000}'..='\u{e007f}' => "tag character",
            _ => "",
        };
        write!(f, "U+{:04X}", u32::from(self.0))?;
        if !name.is_empty() {
            write!(f, " ({name})")?;
        }
        Ok(())
    }
}

/// Checks and normalises `raw` for `rule`: surrounding white space off, refused characters
/// (reported at their position in `raw`), then NFKC, line ends and inner white space, and the
/// length after normalising.
pub fn clean(raw: &str, rule: &TextRule) -> Result<String, TextError> {
    // White space around the text is dropped first: a name sent as "Cat\n" is "Cat".
    let trimmed = raw.trim();
    let lead = raw[..raw.len() - raw.trim_start().len()].chars().count();
    let chars: Vec<char> = trimmed.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        // A compatibility form may normalise into something refused (U+3164 → U+1160).
        let refused = classify(c, prev, next, rule.multiline).or_else(|| {
            (c.nfkc().ne(std::iter::once(c)))
                .then(|| {
                    c.nfkc()
                        .find_map(|n| classify(n, prev, next, rule.multiline))
                })
                .flatten()
        });
        if let Some(class) = refused {
            return Err(TextError::Forbidden {
                field: rule.field,
                class,
                ch: c,
                position: lead + i + 1,
            });
        }
    }

    let normal: String = trimmed.nfkc().collect();
    let text = if rule.multiline {
        normal.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        collapse_spaces(&normal)
    };
    let text = text.trim();
    if text.is_empty() && rule.required {
        return Err(TextError::Empty { field: rule.field });
    }
    let n = text.chars().count();
    if n > rule.max_chars {
        return Err(TextError::TooLong {
            field: rule.field,
            chars: n,
            max: rule.max_chars,
        });
    }
    Ok(text.to_owned())
}

/// [`clean`] for an optional field: `None` or blank text is `None`.
pub fn clean_optional(raw: Option<&str>, rule: &TextRule) -> Result<Option<String>, TextError> {
    match raw {
        None => Ok(None),
        Some(s) => clean(s, rule).map(|t| Some(t).filter(|t| !t.is_empty())),
    }
}

/// The form names are compared in: NFKC, without anything that shows nothing (controls, format
/// characters, joiners, variation selectors, fillers), case-folded (upper then lower case, so
/// "ß" and "SS", "ς" and "Σ" meet), NFKC again, one space between words. Not for showing; only
/// for equality. Total: it also keys names stored before [`clean`] existed.
pub fn name_key(name: &str) -> String {
    let visible: String = name.nfkc().filter(|c| !is_hidden(*c)).collect();
    let folded = visible.to_uppercase().to_lowercase();
    let normal: String = folded.nfkc().filter(|c| !is_hidden(*c)).collect();
    collapse_spaces(&normal).trim().to_owned()
}

/// Shows nothing: white space is not hidden (it separates words), the rest of what [`classify`]
/// refuses or lets through only in context is.
fn is_hidden(c: char) -> bool {
    (c.is_control() && !c.is_whitespace())
        || c.general_category() == GeneralCategory::Format
        || matches!(
            c,
            '\u{fe00}'..='\u{fe0f}'
                | '\u{e0100}'..='\u{e01ef}'
                | '\u{34f}'
                | '\u{115f}'
                | '\u{1160}'
                | '\u{3164}'
                | '\u{ffa0}'
                | '\u{2800}'
        )
}

fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out
}

/// Why `c` (between `prev` and `next`) is refused, or `None` when it may stay.
fn classify(c: char, prev: Option<char>, next: Option<char>, multiline: bool) -> Option<CharClass> {
    match c {
        '\n' | '\t' | '\r' if multiline => None,
        '\u{2028}' | '\u{2029}' => Some(CharClass::Control),
        c if c.is_control() => Some(CharClass::Control),
        '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
            Some(CharClass::Bidi)
        }
        // Joiners: inside an emoji sequence (👨‍👩‍👧), or between letters of scripts that shape
        // with them (Persian, Indic). Never between plain ASCII letters, where they only hide.
        '\u{200d}' if emoji_context(prev, next) || script_context(prev, next) => None,
        '\u{200c}' if script_context(prev, next) => None,
        // Tag characters spell a subdivision flag after U+1F3F4 (🏴󠁧󠁢󠁳󠁣󠁴󠁿).
        '\u{e0020}'..='\u{e007f}' if prev.is_some_and(|p| p == '\u{1f3f4}' || is_tag(p)) => None,
        // Variation selectors pick a glyph of the visible character before them (❤️).
        '\u{fe00}'..='\u{fe0f}' | '\u{e0100}'..='\u{e01ef}' => {
            if prev.is_some_and(is_visible_base) {
                None
            } else {
                Some(CharClass::Invisible)
            }
        }
        // Arabic and other prepended concatenation marks are Cf but visible.
        '\u{600}'..='\u{605}'
        | '\u{6dd}'
        | '\u{70f}'
        | '\u{890}'..='\u{891}'
        | '\u{8e2}'
        | '\u{110bd}'
        | '\u{110cd}' => None,
        // Invisible but not Cf: grapheme joiner, Hangul fillers, the blank braille pattern.
        '\u{34f}' | '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}' | '\u{2800}' => {
            Some(CharClass::Invisible)
        }
        c if c.general_category() == GeneralCategory::Format => Some(CharClass::Invisible),
        _ => None,
    }
}

fn is_tag(c: char) -> bool {
    ('\u{e0020}'..='\u{e007e}').contains(&c)
}

fn is_visible_base(c: char) -> bool {
    !c.is_whitespace()
        && !c.is_control()
        && c.general_category() != GeneralCategory::Format
        && !matches!(c, '\u{fe00}'..='\u{fe0f}' | '\u{e0100}'..='\u{e01ef}')
}

fn emoji_context(prev: Option<char>, next: Option<char>) -> bool {
    let emoji = |c: char| c.is_emoji_char() && !c.is_ascii();
    let before = prev.is_some_and(|p| emoji(p) || (p.is_emoji_component() && !p.is_ascii()));
    before && next.is_some_and(emoji)
}

fn script_context(prev: Option<char>, next: Option<char>) -> bool {
    let letter = |c: char| !c.is_ascii() && (c.is_alphabetic() || is_mark(c));
    prev.is_some_and(letter) && next.is_some_and(letter)
}

fn is_mark(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::NonspacingMark | GeneralCategory::SpacingMark
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: TextRule = TextRule::NAME;
    const DESC: TextRule = TextRule::DESCRIPTION;

    fn refused(raw: &str, rule: &TextRule) -> (&'static str, String, usize) {
        let e = clean(raw, rule).expect_err(raw);
        let (ch, pos) = e.character().expect("a character is named");
        (e.code(), ch, pos)
    }

    #[test]
    fn bidi_overrides_are_refused_where_they_stand() {
        assert_eq!(
            refused("abc\u{202e}txt.exe", &TextRule::FILE_NAME),
            ("bidi_control", "U+202E".to_owned(), 4)
        );
        for c in [
            '\u{200e}', '\u{200f}', '\u{202a}', '\u{2066}', '\u{2069}', '\u{61c}',
        ] {
            assert_eq!(refused(&format!("x{c}"), &NAME).0, "bidi_control", "{c:?}");
        }
        let msg = clean("abc\u{202e}txt.exe", &TextRule::FILE_NAME)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "file_name contains the bidirectional control U+202E (right-to-left override) at \
             position 4 (counting characters from 1); remove it; it changes the order in which \
             the text is shown"
        );
    }

    #[test]
    fn invisible_characters_are_refused_in_every_field() {
        let cases = [
            ("a\u{200b}b", 2),     // zero width space
            ("\u{feff}abc", 1),    // BOM
            ("soft\u{ad}ware", 5), // soft hyphen
            ("a\u{2060}b", 2),     // word joiner
            ("ab\u{200d}cd", 3),   // ZWJ between ASCII letters
            ("ab\u{200c}cd", 3),   // ZWNJ between ASCII letters
            ("\u{3164}", 1),       // Hangul filler alone
            ("x\u{ffa0}", 2),      // half-width filler (normalises to U+1160)
            ("a\u{34f}b", 2),      // combining grapheme joiner
            ("\u{fe0f}a", 1),      // variation selector with nothing before it
            ("\u{2800}", 1),       // blank braille
            ("a\u{e0041}", 2),     // a tag outside a flag
            ("a\u{180e}", 2),      // Mongolian vowel separator
        ];
        for rule in [
            NAME,
            DESC,
            TextRule::CAPTION,
            TextRule::TRIGGER_WORD,
            TextRule::FILE_NAME,
        ] {
            for (raw, pos) in cases {
                let (code, _, at) = refused(raw, &rule);
                assert_eq!(
                    (code, at),
                    ("invisible_character", pos),
                    "{raw:?} in {}",
                    rule.field
                );
            }
        }
    }

    #[test]
    fn controls_are_refused_but_multiline_fields_keep_newlines_and_tabs() {
        assert_eq!(refused("a\nb", &NAME).0, "control_character");
        assert_eq!(refused("a\tb", &NAME).0, "control_character");
        assert_eq!(refused("a\u{7}b", &DESC).0, "control_character");
        assert_eq!(
            refused("a\u{9b}b", &TextRule::CAPTION).0,
            "control_character"
        );
        assert_eq!(refused("a\u{2028}b", &DESC).0, "control_character");
        assert_eq!(refused("a\u{0}b", &TextRule::CAPTION).1, "U+0000");
        assert_eq!(
            clean("line 1\r\nline 2\rthree\tfour", &DESC).unwrap(),
            "line 1\nline 2\nthree\tfour"
        );
        // Ends are trimmed before anything else matters.
        assert_eq!(
            clean(" \t Cyberpunk Girl \n", &NAME).unwrap(),
            "Cyberpunk Girl"
        );
    }

    #[test]
    fn nfkc_and_spaces_make_one_form() {
        assert_eq!(clean("Ｃａｔ", &NAME).unwrap(), "Cat");
        assert_eq!(clean("ﬁsh", &NAME).unwrap(), "fish");
        assert_eq!(clean("e\u{301}te\u{301}", &NAME).unwrap(), "été");
        assert_eq!(clean("a\u{a0}\u{3000} b", &NAME).unwrap(), "a b");
        assert_eq!(
            clean("a    b", &DESC).unwrap(),
            "a    b",
            "descriptions keep their spacing"
        );
    }

    #[test]
    fn what_scripts_and_emoji_need_is_kept() {
        for ok in [
            "👨\u{200d}👩\u{200d}👧 family",
            "❤\u{fe0f} heart",
            "👍\u{1f3fd} thumbs",
            "\u{1f3f4}\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f} flag",
            "می\u{200c}خواهم", // Persian ZWNJ
            "क्\u{200d}ष",      // Devanagari ZWJ
            "猫の騎士 🐱",
            "\u{600}\u{661}\u{662}", // Arabic number sign before digits
        ] {
            assert!(clean(ok, &NAME).is_ok(), "{ok:?}: {:?}", clean(ok, &NAME));
        }
    }

    #[test]
    fn lengths_and_blanks() {
        assert_eq!(clean("", &NAME), Err(TextError::Empty { field: "name" }));
        assert_eq!(
            clean(" \u{3000} ", &NAME),
            Err(TextError::Empty { field: "name" })
        );
        assert_eq!(clean("  ", &DESC).unwrap(), "");
        assert_eq!(clean_optional(Some(" "), &DESC).unwrap(), None);
        assert_eq!(clean_optional(None, &DESC).unwrap(), None);
        assert!(clean(&"é".repeat(255), &NAME).is_ok());
        assert_eq!(
            clean(&"e\u{301}".repeat(256), &NAME),
            Err(TextError::TooLong {
                field: "name",
                chars: 256,
                max: 255
            }),
            "counted after composing"
        );
        assert_eq!(
            clean(&"é".repeat(256), &NAME).unwrap_err().code(),
            "too_long"
        );
    }

    #[test]
    fn keys_of_names_stored_before_cleaning_drop_what_shows_nothing() {
        assert_eq!(name_key("Ca\u{200b}t"), "cat");
        assert_eq!(name_key("\u{feff}Cat\u{202e}"), "cat");
        assert_eq!(name_key(" Cat\u{3164}"), "cat");
        assert_eq!(name_key("a\tb"), "a b");
    }

    #[test]
    fn name_keys_ignore_case_width_and_joiners() {
        let key = |s: &str| name_key(&clean(s, &NAME).unwrap());
        assert_eq!(key("Cat"), key("cAT"));
        assert_eq!(key("Cat"), key("Ｃａｔ"));
        assert_eq!(key("Straße"), key("STRASSE"));
        assert_eq!(key("ΣΑΣ"), key("σας"));
        assert_eq!(key("❤\u{fe0f}"), key("❤"));
        assert_eq!(key("می\u{200c}خواهم"), key("میخواهم"));
        assert_eq!(key("Cyberpunk  Girl"), key("cyberpunk girl"));
        assert_ne!(key("Cat"), key("Cats"));
        assert_ne!(key("İ"), key("I"), "different letters stay different");
    }
}
