//! AVX2 + FMA kernels (x86_64). Each is `unsafe` only for its `#[target_feature]`; the dispatcher in
//! [`super`] calls them after runtime detection, and the unit tests assert them equal to the scalar
//! twins in [`super::scalar`].

#![allow(unsafe_code)]

use std::arch::x86_64::*;

/// Horizontal sum of 8 f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Σ x·y over f32 slices of equal length.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: i + 16 <= n, so both 8-lane loads at i and i + 8 are in bounds.
        unsafe {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(y.as_ptr().add(i)), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8)), _mm256_loadu_ps(y.as_ptr().add(i + 8)), a1);
        }
        i += 16;
    }
    let mut s = hsum(_mm256_add_ps(a0, a1));
    while i < n {
        s += x[i] * y[i];
        i += 1;
    }
    s
}

/// y += a·x over f32 slices of equal length.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n bounds both the load from x and the load/store on y.
        unsafe {
            let yp = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(yp, _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp)));
        }
        i += 8;
    }
    while i < n {
        y[i] += a * x[i];
        i += 1;
    }
}

/// Quantizes 32 f32 values per block to Q8_0 (`q8_1 = false`) or Q8_1 into `out`.
///
/// # Safety
/// The CPU must support AVX2 and FMA. `x.len()` must be a multiple of 32 and `out` must hold the
/// blocks.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_q8(x: &[f32], out: &mut [u8], q8_1: bool) {
    let bb = if q8_1 { 36 } else { 34 };
    let off = bb - 32;
    let mut q = [0i8; 32];
    for (xs, b) in x.chunks_exact(32).zip(out.chunks_exact_mut(bb)) {
        // SAFETY: AVX2/FMA per this function's contract; xs and q hold 32 values each.
        let (d, sum) = unsafe { quantize_block_i8(xs, &mut q) };
        for (o, &qi) in b[off..].iter_mut().zip(&q) {
            *o = qi as u8;
        }
        crate::quant::wr_f16(b, 0, d);
        if q8_1 {
            crate::quant::wr_f16(b, 2, d * sum as f32);
        }
    }
}

/// One block of 32 activations to symmetric 8-bit codes, the twin of the portable
/// `gemm::quantize_block` (same scale, same round-to-nearest-even): returns the scale and the codes'
/// sum.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `xs` and `q` hold 32 values each.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_block_i8(xs: &[f32], q: &mut [i8]) -> (f32, i32) {
    let sign = _mm256_set1_ps(-0.0);
    // SAFETY: xs holds 32 f32s, read as four 8-lane loads.
    let v: [__m256; 4] = unsafe { std::array::from_fn(|k| _mm256_loadu_ps(xs.as_ptr().add(8 * k))) };
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vk in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vk));
    }
    let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    let scale = amax / 127.0;
    let inv = _mm256_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
    let r: [__m256i; 4] = std::array::from_fn(|k| {
        _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            v[k], inv,
        )))
    });
    let total = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
    let t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256::<1>(total));
    let t4 = _mm_add_epi32(t4, _mm_shuffle_epi32::<0b01_00_11_10>(t4));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(t4, _mm_shuffle_epi32::<0b10_11_00_01>(t4)));
    let ab = _mm256_packs_epi32(r[0], r[1]);
    let cd = _mm256_packs_epi32(r[2], r[3]);
    let packed = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: q holds 32 bytes.
    unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), packed) };
    (scale, sum)
}

/// e^x for 8 lanes: range reduction by ln 2 (split in two constants), a degree-6 polynomial on
/// [-ln2/2, ln2/2] and the exponent put back through the float's bits. Relative error about 2 ulp;
/// inputs below -87.3 give 0 (the softmax here only feeds it values <= 0).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp256(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
    let x = _mm256_min_ps(x, _mm256_set1_ps(88.3));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
}

