//! The 256-element super-block formats (k-quants): Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and Q8_K.
//!
//! | type | bytes | layout |
//! | --- | --- | --- |
//! | Q2_K | 84 | `scales: [u8; 16]` (4-bit scale, 4-bit min), `qs: [u8; 64]`, `d, dmin: f16` |
//! | Q3_K | 110 | `hmask: [u8; 32]`, `qs: [u8; 64]`, `scales: [u8; 12]` (16 × 6 bit), `d: f16` |
//! | Q4_K | 144 | `d, dmin: f16`, `scales: [u8; 12]` (8 × 6-bit scale and min), `qs: [u8; 128]` |
//! | Q5_K | 176 | `d, dmin: f16`, `scales: [u8; 12]`, `qh: [u8; 32]`, `qs: [u8; 128]` |
//! | Q6_K | 210 | `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16` |
//! | Q8_K | 292 | `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]` |
//!
//! The quantizers here pick scales by min/max per sub-block (not ggml's iterative search): their
//! output is valid for every reader, a little less precise than ggml's.

use super::{KQuant, rd_f16, wr_f16};

/// Elements per super-block.
pub const QK_K: usize = 256;

/// Scale and min of sub-block `j` from the 12 packed bytes of Q4_K and Q5_K.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// All eight scales and mins of a Q4_K/Q5_K block from its 12 packed bytes at once (the layout of
/// [`scale_min_k4`], four at a time in u32s): `(scales, mins)`.
#[inline]
pub(crate) fn scales_mins_k4(b: &[u8]) -> ([u8; 8], [u8; 8]) {
    let w = |k: usize| u32::from_le_bytes([b[4 * k], b[4 * k + 1], b[4 * k + 2], b[4 * k + 3]]);
    let (w0, w1, w2) = (w(0), w(1), w(2));
    let sc_lo = w0 & 0x3F3F_3F3F;
    let mn_lo = w1 & 0x3F3F_3F3F;
    let sc_hi = (w2 & 0x0F0F_0F0F) | (((w0 >> 6) & 0x0303_0303) << 4);
    let mn_hi = ((w2 >> 4) & 0x0F0F_0F0F) | (((w1 >> 6) & 0x0303_0303) << 4);
    (
        (u64::from(sc_hi) << 32 | u64::from(sc_lo)).to_le_bytes(),
        (u64::from(mn_hi) << 32 | u64::from(mn_lo)).to_le_bytes(),
    )
}

/// The 16 signed 6-bit scales of a Q3_K block.
#[inline]
pub(crate) fn q3k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let lo = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((lo | (hi << 4)) as i8) - 32;
    }
    out
}

