//! `GET /api/v1/params`: the training parameters' defaults and ranges, from the one source the
//! parser checks against (`ParamLimits::rules`, with this server's configured limits), so forms
//! can show and check ranges without a copy of them.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use loraforge_domain::TrainingParams;
use loraforge_domain::params::{LrScheduler, Optimizer, Rule, TrainingType};

use crate::auth::AuthUser;
use crate::state::AppState;

/// Every parameter with its rule, and the defaults a create fills in.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParamsView {
    /// One entry per field of `params`, in the order of the request body.
    #[schema(value_type = Vec<Object>)]
    pub fields: Vec<Value>,
    /// What a field left out takes.
    #[schema(value_type = Object)]
    pub defaults: Value,
}

/// The parameters' defaults and ranges (`kind` int/float with `min`, `max`, `multiple_of`;
/// text with `min_chars`/`max_chars`; list with `min_items`, `max_items`, `allowed`; one_of).
#[utoipa::path(get, path = "/api/v1/params", tag = "library", security(("bearer" = [])),
    responses((status = 200, body = ParamsView)))]
pub async fn params(State(state): State<AppState>, _user: AuthUser) -> Json<ParamsView> {
    let limits = &state.settings().param_limits;
    let fields = limits
        .rules()
        .into_iter()
        .map(|(name, rule)| rule_json(name, rule))
        .collect();
    let defaults = TrainingParams {
        base_model: limits
            .allowed_base_models
            .first()
            .cloned()
            .unwrap_or_else(|| TrainingParams::default().base_model),
        ..TrainingParams::default()
    };
    Json(ParamsView {
        fields,
        defaults: serde_json::to_value(defaults).unwrap_or(Value::Null),
    })
}

fn rule_json(name: &str, rule: Rule) -> Value {
    match rule {
        Rule::Int(r) => {
            json!({"name": name, "kind": "int", "min": r.min, "max": r.max, "multiple_of": r.multiple_of})
        }
        Rule::Float(r) => json!({"name": name, "kind": "float", "min": r.min, "max": r.max}),
        Rule::Text(t) => {
            json!({"name": name, "kind": "text", "min_chars": t.min_chars, "max_chars": t.max_chars})
        }
        Rule::List(l) => json!({"name": name, "kind": "list", "min_items": l.min_items,
            "max_items": l.max_items, "max_chars": l.item.max_chars, "allowed": l.allowed}),
        Rule::OneOf => json!({"name": name, "kind": "one_of", "allowed": one_of(name)}),
    }
}

/// The values of the enum fields, as serde spells them on the wire. The matches are exhaustive
/// so a new variant cannot be left out of the list without a compile error here.
fn one_of(name: &str) -> Vec<Value> {
    match name {
        "type" => {
            let all = [TrainingType::Lora, TrainingType::Dreambooth];
            for t in all {
                match t {
                    TrainingType::Lora | TrainingType::Dreambooth => {}
                }
            }
            all.iter().map(|v| json!(v)).collect()
        }
        "optimizer" => {
            let all = [Optimizer::AdamW, Optimizer::AdamW8bit];
            for o in all {
                match o {
                    Optimizer::AdamW | Optimizer::AdamW8bit => {}
                }
            }
            all.iter().map(|v| json!(v)).collect()
        }
        "lr_scheduler" => {
            let all = [
                LrScheduler::CosineWithWarmup,
                LrScheduler::Constant,
                LrScheduler::ConstantWithWarmup,
                LrScheduler::Linear,
            ];
            for s in all {
                match s {
                    LrScheduler::CosineWithWarmup
                    | LrScheduler::Constant
                    | LrScheduler::ConstantWithWarmup
                    | LrScheduler::Linear => {}
                }
            }
            all.iter().map(|v| json!(v)).collect()
        }
        _ => Vec::new(),
    }
}
