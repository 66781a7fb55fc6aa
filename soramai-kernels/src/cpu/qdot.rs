//! Quantized dot products on x86_64, generated twice by one macro: for AVX2 (u8×i8 products through
//! `vpmaddubsw` + `vpmaddwd`) and for AVX-512 VNNI (`vpdpbusd` on 256-bit lanes). Each kernel takes
//! one weight row and `R` activation rows, unpacking the weight blocks once for all `R` rows, which
//! is what makes batched (prefill) products cheaper per token than one row at a time.
//!
//! Callers guarantee: the CPU has the module's features, and `w` / every `a[j]` hold `nb` blocks.

#![allow(unsafe_code)]

macro_rules! quant_dot_kernels {
    ($modname:ident, $features:literal, $dot:ident) => {
        pub(crate) mod $modname {
            use std::arch::x86_64::*;

            use super::$dot;
            use crate::quant::k_quants::scales_mins_k4;
            use crate::quant::rd_f16;

            /// Σ u8 × i8 over 32 lanes, as 8 i32 partial sums.
            #[inline]
            #[target_feature(enable = $features)]
            fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
                $dot(u, s)
            }

            /// Σ u8 × i8 over 32 lanes as 8 i32 sums, each pair of products first multiplied by its
            /// lane of `scales` (16 i16: lanes 0..8 serve bytes 0..16, 8..16 bytes 16..32). The
            /// pair sums of `vpmaddubsw` cannot saturate here: codes are at most 63.
            #[inline]
            #[target_feature(enable = $features)]
            fn scaled_dot(u: __m256i, s: __m256i, scales: __m256i) -> __m256i {
                _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scales)
            }

            /// 16 i16 lanes: `lo` in the first eight, `hi` in the last eight.
            #[inline]
            #[target_feature(enable = $features)]
            fn halves16(lo: i16, hi: i16) -> __m256i {
                _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
            }

            /// The 32 bits of `bits` as bytes: lane k is 0xFF where bit k is set, else 0.
            #[inline]
            #[target_feature(enable = $features)]
            fn bit_bytes(bits: u32) -> __m256i {
                let v = _mm256_set1_epi32(bits as i32);
                // Lane k takes byte k / 8 of the word, then tests bit k % 8 of it.
                let spread = _mm256_shuffle_epi8(
                    v,
                    _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
                );
                let probe = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
                _mm256_cmpeq_epi8(_mm256_and_si256(spread, probe), probe)
            }

            /// The fifth bits of a Q5_0/Q5_1 block (`qh` at `p`) as 0x10 in the lanes of
            /// [`nibbles`]' order.
            ///
            /// # Safety
            /// `p` must point at 4 readable bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn fifth_bits(p: *const u8) -> __m256i {
                // SAFETY: the caller guarantees 4 readable bytes.
                let bits = unsafe { p.cast::<u32>().read_unaligned() };
                _mm256_and_si256(bit_bytes(bits), _mm256_set1_epi8(0x10))
            }

            /// Bit `k` of each byte of a Q5_K block's `qh`, as 0x10.
            #[inline]
            #[target_feature(enable = $features)]
            fn qh_bit(qh: __m256i, k: usize) -> __m256i {
                let v = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(k as i32));
                _mm256_slli_epi16::<4>(_mm256_and_si256(v, _mm256_set1_epi8(1)))
            }

            /// The `d` of a Q8_K block at `p`.
            ///
            /// # Safety
            /// `p` must point at 4 readable bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn q8k_d(p: *const u8) -> f32 {
                // SAFETY: the caller guarantees 4 readable bytes.
                f32::from_le_bytes(unsafe { p.cast::<[u8; 4]>().read_unaligned() })
            }

            #[inline]
            #[target_feature(enable = $features)]
            fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
            }

            /// Two f16 at `p` as f32 lanes 0 and 1.
            ///
            /// # Safety
            /// `p` must point at 4 readable bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn f16x2(p: *const u8) -> __m128 {
                // SAFETY: the caller guarantees 4 readable bytes; read_unaligned has no alignment need.
                _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe { p.cast::<i32>().read_unaligned() }))
            }

            /// 32 nibbles from 16 bytes at `p`: low nibbles in lanes 0..16, high in 16..32.
            ///
            /// # Safety
            /// `p` must point at 16 readable bytes.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn nibbles(p: *const u8) -> __m256i {
                // SAFETY: the caller guarantees 16 readable bytes.
                let x = unsafe { _mm_loadu_si128(p.cast()) };
                let m = _mm_set1_epi8(0x0F);
                _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(x), m), _mm_and_si128(x, m))
            }

            /// Q4_1 (`FIVE`: Q5_1) weights · `R` rows of Q8_1 activations: the unsigned codes
            /// unpacked once a block, the minimum added through the activations' scaled sums.
            ///
            /// # Safety
            /// See the module contract.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn qx_1_q8_1<const R: usize, const FIVE: bool>(
                nb: usize,
                w: &[u8],
                a: [&[u8]; R],
            ) -> [f32; R] {
                let bb = if FIVE { 24 } else { 20 };
                let mut acc = [_mm256_setzero_ps(); R];
                let mut mins = [_mm_setzero_ps(); R];
                let wp = w.as_ptr();
                for i in 0..nb {
                    // SAFETY: block i of w (`bb` bytes) and of each a[j] (36 bytes) is in bounds.
                    unsafe {
                        let x = wp.add(i * bb);
                        let dm = f16x2(x);
                        let q = if FIVE {
                            _mm256_or_si256(nibbles(x.add(8)), fifth_bits(x.add(4)))
                        } else {
                            nibbles(x.add(4))
                        };
                        for j in 0..R {
                            let y = a[j].as_ptr().add(i * 36);
                            let prod = _mm_mul_ps(dm, f16x2(y));
                            let p = _mm256_cvtepi32_ps(dot_u8_i8(q, _mm256_loadu_si256(y.add(4).cast())));
                            acc[j] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), p, acc[j]);
                            mins[j] = _mm_add_ss(mins[j], _mm_movehdup_ps(prod));
                        }
                    }
                }
                std::array::from_fn(|j| hsum(acc[j]) + _mm_cvtss_f32(mins[j]))
            }

            /// Q4_0 (`BB` = 18 bytes a block), Q5_0 (22) or Q8_0 (34) weights · `R` rows of Q8_0
            /// activations: the block's signed codes made once, then for each row the sign trick
            /// (`|q|` against `y` carrying `q`'s sign) into `u8 × i8` products.
            ///
            /// # Safety
            /// See the module contract.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn qx_0_q8_0<const R: usize, const BB: usize>(
                nb: usize,
                w: &[u8],
                a: [&[u8]; R],
            ) -> [f32; R] {
                let mut acc = [_mm256_setzero_ps(); R];
                let wp = w.as_ptr();
                for i in 0..nb {
                    // SAFETY: block i of w (`BB` bytes) and of each a[j] (34 bytes) is in bounds.
                    unsafe {
                        let x = wp.add(i * BB);
                        let dx = f16x2(x);
                        let q = match BB {
                            18 => _mm256_sub_epi8(nibbles(x.add(2)), _mm256_set1_epi8(8)),
                            22 => _mm256_sub_epi8(
                                _mm256_or_si256(nibbles(x.add(6)), fifth_bits(x.add(2))),
                                _mm256_set1_epi8(16),
                            ),
                            // Q8_0: the codes as they are (the dispatcher names only 18, 22, 34).
                            _ => _mm256_loadu_si256(x.add(2).cast()),
                        };
                        let aq = _mm256_sign_epi8(q, q);
                        for j in 0..R {
                            let y = a[j].as_ptr().add(i * 34);
                            let d = _mm_mul_ss(dx, f16x2(y));
                            let sy = _mm256_sign_epi8(_mm256_loadu_si256(y.add(2).cast()), q);
                            let p = _mm256_cvtepi32_ps(dot_u8_i8(aq, sy));
                            acc[j] = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), p, acc[j]);
                        }
                    }
                }
                std::array::from_fn(|j| hsum(acc[j]))
            }

            /// Q4_K (`FIVE`: Q5_K) weights · `R` rows of Q8_K activations: the eight 32-value
            /// sub-blocks unpacked to bytes once, each product scaled by its sub-block's 6-bit
            /// scale in the integer domain, the mins applied through the activations' block sums
            /// (one `vpmaddwd` a block and row).
            ///
            /// # Safety
            /// See the module contract (`nb` blocks of 256).
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn q45_k_q8_k<const R: usize, const FIVE: bool>(
                nb: usize,
                w: &[u8],
                a: [&[u8]; R],
            ) -> [f32; R] {
                let bb = if FIVE { 176 } else { 144 };
                let mut acc = [_mm256_setzero_ps(); R];
                let mut mins = [_mm256_setzero_ps(); R];
                let m4 = _mm256_set1_epi8(0x0F);
                for i in 0..nb {
                    let xb = &w[i * bb..(i + 1) * bb];
                    let (d, dmin) = (rd_f16(xb, 0), rd_f16(xb, 2));
                    let (sc, mn) = scales_mins_k4(&xb[4..16]);
                    let scv: [__m256i; 8] = std::array::from_fn(|k| _mm256_set1_epi16(i16::from(sc[k])));
                    // Each min serves two of the activations' 16-value block sums: the 8 min
                    // bytes doubled (m0 m0 m1 m1 ...) and widened to 16 i16 lanes.
                    let m8 = _mm_cvtsi64_si128(i64::from_le_bytes(mn));
                    let mn16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
                    let mut q = [_mm256_setzero_si256(); 8];
                    // SAFETY: the block's bytes are `xb` (bb long): qs at 16 (Q4_K) or 48 (Q5_K)
                    // holds 4 × 32 bytes, qh at 16 (Q5_K) 32 bytes.
                    unsafe {
                        let qs = xb.as_ptr().add(if FIVE { 48 } else { 16 });
                        let qh =
                            if FIVE { _mm256_loadu_si256(xb.as_ptr().add(16).cast()) } else { _mm256_setzero_si256() };
                        for g in 0..4 {
                            let b = _mm256_loadu_si256(qs.add(32 * g).cast());
                            let mut lo = _mm256_and_si256(b, m4);
                            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(b), m4);
                            if FIVE {
                                lo = _mm256_or_si256(lo, qh_bit(qh, 2 * g));
                                hi = _mm256_or_si256(hi, qh_bit(qh, 2 * g + 1));
                            }
                            q[2 * g] = lo;
                            q[2 * g + 1] = hi;
                        }
                    }
                    for j in 0..R {
                        let yb = &a[j][i * 292..(i + 1) * 292];
                        // SAFETY: `yb` is one Q8_K block: d at 0, 256 quants at 4, 16 i16 sums at 260.
                        unsafe {
                            let y = yb.as_ptr();
                            let mut sumi = _mm256_setzero_si256();
                            for s in 0..8 {
                                let ys = _mm256_loadu_si256(y.add(4 + 32 * s).cast());
                                sumi = _mm256_add_epi32(sumi, scaled_dot(q[s], ys, scv[s]));
                            }
                            let d8 = q8k_d(y);
                            let bsums = _mm256_loadu_si256(y.add(260).cast());
                            let summ = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, mn16));
                            acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(d * d8), _mm256_cvtepi32_ps(sumi), acc[j]);
                            mins[j] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * d8), summ, mins[j]);
                        }
                    }
                }
                std::array::from_fn(|j| hsum(_mm256_sub_ps(acc[j], mins[j])))
            }

            /// Q6_K weights · `R` rows of Q8_K activations: the 6-bit values unpacked unsigned
            /// (0..64) once, each 16-value group scaled by its signed scale in the integer domain,
            /// the offset of 32 taken back through the activations' block sums.
            ///
            /// # Safety
            /// See the module contract (`nb` blocks of 256).
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn q6_k_q8_k<const R: usize>(nb: usize, w: &[u8], a: [&[u8]; R]) -> [f32; R] {
                let mut acc = [_mm256_setzero_ps(); R];
                let mut offs = [_mm256_setzero_ps(); R];
                let m4 = _mm256_set1_epi8(0x0F);
                let m30 = _mm256_set1_epi8(0x30);
                for i in 0..nb {
                    let xb = &w[i * 210..(i + 1) * 210];
                    let d = rd_f16(xb, 208);
                    let sc: [i16; 16] = std::array::from_fn(|g| i16::from(xb[192 + g] as i8));
                    let scv: [__m256i; 8] = std::array::from_fn(|v| halves16(sc[2 * v], sc[2 * v + 1]));
                    let mut q = [_mm256_setzero_si256(); 8];
                    // SAFETY: `xb` is one block: ql (128 bytes) at 0, qh (64 bytes) at 128, the 16
                    // scales at 192.
                    let sc16 = unsafe {
                        let x = xb.as_ptr();
                        for h in 0..2 {
                            let ql0 = _mm256_loadu_si256(x.add(64 * h).cast());
                            let ql1 = _mm256_loadu_si256(x.add(64 * h + 32).cast());
                            let qh = _mm256_loadu_si256(x.add(128 + 32 * h).cast());
                            let (lo0, lo1) = (_mm256_and_si256(ql0, m4), _mm256_and_si256(ql1, m4));
                            let hi0 = _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4);
                            let hi1 = _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4);
                            q[4 * h] = _mm256_or_si256(lo0, _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30));
                            q[4 * h + 1] = _mm256_or_si256(lo1, _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30));
                            q[4 * h + 2] = _mm256_or_si256(hi0, _mm256_and_si256(qh, m30));
                            q[4 * h + 3] = _mm256_or_si256(hi1, _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30));
                        }
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(192).cast()))
                    };
                    for j in 0..R {
                        let yb = &a[j][i * 292..(i + 1) * 292];
                        // SAFETY: `yb` is one Q8_K block: d at 0, 256 quants at 4, 16 i16 sums at 260.
                        unsafe {
                            let y = yb.as_ptr();
                            let mut sumi = _mm256_setzero_si256();
                            for v in 0..8 {
                                let ys = _mm256_loadu_si256(y.add(4 + 32 * v).cast());
                                sumi = _mm256_add_epi32(sumi, scaled_dot(q[v], ys, scv[v]));
                            }
                            let dd = _mm256_set1_ps(d * q8k_d(y));
                            let bsums = _mm256_loadu_si256(y.add(260).cast());
                            let off = _mm256_cvtepi32_ps(_mm256_slli_epi32::<5>(_mm256_madd_epi16(bsums, sc16)));
                            acc[j] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(sumi), acc[j]);
                            offs[j] = _mm256_fmadd_ps(dd, off, offs[j]);
                        }
                    }
                }
                std::array::from_fn(|j| hsum(_mm256_sub_ps(acc[j], offs[j])))
            }
        }
    };
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn maddubs_dot(u: std::arch::x86_64::__m256i, s: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn vnni_dot(u: std::arch::x86_64::__m256i, s: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

quant_dot_kernels!(avx2, "avx2,fma,f16c", maddubs_dot);
// The k-quants' scaled products use `vpmaddubsw` + `vpmaddwd` here too: `vpdpbusd` would need a
// 32-bit multiply by the scales after it, and measured no faster.
quant_dot_kernels!(vnni, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", vnni_dot);
