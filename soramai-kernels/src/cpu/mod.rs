//! CPU kernels: quantized matrix products on the blocks (activations quantized to 8-bit blocks,
//! integer dot products), rayon over output rows, SIMD chosen at run time with scalar twins.
//!
//! | ISA | kernels |
//! | --- | --- |
//! | scalar (all targets) | every format, the reference |
//! | AVX2 + FMA + F16C (x86_64) | Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q4_K, Q5_K, Q6_K dot products, f32 dot/axpy, activation quantization |
//! | AVX-512 VNNI + VL (x86_64) | the same dot products with `vpdpbusd`; the packed many-row products of [`gemm`] |
//!
//! The quantized kernels take one weight row and up to four activation rows at once, so a batch
//! unpacks each weight block once per four tokens. A NEON path is not written yet: on aarch64 the
//! scalar kernels run, with the same results.

// The dispatchers below call the per-ISA kernels (`unsafe fn`s with `target_feature`) after
// checking the CPU has the features; the kernels themselves are in `avx2`, `qdot` and `gemm`.
#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
pub mod gemm;
pub mod ops;
#[cfg(target_arch = "x86_64")]
mod qdot;
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
    /// x86_64 AVX2 with FMA and F16C.
    Avx2,
    /// x86_64 AVX-512 (F, BW, VL) with VNNI, plus AVX2/FMA/F16C.
    Avx512Vnni,
}

static ISA: AtomicU8 = AtomicU8::new(0);

