//! The OpenAPI 3.1 document, served at `/openapi.json` with interactive docs at `/docs`.
//!
//! One source for each part, so the document cannot drift from the server:
//! - paths and statuses come from the handlers' `#[utoipa::path]` annotations, plus a 401 on
//!   every operation that names a security scheme and a 503 on every one that reads the
//!   database or the storage (added here, so none can be forgotten);
//! - request bodies are the types the handlers deserialize (`CreateLoraRequest`,
//!   `loraforge_domain::ParamsInput`, …), with `deny_unknown_fields` as `additionalProperties:
//!   false`;
//! - the value constraints are the parser's own: [`document`] writes every rule of
//!   `ParamLimits::rules` (the server's configured limits) and the name/description limits into
//!   the schemas.
//!
//! Tests (`tests::*` below and `tests/api/ops.rs`) hold it to that: every route the router
//! serves is a path of the document, every rule is in the schema, and `/openapi.json` is
//! [`document`] exactly. A new parameter goes into `ParamsInput` with its rule in
//! `ParamLimits::rules`; a new route gets a `#[utoipa::path]`, its handler in `paths(…)` below,
//! and its registration in `crate::routes_table`.

use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use loraforge_domain::name::MAX_NAME_CHARS;
use loraforge_domain::params::{ListRule, Rule, Text};