/// `x[i] = e^(x[i] − shift)` in place with the 8-lane exp; returns the sum.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
    let sv = _mm256_set1_ps(shift);
    let mut acc = _mm256_setzero_ps();
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: c has exactly 8 f32s.
        unsafe {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), sv));
            acc = _mm256_add_ps(acc, e);
            _mm256_storeu_ps(c.as_mut_ptr(), e);
        }
    }
    let mut sum = hsum(acc);
    for v in chunks.into_remainder() {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

/// In-place softmax over a slice with the 8-lane exp.
#[target_feature(enable = "avx2,fma")]
fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    // SAFETY: this function's own target features are the ones exp_shift_sum needs.
    let inv = 1.0 / unsafe { exp_shift_sum(x, max) };
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Attention of `q.len() / hd` query heads sharing one KV head (see
/// [`crate::cpu::ops::attend_body`] for the contract): scores four positions at a time, the
/// softmax with an 8-lane exp, and the weighted sum of values in register tiles of 64 columns.
///
/// # Safety
/// The CPU must support AVX2 and FMA. `hd` must be a multiple of 8; every position `p < n_pos`
/// must have `ks`/`vs` elements `p * stride + offset .. + hd`; `out.len() == q.len()`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attend(
    q: &[f32],
    ks: &[f32],
    vs: &[f32],
    stride: usize,
    offset: usize,
    n_pos: usize,
    hd: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    debug_assert!(hd.is_multiple_of(8) && out.len() == q.len());
    debug_assert!(n_pos == 0 || (n_pos - 1) * stride + offset + hd <= ks.len().min(vs.len()));
    let (kp, vp) = (ks.as_ptr(), vs.as_ptr());
    for (qh, oh) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
        scores.clear();
        scores.resize(n_pos, 0.0);
        let qp = qh.as_ptr();
        let mut p = 0;
        while p + 4 <= n_pos {
            let mut a = [_mm256_setzero_ps(); 4];
            let mut d = 0;
            while d < hd {
                // SAFETY: d + 8 <= hd; positions p..p + 4 are < n_pos, in bounds by the contract.
                unsafe {
                    let qv = _mm256_loadu_ps(qp.add(d));
                    for (j, aj) in a.iter_mut().enumerate() {
                        *aj = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kp.add((p + j) * stride + offset + d)), *aj);
                    }
                }
                d += 8;
            }
            // Four horizontal sums at once: lanes of s are the dots of positions p..p + 4.
            let h01 = _mm256_hadd_ps(a[0], a[1]);
            let h23 = _mm256_hadd_ps(a[2], a[3]);
            let h = _mm256_hadd_ps(h01, h23);
            let s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
            let s = _mm_mul_ps(s, _mm_set1_ps(scale));
            // SAFETY: p + 4 <= n_pos == scores.len().
            unsafe { _mm_storeu_ps(scores.as_mut_ptr().add(p), s) };
            p += 4;
        }
        while p < n_pos {
            // SAFETY: the key of position p < n_pos is in bounds by the contract.
            let k = unsafe { std::slice::from_raw_parts(kp.add(p * stride + offset), hd) };
            // SAFETY: AVX2/FMA are enabled for this function.
            scores[p] = unsafe { dot_f32(qh, k) } * scale;
            p += 1;
        }
        softmax(scores);
        let mut c0 = 0;
        while c0 < hd {
            let width = (hd - c0).min(64) / 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            for (p, &w) in scores.iter().enumerate() {
                let wv = _mm256_set1_ps(w);
                let base = p * stride + offset + c0;
                for (j, aj) in acc.iter_mut().enumerate().take(width) {
                    // SAFETY: c0 + 8 * j + 8 <= hd, so the value load stays inside position p.
                    *aj = _mm256_fmadd_ps(wv, unsafe { _mm256_loadu_ps(vp.add(base + 8 * j)) }, *aj);
                }
            }
            for (j, aj) in acc.iter().enumerate().take(width) {
                // SAFETY: c0 + 8 * j + 8 <= hd == oh.len().
                unsafe { _mm256_storeu_ps(oh.as_mut_ptr().add(c0 + 8 * j), *aj) };
            }
            c0 += 64;
        }
    }
}
