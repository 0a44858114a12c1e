//! Distributed comparison functions (Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee,
//! "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation", Eurocrypt 2021,
//! Fig. 3): two keys for `f(x) = β if x < α else 0` over `n`-bit inputs, each alone
//! pseudo-random; the two evaluations at any public `x` add up to `f(x)` in Z_2^64.
//!
//! Keys are made and evaluated many at a time, one tree level of every key per batch of AES.
//! A key is [`key_words`]`(n)` ring elements: the party's root seed (two words, its control
//! bit in the lowest bit), then per level from the top the correction seed (two words) and
//! value, then the levels' two correction bits packed, then the last correction word. Only
//! the root differs between the two parties' keys.

use crate::prg::{LEFT, Prg, RIGHT, TreePrg, VALUE, clear, halves, on};

/// Ring elements a key of `n` levels takes.
pub fn key_words(n: u32) -> usize {
    2 + 3 * n as usize + (2 * n as usize).div_ceil(64) + 1
}

/// The two parties' keys of `x < alphas[i] ↦ betas[i]` over `n`-bit inputs (`1 ≤ n ≤ 63`),
/// concatenated, with root seeds drawn from `secret`.
pub fn generate(
    prg: &TreePrg,
    n: u32,
    alphas: &[u64],
    betas: &[u64],
    secret: &mut Prg,
) -> [Vec<u64>; 2] {
    debug_assert!((1..=63).contains(&n) && alphas.iter().all(|a| a >> n == 0));
    let (count, kw, n) = (alphas.len(), key_words(n), n as usize);
    let mut keys = [vec![0u64; count * kw], vec![0u64; count * kw]];
    // The two parties' current seeds (control bit in the lowest bit) and v_alpha, per key.
    let mut seeds: Vec<[u128; 2]> = (0..count)
        .map(|_| [0, 1].map(|b| clear(u128::from_le_bytes(secret.next_seed())) | b))
        .collect();
    let mut v_alpha = vec![0u64; count];
    for (e, s) in seeds.iter().enumerate() {
        for b in 0..2 {
            write_seed(&mut keys[b][e * kw..], s[b]);
        }
    }
    let mut buf = vec![0u128; 6 * count];
    for level in 0..n {
        let i = n - 1 - level;
        for (e, s) in seeds.iter().enumerate() {
            for b in 0..2 {
                for (t, tweak) in [LEFT, RIGHT, VALUE].into_iter().enumerate() {
                    buf[6 * e + 3 * b + t] = clear(s[b]) ^ tweak;
                }
            }
        }
        prg.hash(&mut buf);
        for (e, s) in seeds.iter_mut().enumerate() {
            let alpha_bit = ((alphas[e] >> i) & 1) as usize;
            let (keep, lose) = (alpha_bit, 1 - alpha_bit);
            // h[b]: party b's left child, right child and values.
            let h: [&[u128]; 2] = [0, 1].map(|b| &buf[6 * e + 3 * b..6 * e + 3 * b + 3]);
            let values = h.map(|h| halves(h[2]));
            let seed_cw = clear(h[0][lose] ^ h[1][lose]);
            let sign = sign(s[1] & 1 == 1);
            let mut value_cw = sign.wrapping_mul(
                values[1][lose]
                    .wrapping_sub(values[0][lose])
                    .wrapping_sub(v_alpha[e]),
            );
            if lose == 0 {
                value_cw = value_cw.wrapping_add(sign.wrapping_mul(betas[e]));
            }
            v_alpha[e] = v_alpha[e]
                .wrapping_sub(values[1][keep])
                .wrapping_add(values[0][keep])
                .wrapping_add(sign.wrapping_mul(value_cw));
            let bit = |b: usize, side: usize| (h[b][side] & 1) as u64;
            let bits_cw = [
                bit(0, 0) ^ bit(1, 0) ^ alpha_bit as u64 ^ 1,
                bit(0, 1) ^ bit(1, 1) ^ alpha_bit as u64,
            ];
            let keep_cw = seed_cw | bits_cw[keep] as u128;
            for b in 0..2 {
                s[b] = h[b][keep] ^ (keep_cw & on(s[b]));
                let key = &mut keys[b][e * kw..(e + 1) * kw];
                write_seed(&mut key[2 + 3 * level..], seed_cw);
                key[4 + 3 * level] = value_cw;
                for (side, cw) in bits_cw.iter().enumerate() {
                    key[2 + 3 * n + (2 * level + side) / 64] |= cw << ((2 * level + side) % 64);
                }
            }
        }
    }
    for (e, s) in seeds.iter().enumerate() {
        let last = sign(s[1] & 1 == 1).wrapping_mul(
            (clear(s[1]) as u64)
                .wrapping_sub(clear(s[0]) as u64)
                .wrapping_sub(v_alpha[e]),
        );
        for key in &mut keys {
            key[(e + 1) * kw - 1] = last;
        }
    }
    keys
}

