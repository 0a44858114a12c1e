//! The building blocks made of function secret sharing: comparison (DCF keys) and table
//! lookup and one-hot vectors (DPF keys). Part of [`Ctx`]; the dealer makes the keys with
//! the tree PRG, each party evaluates its own.

use crate::ring;
use crate::{Ctx, MpcError, dcf, dpf};

/// A public table for [`Ctx::lut`]: `2^log2` entries, the last `below` of them for the
/// indices `−below … −1`, looked up by an index of `domain ≥ log2` bits. Over a larger domain
/// the table is 0 outside its entries, and a lookup evaluates its DPF key only on the leaves
/// whose points meet them (a run of `2^log2` points), so that a lookup of a value of wide range
/// costs about what a lookup within the table does. Held reversed, doubled over its own domain
/// and otherwise padded with a leaf's width of zeros on each side, so that for any index the
/// entries a lookup needs are one contiguous slice. Made once: the functions' tables are built
/// on first use.
pub struct LutTable {
    log2: u32,
    domain: u32,
    below: usize,
    reversed: Vec<u64>,
}

/// Zeros on each side of a [`LutTable`]'s entries: a DPF leaf's width.
const PAD: usize = 1 << dpf::LEAF;

/// Lookups whose DPF keys are walked down together (their leaves' outputs stay in L2).
const LUT_CHUNK: usize = 64;

impl LutTable {
    /// The table of `entries` (a power of two of them, at least 2) over its own domain: the
    /// index is taken modulo the table's size.
    pub fn new(entries: &[u64]) -> Self {
        Self::window(entries, 0, entries.len().trailing_zeros())
    }

    /// The table of `entries` (a power of two of them, at least 2, the last `below` for
    /// negative indices) over `domain`-bit indices, 0 elsewhere.
    pub fn window(entries: &[u64], below: usize, domain: u32) -> Self {
        let size = entries.len();
        debug_assert!(size.is_power_of_two() && size >= 2 && below < size);
        debug_assert!(size <= 1 << domain && domain <= 20);
        let reversed = if size == 1 << domain {
            // Entry m is that of index −1 − m (mod size), twice round.
            (0..2 * size)
                .map(|m| entries[(2 * size - 1 - m) % size])
                .collect()
        } else {
            // Entry m of the run that a lookup walks is that of index size − 1 − below − m.
            let run = (0..size).map(|m| entries[(2 * size - 1 - below - m) % size]);
            let pad = || std::iter::repeat_n(0, PAD);
            pad().chain(run).chain(pad()).collect()
        };
        Self {
            log2: size.trailing_zeros(),
            domain,
            below,
            reversed,
        }
    }

    /// The log2 of a DPF leaf's outputs over the table's domain.
    fn leaf(&self) -> u32 {
        self.domain.min(dpf::LEAF)
    }

    /// How many DPF leaves a lookup evaluates: every leaf over the table's own domain,
    /// otherwise those over its `2^log2` points, wherever they start.
    fn leaves(&self) -> usize {
        let full = self.log2 == self.domain;
        (1usize << (self.log2 - self.leaf())) + !full as usize
    }

    /// The first leaf of the DPF evaluation at the opened `c` (an index plus the DPF's point),
    /// and where in [`Self::reversed`] the entries for [`Self::leaves`] leaves from it start.
    ///
    /// The lookup is `Σ_j T[c − j]·dpf(j)`. Over the table's own domain that is every leaf,
    /// `T[c − j]` entry `size − 1 − c + j`. Otherwise the entries are nonzero for the `2^log2`
    /// points `j = j0 + m`, `j0 = c + below + 1 − 2^log2`, where `T[c − j]` is entry `m` of
    /// the reversed run: the leaves from `j0`'s on, with `j0 mod` a leaf's width zeros before
    /// and the rest of the last leaf's after.
    fn run(&self, c: u64) -> (u64, usize) {
        let size = 1u64 << self.log2;
        if self.log2 == self.domain {
            return (0, (size - 1 - (c & (size - 1))) as usize);
        }
        let leaf = self.leaf();
        let j0 =
            c.wrapping_add(self.below as u64 + 1).wrapping_sub(size) & ((1 << self.domain) - 1);
        (j0 >> leaf, PAD - (j0 & ((1 << leaf) - 1)) as usize)
    }
}

