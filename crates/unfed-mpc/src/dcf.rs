//! Distributed comparison functions (Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee,
//! "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation", Eurocrypt 2021,
//! Fig. 3): two keys for `f(x) = β if x < α else 0` over `n`-bit inputs, with `β` a vector of
//! `m ≤ 2` ring elements, each key alone pseudo-random; the two evaluations at any public `x` add
//! up to `f(x)` in Z_2^64.
//!
//! Keys are made and evaluated many at a time, one tree level of every key per batch of AES.
//! A key is a party's root seed (its control bit in the lowest bit: 0 for party 0, 1 for
//! party 1) and [`key_words`]`(n, m)` correction words, the same for both parties: per level
//! from the top the correction seed (two words) and `m` values, then the levels' two
//! correction bits packed, then the `m` last correction words. So the dealer can send the
//! corrections once for both parties, and each party's root can come from its own seed.

use crate::prg::{LEFT, RIGHT, TreePrg, VALUE, clear, halves, on};

/// Correction words a key of `n` levels and `m` outputs takes (both parties' alike).
pub fn key_words(n: u32, m: usize) -> usize {
    (2 + m) * n as usize + (2 * n as usize).div_ceil(64) + m
}

/// Keys made or evaluated together through all their levels: enough for whole batches of AES,
/// few enough that their words stay in cache from one level to the next.
pub(crate) const CHUNK: usize = 256;

/// The correction words of the keys of `x < alphas[i] ↦ betas[i·m..(i + 1)·m]` over `n`-bit
/// inputs (`1 ≤ n ≤ 63`, `1 ≤ m ≤ 2`), concatenated into `keys`, for the parties' uniformly
/// random root seeds `roots[party][i]` (their lowest bits are ignored: they become the control
/// bits).
pub fn generate(
    prg: &TreePrg,
    (n, m): (u32, usize),
    alphas: &[u64],
    betas: &[u64],
    roots: [&[u128]; 2],
    keys: &mut [u64],
) {
    debug_assert!((1..=63).contains(&n) && alphas.iter().all(|a| a >> n == 0));
    debug_assert!((1..=2).contains(&m) && betas.len() == alphas.len() * m);
    debug_assert!(roots.iter().all(|r| r.len() == alphas.len()));
    let kw = key_words(n, m);
    debug_assert_eq!(keys.len(), alphas.len() * kw);
    for (c, keys) in keys.chunks_mut(CHUNK * kw).enumerate() {
        let r = c * CHUNK..c * CHUNK + keys.len() / kw;
        let roots = [&roots[0][r.clone()], &roots[1][r.clone()]];
        let betas = &betas[r.start * m..r.end * m];
        generate_chunk(prg, (n, m), &alphas[r], betas, roots, keys);
    }
}

