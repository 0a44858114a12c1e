//! Pseudo-random generators: AES-128 in counter mode for the long streams a seed stands for,
//! and the fixed-key AES (Matyas–Meyer–Oseas) length-doubling PRG of the DCF trees.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};

/// A 128-bit seed.
pub type Seed = [u8; 16];

/// AES-128-CTR keyed by a seed: the stream of ring elements a party expands from the seed the
/// dealer gave it. Two `Prg`s from the same seed yield the same stream.
pub struct Prg {
    cipher: Aes128,
    counter: u128,
    buffer: [u64; 16],
    used: usize,
}

impl Prg {
    /// The stream of `seed`.
    pub fn new(seed: &Seed) -> Self {
        Self {
            cipher: Aes128::new(GenericArray::from_slice(seed)),
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

    /// The next `n` ring elements.
    pub fn take(&mut self, n: usize) -> Vec<u64> {
        (0..n).map(|_| self.next_u64()).collect()
    }

    /// The next 16 bytes (a fresh seed).
    pub fn next_seed(&mut self) -> Seed {
        let mut seed = [0u8; 16];
        seed[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        seed[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        seed
    }

    fn refill(&mut self) {
        let mut blocks = [GenericArray::default(); 8];
        for block in &mut blocks {
            block.copy_from_slice(&self.counter.to_le_bytes());
            self.counter += 1;
        }
        self.cipher.encrypt_blocks(&mut blocks);
        for (i, block) in blocks.iter().enumerate() {
            self.buffer[2 * i] = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
            self.buffer[2 * i + 1] = u64::from_le_bytes(block[8..].try_into().expect("8 bytes"));
        }
        self.used = 0;
    }
}

/// One node of a DCF tree expanded: the left and right child seeds, their control bits and
/// the two ring elements the evaluation adds on the way down.
pub(crate) struct Expanded {
    pub seeds: [Seed; 2],
    pub bits: [bool; 2],
    pub values: [u64; 2],
}

/// The fixed keys of the tree PRG: public constants, the same at the dealer and both parties.
const TREE_KEYS: [[u8; 16]; 3] = [
    *b"unfed-mpc/dcf/L\0",
    *b"unfed-mpc/dcf/R\0",
    *b"unfed-mpc/dcf/V\0",
];

/// The length-doubling PRG of the DCF trees: `G(s) = (AES_k(s) ⊕ s)` for three fixed keys,
/// giving the two child seeds (their lowest bit is the control bit, then cleared) and two
/// 64-bit values.
pub struct TreePrg {
    ciphers: [Aes128; 3],
}

impl Default for TreePrg {
    fn default() -> Self {
        Self::new()
    }
}

impl TreePrg {
    pub fn new() -> Self {
        Self {
            ciphers: TREE_KEYS.map(|key| Aes128::new(GenericArray::from_slice(&key))),
        }
    }

    pub(crate) fn expand(&self, seed: &Seed) -> Expanded {
        let mut out = [GenericArray::clone_from_slice(seed); 3];
        for (cipher, block) in self.ciphers.iter().zip(out.iter_mut()) {
            cipher.encrypt_block(block);
            for (b, s) in block.iter_mut().zip(seed) {
                *b ^= s;
            }
        }
        let child = |block: &GenericArray<u8, _>| {
            let mut seed: Seed = block.as_slice().try_into().expect("16 bytes");
            let bit = seed[0] & 1 == 1;
            seed[0] &= !1;
            (seed, bit)
        };
        let (left, left_bit) = child(&out[0]);
        let (right, right_bit) = child(&out[1]);
        Expanded {
            seeds: [left, right],
            bits: [left_bit, right_bit],
            values: [
                u64::from_le_bytes(out[2][..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(out[2][8..].try_into().expect("8 bytes")),
            ],
        }
    }
}

impl TreePrg {
    /// The two children of every seed of a tree level (seeds as little-endian `u128`), with
    /// their control bits, in order (left, right, left, right, …), into `seeds_out` and
    /// `bits_out`: the seed half of [`Self::expand`] for a whole level at once, so that AES
    /// runs pipelined (the DPF's `G`). `blocks` is scratch space.
    pub(crate) fn children(
        &self,
        seeds: &[u128],
        blocks: &mut Vec<aes::Block>,
        seeds_out: &mut Vec<u128>,
        bits_out: &mut Vec<bool>,
    ) {
        let n = seeds.len();
        blocks.clear();
        for _ in 0..2 {
            blocks.extend(seeds.iter().map(|s| aes::Block::from(s.to_le_bytes())));
        }
        let (left, right) = blocks.split_at_mut(n);
        self.ciphers[0].encrypt_blocks(left);
        self.ciphers[1].encrypt_blocks(right);
        seeds_out.clear();
        bits_out.clear();
        for (i, seed) in seeds.iter().enumerate() {
            for side in 0..2 {
                let child = u128::from_le_bytes(blocks[side * n + i].into()) ^ seed;
                bits_out.push(child & 1 == 1);
                seeds_out.push(child & !1);
            }
        }
    }
}

/// A seed's value in the ring (the DCF's `Convert`).
pub(crate) fn convert(seed: &Seed) -> u64 {
    u64::from_le_bytes(seed[..8].try_into().expect("8 bytes"))
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
    fn the_tree_prg_is_deterministic_and_clears_control_bits() {
        let g = TreePrg::new();
        let x = g.expand(&[9; 16]);
        let y = g.expand(&[9; 16]);
        assert_eq!(x.seeds, y.seeds);
        assert_eq!(x.values, y.values);
        assert!(x.seeds.iter().all(|s| s[0] & 1 == 0));
        assert_ne!(x.seeds[0], x.seeds[1]);
        let (mut seeds, mut bits) = (Vec::new(), Vec::new());
        let level = [u128::from_le_bytes([9; 16]), u128::from_le_bytes([3; 16])];
        g.children(&level, &mut Vec::new(), &mut seeds, &mut bits);
        assert_eq!(
            (seeds[0], seeds[1]),
            (
                u128::from_le_bytes(x.seeds[0]),
                u128::from_le_bytes(x.seeds[1])
            )
        );
        assert_eq!((bits[0], bits[1]), (x.bits[0], x.bits[1]));
        assert_eq!(seeds.len(), 4);
    }
}