impl Ctx<'_> {
    /// Shares of `tables[k][idx mod 2^domain]` for every element of the shared index `idx`,
    /// all tables of one shape (one round, `domain` bits per element each way; the dealer
    /// gives a DPF key over `domain` bits per element).
    ///
    /// The opened value is `c = idx + r mod 2^domain` for a dealt uniform `r`; the DPF
    /// evaluates to shares of 1 at `r mod 2^domain` and 0 elsewhere, so
    /// `Σ_j table[(c − j) mod 2^domain]·dpf(j)` is a share of `table[idx mod 2^domain]`. Each
    /// party evaluates its key on the leaves that meet the table's entries: the whole domain
    /// for a table over its own ([`LutTable::new`]).
    pub fn lut(&mut self, idx: &[u64], tables: &[&LutTable]) -> Result<Vec<Vec<u64>>, MpcError> {
        Ok(self.lut_and(idx, tables, &[])?.0)
    }

    /// [`Self::lut`] with products: for each `(table, power)`, shares of `T = table[idx]`
    /// and, for `1 ≤ p ≤ power ≤ 2`, of `T·x^p` (raw, at the sum of the scales), for a shared
    /// `x` of one element per index. Two rounds: `x − a` for a dealt uniform `a` is opened
    /// with the lookup's index, and each `T` with a power is opened masked in the second
    /// (one word per element and table each way, and one for `x`). With `δ = x − a` public,
    /// `x = δ + a` and `x² = δ² + 2δ·a + a²` are linear in the dealt `a` and `a²`; and from the
    /// opened `ε = T − b`, `T·a = ε·a + b·a` and `T·a² = ε·a² + b·a²` are linear in the dealt
    /// `b`, `b·a` and `b·a²`. Returned per table: `[T, T·x, T·x²]` up to its power.
    pub fn lut_powers(
        &mut self,
        idx: &[u64],
        x: &[u64],
        tables: &[(&LutTable, usize)],
    ) -> Result<Vec<Vec<Vec<u64>>>, MpcError> {
        let n = idx.len();
        debug_assert_eq!(x.len(), n);
        let top = tables.iter().map(|t| t.1).max().unwrap_or(0);
        debug_assert!(top <= 2);
        let a = self.random(n);
        let a2 = if top > 1 {
            self.derived(n, || ring::mul(&a, &a))?
        } else {
            Vec::new()
        };
        // Per table with a power: b, b·a and (for the square) b·a².
        let mut masks = Vec::new();
        for &(_, power) in tables.iter().filter(|t| t.1 > 0) {
            let b = self.random(n);
            let ba = self.derived(n, || ring::mul(&b, &a))?;
            let ba2 = if power > 1 {
                self.derived(n, || ring::mul(&b, &a2))?
            } else {
                Vec::new()
            };
            masks.push((b, ba, ba2));
        }
        let only: Vec<&LutTable> = tables.iter().map(|t| t.0).collect();
        let (values, delta) = self.lut_and(idx, &only, &ring::sub(x, &a))?;
        let mut masked = Vec::with_capacity(masks.len() * n);
        for ((value, _), (b, ..)) in values
            .iter()
            .zip(tables)
            .filter(|(_, t)| t.1 > 0)
            .zip(&masks)
        {
            masked.extend(ring::sub(value, b));
        }
        let eps = self.open(&masked)?;
        let (mut eps, mut masks) = (eps.chunks_exact(n.max(1)), masks.iter());
        let mut out = Vec::with_capacity(tables.len());
        for (t, &(_, power)) in values.into_iter().zip(tables) {
            let mut powers = Vec::with_capacity(power + 1);
            if power > 0 {
                let (e, (_, ba, ba2)) = (eps.next().unwrap_or(&[]), masks.next().expect("a mask"));
                // T·a = ε·a + b·a, then T·x = δ·T + T·a.
                let ta = ring::add(&ring::mul(e, &a), ba);
                powers.push(ring::add(&ring::mul(&delta, &t), &ta));
                if power > 1 {
                    // T·a² = ε·a² + b·a², then T·x² = δ²·T + 2δ·T·a + T·a².
                    let ta2 = ring::add(&ring::mul(e, &a2), ba2);
                    let d2_t = ring::mul(&ring::mul(&delta, &delta), &t);
                    let two_d_ta = ring::scale(&ring::mul(&delta, &ta), 2);
                    powers.push(ring::add(&ring::add(&d2_t, &two_d_ta), &ta2));
                }
            }
            powers.insert(0, t);
            out.push(powers);
        }
        Ok(out)
    }

    /// [`Self::lut`] that also opens `whole` in its round.
    fn lut_and(
        &mut self,
        idx: &[u64],
        tables: &[&LutTable],
        whole: &[u64],
    ) -> Result<(Vec<Vec<u64>>, Vec<u64>), MpcError> {
        let (log2, domain, below) = (tables[0].log2, tables[0].domain, tables[0].below);
        debug_assert!(
            tables
                .iter()
                .all(|t| (t.log2, t.domain, t.below) == (log2, domain, below))
        );
        let n = idx.len();
        let mask = (1u64 << domain) - 1;
        let r = self.random(n);
        let roots = self.roots(n);
        let key_words = dpf::key_words(domain);
        let keys = self.dealt_common(n * key_words, |tree, keys| {
            let alphas: Vec<u64> = r.iter().map(|v| v & mask).collect();
            dpf::generate(tree, domain, (&alphas, 1), [&roots[0], &roots[1]], keys)
        })?;
        let (c, whole) = self.open_bits_and(&ring::add(idx, &r), 0, domain, whole)?;
        let Some(party) = self.key_index() else {
            return Ok((vec![vec![0; n]; tables.len()], whole));
        };
        let (keys, roots) = (self.common(keys), &roots[party as usize]);
        let (mut scratch, mut outputs) = (dpf::Scratch::default(), Vec::new());
        let (count, width) = (tables[0].leaves(), 1usize << tables[0].leaf());
        let mut out = vec![Vec::with_capacity(n); tables.len()];
        for (chunk, c) in c.chunks(LUT_CHUNK).enumerate() {
            let at = chunk * LUT_CHUNK..chunk * LUT_CHUNK + c.len();
            let (firsts, starts): (Vec<u64>, Vec<usize>) =
                c.iter().map(|c| tables[0].run(*c)).unzip();
            let keys = &keys[at.start * key_words..at.end * key_words];
            let leaves = (firsts.as_slice(), count);
            dpf::evaluate_runs(
                &self.tree,
                party,
                domain,
                (&roots[at], keys),
                leaves,
                &mut scratch,
                &mut outputs,
            );
            for (start, outputs) in starts.iter().zip(outputs.chunks_exact(count * width)) {
                for (out, t) in out.iter_mut().zip(tables) {
                    out.push(ring::dot(
                        &t.reversed[*start..*start + outputs.len()],
                        outputs,
                    ));
                }
            }
        }
        Ok((out, whole))
    }

    /// Shares of `count` one-hot vectors of length `len ≤ 2^20`, one after the other, whose
    /// ones sit at the `count` positions `points` returns (it runs only at the dealer). No
    /// round: the dealer gives each party a DPF key per vector (a few dozen words), and each
    /// party evaluates it over the whole domain.
    pub fn one_hot(
        &mut self,
        count: usize,
        len: usize,
        points: impl FnOnce() -> Vec<u64>,
    ) -> Result<Vec<u64>, MpcError> {
        let log2 = len.next_power_of_two().trailing_zeros().max(1);
        let key_words = dpf::key_words(log2);
        let roots = self.roots(count);
        let keys = self.dealt_common(count * key_words, |tree, keys| {
            let points = points();
            debug_assert_eq!(points.len(), count);
            dpf::generate(tree, log2, (&points, 1), [&roots[0], &roots[1]], keys)
        })?;
        let Some(party) = self.key_index() else {
            return Ok(vec![0; count * len]);
        };
        let (mut scratch, mut point) = (dpf::Scratch::default(), Vec::new());
        let mut out = Vec::with_capacity(count * len);
        let keys = self.common(keys).chunks_exact(key_words);
        for (key, root) in keys.zip(&roots[party as usize]) {
            dpf::evaluate_all(
                &self.tree,
                party,
                log2,
                (*root, key),
                &mut scratch,
                &mut point,
            );
            out.extend_from_slice(&point[..len]);
        }
        Ok(out)
    }

    /// For each public threshold `τ` (a ring element at the scale of `x`): shares of
    /// `[x < τ]`, and when `times` of `[x < τ]·x`, threshold after threshold (`τ`-major,
    /// `thresholds.len() · n` each). One round and n words each way for all of it: `x` is
    /// opened masked once, and the dealer gives one DCF key per element, which each party
    /// evaluates at every threshold. Each `x − τ` must lie in `[−2^bits, 2^bits)`,
    /// `bits ≤ 62`; the comparison looks at the bits above `low`, and is exact wherever
    /// `2^low ≤ |x − τ| ≤ 2^bits − 2^low` (everywhere for `low = 0`), 0 or 1 elsewhere.
    ///
    /// With the opened `c = x + 2^bits + r` and `y = c − τ − r = x − τ + 2^bits`, which lies in
    /// `[0, 2^(bits+1))`: `x ≥ τ` exactly when bit `bits` of `y` is set, and that bit is
    /// `c'_bits ⊕ r_bits ⊕ D` for `c' = c − τ` and `D = [c' mod 2^bits < r mod 2^bits]`. `D` is
    /// the DCF at `c'`, whose output the dealer sets to `1 − 2·r_bits`, so that adding shares of
    /// `r_bits` gives `X = r_bits ⊕ D`. Comparing without the low `low` bits decides `D`
    /// wrongly only when `c'` and `r` agree above them, that is when `y mod 2^bits` is within
    /// `2^low` of 0.
    ///
    /// The product needs no second round (as in the FSS ReLU gates of Boyle et al.):
    /// `[x < τ]·x = [x < τ]·(c − 2^bits) − [x < τ]·r`, the first term public times shared, and
    /// `[x < τ]·r = r − c'_bits·r − (1 − 2·c'_bits)·X·r`, whose `X·r` the DCF gives as a second
    /// output, `(1 − 2·r_bits)·r`, next to a dealt share of `r_bits·r`.
    pub fn compare(
        &mut self,
        x: &[u64],
        thresholds: &[u64],
        bits: u32,
        low: u32,
        times: bool,
    ) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
        debug_assert!((1..=62).contains(&bits) && low < bits);
        let (n, t) = (x.len(), thresholds.len());
        let mask = (1u64 << bits) - 1;
        let outputs = if times { 2 } else { 1 };
        let r = self.random(n);
        let r_bit = self.derived(n, || r.iter().map(|v| (v >> bits) & 1).collect())?;
        let r_times_bit = if times {
            self.derived(n, || ring::mul(&r, &r_bit))?
        } else {
            Vec::new()
        };
        let shape = (bits - low, outputs);
        let key_words = dcf::key_words(shape.0, outputs);
        let roots = self.roots(n);
        let keys = self.dealt_common(n * key_words, |tree, keys| {
            let alphas: Vec<u64> = r.iter().map(|v| (v & mask) >> low).collect();
            let betas: Vec<u64> = r
                .iter()
                .zip(&r_bit)
                .flat_map(|(r, b)| {
                    let sign = 1u64.wrapping_sub(2 * b);
                    [sign, sign.wrapping_mul(*r)].into_iter().take(outputs)
                })
                .collect();
            dcf::generate(tree, shape, &alphas, &betas, [&roots[0], &roots[1]], keys)
        })?;
        let mut masked = ring::add(x, &r);
        self.add_public(&mut masked, 1 << bits);
        let c = self.open(&masked)?;
        let products = if times { t * n } else { 0 };
        let Some(party) = self.key_index() else {
            return Ok((vec![0; t * n], vec![0; products]));
        };
        let a = party == 0;
        let points: Vec<u64> = c
            .iter()
            .flat_map(|c| {
                thresholds
                    .iter()
                    .map(move |tau| (c.wrapping_sub(*tau) & mask) >> low)
            })
            .collect();
        let roots = &roots[party as usize];
        let d = dcf::evaluate(
            &self.tree,
            party,
            shape,
            roots,
            self.common(keys),
            &points,
            t,
        );
        let (mut below, mut product) = (vec![0u64; t * n], vec![0u64; products]);
        for (e, c) in c.iter().enumerate() {
            for (j, tau) in thresholds.iter().enumerate() {
                let at = (e * t + j) * outputs;
                let c_bit = (c.wrapping_sub(*tau) >> bits) & 1;
                let sign = 1u64.wrapping_sub(2 * c_bit);
                let x_share = r_bit[e].wrapping_add(d[at]);
                let mut lt = sign.wrapping_mul(x_share).wrapping_neg();
                if a {
                    lt = lt.wrapping_add(1 - c_bit);
                }
                below[j * n + e] = lt;
                if times {
                    let xr = r_times_bit[e].wrapping_add(d[at + 1]);
                    let lt_r = r[e]
                        .wrapping_sub(c_bit.wrapping_mul(r[e]))
                        .wrapping_sub(sign.wrapping_mul(xr));
                    product[j * n + e] = lt
                        .wrapping_mul(c.wrapping_sub(1 << bits))
                        .wrapping_sub(lt_r);
                }
            }
        }
        Ok((below, product))
    }
}
