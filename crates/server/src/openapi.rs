//! The OpenAPI 3.1 document, generated from the handlers' annotations, served at
//! `/openapi.json` with interactive docs at `/docs`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{admin, datasets, events, health, lora_models, me, references};
use crate::views;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "loraforge",
        description = "Train character LoRAs from a handful of images and keep them in a shared public library. \
            Every /api/v1 route needs `Authorization: Bearer <JWT>`. Errors are \
            `{\"error\": {\"code\": \"snake_case\", \"message\": \"…\"}}`."
    ),
    paths(
        health::healthz, health::readyz,
        datasets::upload, datasets::from_urls, datasets::get,
        lora_models::list, lora_models::create, references::from_references, lora_models::get, lora_models::status,
        lora_models::cancel, lora_models::patch, events::events,
        me::me, me::patch, me::limits, admin::review,
    ),
    components(schemas(
        views::LoraList, views::LoraListItem, views::CreatorView, views::LoraDetails, views::StatusView, views::AttemptView, views::MoneyView,
        views::CreateLoraResponse, views::LimitsView, views::MeView, views::DatasetQuotaView, me::PatchMe, views::ErrorBody, views::ErrorDetail,
        views::DatasetRefView, views::ReferenceImageView, views::ValidationView,
        datasets::DatasetView, datasets::DatasetImageView, datasets::FromUrlsRequest, datasets::UrlImageRequest,
        references::FromReferencesRequest, references::CharacterReference, references::FromReferencesResponse,
        references::CharacterLoraView, references::CharacterWarning, events::EventView,
        lora_models::CreateLoraRequest, lora_models::PatchLora, admin::ReviewBody, admin::Decision,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "library", description = "The public LoRA library and the lifecycle of each LoRA"),
        (name = "datasets", description = "Training images"),
        (name = "account", description = "Your account (display name) and your limits"),
        (name = "ops", description = "Health checks"),
        (name = "admin", description = "Manual review of trained LoRAs (admin tokens only)"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
