//! HMAC-SHA256 tokens for the links this service serves itself (`/files/{key}?expires=&sig=`).
//!
//! The MAC covers a version tag, the exact key and the expiry, so a token opens one object until
//! one instant and nothing else. The signature is lower-case hex of the full 32-byte tag; it is
//! checked in constant time.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

use crate::{Result, SignedQuery, StorageError};

type HmacSha256 = Hmac<Sha256>;

/// Domain separation: a MAC made here cannot be replayed as some other loraforge token that
/// happens to share the key, and a future format can bump the version.
const DOMAIN: &str = "loraforge-file-v1";
/// Upload links sign a different message, so a download link can never be used to write.
const PUT_DOMAIN: &str = "loraforge-file-put-v1";

/// What a signed link lets its holder do with the one object it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// GET the object.
    Read,
    /// PUT (replace) the object.
    Write,
}
/// Shortest signing key that gets no warning, in bytes: HMAC-SHA256's own output size. Shorter
/// (but non-empty) keys still work, so test fixtures can stay short.
pub const RECOMMENDED_KEY_LEN: usize = 32;
/// Length of a signature in hex characters.
const SIG_HEX_LEN: usize = 64;

/// Signs and checks local download tokens. `Debug` never shows the key.
#[derive(Clone)]
pub struct UrlSigner {
    key: Arc<SecretSlice<u8>>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSigner")
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl UrlSigner {
    /// Takes the secret key: raw bytes, not empty, ideally [`RECOMMENDED_KEY_LEN`] random bytes
    /// or more (shorter ones log a warning). Accepts a `SecretSlice<u8>` or an `Arc` of one, so
    /// the settings can share theirs.
    pub fn new(key: impl Into<Arc<SecretSlice<u8>>>) -> Result<Self> {
        let key = key.into();
        let len = key.expose_secret().len();
        if len == 0 {
            return Err(StorageError::Config("the file signing key is empty".into()));
        }
        if len < RECOMMENDED_KEY_LEN {
            tracing::warn!(
                len,
                "the file signing key is shorter than {RECOMMENDED_KEY_LEN} bytes"
            );
        }
        Ok(Self { key })
    }

    /// The hex signature for `key` valid until `expires_unix` (seconds since the epoch).
    pub fn sign(&self, key: &str, expires_unix: i64) -> Result<String> {
        self.sign_for(Access::Read, key, expires_unix)
    }

    /// The hex signature granting `access` to `key` until `expires_unix`.
    pub fn sign_for(&self, access: Access, key: &str, expires_unix: i64) -> Result<String> {
        Ok(hex::encode(
            self.mac(access, key, expires_unix)?.finalize().into_bytes(),
        ))
    }

    /// Checks a token for `key` at `now`: `BadSignature` unless `query.sig` is exactly the MAC
    /// of this key and expiry (so a changed expiry is a bad signature, not a longer link), then
    /// `LinkExpired` once `now >= expires`.
    pub fn verify(&self, key: &str, query: &SignedQuery, now: DateTime<Utc>) -> Result<()> {
        self.verify_for(Access::Read, key, query, now)
    }

    /// [`Self::verify`] for a link granting `access`.
    pub fn verify_for(
        &self,
        access: Access,
        key: &str,
        query: &SignedQuery,
        now: DateTime<Utc>,
    ) -> Result<()> {
        if query.sig.len() != SIG_HEX_LEN {
            return Err(StorageError::BadSignature);
        }
        let tag = hex::decode(&query.sig).map_err(|_| StorageError::BadSignature)?;
        // `verify_slice` compares in constant time and also rejects a wrong length.
        self.mac(access, key, query.expires)?
            .verify_slice(&tag)
            .map_err(|_| StorageError::BadSignature)?;
        if now.timestamp() >= query.expires {
            return Err(StorageError::LinkExpired);
        }
        Ok(())
    }

    fn mac(&self, access: Access, key: &str, expires_unix: i64) -> Result<HmacSha256> {
        let domain = match access {
            Access::Read => DOMAIN,
            Access::Write => PUT_DOMAIN,
        };
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(self.key.expose_secret())
            .map_err(|_| StorageError::Config("unusable file signing key".into()))?;
        // Keys cannot contain '\n' and a formatted i64 never does, so the message is unambiguous.
        mac.update(format!("{domain}\n{key}\n{expires_unix}").as_bytes());
        Ok(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const KEY: &str = "loras/abc/model.safetensors";
    const EXPIRES: i64 = 1_800_000_000;

    fn signer() -> UrlSigner {
        UrlSigner::new(SecretSlice::from(vec![7u8; 32])).expect("32-byte key")
    }

    fn at(unix: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(unix, 0).single().expect("valid instant")
    }

    fn query(sig: String, expires: i64) -> SignedQuery {
        SignedQuery { expires, sig }
    }

    fn signed() -> SignedQuery {
        query(signer().sign(KEY, EXPIRES).expect("sign"), EXPIRES)
    }

    #[test]
    fn valid_token_opens_until_just_before_expiry() {
        let s = signer();
        let q = signed();
        assert_eq!(q.sig.len(), 64);
        assert!(
            q.sig
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(s.verify(KEY, &q, at(EXPIRES - 3600)).is_ok());
        assert!(s.verify(KEY, &q, at(EXPIRES - 1)).is_ok());
        // Half a second before the expiry instant is still inside.
        let just_before = at(EXPIRES) - chrono::Duration::milliseconds(500);
        assert!(s.verify(KEY, &q, just_before).is_ok());
    }

    #[test]
    fn expires_exactly_at_the_boundary() {
        let s = signer();
        let q = signed();
        assert!(matches!(
            s.verify(KEY, &q, at(EXPIRES)),
            Err(StorageError::LinkExpired)
        ));
        assert!(matches!(
            s.verify(KEY, &q, at(EXPIRES + 1)),
            Err(StorageError::LinkExpired)
        ));
    }

    #[test]
    fn tampered_key_is_rejected() {
        let q = signed();
        for other in [
            "loras/abc/model.safetensorz",
            "loras/abc/model",
            "loras/abd/model.safetensors",
        ] {
            assert!(matches!(
                signer().verify(other, &q, at(0)),
                Err(StorageError::BadSignature)
            ));
        }
    }

    #[test]
    fn tampered_expiry_is_a_bad_signature_even_when_expired() {
        let q = signed();
        let longer = query(q.sig.clone(), EXPIRES + 86_400);
        assert!(matches!(
            signer().verify(KEY, &longer, at(0)),
            Err(StorageError::BadSignature)
        ));
        let earlier = query(q.sig, EXPIRES - 1);
        assert!(matches!(
            signer().verify(KEY, &earlier, at(EXPIRES + 10)),
            Err(StorageError::BadSignature)
        ));
    }

    #[test]
    fn tampered_or_garbage_signatures_are_rejected() {
        let q = signed();
        let flip = |i: usize| {
            let mut bytes = q.sig.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            String::from_utf8(bytes).expect("ascii")
        };
        let truncated = q.sig[..62].to_owned();
        let extended = format!("{}00", q.sig);
        let non_hex = format!("{}zz", &q.sig[..62]);
        for sig in [
            flip(0),
            flip(63),
            truncated,
            extended,
            non_hex,
            String::new(),
            "é".repeat(32),
        ] {
            assert!(
                matches!(
                    signer().verify(KEY, &query(sig.clone(), EXPIRES), at(0)),
                    Err(StorageError::BadSignature)
                ),
                "{sig:?}"
            );
        }
    }

    #[test]
    fn read_and_write_links_are_not_interchangeable() {
        let s = signer();
        let put = query(
            s.sign_for(Access::Write, KEY, EXPIRES).expect("sign"),
            EXPIRES,
        );
        assert!(s.verify_for(Access::Write, KEY, &put, at(0)).is_ok());
        assert!(matches!(
            s.verify(KEY, &put, at(0)),
            Err(StorageError::BadSignature)
        ));
        assert!(matches!(
            s.verify_for(Access::Write, KEY, &signed(), at(0)),
            Err(StorageError::BadSignature)
        ));
    }

    #[test]
    fn another_key_signs_differently() {
        let other = UrlSigner::new(SecretSlice::from(vec![8u8; 32])).expect("key");
        assert!(matches!(
            other.verify(KEY, &signed(), at(0)),
            Err(StorageError::BadSignature)
        ));
    }

    #[test]
    fn empty_keys_are_refused_and_debug_hides_the_key() {
        assert!(matches!(
            UrlSigner::new(SecretSlice::from(Vec::<u8>::new())),
            Err(StorageError::Config(_))
        ));
        assert!(UrlSigner::new(SecretSlice::from(b"file-key".to_vec())).is_ok());
        let shown = format!("{:?}", signer());
        assert_eq!(shown, "UrlSigner { key: \"[REDACTED]\" }");
    }
}