fn generate_chunk(
    prg: &TreePrg,
    (n, m): (u32, usize),
    alphas: &[u64],
    betas: &[u64],
    roots: [&[u128]; 2],
    keys: &mut [u64],
) {
    let (count, kw, n) = (alphas.len(), key_words(n, m), n as usize);
    // The two parties' current seeds (control bit in the lowest bit), and v_alpha per output.
    let mut seeds: Vec<[u128; 2]> = (0..count).map(|e| root_pair(roots, e)).collect();
    let mut v_alpha = vec![0u64; count * m];
    // Per key and party: the two children, then the m value blocks.
    let per = 2 + m;
    let mut buf = vec![0u128; 2 * per * count];
    for level in 0..n {
        let i = n - 1 - level;
        for (e, s) in seeds.iter().enumerate() {
            for (b, seed) in s.iter().enumerate() {
                let at = (2 * e + b) * per;
                buf[at] = clear(*seed) ^ LEFT;
                buf[at + 1] = clear(*seed) ^ RIGHT;
                for k in 0..m {
                    buf[at + 2 + k] = clear(*seed) ^ (VALUE + k as u128);
                }
            }
        }
        prg.hash(&mut buf);
        for (e, s) in seeds.iter_mut().enumerate() {
            let alpha_bit = ((alphas[e] >> i) & 1) as usize;
            let (keep, lose) = (alpha_bit, 1 - alpha_bit);
            // h[b]: party b's left child, right child and value blocks.
            let h: [&[u128]; 2] = [0, 1].map(|b| &buf[(2 * e + b) * per..(2 * e + b + 1) * per]);
            let seed_cw = clear(h[0][lose] ^ h[1][lose]);
            let sign = sign(s[1] & 1 == 1);
            let key_at = e * kw + (2 + m) * level;
            for k in 0..m {
                let word = |b: usize, side| value_word(h[b][2 + value_block(m, side)], m, side, k);
                let values = [[word(0, 0), word(0, 1)], [word(1, 0), word(1, 1)]];
                let v = &mut v_alpha[e * m + k];
                let mut value_cw = sign.wrapping_mul(
                    values[1][lose]
                        .wrapping_sub(values[0][lose])
                        .wrapping_sub(*v),
                );
                if lose == 0 {
                    value_cw = value_cw.wrapping_add(sign.wrapping_mul(betas[e * m + k]));
                }
                *v = v
                    .wrapping_sub(values[1][keep])
                    .wrapping_add(values[0][keep])
                    .wrapping_add(sign.wrapping_mul(value_cw));
                keys[key_at + 2 + k] = value_cw;
            }
            let children = h.map(|h| [h[0], h[1]]);
            let bits_cw = descend(children, s, keep, seed_cw);
            let key = &mut keys[e * kw..(e + 1) * kw];
            write_level(key, (2 + m) * level, (2 + m) * n, level, seed_cw, bits_cw);
        }
    }
    for (e, s) in seeds.iter().enumerate() {
        for k in 0..m {
            let ends = s.map(|s| end_value(s, k));
            let last = sign(s[1] & 1 == 1).wrapping_mul(
                ends[1]
                    .wrapping_sub(ends[0])
                    .wrapping_sub(v_alpha[e * m + k]),
            );
            keys[(e + 1) * kw - m + k] = last;
        }
    }
}

/// The two parties' root seeds of key `e`, with their control bits (0 and 1).
pub(crate) fn root_pair(roots: [&[u128]; 2], e: usize) -> [u128; 2] {
    [clear(roots[0][e]), clear(roots[1][e]) | 1]
}

/// Party `party`'s (0 or 1) shares of `f(x)` (`m` each, in order) for the keys of `n` levels
/// and `m` outputs whose roots are this party's `roots` (as given to [`generate`]) and whose
/// corrections are `keys`, concatenated, each evaluated at `points` consecutive `xs`.
pub fn evaluate(
    prg: &TreePrg,
    party: u8,
    (n, m): (u32, usize),
    roots: &[u128],
    keys: &[u64],
    xs: &[u64],
    points: usize,
) -> Vec<u64> {
    let kw = key_words(n, m);
    let mut values = Vec::with_capacity(xs.len() * m);
    for (c, keys) in keys.chunks(CHUNK * kw).enumerate() {
        let r = c * CHUNK..c * CHUNK + keys.len() / kw;
        let (roots, xs) = (&roots[r.clone()], &xs[r.start * points..r.end * points]);
        values.extend(match m {
            1 => evaluate_m::<1>(prg, n, party, roots, keys, xs, points),
            _ => evaluate_m::<2>(prg, n, party, roots, keys, xs, points),
        });
    }
    if party == 1 {
        values.iter_mut().for_each(|v| *v = v.wrapping_neg());
    }
    values
}