pub(super) fn dequantize(ty: KQuant, src: &[u8], out: &mut [f32]) {
    let bb = ty.ty().block_bytes();
    for (b, y) in src.chunks_exact(bb).zip(out.chunks_exact_mut(QK_K)) {
        match ty {
            KQuant::Q2_K => {
                let (sc, qs) = (&b[0..16], &b[16..80]);
                let (d, dmin) = (rd_f16(b, 80), rd_f16(b, 82));
                for (e, v) in y.iter_mut().enumerate() {
                    let (half, r) = (e / 128, e % 128);
                    let (j, l) = (r / 32, r % 32);
                    let s = sc[e / 16];
                    let q = (qs[half * 32 + l] >> (2 * j)) & 3;
                    *v = d * (s & 0x0F) as f32 * q as f32 - dmin * (s >> 4) as f32;
                }
            }
            KQuant::Q3_K => {
                let (hm, qs) = (&b[0..32], &b[32..96]);
                let scales = q3k_scales(&b[96..108]);
                let d = rd_f16(b, 108);
                for (e, v) in y.iter_mut().enumerate() {
                    let (half, r) = (e / 128, e % 128);
                    let (j, l) = (r / 32, r % 32);
                    let low = ((qs[half * 32 + l] >> (2 * j)) & 3) as i32;
                    let high = if hm[e % 32] & (1 << (e / 32)) != 0 { 0 } else { 4 };
                    *v = d * scales[e / 16] as f32 * (low - high) as f32;
                }
            }
            KQuant::Q4_K | KQuant::Q5_K => {
                let (d, dmin) = (rd_f16(b, 0), rd_f16(b, 2));
                let sc = &b[4..16];
                let (qh, qs) = if ty == KQuant::Q5_K { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
                for (e, v) in y.iter_mut().enumerate() {
                    let (chunk, r) = (e / 64, e % 64);
                    let (hi_nib, l) = (r / 32, r % 32);
                    let byte = qs[chunk * 32 + l];
                    let mut q = if hi_nib == 1 { byte >> 4 } else { byte & 0x0F } as u32;
                    if let Some(qh) = qh
                        && qh[l] & (1 << (2 * chunk + hi_nib)) != 0
                    {
                        q += 16;
                    }
                    let (s, m) = scale_min_k4(e / 32, sc);
                    *v = d * s as f32 * q as f32 - dmin * m as f32;
                }
            }
            KQuant::Q6_K => {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = rd_f16(b, 208);
                for (e, v) in y.iter_mut().enumerate() {
                    let (half, r) = (e / 128, e % 128);
                    let (k, l) = (r / 32, r % 32);
                    let lb = ql[half * 64 + (k % 2) * 32 + l];
                    let low = if k < 2 { lb & 0x0F } else { lb >> 4 };
                    let high = (qh[half * 32 + l] >> (2 * k)) & 3;
                    let q = ((low | (high << 4)) as i32) - 32;
                    *v = d * (sc[half * 8 + r / 16] as i8) as f32 * q as f32;
                }
            }
            KQuant::Q8_K => {
                let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                for (v, q) in y.iter_mut().zip(&b[4..260]) {
                    *v = d * (*q as i8) as f32;
                }
            }
        }
    }
}

fn nearest(v: f32) -> i32 {
    v.round() as i32
}

/// Quantizes `x` (one super-block) to Q8_K into `b`.
pub(crate) fn quantize_q8k_block(x: &[f32], b: &mut [u8]) {
    let max = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if max == 0.0 {
        b.fill(0);
        return;
    }
    let iscale = -127.0 / max;
    for (j, v) in x.iter().enumerate() {
        b[4 + j] = nearest(iscale * v).min(127) as i8 as u8;
    }
    for s in 0..16 {
        let sum: i32 = (0..16).map(|l| b[4 + s * 16 + l] as i8 as i32).sum();
        b[260 + 2 * s..262 + 2 * s].copy_from_slice(&(sum as i16).to_le_bytes());
    }
    b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
}

/// Per-sub-block affine parameters for `q = (x + min) / scale` with `q` in `0..=top`.
fn affine(x: &[f32], top: f32) -> (f32, f32) {
    let lo = x.iter().fold(0.0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    ((hi - lo).max(0.0) / top, -lo)
}

fn inv(v: f32) -> f32 {
    if v != 0.0 { 1.0 / v } else { 0.0 }
}

pub(super) fn quantize(ty: KQuant, src: &[f32], out: &mut [u8]) {
    let bb = ty.ty().block_bytes();
    for (x, b) in src.chunks_exact(QK_K).zip(out.chunks_exact_mut(bb)) {
        b.fill(0);
        match ty {
            KQuant::Q2_K => {
                let p: Vec<(f32, f32)> = x.chunks_exact(16).map(|s| affine(s, 3.0)).collect();
                let d = p.iter().fold(0.0f32, |m, v| m.max(v.0)) / 15.0;
                let dmin = p.iter().fold(0.0f32, |m, v| m.max(v.1)) / 15.0;
                wr_f16(b, 80, d);
                wr_f16(b, 82, dmin);
                let (d, dmin) = (rd_f16(b, 80), rd_f16(b, 82));
                let mut levels = [0u8; QK_K];
                for (s, &(sc, mn)) in p.iter().enumerate() {
                    let ls = nearest(sc * inv(d)).clamp(0, 15) as u8;
                    let lm = nearest(mn * inv(dmin)).clamp(0, 15) as u8;
                    b[s] = ls | (lm << 4);
                    let (dl, ml) = (d * ls as f32, dmin * lm as f32);
                    for l in 0..16 {
                        levels[s * 16 + l] = nearest((x[s * 16 + l] + ml) * inv(dl)).clamp(0, 3) as u8;
                    }
                }
                for half in 0..2 {
                    for l in 0..32 {
                        let e = half * 128 + l;
                        b[16 + half * 32 + l] =
                            levels[e] | (levels[e + 32] << 2) | (levels[e + 64] << 4) | (levels[e + 96] << 6);
                    }
                }
            }
            KQuant::Q3_K => {
                let scales: Vec<f32> =
                    x.chunks_exact(16).map(|s| s.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 4.0).collect();
                let d = scales.iter().fold(0.0f32, |m, &v| m.max(v)) / 31.0;
                wr_f16(b, 108, d);
                let d = rd_f16(b, 108);
                let mut levels = [0u8; QK_K];
                for (s, &sc) in scales.iter().enumerate() {
                    let l = nearest(sc * inv(d)).clamp(0, 31);
                    let stored = (l + 32) as u8;
                    if s < 8 {
                        b[96 + s] |= stored & 0x0F;
                    } else {
                        b[96 + s - 8] |= (stored & 0x0F) << 4;
                    }
                    b[96 + 8 + s % 4] |= (stored >> 4) << (2 * (s / 4));
                    let dl = d * l as f32;
                    for j in 0..16 {
                        levels[s * 16 + j] = (nearest(x[s * 16 + j] * inv(dl)).clamp(-4, 3) + 4) as u8;
                    }
                }
                for (e, lv) in levels.iter_mut().enumerate() {
                    if *lv > 3 {
                        b[e % 32] |= 1 << (e / 32);
                        *lv -= 4;
                    }
                }
                for half in 0..2 {
                    for l in 0..32 {
                        let e = half * 128 + l;
                        b[32 + half * 32 + l] =
                            levels[e] | (levels[e + 32] << 2) | (levels[e + 64] << 4) | (levels[e + 96] << 6);
                    }
                }
            }
            KQuant::Q4_K | KQuant::Q5_K => {
                let top = if ty == KQuant::Q4_K { 15.0 } else { 31.0 };
                let p: Vec<(f32, f32)> = x.chunks_exact(32).map(|s| affine(s, top)).collect();
                let d = p.iter().fold(0.0f32, |m, v| m.max(v.0)) / 63.0;
                let dmin = p.iter().fold(0.0f32, |m, v| m.max(v.1)) / 63.0;
                wr_f16(b, 0, d);
                wr_f16(b, 2, dmin);
                let (d, dmin) = (rd_f16(b, 0), rd_f16(b, 2));
                let mut levels = [0u8; QK_K];
                for (j, &(sc, mn)) in p.iter().enumerate() {
                    let ls = nearest(sc * inv(d)).clamp(0, 63) as u8;
                    let lm = nearest(mn * inv(dmin)).clamp(0, 63) as u8;
                    let s = &mut b[4..16];
                    if j < 4 {
                        s[j] = ls;
                        s[j + 4] = lm;
                    } else {
                        s[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
                        s[j - 4] |= (ls >> 4) << 6;
                        s[j] |= (lm >> 4) << 6;
                    }
                    let (dl, ml) = (d * ls as f32, dmin * lm as f32);
                    for l in 0..32 {
                        levels[j * 32 + l] = nearest((x[j * 32 + l] + ml) * inv(dl)).clamp(0, top as i32) as u8;
                    }
                }
                let qs_off = if ty == KQuant::Q5_K { 48 } else { 16 };
                for chunk in 0..4 {
                    for l in 0..32 {
                        let (mut l1, mut l2) = (levels[chunk * 64 + l], levels[chunk * 64 + 32 + l]);
                        if ty == KQuant::Q5_K {
                            if l1 > 15 {
                                l1 -= 16;
                                b[16 + l] |= 1 << (2 * chunk);
                            }
                            if l2 > 15 {
                                l2 -= 16;
                                b[16 + l] |= 2 << (2 * chunk);
                            }
                        }
                        b[qs_off + chunk * 32 + l] = l1 | (l2 << 4);
                    }
                }
            }
            KQuant::Q6_K => {
                let scales: Vec<f32> = x
                    .chunks_exact(16)
                    .map(|s| s.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m }) / -32.0)
                    .collect();
                let amax = scales.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = amax / -128.0;
                wr_f16(b, 208, d);
                let d = rd_f16(b, 208);
                let mut levels = [0u8; QK_K];
                for (s, &sc) in scales.iter().enumerate() {
                    let l = nearest(sc * inv(d)).clamp(-128, 127) as i8;
                    b[192 + s] = l as u8;
                    let dl = d * l as f32;
                    for j in 0..16 {
                        levels[s * 16 + j] = (nearest(x[s * 16 + j] * inv(dl)).clamp(-32, 31) + 32) as u8;
                    }
                }
                for half in 0..2 {
                    for l in 0..32 {
                        let e = half * 128 + l;
                        let (q1, q2, q3, q4) = (levels[e], levels[e + 32], levels[e + 64], levels[e + 96]);
                        b[half * 64 + l] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
                        b[half * 64 + 32 + l] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
                        b[128 + half * 32 + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
                    }
                }
            }
            KQuant::Q8_K => quantize_q8k_block(x, b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_and_mins_four_at_a_time_equal_one_at_a_time() {
        let mut x = 0x9E37_79B9u32;
        for _ in 0..500 {
            let b: Vec<u8> = (0..12)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let (sc, mn) = scales_mins_k4(&b);
            for j in 0..8 {
                assert_eq!((sc[j], mn[j]), scale_min_k4(j, &b), "{b:?} sub-block {j}");
            }
        }
    }
}
