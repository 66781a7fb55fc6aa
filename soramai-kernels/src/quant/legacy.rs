//! The 32-element block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1.
//!
//! | type | bytes | layout |
//! | --- | --- | --- |
//! | Q4_0 | 18 | `d: f16, qs: [u8; 16]`; `x = (q - 8) * d`, low nibbles are elements 0..16 |
//! | Q4_1 | 20 | `d: f16, m: f16, qs: [u8; 16]`; `x = q * d + m` |
//! | Q5_0 | 22 | `d: f16, qh: u32, qs: [u8; 16]`; fifth bits in `qh`; `x = (q - 16) * d` |
//! | Q5_1 | 24 | `d: f16, m: f16, qh: u32, qs: [u8; 16]`; `x = q * d + m` |
//! | Q8_0 | 34 | `d: f16, qs: [i8; 32]`; `x = q * d` |
//! | Q8_1 | 36 | `d: f16, s: f16, qs: [i8; 32]`; `s = d * Σq` |

use super::{Legacy, rd_f16, wr_f16};

/// Elements per block.
pub const QK: usize = 32;

pub(super) fn dequantize(ty: Legacy, src: &[u8], out: &mut [f32]) {
    let bb = ty.ty().block_bytes();
    for (b, y) in src.chunks_exact(bb).zip(out.chunks_exact_mut(QK)) {
        match ty {
            Legacy::Q4_0 => {
                let d = rd_f16(b, 0);
                for j in 0..16 {
                    y[j] = ((b[2 + j] & 0x0F) as i32 - 8) as f32 * d;
                    y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
            Legacy::Q4_1 => {
                let (d, m) = (rd_f16(b, 0), rd_f16(b, 2));
                for j in 0..16 {
                    y[j] = (b[4 + j] & 0x0F) as f32 * d + m;
                    y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
            Legacy::Q5_0 | Legacy::Q5_1 => {
                let (d, m, off) =
                    if ty == Legacy::Q5_0 { (rd_f16(b, 0), 0.0, 2) } else { (rd_f16(b, 0), rd_f16(b, 2), 4) };
                let qh = u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]);
                let bias = if ty == Legacy::Q5_0 { 16 } else { 0 };
                for j in 0..16 {
                    let q = b[off + 4 + j];
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = (((q & 0x0F) as u32 | h0) as i32 - bias) as f32 * d + m;
                    y[j + 16] = (((q >> 4) as u32 | h1) as i32 - bias) as f32 * d + m;
                }
            }
            Legacy::Q8_0 | Legacy::Q8_1 => {
                let off = if ty == Legacy::Q8_0 { 2 } else { 4 };
                let d = rd_f16(b, 0);
                for j in 0..QK {
                    y[j] = b[off + j] as i8 as f32 * d;
                }
            }
        }
    }
}

/// The element of largest magnitude, with its sign.
fn signed_absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

pub(super) fn quantize(ty: Legacy, src: &[f32], out: &mut [u8]) {
    let bb = ty.ty().block_bytes();
    for (x, b) in src.chunks_exact(QK).zip(out.chunks_exact_mut(bb)) {
        match ty {
            Legacy::Q4_0 | Legacy::Q5_0 => {
                let (levels, bias) = if ty == Legacy::Q4_0 { (-8.0, 8.5) } else { (-16.0, 16.5) };
                let max = signed_absmax(x);
                let d = max / levels;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                wr_f16(b, 0, d);
                let top = if ty == Legacy::Q4_0 { 15 } else { 31 };
                let q = |v: f32| ((v * id + bias) as i32).clamp(0, top) as u8;
                pack_nibbles(ty, x, q, b, 2);
            }
            Legacy::Q4_1 | Legacy::Q5_1 => {
                let (lo, hi) = min_max(x);
                let top = if ty == Legacy::Q4_1 { 15 } else { 31 };
                let d = (hi - lo) / top as f32;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                wr_f16(b, 0, d);
                wr_f16(b, 2, lo);
                let q = |v: f32| (((v - lo) * id + 0.5) as i32).clamp(0, top) as u8;
                pack_nibbles(ty, x, q, b, 4);
            }
            Legacy::Q8_0 | Legacy::Q8_1 => {
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let off = if ty == Legacy::Q8_0 { 2 } else { 4 };
                let mut sum = 0i32;
                for j in 0..QK {
                    let q = (x[j] * id).round() as i32;
                    sum += q;
                    b[off + j] = q as i8 as u8;
                }
                wr_f16(b, 0, d);
                if ty == Legacy::Q8_1 {
                    wr_f16(b, 2, d * sum as f32);
                }
            }
        }
    }
}

/// Packs 4- or 5-bit codes: low nibbles of elements 0..16 and 16..32 share a byte; fifth bits go
/// to a little-endian u32 before the nibbles.
fn pack_nibbles(ty: Legacy, x: &[f32], q: impl Fn(f32) -> u8, b: &mut [u8], off: usize) {
    let five = matches!(ty, Legacy::Q5_0 | Legacy::Q5_1);
    let nib = if five { off + 4 } else { off };
    let mut qh = 0u32;
    for j in 0..16 {
        let (q0, q1) = (q(x[j]), q(x[j + 16]));
        b[nib + j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
        qh |= (((q0 & 0x10) >> 4) as u32) << j;
        qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
    }
    if five {
        b[off..off + 4].copy_from_slice(&qh.to_le_bytes());
    }
}
