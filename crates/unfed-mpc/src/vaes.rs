//! The tree PRG's fixed-key AES on x86-64 CPUs with VAES: four blocks per instruction with
//! AVX-512, two with AVX2 only, sixteen in flight either way; with AVX-512 about five times
//! the throughput of one block per instruction. [`crate::prg::TreePrg`] uses it when the CPU
//! has it (checked at run time) and the `aes` crate otherwise; a test checks the two agree.

use std::arch::x86_64::*;

/// The expanded round keys of one AES-128 key, each repeated in the lanes of a register.
#[derive(Clone, Copy)]
#[allow(clippy::large_enum_variant)] // one per tree PRG, read in the hot loop: kept inline
pub(crate) enum Keys {
    /// Four lanes (AVX-512).
    Wide([__m512i; 11]),
    /// Two lanes (AVX2).
    Half([__m256i; 11]),
}

/// The round keys of `key`, when this CPU can run [`hash`]; `None` otherwise.
pub(crate) fn keys(key: &[u8; 16]) -> Option<Keys> {
    if !(is_x86_feature_detected!("aes") && is_x86_feature_detected!("vaes")) {
        return None;
    }
    // SAFETY: the features the functions enable were just detected.
    unsafe {
        if is_x86_feature_detected!("avx512f") {
            Some(Keys::Wide(broadcast(&expand(key))))
        } else if is_x86_feature_detected!("avx2") {
            Some(Keys::Half(broadcast_avx2(&expand(key))))
        } else {
            None
        }
    }
}

/// Replaces every `x` of `xs`, whose length is a multiple of 16, by `AES_k(x) ⊕ x`.
pub(crate) fn hash(keys: &Keys, xs: &mut [u128]) {
    debug_assert_eq!(xs.len() % 16, 0);
    // SAFETY: a `Keys` variant exists only where `keys` found the features its function
    // enables; every access stays inside `xs` (16 blocks of 16 bytes, unaligned loads and
    // stores).
    unsafe {
        match keys {
            Keys::Wide(k) => hash16(k, xs),
            Keys::Half(k) => hash16_avx2(k, xs),
        }
    }
}

#[target_feature(enable = "avx2,vaes")]
unsafe fn hash16_avx2(k: &[__m256i; 11], xs: &mut [u128]) {
    for chunk in xs.chunks_exact_mut(16) {
        let p = chunk.as_mut_ptr() as *mut __m256i;
        // SAFETY: `chunk` is 256 bytes, eight registers.
        let x = unsafe { [0, 1, 2, 3, 4, 5, 6, 7].map(|i| _mm256_loadu_si256(p.add(i))) };
        let mut b = x.map(|v| _mm256_xor_si256(v, k[0]));
        for round in &k[1..10] {
            b = b.map(|v| _mm256_aesenc_epi128(v, *round));
        }
        for (i, v) in b.into_iter().enumerate() {
            let out = _mm256_xor_si256(_mm256_aesenclast_epi128(v, k[10]), x[i]);
            // SAFETY: as for the loads.
            unsafe { _mm256_storeu_si256(p.add(i), out) };
        }
    }
}

#[target_feature(enable = "avx512f,vaes")]
unsafe fn hash16(k: &[__m512i; 11], xs: &mut [u128]) {
    for chunk in xs.chunks_exact_mut(16) {
        let p = chunk.as_mut_ptr() as *mut __m512i;
        // SAFETY: `chunk` is 256 bytes, four registers.
        let x = unsafe { [0, 1, 2, 3].map(|i| _mm512_loadu_si512(p.add(i))) };
        let mut b = x.map(|v| _mm512_xor_si512(v, k[0]));
        for round in &k[1..10] {
            b = b.map(|v| _mm512_aesenc_epi128(v, *round));
        }
        for (i, v) in b.into_iter().enumerate() {
            let out = _mm512_xor_si512(_mm512_aesenclast_epi128(v, k[10]), x[i]);
            // SAFETY: as for the loads.
            unsafe { _mm512_storeu_si512(p.add(i), out) };
        }
    }
}

/// The AES-128 key schedule.
#[target_feature(enable = "aes")]
unsafe fn expand(key: &[u8; 16]) -> [__m128i; 11] {
    // SAFETY: `key` is 16 bytes.
    let mut k = [unsafe { _mm_loadu_si128(key.as_ptr() as *const __m128i) }; 11];
    macro_rules! round {
        ($i:expr, $rcon:expr) => {{
            let t = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(k[$i - 1], $rcon), 0xff);
            let mut p = k[$i - 1];
            for _ in 0..3 {
                p = _mm_xor_si128(p, _mm_slli_si128(p, 4));
            }
            k[$i] = _mm_xor_si128(p, t);
        }};
    }
    round!(1, 0x01);
    round!(2, 0x02);
    round!(3, 0x04);
    round!(4, 0x08);
    round!(5, 0x10);
    round!(6, 0x20);
    round!(7, 0x40);
    round!(8, 0x80);
    round!(9, 0x1b);
    round!(10, 0x36);
    k
}

#[target_feature(enable = "avx512f")]
unsafe fn broadcast(round_keys: &[__m128i; 11]) -> [__m512i; 11] {
    round_keys.map(|k| _mm512_broadcast_i32x4(k))
}

#[target_feature(enable = "avx2")]
unsafe fn broadcast_avx2(round_keys: &[__m128i; 11]) -> [__m256i; 11] {
    round_keys.map(|k| _mm256_broadcastsi128_si256(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fips_197_vector() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let Some(keys) = keys(&key) else {
            eprintln!("this CPU has no VAES: the wide paths cannot run here");
            return;
        };
        let plain = u128::from_le_bytes(std::array::from_fn(|i| (i as u8) * 0x11));
        // The ciphertext's bytes in order, and H(x) = AES_k(x) ⊕ x.
        let cipher = 0x69c4e0d86a7b0430d8cdb78070b4c55a_u128.to_be_bytes();
        let want = u128::from_le_bytes(cipher) ^ plain;
        let mut xs = [plain; 16];
        hash(&keys, &mut xs);
        assert!(xs.iter().all(|x| *x == want));
    }
}
