//! CPU kernels: quantized matrix products on the blocks (activations quantized to 8-bit blocks,
//! integer dot products), rayon over output rows, SIMD chosen at run time with scalar twins.
//!
//! | ISA | kernels |
//! | --- | --- |
//! | scalar (all targets) | every format, the reference |
//! | AVX2 + FMA (x86_64) | Q4_0, Q4_1, Q8_0 dot products, f32 dot/axpy, activation quantization |
//!
//! AVX-512 and NEON paths are not written yet: on those CPUs the AVX2 path (x86) or the scalar path
//! (aarch64) runs, with the same results.

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
pub mod ops;
pub(crate) mod scalar;

use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// The instruction set the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable scalar code.
    Scalar,
    /// x86_64 AVX2 with FMA.
    Avx2,
}

static ISA: AtomicU8 = AtomicU8::new(0);

fn detect() -> Isa {
    if std::env::var("SORAMAI_ISA").is_ok_and(|v| v == "scalar") {
        return Isa::Scalar;
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        return Isa::Avx2;
    }
    Isa::Scalar
}

/// The instruction set in use: the best this CPU has, unless `SORAMAI_ISA=scalar` or [`set_isa`]
/// chose otherwise.
#[inline]
pub fn isa() -> Isa {
    match ISA.load(Ordering::Relaxed) {
        1 => Isa::Scalar,
        2 => Isa::Avx2,
        _ => {
            let i = detect();
            ISA.store(if i == Isa::Avx2 { 2 } else { 1 }, Ordering::Relaxed);
            i
        }
    }
}

/// Forces an instruction set (for comparing paths); a SIMD set this CPU lacks falls back to scalar.
pub fn set_isa(want: Isa) {
    let best = detect();
    let i = if want == Isa::Avx2 && best == Isa::Avx2 { Isa::Avx2 } else { Isa::Scalar };
    ISA.store(if i == Isa::Avx2 { 2 } else { 1 }, Ordering::Relaxed);
}

/// The block format activations are quantized to for a product with weights of type `ty`.
pub const fn vec_dot_type(ty: GgmlType) -> GgmlType {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => GgmlType::F32,
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => GgmlType::Q8_0,
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q8_1 => GgmlType::Q8_1,
        _ => GgmlType::Q8_K,
    }
}

/// Quantizes one row of activations to `act` (a [`vec_dot_type`]) into `out`.
pub fn quantize_activations(act: GgmlType, x: &[f32], out: &mut [u8]) {
    match act {
        GgmlType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        GgmlType::Q8_0 | GgmlType::Q8_1 => {
            #[cfg(target_arch = "x86_64")]
            if isa() == Isa::Avx2 {
                // SAFETY: AVX2/FMA were detected; callers pass whole blocks (checked in `matmul`).
                unsafe { avx2::quantize_q8(x, out, act == GgmlType::Q8_1) };
                return;
            }
            quantize_q8_scalar(x, out, act == GgmlType::Q8_1);
        }
        _ => {
            for (xs, b) in x.chunks_exact(256).zip(out.chunks_exact_mut(act.block_bytes())) {
                crate::quant::k_quants::quantize_q8k_block(xs, b);
            }
        }
    }
}

/// Scalar twin of the SIMD activation quantizer (round half to even, like the SIMD rounding).
pub(crate) fn quantize_q8_scalar(x: &[f32], out: &mut [u8], q8_1: bool) {
    let bb = if q8_1 { 36 } else { 34 };
    for (xs, b) in x.chunks_exact(32).zip(out.chunks_exact_mut(bb)) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (o, v) in b[bb - 32..].iter_mut().zip(xs) {
            let q = (v * id).round_ties_even() as i32;
            sum += q;
            *o = q as i8 as u8;
        }
        crate::quant::wr_f16(b, 0, d);
        if q8_1 {
            crate::quant::wr_f16(b, 2, d * sum as f32);
        }
    }
}

/// Dot product of one weight row (type `ty`, `n` elements) with one activation row.
#[inline]
pub fn vec_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 {
        let nb = n / 32;
        // SAFETY: AVX2/FMA were detected; `w` and `a` hold whole rows (checked in `matmul`).
        match ty {
            GgmlType::Q4_1 => return unsafe { avx2::vec_dot_q4_1_q8_1(nb, w, a) },
            GgmlType::Q4_0 => return unsafe { avx2::vec_dot_q4_0_q8_0(nb, w, a) },
            GgmlType::Q8_0 => return unsafe { avx2::vec_dot_q8_0_q8_0(nb, w, a) },
            _ => {}
        }
    }
    scalar::vec_dot(ty, n, w, a)
}

/// `out[t][r] = Σ_c w[r][c] · x[t][c]` for a `rows × cols` weight matrix of type `ty` stored as
/// row-major blocks, and `m` activation rows `x` (`m × cols`). `out` is `m × rows`.
pub fn matmul(ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) -> Result<()> {
    let row_bytes = ty
        .bytes_for(cols as u64)
        .ok_or_else(|| Error::UnsupportedType(format!("{ty}: row of {cols} is not whole blocks")))?
        as usize;
    if ty == GgmlType::Q8_1 || w.len() != row_bytes * rows || cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(Error::UnsupportedType(format!("{ty} matmul: {rows}x{cols} weights, {} activations", x.len())));
    }
    let m = x.len() / cols;
    if out.len() != m * rows {
        return Err(Error::UnsupportedType(format!("matmul output holds {} values, not {}", out.len(), m * rows)));
    }
    let act_ty = vec_dot_type(ty);
    let act_bytes = act_ty.bytes_for(cols as u64).unwrap_or(0) as usize;
    let mut act = vec![0u8; act_bytes * m];
    act.par_chunks_mut(act_bytes).zip(x.par_chunks(cols)).for_each(|(a, xr)| quantize_activations(act_ty, xr, a));
    let threads = rayon::current_num_threads().max(1);
    let per = rows.div_ceil(threads * 4).clamp(1, 256);
    if m == 1 {
        out.par_chunks_mut(per).enumerate().for_each(|(ci, o)| {
            for (k, v) in o.iter_mut().enumerate() {
                let r = ci * per + k;
                *v = vec_dot(ty, cols, &w[r * row_bytes..(r + 1) * row_bytes], &act);
            }
        });
        return Ok(());
    }
    let mut t = vec![0f32; rows * m];
    t.par_chunks_mut(per * m).enumerate().for_each(|(ci, o)| {
        for (k, orow) in o.chunks_exact_mut(m).enumerate() {
            let r = ci * per + k;
            let wr = &w[r * row_bytes..(r + 1) * row_bytes];
            for (tok, v) in orow.iter_mut().enumerate() {
                *v = vec_dot(ty, cols, wr, &act[tok * act_bytes..(tok + 1) * act_bytes]);
            }
        }
    });
    for r in 0..rows {
        for tok in 0..m {
            out[tok * rows + r] = t[r * m + tok];
        }
    }
    Ok(())
}

/// Σ x·y.
#[inline]
pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 {
        // SAFETY: AVX2/FMA were detected.
        return unsafe { avx2::dot_f32(x, y) };
    }
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// y += a·x.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 {
        // SAFETY: AVX2/FMA were detected.
        return unsafe { avx2::axpy(a, x, y) };
    }
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

#[cfg(test)]
mod tests;