/// Party `party`'s (0 or 1) shares of `f_i(xs[i])` for the concatenated keys `keys` of
/// `n` levels.
pub fn evaluate(prg: &TreePrg, party: u8, n: u32, keys: &[u64], xs: &[u64]) -> Vec<u64> {
    let (kw, n) = (key_words(n), n as usize);
    debug_assert_eq!(keys.len(), xs.len() * kw);
    let party_sign = sign(party == 1);
    let key = |e: usize| &keys[e * kw..(e + 1) * kw];
    let mut seeds: Vec<u128> = (0..xs.len()).map(|e| read_seed(key(e))).collect();
    let mut values = vec![0u64; xs.len()];
    let mut buf = vec![0u128; 2 * xs.len()];
    for level in 0..n {
        let i = n - 1 - level;
        for (e, s) in seeds.iter().enumerate() {
            let dir = ((xs[e] >> i) & 1) as u128;
            buf[2 * e] = clear(*s) ^ dir;
            buf[2 * e + 1] = clear(*s) ^ VALUE;
        }
        prg.hash(&mut buf);
        for (e, s) in seeds.iter_mut().enumerate() {
            let key = key(e);
            let dir = ((xs[e] >> i) & 1) as usize;
            let mask = on(*s);
            let bit_cw = (key[2 + 3 * n + (2 * level + dir) / 64] >> ((2 * level + dir) % 64)) & 1;
            let cw = read_seed(&key[2 + 3 * level..]) | bit_cw as u128;
            let step = halves(buf[2 * e + 1])[dir].wrapping_add(key[4 + 3 * level] & mask as u64);
            values[e] = values[e].wrapping_add(party_sign.wrapping_mul(step));
            *s = buf[2 * e] ^ (cw & mask);
        }
    }
    for (e, s) in seeds.iter().enumerate() {
        let end = (clear(*s) as u64).wrapping_add(key(e)[kw - 1] & on(*s) as u64);
        values[e] = values[e].wrapping_add(party_sign.wrapping_mul(end));
    }
    values
}

/// `−1` or `1` in the ring (the sign the second party's share carries).
pub(crate) fn sign(negative: bool) -> u64 {
    if negative { u64::MAX } else { 1 }
}

pub(crate) fn write_seed(words: &mut [u64], seed: u128) {
    words[0] = seed as u64;
    words[1] = (seed >> 64) as u64;
}

pub(crate) fn read_seed(words: &[u64]) -> u128 {
    words[0] as u128 | (words[1] as u128) << 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_two_evaluations_add_up_to_the_comparison(
            n in 1u32..=63, alpha in any::<u64>(), x in any::<u64>(), beta in any::<u64>(),
            seed in any::<[u8; 16]>(),
        ) {
            let mask = (1u64 << n) - 1;
            let (alpha, x) = (alpha & mask, x & mask);
            let probes = [x, alpha, alpha.wrapping_sub(1) & mask, (alpha + 1) & mask, 0, mask];
            // One key per probe, all for the same comparison, made and evaluated together.
            let prg = TreePrg::new();
            let keys = generate(&prg, n, &[alpha; 6], &[beta; 6], &mut Prg::new(&seed));
            prop_assert_eq!(keys[0].len(), 6 * key_words(n));
            let a = evaluate(&prg, 0, n, &keys[0], &probes);
            let b = evaluate(&prg, 1, n, &keys[1], &probes);
            for (i, probe) in probes.iter().enumerate() {
                let want = if *probe < alpha { beta } else { 0 };
                prop_assert_eq!(a[i].wrapping_add(b[i]), want, "x={} alpha={}", probe, alpha);
            }
        }

        #[test]
        fn keys_in_one_batch_are_independent(
            alphas in proptest::collection::vec(any::<u64>(), 1..20), seed in any::<[u8; 16]>(),
        ) {
            let n = 20;
            let alphas: Vec<u64> = alphas.iter().map(|a| a & ((1 << n) - 1)).collect();
            let betas: Vec<u64> = (1..=alphas.len() as u64).collect();
            let prg = TreePrg::new();
            let keys = generate(&prg, n, &alphas, &betas, &mut Prg::new(&seed));
            let xs: Vec<u64> = alphas.iter().map(|a| a.saturating_sub(1)).collect();
            let a = evaluate(&prg, 0, n, &keys[0], &xs);
            let b = evaluate(&prg, 1, n, &keys[1], &xs);
            for i in 0..xs.len() {
                let want = if xs[i] < alphas[i] { betas[i] } else { 0 };
                prop_assert_eq!(a[i].wrapping_add(b[i]), want);
            }
        }
    }
}
