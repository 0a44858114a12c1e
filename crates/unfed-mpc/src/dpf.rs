//! Distributed point functions (Boyle, Gilboa, Ishai, "Function Secret Sharing: Improvements
//! and Extensions", CCS 2016, Fig. 1) with full-domain evaluation: two keys for
//! `f(x) = β if x = α else 0` over `n`-bit inputs, each alone pseudo-random; the two
//! evaluations at every point of the domain add up to `f` in Z_2^64. The table lookups of
//! [`crate::Ctx::lut`] are made of them. The tree stops one level early: each leaf seed gives
//! two 64-bit outputs, halving the AES work of a full-domain evaluation.

use crate::dcf::sign;
use crate::prg::{Seed, TreePrg};

/// One party's key: its root seed, the correction words of the levels (the same in both
/// keys) and the output correction of the two halves of a leaf. Seeds are 128-bit
/// little-endian integers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpfKey {
    pub seed: u128,
    pub levels: Vec<(u128, [bool; 2])>,
    pub last: [u64; 2],
}

/// Ring elements a key over `n`-bit inputs takes on the wire ([`DpfKey::to_words`]).
pub fn key_words(n: u32) -> usize {
    let levels = n as usize - 1;
    2 + 2 * levels + (2 * levels).div_ceil(64) + 2
}

/// The two keys of `x = alpha ↦ beta` over `n`-bit inputs (`1 ≤ n ≤ 20`: the full domain is
/// evaluated), from two fresh random root seeds.
pub fn generate(prg: &TreePrg, n: u32, alpha: u64, beta: u64, roots: [Seed; 2]) -> [DpfKey; 2] {
    debug_assert!((1..=20).contains(&n) && alpha >> n == 0);
    let mut seeds = roots.map(u128::from_le_bytes);
    let mut bits = [false, true];
    let mut levels = Vec::with_capacity(n as usize - 1);
    let (mut blocks, mut children, mut child_bits) = (Vec::new(), Vec::new(), Vec::new());
    for i in (1..n).rev() {
        let keep = ((alpha >> i) & 1) as usize;
        let lose = 1 - keep;
        prg.children(&seeds, &mut blocks, &mut children, &mut child_bits);
        // e[b][side]: party b's child on that side.
        let e =
            [0, 1].map(|b| [0, 1].map(|side| (children[2 * b + side], child_bits[2 * b + side])));
        let seed_cw = e[0][lose].0 ^ e[1][lose].0;
        let bits_cw = [
            e[0][0].1 ^ e[1][0].1 ^ (keep == 1) ^ true,
            e[0][1].1 ^ e[1][1].1 ^ (keep == 1),
        ];
        for b in 0..2 {
            let (child, bit) = e[b][keep];
            seeds[b] = if bits[b] { child ^ seed_cw } else { child };
            bits[b] = bit ^ (bits[b] & bits_cw[keep]);
        }
        levels.push((seed_cw, bits_cw));
    }
    let last = [0, 1].map(|half| {
        let target = if alpha & 1 == half { beta } else { 0 };
        sign(bits[1]).wrapping_mul(
            target
                .wrapping_sub(halves(seeds[0])[half as usize])
                .wrapping_add(halves(seeds[1])[half as usize]),
        )
    });
    roots.map(|seed| DpfKey {
        seed: u128::from_le_bytes(seed),
        levels: levels.clone(),
        last,
    })
}

