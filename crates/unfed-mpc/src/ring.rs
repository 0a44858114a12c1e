//! Z_2^64 arithmetic on vectors and the fixed-point encoding: a real `v` is the ring element
//! `round(v · 2^FRAC)` in two's complement.

/// Fractional bits of the fixed-point encoding. A product of two values has `2·FRAC` and must
/// stay under 2^62 for truncation: `|x·y| < 2^(62 − 2·FRAC)` = 2^18 as reals.
pub const FRAC: u32 = 22;

/// One unit in the last place.
pub const ULP: f64 = 1.0 / (1u64 << FRAC) as f64;

/// The ring element of `v` at `FRAC` fractional bits.
pub fn encode(v: f64) -> u64 {
    encode_at(v, FRAC)
}

/// The ring element of `v` at `frac` fractional bits.
pub fn encode_at(v: f64, frac: u32) -> u64 {
    (v * (1u64 << frac) as f64).round() as i64 as u64
}

/// The real a ring element at `FRAC` fractional bits stands for.
pub fn decode(x: u64) -> f64 {
    x as i64 as f64 * ULP
}

pub fn encode_all(v: &[f32]) -> Vec<u64> {
    v.iter().map(|&v| encode(v as f64)).collect()
}

pub fn decode_all(x: &[u64]) -> Vec<f64> {
    x.iter().map(|&x| decode(x)).collect()
}

pub fn add(x: &[u64], y: &[u64]) -> Vec<u64> {
    x.iter().zip(y).map(|(a, b)| a.wrapping_add(*b)).collect()
}

pub fn sub(x: &[u64], y: &[u64]) -> Vec<u64> {
    x.iter().zip(y).map(|(a, b)| a.wrapping_sub(*b)).collect()
}

pub fn mul(x: &[u64], y: &[u64]) -> Vec<u64> {
    x.iter().zip(y).map(|(a, b)| a.wrapping_mul(*b)).collect()
}

pub fn add_assign(x: &mut [u64], y: &[u64]) {
    x.iter_mut()
        .zip(y)
        .for_each(|(a, b)| *a = a.wrapping_add(*b));
}

/// `x · c` for a public ring element `c`.
pub fn scale(x: &[u64], c: u64) -> Vec<u64> {
    x.iter().map(|a| a.wrapping_mul(c)).collect()
}

/// `Σ x_i·y_i`.
pub fn dot(x: &[u64], y: &[u64]) -> u64 {
    x.iter()
        .zip(y)
        .fold(0u64, |acc, (a, b)| acc.wrapping_add(a.wrapping_mul(*b)))
}

/// Row-major `x (m×k) · y (k×n)`.
pub fn matmul(x: &[u64], y: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    let mut out = vec![0u64; m * n];
    for i in 0..m {
        let row = &mut out[i * n..(i + 1) * n];
        for p in 0..k {
            let a = x[i * k + p];
            for (o, b) in row.iter_mut().zip(&y[p * n..(p + 1) * n]) {
                *o = o.wrapping_add(a.wrapping_mul(*b));
            }
        }
    }
    out
}

/// Splits a ring vector into two additive shares with `mask` as the first share.
pub fn share(x: &[u64], mask: &[u64]) -> [Vec<u64>; 2] {
    [mask.to_vec(), sub(x, mask)]
}

/// Shares added back together.
pub fn reveal(a: &[u64], b: &[u64]) -> Vec<u64> {
    add(a, b)
}

/// How many values of `width` bits fill a whole number of words exactly.
pub fn pack_group(width: u32) -> usize {
    64 / gcd(64, width as u64) as usize
}

/// The greatest common divisor.
pub(crate) fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Values below `2^width` (`1 ≤ width ≤ 64`) as a bit stream, little-endian: a multiple of
/// [`pack_group`] values fills its words exactly.
pub fn pack(values: &[u64], width: u32) -> Vec<u64> {
    let w = width as usize;
    let mut out = vec![0u64; (values.len() * w).div_ceil(64)];
    for (i, v) in values.iter().enumerate() {
        let (word, offset) = (i * w / 64, i * w % 64);
        out[word] |= v << offset;
        if offset + w > 64 {
            out[word + 1] |= v >> (64 - offset);
        }
    }
    out
}

/// The first `n` values of `width` bits of a stream [`pack`] made.
pub fn unpack(words: &[u64], width: u32, n: usize) -> Vec<u64> {
    let w = width as usize;
    (0..n)
        .map(|i| {
            let (word, offset) = (i * w / 64, i * w % 64);
            let mut v = words[word] >> offset;
            if offset + w > 64 {
                v |= words[word + 1] << (64 - offset);
            }
            v & low_mask(width)
        })
        .collect()
}

/// `2^width − 1` (all ones for 64).
pub fn low_mask(width: u32) -> u64 {
    u64::MAX >> (64 - width)
}

/// Ring elements as bytes, little-endian.
pub fn to_bytes(x: &[u64]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(x.len() * 8);
    extend_bytes(&mut bytes, x);
    bytes
}

/// Appends `x` to `bytes` as [`to_bytes`] writes it (eight bytes at a time, not one: the
/// megabytes of a step's material).
pub fn extend_bytes(bytes: &mut Vec<u8>, x: &[u64]) {
    let start = bytes.len();
    bytes.resize(start + x.len() * 8, 0);
    for (b, v) in bytes[start..].chunks_exact_mut(8).zip(x) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// Bytes as ring elements, little-endian; None when the length is not a multiple of 8.
pub fn from_bytes(bytes: &[u8]) -> Option<Vec<u64>> {
    if !bytes.len().is_multiple_of(8) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    )
}
