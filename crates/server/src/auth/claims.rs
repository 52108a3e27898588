//! Reading the claims of a verified token without trusting their shape: times are whole seconds
//! in a sane range (never an overflow, whatever the number), audiences are a string or a list of
//! strings, and which audiences a user's token may carry is the operator's [`AudiencePolicy`].

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Allowed clock skew when checking `exp` and `nbf`, seconds.
pub const LEEWAY_SECS: i64 = 30;

/// The latest time a token may name: 9999-12-31T23:59:59Z. Anything later (`i64::MAX`, 1e300) is
/// not a date a real issuer writes, and refusing it keeps every sum below far from overflow.
pub(crate) const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// The audiences a user's token may carry. Supabase access tokens carry `aud: "authenticated"`
/// (a string, or a list holding it); tokens this service issues itself carry the first accepted
/// audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudiencePolicy {
    accepted: Vec<String>,
    allow_missing: bool,
}

impl Default for AudiencePolicy {
    /// `authenticated` (Supabase's signed-in users) and tokens without `aud`.
    fn default() -> Self {
        Self {
            accepted: vec!["authenticated".to_owned()],
            allow_missing: true,
        }
    }
}

impl AudiencePolicy {
    /// `accepted`: audiences a token may name (one match is enough, as RFC 7519 §4.1.3 asks);
    /// `allow_missing`: whether a token without `aud` is accepted too. The worker audience is
    /// never a user's.
    pub fn new(accepted: &[String], allow_missing: bool) -> Result<Self, String> {
        let accepted: Vec<String> = accepted
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if accepted
            .iter()
            .any(|a| a == super::WORKER_AUDIENCE || a == super::SAMPLE_WORKER_AUDIENCE)
        {
            return Err(format!(
                "`{}` is the audience of workers' job tokens and cannot be a user audience",
                super::WORKER_AUDIENCE
            ));
        }
        if accepted.is_empty() && !allow_missing {
            return Err(
                "no audience is accepted and tokens without one are refused: every token would be refused"
                    .to_owned(),
            );
        }
        Ok(Self {
            accepted,
            allow_missing,
        })
    }

    /// The audience put into tokens this service issues (none when the list is empty).
    pub fn issued(&self) -> Option<&str> {
        self.accepted.first().map(String::as_str)
    }

    /// Whether a user's token with these audiences (`None`: no `aud`) is accepted.
    pub fn check(&self, aud: Option<&[String]>) -> Result<(), ApiError> {
        match aud {
            None if self.allow_missing => Ok(()),
            None => Err(ApiError::unauthorized(
                "invalid_audience",
                format!(
                    "the token has no `aud` claim; this server accepts tokens for {}",
                    self.accepted.join(", ")
                ),
            )),
            Some(list)
                if list
                    .iter()
                    .any(|a| a == super::WORKER_AUDIENCE || a == super::SAMPLE_WORKER_AUDIENCE) =>
            {
                Err(ApiError::unauthorized(
                    "invalid_audience",
                    "this is a worker's job token; user routes take a user's token",
                ))
            }
            Some(list) if list.iter().any(|a| self.accepted.contains(a)) => Ok(()),
            Some(list) => Err(ApiError::unauthorized(
                "invalid_audience",
                format!(
                    "the token is for {:?}, and this server accepts {}",
                    list,
                    if self.accepted.is_empty() {
                        "only tokens without `aud`".to_owned()
                    } else {
                        self.accepted.join(", ")
                    }
                ),
            )),
        }
    }
}

/// `aud` as a list: a string is a list of one; absent is `None`; anything else is refused.
pub fn audiences(claims: &Map<String, Value>) -> Result<Option<Vec<String>>, ApiError> {
    let bad = || {
        ApiError::unauthorized(
            "invalid_token",
            "the token's `aud` claim must be a string or a list of strings",
        )
    };
    match claims.get("aud") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

/// A NumericDate claim (`exp`, `nbf`, `iat`): whole seconds since 1970 between 0 and the year
/// 9999. Fractions, negatives, strings and numbers past that are refused, never wrapped.
pub fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, ApiError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .filter(|t| (0..=MAX_NUMERIC_DATE).contains(t))
            .map(Some)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "invalid_token",
                    format!(
                        "the token's `{name}` claim must be whole seconds since 1970 (before the year 10000)"
                    ),
                )
            }),
    }
}

/// A required string claim.
pub fn string<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    match claims.get(name) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(ApiError::unauthorized(
            "invalid_token",
            format!("the token has no `{name}` claim"),
        )),
        Some(_) => Err(ApiError::unauthorized(
            "invalid_token",
            format!("the token's `{name}` claim must be a string"),
        )),
    }
}