/// [`evaluate`] for `M` outputs, before party 1's shares are negated.
fn evaluate_m<const M: usize>(
    prg: &TreePrg,
    n: u32,
    party: u8,
    roots: &[u128],
    keys: &[u64],
    xs: &[u64],
    points: usize,
) -> Vec<u64> {
    let (kw, n) = (key_words(n, M), n as usize);
    debug_assert_eq!(keys.len() * points, xs.len() * kw);
    debug_assert_eq!(roots.len() * kw, keys.len());
    let keys: Vec<&[u64]> = keys.chunks_exact(kw).collect();
    let mut seeds: Vec<u128> = roots
        .iter()
        .flat_map(|r| std::iter::repeat_n(clear(*r) | party as u128, points))
        .collect();
    let mut values = vec![[0u64; M]; xs.len()];
    // Per point: the child on its side, and the one value block that side's words are in.
    let mut buf = vec![0u128; 2 * xs.len()];
    for level in 0..n {
        let i = n - 1 - level;
        for ((block, s), x) in buf.chunks_exact_mut(2).zip(&seeds).zip(xs) {
            let dir = ((x >> i) & 1) as u128;
            block[0] = clear(*s) ^ dir;
            block[1] = clear(*s) ^ (VALUE + value_block(M, dir as usize) as u128);
        }
        prg.hash(&mut buf);
        let at = (2 + M) * level;
        for (key, e) in keys.iter().zip((0..xs.len()).step_by(points)) {
            let cw = read_level(key, at, (2 + M) * n, level);
            let value_cw = &key[at + 2..at + 2 + M];
            for e in e..e + points {
                let dir = ((xs[e] >> i) & 1) as usize;
                let s = &mut seeds[e];
                let mask = on(*s);
                let block = &buf[2 * e..2 * (e + 1)];
                for k in 0..M {
                    let word = value_word(block[1], M, dir, k);
                    let step = word.wrapping_add(value_cw[k] & mask as u64);
                    values[e][k] = values[e][k].wrapping_add(step);
                }
                *s = block[0] ^ (cw[dir] & mask);
            }
        }
    }
    for (key, e) in keys.iter().zip((0..xs.len()).step_by(points)) {
        let last = &key[kw - M..];
        for e in e..e + points {
            let s = seeds[e];
            for k in 0..M {
                let end = end_value(s, k).wrapping_add(last[k] & on(s) as u64);
                values[e][k] = values[e][k].wrapping_add(end);
            }
        }
    }
    values.into_iter().flatten().collect()
}

/// Which of a node's `m` value blocks (`H(s ⊕ (VALUE + j))` for `j < m`) holds the words of
/// `side`: with one output block 0, whose halves are the two sides' words; with two block
/// `side`, whose halves are that side's two words. So an evaluation, which goes one way,
/// hashes one value block per level either way.
fn value_block(m: usize, side: usize) -> usize {
    if m == 1 { 0 } else { side }
}

/// The word of `side` for output `k` in its value block ([`value_block`]).
fn value_word(block: u128, m: usize, side: usize, k: usize) -> u64 {
    halves(block)[if m == 1 { side } else { k }]
}

/// A leaf seed's value for output `k < 2`: its halves (the first is the paper's `Convert`).
fn end_value(seed: u128, k: usize) -> u64 {
    halves(clear(seed))[k]
}

/// One level down the two parties' trees towards `keep` (the tree step of a DCF or DPF key's
/// generation): from their children `h[b][side]` (control bit in the lowest bit) and the
/// level's correction seed, the correction bits, with `s` moved to the kept children.
pub(crate) fn descend(
    h: [[u128; 2]; 2],
    s: &mut [u128; 2],
    keep: usize,
    seed_cw: u128,
) -> [u64; 2] {
    let bit = |b: usize, side: usize| (h[b][side] & 1) as u64;
    let bits_cw = [
        bit(0, 0) ^ bit(1, 0) ^ keep as u64 ^ 1,
        bit(0, 1) ^ bit(1, 1) ^ keep as u64,
    ];
    let keep_cw = seed_cw | bits_cw[keep] as u128;
    for (b, s) in s.iter_mut().enumerate() {
        *s = h[b][keep] ^ (keep_cw & on(*s));
    }
    bits_cw
}

