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
    let sign = _mm256_set1_ps(-0.0);
    for (xs, b) in x.chunks_exact(32).zip(out.chunks_exact_mut(bb)) {
        // SAFETY: xs has exactly 32 f32s, read as four 8-lane loads.
        let v: [__m256; 4] = unsafe { std::array::from_fn(|k| _mm256_loadu_ps(xs.as_ptr().add(8 * k))) };
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for vk in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vk));
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
        let r: [__m256i; 4] = std::array::from_fn(|k| {
            _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                v[k], id,
            )))
        });
        let mut q = [0i32; 32];
        for (k, rk) in r.iter().enumerate() {
            // SAFETY: q has 32 i32s; lanes 8k..8k+8 are in bounds for k < 4.
            unsafe { _mm256_storeu_si256(q.as_mut_ptr().add(8 * k).cast(), *rk) };
        }
        let mut sum = 0i32;
        for (o, &qi) in b[off..].iter_mut().zip(&q) {
            *o = qi as i8 as u8;
            sum += qi;
        }
        crate::quant::wr_f16(b, 0, d);
        if q8_1 {
            crate::quant::wr_f16(b, 2, d * sum as f32);
        }
    }
}

/// [`crate::cpu::ops::attend_body`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
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
    crate::cpu::ops::attend_body(q, ks, vs, stride, offset, n_pos, hd, scale, scores, out)
}
