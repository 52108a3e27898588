//! PRD 2's quality rule after training: all 3 validation images generated, and at least 2 of 3
//! recognisably the character. With a scoring model "recognisably" is a similarity score at or
//! above a threshold; without one, a person decides (the admin review), unless the operator
//! chose to approve automatically.

use serde::{Deserialize, Serialize};

/// Validation images PRD 2 asks for.
pub const VALIDATION_IMAGES: usize = 3;
/// Of those, how many must pass.
pub const REQUIRED_PASSING: usize = 2;

/// The progress stage of a LoRA that waits in `validating` for a person's decision: its checks
/// are done, no scoring model judged it and the operator does not approve automatically. The
/// admin's review queue lists exactly these, and only these can be reviewed.
pub const AWAITING_REVIEW: &str = "awaiting_review";

/// The similarity scores a scoring model gave a LoRA's validation images, in image order, and
/// the threshold the rule judged them by (kept with the LoRA: the operator may change the
/// setting later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationScores {
    pub scores: Vec<f64>,
    pub threshold: f64,
}

impl ValidationScores {
    /// Whether image `index` passed; `None` past the last score.
    pub fn passed(&self, index: usize) -> Option<bool> {
        self.scores
            .get(index)
            .map(|s| image_passes(*s, self.threshold))
    }
}

/// One validation image counts as the character: its score is a number at or above the
/// threshold (NaN never passes).
pub fn image_passes(score: f64, threshold: f64) -> bool {
    score.is_finite() && score >= threshold
}

/// What to do with a LoRA whose validation images are in.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// → `completed`.
    Pass,
    /// → `failed`, with the reason for people.
    Fail(String),
    /// Stays `validating` until an admin approves or rejects it.
    NeedsReview,
}

/// Applies the rule. `images`: validation images generated and stored; `scores`: one similarity
/// per image when a scoring model ran, `None` otherwise.
pub fn judge(images: usize, scores: Option<&[f64]>, threshold: f64, auto_approve: bool) -> Verdict {
    if images < VALIDATION_IMAGES {
        return Verdict::Fail(format!(
            "Quality validation failed: only {images} of {VALIDATION_IMAGES} validation images were generated"
        ));
    }
    let Some(scores) = scores else {
        return if auto_approve {
            Verdict::Pass
        } else {
            Verdict::NeedsReview
        };
    };
    if scores.len() != images {
        return Verdict::Fail(format!(
            "Quality validation failed: {} similarity scores for {images} validation images",
            scores.len()
        ));
    }
    let passing = scores
        .iter()
        .filter(|s| image_passes(**s, threshold))
        .count();
    if passing >= REQUIRED_PASSING {
        Verdict::Pass
    } else {
        let shown: Vec<String> = scores.iter().map(|s| format!("{s:.2}")).collect();
        Verdict::Fail(format!(
            "Quality validation failed: {passing} of {images} validation images look like the training images \
             (similarity at least {threshold:.2} needed for {REQUIRED_PASSING}; scores {})",
            shown.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_of_three_at_the_threshold_pass() {
        assert_eq!(judge(3, Some(&[0.7, 0.7, 0.1]), 0.7, false), Verdict::Pass);
        assert_eq!(
            judge(3, Some(&[0.9, 0.95, 0.99]), 0.7, false),
            Verdict::Pass
        );
    }

    #[test]
    fn one_of_three_fails_with_the_scores() {
        let Verdict::Fail(why) = judge(3, Some(&[0.69, 0.8, 0.1]), 0.7, true) else {
            panic!("should fail")
        };
        assert!(
            why.starts_with("Quality validation failed: 1 of 3"),
            "{why}"
        );
        assert!(why.contains("0.69, 0.80, 0.10"), "{why}");
        // NaN never passes.
        assert!(matches!(
            judge(3, Some(&[f64::NAN, f64::NAN, 0.9]), 0.7, false),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn missing_images_fail_whatever_the_scores() {
        assert!(
            matches!(judge(2, Some(&[0.9, 0.9]), 0.7, true), Verdict::Fail(w) if w.contains("only 2 of 3"))
        );
        assert!(matches!(judge(0, None, 0.7, true), Verdict::Fail(_)));
        assert!(matches!(
            judge(3, Some(&[0.9, 0.9]), 0.7, true),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn each_image_passes_at_or_above_the_threshold() {
        let v = ValidationScores {
            scores: vec![0.91, 0.7, 0.2, f64::NAN],
            threshold: 0.7,
        };
        let each: Vec<Option<bool>> = (0..5).map(|i| v.passed(i)).collect();
        assert_eq!(
            each,
            [Some(true), Some(true), Some(false), Some(false), None]
        );
    }

    #[test]
    fn without_scores_a_person_decides_unless_auto_approved() {
        assert_eq!(judge(3, None, 0.7, false), Verdict::NeedsReview);
        assert_eq!(judge(3, None, 0.7, true), Verdict::Pass);
    }
}
