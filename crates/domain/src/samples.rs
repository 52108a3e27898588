//! Sample images rendered with a completed LoRA (PRD 1 "Application Flow" option B, PRD 4
//! scenarios 9–10): the request's rules (prompts, seeds, LoRA scale, size, steps), the batch's
//! status machine and its retry policy. A batch renders on a training backend as one worker
//! attempt; the trainer's `sample` command (`trainer/loraforge_trainer/sample.py`) takes the
//! [`SampleSpec`] this module produces, and its limits are this module's or wider.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::SampleBatchId;
use crate::text::{self, TextRule};

/// Prompts in one batch.
pub const MAX_PROMPTS: usize = 4;
/// The LoRA's strength: 0 renders the base model, 1 the LoRA as trained.
pub const MIN_SCALE: f64 = 0.0;
pub const MAX_SCALE: f64 = 2.0;
pub const DEFAULT_SCALE: f64 = 1.0;
/// Image sides in pixels: a multiple of 64 (SDXL's latent grid and UNet strides) in this range.
pub const MIN_SIDE: u32 = 64;
pub const MAX_SIDE: u32 = 2048;
pub const SIDE_MULTIPLE: u32 = 64;
pub const DEFAULT_SIDE: u32 = 1024;
/// Denoising steps per image.
pub const MIN_STEPS: u32 = 1;
pub const MAX_STEPS: u32 = 100;
pub const DEFAULT_STEPS: u32 = 30;
/// Seeds fit JSON's exact integers (2⁵³ − 1), so every client reads back the seed it sent.
pub const MAX_SEED: u64 = (1 << 53) - 1;
/// Classifier-free guidance used for every sample (what the validation images use).
pub const GUIDANCE_SCALE: f64 = 7.0;
/// Batches a user may have queued or rendering at once.
pub const MAX_OPEN_BATCHES_PER_USER: u32 = 2;
/// Attempts a batch gets before it fails.
pub const MAX_ATTEMPTS: u32 = 3;

pub const PROMPT: TextRule = TextRule {
    field: "prompt",
    multiline: false,
    max_chars: 1000,
    required: true,
};
pub const NEGATIVE_PROMPT: TextRule = TextRule {
    field: "negative_prompt",
    multiline: false,
    max_chars: 1000,
    required: false,
};

/// One prompt of a request, as sent.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PromptInput {
    /// What to render; the LoRA's trigger word is not added.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 1000))]
    pub prompt: String,
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub negative_prompt: Option<String>,
    /// 0..2⁵³−1; default: derived from the batch id (different per prompt).
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub seed: Option<u64>,
    /// The LoRA's strength, 0–2 (default 1.0).
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 2.0))]
    pub scale: Option<f64>,
}

/// `POST /api/v1/lora-models/{id}/samples`, as sent.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SampleRequestInput {
    /// 1–4 prompts, one image each.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 4))]
    pub prompts: Vec<PromptInput>,
    /// Pixels, a multiple of 64 in 64..2048 (default 1024).
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 64, maximum = 2048, multiple_of = 64)
    )]
    pub width: Option<u32>,
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 64, maximum = 2048, multiple_of = 64)
    )]
    pub height: Option<u32>,
    /// Denoising steps per image, 1..100 (default 30).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub steps: Option<u32>,
}

/// One image to render, checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplePrompt {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub seed: u64,
    pub scale: f64,
}

/// A checked request: what the batch renders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSpec {
    pub prompts: Vec<SamplePrompt>,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
}

/// Why a request is refused; [`SampleError::code`] is stable.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleError {
    PromptCount(usize),
    Text {
        index: usize,
        error: text::TextError,
    },
    Seed {
        index: usize,
        seed: u64,
    },
    Scale {
        index: usize,
        scale: f64,
    },
    Side {
        field: &'static str,
        value: u32,
    },
    Steps(u32),
}

impl SampleError {
    pub fn code(&self) -> &'static str {
        match self {
            SampleError::PromptCount(_) => "invalid_prompt_count",
            SampleError::Text { .. } => "invalid_prompt",
            SampleError::Seed { .. } => "invalid_seed",
            SampleError::Scale { .. } => "invalid_scale",
            SampleError::Side { .. } => "invalid_size",
            SampleError::Steps(_) => "invalid_steps",
        }
    }
}