fn detect() -> Isa {
    let forced = std::env::var("SORAMAI_ISA").ok();
    if forced.as_deref() == Some("scalar") {
        return Isa::Scalar;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 =
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        let vnni = avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        if vnni && forced.as_deref() != Some("avx2") {
            return Isa::Avx512Vnni;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

fn code(i: Isa) -> u8 {
    match i {
        Isa::Scalar => 1,
        Isa::Avx2 => 2,
        Isa::Avx512Vnni => 3,
    }
}

/// The instruction set in use: the best this CPU has, unless `SORAMAI_ISA` (`scalar`, `avx2`) or
/// [`set_isa`] chose a lesser one.
#[inline]
pub fn isa() -> Isa {
    match ISA.load(Ordering::Relaxed) {
        1 => Isa::Scalar,
        2 => Isa::Avx2,
        3 => Isa::Avx512Vnni,
        _ => {
            let i = detect();
            ISA.store(code(i), Ordering::Relaxed);
            i
        }
    }
}

/// Forces an instruction set (for comparing paths); one this CPU lacks falls back to the best it has
/// below it.
pub fn set_isa(want: Isa) {
    let best = detect();
    let i = match (want, best) {
        (Isa::Scalar, _) | (_, Isa::Scalar) => Isa::Scalar,
        (Isa::Avx2, _) | (Isa::Avx512Vnni, Isa::Avx2) => Isa::Avx2,
        (Isa::Avx512Vnni, Isa::Avx512Vnni) => Isa::Avx512Vnni,
    };
    ISA.store(code(i), Ordering::Relaxed);
}

/// Whether the AVX2 helpers (f32 dot, axpy, activation quantization) may run.
#[inline]
fn has_avx2() -> bool {
    matches!(isa(), Isa::Avx2 | Isa::Avx512Vnni)
}

/// The block format activations are quantized to for a product with weights of type `ty`.
pub const fn vec_dot_type(ty: GgmlType) -> GgmlType {
    ty.facts().vec_dot
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
            if has_avx2() {
                // SAFETY: AVX2/FMA were detected; callers pass whole blocks (checked in `matmul`).
                unsafe { avx2::quantize_q8(x, out, act == GgmlType::Q8_1) };
                return;
            }
            quantize_q8_scalar(x, out, act == GgmlType::Q8_1);
        }
        GgmlType::Q8_K => {
            for (xs, b) in x.chunks_exact(256).zip(out.chunks_exact_mut(act.block_bytes())) {
                crate::quant::k_quants::quantize_q8k_block(xs, b);
            }
        }
        // Not an activation format ([`vec_dot_type`] never returns these): the bytes are left
        // as they are, and `matmul` refuses such a product before it gets here.
        GgmlType::F16
        | GgmlType::BF16
        | GgmlType::Q4_0
        | GgmlType::Q4_1
        | GgmlType::Q5_0
        | GgmlType::Q5_1
        | GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q4_K
        | GgmlType::Q5_K
        | GgmlType::Q6_K => {}
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
    vec_dot_rows::<1>(ty, n, w, [a])[0]
}

/// Dot products of one weight row with `R` activation rows (the weight blocks are unpacked once).
#[inline]
pub fn vec_dot_rows<const R: usize>(ty: GgmlType, n: usize, w: &[u8], a: [&[u8]; R]) -> [f32; R] {
    vec_dot_rows_on::<R>(isa(), ty, n, w, a)
}

/// [`vec_dot_rows`] on a given instruction set, which the caller has checked this CPU supports.
#[inline]
pub(crate) fn vec_dot_rows_on<const R: usize>(isa: Isa, ty: GgmlType, n: usize, w: &[u8], a: [&[u8]; R]) -> [f32; R] {
    #[cfg(target_arch = "x86_64")]
    {
        let nb = n / 32;
        let fits = |wb: usize, ab: usize| w.len() >= nb * wb && a.iter().all(|r| r.len() >= nb * ab);
        // The k-quants: blocks of 256 against Q8_K blocks (292 bytes).
        let nk = n / 256;
        let fits_k = |wb: usize| n.is_multiple_of(256) && w.len() >= nk * wb && a.iter().all(|r| r.len() >= nk * 292);
        macro_rules! go {
            ($m:ident) => {
                // SAFETY: the ISA was detected at run time and `fits` / `fits_k` checked every row
                // holds `nb` (`nk`) blocks.
                match ty {
                    GgmlType::Q4_1 if fits(20, 36) => return unsafe { qdot::$m::qx_1_q8_1::<R, false>(nb, w, a) },
                    GgmlType::Q4_0 if fits(18, 34) => return unsafe { qdot::$m::qx_0_q8_0::<R, 18>(nb, w, a) },
                    GgmlType::Q8_0 if fits(34, 34) => return unsafe { qdot::$m::qx_0_q8_0::<R, 34>(nb, w, a) },
                    GgmlType::Q5_0 if fits(22, 34) => return unsafe { qdot::$m::qx_0_q8_0::<R, 22>(nb, w, a) },
                    GgmlType::Q5_1 if fits(24, 36) => return unsafe { qdot::$m::qx_1_q8_1::<R, true>(nb, w, a) },
                    GgmlType::Q4_K if fits_k(144) => return unsafe { qdot::$m::q45_k_q8_k::<R, false>(nk, w, a) },
                    GgmlType::Q5_K if fits_k(176) => return unsafe { qdot::$m::q45_k_q8_k::<R, true>(nk, w, a) },
                    GgmlType::Q6_K if fits_k(210) => return unsafe { qdot::$m::q6_k_q8_k::<R>(nk, w, a) },
                    _ => {}
                }
            };
        }
        match isa {
            Isa::Avx512Vnni => go!(vnni),
            Isa::Avx2 => go!(avx2),
            Isa::Scalar => {}
        }
    }
    std::array::from_fn(|j| scalar::vec_dot(ty, n, w, a[j]))
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
    if m == 1 {
        quantize_activations(act_ty, x, &mut act);
    } else {
        act.par_chunks_mut(act_bytes).zip(x.par_chunks(cols)).for_each(|(a, xr)| quantize_activations(act_ty, xr, a));
    }
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
        let act_row = |tok: usize| &act[tok * act_bytes..(tok + 1) * act_bytes];
        for (k, orow) in o.chunks_exact_mut(m).enumerate() {
            let r = ci * per + k;
            let wr = &w[r * row_bytes..(r + 1) * row_bytes];
            let mut tok = 0;
            while tok + 4 <= m {
                let v = vec_dot_rows::<4>(
                    ty,
                    cols,
                    wr,
                    [act_row(tok), act_row(tok + 1), act_row(tok + 2), act_row(tok + 3)],
                );
                orow[tok..tok + 4].copy_from_slice(&v);
                tok += 4;
            }
            while tok < m {
                orow[tok] = vec_dot(ty, cols, wr, act_row(tok));
                tok += 1;
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

/// One weight matrix of a [`matmul_group`].
#[derive(Debug)]
pub struct GroupItem<'a> {
    /// Block format.
    pub ty: GgmlType,
    /// `rows × cols` blocks.
    pub w: &'a [u8],
    /// Output features.
    pub rows: usize,
    /// `m × rows` results.
    pub out: &'a mut [f32],
}

/// Several weight matrices applied to the same activations `x` (`m × cols`), such as Q, K and V:
/// the activations are quantized once, and for a single row (decode) every row of every matrix is
/// spread over the threads in one parallel region instead of one region per matrix.
pub fn matmul_group(items: &mut [GroupItem<'_>], cols: usize, x: &[f32]) -> Result<()> {
    if cols == 0 || x.len() != cols || items.iter().any(|it| it.ty != items[0].ty) {
        for it in items.iter_mut() {
            matmul(it.ty, it.w, it.rows, cols, x, it.out)?;
        }
        return Ok(());
    }
    let ty = items[0].ty;
    let row_bytes = ty
        .bytes_for(cols as u64)
        .filter(|_| ty != GgmlType::Q8_1)
        .ok_or_else(|| Error::UnsupportedType(format!("{ty}: row of {cols} is not whole blocks")))?
        as usize;
    for it in items.iter() {
        if it.w.len() != row_bytes * it.rows || it.out.len() != it.rows {
            return Err(Error::UnsupportedType(format!("{ty} group matmul: {}x{cols} weights", it.rows)));
        }
    }
    let act_ty = vec_dot_type(ty);
    let mut act = vec![0u8; act_ty.bytes_for(cols as u64).unwrap_or(0) as usize];
    quantize_activations(act_ty, x, &mut act);
    let total: usize = items.iter().map(|it| it.rows).sum();
    let per = total.div_ceil(rayon::current_num_threads().max(1) * 4).clamp(1, 256);
    let mut tasks: Vec<(&[u8], usize, &mut [f32])> = Vec::new();
    for it in items.iter_mut() {
        for (ci, o) in it.out.chunks_mut(per).enumerate() {
            tasks.push((it.w, ci * per, o));
        }
    }
    tasks.into_par_iter().for_each(|(w, r0, o)| {
        for (k, v) in o.iter_mut().enumerate() {
            let r = r0 + k;
            *v = vec_dot(ty, cols, &w[r * row_bytes..(r + 1) * row_bytes], &act);
        }
    });
    Ok(())
}

/// Attention of one query group against cached keys and values (see [`ops::attend_body`]): the
/// CPU reference the GPU attention kernel is tested against.
#[allow(clippy::too_many_arguments)]
pub fn attend(
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
    #[cfg(target_arch = "x86_64")]
    if has_avx2()
        && hd.is_multiple_of(8)
        && out.len() == q.len()
        && (n_pos == 0 || (n_pos - 1) * stride + offset + hd <= ks.len().min(vs.len()))
    {
        // SAFETY: AVX2/FMA were detected and the bounds of its contract were checked just above.
        return unsafe { avx2::attend(q, ks, vs, stride, offset, n_pos, hd, scale, scores, out) };
    }
    ops::attend_body(q, ks, vs, stride, offset, n_pos, hd, scale, scores, out)
}

/// Σ x·y.
#[inline]
pub fn dot_f32(x: &[f32], y: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2/FMA were detected.
        return unsafe { avx2::dot_f32(x, y) };
    }
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// `x[i] = e^(x[i] − shift)` in place; returns the sum (a softmax's denominator).
pub fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2/FMA were detected.
        return unsafe { avx2::exp_shift_sum(x, shift) };
    }
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

/// y += a·x.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2/FMA were detected.
        return unsafe { avx2::axpy(a, x, y) };
    }
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

#[cfg(test)]
mod tests;
