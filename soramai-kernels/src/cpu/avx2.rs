//! AVX2 + FMA kernels (x86_64). Each is `unsafe` only for its `#[target_feature]`; the dispatcher in
//! [`super`] calls them after runtime detection, and the unit tests assert them equal to the scalar
//! twins in [`super::scalar`].

#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::quant::rd_f16;

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

/// 32 unsigned nibbles of a 16-byte block: low nibbles in lanes 0..16, high in 16..32.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn nibbles(p: &[u8; 16]) -> __m256i {
    // SAFETY: `p` is 16 readable bytes; loadu has no alignment requirement.
    let x = unsafe { _mm_loadu_si128(p.as_ptr().cast()) };
    let m = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(x, m);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), m);
    _mm256_set_m128i(hi, lo)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn load32(p: &[u8; 32]) -> __m256i {
    // SAFETY: `p` is 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

/// Σ u8 × i8 over 32 lanes, as 8 f32 partial sums.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(u, s);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// Σ i8 × i8 over 32 lanes, as 8 f32 partial sums.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256 {
    dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
}

fn block<const N: usize>(b: &[u8], at: usize) -> &[u8; N] {
    b[at..at + N].try_into().expect("caller passes whole blocks")
}

/// Q4_1 weights · Q8_1 activations over `nb` blocks.
///
/// # Safety
/// The CPU must support AVX2 and FMA. `w` and `a` must hold `nb` blocks each.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn vec_dot_q4_1_q8_1(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for i in 0..nb {
        let (x, y) = (&w[i * 20..i * 20 + 20], &a[i * 36..i * 36 + 36]);
        let (dx, mx, dy, sy) = (rd_f16(x, 0), rd_f16(x, 2), rd_f16(y, 0), rd_f16(y, 2));
        summs += mx * sy;
        let q = nibbles(block::<16>(x, 4));
        let p = dot_u8_i8(q, load32(block::<32>(y, 4)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dx * dy), p, acc);
    }
    hsum(acc) + summs
}

/// Q4_0 weights · Q8_0 activations over `nb` blocks.
///
/// # Safety
/// The CPU must support AVX2 and FMA. `w` and `a` must hold `nb` blocks each.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn vec_dot_q4_0_q8_0(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let (x, y) = (&w[i * 18..i * 18 + 18], &a[i * 34..i * 34 + 34]);
        let q = _mm256_sub_epi8(nibbles(block::<16>(x, 2)), _mm256_set1_epi8(8));
        let p = dot_i8_i8(q, load32(block::<32>(y, 2)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(rd_f16(x, 0) * rd_f16(y, 0)), p, acc);
    }
    hsum(acc)
}

/// Q8_0 weights · Q8_0 activations over `nb` blocks.
///
/// # Safety
/// The CPU must support AVX2 and FMA. `w` and `a` must hold `nb` blocks each.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn vec_dot_q8_0_q8_0(nb: usize, w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        let (x, y) = (&w[i * 34..i * 34 + 34], &a[i * 34..i * 34 + 34]);
        let p = dot_i8_i8(load32(block::<32>(x, 2)), load32(block::<32>(y, 2)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(rd_f16(x, 0) * rd_f16(y, 0)), p, acc);
    }
    hsum(acc)
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
