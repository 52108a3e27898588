//! NaN/Inf scan over floating-point tensor data, on the raw little-endian bits.
//!
//! Data offsets in safetensors need not be aligned, so elements are read with
//! `chunks_exact` + `from_le_bytes` (never a slice cast, which panics when misaligned).
//! Work is split into fixed-size pieces across tensors so one big tensor still uses every
//! core; a first pass only counts non-finite values (a loop the compiler vectorises), and only
//! tensors with some are walked again to tell NaN from Inf.

use rayon::prelude::*;
use serde::Serialize;

use super::dtype::Dtype;
use super::header::{Header, TensorInfo};

/// Bytes per unit of parallel work (a multiple of every element size).
const PIECE_BYTES: usize = 1 << 20;

/// Non-finite values found in one tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NonFiniteTensor {
    pub name: String,
    pub nan: u64,
    pub inf: u64,
}

/// Every float tensor with at least one NaN or Inf, in data order.
pub fn scan_non_finite(file: &[u8], header: &Header) -> Vec<NonFiniteTensor> {
    let float_tensors: Vec<&TensorInfo> = header
        .tensors
        .iter()
        .filter(|t| exponent_mask(t.dtype).is_some())
        .collect();
    let pieces: Vec<(usize, &[u8])> = float_tensors
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            header
                .data(file, t)
                .chunks(PIECE_BYTES)
                .map(move |c| (i, c))
        })
        .collect();
    let counts: Vec<(usize, u64)> = pieces
        .par_iter()
        .map(|&(i, bytes)| (i, count_non_finite(float_tensors[i].dtype, bytes)))
        .filter(|&(_, n)| n > 0)
        .collect();

    let mut flagged: Vec<usize> = counts.iter().map(|&(i, _)| i).collect();
    flagged.dedup();
    flagged
        .into_par_iter()
        .map(|i| {
            let t = float_tensors[i];
            let (nan, inf) = classify_non_finite(t.dtype, header.data(file, t));
            NonFiniteTensor {
                name: t.name.clone(),
                nan,
                inf,
            }
        })
        .collect()
}

/// (exponent mask, element size) of the float types we scan; 8-bit floats are skipped.
fn exponent_mask(d: Dtype) -> Option<(u64, usize)> {
    match d {
        Dtype::F16 => Some((0x7C00, 2)),
        Dtype::Bf16 => Some((0x7F80, 2)),
        Dtype::F32 => Some((0x7F80_0000, 4)),
        Dtype::F64 => Some((0x7FF0_0000_0000_0000, 8)),
        _ => None,
    }
}

/// Number of elements whose exponent bits are all ones (NaN or ±Inf).
pub fn count_non_finite(d: Dtype, bytes: &[u8]) -> u64 {
    match d {
        Dtype::F16 | Dtype::Bf16 => {
            let mask = if d == Dtype::F16 { 0x7C00u16 } else { 0x7F80 };
            bytes
                .chunks_exact(2)
                .map(|c| u64::from(u16::from_le_bytes([c[0], c[1]]) & mask == mask))
                .sum()
        }
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| {
                u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7F80_0000 == 0x7F80_0000)
            })
            .sum(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| {
                let b = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                u64::from(b & 0x7FF0_0000_0000_0000 == 0x7FF0_0000_0000_0000)
            })
            .sum(),
        _ => 0,
    }
}

/// (NaN count, Inf count): all-ones exponent with a nonzero mantissa is NaN, zero is Inf.
fn classify_non_finite(d: Dtype, bytes: &[u8]) -> (u64, u64) {
    let Some((exp, size)) = exponent_mask(d) else {
        return (0, 0);
    };
    let mantissa_mask = match d {
        Dtype::F16 => 0x03FF,
        Dtype::Bf16 => 0x007F,
        Dtype::F32 => 0x007F_FFFF,
        _ => 0x000F_FFFF_FFFF_FFFF,
    };
    let (mut nan, mut inf) = (0, 0);
    for c in bytes.chunks_exact(size) {
        let mut le = [0u8; 8];
        le[..size].copy_from_slice(c);
        let bits = u64::from_le_bytes(le);
        if bits & exp == exp {
            if bits & mantissa_mask != 0 {
                nan += 1
            } else {
                inf += 1
            }
        }
    }
    (nan, inf)
}

/// Whether every element is zero (`-0.0` included); a dtype without a zero (F8_E8M0) never is.
pub fn all_zero(d: Dtype, bytes: &[u8]) -> bool {
    fn masked<const N: usize>(bytes: &[u8], mask: u64) -> bool {
        bytes.chunks(N).all(|c| {
            let mut word = [0u8; 8];
            word[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(word) & mask == 0
        })
    }
    match d {
        Dtype::F16 | Dtype::Bf16 => masked::<2>(bytes, 0x7fff),
        Dtype::F32 | Dtype::C64 => masked::<4>(bytes, 0x7fff_ffff),
        Dtype::F64 => masked::<8>(bytes, 0x7fff_ffff_ffff_ffff),
        Dtype::F8E5M2 | Dtype::F8E4M3 => bytes.iter().all(|b| b & 0x7f == 0),
        Dtype::F8E8M0 => bytes.is_empty(),
        _ => bytes.iter().all(|b| *b == 0),
    }
}

/// A scalar's value as f64, for alpha tensors; `None` if it is not a single float or integer.
pub fn read_scalar(d: Dtype, bytes: &[u8]) -> Option<f64> {
    Some(match (d, bytes.len()) {
        (Dtype::F16, 2) => f16_to_f64(u16::from_le_bytes([bytes[0], bytes[1]])),
        (Dtype::Bf16, 2) => f64::from(f32::from_bits(
            u32::from(u16::from_le_bytes([bytes[0], bytes[1]])) << 16,
        )),
        (Dtype::F32, 4) => f64::from(f32::from_le_bytes(bytes.try_into().ok()?)),
        (Dtype::F64, 8) => f64::from_le_bytes(bytes.try_into().ok()?),
        (Dtype::I32, 4) => f64::from(i32::from_le_bytes(bytes.try_into().ok()?)),
        (Dtype::I64, 8) => i64::from_le_bytes(bytes.try_into().ok()?) as f64,
        _ => return None,
    })
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1F);
    let mant = f64::from(h & 0x03FF);
    sign * match exp {
        0 => mant * 2f64.powi(-24),
        0x1F if mant == 0.0 => f64::INFINITY,
        0x1F => f64::NAN,
        e => (1.0 + mant / 1024.0) * 2f64.powi(e - 15),
    }
}