use crate::routes::lora_models::MAX_DESCRIPTION_CHARS;
use crate::routes::{
    admin, admin_alerts, admin_archival, admin_backends, admin_costs, admin_reports, auth_local,
    client_webhooks, credits, dataset_zip, datasets, events, files, generation, health,
    lora_models, lora_usage, me, me_notifications, metrics, names, params, quotes, references,
    reports, samples, webhooks, worker, worker_samples,
};
use crate::settings::ServerSettings;
use crate::views;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "loraforge",
        description = "Train character LoRAs from a handful of images and keep them in a shared public library. \
            Every /api/v1 route needs `Authorization: Bearer <JWT>` (a user's token; the worker routes take \
            the per-attempt worker token instead; the dataset zip link is signed in its query and the provider \
            webhooks by their own signature headers). Errors are \
            `{\"error\": {\"code\": \"snake_case\", \"message\": \"…\"}}`."
    ),
    paths(
        health::healthz, health::readyz, metrics::metrics,
        datasets::upload, datasets::from_urls, datasets::get,
        lora_models::list, lora_models::create, references::from_references, lora_models::get, lora_models::status,
        lora_models::cancel, lora_models::patch, events::events,
        me::me, me::patch, me::limits, admin::review, admin_backends::list, admin_backends::force,
        admin_costs::get_budget, admin_costs::put_budget, admin_costs::stats,
        admin_alerts::list, admin_alerts::ack, me_notifications::get, me_notifications::put, names::check,
        admin_archival::review, admin_archival::approve,
        worker::job, worker::progress, worker::checkpoint, worker::result, worker::failure,
        files::get_file, files::put_file, dataset_zip::dataset_zip, webhooks::replicate,
        quotes::create_quote, credits::mine, credits::grant,
        client_webhooks::secret, client_webhooks::rotate, client_webhooks::deliveries,
        generation::resolve, lora_usage::usage,
        reports::create, admin_reports::list, admin_reports::hide, admin_reports::unhide,
        admin_reports::dismiss,
        samples::create, samples::list, samples::get,
        worker_samples::job, worker_samples::result, worker_samples::failure,
        worker_samples::heartbeat,
        params::params, auth_local::availability, auth_local::sign_in,
    ),
    components(schemas(
        samples::SampleBatchView, samples::SampleImageView, samples::SampleBatchList,
        loraforge_domain::samples::SampleRequestInput, loraforge_domain::samples::PromptInput,
        loraforge_domain::sample_wire::SampleJob, loraforge_domain::sample_wire::SampleTrainerImage,
        loraforge_domain::sample_wire::SampleUpload, loraforge_domain::sample_wire::SampleResult,
        loraforge_domain::sample_wire::SampleStored, loraforge_domain::sample_wire::SampleFailure,
        loraforge_domain::sample_wire::SampleReportAnswer, loraforge_domain::sample_wire::SampleHeartbeat,
        views::LoraList, views::LoraListItem, views::CreatorView, views::LoraDetails, views::StatusView, views::AttemptView, views::MoneyView,
        views::CreateLoraResponse, views::LimitsView, views::MeView, views::DatasetQuotaView, me::PatchMe, views::ErrorBody, views::ErrorDetail,
        views::DatasetRefView, views::ReferenceImageView, views::ValidationView, views::ValidationImageView,
        datasets::DatasetView, datasets::DatasetImageView, datasets::FromUrlsRequest, datasets::UrlImageRequest,
        references::FromReferencesRequest, references::CharacterReference, references::FromReferencesResponse,
        references::CharacterLoraView, references::CharacterWarning, events::EventView, events::UnavailableView,
        lora_models::CreateLoraRequest, lora_models::PatchLora, admin::ReviewBody, admin::Decision,
        admin_backends::BackendsView, admin_backends::BackendView, admin_backends::TransitionView,
        admin_backends::ForceBreaker, admin_backends::ForcedState,
        admin_costs::BudgetView, admin_costs::SetBudget, admin_costs::StatsView,
        admin_costs::SpendLine, admin_costs::UserCount, admin_costs::ReuseCount,
        admin_alerts::AlertList, admin_alerts::AlertView, admin_alerts::DeliveryView,
        me_notifications::NotificationsView, me_notifications::PutNotifications,
        names::NameCheckView, names::NameProblem,
        admin_archival::ArchivalReview, admin_archival::ArchivalCandidateView, admin_archival::ApproveArchival,
        admin_archival::ArchivalApproved,
        loraforge_domain::ParamsInput, webhooks::WebhookAnswer,
        quotes::QuoteBody, crate::quotes::QuotesView, crate::quotes::QuoteView,
        credits::CreditsView, credits::CreditEntryView, credits::GrantBody, credits::GrantView,
        client_webhooks::WebhookSecretView, client_webhooks::WebhookDeliveriesView,
        client_webhooks::WebhookDeliveryView, client_webhooks::WebhookAttemptView,
        generation::ResolveRequest, generation::CharacterRequest, generation::ResolveResponse,
        generation::CharacterAnswer, generation::LoraAnswer, generation::FallbackAnswer,
        lora_usage::UsageView, lora_usage::DayUsesView,
        views::HiddenView, reports::ReportBody, reports::ReportView, admin_reports::AdminReportList,
        admin_reports::AdminReportView, admin_reports::ReportedLoraView, admin_reports::HideBody,
        admin_reports::ModerationView,
        params::ParamsView, auth_local::LocalAvailability, auth_local::LocalToken,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "library", description = "The public LoRA library and the lifecycle of each LoRA"),
        (name = "datasets", description = "Training images"),
        (name = "account", description = "Your account (display name) and your limits"),
        (name = "ops", description = "Health checks and Prometheus metrics"),
        (name = "admin", description = "Manual review of trained LoRAs and the training backends' circuit breakers (admin tokens only)"),
        (name = "worker", description = "The worker protocol (docs/worker-protocol.md): one training attempt, per-attempt token"),
        (name = "files", description = "Signed links to files on local storage (S3 storage hands out presigned URLs instead)"),
        (name = "moderation", description = "Reporting LoRAs; admins review reports and hide or unhide LoRAs (hidden LoRAs are never deleted)"),
        (name = "webhooks", description = "Providers' signed notifications (no user auth: the signature is the credential)"),
        (name = "generation", description = "The video generator's hand-off: which LoRA (or reference images) to use per character"),
    )
)]
pub struct ApiDoc;

