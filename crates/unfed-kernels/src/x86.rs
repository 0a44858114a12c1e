//! x86-64 kernels of 8-bit activations against quantized weights: row kernels (one weight row
//! against the tokens, decoding a K-quant block's scales once per block) for a single token,
//! where weights stream from memory once; tile kernels (4 rows × up to 4 tokens sharing loaded
//! activations) for batches, where the work is arithmetic.
//!
//! Each weight run of 32 is unpacked into a 256-bit register of small integers and meets a
//! token's activations through an integer dot product — `vpmaddubsw` + `vpmaddwd` on AVX2, one
//! `vpdpbusd` with AVX-512 VNNI — scaled into a float accumulator. Weight offsets (Q4_0's 8,
//! Q5_0's 16, Q4_1 and Q4_K minimums) are applied once per run through the activation sums, so
//! 4- and 5-bit weights enter the integer product unsigned. The same source is compiled twice,
//! once per instruction set, by the macro below.

use crate::act::ActBlock;

macro_rules! row_kernels {
    ($isa:ident, $features:literal, |$w:ident, $a:ident| $dot:expr) => {
        pub(crate) mod $isa {
            use super::ActBlock;
            use crate::formats::q4k_scale_min;
            use std::arch::x86_64::*;

            /// Sum of `u8 × i8` products, four adjacent pairs per 32-bit lane.
            #[inline]
            #[target_feature(enable = $features)]
            fn dot_u8i8($w: __m256i, $a: __m256i) -> __m256i {
                $dot
            }

            /// Sum of `i8 × i8` products, four adjacent pairs per 32-bit lane.
            #[inline]
            #[target_feature(enable = $features)]
            fn dot_i8i8(w: __m256i, a: __m256i) -> __m256i {
                dot_u8i8(_mm256_abs_epi8(w), _mm256_sign_epi8(a, w))
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn f16_at(p: *const u8) -> f32 {
                unsafe { half::f16::from_bits(p.cast::<u16>().read_unaligned()).to_f32() }
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn load_act(a: &ActBlock) -> __m256i {
                unsafe { _mm256_loadu_si256(a.q.as_ptr().cast()) }
            }

            /// 16 bytes of packed nibbles → 32 bytes: low nibbles first, then high nibbles.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn nibbles(p: *const u8) -> __m256i {
                unsafe {
                    let qs = _mm_loadu_si128(p.cast());
                    let both = _mm256_set_m128i(_mm_srli_epi16(qs, 4), qs);
                    _mm256_and_si256(both, _mm256_set1_epi8(0xF))
                }
            }

            /// Byte `i` is 0xFF where bit `i` of `bits` is set, else 0.
            #[inline]
            #[target_feature(enable = $features)]
            fn bytes_from_bits(bits: u32) -> __m256i {
                let v = _mm256_set1_epi32(bits as i32);
                let spread = _mm256_shuffle_epi8(
                    v,
                    _mm256_set_epi64x(
                        0x0303030303030303,
                        0x0202020202020202,
                        0x0101010101010101,
                        0,
                    ),
                );
                let probe = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
                _mm256_cmpeq_epi8(probe, _mm256_set1_epi64x(-1))
            }

            /// The 32-weight block kinds: `load` gives the weights as bytes, the scale and the
            /// factor of the activation sum; `$signed` says the bytes are signed.
            macro_rules! block32_kernel {
                ($name:ident, $bytes:expr, $signed:expr, |$b:ident| $load:expr) => {
                    #[target_feature(enable = $features)]
                    pub(crate) unsafe fn $name<const T: usize>(
                        row: *const u8,
                        acts: [*const ActBlock; T],
                        runs: usize,
                    ) -> [f32; T] {
                        // Four accumulator sets, taken in turn by consecutive runs, so that
                        // no run waits for the previous run's sum.
                        let mut acc = [[_mm256_setzero_ps(); T]; 4];
                        let mut offset = [[0f32; T]; 4];
                        for r0 in (0..runs).step_by(4) {
                            for u in 0..4 {
                                let r = r0 + u;
                                if r >= runs {
                                    break;
                                }
                                let $b = unsafe { row.add(r * $bytes) };
                                _mm_prefetch::<_MM_HINT_T0>($b.wrapping_add(1024).cast());
                                let (w, d, m): (__m256i, f32, f32) = unsafe { $load };
                                for j in 0..T {
                                    let a = unsafe { &*acts[j].add(r) };
                                    let x = unsafe { load_act(a) };
                                    let p = if $signed {
                                        dot_i8i8(w, x)
                                    } else {
                                        dot_u8i8(w, x)
                                    };
                                    acc[u][j] = _mm256_fmadd_ps(
                                        _mm256_cvtepi32_ps(p),
                                        _mm256_set1_ps(d * a.d),
                                        acc[u][j],
                                    );
                                    offset[u][j] += m * a.s;
                                }
                            }
                        }
                        let mut out = [0f32; T];
                        for j in 0..T {
                            let sum = _mm256_add_ps(
                                _mm256_add_ps(acc[0][j], acc[1][j]),
                                _mm256_add_ps(acc[2][j], acc[3][j]),
                            );
                            let off = (offset[0][j] + offset[1][j]) + (offset[2][j] + offset[3][j]);
                            out[j] = hsum(sum) + off;
                        }
                        out
                    }
                };
            }

            block32_kernel!(q4_0, 18, false, |b| {
                let d = f16_at(b);
                (nibbles(b.add(2)), d, -8.0 * d)
            });
            block32_kernel!(q4_1, 20, false, |b| {
                (nibbles(b.add(4)), f16_at(b), f16_at(b.add(2)))
            });
            block32_kernel!(q5_0, 22, false, |b| {
                let d = f16_at(b);
                let high = bytes_from_bits(b.add(2).cast::<u32>().read_unaligned());
                let w = _mm256_or_si256(
                    nibbles(b.add(6)),
                    _mm256_and_si256(high, _mm256_set1_epi8(0x10)),
                );
                (w, d, -16.0 * d)
            });
            block32_kernel!(q8_0, 34, true, |b| {
                (_mm256_loadu_si256(b.add(2).cast()), f16_at(b), 0.0)
            });

            /// Q4_K: 256 weights in 8 runs, each with a 6-bit scale and minimum.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn q4k<const T: usize>(
                row: *const u8,
                acts: [*const ActBlock; T],
                runs: usize,
            ) -> [f32; T] {
                let mask = _mm256_set1_epi8(0xF);
                let mut acc = [_mm256_setzero_ps(); T];
                let mut offset = [0f32; T];
                for blk in 0..runs / 8 {
                    let b = unsafe { row.add(blk * 144) };
                    let (d, dmin) = unsafe { (f16_at(b), f16_at(b.add(2))) };
                    let scales = unsafe { std::slice::from_raw_parts(b.add(4), 12) };
                    for g in 0..4 {
                        let qs = unsafe { _mm256_loadu_si256(b.add(16 + 32 * g).cast()) };
                        let halves = [
                            _mm256_and_si256(qs, mask),
                            _mm256_and_si256(_mm256_srli_epi16(qs, 4), mask),
                        ];
                        for (h, w) in halves.into_iter().enumerate() {
                            let (sc, m) = q4k_scale_min(scales, 2 * g + h);
                            let (ds, dm) = (d * sc as f32, -dmin * m as f32);
                            for j in 0..T {
                                let a = unsafe { &*acts[j].add(blk * 8 + 2 * g + h) };
                                let p = dot_u8i8(w, unsafe { load_act(a) });
                                acc[j] = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(p),
                                    _mm256_set1_ps(ds * a.d),
                                    acc[j],
                                );
                                offset[j] += dm * a.s;
                            }
                        }
                    }
                }
                let mut out = [0f32; T];
                for j in 0..T {
                    out[j] = hsum(acc[j]) + offset[j];
                }
                out
            }

            /// Q6_K: 256 signed 6-bit weights in 16 runs of 16, each with an 8-bit scale.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn q6k<const T: usize>(
                row: *const u8,
                acts: [*const ActBlock; T],
                runs: usize,
            ) -> [f32; T] {
                let m4 = _mm256_set1_epi8(0xF);
                let m2 = _mm256_set1_epi8(3);
                let bias = _mm256_set1_epi8(32);
                let mut acc = [_mm256_setzero_ps(); T];
                for blk in 0..runs / 8 {
                    let b = unsafe { row.add(blk * 210) };
                    let d = unsafe { f16_at(b.add(208)) };
                    for half in 0..2 {
                        let (ql0, ql1, qh) = unsafe {
                            (
                                _mm256_loadu_si256(b.add(64 * half).cast()),
                                _mm256_loadu_si256(b.add(64 * half + 32).cast()),
                                _mm256_loadu_si256(b.add(128 + 32 * half).cast()),
                            )
                        };
                        let hs = [
                            qh,
                            _mm256_srli_epi16(qh, 2),
                            _mm256_srli_epi16(qh, 4),
                            _mm256_srli_epi16(qh, 6),
                        ];
                        let lows = [
                            _mm256_and_si256(ql0, m4),
                            _mm256_and_si256(ql1, m4),
                            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        ];
                        let sc = unsafe { b.add(192 + 8 * half).cast::<i8>() };
                        for g in 0..4 {
                            let high = _mm256_slli_epi16(_mm256_and_si256(hs[g], m2), 4);
                            let w = _mm256_sub_epi8(_mm256_or_si256(lows[g], high), bias);
                            let aw = _mm256_abs_epi8(w);
                            let scales = unsafe {
                                _mm256_set_m128i(
                                    _mm_set1_epi16(*sc.add(2 * g + 1) as i16),
                                    _mm_set1_epi16(*sc.add(2 * g) as i16),
                                )
                            };
                            for j in 0..T {
                                let a = unsafe { &*acts[j].add(blk * 8 + 4 * half + g) };
                                let x = _mm256_sign_epi8(unsafe { load_act(a) }, w);
                                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, x), scales);
                                acc[j] = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(p),
                                    _mm256_set1_ps(d * a.d),
                                    acc[j],
                                );
                            }
                        }
                    }
                }
                let mut out = [0f32; T];
                for j in 0..T {
                    out[j] = hsum(acc[j]);
                }
                out
            }

            /// Tiles: `R` rows against `T` tokens.
            pub(crate) mod tile {
                use super::*;

                // Each loader gives run `r` of a row as (weights as bytes, per-lane scale of the
                // integer dot product's eight 4-element sums, factor of the activation sum).

                #[inline]
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn load_q4_0(row: *const u8, r: usize) -> (__m256i, __m256, f32) {
                    unsafe {
                        let b = row.add(r * 18);
                        let d = f16_at(b);
                        (nibbles(b.add(2)), _mm256_set1_ps(d), -8.0 * d)
                    }
                }

                #[inline]
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn load_q4_1(row: *const u8, r: usize) -> (__m256i, __m256, f32) {
                    unsafe {
                        let b = row.add(r * 20);
                        (
                            nibbles(b.add(4)),
                            _mm256_set1_ps(f16_at(b)),
                            f16_at(b.add(2)),
                        )
                    }
                }

                #[inline]
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn load_q5_0(row: *const u8, r: usize) -> (__m256i, __m256, f32) {
                    unsafe {
                        let b = row.add(r * 22);
                        let d = f16_at(b);
                        let high = bytes_from_bits(b.add(2).cast::<u32>().read_unaligned());
                        let w = _mm256_or_si256(
                            nibbles(b.add(6)),
                            _mm256_and_si256(high, _mm256_set1_epi8(0x10)),
                        );
                        (w, _mm256_set1_ps(d), -16.0 * d)
                    }
                }

                #[inline]
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn load_q8_0(row: *const u8, r: usize) -> (__m256i, __m256, f32) {
                    unsafe {
                        let b = row.add(r * 34);
                        (
                            _mm256_loadu_si256(b.add(2).cast()),
                            _mm256_set1_ps(f16_at(b)),
                            0.0,
                        )
                    }
                }

                /// Q4_K: runs are the 8 sub-blocks of a 256-weight block, each with a 6-bit scale
                /// and minimum.
                #[inline]
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn load_q4k(row: *const u8, r: usize) -> (__m256i, __m256, f32) {
                    unsafe {
                        let (blk, sub) = (r / 8, r % 8);
                        let b = row.add(blk * 144);
                        let (d, dmin) = (f16_at(b), f16_at(b.add(2)));
                        let (sc, m) = q4k_scale_min(std::slice::from_raw_parts(b.add(4), 12), sub);
                        let qs = _mm256_loadu_si256(b.add(16 + 32 * (sub / 2)).cast());
                        let qs = if sub % 2 == 0 {
                            qs
                        } else {
                            _mm256_srli_epi16(qs, 4)
                        };
                        let w = _mm256_and_si256(qs, _mm256_set1_epi8(0xF));
                        (w, _mm256_set1_ps(d * sc as f32), -dmin * m as f32)
                    }
                }

                /// Q6_K: signed 6-bit weights (offset 32 removed) with a scale per 16.
                #[inline]
                #[target_feature(enable = $features)]
                pub(crate) unsafe fn load_q6k(row: *const u8, r: usize) -> (__m256i, __m256, f32) {
                    unsafe {
                        let (blk, sub) = (r / 8, r % 8);
                        let (half, g) = (sub / 4, sub % 4);
                        let b = row.add(blk * 210);
                        let d = f16_at(b.add(208));
                        let ql = _mm256_loadu_si256(b.add(64 * half + 32 * (g % 2)).cast());
                        let ql = if g < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
                        let qh = _mm256_loadu_si256(b.add(128 + 32 * half).cast());
                        let qh = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g as i32));
                        let high = _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4);
                        let q = _mm256_or_si256(_mm256_and_si256(ql, _mm256_set1_epi8(0xF)), high);
                        let w = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
                        let sc = b.add(192 + 8 * half).cast::<i8>();
                        let (sa, sb) = (d * *sc.add(2 * g) as f32, d * *sc.add(2 * g + 1) as f32);
                        (w, _mm256_set_m128(_mm_set1_ps(sb), _mm_set1_ps(sa)), 0.0)
                    }
                }

                /// `R` weight rows against `T` (≤ 4) token rows, `runs` runs of 32. For a given `T`,
                /// every (row, token) value goes through the same operations whatever `R`, so how
                /// rows are grouped (which depends on the thread count) never changes a result.
                macro_rules! tile_kernel {
                    ($name:ident, $load:ident, $signed:expr) => {
                        #[target_feature(enable = $features)]
                        pub(crate) unsafe fn $name<const R: usize, const T: usize>(
                            rows: [*const u8; R],
                            acts: [*const ActBlock; T],
                            runs: usize,
                        ) -> [[f32; T]; R] {
                            let mut acc = [[_mm256_setzero_ps(); T]; R];
                            // Offsets: lanes are tokens; a single token keeps a plain float.
                            let mut offset = [_mm_setzero_ps(); R];
                            let mut offset1 = [0f32; R];
                            for r in 0..runs {
                                let mut x = [_mm256_setzero_si256(); T];
                                let mut da = [_mm256_setzero_ps(); T];
                                let mut sums = [0f32; 4];
                                for j in 0..T {
                                    let a = unsafe { &*acts[j].add(r) };
                                    x[j] = unsafe { load_act(a) };
                                    da[j] = _mm256_set1_ps(a.d);
                                    sums[j] = a.s;
                                }
                                let sums_v = if T > 1 && !$signed {
                                    unsafe { _mm_loadu_ps(sums.as_ptr()) }
                                } else {
                                    _mm_setzero_ps()
                                };
                                for i in 0..R {
                                    let (w, dv, m) = unsafe { $load(rows[i], r) };
                                    let wu = if $signed { _mm256_abs_epi8(w) } else { w };
                                    for j in 0..T {
                                        let xj = if $signed {
                                            _mm256_sign_epi8(x[j], w)
                                        } else {
                                            x[j]
                                        };
                                        let p = _mm256_cvtepi32_ps(dot_u8i8(wu, xj));
                                        acc[i][j] =
                                            _mm256_fmadd_ps(p, _mm256_mul_ps(dv, da[j]), acc[i][j]);
                                    }
                                    if !$signed {
                                        if T == 1 {
                                            offset1[i] += m * sums[0];
                                        } else {
                                            offset[i] =
                                                _mm_fmadd_ps(_mm_set1_ps(m), sums_v, offset[i]);
                                        }
                                    }
                                }
                            }
                            let mut out = [[0f32; T]; R];
                            for i in 0..R {
                                let mut o = [0f32; 4];
                                unsafe { _mm_storeu_ps(o.as_mut_ptr(), offset[i]) };
                                o[0] += offset1[i];
                                for j in 0..T {
                                    out[i][j] = hsum(acc[i][j]) + o[j];
                                }
                            }
                            out
                        }
                    };
                }

                tile_kernel!(q4_0, load_q4_0, false);
                tile_kernel!(q4_1, load_q4_1, false);
                tile_kernel!(q5_0, load_q5_0, false);
                tile_kernel!(q8_0, load_q8_0, true);
                tile_kernel!(q4k, load_q4k, false);
                tile_kernel!(q6k, load_q6k, true);
            }
        }
    };
}

row_kernels!(avx2, "avx2,fma", |w, a| _mm256_madd_epi16(
    _mm256_maddubs_epi16(w, a),
    _mm256_set1_epi16(1)
));
row_kernels!(vnni, "avx2,fma,avx512vnni,avx512vl", |w, a| {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a)
});
