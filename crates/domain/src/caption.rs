//! Training captions (PRD 3: trigger words). The trainer reads one `.txt` per image; the LoRA
//! only learns to answer to its trigger word if that word is in the captions, so it is put in
//! front when the user's caption lacks it.

/// The caption to train `image` on: the user's caption (or `fallback` when there is none),
/// with the first trigger word put in front as `"<word>, <caption>"` unless one of the trigger
/// words already appears in it as a whole word, compared case-insensitively. Blank trigger
/// words are ignored; with none, the caption is returned trimmed.
pub fn caption_for_training(
    caption: Option<&str>,
    trigger_words: &[String],
    fallback: &str,
) -> String {
    let base = caption
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .unwrap_or(fallback.trim());
    let words: Vec<&str> = trigger_words
        .iter()
        .map(|w| w.trim())
        .filter(|w| !w.is_empty())
        .collect();
    let Some(first) = words.first() else {
        return base.to_owned();
    };
    if words.iter().any(|w| contains_word(base, w)) {
        return base.to_owned();
    }
    if base.is_empty() {
        (*first).to_owned()
    } else {
        format!("{first}, {base}")
    }
}

/// Whether `word` occurs in `text` with no letter, digit or underscore right before or after.
fn contains_word(text: &str, word: &str) -> bool {
    // Compare on lowercased char sequences so multi-byte letters keep their boundaries.
    let text: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
    let word: Vec<char> = word.chars().flat_map(char::to_lowercase).collect();
    if word.is_empty() || word.len() > text.len() {
        return false;
    }
    let is_word_char = |c: char| c.is_alphanumeric() || c == '_';
    (0..=text.len() - word.len()).any(|i| {
        text[i..i + word.len()] == word[..]
            && (i == 0 || !is_word_char(text[i - 1]))
            && text.get(i + word.len()).is_none_or(|&c| !is_word_char(c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_trigger_word_goes_in_front_when_missing() {
        let tw = words(&["ohwx"]);
        assert_eq!(
            caption_for_training(Some("a woman in a red coat"), &tw, "x"),
            "ohwx, a woman in a red coat"
        );
        assert_eq!(
            caption_for_training(Some("  padded  "), &tw, "x"),
            "ohwx, padded"
        );
    }

    #[test]
    fn a_present_trigger_word_is_left_alone_whatever_its_case() {
        let tw = words(&["ohwx", "sks"]);
        assert_eq!(
            caption_for_training(Some("photo of OHWX woman"), &tw, "x"),
            "photo of OHWX woman"
        );
        assert_eq!(
            caption_for_training(Some("sks, smiling"), &tw, "x"),
            "sks, smiling",
            "any trigger word counts"
        );
        assert_eq!(
            caption_for_training(Some("(ohwx:1.2) portrait"), &tw, "x"),
            "(ohwx:1.2) portrait"
        );
    }

    #[test]
    fn only_whole_words_count() {
        let tw = words(&["ohwx"]);
        assert_eq!(
            caption_for_training(Some("ohwxstyle portrait"), &tw, "x"),
            "ohwx, ohwxstyle portrait"
        );
        assert_eq!(
            caption_for_training(Some("my_ohwx portrait"), &tw, "x"),
            "ohwx, my_ohwx portrait"
        );
        assert_eq!(caption_for_training(Some("2ohwx"), &tw, "x"), "ohwx, 2ohwx");
        let multi = words(&["Zoë Star"]);
        assert_eq!(
            caption_for_training(Some("portrait of zoë star at night"), &multi, "x"),
            "portrait of zoë star at night"
        );
        assert_eq!(
            caption_for_training(Some("zoë stardust"), &multi, "x"),
            "Zoë Star, zoë stardust"
        );
    }

    #[test]
    fn the_fallback_stands_in_for_a_missing_or_blank_caption() {
        let tw = words(&["ohwx"]);
        assert_eq!(
            caption_for_training(None, &tw, "a photo of Cyberpunk Girl"),
            "ohwx, a photo of Cyberpunk Girl"
        );
        assert_eq!(
            caption_for_training(Some("   "), &tw, "a photo"),
            "ohwx, a photo"
        );
        assert_eq!(caption_for_training(None, &tw, ""), "ohwx");
        assert_eq!(
            caption_for_training(None, &tw, "ohwx person"),
            "ohwx person"
        );
    }

    #[test]
    fn without_trigger_words_the_caption_is_unchanged() {
        assert_eq!(caption_for_training(Some(" a cat "), &[], "x"), "a cat");
        assert_eq!(
            caption_for_training(Some("a cat"), &words(&["", "  "]), "x"),
            "a cat"
        );
        assert_eq!(caption_for_training(None, &[], "fallback"), "fallback");
    }
}