/// The security scheme of user routes.
pub const USER_AUTH: &str = "bearer";
/// The security scheme of worker routes.
pub const WORKER_AUTH: &str = "worker";

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            USER_AUTH,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A user's HS256 JWT (Supabase-style claims); admin routes need role admin",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            WORKER_AUTH,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The per-attempt worker token the control plane hands a worker it starts \
                         (audience `loraforge-worker`); refused on user routes, and user tokens here",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document this server serves: the annotations' document with a 401 on every secured
/// operation and the server's limits (`settings.param_limits`) as schema constraints.
pub fn document(settings: &ServerSettings) -> utoipa::openapi::OpenApi {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document is JSON");
    add_unauthorized(&mut doc);
    add_unavailable(&mut doc);
    let schemas = &mut doc["components"]["schemas"];
    let params = &mut schemas["ParamsInput"]["properties"];
    for (field, rule) in settings.param_limits.rules() {
        apply_rule(&mut params[field], rule);
    }
    let name = Text {
        min_chars: 1,
        max_chars: MAX_NAME_CHARS,
        // Trimmed, so at least one character that is not white space.
        pattern: Some("\\S"),
    };
    let description = Text {
        min_chars: 0,
        max_chars: MAX_DESCRIPTION_CHARS,
        pattern: None,
    };
    apply_rule(
        &mut schemas["CreateLoraRequest"]["properties"]["name"],
        Rule::Text(name),
    );
    for body in ["CreateLoraRequest", "PatchLora", "FromReferencesRequest"] {
        apply_rule(
            &mut schemas[body]["properties"]["description"],
            Rule::Text(description),
        );
    }
    serde_json::from_value(doc).expect("the patched document is an OpenAPI document")
}

/// Every operation with a security requirement can answer 401 (no token, a bad or expired
/// one, or the other kind of token).
fn add_unauthorized(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for op in paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
    {
        let secured = op["security"].as_array().is_some_and(|s| {
            s.iter()
                .any(|req| req.as_object().is_some_and(|r| !r.is_empty()))
        });
        if secured && op["responses"].get("401").is_none() {
            op["responses"]["401"] = error_response(
                "unauthorized: no token, or one that is invalid, expired or of the wrong kind",
            );
        }
    }
}

/// Every operation but the liveness check reads the database or the storage, and answers 503
/// `service_unavailable` (with `Retry-After`) while one of them is down.
fn add_unavailable(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (_, item) in paths.iter_mut().filter(|(path, _)| *path != "/healthz") {
        for op in item
            .as_object_mut()
            .into_iter()
            .flat_map(|i| i.values_mut())
        {
            if op["responses"].get("503").is_none() {
                op["responses"]["503"] = error_response(
                    "service_unavailable: the database or the storage is down; retry after Retry-After seconds",
                );
            }
        }
    }
}

/// A response whose body is the one error shape.
pub fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// Writes `rule` into a property's schema (nullable or not; numeric keywords ignore null).
fn apply_rule(schema: &mut Value, rule: Rule) {
    assert!(
        schema.is_object(),
        "a property with a rule is in the schema"
    );
    match rule {
        Rule::Int(r) => {
            schema["minimum"] = json!(r.min);
            schema["maximum"] = json!(r.max);
            if r.multiple_of > 1 {
                schema["multipleOf"] = json!(r.multiple_of);
            }
        }
        Rule::Float(r) => {
            schema["minimum"] = json!(r.min);
            schema["maximum"] = json!(r.max);
        }
        Rule::Text(t) => apply_text(schema, t),
        Rule::List(ListRule {
            min_items,
            max_items,
            item,
            allowed,
            unique,
        }) => {
            schema["minItems"] = json!(min_items);
            schema["maxItems"] = json!(max_items);
            apply_text(&mut schema["items"], item);
            if let Some(values) = allowed {
                schema["items"]["enum"] = json!(values);
            }
            if unique {
                schema["uniqueItems"] = json!(true);
            }
        }
        Rule::OneOf => {}
    }
}

