//! Pseudo-random generators: AES-128 in counter mode for the long streams a seed stands for,
//! and the fixed-key AES (Matyas–Meyer–Oseas) PRG of the DCF and DPF trees.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};

/// A 128-bit seed.
pub type Seed = [u8; 16];

/// AES-128-CTR keyed by a seed: the stream of ring elements a party expands from the seed the
/// dealer gave it. Two `Prg`s from the same seed yield the same stream.
pub struct Prg {
    aes: Mmo,
    counter: u128,
    buffer: [u64; 16],
    used: usize,
}

impl Prg {
    /// The stream of `seed`.
    pub fn new(seed: &Seed) -> Self {
        Self {
            aes: Mmo::new(seed),
            counter: 0,
            buffer: [0; 16],
            used: 16,
        }
    }

    /// The next ring element.
    pub fn next_u64(&mut self) -> u64 {
        if self.used == self.buffer.len() {
            self.refill();
        }
        self.used += 1;
        self.buffer[self.used - 1]
    }

    /// The next `n` ring elements: what is left of the buffer, then whole buffers' worth of
    /// blocks encrypted straight into the output (the blocks [`Self::refill`] would make, in
    /// the same order), then the rest from a refill.
    pub fn take(&mut self, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n && self.used < self.buffer.len() {
            out.push(self.next_u64());
        }
        let mut blocks = [0u128; BULK];
        let mut whole = (n - out.len()) / self.buffer.len() * self.buffer.len() / 2;
        while whole > 0 {
            let blocks = &mut blocks[..whole.min(BULK)];
            self.counter_blocks(blocks);
            out.extend(blocks.iter().flat_map(|b| halves(*b)));
            whole -= blocks.len();
        }
        while out.len() < n {
            out.push(self.next_u64());
        }
        out
    }

