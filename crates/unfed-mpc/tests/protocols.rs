//! Every protocol against its plaintext function over random inputs, through a real dealer,
//! two parties on two threads and the link between them. Error bounds are stated per test
//! (and collected in `docs/mpc.md`).

mod common;

use common::{encode, reals, run};
use proptest::prelude::*;
use unfed_mpc::ring::{self, FRAC, ULP, decode};
use unfed_mpc::{LutTable, func};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    ProptestConfig::with_cases(cases)
}

/// The reals the encoded inputs stand for (what the protocol is asked to compute on).
fn quantized(x: &[f64]) -> Vec<f64> {
    x.iter().map(|v| decode(ring::encode(*v))).collect()
}

fn max_abs_err(got: &[u64], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (decode(*g) - w).abs())
        .fold(0.0, f64::max)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ring_products_are_exact(seed in any::<u64>(), xs in prop::collection::vec(any::<u64>(), 12)) {
        let (x, y) = xs.split_at(6);
        let got = run(seed, &xs, |ctx, v| ctx.mul_raw(&v[..6], &v[6..])).output;
        prop_assert_eq!(got, ring::mul(x, y));
        let got = run(seed, x, |ctx, v| ctx.square_raw(v)).output;
        prop_assert_eq!(got, ring::mul(x, x));
        // (2×3)·(3×2)
        let got = run(seed, &xs, |ctx, v| ctx.matmul_raw(&v[..6], &v[6..], (2, 3, 2))).output;
        prop_assert_eq!(got, ring::matmul(x, y, 2, 3, 2));
    }

    #[test]
    fn truncation_is_within_two_units(
        seed in any::<u64>(),
        xs in prop::collection::vec(-(1i64 << 61)..(1i64 << 61), 1..100),
        bits in 1u32..40,
    ) {
        let input: Vec<u64> = xs.iter().map(|&v| v as u64).collect();
        let got = run(seed, &input, |ctx, v| ctx.trunc(v, bits)).output;
        for (g, x) in got.iter().zip(&xs) {
            let diff = (*g as i64).wrapping_sub(x >> bits);
            prop_assert!((-1..=2).contains(&diff), "x={x} bits={bits} got={} diff={diff}", *g as i64);
        }
    }

    #[test]
    fn packed_values_unpack_to_themselves(
        values in prop::collection::vec(any::<u64>(), 0..200), width in 1u32..=64,
    ) {
        let values: Vec<u64> = values.iter().map(|v| v & ring::low_mask(width)).collect();
        let words = ring::pack(&values, width);
        prop_assert_eq!(words.len(), (values.len() * width as usize).div_ceil(64));
        prop_assert_eq!(ring::unpack(&words, width, values.len()), values.clone());
        let group = ring::pack_group(width);
        prop_assert_eq!(group * width as usize % 64, 0);
    }

    #[test]
    fn less_than_zero_is_exact_on_its_whole_range(
        seed in any::<u64>(), bits in 1u32..=62, xs in prop::collection::vec(any::<i64>(), 1..24),
    ) {
        let lo = -(1i64 << bits);
        let mut values: Vec<i64> = xs.iter().map(|v| v.rem_euclid(1i64 << bits) * 2 + lo).map(|v| v / 2 + (v & 1)).collect();
        values.extend([lo, -1, 0, (1i64 << bits) - 1]);
        let input: Vec<u64> = values.iter().map(|&v| v as u64).collect();
        let got = run(seed, &input, |ctx, v| Ok(ctx.compare(v, &[0], bits, 0, false)?.0)).output;
        for (g, x) in got.iter().zip(&values) {
            prop_assert_eq!(*g, (*x < 0) as u64, "x={} bits={}", x, bits);
        }
    }

    #[test]
    fn comparisons_with_several_thresholds_and_their_products_are_exact(
        seed in any::<u64>(), xs in prop::collection::vec(-(1i64 << 38)..(1i64 << 38), 1..24),
        thresholds in prop::collection::vec(-(1i64 << 38)..(1i64 << 38), 1..4), low in 0u32..20,
    ) {
        let input: Vec<u64> = xs.iter().map(|&v| v as u64).collect();
        let taus: Vec<u64> = thresholds.iter().map(|&v| v as u64).collect();
        let out = run(seed, &input, |ctx, v| {
            let (below, product) = ctx.compare(v, &taus, 40, low, true)?;
            Ok([below, product].concat())
        }).output;
        let (below, product) = out.split_at(xs.len() * taus.len());
        for (j, tau) in thresholds.iter().enumerate() {
            for (e, x) in xs.iter().enumerate() {
                let (b, p) = (below[j * xs.len() + e], product[j * xs.len() + e]);
                prop_assert!(b <= 1, "x={x} tau={tau}: {b}");
                prop_assert_eq!(p, b.wrapping_mul(*x as u64), "the product follows the bit");
                if (x - tau).abs() >= 1 << low {
                    prop_assert_eq!(b, (x < tau) as u64, "x={} tau={} low={}", x, tau, low);
                }
            }
        }
    }

    #[test]
    fn less_than_zero_on_the_high_bits_is_exact_away_from_zero(
        seed in any::<u64>(), bits in 2u32..=62, low in 1u32..40, xs in prop::collection::vec(any::<i64>(), 1..24),
    ) {
        let low = low % (bits - 1) + 1;
        let (edge, top) = (1i64 << low, (1i64 << bits) - (1i64 << low));
        let mut values: Vec<i64> = xs.iter().map(|v| v.rem_euclid(2 * top + 1) - top).collect();
        values.extend([edge, -edge, top, -top, edge - 1, -edge + 1, 0, -1]);
        let input: Vec<u64> = values.iter().map(|&v| v as u64).collect();
        let got = run(seed, &input, |ctx, v| Ok(ctx.compare(v, &[0], bits, low, false)?.0)).output;
        for (g, x) in got.iter().zip(&values) {
            if x.abs() >= edge {
                prop_assert_eq!(*g, (*x < 0) as u64, "x={} bits={} low={}", x, bits, low);
            } else {
                prop_assert!(*g <= 1, "x={} got {}", x, g);
            }
        }
    }

    #[test]
    fn fixed_point_products_are_within_two_units(seed in any::<u64>()) {
        let x = reals(seed, 64, -300.0, 300.0);
        let y = reals(seed + 1, 64, -300.0, 300.0);
        let input = encode(&[x.clone(), y.clone()].concat());
        let got = run(seed, &input, |ctx, v| func::mul(ctx, &v[..64], &v[64..])).output;
        let want: Vec<f64> = x.iter().zip(&y).map(|(a, b)| decode(ring::encode(*a)) * decode(ring::encode(*b))).collect();
        prop_assert!(max_abs_err(&got, &want) <= 2.0 * ULP);
    }

    #[test]
    fn row_max_is_a_row_element_within_its_slack(seed in any::<u64>(), cols in 1usize..20, close in any::<bool>()) {
        // Rows of values far apart, or all within a few slacks of each other.
        let spread = if close { 4.0 * (-(func::MAX_SLACK as f64)).exp2() } else { 500.0 };
        let x = encode(&reals(seed, 3 * cols, -spread, spread));
        let got = run(seed, &x, |ctx, v| func::max_rows(ctx, v, cols, FRAC + 10)).output;
        let levels = (cols as f64).log2().ceil();
        for (row, got) in x.chunks(cols).zip(&got) {
            let max = *row.iter().max_by_key(|v| **v as i64).unwrap();
            prop_assert!(row.contains(got), "{got} is not in the row");
            let slack = levels * (-(func::MAX_SLACK as f64)).exp2();
            let short = decode(max) - decode(*got);
            prop_assert!(short <= slack, "{short} below the max");
            // Exactly the max where no other element is within the slack of it.
            let runner_up = row.iter().filter(|v| decode(**v) < decode(max)).map(|v| decode(*v)).fold(f64::MIN, f64::max);
            if !close && decode(max) - runner_up > slack {
                prop_assert_eq!(*got, max);
            }
        }
    }

    #[test]
    fn exp_is_within_its_bound(seed in any::<u64>()) {
        let mut x = reals(seed, 64, -24.0, 0.0);
        x.extend(reals(seed ^ 1, 16, -4095.0, 0.0));
        x.extend([0.0, -1e-6, -1.0 / 32.0, -1.0 / 64.0, -15.39, -15.45, -15.47, -15.5, -16.0, -100.0]);
        // The ends of the input range: no index there may alias one inside the table.
        x.extend([-4095.99, -4096.0 + 1e-6, -2048.0, -512.5, -511.97]);
        // What an approximate row max leaves: up to EXP_ABOVE above 0.
        x.extend([1e-6, 1.0 / 64.0, 1.0 / 33.0, 0.25, 0.49, func::EXP_ABOVE]);
        let bits = FRAC + func::EXP_INPUT_LOG2;
        let got = run(seed, &encode(&x), |ctx, v| func::exp_nonpositive(ctx, v, bits)).output;
        let want: Vec<f64> = quantized(&x).iter().map(|v| v.exp()).collect();
        let err = max_abs_err(&got, &want);
        prop_assert!(err <= 1e-5, "max abs error {err:e}");
    }

    #[test]
    fn reciprocal_is_within_its_bound(seed in any::<u64>()) {
        let mut x: Vec<f64> = reals(seed, 48, 0.0, 12.0).iter().map(|v| v.exp2()).collect();
        x.extend([1.0, 2.0, 4095.9]);
        let got = run(seed, &encode(&x), |ctx, v| func::recip(ctx, v, 12)).output;
        let want: Vec<f64> = quantized(&x).iter().map(|v| 1.0 / v).collect();
        let err = max_abs_err(&got, &want);
        prop_assert!(err <= 4.0 * ULP, "max abs error {err:e}");
    }

    #[test]
    fn rsqrt_is_within_its_bound(seed in any::<u64>()) {
        let mut x: Vec<f64> = reals(seed, 48, -12.0, 20.0).iter().map(|v| v.exp2()).collect();
        x.extend([4f64.powi(-6), 1.0, 4.0, 4f64.powi(10) - 1.0]);
        let got = run(seed, &encode(&x), |ctx, v| func::rsqrt(ctx, v, FRAC, -6, 10, 3.0)).output;
        let want: Vec<f64> = quantized(&x).iter().map(|v| 3.0 / v.sqrt()).collect();
        for (g, w) in got.iter().zip(&want) {
            let err = (decode(*g) - w).abs();
            prop_assert!(err <= 1e-5 * w + 2.0 * ULP, "got {} want {w} (error {err:e})", decode(*g));
        }
    }

    #[test]
    fn silu_is_within_its_bound(seed in any::<u64>(), log2 in 5u32..=12) {
        let top = (log2 as f64).exp2() - 1e-3;
        let mut x = reals(seed, 64, -30.0, 30.0);
        // Zero, the first cells (where a share's carry makes the index −1), cell edges and
        // centres, within one of 0 (where a comparison may take either side), both sides of
        // the clamp and within one of it, the table's last cell, the ends of the range.
        x.extend([0.0, -1e-6, 1e-6, 1.0 / 16.0, -1.0 / 16.0, 1.0 / 32.0, 1.5, -1.5, 3.0 / 32.0]);
        x.extend([0.5, -0.5, 0.99, -0.99, 1.01, -1.01]);
        x.extend([15.79, -15.79, 15.8, -15.8, 15.81, -15.81, 16.0, -16.0, 14.8, -14.8]);
        x.extend([16.79, -16.79, 14.9, -14.9, 14.95, -14.95, 15.0, -15.0, top, -top]);
        let got = run(seed, &encode(&x), |ctx, v| func::silu(ctx, v, FRAC + log2)).output;
        let want: Vec<f64> = quantized(&x).iter().map(|v| v / (1.0 + (-v).exp())).collect();
        let err = max_abs_err(&got, &want);
        prop_assert!(err <= 3e-5, "silu max abs error {err:e}");
    }

    #[test]
    fn table_lookups_are_exact(
        seed in any::<u64>(), table in prop::collection::vec(any::<u64>(), 16), idx in prop::collection::vec(any::<u64>(), 1..12),
    ) {
        let other: Vec<u64> = table.iter().map(|v| v.wrapping_mul(3)).collect();
        let tables = [LutTable::new(&table), LutTable::new(&other)];
        let got = run(seed, &idx, |ctx, v| Ok(ctx.lut(v, &[&tables[0], &tables[1]])?.concat())).output;
        let want: Vec<u64> = [&table, &other].iter().flat_map(|t| idx.iter().map(|i| t[(*i & 15) as usize])).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn table_lookups_with_powers_are_exact(
        seed in any::<u64>(), table in prop::collection::vec(any::<u64>(), 16), idx in prop::collection::vec(any::<u64>(), 1..12),
    ) {
        // Products with x and x² are ring products: exact for any words.
        let other: Vec<u64> = table.iter().map(|v| v.wrapping_mul(3)).collect();
        let tables = [LutTable::new(&table), LutTable::new(&other)];
        let x: Vec<u64> = idx.iter().map(|i| i.rotate_left(17) ^ seed).collect();
        let input = [idx.clone(), x.clone()].concat();
        let n = idx.len();
        let got = run(seed, &input, |ctx, v| {
            let (i, x) = v.split_at(n);
            Ok(ctx.lut_powers(i, x, &[(&tables[0], 2), (&tables[1], 1)])?.concat().concat())
        })
        .output;
        let at = |t: &[u64], i: usize| t[(idx[i] & 15) as usize];
        let mut want = Vec::new();
        for p in 0..3u32 {
            want.extend((0..n).map(|i| at(&table, i).wrapping_mul(x[i].wrapping_pow(p))));
        }
        for p in 0..2u32 {
            want.extend((0..n).map(|i| at(&other, i).wrapping_mul(x[i].wrapping_pow(p))));
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn lookups_over_a_wider_domain_are_exact(
        seed in any::<u64>(), table in prop::collection::vec(any::<u64>(), 16), below in 0usize..16,
        domain in 4u32..=12, idx in prop::collection::vec(any::<u64>(), 1..12),
    ) {
        // The table's entries stand for the indices −below … 15 − below, and 0 for every other.
        let window = LutTable::window(&table, below, domain);
        let x: Vec<u64> = idx.iter().map(|i| i.rotate_left(29) ^ seed).collect();
        // Indices near the table half of the time: the others are 0 almost always.
        let idx: Vec<u64> = idx.iter().map(|i| if i & 1 == 0 { (i >> 1) % 40 - 20 } else { *i }).collect();
        let input = [idx.clone(), x.clone()].concat();
        let n = idx.len();
        let got = run(seed, &input, |ctx, v| {
            let (i, x) = v.split_at(n);
            Ok(ctx.lut_powers(i, x, &[(&window, 1)])?.concat().concat())
        })
        .output;
        let size = 1u64 << domain;
        let at = |i: usize| {
            let k = (idx[i].wrapping_add(below as u64)) % size;
            if k < 16 { table[((k + 16 - below as u64) % 16) as usize] } else { 0 }
        };
        let mut want: Vec<u64> = (0..n).map(at).collect();
        want.extend((0..n).map(|i| at(i).wrapping_mul(x[i])));
        prop_assert_eq!(got, want);
    }

    #[test]
    fn products_with_a_value_per_row_are_exact(
        seed in any::<u64>(), y in prop::collection::vec(any::<u64>(), 1..6), cols in 1usize..9,
    ) {
        let x: Vec<u64> = (0..y.len() * cols).map(|i| (i as u64 + seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
        let input = [x.clone(), y.clone()].concat();
        let got = run(seed, &input, |ctx, v| ctx.mul_rows(&v[..x.len()], &v[x.len()..])).output;
        let want: Vec<u64> = x.iter().enumerate().map(|(i, v)| v.wrapping_mul(y[i / cols])).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn lifted_products_are_exact(
        seed in any::<u64>(), y in prop::collection::vec(any::<u64>(), 1..6), cols in 1usize..9,
        top in any::<bool>(),
    ) {
        // Values of 15 bits, shared modulo 2^16 (each party's share's low 16 bits), each times
        // the `y` of its group; with `top`, every value at the largest, 2^15 − 1.
        let v: Vec<u64> = (0..y.len() * cols)
            .map(|i| if top { 0x7fff } else { (i as u64 + seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 49 })
            .collect();
        let input = [v.clone(), y.clone()].concat();
        let got = run(seed, &input, |ctx, s| {
            let low: Vec<u64> = s[..v.len()].iter().map(|s| s & 0xffff).collect();
            ctx.lift_mul(&low, &s[v.len()..], |k| k / cols)
        })
        .output;
        let want: Vec<u64> = v.iter().enumerate().map(|(i, v)| v.wrapping_mul(y[i / cols])).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn softmax_is_within_its_bound(seed in any::<u64>(), cols in 1usize..40) {
        let x = reals(seed, 4 * cols, -30.0, 30.0);
        let got = run(seed, &encode(&x), |ctx, v| func::softmax_rows(ctx, v, cols, None, FRAC + 8)).output;
        let mut want = Vec::new();
        for row in quantized(&x).chunks(cols) {
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            want.extend(row.iter().map(|v| (v - m).exp() / s));
        }
        let err = max_abs_err(&got, &want);
        prop_assert!(err <= 2e-5, "max abs error {err:e}");
    }

    #[test]
    fn rmsnorm_is_within_its_bound(seed in any::<u64>(), scale in -8i32..6) {
        let dim = 64;
        let s = (scale as f64).exp2();
        let x = reals(seed, 3 * dim, -s, s);
        let eps = 1e-5;
        let got = run(seed, &encode(&x), |ctx, v| func::rmsnorm(ctx, v, dim, eps, -6, 10)).output;
        let mut want = Vec::new();
        for row in quantized(&x).chunks(dim) {
            let ms: f64 = row.iter().map(|v| v * v).sum::<f64>() / dim as f64;
            want.extend(row.iter().map(|v| v / (ms + eps).sqrt()));
        }
        let err = max_abs_err(&got, &want);
        prop_assert!(err <= 1e-4, "max abs error {err:e}");
    }
}

type Protocol = dyn Fn(&mut unfed_mpc::Ctx, &[u64]) -> Result<Vec<u64>, unfed_mpc::MpcError> + Sync;

/// The round counts `docs/mpc.md` states, for each function and for a layer.
#[test]
fn documented_round_counts() {
    let rounds = |n: usize, f: &Protocol| run(1, &encode(&vec![0.5; n]), f).stats.rounds;
    assert_eq!(rounds(4, &|c, v| func::mul(c, v, v)), 2);
    assert_eq!(rounds(4, &|c, v| func::exp_nonpositive(c, v, FRAC + 8)), 3);
    assert_eq!(rounds(4, &|c, v| func::recip_unit(c, v)), 3);
    assert_eq!(rounds(4, &|c, v| func::recip(c, v, 8)), 7);
    assert_eq!(rounds(4, &|c, v| func::rsqrt(c, v, FRAC, -6, 10, 1.0)), 7);
    assert_eq!(rounds(4, &|c, v| func::silu(c, v, FRAC + 8)), 4);
    assert_eq!(rounds(12, &|c, v| func::max_rows(c, v, 12, FRAC + 8)), 4);
    assert_eq!(
        rounds(12, &|c, v| func::softmax_rows(c, v, 12, None, FRAC + 8)),
        4 + 12
    );
    assert_eq!(rounds(12, &|c, v| func::rmsnorm(c, v, 4, 1e-5, -6, 10)), 11);
    assert_eq!(
        rounds(12, &|c, v| c.lift_mul(&v[..8], &v[8..], |k| k / 2)),
        1
    );
}

/// The dealt words `docs/mpc.md` states per block: A is dealt none of its own, B its
/// corrections, and the FSS keys' correction words go once, as common words.
#[test]
fn documented_dealt_words() {
    let n = 5;
    let input = encode(&vec![0.25; n]);
    assert_eq!(run(2, &input, |c, v| c.mul_raw(v, v)).dealt, [0, n, 0]);
    assert_eq!(run(2, &input, |c, v| c.trunc(v, 10)).dealt, [0, 2 * n, 0]);
    // A comparison over ℓ = 35 bits above low = 16 (L = 19) with its products, at 3 thresholds.
    let l = 19usize;
    let key = 4 * l + (2 * l).div_ceil(64) + 2;
    let compare = |c: &mut unfed_mpc::Ctx, v: &[u64]| {
        let (below, _) = c.compare(v, &[0, 1, 2], 35, 16, true)?;
        Ok(below)
    };
    assert_eq!(run(2, &input, compare).dealt, [0, 2 * n, n * key]);
    // A lookup in a table of 2^10 entries.
    let m = 10usize;
    let key = 2 * (m - 4) + (2 * (m - 4)).div_ceil(64) + 16;
    let table = LutTable::new(&vec![7u64; 1 << m]);
    let lut = |c: &mut unfed_mpc::Ctx, v: &[u64]| Ok(c.lut(v, &[&table])?.remove(0));
    assert_eq!(run(2, &input, lut).dealt, [0, 0, n * key]);
    // A table of 2^9 entries over an 18-bit domain: the key is the domain's.
    let d = 18usize;
    let wide = 2 * (d - 4) + (2 * (d - 4)).div_ceil(64) + 16;
    let window = LutTable::window(&vec![7u64; 1 << 9], 17, d as u32);
    let lut = |c: &mut unfed_mpc::Ctx, v: &[u64]| Ok(c.lut(v, &[&window])?.remove(0));
    assert_eq!(run(2, &input, lut).dealt, [0, 0, n * wide]);
    // The same lookup with products: x² and one table's product with x and with x².
    let powers = |c: &mut unfed_mpc::Ctx, v: &[u64]| {
        Ok(c.lut_powers(v, v, &[(&table, 2)])?.concat().concat())
    };
    let looked_up = run(2, &input, powers);
    assert_eq!(looked_up.dealt, [0, 3 * n, n * key]);
    // The index (5 values are too few for a packed group of 10-bit values: whole shares) and
    // x − a, then the table's value masked.
    assert_eq!(looked_up.stats.words_sent as usize, 3 * n);
    // Lifting 16-bit shares, with their products by a value per group of 2 (n = 4 + 2).
    let lift = |c: &mut unfed_mpc::Ctx, v: &[u64]| c.lift_mul(&v[..4], &v[4..6], |k| k / 2);
    let lifted = run(2, &encode(&[0.0; 6]), lift);
    assert_eq!(lifted.dealt, [0, 4 * 4, 0]);
    // 16 bits per value and a word per group each way.
    assert_eq!(lifted.stats.words_sent, 1 + 2);
}