/// A level's corrections of one key, per side: the correction seed with that side's
/// correction bit in its lowest bit (what [`write_level`] wrote).
pub(crate) fn read_level(key: &[u64], seed_at: usize, packed_at: usize, level: usize) -> [u128; 2] {
    let seed_cw = read_seed(&key[seed_at..]);
    let bits = key[packed_at + 2 * level / 64] >> (2 * level % 64);
    [
        seed_cw | (bits & 1) as u128,
        seed_cw | ((bits >> 1) & 1) as u128,
    ]
}

/// Writes a level's correction seed at `seed_at` and its two bits into the packed bits at
/// `packed_at` of one key.
pub(crate) fn write_level(
    key: &mut [u64],
    seed_at: usize,
    packed_at: usize,
    level: usize,
    seed_cw: u128,
    bits_cw: [u64; 2],
) {
    write_seed(&mut key[seed_at..], seed_cw);
    for (side, cw) in bits_cw.iter().enumerate() {
        key[packed_at + (2 * level + side) / 64] |= cw << ((2 * level + side) % 64);
    }
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
pub(crate) mod tests {
    use super::*;
    use crate::prg::Prg;
    use proptest::prelude::*;

    /// Two parties' `count` root seeds from `seed`.
    pub(crate) fn roots(seed: &[u8; 16], count: usize) -> [Vec<u128>; 2] {
        let mut prg = Prg::new(seed);
        [0, 1].map(|_| {
            (0..count)
                .map(|_| u128::from_le_bytes(prg.next_seed()))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn the_two_evaluations_add_up_to_the_comparison(
            n in 1u32..=63, alpha in any::<u64>(), x in any::<u64>(), betas in any::<[u64; 2]>(),
            m in 1usize..=2, seed in any::<[u8; 16]>(),
        ) {
            let mask = (1u64 << n) - 1;
            let (alpha, x) = (alpha & mask, x & mask);
            let probes = [x, alpha, alpha.wrapping_sub(1) & mask, (alpha + 1) & mask, 0, mask];
            // One key per probe, all for the same comparison, made and evaluated together.
            let prg = TreePrg::new();
            let beta = &betas[..m];
            let roots = roots(&seed, 6);
            let mut keys = vec![0; 6 * key_words(n, m)];
            generate(&prg, (n, m), &[alpha; 6], &beta.repeat(6), [&roots[0], &roots[1]], &mut keys);
            let a = evaluate(&prg, 0, (n, m), &roots[0], &keys, &probes, 1);
            let b = evaluate(&prg, 1, (n, m), &roots[1], &keys, &probes, 1);
            for (i, probe) in probes.iter().enumerate() {
                for k in 0..m {
                    let want = if *probe < alpha { beta[k] } else { 0 };
                    let got = a[i * m + k].wrapping_add(b[i * m + k]);
                    prop_assert_eq!(got, want, "x={} alpha={} output {}", probe, alpha, k);
                }
            }
        }

        #[test]
        fn keys_in_one_batch_are_independent(
            alphas in proptest::collection::vec(any::<u64>(), 1..2 * CHUNK + 20),
            seed in any::<[u8; 16]>(),
        ) {
            let n = 20;
            let alphas: Vec<u64> = alphas.iter().map(|a| a & ((1 << n) - 1)).collect();
            let betas: Vec<u64> = (1..=alphas.len() as u64).collect();
            let prg = TreePrg::new();
            let roots = roots(&seed, alphas.len());
            let mut keys = vec![0; alphas.len() * key_words(n, 1)];
            generate(&prg, (n, 1), &alphas, &betas, [&roots[0], &roots[1]], &mut keys);
            let xs: Vec<u64> = alphas.iter().map(|a| a.saturating_sub(1)).collect();
            let a = evaluate(&prg, 0, (n, 1), &roots[0], &keys, &xs, 1);
            let b = evaluate(&prg, 1, (n, 1), &roots[1], &keys, &xs, 1);
            for i in 0..xs.len() {
                let want = if xs[i] < alphas[i] { betas[i] } else { 0 };
                prop_assert_eq!(a[i].wrapping_add(b[i]), want);
            }
        }
    }
}
