//! Distributed comparison functions (Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar, Rathee,
//! "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation", Eurocrypt 2021,
//! Fig. 3): two keys for `f(x) = β if x < α else 0` over `n`-bit inputs, each alone
//! pseudo-random; the two evaluations at any public `x` add up to `f(x)` in Z_2^64.

use crate::prg::{Seed, TreePrg, convert};

/// One party's key: its root seed and the correction words (the same in both keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DcfKey {
    pub seed: Seed,
    pub levels: Vec<Level>,
    pub last: u64,
}

/// The correction word of one tree level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    pub seed: Seed,
    pub value: u64,
    pub bits: [bool; 2],
}

/// Ring elements a key of `n` levels takes on the wire ([`DcfKey::to_words`]).
pub fn key_words(n: u32) -> usize {
    2 + 3 * n as usize + (2 * n as usize).div_ceil(64) + 1
}

/// The two keys of `x < alpha ↦ beta` over `n`-bit inputs (`1 ≤ n ≤ 63`), from two fresh
/// random root seeds.
pub fn generate(prg: &TreePrg, n: u32, alpha: u64, beta: u64, roots: [Seed; 2]) -> [DcfKey; 2] {
    debug_assert!((1..=63).contains(&n) && alpha >> n == 0);
    let mut seeds = roots;
    let mut bits = [false, true];
    let mut v_alpha = 0u64;
    let mut levels = Vec::with_capacity(n as usize);
    for i in (0..n).rev() {
        let alpha_bit = (alpha >> i) & 1 == 1;
        let e = [prg.expand(&seeds[0]), prg.expand(&seeds[1])];
        let (keep, lose) = if alpha_bit { (1, 0) } else { (0, 1) };
        let seed_cw = xor(&e[0].seeds[lose], &e[1].seeds[lose]);
        let sign = sign(bits[1]);
        let mut value_cw = sign.wrapping_mul(
            e[1].values[lose]
                .wrapping_sub(e[0].values[lose])
                .wrapping_sub(v_alpha),
        );
        if lose == 0 {
            value_cw = value_cw.wrapping_add(sign.wrapping_mul(beta));
        }
        v_alpha = v_alpha
            .wrapping_sub(e[1].values[keep])
            .wrapping_add(e[0].values[keep])
            .wrapping_add(sign.wrapping_mul(value_cw));
        let bits_cw = [
            e[0].bits[0] ^ e[1].bits[0] ^ alpha_bit ^ true,
            e[0].bits[1] ^ e[1].bits[1] ^ alpha_bit,
        ];
        for b in 0..2 {
            seeds[b] = if bits[b] {
                xor(&e[b].seeds[keep], &seed_cw)
            } else {
                e[b].seeds[keep]
            };
            bits[b] = e[b].bits[keep] ^ (bits[b] & bits_cw[keep]);
        }
        levels.push(Level {
            seed: seed_cw,
            value: value_cw,
            bits: bits_cw,
        });
    }
    let last = sign(bits[1]).wrapping_mul(
        convert(&seeds[1])
            .wrapping_sub(convert(&seeds[0]))
            .wrapping_sub(v_alpha),
    );
    roots.map(|seed| DcfKey {
        seed,
        levels: levels.clone(),
        last,
    })
}

/// Party `party`'s (0 or 1) share of `f(x)`.
pub fn evaluate(prg: &TreePrg, party: u8, key: &DcfKey, x: u64) -> u64 {
    let n = key.levels.len() as u32;
    let party_sign = sign(party == 1);
    let mut seed = key.seed;
    let mut bit = party == 1;
    let mut value = 0u64;
    for (level, i) in key.levels.iter().zip((0..n).rev()) {
        let mut e = prg.expand(&seed);
        if bit {
            for side in 0..2 {
                e.seeds[side] = xor(&e.seeds[side], &level.seed);
                e.bits[side] ^= level.bits[side];
            }
        }
        let dir = ((x >> i) & 1) as usize;
        let step = e.values[dir].wrapping_add(if bit { level.value } else { 0 });
        value = value.wrapping_add(party_sign.wrapping_mul(step));
        seed = e.seeds[dir];
        bit = e.bits[dir];
    }
    let end = convert(&seed).wrapping_add(if bit { key.last } else { 0 });
    value.wrapping_add(party_sign.wrapping_mul(end))
}

impl DcfKey {
    /// The key as ring elements: root seed, per level (seed, value), the level bits packed, the
    /// last correction word.
    pub fn to_words(&self) -> Vec<u64> {
        let n = self.levels.len();
        let mut words = Vec::with_capacity(key_words(n as u32));
        push_seed(&mut words, &self.seed);
        for level in &self.levels {
            push_seed(&mut words, &level.seed);
            words.push(level.value);
        }
        let mut packed = vec![0u64; (2 * n).div_ceil(64)];
        for (i, level) in self.levels.iter().enumerate() {
            for side in 0..2 {
                if level.bits[side] {
                    packed[(2 * i + side) / 64] |= 1 << ((2 * i + side) % 64);
                }
            }
        }
        words.extend(packed);
        words.push(self.last);
        words
    }

    /// The key of `n` levels from [`key_words`]`(n)` ring elements.
    pub fn from_words(n: u32, words: &[u64]) -> Self {
        debug_assert_eq!(words.len(), key_words(n));
        let n = n as usize;
        let seed = read_seed(&words[0..2]);
        let packed = &words[2 + 3 * n..words.len() - 1];
        let levels = (0..n)
            .map(|i| Level {
                seed: read_seed(&words[2 + 3 * i..]),
                value: words[4 + 3 * i],
                bits: [0, 1]
                    .map(|side| packed[(2 * i + side) / 64] >> ((2 * i + side) % 64) & 1 == 1),
            })
            .collect();
        Self {
            seed,
            levels,
            last: words[words.len() - 1],
        }
    }
}

/// `−1` or `1` in the ring (the sign the second party's share carries).
pub(crate) fn sign(negative: bool) -> u64 {
    if negative { u64::MAX } else { 1 }
}

fn xor(a: &Seed, b: &Seed) -> Seed {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn push_seed(words: &mut Vec<u64>, seed: &Seed) {
    words.push(u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")));
    words.push(u64::from_le_bytes(seed[8..].try_into().expect("8 bytes")));
}

fn read_seed(words: &[u64]) -> Seed {
    let mut seed = [0u8; 16];
    seed[..8].copy_from_slice(&words[0].to_le_bytes());
    seed[8..].copy_from_slice(&words[1].to_le_bytes());
    seed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prg::Prg;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_two_evaluations_add_up_to_the_comparison(
            n in 1u32..=63, alpha in any::<u64>(), x in any::<u64>(), beta in any::<u64>(),
            seed in any::<[u8; 16]>(),
        ) {
            let mask = (1u64 << n) - 1;
            let (alpha, x) = (alpha & mask, x & mask);
            let mut rng = Prg::new(&seed);
            let prg = TreePrg::new();
            let keys = generate(&prg, n, alpha, beta, [rng.next_seed(), rng.next_seed()]);
            for probe in [x, alpha, alpha.wrapping_sub(1) & mask, (alpha + 1) & mask, 0, mask] {
                let sum = evaluate(&prg, 0, &keys[0], probe)
                    .wrapping_add(evaluate(&prg, 1, &keys[1], probe));
                prop_assert_eq!(sum, if probe < alpha { beta } else { 0 }, "x={} alpha={}", probe, alpha);
            }
            let words = keys[1].to_words();
            prop_assert_eq!(words.len(), key_words(n));
            prop_assert_eq!(&DcfKey::from_words(n, &words), &keys[1]);
        }
    }
}
