//! A party's (or the dealer's) view of one computation: where its correlated randomness comes
//! from, the link to the other party, and the interactive building blocks — opening, Beaver
//! products, truncation, comparison, table lookup — every protocol is made of.
//!
//! The same protocol code runs in three roles. Party A and party B hold shares and exchange
//! masked values over a [`Link`]. The dealer (the client) runs the identical sequence of calls
//! with no link and no data: where a party *draws* correlated randomness the dealer *makes* it,
//! so what it deals is exactly what the parties will consume, in order. Control flow never
//! depends on a secret, so the two runs cannot drift apart; a party that runs out of material,
//! or has some left over, reports it.

mod fss;

pub use fss::LutTable;

use std::sync::Arc;

use crate::prg::{Prg, Seed, TreePrg};
use crate::ring;
use crate::{Link, MpcError, Role};

/// What the dealer gives one party for one computation: a seed that expands into most of its
/// material (its shares of masks and triples, its FSS keys' root seeds), the words that cannot
/// be expanded and are this party's alone (B's corrections), and the words both parties get
/// alike (the FSS keys' correction words), which a dealer sends once for both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub seed: Seed,
    pub words: Vec<u64>,
    pub common: Arc<Vec<u64>>,
}

impl Material {
    /// Bytes on the wire of this party's own part (the common words not included).
    pub fn own_len_bytes(&self) -> usize {
        16 + 8 * self.words.len()
    }

    /// The wire form of this party's own part: the seed, then its words, little-endian.
    pub fn own_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.own_len_bytes());
        out.extend_from_slice(&self.seed);
        out.extend_from_slice(&ring::to_bytes(&self.words));
        out
    }

    /// The wire form of the common words, little-endian.
    pub fn common_bytes(&self) -> Vec<u8> {
        ring::to_bytes(&self.common)
    }

    /// The material from its two wire forms; None when `own` is not a seed and whole words or
    /// `common` not whole words.
    pub fn from_bytes(own: &[u8], common: &[u8]) -> Option<Self> {
        let (seed, words) = own.split_first_chunk::<16>()?;
        Some(Self {
            seed: *seed,
            words: ring::from_bytes(words)?,
            common: Arc::new(ring::from_bytes(common)?),
        })
    }
}

/// Traffic of one party over its link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Exchanges with the other party (each is one message each way, sent concurrently).
    pub rounds: u64,
    /// Ring elements this party sent.
    pub words_sent: u64,
}

/// One role's context for one computation.
pub struct Ctx<'l> {
    source: Source,
    link: Option<&'l mut dyn Link>,
    tree: TreePrg,
    stats: Stats,
}

enum Source {
    Party {
        role: Role,
        prg: Box<Prg>,
        words: Vec<u64>,
        used: usize,
        common: Arc<Vec<u64>>,
        common_used: usize,
    },
    Dealer {
        seeds: [Seed; 2],
        prg: Box<[Prg; 2]>,
        words: [Vec<u64>; 2],
        common: Vec<u64>,
    },
}

/// One matrix product of a batch: `x (m×k)`, `y (k×n)`, `(m, k, n)`.
pub type MatmulItem<'a> = (&'a [u64], &'a [u64], (usize, usize, usize));

impl<'l> Ctx<'l> {
    /// Party `role`, consuming `material` and talking over `link`.
    pub fn party(role: Role, material: Material, link: &'l mut dyn Link) -> Self {
        Self {
            source: Source::Party {
                role,
                prg: Box::new(Prg::new(&material.seed)),
                words: material.words,
                used: 0,
                common: material.common,
                common_used: 0,
            },
            link: Some(link),
            tree: TreePrg::new(),
            stats: Stats::default(),
        }
    }

