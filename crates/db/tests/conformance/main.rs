//! The repository's conformance suite: every story is written once against `Arc<dyn Repository>`
//! and runs on both engines, as `sqlite::<story>` (a temp file) and `postgres::<story>` (a fresh
//! database on the server named by `LORAFORGE_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`). The Postgres tests fail, never skip, when the
//! server is unreachable.

mod alerts;
mod breakers;
mod create;
mod credits;
mod datasets;
mod engine;
mod helpers;
mod ledger;
mod library;
mod library_index;
mod lifecycle;
mod metrics;
mod moderation;
mod name_keys;
mod names;
mod nudges;
mod review;
mod samples;
mod usage;
mod webhooks;

macro_rules! conformance {
    ($($module:ident :: $story:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $story() {
                    crate::helpers::run_sqlite(crate::$module::$story).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $story() {
                    crate::helpers::run_postgres(crate::$module::$story).await
                }
            )*
        }
    };
}

conformance! {
    samples::sample_batches_insert_list_and_limit_open_ones,
    samples::concurrent_sample_requests_stop_at_the_open_limit,
    samples::sample_attempts_claim_launch_complete_and_end,
    samples::failed_sample_attempts_back_off_then_fail,
    samples::sample_listings_page_newest_first,
    samples::sample_heartbeats_record_when_the_worker_was_heard_of,
    alerts::alerts_dedup_within_the_cooldown,
    alerts::concurrent_raises_make_one_alert,
    alerts::acknowledged_alerts_close_and_page,
    alerts::deliveries_are_due_retried_and_done,
    alerts::finished_loras_are_mailed_once_and_opt_out_is_kept,
    create::dataset_round_trip,
    create::create_and_get,
    create::duplicate_name_per_user,
    names::name_use_tells_yours_from_others,
    create::names_are_unique_by_their_key,
    create::monthly_limit_counts_this_window_and_counted_statuses,
    create::concurrent_creates_stop_at_the_limit,
    create::idempotency_replay_and_mismatch,
    create::concurrent_same_key_creates_make_one_lora,
    create::dataset_of_someone_else_is_not_found,
    lifecycle::every_transition_through_apply_event,
    lifecycle::trained_files_and_verdict_are_recorded_with_the_change,
    lifecycle::events_after_is_ordered_and_resumable,
    lifecycle::progress_and_description_are_visible,
    lifecycle::claim_is_fifo_and_leases,
    lifecycle::claim_skips_users_at_max_active,
    lifecycle::concurrent_claimers_never_double_claim,
    breakers::a_breaker_opens_probes_once_and_closes,
    breakers::failures_count_once_per_key_and_only_in_the_window,
    breakers::concurrent_probe_claims_have_one_winner,
    breakers::operators_force_and_every_transition_is_kept,
    engine::heartbeat_extends_only_the_holders_lease,
    engine::job_claim_names_the_holder_and_the_attempt,
    engine::concurrent_heartbeats_and_claims_keep_one_holder,
    engine::expired_leases_and_long_runs_are_found,
    engine::runs_are_recorded_settled_and_ended_once,
    engine::a_review_wait_and_a_rejected_file_are_recorded,
    review::scores_are_kept_and_the_review_queue_holds_only_loras_waiting_for_a_person,
    engine::a_claim_without_capacity_is_undone_with_a_message,
    engine::pending_ids_are_oldest_first,
    engine::start_failures_wait_for_their_time,
    library::list_sorts_filters_and_pages,
    library::search_matches_word_prefixes,
    library::search_follows_new_and_edited_loras,
    datasets::dataset_quota_counts_the_day_and_refuses_past_it,
    datasets::concurrent_dataset_inserts_stop_at_the_quota,
    datasets::unused_datasets_go_and_shared_blobs_stay,
    datasets::a_blob_being_deleted_cannot_be_claimed_or_referenced,
    datasets::trained_datasets_keep_their_images_unless_retention_says_otherwise,
    datasets::display_names_show_in_the_library,
    datasets::idempotent_lora_answers_before_any_work,
    library::search_pages_match_the_sorted_library,
    library::search_total_is_capped_and_flagged,
    ledger::run_costs_are_ledger_entries_and_training_cost_is_their_sum,
    ledger::the_budget_override_and_alert_claims_are_shared,
    credits::grants_reserves_and_history_add_up,
    credits::concurrent_creates_never_overdraw,
    credits::a_crash_between_reserve_and_deduct_charges_once,
    credits::failure_and_cancel_refund_in_full,
    credits::a_lost_file_gives_back_what_the_lora_cost_once,
    webhooks::webhook_is_stored_with_the_lora_and_secrets_are_stable,
    webhooks::batches_move_the_cursor_once,
    webhooks::deliveries_are_leased_attempted_and_logged,
    metrics::the_snapshot_counts_statuses_queue_runs_breakers_and_alerts,
    metrics::seeded_runs_are_ended_for_finished_loras_and_live_for_training_ones,
    usage::uses_count_once_per_generation_and_by_day,
    usage::concurrent_retries_of_a_generation_count_once,
    usage::a_batch_of_generations_is_one_recording,
    nudges::a_backend_keeps_its_latest_nudge,
    library_index::the_index_answers_as_the_store,
    library_index::the_feed_in_small_pages_misses_nothing,
    usage::a_characters_newest_completed_lora_and_its_file_facts,
    moderation::reports_are_one_open_per_reporter_and_listed_with_their_lora,
    moderation::hiding_resolves_open_reports_and_keeps_the_first_hide,
    moderation::the_library_leaves_hidden_loras_out_unless_asked,
}