fn apply_text(schema: &mut Value, t: Text) {
    if t.min_chars > 0 {
        schema["minLength"] = json!(t.min_chars);
    }
    schema["maxLength"] = json!(t.max_chars);
    if let Some(p) = t.pattern {
        schema["pattern"] = json!(p);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use loraforge_domain::ParamLimits;
    use loraforge_domain::params::{MAX_SEED, TARGET_MODULES};

    use super::*;

    fn doc_json(settings: &ServerSettings) -> Value {
        serde_json::to_value(document(settings)).unwrap()
    }

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                ops.push((method.to_uppercase(), path.clone(), op));
            }
        }
        ops
    }

    /// An undocumented route (or a documented one nobody serves) fails here. `/openapi.json`
    /// and `/docs` are the document itself and are not in the table.
    #[test]
    fn the_document_has_exactly_the_served_routes() {
        let settings = ServerSettings::default();
        // The web UI's routes serve files, not the API: the one exception, listed in one place.
        let served: BTreeSet<(String, String)> = crate::served_routes(&settings)
            .into_iter()
            // `/ui/{file}` (the UI's files, the selector's script and demo page: one asset
            // table) and `/` are browser assets, not API operations: served, not documented.
            .filter(|(_, p)| !crate::routes::ui::UI_ROUTES.contains(&p.as_str()))
            .map(|(m, p)| (m.to_string(), p))
            .collect();
        let doc = doc_json(&settings);
        let documented: BTreeSet<(String, String)> = operations(&doc)
            .into_iter()
            .map(|(m, p, _)| (m, p))
            .collect();
        assert_eq!(
            served.difference(&documented).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "served but not documented"
        );
        assert_eq!(
            documented.difference(&served).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "documented but not served"
        );
        assert!(served.len() >= 22, "{served:?}");
    }

    /// The statuses every operation can answer are documented, each error with the error body.
    #[test]
    fn every_operation_documents_its_errors_with_the_error_body() {
        let doc = doc_json(&ServerSettings::default());
        for (method, path, op) in operations(&doc) {
            let responses = op["responses"].as_object().unwrap();
            let security: Vec<String> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r.as_object().unwrap().keys().cloned())
                .collect();
            // Signed in themselves: the dataset zip link (its query) and providers' webhooks.
            // The local sign-in takes no token: a loopback peer on a loopback-bound service is
            // its credential (`routes/auth_local.rs`).
            let signed = path == "/api/v1/worker/jobs/{id}/dataset.zip"
                || path.starts_with("/api/v1/webhooks/")
                || path == "/api/v1/auth/local";
            let wanted = if signed {
                vec![]
            } else if path.starts_with("/api/v1/worker/") {
                vec![WORKER_AUTH]
            } else if path.starts_with("/api/v1/") {
                vec![USER_AUTH]
            } else {
                vec![]
            };
            assert_eq!(security, wanted, "{method} {path}: security");
            if !security.is_empty() {
                assert!(responses.contains_key("401"), "{method} {path}: 401");
            }
            if path.contains("{id}") {
                assert!(responses.contains_key("404"), "{method} {path}: 404");
            }
            if op.get("requestBody").is_some() {
                assert!(responses.contains_key("400"), "{method} {path}: 400");
                assert!(responses.contains_key("413"), "{method} {path}: 413");
            }
            if path != "/healthz" {
                assert!(responses.contains_key("503"), "{method} {path}: 503");
            }
            for (status, resp) in responses {
                if status.starts_with('4') || (status == "503" && path != "/readyz") {
                    assert_eq!(
                        resp["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }

    /// Every rule the parser checks is in the schema with the same numbers, and every field of
    /// the body has a rule: the schema promises exactly what the server accepts. Run with
    /// non-default limits so a hard-coded number would show.
    #[test]
    fn the_params_schema_carries_every_rule_of_the_parser() {
        let settings = ServerSettings {
            param_limits: ParamLimits {
                min_steps: 7,
                min_resolution: 128,
                ..ParamLimits::default()
            },
            ..ServerSettings::default()
        };
        let doc = doc_json(&settings);
        let schema = &doc["components"]["schemas"]["ParamsInput"];
        assert_eq!(schema["additionalProperties"], json!(false));
        let props = schema["properties"].as_object().unwrap();
        let rules = settings.param_limits.rules();
        let ruled: BTreeSet<&str> = rules.iter().map(|(f, _)| *f).collect();
        let documented: BTreeSet<&str> = props.keys().map(String::as_str).collect();
        assert_eq!(ruled, documented, "every documented field has a rule");
        let text_ok = |s: &Value, t: Text| {
            assert_eq!(s["maxLength"], json!(t.max_chars), "{s}");
            if t.min_chars > 0 {
                assert_eq!(s["minLength"], json!(t.min_chars), "{s}");
            }
            assert_eq!(s["pattern"].as_str(), t.pattern, "{s}");
        };
        for (field, rule) in rules {
            let s = &props[field];
            match rule {
                Rule::Int(r) => {
                    assert_eq!(s["minimum"], json!(r.min), "{field}");
                    assert_eq!(s["maximum"], json!(r.max), "{field}");
                    let multiple = (r.multiple_of > 1).then_some(json!(r.multiple_of));
                    assert_eq!(s.get("multipleOf"), multiple.as_ref(), "{field}");
                    assert!(s["type"].to_string().contains("integer"), "{field}: {s}");
                }
                Rule::Float(r) => {
                    // (0.0 comes back as 0: compare the numbers.)
                    assert_eq!(s["minimum"].as_f64(), Some(r.min), "{field}");
                    assert_eq!(s["maximum"].as_f64(), Some(r.max), "{field}");
                    assert!(s["type"].to_string().contains("number"), "{field}: {s}");
                }
                Rule::Text(t) => text_ok(s, t),
                Rule::List(l) => {
                    assert_eq!(s["minItems"], json!(l.min_items), "{field}");
                    assert_eq!(s["maxItems"], json!(l.max_items), "{field}");
                    text_ok(&s["items"], l.item);
                    assert_eq!(
                        s["items"].get("enum"),
                        l.allowed.map(|a| json!(a)).as_ref(),
                        "{field}"
                    );
                    assert_eq!(
                        s.get("uniqueItems"),
                        l.unique.then_some(&json!(true)),
                        "{field}"
                    );
                }
                Rule::OneOf => assert!(s.to_string().contains("$ref"), "{field}: {s}"),
            }
        }
        assert_eq!(props["steps"]["minimum"], json!(7));
        assert_eq!(props["seed"]["maximum"], json!(MAX_SEED));
        let modules = &props["target_modules"];
        assert_eq!(modules["items"]["enum"], json!(TARGET_MODULES));
        assert_eq!(modules["uniqueItems"], json!(true));
        for field in ["class_prompt", "num_class_images", "prior_loss_weight"] {
            assert!(props.contains_key(field), "{field}");
        }
        assert_eq!(props["resolution"]["minimum"], json!(128));
        let create = &doc["components"]["schemas"]["CreateLoraRequest"];
        assert_eq!(create["additionalProperties"], json!(false));
        assert_eq!(create["required"], json!(["name", "dataset_id"]));
        assert_eq!(
            create["properties"]["name"]["maxLength"],
            json!(MAX_NAME_CHARS)
        );
        assert_eq!(
            create["properties"]["description"]["maxLength"],
            json!(MAX_DESCRIPTION_CHARS)
        );
        assert_eq!(
            doc["components"]["schemas"]["PatchLora"]["required"],
            json!(["description"])
        );
    }
}
