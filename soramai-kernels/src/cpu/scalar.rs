//! Scalar reference kernels: obvious integer arithmetic on the blocks, the twin every SIMD kernel
//! is asserted equal to.

use crate::quant::k_quants::{q3k_scales, scale_min_k4};
use crate::quant::{GgmlType, KQuant, Layout, rd_f16};

/// Integer levels and per-16 scales of one k-quant super-block, so that the block's value `i` is
/// `d * scale[i / 16] * level[i] - dmin * min[i / 16]`.
pub(crate) struct KLevels {
    pub level: [i8; 256],
    pub scale: [i32; 16],
    pub min: [i32; 16],
    pub d: f32,
    pub dmin: f32,
}

pub(crate) fn k_levels(ty: KQuant, b: &[u8]) -> KLevels {
    let mut k = KLevels { level: [0; 256], scale: [0; 16], min: [0; 16], d: 0.0, dmin: 0.0 };
    match ty {
        KQuant::Q2_K => {
            k.d = rd_f16(b, 80);
            k.dmin = rd_f16(b, 82);
            for g in 0..16 {
                k.scale[g] = (b[g] & 0x0F) as i32;
                k.min[g] = (b[g] >> 4) as i32;
            }
            for (e, l) in k.level.iter_mut().enumerate() {
                let (half, r) = (e / 128, e % 128);
                *l = ((b[16 + half * 32 + r % 32] >> (2 * (r / 32))) & 3) as i8;
            }
        }
        KQuant::Q3_K => {
            k.d = rd_f16(b, 108);
            let s = q3k_scales(&b[96..108]);
            for g in 0..16 {
                k.scale[g] = s[g] as i32;
            }
            for (e, l) in k.level.iter_mut().enumerate() {
                let (half, r) = (e / 128, e % 128);
                let low = ((b[32 + half * 32 + r % 32] >> (2 * (r / 32))) & 3) as i8;
                let high = if b[e % 32] & (1 << (e / 32)) != 0 { 0 } else { 4 };
                *l = low - high;
            }
        }
        KQuant::Q4_K | KQuant::Q5_K => {
            k.d = rd_f16(b, 0);
            k.dmin = rd_f16(b, 2);
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, &b[4..16]);
                k.scale[2 * j] = s as i32;
                k.scale[2 * j + 1] = s as i32;
                k.min[2 * j] = m as i32;
                k.min[2 * j + 1] = m as i32;
            }
            let five = ty == KQuant::Q5_K;
            let qs = if five { &b[48..176] } else { &b[16..144] };
            for (e, l) in k.level.iter_mut().enumerate() {
                let (chunk, r) = (e / 64, e % 64);
                let (hi, i) = (r / 32, r % 32);
                let byte = qs[chunk * 32 + i];
                let mut q = if hi == 1 { byte >> 4 } else { byte & 0x0F };
                if five && b[16 + i] & (1 << (2 * chunk + hi)) != 0 {
                    q += 16;
                }
                *l = q as i8;
            }
        }
        KQuant::Q6_K => {
            k.d = rd_f16(b, 208);
            for g in 0..16 {
                k.scale[g] = b[192 + g] as i8 as i32;
            }
            for (e, l) in k.level.iter_mut().enumerate() {
                let (half, r) = (e / 128, e % 128);
                let (q, i) = (r / 32, r % 32);
                let lb = b[half * 64 + (q % 2) * 32 + i];
                let low = if q < 2 { lb & 0x0F } else { lb >> 4 };
                let high = (b[128 + half * 32 + i] >> (2 * q)) & 3;
                *l = ((low | (high << 4)) as i8) - 32;
            }
        }
        KQuant::Q8_K => {
            k.d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            k.scale = [1; 16];
            for (l, q) in k.level.iter_mut().zip(&b[4..260]) {
                *l = *q as i8;
            }
        }
    }
    k
}

/// Dot product of `n` elements: weights `w` of type `ty` with activations `a` in
/// [`super::vec_dot_type`]`(ty)`.
pub(crate) fn vec_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / ty.block_len();
    let (wb, ab) = (ty.block_bytes(), super::vec_dot_type(ty).block_bytes());
    let mut sum = 0f32;
    match ty {
        GgmlType::F32 => {
            for i in 0..n {
                let x = f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]]);
                let y = f32::from_le_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
                sum += x * y;
            }
        }
        GgmlType::F16 | GgmlType::BF16 => {
            for i in 0..n {
                let x = if ty == GgmlType::F16 {
                    half::f16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32()
                } else {
                    half::bf16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32()
                };
                let y = f32::from_le_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
                sum += x * y;
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (has_min, five) =
                (matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1), matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1));
            for i in 0..nb {
                let (x, y) = (&w[i * wb..(i + 1) * wb], &a[i * ab..(i + 1) * ab]);
                let qs_at = 2 + 2 * usize::from(has_min) + 4 * usize::from(five);
                let qh = if five {
                    let o = qs_at - 4;
                    u32::from_le_bytes([x[o], x[o + 1], x[o + 2], x[o + 3]])
                } else {
                    0
                };
                let bias = match ty {
                    GgmlType::Q4_0 => 8,
                    GgmlType::Q5_0 => 16,
                    _ => 0,
                };
                let yq = if has_min { &y[4..36] } else { &y[2..34] };
                let mut sumi = 0i32;
                for j in 0..16 {
                    let b = x[qs_at + j];
                    let h0 = (((qh >> j) & 1) << 4) as i32;
                    let h1 = (((qh >> (j + 16)) & 1) << 4) as i32;
                    let q0 = ((b & 0x0F) as i32 | h0) - bias;
                    let q1 = ((b >> 4) as i32 | h1) - bias;
                    sumi += q0 * yq[j] as i8 as i32 + q1 * yq[j + 16] as i8 as i32;
                }
                let (dx, dy) = (rd_f16(x, 0), rd_f16(y, 0));
                sum += dx * dy * sumi as f32;
                if has_min {
                    sum += rd_f16(x, 2) * rd_f16(y, 2);
                }
            }
        }
        GgmlType::Q8_0 | GgmlType::Q8_1 => {
            // Q8_1 as weights (no model stores them so) is `d·q` too, its sum field unused.
            let off = if ty == GgmlType::Q8_0 { 2 } else { 4 };
            for i in 0..nb {
                let (x, y) = (&w[i * wb..(i + 1) * wb], &a[i * ab..(i + 1) * ab]);
                let sumi: i32 = (0..32).map(|j| x[off + j] as i8 as i32 * y[off + j] as i8 as i32).sum();
                sum += rd_f16(x, 0) * rd_f16(y, 0) * sumi as f32;
            }
        }
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q8_K => {
            let Layout::K(kq) = ty.facts().layout else { return sum };
            for i in 0..nb {
                let (x, y) = (&w[i * wb..(i + 1) * wb], &a[i * ab..(i + 1) * ab]);
                let k = k_levels(kq, x);
                let d8 = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
                let (mut sumi, mut summ) = (0i32, 0i32);
                for g in 0..16 {
                    let dot: i32 = (0..16).map(|l| k.level[g * 16 + l] as i32 * y[4 + g * 16 + l] as i8 as i32).sum();
                    let bsum = i16::from_le_bytes([y[260 + 2 * g], y[261 + 2 * g]]) as i32;
                    sumi += k.scale[g] * dot;
                    summ += k.min[g] * bsum;
                }
                sum += k.d * d8 * sumi as f32 - k.dmin * d8 * summ as f32;
            }
        }
    }
    sum
}
