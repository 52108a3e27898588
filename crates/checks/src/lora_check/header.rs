//! The safetensors header, parsed and validated without touching tensor data:
//! `u64` little-endian header length, a JSON object of tensors plus an optional
//! `__metadata__` string map, then the data area the tensors' offsets point into.
//!
//! Stricter than "parses": offsets must tile the data area exactly (sorted by start, each
//! tensor begins where the previous ended, the last ends at the end of the file), as the
//! `safetensors` loader requires — so there are no overlaps, no gaps, no trailing bytes, and a
//! zero-size tensor cannot sit inside another tensor's bytes.

use std::collections::BTreeMap;

use serde_json::Value;

use super::LoraError;
use super::dtype::Dtype;

/// Largest header accepted, as in the `safetensors` crate.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    /// Element count (1 for a scalar).
    pub numel: u64,
    /// Byte range inside the data area.
    pub begin: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub metadata: BTreeMap<String, String>,
    /// In file order of their data (sorted by `begin`).
    pub tensors: Vec<TensorInfo>,
    /// Offset of the data area in the file: 8 + header length.
    pub data_start: usize,
}

impl Header {
    /// The bytes of `t` in `file`. Offsets were validated against the file in `parse_header`.
    pub fn data<'a>(&self, file: &'a [u8], t: &TensorInfo) -> &'a [u8] {
        let start = self.data_start + t.begin as usize;
        let end = self.data_start + t.end as usize;
        file.get(start..end).unwrap_or(&[])
    }
}

pub fn parse_header(file: &[u8]) -> Result<Header, LoraError> {
    let file_len = file.len() as u64;
    let len_bytes: [u8; 8] = file
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or(LoraError::Truncated { bytes: file_len })?;
    let header_len = u64::from_le_bytes(len_bytes);
    let available = file_len - 8;
    if !(2..=MAX_HEADER_BYTES).contains(&header_len) || header_len > available {
        return Err(LoraError::HeaderLength {
            header_len,
            available,
        });
    }
    // header_len <= file length, so it fits in usize.
    let data_start = 8 + header_len as usize;
    let json = &file[8..data_start];
    if json.first() != Some(&b'{') {
        return Err(LoraError::HeaderJson(
            "the header does not start with '{'".to_owned(),
        ));
    }
    let object: serde_json::Map<String, Value> =
        serde_json::from_slice(json).map_err(|e| LoraError::HeaderJson(e.to_string()))?;

    let data_len = file_len - data_start as u64;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(object.len());
    for (name, value) in object {
        if name == "__metadata__" {
            metadata = parse_metadata(value)?;
        } else {
            tensors.push(parse_tensor(name, &value)?);
        }
    }
    check_layout(&mut tensors, data_len)?;
    Ok(Header {
        metadata,
        tensors,
        data_start,
    })
}

fn parse_metadata(value: Value) -> Result<BTreeMap<String, String>, LoraError> {
    let Value::Object(map) = value else {
        return Err(LoraError::Metadata(
            "__metadata__ is not an object".to_owned(),
        ));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(LoraError::Metadata(format!(
                "the value of {k:?} is not a string"
            ))),
        })
        .collect()
}

fn parse_tensor(name: String, value: &Value) -> Result<TensorInfo, LoraError> {
    let bad = |reason: &str| LoraError::BadTensor {
        name: name.clone(),
        reason: reason.to_owned(),
    };
    let Value::Object(fields) = value else {
        return Err(bad("its entry is not an object"));
    };
    let dtype_str = fields
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("dtype is missing"))?;
    let dtype = Dtype::parse(dtype_str).ok_or_else(|| LoraError::UnknownDtype {
        name: name.clone(),
        dtype: dtype_str.to_owned(),
    })?;
    let shape = fields
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("shape is missing"))?
        .iter()
        .map(Value::as_u64)
        .collect::<Option<Vec<u64>>>()
        .ok_or_else(|| bad("shape holds something other than non-negative integers"))?;
    let offsets = fields
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("data_offsets is missing"))?;
    let [begin, end] = offsets.as_slice() else {
        return Err(bad("data_offsets does not have two entries"));
    };
    let (Some(begin), Some(end)) = (begin.as_u64(), end.as_u64()) else {
        return Err(bad(
            "data_offsets holds something other than non-negative integers",
        ));
    };
    if end < begin {
        return Err(bad("data_offsets ends before it begins"));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("its shape has more elements than can be counted"))?;
    let expected = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| bad("its shape has more bytes than can be counted"))?;
    if end - begin != expected {
        return Err(LoraError::SizeMismatch {
            name,
            expected,
            actual: end - begin,
        });
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        numel,
        begin,
        end,
    })
}

/// Offsets must tile `0..data_len` exactly, in order.
fn check_layout(tensors: &mut [TensorInfo], data_len: u64) -> Result<(), LoraError> {
    // Zero-size tensors sort before a nonzero tensor starting at the same offset.
    tensors.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    let mut cursor = 0u64;
    let mut previous: Option<&TensorInfo> = None;
    for t in tensors.iter() {
        if t.end > data_len {
            return Err(LoraError::OutOfBounds {
                name: t.name.clone(),
                end: t.end,
                data_len,
            });
        }
        if t.begin < cursor {
            let other = previous.map(|p| p.name.clone()).unwrap_or_default();
            return Err(LoraError::Overlap {
                first: other,
                second: t.name.clone(),
            });
        }
        if t.begin > cursor {
            return Err(LoraError::Gap {
                name: t.name.clone(),
                begin: t.begin,
                expected: cursor,
            });
        }
        cursor = t.end;
        if t.end > t.begin {
            previous = Some(t);
        }
    }
    if cursor != data_len {
        return Err(LoraError::TrailingBytes {
            unused: data_len - cursor,
        });
    }
    Ok(())
}
