//! Distributed point functions (Boyle, Gilboa, Ishai, "Function Secret Sharing: Improvements
//! and Extensions", CCS 2016, Fig. 1): two keys for `f(x) = β if x = α else 0` over `n`-bit
//! inputs, each alone pseudo-random; the two evaluations at every point of the domain add up
//! to `f` in Z_2^64. Keys are evaluated over the whole domain or over runs of its leaves, many
//! keys at once. The table lookups of [`crate::Ctx::lut`] are made of them. The tree stops
//! [`LEAF`] levels early: each leaf seed `s` expands into `2^LEAF` outputs, the halves of
//! `H(s ⊕ j)` for `j < 2^(LEAF − 1)`, and the key carries one output correction per position
//! in a leaf. A full-domain evaluation over 10 bits takes 638 AES blocks, where a tree down to
//! single outputs takes 2046.

use crate::dcf::{CHUNK, descend, read_level, root_pair, sign, write_level};
use crate::prg::{RIGHT, TreePrg, clear, halves, on};

/// The tree stops this many levels above the domain (fewer for smaller domains).
pub const LEAF: u32 = 4;

/// Correction words a key over `n`-bit inputs takes, the same for both parties (a key is also
/// its party's root seed, as in [`crate::dcf`]): the correction seeds of the tree's levels
/// (two words each), their two correction bits per level packed, and the output corrections
/// of a leaf.
pub fn key_words(n: u32) -> usize {
    let (levels, leaf) = shape(n);
    2 * levels + (2 * levels).div_ceil(64) + (1 << leaf)
}

/// The tree's levels and the log2 of a leaf's outputs.
fn shape(n: u32) -> (usize, usize) {
    let leaf = n.min(LEAF);
    ((n - leaf) as usize, leaf as usize)
}

/// The correction words of the keys of `x = alphas[i] ↦ beta` over `n`-bit inputs
/// (`1 ≤ n ≤ 20`: the full domain is evaluated), concatenated, for the parties' uniformly
/// random root seeds `roots[party][i]` (their lowest bits become the control bits).
pub fn generate(
    prg: &TreePrg,
    n: u32,
    (alphas, beta): (&[u64], u64),
    roots: [&[u128]; 2],
    keys: &mut [u64],
) {
    debug_assert!((1..=20).contains(&n) && alphas.iter().all(|a| a >> n == 0));
    debug_assert!(roots.iter().all(|r| r.len() == alphas.len()));
    let kw = key_words(n);
    debug_assert_eq!(keys.len(), alphas.len() * kw);
    for (c, keys) in keys.chunks_mut(CHUNK * kw).enumerate() {
        let r = c * CHUNK..c * CHUNK + keys.len() / kw;
        let roots = [&roots[0][r.clone()], &roots[1][r.clone()]];
        generate_chunk(prg, n, (&alphas[r], beta), roots, keys);
    }
}

fn generate_chunk(
    prg: &TreePrg,
    n: u32,
    (alphas, beta): (&[u64], u64),
    roots: [&[u128]; 2],
    keys: &mut [u64],
) {
    let (count, kw, (levels, leaf)) = (alphas.len(), key_words(n), shape(n));
    let mut seeds: Vec<[u128; 2]> = (0..count).map(|e| root_pair(roots, e)).collect();
    let mut buf = vec![0u128; 4 * count];
    for level in 0..levels {
        let i = n as usize - 1 - level;
        for (e, s) in seeds.iter().enumerate() {
            for b in 0..2 {
                buf[4 * e + 2 * b] = clear(s[b]);
                buf[4 * e + 2 * b + 1] = clear(s[b]) ^ RIGHT;
            }
        }
        prg.hash(&mut buf);
        for (e, s) in seeds.iter_mut().enumerate() {
            let keep = ((alphas[e] >> i) & 1) as usize;
            // h[b][side]: party b's child on that side, its control bit in the lowest bit.
            let h = [0, 1].map(|b| [buf[4 * e + 2 * b], buf[4 * e + 2 * b + 1]]);
            let seed_cw = clear(h[0][1 - keep] ^ h[1][1 - keep]);
            let bits_cw = descend(h, s, keep, seed_cw);
            let key = &mut keys[e * kw..(e + 1) * kw];
            write_level(key, 2 * level, 2 * levels, level, seed_cw, bits_cw);
        }
    }
    let width = 1usize << leaf;
    let mut leaves = Vec::new();
    for (e, s) in seeds.iter().enumerate() {
        leaves.clear();
        for seed in s {
            expand_leaf(prg, *seed, width, &mut leaves);
        }
        let (leaf_a, leaf_b) = leaves.split_at(width);
        let target = (alphas[e] & (width as u64 - 1)) as usize;
        let sign = sign(s[1] & 1 == 1);
        for w in 0..width {
            let beta = if w == target { beta } else { 0 };
            let last = sign.wrapping_mul(beta.wrapping_sub(leaf_a[w]).wrapping_add(leaf_b[w]));
            keys[(e + 1) * kw - width + w] = last;
        }
    }
}