    /// The next 16 bytes (a fresh seed).
    pub fn next_seed(&mut self) -> Seed {
        let mut seed = [0u8; 16];
        seed[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        seed[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        seed
    }

    fn refill(&mut self) {
        let mut blocks = [0u128; 8];
        self.counter_blocks(&mut blocks);
        for (i, block) in blocks.iter().enumerate() {
            [self.buffer[2 * i], self.buffer[2 * i + 1]] = halves(*block);
        }
        self.used = 0;
    }

    /// The next `blocks.len()` blocks of the stream, `AES_seed(counter)` for the counters from
    /// here on (little-endian): their MMO hash with the counters taken back out.
    fn counter_blocks(&mut self, blocks: &mut [u128]) {
        let start = self.counter;
        for (i, b) in blocks.iter_mut().enumerate() {
            *b = start + i as u128;
        }
        self.counter += blocks.len() as u128;
        self.aes.hash(blocks);
        for (i, b) in blocks.iter_mut().enumerate() {
            *b ^= start + i as u128;
        }
    }
}

/// Blocks [`Prg::take`] encrypts at a time.
const BULK: usize = 256;

/// The fixed key of the tree PRG: a public constant, the same at the dealer and both parties.
const TREE_KEY: [u8; 16] = *b"unfed-mpc/tree\0\0";

/// The length-extending PRG of the FSS trees ([`crate::dcf`], [`crate::dpf`]):
/// `H(x) = AES_k(x) ⊕ x` (Matyas–Meyer–Oseas) under one fixed public key. A tree node's seed
/// `s` (a 128-bit integer whose lowest bit is clear) expands into `H(s ⊕ LEFT)` and
/// `H(s ⊕ RIGHT)`, its children, whose lowest bits are their control bits, and `H(s ⊕ VALUE)`
/// and `H(s ⊕ (VALUE + 1))`, 64-bit values (the DCF's). The inputs differ, so the outputs are
/// independent in the ideal-cipher model. Whole tree levels go through [`Self::hash`] at once,
/// so that AES runs pipelined.
pub struct TreePrg {
    aes: Mmo,
}

/// The tweaks of a node's outputs (values at `VALUE` and `VALUE + 1`).
pub(crate) const LEFT: u128 = 0;
pub(crate) const RIGHT: u128 = 1;
pub(crate) const VALUE: u128 = 2;

impl Default for TreePrg {
    fn default() -> Self {
        Self::new()
    }
}

impl TreePrg {
    pub fn new() -> Self {
        Self {
            aes: Mmo::new(&TREE_KEY),
        }
    }

    /// Replaces every `x` by `H(x)`.
    pub(crate) fn hash(&self, xs: &mut [u128]) {
        self.aes.hash(xs);
    }
}

/// `x ↦ AES_k(x) ⊕ x` under one key: through the wide AES ([`crate::vaes`]) where the CPU has
/// it, the `aes` crate (AES-NI where the CPU has it) otherwise.
struct Mmo {
    cipher: Aes128,
    #[cfg(target_arch = "x86_64")]
    fast: Option<crate::vaes::Keys>,
}

impl Mmo {
    fn new(key: &Seed) -> Self {
        Self {
            cipher: Aes128::new(GenericArray::from_slice(key)),
            #[cfg(target_arch = "x86_64")]
            fast: crate::vaes::keys(key),
        }
    }

    fn hash(&self, xs: &mut [u128]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(keys) = &self.fast {
            let (whole, rest) = xs.split_at_mut(xs.len() / 16 * 16);
            crate::vaes::hash(keys, whole);
            if !rest.is_empty() {
                // The last few blocks padded to a whole group.
                let mut padded = [0u128; 16];
                padded[..rest.len()].copy_from_slice(rest);
                crate::vaes::hash(keys, &mut padded);
                rest.copy_from_slice(&padded[..rest.len()]);
            }
            return;
        }
        self.hash_portable(xs);
    }

    /// [`Self::hash`] through the `aes` crate.
    fn hash_portable(&self, xs: &mut [u128]) {
        const CHUNK: usize = 64;
        let mut blocks = [aes::Block::default(); CHUNK];
        for xs in xs.chunks_mut(CHUNK) {
            let blocks = &mut blocks[..xs.len()];
            for (block, x) in blocks.iter_mut().zip(xs.iter()) {
                *block = x.to_le_bytes().into();
            }
            self.cipher.encrypt_blocks(blocks);
            for (x, block) in xs.iter_mut().zip(blocks.iter()) {
                *x ^= u128::from_le_bytes((*block).into());
            }
        }
    }
}

/// A seed with its lowest (control) bit cleared.
pub(crate) fn clear(seed: u128) -> u128 {
    seed & !1
}

/// All ones where the seed's control bit is set, zeros elsewhere.
pub(crate) fn on(seed: u128) -> u128 {
    0u128.wrapping_sub(seed & 1)
}

/// The two 64-bit halves of a block.
pub(crate) fn halves(x: u128) -> [u64; 2] {
    [x as u64, (x >> 64) as u64]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_names_one_stream_and_different_seeds_differ() {
        let mut a = Prg::new(&[1; 16]);
        let mut b = Prg::new(&[1; 16]);
        let mut c = Prg::new(&[2; 16]);
        let xs = a.take(40);
        assert_eq!(xs, b.take(40));
        assert_ne!(xs, c.take(40));
        assert_ne!(xs[0], xs[1]);
    }

    #[test]
    fn bulk_takes_are_the_stream_word_by_word() {
        let seed = [7; 16];
        let mut one = Prg::new(&seed);
        let words: Vec<u64> = (0..5000).map(|_| one.next_u64()).collect();
        // The first block of the stream is AES_seed(0) (FIPS-197's cipher, via the `aes` crate).
        let mut zero = aes::Block::default();
        Aes128::new(GenericArray::from_slice(&seed)).encrypt_block(&mut zero);
        assert_eq!(words[..2], halves(u128::from_le_bytes(zero.into())));
        let mut bulk = Prg::new(&seed);
        let mut got = Vec::new();
        for n in [3, 0, 13, 16, 1, 600, 31, 2048, 17] {
            got.extend(bulk.take(n));
        }
        got.extend(bulk.take(5000 - got.len()));
        assert_eq!(got, words);
    }

    #[test]
    fn the_tree_prg_is_a_fixed_function_with_distinct_outputs() {
        let g = TreePrg::new();
        let s = clear(u128::from_le_bytes([9; 16]));
        let mut level = [s ^ LEFT, s ^ RIGHT, s ^ VALUE, s ^ LEFT];
        g.hash(&mut level);
        assert_eq!(level[0], level[3]);
        assert!(level[0] != level[1] && level[1] != level[2] && level[0] != level[2]);
        // Batched and one at a time agree, past the chunk size.
        let mut many: Vec<u128> = (0..40u128).map(|i| s ^ (i << 8)).collect();
        let single: Vec<u128> = many
            .iter()
            .map(|&x| {
                let mut one = [x];
                g.hash(&mut one);
                one[0]
            })
            .collect();
        g.hash(&mut many);
        assert_eq!(many, single);
    }

    #[test]
    fn the_wide_aes_path_agrees_with_the_aes_crate() {
        let g = TreePrg::new();
        #[cfg(target_arch = "x86_64")]
        if g.aes.fast.is_none() {
            eprintln!("this CPU has no VAES: only the portable path runs here");
        }
        let mut xs: Vec<u128> = (0..100u128)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
            .collect();
        let mut portable = xs.clone();
        g.hash(&mut xs);
        g.aes.hash_portable(&mut portable);
        assert_eq!(xs, portable);
    }
}