/// The validity window: `exp` is required, `nbf` optional, both with [`LEEWAY_SECS`] of skew.
/// `iat` need only be a valid date (issuers' clocks differ; `nbf` is the claim for "not before").
pub fn check_window(
    claims: &Map<String, Value>,
    now: DateTime<Utc>,
    expired: &str,
) -> Result<(), ApiError> {
    let exp = numeric_date(claims, "exp")?
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "the token has no `exp` claim"))?;
    let nbf = numeric_date(claims, "nbf")?;
    numeric_date(claims, "iat")?;
    let now = now.timestamp();
    // Both sides are within 0..=MAX_NUMERIC_DATE + LEEWAY_SECS: no overflow is possible.
    if exp + LEEWAY_SECS <= now {
        return Err(ApiError::unauthorized("token_expired", expired.to_owned()));
    }
    if let Some(nbf) = nbf
        && nbf > now.saturating_add(LEEWAY_SECS)
    {
        return Err(ApiError::unauthorized(
            "token_not_yet_valid",
            format!(
                "the token is not valid before {} (its `nbf`); check this computer's clock or wait",
                DateTime::<Utc>::from_timestamp(nbf, 0)
                    .map_or_else(|| nbf.to_string(), |t| t.to_rfc3339())
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn now() -> DateTime<Utc> {
        "2026-11-23T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn numeric_dates_outside_the_sane_range_are_refused_not_wrapped() {
        for bad in [
            json!(i64::MAX),
            json!(u64::MAX),
            json!(-1),
            json!(i64::MIN),
            json!(1.5),
            json!(1.8e9),
            json!(1e300),
            json!("1800000000"),
            json!(true),
            json!([1]),
            json!(MAX_NUMERIC_DATE + 1),
        ] {
            let e = numeric_date(&map(json!({ "exp": bad })), "exp").unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (401, "invalid_token"), "{bad}");
        }
        assert_eq!(
            numeric_date(&map(json!({ "exp": MAX_NUMERIC_DATE })), "exp").unwrap(),
            Some(MAX_NUMERIC_DATE)
        );
        assert_eq!(numeric_date(&map(json!({})), "nbf").unwrap(), None);
    }

    #[test]
    fn the_window_honours_exp_and_nbf_with_the_same_leeway() {
        let t = now().timestamp();
        let ok = |c: Value| check_window(&map(c), now(), "expired");
        assert!(ok(json!({ "exp": t - LEEWAY_SECS + 1 })).is_ok());
        assert_eq!(
            ok(json!({ "exp": t - LEEWAY_SECS })).unwrap_err().code,
            "token_expired"
        );
        assert!(ok(json!({ "exp": t + 60, "nbf": t + LEEWAY_SECS })).is_ok());
        assert_eq!(
            ok(json!({ "exp": t + 60, "nbf": t + LEEWAY_SECS + 1 }))
                .unwrap_err()
                .code,
            "token_not_yet_valid"
        );
        assert_eq!(ok(json!({ "nbf": t })).unwrap_err().code, "invalid_token");
        assert_eq!(
            ok(json!({ "exp": MAX_NUMERIC_DATE, "iat": i64::MAX }))
                .unwrap_err()
                .code,
            "invalid_token"
        );
        assert!(ok(json!({ "exp": MAX_NUMERIC_DATE, "iat": 0, "nbf": 0 })).is_ok());
    }

    #[test]
    fn audiences_are_a_string_or_a_list_and_one_match_is_enough() {
        let p = AudiencePolicy::default();
        let aud = |v: Value| audiences(&map(json!({ "aud": v })));
        assert!(
            p.check(aud(json!("authenticated")).unwrap().as_deref())
                .is_ok()
        );
        assert!(
            p.check(aud(json!(["other", "authenticated"])).unwrap().as_deref())
                .is_ok()
        );
        assert!(p.check(None).is_ok());
        for refused in [json!("anon"), json!([]), json!(["anon", "service_role"])] {
            let e = p
                .check(aud(refused.clone()).unwrap().as_deref())
                .unwrap_err();
            assert_eq!(e.code, "invalid_audience", "{refused}");
        }
        let e = p
            .check(
                aud(json!(["authenticated", super::super::WORKER_AUDIENCE]))
                    .unwrap()
                    .as_deref(),
            )
            .unwrap_err();
        assert_eq!(e.code, "invalid_audience");
        for malformed in [json!(1), json!([1]), json!({"a": 1})] {
            assert_eq!(aud(malformed).unwrap_err().code, "invalid_token");
        }

        let strict = AudiencePolicy::new(&["my-app".to_owned()], false).unwrap();
        assert_eq!(strict.check(None).unwrap_err().code, "invalid_audience");
        assert!(strict.check(Some(&["my-app".to_owned()])).is_ok());
        assert_eq!(
            strict
                .check(Some(&["authenticated".to_owned()]))
                .unwrap_err()
                .code,
            "invalid_audience"
        );
        assert_eq!(strict.issued(), Some("my-app"));
        assert!(AudiencePolicy::new(&[], false).is_err());
        assert!(AudiencePolicy::new(&[super::super::WORKER_AUDIENCE.to_owned()], true).is_err());
        let none_only = AudiencePolicy::new(&[" ".to_owned()], true).unwrap();
        assert_eq!(none_only.issued(), None);
        assert!(none_only.check(None).is_ok());
    }
}