    /// The dealer, from two independent uniformly random seeds: A's and B's.
    pub fn dealer(seeds: [Seed; 2]) -> Ctx<'static> {
        Ctx {
            source: Source::Dealer {
                seeds,
                prg: Box::new(seeds.map(|s| Prg::new(&s))),
                words: [Vec::new(), Vec::new()],
                common: Vec::new(),
            },
            link: None,
            tree: TreePrg::new(),
            stats: Stats::default(),
        }
    }

    /// At the dealer, room for this many of A's words, B's words and common words (nothing at
    /// a party).
    pub fn reserve(&mut self, [a, b, common]: [usize; 3]) {
        if let Source::Dealer {
            words, common: c, ..
        } = &mut self.source
        {
            words[0].reserve(a);
            words[1].reserve(b);
            c.reserve(common);
        }
    }

    /// At the dealer, how many of A's words, B's words and common words it dealt so far
    /// (zeros at a party).
    pub fn dealt_len(&self) -> [usize; 3] {
        match &self.source {
            Source::Dealer { words, common, .. } => [words[0].len(), words[1].len(), common.len()],
            Source::Party { .. } => [0; 3],
        }
    }

    /// The party this context plays, `None` for the dealer.
    pub fn role(&self) -> Option<Role> {
        match &self.source {
            Source::Party { role, .. } => Some(*role),
            Source::Dealer { .. } => None,
        }
    }

    /// The index the FSS keys use for this party (A 0, B 1), `None` for the dealer.
    fn key_index(&self) -> Option<u8> {
        self.role().map(|role| (role == Role::B) as u8)
    }

    pub fn is_dealer(&self) -> bool {
        self.role().is_none()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The dealer's output: A's and B's material (their common words one allocation).
    /// `None` for a party.
    pub fn into_material(self) -> Option<[Material; 2]> {
        match self.source {
            Source::Dealer {
                seeds,
                words: [a, b],
                common,
                ..
            } => {
                let common = Arc::new(common);
                let material = |seed, words| Material {
                    seed,
                    words,
                    common: common.clone(),
                };
                Some([material(seeds[0], a), material(seeds[1], b)])
            }
            Source::Party { .. } => None,
        }
    }

    /// A party's check at the end: every dealt word was used, its own and the common ones.
    pub fn finish(&self) -> Result<(), MpcError> {
        match &self.source {
            Source::Party {
                words,
                used,
                common,
                common_used,
                ..
            } if *used != words.len() || *common_used != common.len() => {
                Err(MpcError::MaterialLeftOver {
                    left: words.len() - used + common.len() - common_used,
                })
            }
            _ => Ok(()),
        }
    }

    /// Adds a public constant to a shared vector (party A's share takes it).
    pub fn add_public(&self, x: &mut [u64], c: u64) {
        if self.role() == Some(Role::A) {
            x.iter_mut().for_each(|v| *v = v.wrapping_add(c));
        }
    }

    /// Adds a public vector to a shared vector.
    pub fn add_public_vec(&self, x: &mut [u64], c: &[u64]) {
        if self.role() == Some(Role::A) {
            ring::add_assign(x, c);
        }
    }

    /// Opens a shared vector: both parties learn `x`. One round.
    pub fn open(&mut self, x: &[u64]) -> Result<Vec<u64>, MpcError> {
        if self.is_dealer() {
            return Ok(vec![0; x.len()]);
        }
        Ok(ring::add(x, &self.exchange(x)?))
    }

    /// One round: sends `message`, returns the other party's message of the same length.
    fn exchange(&mut self, message: &[u64]) -> Result<Vec<u64>, MpcError> {
        let link = self.link.as_deref_mut().expect("a party has a link");
        let theirs = link.exchange(message)?;
        if theirs.len() != message.len() {
            return Err(MpcError::PeerLength {
                expected: message.len(),
                got: theirs.len(),
            });
        }
        self.stats.rounds += 1;
        self.stats.words_sent += message.len() as u64;
        Ok(theirs)
    }

    /// Opens bits `shift .. shift + width` of each party's share: both parties learn
    /// `Σ_parties (share >> shift) mod 2^width`, which is bits `shift ..` of `x` when
    /// `shift = 0`, and otherwise `⌊x / 2^shift⌋` or one less (the carry between the shares'
    /// low bits), modulo `2^width`. One round; whole groups of values go packed at `width`
    /// bits ([`ring::pack`]), the few left over as whole shares (from which the other party
    /// takes the same bits), so every word sent is as uniform as the shares are.
    pub fn open_bits(&mut self, x: &[u64], shift: u32, width: u32) -> Result<Vec<u64>, MpcError> {
        Ok(self.open_bits_and(x, shift, width, &[])?.0)
    }

    /// [`Self::open_bits`] of `x` and [`Self::open`] of `whole`, in one round.
    fn open_bits_and(
        &mut self,
        x: &[u64],
        shift: u32,
        width: u32,
        whole: &[u64],
    ) -> Result<(Vec<u64>, Vec<u64>), MpcError> {
        if self.is_dealer() {
            return Ok((vec![0; x.len()], vec![0; whole.len()]));
        }
        let part = |v: &u64| (v >> shift) & ring::low_mask(width);
        let packed = x.len() / ring::pack_group(width) * ring::pack_group(width);
        let mine: Vec<u64> = x.iter().map(part).collect();
        let mut message = ring::pack(&mine[..packed], width);
        let packed_words = message.len();
        message.extend_from_slice(&x[packed..]);
        message.extend_from_slice(whole);
        let theirs = self.exchange(&message)?;
        let (theirs, theirs_whole) = theirs.split_at(message.len() - whole.len());
        let mut sum = ring::unpack(&theirs[..packed_words], width, packed);
        sum.extend(theirs[packed_words..].iter().map(part));
        ring::add_assign(&mut sum, &mine);
        sum.iter_mut().for_each(|v| *v &= ring::low_mask(width));
        Ok((sum, ring::add(whole, theirs_whole)))
    }

    /// Shares of `n` uniformly random ring elements neither party knows (the dealer sees the
    /// values). Costs no words: both parties expand their seeds.
    pub fn random(&mut self, n: usize) -> Vec<u64> {
        match &mut self.source {
            Source::Party { prg, .. } => prg.take(n),
            Source::Dealer { prg, .. } => ring::add(&prg[0].take(n), &prg[1].take(n)),
        }
    }

    /// Shares of values the dealer computes from what it dealt before (`value` runs only at the
    /// dealer): A expands its share from its seed, B receives the correction.
    pub fn derived(
        &mut self,
        n: usize,
        value: impl FnOnce() -> Vec<u64>,
    ) -> Result<Vec<u64>, MpcError> {
        match &mut self.source {
            Source::Party {
                role: Role::A, prg, ..
            } => Ok(prg.take(n)),
            Source::Party { role: Role::B, .. } => self.take_words(n),
            Source::Dealer { prg, words, .. } => {
                let v = value();
                debug_assert_eq!(v.len(), n);
                words[1].extend(ring::sub(&v, &prg[0].take(n)));
                Ok(v)
            }
        }
    }

    fn take_words(&mut self, n: usize) -> Result<Vec<u64>, MpcError> {
        let Source::Party { words, used, .. } = &mut self.source else {
            unreachable!("only parties read words");
        };
        let range = take(words.len(), used, n)?;
        Ok(words[range].to_vec())
    }

    /// Common words taken before ([`Self::dealt_common`]), read in place (empty at the dealer).
    fn common(&self, range: std::ops::Range<usize>) -> &[u64] {
        match &self.source {
            Source::Party { common, .. } => &common[range],
            Source::Dealer { .. } => &[],
        }
    }

    /// Elementwise product of two shared vectors (Beaver triple; one round, 2n words each way).
    /// The scale of the result is the sum of the inputs' scales: no truncation.
    pub fn mul_raw(&mut self, x: &[u64], y: &[u64]) -> Result<Vec<u64>, MpcError> {
        let n = x.len();
        debug_assert_eq!(y.len(), n);
        let a = self.random(n);
        let b = self.random(n);
        let c = self.derived(n, || ring::mul(&a, &b))?;
        let mut masked = ring::sub(x, &a);
        masked.extend(ring::sub(y, &b));
        let opened = self.open(&masked)?;
        let (d, e) = opened.split_at(n);
        let mut z = c;
        for i in 0..n {
            z[i] = z[i]
                .wrapping_add(d[i].wrapping_mul(b[i]))
                .wrapping_add(e[i].wrapping_mul(a[i]));
        }
        self.add_public_vec(&mut z, &ring::mul(d, e));
        Ok(z)
    }

    /// Elementwise products of the rows of a `rows × cols` shared matrix `x` with a shared
    /// value per row, `y` (one round, `rows·cols + rows` words each way), no truncation: one
    /// mask on each `y` serves its whole row, so `y` is opened masked once.
    pub fn mul_rows(&mut self, x: &[u64], y: &[u64]) -> Result<Vec<u64>, MpcError> {
        let cols = x.len() / y.len().max(1);
        debug_assert_eq!(x.len(), cols * y.len());
        let a = self.random(x.len());
        let b = self.random(y.len());
        let c = self.derived(x.len(), || {
            a.iter()
                .enumerate()
                .map(|(i, a)| a.wrapping_mul(b[i / cols]))
                .collect()
        })?;
        let mut masked = ring::sub(x, &a);
        masked.extend(ring::sub(y, &b));
        let opened = self.open(&masked)?;
        let (d, e) = opened.split_at(x.len());
        let a_party = self.role() == Some(Role::A);
        let mut z = c;
        for (i, z) in z.iter_mut().enumerate() {
            let (b, e) = (b[i / cols], e[i / cols]);
            *z = z
                .wrapping_add(d[i].wrapping_mul(b))
                .wrapping_add(e.wrapping_mul(a[i]));
            if a_party {
                *z = z.wrapping_add(d[i].wrapping_mul(e));
            }
        }
        Ok(z)
    }

    /// Products `v·y` of values `v ∈ [0, 2^15)` shared modulo 2^16 (`x`: each party's share,
    /// below 2^16) with full-width shared values `y`, element `k` with `y[group(k)]`: one
    /// round, 16 bits per `v` and a word per `y` each way, no truncation. The parties open
    /// `c = v + r mod 2^16` for a dealt uniform `r`, and `y` masked; with `r' = r mod 2^15` and
    /// `s` its bit 15, both dealt as full-width shares, `v = c − 2^15·msb(c) + 2^15·(msb(c) ⊕ s)
    /// − r'` exactly (`v + r' < 2^16` cannot wrap, as in [`Self::trunc`]), which is linear in
    /// `s` and `r'`; the products of `s` and `r'` with `y`'s mask are dealt.
    pub fn lift_mul(
        &mut self,
        x: &[u64],
        y: &[u64],
        group: impl Fn(usize) -> usize,
    ) -> Result<Vec<u64>, MpcError> {
        const HIGH: u64 = 1 << 15;
        let n = x.len();
        let r = self.random(n);
        let a = self.random(y.len());
        let low = self.derived(2 * n, || {
            let mut v: Vec<u64> = r.iter().map(|r| r % HIGH).collect();
            v.extend(r.iter().map(|r| r >> 15 & 1));
            v
        })?;
        let (r_low, s) = low.split_at(n);
        let masked = self.derived(2 * n, || {
            let mut v: Vec<u64> = (0..n).map(|k| r_low[k].wrapping_mul(a[group(k)])).collect();
            v.extend((0..n).map(|k| s[k].wrapping_mul(a[group(k)])));
            v
        })?;
        let (r_low_a, s_a) = masked.split_at(n);
        let c: Vec<u64> = x.iter().zip(&r).map(|(x, r)| x.wrapping_add(*r)).collect();
        let (c, e) = self.open_bits_and(&c, 0, 16, &ring::sub(y, &a))?;
        Ok((0..n)
            .map(|k| {
                let (c, j) = (c[k], group(k));
                // v·y = c·y + 2^15·(1 − 2·msb(c))·s·y − r'·y, with s·y = e·s + s·a and
                // r'·y = e·r' + r'·a.
                let sign = if c & HIGH == 0 {
                    HIGH
                } else {
                    HIGH.wrapping_neg()
                };
                let s_y = e[j].wrapping_mul(s[k]).wrapping_add(s_a[k]);
                let r_y = e[j].wrapping_mul(r_low[k]).wrapping_add(r_low_a[k]);
                c.wrapping_mul(y[j])
                    .wrapping_add(sign.wrapping_mul(s_y))
                    .wrapping_sub(r_y)
            })
            .collect())
    }

    /// Elementwise square (a dealt pair `(a, a²)`; one round, n words each way), no truncation.
    pub fn square_raw(&mut self, x: &[u64]) -> Result<Vec<u64>, MpcError> {
        let n = x.len();
        let a = self.random(n);
        let c = self.derived(n, || ring::mul(&a, &a))?;
        let d = self.open(&ring::sub(x, &a))?;
        let mut z = c;
        for i in 0..n {
            z[i] = z[i].wrapping_add(d[i].wrapping_mul(a[i]).wrapping_mul(2));
        }
        self.add_public_vec(&mut z, &ring::mul(&d, &d));
        Ok(z)
    }

    /// Matrix product `x (m×k) · y (k×n)` of two shared matrices, row-major (a dealt matrix
    /// triple; one round, mk + kn words each way), no truncation.
    pub fn matmul_raw(
        &mut self,
        x: &[u64],
        y: &[u64],
        shape: (usize, usize, usize),
    ) -> Result<Vec<u64>, MpcError> {
        Ok(self.matmul_batch(&[(x, y, shape)])?.remove(0))
    }

    /// Several independent matrix products in one round.
    pub fn matmul_batch(&mut self, items: &[MatmulItem]) -> Result<Vec<Vec<u64>>, MpcError> {
        let mut triples = Vec::with_capacity(items.len());
        let mut masked = Vec::new();
        for &(x, y, (m, k, n)) in items {
            debug_assert!(x.len() == m * k && y.len() == k * n);
            let a = self.random(m * k);
            let b = self.random(k * n);
            let c = self.derived(m * n, || ring::matmul(&a, &b, m, k, n))?;
            masked.extend(ring::sub(x, &a));
            masked.extend(ring::sub(y, &b));
            triples.push((a, b, c));
        }
        let opened = self.open(&masked)?;
        let mut at = 0;
        let mut out = Vec::with_capacity(items.len());
        for (&(_, _, (m, k, n)), (a, b, c)) in items.iter().zip(triples) {
            let d = &opened[at..at + m * k];
            let e = &opened[at + m * k..at + m * k + k * n];
            at += m * k + k * n;
            let mut z = c;
            ring::add_assign(&mut z, &ring::matmul(d, &b, m, k, n));
            ring::add_assign(&mut z, &ring::matmul(&a, e, m, k, n));
            self.add_public_vec(&mut z, &ring::matmul(d, e, m, k, n));
            out.push(z);
        }
        Ok(out)
    }

    /// Divides a shared vector by `2^bits`, within two units of `x / 2^bits`, for any
    /// `|x| < 2^61` (one round, `64 − bits` bits per element each way). Nothing about `x` is
    /// opened: the opened value is `x + 2^62 + r` for a dealt uniform `r`, and of it only the
    /// bits above `bits`.
    ///
    /// With `y = x + 2^62 < 2^63`, `r' = r mod 2^63` and `c = y + r`: `y + r'` cannot overflow,
    /// so `y = (c mod 2^63) − r' + 2^63·(msb(c) ⊕ msb(r))`, and dividing the terms separately
    /// loses only the borrow between their low bits. The dealer gives shares of `r`,
    /// `r' >> bits` and `msb(r)`. The parties open `⌊c / 2^bits⌋` or one less
    /// ([`Self::open_bits`]): that is `c − δ` with `0 ≤ δ < 2^(bits+1)` in place of `c`, so the
    /// result is that of `y − δ`, from `⌊y / 2^bits⌋ − 2` to `⌊y / 2^bits⌋ + 1`; A adds one unit
    /// back, which centres the error.
    pub fn trunc(&mut self, x: &[u64], bits: u32) -> Result<Vec<u64>, MpcError> {
        debug_assert!((1..63).contains(&bits));
        let n = x.len();
        let r = self.random(n);
        let r_high = self.derived(n, || {
            r.iter().map(|v| (v & (u64::MAX >> 1)) >> bits).collect()
        })?;
        let r_msb = self.derived(n, || r.iter().map(|v| v >> 63).collect())?;
        let mut masked = ring::add(x, &r);
        self.add_public(&mut masked, 1 << 62);
        let high = self.open_bits(&masked, bits, 64 - bits)?;
        let a = self.role() == Some(Role::A);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let c_msb = high[i] >> (63 - bits);
            let xor_share = r_msb[i].wrapping_mul(1u64.wrapping_sub(2 * c_msb));
            let mut v = xor_share
                .wrapping_mul(1 << (63 - bits))
                .wrapping_sub(r_high[i]);
            if a {
                v = v.wrapping_add(high[i] + 1).wrapping_sub(1 << (62 - bits));
            }
            out.push(v);
        }
        Ok(out)
    }

    /// The root seeds of `n` FSS keys, per party: a party's own come from its seed (they cost
    /// no words; the other party's list is empty), the dealer makes both parties'.
    fn roots(&mut self, n: usize) -> [Vec<u128>; 2] {
        let take = |prg: &mut Prg| -> Vec<u128> {
            (0..n)
                .map(|_| u128::from_le_bytes(prg.next_seed()))
                .collect()
        };
        match &mut self.source {
            Source::Party {
                role: Role::A, prg, ..
            } => [take(prg), Vec::new()],
            Source::Party {
                role: Role::B, prg, ..
            } => [Vec::new(), take(prg)],
            Source::Dealer { prg, .. } => {
                let [a, b] = &mut **prg;
                [take(a), take(b)]
            }
        }
    }

    /// `n` words both parties get alike (`make` writes them, only at the dealer); where they
    /// are, for [`Self::common`].
    fn dealt_common(
        &mut self,
        n: usize,
        make: impl FnOnce(&TreePrg, &mut [u64]),
    ) -> Result<std::ops::Range<usize>, MpcError> {
        match &mut self.source {
            Source::Party {
                common,
                common_used,
                ..
            } => take(common.len(), common_used, n),
            Source::Dealer { common, .. } => {
                let start = common.len();
                common.resize(start + n, 0);
                make(&self.tree, &mut common[start..]);
                Ok(0..0)
            }
        }
    }
}

/// The next `n` of `len` dealt words, of which `used` are consumed.
fn take(len: usize, used: &mut usize, n: usize) -> Result<std::ops::Range<usize>, MpcError> {
    let left = len - *used;
    if n > left {
        return Err(MpcError::MaterialExhausted { needed: n, left });
    }
    *used += n;
    Ok(*used - n..*used)
}
