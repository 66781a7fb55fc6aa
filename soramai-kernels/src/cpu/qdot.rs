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

            /// Σ u8 × i8 over 32 lanes, as 8 i32 partial sums.
            #[inline]
            #[target_feature(enable = $features)]
            fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
                $dot(u, s)
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

            /// Q4_1 weights · `R` rows of Q8_1 activations.
            ///
            /// # Safety
            /// See the module contract.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn q4_1_q8_1<const R: usize>(nb: usize, w: &[u8], a: [&[u8]; R]) -> [f32; R] {
                let mut acc = [_mm256_setzero_ps(); R];
                let mut mins = [_mm_setzero_ps(); R];
                let wp = w.as_ptr();
                for i in 0..nb {
                    // SAFETY: block i of w (20 bytes) and of each a[j] (36 bytes) is in bounds.
                    unsafe {
                        let x = wp.add(i * 20);
                        let dm = f16x2(x);
                        let q = nibbles(x.add(4));
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

            /// Q4_0 weights · `R` rows of Q8_0 activations.
            ///
            /// # Safety
            /// See the module contract.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn q4_0_q8_0<const R: usize>(nb: usize, w: &[u8], a: [&[u8]; R]) -> [f32; R] {
                let mut acc = [_mm256_setzero_ps(); R];
                let wp = w.as_ptr();
                for i in 0..nb {
                    // SAFETY: block i of w (18 bytes) and of each a[j] (34 bytes) is in bounds.
                    unsafe {
                        let x = wp.add(i * 18);
                        let dx = f16x2(x);
                        let q = _mm256_sub_epi8(nibbles(x.add(2)), _mm256_set1_epi8(8));
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

            /// Q8_0 weights · `R` rows of Q8_0 activations.
            ///
            /// # Safety
            /// See the module contract.
            #[target_feature(enable = $features)]
            pub(crate) unsafe fn q8_0_q8_0<const R: usize>(nb: usize, w: &[u8], a: [&[u8]; R]) -> [f32; R] {
                let mut acc = [_mm256_setzero_ps(); R];
                let wp = w.as_ptr();
                for i in 0..nb {
                    // SAFETY: block i of w and of each a[j] (34 bytes each) is in bounds.
                    unsafe {
                        let x = wp.add(i * 34);
                        let dx = f16x2(x);
                        let q = _mm256_loadu_si256(x.add(2).cast());
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
quant_dot_kernels!(vnni, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", vnni_dot);
