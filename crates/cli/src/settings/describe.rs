//! What `loraforge config` shows: the effective settings, secrets only as set or unset; and the
//! values derived from several settings.

use secrecy::SecretString;

use super::{Settings, absolute};

impl Settings {
    /// The circuit breakers' rules from these settings.
    pub fn breaker_rules(&self) -> loraforge_domain::breaker::BreakerRules {
        let secs =
            |v: u64| chrono::Duration::seconds(i64::try_from(v.max(1)).unwrap_or(i64::MAX / 1000));
        loraforge_domain::breaker::BreakerRules {
            failures_to_open: self.breaker_failures.max(1),
            window: secs(self.breaker_window_secs),
            open_for: secs(self.breaker_open_secs),
            probe_timeout: secs(self.breaker_probe_timeout_secs),
        }
    }

    /// The effective configuration as `KEY = value` lines with their environment names; secrets
    /// are shown only as set or unset.
    pub fn describe(&self) -> anyhow::Result<String> {
        let secret =
            |s: &Option<SecretString>| if s.is_some() { "<set>" } else { "<unset>" }.to_owned();
        let rows: Vec<(&str, String)> = vec![
            ("bind", self.bind.to_string()),
            ("data_dir", self.data_dir.display().to_string()),
            (
                "database_url",
                loraforge_db::redact_url(&self.database_url()),
            ),
            (
                "database_max_connections",
                self.database_max_connections.to_string(),
            ),
            (
                "storage_url",
                self.storage_url.clone().unwrap_or_else(|| {
                    format!(
                        "file://{}",
                        absolute(&self.data_dir.join("blobs")).display()
                    )
                }),
            ),
            ("public_url", self.public_url()?.to_string()),
            (
                "jwt_secret",
                if self.jwt_secret.is_some() {
                    "<set>".into()
                } else {
                    format!("<kept in {}>", self.data_dir.join("jwt-secret").display())
                },
            ),
            ("jwt_audience", self.jwt_audience.join(",")),
            (
                "jwt_allow_missing_audience",
                self.jwt_allow_missing_audience.to_string(),
            ),
            ("monthly_limit", self.monthly_limit.to_string()),
            ("max_concurrent_jobs", self.max_concurrent_jobs.to_string()),
            ("creates_per_minute", self.creates_per_minute.to_string()),
            ("reports_per_minute", self.reports_per_minute.to_string()),
            (
                "report_alert_threshold",
                self.report_alert_threshold.to_string(),
            ),
            ("min_steps", self.min_steps.to_string()),
            ("min_resolution", self.min_resolution.to_string()),
            (
                "local_model_roots",
                self.local_model_roots
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("allowed_base_models", self.allowed_base_models.join(",")),
            ("dataset_min_images", self.dataset_min_images.to_string()),
            ("dataset_max_images", self.dataset_max_images.to_string()),
            ("image_min_bytes", self.image_min_bytes.to_string()),
            ("image_max_bytes", self.image_max_bytes.to_string()),
            ("image_min_side", self.image_min_side.to_string()),
            (
                "image_max_megapixels",
                self.image_max_megapixels.to_string(),
            ),
            ("allow_webp", self.allow_webp.to_string()),
            ("datasets_per_day", self.datasets_per_day.to_string()),
            (
                "dataset_bytes_per_day",
                self.dataset_bytes_per_day.to_string(),
            ),
            (
                "unused_dataset_retention_secs",
                self.unused_dataset_retention_secs.to_string(),
            ),
            (
                "trained_dataset_image_retention_secs",
                self.trained_dataset_image_retention_secs
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "<kept>".into()),
            ),
            ("show_creator_emails", self.show_creator_emails.to_string()),
            ("credits", self.credits.clone()),
            (
                "download_url_ttl_secs",
                self.download_url_ttl_secs.to_string(),
            ),
            ("library_cache_ms", self.library_cache_ms.to_string()),
            ("library_index", self.library_index.to_string()),
            (
                "library_index_lag_ms",
                self.library_index_lag_ms.to_string(),
            ),
            (
                "image_url_allowed_hosts",
                self.image_url_allowed_hosts.join(","),
            ),
            (
                "image_url_allow_private_addresses",
                self.image_url_allow_private_addresses.to_string(),
            ),
            (
                "webhook_allow_private_addresses",
                self.webhook_allow_private_addresses.to_string(),
            ),
            (
                "webhook_timeout_secs",
                self.webhook_timeout_secs.to_string(),
            ),
            (
                "download_cache_ttl_secs",
                self.download_cache_ttl_secs.to_string(),
            ),
            (
                "download_timeout_secs",
                self.download_timeout_secs.to_string(),
            ),
            ("lora_min_bytes", self.lora_min_bytes.to_string()),
            ("lora_max_bytes", self.lora_max_bytes.to_string()),
            ("cors_origins", self.cors_origins.join(",")),
            ("s3_endpoint", self.s3_endpoint.clone().unwrap_or_default()),
            ("s3_region", self.s3_region.clone()),
            (
                "s3_access_key_id",
                self.s3_access_key_id.clone().unwrap_or_default(),
            ),
            ("s3_secret_access_key", secret(&self.s3_secret_access_key)),
            ("s3_allow_http", self.s3_allow_http.to_string()),
            ("s3_path_style", self.s3_path_style.to_string()),
            ("log_format", self.log_format.clone()),
            (
                "trainer_python",
                self.trainer_python
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            ("trainer_venv", self.trainer_venv().display().to_string()),
            ("engine_enabled", self.engine_enabled.to_string()),
            ("worker_id", self.worker_id()),
            (
                "training_concurrency",
                self.training_concurrency.to_string(),
            ),
            ("backends", self.backends.join(",")),
            ("runpod_api_key", secret(&self.runpod_api_key)),
            (
                "replicate_webhook_secret",
                secret(&self.replicate_webhook_secret),
            ),
            ("metrics_enabled", self.metrics_enabled.to_string()),
            ("metrics_token", secret(&self.metrics_token)),
            (
                "runpod_graphql_url",
                self.runpod_graphql_url
                    .clone()
                    .unwrap_or_else(|| "https://api.runpod.io/graphql".into()),
            ),
            (
                "runpod_image",
                self.runpod_image.clone().unwrap_or_default(),
            ),
            ("runpod_gpu_types", self.runpod_gpu_types.join(",")),
            ("runpod_cloud_type", self.runpod_cloud_type.clone()),
            (
                "runpod_container_disk_gb",
                self.runpod_container_disk_gb.to_string(),
            ),
            (
                "runpod_volume_gb",
                self.runpod_volume_gb
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            ),
            (
                "runpod_network_volume_id",
                self.runpod_network_volume_id.clone().unwrap_or_default(),
            ),
            ("runpod_max_pods", self.runpod_max_pods.to_string()),
            (
                "runpod_endpoint_id",
                self.runpod_endpoint_id.clone().unwrap_or_default(),
            ),
            (
                "runpod_serverless_url",
                self.runpod_serverless_url
                    .clone()
                    .unwrap_or_else(|| "https://api.runpod.ai/v2".into()),
            ),
            (
                "runpod_serverless_price_per_second",
                self.runpod_serverless_price_per_second.clone(),
            ),
            (
                "runpod_serverless_max_jobs",
                self.runpod_serverless_max_jobs.to_string(),
            ),
            ("runpod_observe_secs", self.runpod_observe_secs.to_string()),
            ("replicate_api_token", secret(&self.replicate_api_token)),
            ("replicate_api_url", self.replicate_api_url.clone()),
            (
                "replicate_model",
                self.replicate_model.clone().unwrap_or_default(),
            ),
            (
                "replicate_destination",
                self.replicate_destination.clone().unwrap_or_default(),
            ),
            (
                "replicate_price_per_second",
                self.replicate_price_per_second.clone(),
            ),
            ("replicate_max_runs", self.replicate_max_runs.to_string()),
            (
                "replicate_observe_secs",
                self.replicate_observe_secs.to_string(),
            ),
            ("docker_host", self.docker_host.clone()),
            (
                "docker_image",
                self.docker_image.clone().unwrap_or_default(),
            ),
            ("docker_gpus", self.docker_gpus.clone()),
            (
                "docker_memory_mb",
                self.docker_memory_mb
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            ),
            ("docker_cpus", self.docker_cpus.clone().unwrap_or_default()),
            (
                "docker_network",
                self.docker_network.clone().unwrap_or_default(),
            ),
            ("docker_max_runs", self.docker_max_runs.to_string()),
            ("docker_observe_secs", self.docker_observe_secs.to_string()),
            (
                "aitoolkit_url",
                self.aitoolkit_url.clone().unwrap_or_default(),
            ),
            ("aitoolkit_token", secret(&self.aitoolkit_token)),
            ("aitoolkit_max_runs", self.aitoolkit_max_runs.to_string()),
            ("aitoolkit_gpu_ids", self.aitoolkit_gpu_ids.clone()),
            (
                "aitoolkit_price_per_hour",
                self.aitoolkit_price_per_hour.clone().unwrap_or_default(),
            ),
            (
                "docker_price_per_hour",
                self.docker_price_per_hour.clone().unwrap_or_default(),
            ),
            (
                "aitoolkit_observe_secs",
                self.aitoolkit_observe_secs.to_string(),
            ),
            (
                "checkpoint_every_steps",
                self.checkpoint_every_steps
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            ),
            (
                "allow_loopback_callbacks",
                self.allow_loopback_callbacks.to_string(),
            ),
            ("job_timeout_secs", self.job_timeout_secs.to_string()),
            ("job_lease_secs", self.job_lease_secs.to_string()),
            ("engine_poll_ms", self.engine_poll_ms.to_string()),
            ("breaker_failures", self.breaker_failures.to_string()),
            ("breaker_window_secs", self.breaker_window_secs.to_string()),
            ("breaker_open_secs", self.breaker_open_secs.to_string()),
            (
                "breaker_probe_timeout_secs",
                self.breaker_probe_timeout_secs.to_string(),
            ),
            (
                "worker_callback_url",
                self.worker_callback_url
                    .clone()
                    .unwrap_or_else(|| "<this server on loopback>".into()),
            ),
            (
                "worker_retry_delay_ms",
                self.worker_retry_delay_ms.to_string(),
            ),
            (
                "validation_similarity_threshold",
                self.validation_similarity_threshold.to_string(),
            ),
            (
                "validation_auto_approve",
                self.validation_auto_approve.to_string(),
            ),
            (
                "validation_scorer",
                self.validation_scorer.clone().unwrap_or_default(),
            ),
            ("debug_fail_uploads", self.debug_fail_uploads.to_string()),
            ("monthly_budget_usd", self.monthly_budget_usd.clone()),
            (
                "budget_alert_percent",
                self.budget_alert_percent.to_string(),
            ),
            (
                "storage_price_per_gb_month",
                self.storage_price_per_gb_month.clone(),
            ),
            ("local_price_per_hour", self.local_price_per_hour.clone()),
            ("decode_budget_bytes", self.decode_budget_bytes.to_string()),
            ("decode_wait_secs", self.decode_wait_secs.to_string()),
            (
                "http_header_timeout_secs",
                self.http_header_timeout_secs.to_string(),
            ),
            (
                "http_body_timeout_secs",
                self.http_body_timeout_secs.to_string(),
            ),
            (
                "http_idle_timeout_secs",
                self.http_idle_timeout_secs.to_string(),
            ),
            (
                "http_max_connections",
                self.http_max_connections.to_string(),
            ),
            (
                "alert_cooldown",
                format!("{}s", self.alert_cooldown()?.as_secs()),
            ),
            (
                "alert_slack_webhook_url",
                secret(&self.alert_slack_webhook_url),
            ),
            ("alert_webhook_url", secret(&self.alert_webhook_url)),
            ("alert_email_to", self.alert_email_to().join(",")),
            ("smtp_url", secret(&self.smtp_url)),
            ("mail_from", self.mail_from.clone().unwrap_or_default()),
        ];
        let m = self.monitor_settings()?;
        let mut rows = rows;
        rows.extend([
            (
                "monitor_training_alert_after",
                format!("{}s", m.training_alert_after.as_secs()),
            ),
            (
                "monitor_training_cancel_after",
                format!("{}s", m.training_cancel_after.as_secs()),
            ),
            (
                "monitor_failure_rate_percent",
                m.failure_rate_percent.to_string(),
            ),
            (
                "monitor_failure_min_samples",
                m.failure_min_samples.to_string(),
            ),
            ("monitor_max_avg_cost", m.max_avg_cost.to_string()),
            ("monitor_loras_per_month", m.loras_per_month.to_string()),
            ("monitor_max_storage_cost", m.max_storage_cost.to_string()),
            ("monitor_cleanup_failures", m.cleanup_failures.to_string()),
        ]);
        Ok(rows
            .into_iter()
            .map(|(k, v)| format!("{k:<34} = {v:<40}  # LORAFORGE_{}", k.to_uppercase()))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}
