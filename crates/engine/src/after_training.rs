//! After training (PRD 2, steps 12–19): a run reported that it trained and uploaded its files;
//! check what is really stored, run the LoRA file check on it, apply the validation rule, and
//! say how the job settles (with the model file's sha256, which the hand-off hands out). Reading only: the decision is applied by `Repository::settle_run`
//! in one commit, so a crash at any line leaves the run unsettled and the engine decides again
//! on its next tick (every step is idempotent). Fed by the worker's result (recorded on the run
//! by the API) and, later, by backends that poll a provider for their results.

use std::sync::Arc;

use loraforge_checks::LoraRules;
use loraforge_db::{PublishVerdict, Settle, TrainedFiles};
use loraforge_domain::handoff;
use loraforge_domain::keys::OutputKeys;
use loraforge_domain::validation::{VALIDATION_IMAGES, ValidationScores, Verdict, judge};
use loraforge_domain::{LoraModel, RunResult, TrainingRun, outcome};
use loraforge_storage::BlobStore;
use sha2::{Digest, Sha256};

/// PRD 2's validation rule, as configured.
#[derive(Debug, Clone)]
pub struct ValidationRules {
    /// Lowest CLIP similarity for a validation image to count (≥ 2 of 3 must).
    pub similarity_threshold: f64,
    /// Without scores, complete without an admin's review.
    pub auto_approve: bool,
}

impl Default for ValidationRules {
    fn default() -> Self {
        Self {
            similarity_threshold: 0.7,
            auto_approve: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AfterTraining {
    store: Arc<dyn BlobStore>,
    lora_rules: LoraRules,
    validation: ValidationRules,
}

impl AfterTraining {
    /// Deletes every checkpoint of a job that has ended for good; `Err` (to try later) when the
    /// store fails.
    pub async fn forget_checkpoints(&self, lora: &LoraModel) -> Result<usize, String> {
        let prefix = loraforge_domain::keys::checkpoints_of(lora.creator.id, lora.id);
        let found = self
            .store
            .list(&prefix)
            .await
            .map_err(|e| format!("listing checkpoints: {e}"))?;
        for (key, _) in &found {
            self.store
                .delete(key)
                .await
                .map_err(|e| format!("deleting {key}: {e}"))?;
        }
        Ok(found.len())
    }

    /// The LoRAs that have checkpoints in the blob store (for the sweep of ended jobs' ones).
    pub async fn loras_with_checkpoints(&self) -> Result<Vec<loraforge_domain::LoraId>, String> {
        let found = self
            .store
            .list(loraforge_domain::keys::CHECKPOINTS_PREFIX)
            .await
            .map_err(|e| format!("listing checkpoints: {e}"))?;
        let mut loras: Vec<loraforge_domain::LoraId> = found
            .iter()
            .filter_map(|(key, _)| {
                key.strip_prefix(loraforge_domain::keys::CHECKPOINTS_PREFIX)?
                    .split('/')
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .collect();
        loras.sort();
        loras.dedup();
        Ok(loras)
    }

    pub fn new(
        store: Arc<dyn BlobStore>,
        lora_rules: LoraRules,
        validation: ValidationRules,
    ) -> Self {
        Self {
            store,
            lora_rules,
            validation,
        }
    }

    /// How `run` of `lora`, which reported `trained`, settles. `Err` when it cannot be decided
    /// now (storage unreachable): try again later.
    pub async fn decide(&self, lora: &LoraModel, run: &TrainingRun) -> Result<Settle, String> {
        let retry = |why: String| Settle::Requeue {
            counted: true,
            reason: outcome::describe("upload_missing", Some(&why)),
        };
        let Some(result) = run
            .result
            .as_ref()
            .and_then(|r| serde_json::from_value::<RunResult>(r.clone()).ok())
        else {
            return Ok(Settle::Requeue {
                counted: true,
                reason: "the worker ended without reporting its result".into(),
            });
        };
        let keys = OutputKeys::of(lora.creator.id, lora.id);
        let storage =
            |e: loraforge_storage::StorageError| format!("checking the stored files: {e}");
        let size = |key: &str| {
            let key = key.to_owned();
            async move { self.store.head(&key).await.map(|m| m.map(|m| m.size)) }
        };
        match size(&keys.model).await.map_err(storage)? {
            Some(n) if n == result.model.bytes => {}
            Some(n) => {
                return Ok(retry(format!(
                    "{} holds {n} bytes, the worker reported {}",
                    keys.model, result.model.bytes
                )));
            }
            None => return Ok(retry(format!("{} is not stored", keys.model))),
        }
        if let Some(kohya) = &result.kohya {
            match size(&keys.kohya).await.map_err(storage)? {
                Some(n) if n == kohya.bytes => {}
                Some(n) => {
                    return Ok(retry(format!(
                        "{} holds {n} bytes, the worker reported {}",
                        keys.kohya, kohya.bytes
                    )));
                }
                None => return Ok(retry(format!("{} is not stored", keys.kohya))),
            }
        }
        let images = result.validation.images.min(VALIDATION_IMAGES);
        let mut image_keys = Vec::with_capacity(images);
        for key in keys.validation.iter().take(images) {
            if size(key).await.map_err(storage)?.is_none() {
                return Ok(retry(format!("{key} is not stored")));
            }
            image_keys.push(key.clone());
        }
        let bytes = self.store.get(&keys.model).await.map_err(storage)?;
        let rules = self.lora_rules.clone();
        // The stored file's size is the reported one (checked above), so the worker's hash
        // stands for it; without one, the bytes read for the check are hashed. Recorded with
        // the files, so the hand-off never hashes a LoRA published here.
        let reported =
            handoff::reported_sha256(&result.model, result.model.bytes).map(str::to_owned);
        let (check, sha256) = tokio::task::spawn_blocking(move || {
            let sha256 = reported.unwrap_or_else(|| hex::encode(Sha256::digest(&bytes)));
            (
                loraforge_checks::inspect_lora(&bytes, &rules).map(|_| ()),
                sha256,
            )
        })
        .await
        .map_err(|e| format!("the LoRA file check did not finish: {e}"))?;
        let files = TrainedFiles {
            storage_key: keys.model.clone(),
            file_size: result.model.bytes,
            sha256: Some(sha256),
            validation_image_keys: image_keys,
        };
        if let Err(problem) = check {
            return Ok(Settle::Reject {
                files,
                reason: format!("the trained file failed its check: {problem}"),
            });
        }
        let v = &self.validation;
        let verdict = match judge(
            images,
            result.validation.scores.as_deref(),
            v.similarity_threshold,
            v.auto_approve,
        ) {
            Verdict::Pass => PublishVerdict::Complete,
            Verdict::Fail(reason) => PublishVerdict::Fail(reason),
            Verdict::NeedsReview => PublishVerdict::Review,
        };
        // Kept with the LoRA, with the threshold of this decision: its page shows each image's
        // score and whether it passed, whatever the setting is later.
        let scores = result.validation.scores.map(|scores| ValidationScores {
            scores,
            threshold: v.similarity_threshold,
        });
        Ok(Settle::Publish {
            files,
            verdict,
            scores,
        })
    }
}