/// Party `party`'s (0 or 1) shares of `f(x)` for every `x` of the domain, in order.
pub fn evaluate_all(prg: &TreePrg, party: u8, key: &DpfKey) -> Vec<u64> {
    let mut seeds = vec![key.seed];
    let mut bits = vec![party == 1];
    let (mut blocks, mut next, mut next_bits) = (Vec::new(), Vec::new(), Vec::new());
    for (seed_cw, bits_cw) in &key.levels {
        prg.children(&seeds, &mut blocks, &mut next, &mut next_bits);
        for (i, (child, bit)) in next.iter_mut().zip(next_bits.iter_mut()).enumerate() {
            let parent = bits[i / 2];
            *child ^= seed_cw & 0u128.wrapping_sub(parent as u128);
            *bit ^= parent & bits_cw[i % 2];
        }
        std::mem::swap(&mut seeds, &mut next);
        std::mem::swap(&mut bits, &mut next_bits);
    }
    let party_sign = sign(party == 1);
    let mut out = Vec::with_capacity(2 * seeds.len());
    for (seed, bit) in seeds.iter().zip(&bits) {
        let on = 0u64.wrapping_sub(*bit as u64);
        for (half, last) in halves(*seed).iter().zip(key.last) {
            out.push(party_sign.wrapping_mul(half.wrapping_add(last & on)));
        }
    }
    out
}

impl DpfKey {
    /// The key as ring elements: root seed, the level seeds, the level bits packed, the output
    /// correction.
    pub fn to_words(&self) -> Vec<u64> {
        let n = self.levels.len();
        let mut words = Vec::with_capacity(key_words(n as u32 + 1));
        push_seed(&mut words, &self.seed);
        let mut packed = vec![0u64; (2 * n).div_ceil(64)];
        for (i, (seed, bits)) in self.levels.iter().enumerate() {
            push_seed(&mut words, seed);
            for (side, &bit) in bits.iter().enumerate() {
                packed[(2 * i + side) / 64] |= (bit as u64) << ((2 * i + side) % 64);
            }
        }
        words.extend(packed);
        words.extend(self.last);
        words
    }

    /// The key over `n`-bit inputs from [`key_words`]`(n)` ring elements.
    pub fn from_words(n: u32, words: &[u64]) -> Self {
        debug_assert_eq!(words.len(), key_words(n));
        let n = n as usize - 1;
        let packed = &words[2 + 2 * n..words.len() - 2];
        let bit = |j: usize| packed[j / 64] >> (j % 64) & 1 == 1;
        Self {
            seed: read_seed(&words[0..2]),
            levels: (0..n)
                .map(|i| (read_seed(&words[2 + 2 * i..]), [bit(2 * i), bit(2 * i + 1)]))
                .collect(),
            last: [words[words.len() - 2], words[words.len() - 1]],
        }
    }
}

/// A leaf seed's two outputs.
fn halves(seed: u128) -> [u64; 2] {
    [seed as u64, (seed >> 64) as u64]
}

fn push_seed(words: &mut Vec<u64>, seed: &u128) {
    words.push(*seed as u64);
    words.push((seed >> 64) as u64);
}

fn read_seed(words: &[u64]) -> u128 {
    words[0] as u128 | (words[1] as u128) << 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prg::Prg;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_two_evaluations_add_up_to_the_point_function(
            n in 1u32..=11, alpha in any::<u64>(), beta in any::<u64>(), seed in any::<[u8; 16]>(),
        ) {
            let alpha = alpha & ((1u64 << n) - 1);
            let mut rng = Prg::new(&seed);
            let prg = TreePrg::new();
            let keys = generate(&prg, n, alpha, beta, [rng.next_seed(), rng.next_seed()]);
            let a = evaluate_all(&prg, 0, &keys[0]);
            let b = evaluate_all(&prg, 1, &keys[1]);
            prop_assert_eq!(a.len(), 1 << n);
            for (x, (a, b)) in a.iter().zip(&b).enumerate() {
                let want = if x as u64 == alpha { beta } else { 0 };
                prop_assert_eq!(a.wrapping_add(*b), want, "x={} alpha={}", x, alpha);
            }
            // One party's outputs alone look nothing like the point function.
            prop_assert!(a.iter().filter(|v| **v == 0).count() < 2);
            let words = keys[1].to_words();
            prop_assert_eq!(words.len(), key_words(n));
            prop_assert_eq!(&DpfKey::from_words(n, &words), &keys[1]);
        }
    }
}