impl fmt::Display for SampleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SampleError::PromptCount(n) => {
                write!(f, "send 1 to {MAX_PROMPTS} prompts (got {n})")
            }
            SampleError::Text { index, error } => write!(f, "prompts[{index}]: {error}"),
            SampleError::Seed { index, seed } => {
                write!(
                    f,
                    "prompts[{index}].seed must be 0..{MAX_SEED} (got {seed})"
                )
            }
            SampleError::Scale { index, scale } => write!(
                f,
                "prompts[{index}].scale must be {MIN_SCALE}..{MAX_SCALE} (got {scale})"
            ),
            SampleError::Side { field, value } => write!(
                f,
                "{field} must be a multiple of {SIDE_MULTIPLE} in {MIN_SIDE}..{MAX_SIDE} (got {value})"
            ),
            SampleError::Steps(s) => write!(f, "steps must be {MIN_STEPS}..{MAX_STEPS} (got {s})"),
        }
    }
}

impl std::error::Error for SampleError {}

/// The seed of prompt `index` when the request gives none: from the batch id's random bits, so
/// it is fixed once the batch exists (a retry renders the same image) and differs per prompt.
pub fn default_seed(batch: SampleBatchId, index: usize) -> u64 {
    let b = batch.as_uuid().as_u128() as u64;
    (b.wrapping_add(index as u64)) & MAX_SEED
}

fn side(field: &'static str, value: Option<u32>) -> Result<u32, SampleError> {
    let v = value.unwrap_or(DEFAULT_SIDE);
    if !(MIN_SIDE..=MAX_SIDE).contains(&v) || !v.is_multiple_of(SIDE_MULTIPLE) {
        return Err(SampleError::Side { field, value: v });
    }
    Ok(v)
}

impl SampleSpec {
    /// Checks a request for batch `batch` (whose id seeds prompts that give no seed).
    pub fn parse(input: SampleRequestInput, batch: SampleBatchId) -> Result<Self, SampleError> {
        if input.prompts.is_empty() || input.prompts.len() > MAX_PROMPTS {
            return Err(SampleError::PromptCount(input.prompts.len()));
        }
        let width = side("width", input.width)?;
        let height = side("height", input.height)?;
        let steps = input.steps.unwrap_or(DEFAULT_STEPS);
        if !(MIN_STEPS..=MAX_STEPS).contains(&steps) {
            return Err(SampleError::Steps(steps));
        }
        let mut prompts = Vec::with_capacity(input.prompts.len());
        for (index, p) in input.prompts.into_iter().enumerate() {
            let prompt = text::clean(&p.prompt, &PROMPT)
                .map_err(|error| SampleError::Text { index, error })?;
            let negative_prompt =
                text::clean_optional(p.negative_prompt.as_deref(), &NEGATIVE_PROMPT)
                    .map_err(|error| SampleError::Text { index, error })?
                    .filter(|n| !n.is_empty());
            let seed = p.seed.unwrap_or_else(|| default_seed(batch, index));
            if seed > MAX_SEED {
                return Err(SampleError::Seed { index, seed });
            }
            let scale = p.scale.unwrap_or(DEFAULT_SCALE);
            if !scale.is_finite() || !(MIN_SCALE..=MAX_SCALE).contains(&scale) {
                return Err(SampleError::Scale { index, scale });
            }
            prompts.push(SamplePrompt {
                prompt,
                negative_prompt,
                seed,
                scale,
            });
        }
        Ok(SampleSpec {
            prompts,
            width,
            height,
            steps,
        })
    }
}

/// Where a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleStatus {
    /// Waiting for its (next) attempt.
    Queued,
    /// An attempt is running on a backend.
    Rendering,
    /// Every image is stored.
    Completed,
    /// Out of attempts (or not retryable); `last_error` says why.
    Failed,
}

impl SampleStatus {
    pub const ALL: [SampleStatus; 4] = [
        SampleStatus::Queued,
        SampleStatus::Rendering,
        SampleStatus::Completed,
        SampleStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SampleStatus::Queued => "queued",
            SampleStatus::Rendering => "rendering",
            SampleStatus::Completed => "completed",
            SampleStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Queued or rendering: counts toward the owner's open batches.
    pub fn is_open(self) -> bool {
        matches!(self, SampleStatus::Queued | SampleStatus::Rendering)
    }
}

/// What happens to a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleEvent {
    /// The engine launched an attempt.
    Launched,
    /// The worker stored every image and reported them.
    Rendered,
    /// The attempt ended without images; `attempts` is how many the batch has used.
    AttemptFailed { attempts: u32, retryable: bool },
}