/// Buffers of evaluations, kept from one batch of keys to the next.
#[derive(Default)]
pub struct Scratch {
    level: Vec<u128>,
    next: Vec<u128>,
}

/// Party `party`'s (0 or 1) shares of `f(x)` for every `x` of the domain, in order, into
/// `out`, for the key of this party's root seed `root` (as given to [`generate`]) and the
/// corrections `key` (its [`key_words`]`(n)` words).
pub fn evaluate_all(
    prg: &TreePrg,
    party: u8,
    n: u32,
    (root, key): (u128, &[u64]),
    scratch: &mut Scratch,
    out: &mut Vec<u64>,
) {
    let leaves = 1 << shape(n).0;
    evaluate_runs(prg, party, n, (&[root], key), (&[0], leaves), scratch, out);
}

/// Party `party`'s shares of `f(x)` at the points of `count` leaves (`2^min(n, LEAF)` points
/// each) from `firsts[i]` for each key `i`, key after key, into `out`: the keys of this
/// party's root seeds `roots` and the concatenated corrections `keys`, walked down together
/// level by level (one hash call per level for all of them). Leaves are taken modulo their
/// count, so a run may wrap past the domain's end; a run costs only the tree nodes above it.
/// The full domain is the run of every leaf from 0.
pub fn evaluate_runs(
    prg: &TreePrg,
    party: u8,
    n: u32,
    (roots, keys): (&[u128], &[u64]),
    (firsts, count): (&[u64], usize),
    scratch: &mut Scratch,
    out: &mut Vec<u64>,
) {
    let (kw, (levels, leaf)) = (key_words(n), shape(n));
    debug_assert!(roots.len() == firsts.len() && keys.len() == roots.len() * kw);
    debug_assert!(count >= 1 && count <= 2usize << levels);
    debug_assert!(firsts.iter().all(|f| f >> levels == 0));
    // Nodes are numbered without reduction, so that those above a run of leaves are a run at
    // every depth: node u at depth d is the tree's node u mod 2^d (a run that wraps holds a
    // few of the top nodes twice).
    let run = |first: u64, depth: usize| {
        let last = first + count as u64 - 1;
        (first >> (levels - depth), last >> (levels - depth))
    };
    let Scratch { level, next } = scratch;
    level.clear();
    for (root, first) in roots.iter().zip(firsts) {
        let (lo, hi) = run(*first, 0);
        let nodes = (hi - lo + 1) as usize;
        level.extend(std::iter::repeat_n(clear(*root) | party as u128, nodes));
    }
    for l in 0..levels {
        next.clear();
        for parent in level.iter() {
            next.extend([clear(*parent), clear(*parent) ^ RIGHT]);
        }
        prg.hash(next);
        // Each key's children, corrected, less those outside the run above its leaves.
        let mut at = 0;
        let mut kept = 0;
        for (key, first) in keys.chunks_exact(kw).zip(firsts) {
            let cw = read_level(key, 2 * l, 2 * levels, l);
            let ((parent_lo, parent_hi), (lo, hi)) = (run(*first, l), run(*first, l + 1));
            let parents = (parent_hi - parent_lo + 1) as usize;
            for (pair, parent) in next[2 * at..2 * (at + parents)]
                .chunks_exact_mut(2)
                .zip(&level[at..at + parents])
            {
                let mask = on(*parent);
                pair[0] ^= cw[0] & mask;
                pair[1] ^= cw[1] & mask;
            }
            let from = 2 * at + (lo - 2 * parent_lo) as usize;
            let len = (hi - lo + 1) as usize;
            next.copy_within(from..from + len, kept);
            (at, kept) = (at + parents, kept + len);
        }
        next.truncate(kept);
        std::mem::swap(level, next);
    }
    let width = 1usize << leaf;
    next.clear();
    for s in level.iter() {
        next.extend(leaf_inputs(*s, width / 2));
    }
    prg.hash(next);
    out.clear();
    out.resize(level.len() * width, 0);
    let keys = keys.chunks_exact(kw);
    for ((out, blocks), (seeds, key)) in out
        .chunks_exact_mut(count * width)
        .zip(next.chunks_exact(count * width / 2))
        .zip(level.chunks_exact(count).zip(keys))
    {
        let last = &key[kw - width..];
        for ((out, leaf_blocks), s) in out
            .chunks_exact_mut(width)
            .zip(blocks.chunks_exact(width / 2))
            .zip(seeds)
        {
            // One pass, each output written once: halves copied out first and corrected in a
            // second pass were read back across two stores each, which the CPU cannot forward
            // (13% of a window of 33 leaves' evaluation).
            let mask = on(*s) as u64;
            let sign = (party as u64).wrapping_neg();
            for ((pair, block), last) in out
                .chunks_exact_mut(2)
                .zip(leaf_blocks)
                .zip(last.chunks_exact(2))
            {
                let [lo, hi] = halves(*block);
                // (v ^ sign) − sign is v for party 0 and −v for party 1.
                pair[0] = (lo.wrapping_add(last[0] & mask) ^ sign).wrapping_sub(sign);
                pair[1] = (hi.wrapping_add(last[1] & mask) ^ sign).wrapping_sub(sign);
            }
        }
    }
}

