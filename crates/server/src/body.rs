//! JSON request bodies read into the types that also describe them in the OpenAPI document
//! (`#[derive(Deserialize, ToSchema)]`), so the document cannot promise a body the server
//! refuses. A body that does not fit says where: [`BodyError::path`].

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// Why a JSON body did not fit its type.
#[derive(Debug)]
pub struct BodyError {
    /// Object keys from the top of the body down to the value that is wrong (empty: the body
    /// itself, e.g. a missing or unknown field).
    pub path: Vec<String>,
    /// serde's message (`missing field \`name\``, `unknown field \`x\`, expected …`, …).
    pub message: String,
}

impl BodyError {
    /// The field a `missing field` or `unknown field` message names.
    pub fn named_field(&self) -> Option<&str> {
        ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| self.message.strip_prefix(p))
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name)
    }

    /// The top-level field the error is about: the first path segment, or the field a
    /// missing/unknown message names.
    pub fn top_field(&self) -> Option<&str> {
        self.path
            .first()
            .map(String::as_str)
            .or_else(|| self.named_field())
    }
}

/// Reads `value` into `T`.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, BodyError> {
    serde_path_to_error::deserialize(value).map_err(|e| BodyError {
        path: e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                _ => None,
            })
            .collect(),
        message: e.into_inner().to_string(),
    })
}

/// The body as JSON; 400 `invalid_json` when it is not.
pub fn json_value(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })
}