/// The one transition function of a batch's status; `None`: the event does not apply.
pub fn transition(from: SampleStatus, event: SampleEvent) -> Option<SampleStatus> {
    use SampleStatus::*;
    match (from, event) {
        (Queued, SampleEvent::Launched) => Some(Rendering),
        (Rendering, SampleEvent::Rendered) => Some(Completed),
        (
            Rendering,
            SampleEvent::AttemptFailed {
                attempts,
                retryable,
            },
        ) => Some(if retryable && attempts < MAX_ATTEMPTS {
            Queued
        } else {
            Failed
        }),
        _ => None,
    }
}

/// Whether an attempt that ended with outcome `code` is worth another attempt: everything but
/// bad input (a LoRA file or base model that cannot load renders no better next time).
pub fn failure_is_retryable(code: &str) -> bool {
    crate::outcome::spec(code).is_none_or(|s| s.exit != Some(crate::outcome::exit::BAD_INPUT))
}

/// The wait before attempt `attempts + 1` after `attempts` failed ones: 10 s, then 40 s (×4).
pub fn retry_delay(attempts: u32) -> Duration {
    Duration::from_secs(10 * 4u64.pow(attempts.saturating_sub(1).min(8)))
}

/// Whether a rendering attempt's worker has not been heard of for longer than `window`, so the
/// attempt is failed `lease_expired` and retried: the engine's lease, the window within which a
/// training job must hear from its worker (or its engine) or be reaped. The worker is heard of
/// when it fetches its batch and with every heartbeat (`heard_at`: the latest); a worker that
/// hangs or loses the control plane is so found in minutes, not after the render time limit.
/// Before its first word:
/// - an attempt whose instance is recorded (`launched`) is starting (a pod pulling its image):
///   the backend's account of the instance and the render time limit bound it;
/// - one whose instance was never recorded (the engine that claimed it stopped in the middle of
///   the launch) is silent once `window` has passed since the claim (`since`).
pub fn worker_silent(
    since: DateTime<Utc>,
    heard_at: Option<DateTime<Utc>>,
    launched: bool,
    now: DateTime<Utc>,
    window: Duration,
) -> bool {
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    match heard_at {
        Some(heard) => now - heard > window,
        None if launched => false,
        None => now - since > window,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(prompts: usize) -> SampleRequestInput {
        SampleRequestInput {
            prompts: (0..prompts)
                .map(|i| PromptInput {
                    prompt: format!("a photo of zxq {i}"),
                    negative_prompt: None,
                    seed: None,
                    scale: None,
                })
                .collect(),
            width: None,
            height: None,
            steps: None,
        }
    }

    #[test]
    fn defaults_and_derived_seeds() {
        let b = SampleBatchId::new();
        let s = SampleSpec::parse(input(3), b).unwrap();
        assert_eq!((s.width, s.height, s.steps), (1024, 1024, 30));
        assert!(
            s.prompts
                .iter()
                .all(|p| p.scale == 1.0 && p.seed <= MAX_SEED)
        );
        assert_eq!(s.prompts[1].seed, default_seed(b, 1));
        assert_ne!(s.prompts[0].seed, s.prompts[1].seed);
        assert_eq!(
            SampleSpec::parse(input(3), b).unwrap(),
            s,
            "stable per batch"
        );
    }

    #[test]
    fn every_range_has_its_code() {
        let b = SampleBatchId::new();
        let code = |f: &dyn Fn(&mut SampleRequestInput)| {
            let mut i = input(1);
            f(&mut i);
            SampleSpec::parse(i, b).map(|_| ()).map_err(|e| e.code())
        };
        assert_eq!(code(&|i| i.prompts.clear()), Err("invalid_prompt_count"));
        assert_eq!(code(&|i| *i = input(5)), Err("invalid_prompt_count"));
        assert_eq!(code(&|i| *i = input(4)), Ok(()));
        assert_eq!(
            code(&|i| i.prompts[0].prompt = " ".into()),
            Err("invalid_prompt")
        );
        assert_eq!(
            code(&|i| i.prompts[0].prompt = "x".repeat(1001)),
            Err("invalid_prompt")
        );
        assert_eq!(
            code(&|i| i.prompts[0].prompt = "a\u{202e}b".into()),
            Err("invalid_prompt")
        );
        assert_eq!(
            code(&|i| i.prompts[0].seed = Some(MAX_SEED + 1)),
            Err("invalid_seed")
        );
        assert_eq!(code(&|i| i.prompts[0].seed = Some(MAX_SEED)), Ok(()));
        assert_eq!(
            code(&|i| i.prompts[0].scale = Some(2.01)),
            Err("invalid_scale")
        );
        assert_eq!(
            code(&|i| i.prompts[0].scale = Some(-0.1)),
            Err("invalid_scale")
        );
        assert_eq!(
            code(&|i| i.prompts[0].scale = Some(f64::NAN)),
            Err("invalid_scale")
        );
        assert_eq!(code(&|i| i.prompts[0].scale = Some(0.0)), Ok(()));
        assert_eq!(code(&|i| i.width = Some(100)), Err("invalid_size"));
        assert_eq!(code(&|i| i.height = Some(4096)), Err("invalid_size"));
        assert_eq!(code(&|i| i.width = Some(64)), Ok(()));
        assert_eq!(code(&|i| i.steps = Some(0)), Err("invalid_steps"));
        assert_eq!(code(&|i| i.steps = Some(101)), Err("invalid_steps"));
        let e = SampleSpec::parse(
            {
                let mut i = input(2);
                i.prompts[1].scale = Some(3.0);
                i
            },
            b,
        )
        .unwrap_err();
        assert!(e.to_string().contains("prompts[1].scale"), "{e}");
    }

    #[test]
    fn the_whole_transition_table() {
        use SampleStatus::*;
        let fail = |attempts, retryable| SampleEvent::AttemptFailed {
            attempts,
            retryable,
        };
        let events = [
            SampleEvent::Launched,
            SampleEvent::Rendered,
            fail(1, true),
            fail(2, true),
            fail(3, true),
            fail(1, false),
        ];
        for from in SampleStatus::ALL {
            for ev in events {
                let expected = match (from, ev) {
                    (Queued, SampleEvent::Launched) => Some(Rendering),
                    (Rendering, SampleEvent::Rendered) => Some(Completed),
                    (
                        Rendering,
                        SampleEvent::AttemptFailed {
                            attempts,
                            retryable,
                        },
                    ) => Some(if retryable && attempts < 3 {
                        Queued
                    } else {
                        Failed
                    }),
                    _ => None,
                };
                assert_eq!(transition(from, ev), expected, "{from:?} × {ev:?}");
            }
        }
        assert_eq!(transition(Rendering, fail(3, true)), Some(Failed));
        for s in SampleStatus::ALL {
            assert_eq!(SampleStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn bad_input_is_not_retried() {
        assert!(!failure_is_retryable("bad_lora"));
        assert!(!failure_is_retryable("missing_model"));
        assert!(failure_is_retryable("sample_failed"));
        assert!(failure_is_retryable("lost"));
        assert!(failure_is_retryable("internal"));
    }

    #[test]
    fn backoff_is_10_then_40_seconds() {
        assert_eq!(retry_delay(1), Duration::from_secs(10));
        assert_eq!(retry_delay(2), Duration::from_secs(40));
    }

    #[test]
    fn a_worker_unheard_of_for_the_window_is_silent() {
        let t0: DateTime<Utc> = "2026-11-23T10:00:00Z".parse().unwrap();
        let window = Duration::from_secs(300);
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        // Heard of: the window runs from its latest word, launched or not.
        for launched in [true, false] {
            assert!(!worker_silent(t0, Some(at(100)), launched, at(400), window));
            assert!(worker_silent(t0, Some(at(100)), launched, at(401), window));
        }
        // Never heard of, its instance recorded: starting, never silent by this rule.
        assert!(!worker_silent(t0, None, true, at(86_400), window));
        // Never heard of and never launched: the claim's engine stopped mid-launch.
        assert!(!worker_silent(t0, None, false, at(300), window));
        assert!(worker_silent(t0, None, false, at(301), window));
        // An absurd window never overflows.
        assert!(!worker_silent(
            t0,
            Some(t0),
            true,
            at(86_400),
            Duration::MAX
        ));
    }
}