/// A leaf seed's `width` outputs, appended to `out`.
fn expand_leaf(prg: &TreePrg, seed: u128, width: usize, out: &mut Vec<u64>) {
    let mut blocks = [0u128; 1 << (LEAF - 1)];
    let blocks = &mut blocks[..width / 2];
    for (block, input) in blocks.iter_mut().zip(leaf_inputs(seed, width / 2)) {
        *block = input;
    }
    prg.hash(blocks);
    out.extend(blocks.iter().flat_map(|b| halves(*b)));
}

/// The inputs of `H` whose halves are a leaf's outputs: `s ⊕ j` for `j < blocks`.
fn leaf_inputs(seed: u128, blocks: usize) -> impl Iterator<Item = u128> {
    (0..blocks as u128).map(move |j| clear(seed) ^ j)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_two_evaluations_add_up_to_the_point_function(
            n in 1u32..=12, alpha in any::<u64>(), beta in any::<u64>(), seed in any::<[u8; 16]>(),
            run in any::<(u64, usize)>(),
        ) {
            let alpha = alpha & ((1u64 << n) - 1);
            let prg = TreePrg::new();
            // Two keys in one batch: the second, for another point, must not disturb the first.
            let other = (alpha + 1) & ((1u64 << n) - 1);
            let roots = crate::dcf::tests::roots(&seed, 2);
            let kw = key_words(n);
            let mut keys = vec![0; 2 * kw];
            generate(&prg, n, (&[alpha, other], beta), [&roots[0], &roots[1]], &mut keys);
            let mut scratch = Scratch::default();
            for (k, point) in [alpha, other].into_iter().enumerate() {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                let key = &keys[k * kw..(k + 1) * kw];
                evaluate_all(&prg, 0, n, (roots[0][k], key), &mut scratch, &mut a);
                evaluate_all(&prg, 1, n, (roots[1][k], key), &mut scratch, &mut b);
                prop_assert_eq!(a.len(), 1 << n);
                for (x, (a, b)) in a.iter().zip(&b).enumerate() {
                    let want = if x as u64 == point { beta } else { 0 };
                    prop_assert_eq!(a.wrapping_add(*b), want, "x={} point={}", x, point);
                }
                // One party's outputs alone look nothing like the point function.
                prop_assert!(a.iter().filter(|v| **v == 0).count() < 2);
                // Runs of leaves, both keys walked together, each from its own first leaf
                // (wrapping past the domain's end where it does), are those points' outputs.
                let (levels, leaf) = shape(n);
                let count = 1 + run.1 % ((1usize << levels) + 1);
                let firsts = [run.0 % (1u64 << levels), (run.0 >> 32) % (1u64 << levels)];
                for (party, (roots, outputs)) in [(&roots[0], &a), (&roots[1], &b)].into_iter().enumerate() {
                    let mut runs = Vec::new();
                    let (keys, leaves) = (&keys[..], (&firsts[..], count));
                    evaluate_runs(&prg, party as u8, n, (&roots[..], keys), leaves, &mut scratch, &mut runs);
                    let width = 1usize << leaf;
                    let mine = &runs[k * count * width..(k + 1) * count * width];
                    for (p, v) in mine.iter().enumerate() {
                        let x = ((firsts[k] << leaf) as usize + p) % outputs.len();
                        prop_assert_eq!(*v, outputs[x], "first {} count {} point {}", firsts[k], count, x);
                    }
                }
            }
        }
    }
}
