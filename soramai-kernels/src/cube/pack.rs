//! Weights repacked for the GPU kernels: blocks of 32 with an f32 scale and offset each and the
//! codes in 32-bit words (4-bit: byte `i` of a block's 16 holds weight `i` low and `i + 16` high;
//! 8-bit: byte `i` of 32 holds weight `i`), so that `w = d·q + m` exactly as the GGUF blocks give
//! it. Plain Rust, checked against the CPU dequantizer without a GPU.

use crate::error::{Error, Result};
use crate::quant::k_quants::scale_min_k4;
use crate::quant::{GgmlType, rd_f16};

/// A weight matrix in a GPU layout.
#[derive(Clone, Debug, PartialEq)]
pub enum Packed {
    /// 4-bit codes: `scales`, `mins` per block, 4 words per block.
    Q4 {
        /// Per-block scale.
        scales: Vec<f32>,
        /// Per-block offset.
        mins: Vec<f32>,
        /// Codes.
        quants: Vec<u32>,
    },
    /// 8-bit codes: `scales`, `mins` per block, 8 words per block.
    Q8 {
        /// Per-block scale.
        scales: Vec<f32>,
        /// Per-block offset.
        mins: Vec<f32>,
        /// Codes.
        quants: Vec<u32>,
    },
    /// Plain f32, row-major.
    F32(Vec<f32>),
}

impl Packed {
    /// Bytes this layout occupies on the device.
    pub fn device_bytes(&self) -> usize {
        match self {
            Packed::Q4 { scales, mins, quants } | Packed::Q8 { scales, mins, quants } => {
                4 * (scales.len() + mins.len() + quants.len())
            }
            Packed::F32(w) => 4 * w.len(),
        }
    }

    /// The matrix back in f32 (tests).
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            Packed::Q4 { scales, mins, quants } => {
                let mut out = vec![0f32; scales.len() * 32];
                for (b, y) in out.chunks_exact_mut(32).enumerate() {
                    for i in 0..16 {
                        let byte = (quants[b * 4 + i / 4] >> (8 * (i % 4))) & 0xFF;
                        y[i] = scales[b] * (byte & 15) as f32 + mins[b];
                        y[i + 16] = scales[b] * (byte >> 4) as f32 + mins[b];
                    }
                }
                out
            }
            Packed::Q8 { scales, mins, quants } => {
                let mut out = vec![0f32; scales.len() * 32];
                for (b, y) in out.chunks_exact_mut(32).enumerate() {
                    for (i, v) in y.iter_mut().enumerate() {
                        let byte = (quants[b * 8 + i / 4] >> (8 * (i % 4))) & 0xFF;
                        *v = scales[b] * byte as f32 + mins[b];
                    }
                }
                out
            }
            Packed::F32(w) => w.clone(),
        }
    }
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// Repacks `rows × cols` weights in format `ty` (`src` the GGUF blocks).
pub fn pack(ty: GgmlType, src: &[u8], rows: usize, cols: usize) -> Result<Packed> {
    let n = rows * cols;
    let expect = ty.bytes_for(n as u64).ok_or_else(|| Error::UnsupportedType(ty.to_string()))?;
    if src.len() as u64 != expect {
        return Err(Error::Tensor {
            name: "weights".into(),
            reason: format!("{} bytes, expected {expect}", src.len()),
        });
    }
    let blocks = n / 32;
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 if cols.is_multiple_of(32) => {
            let bb = ty.block_bytes();
            let (mut scales, mut mins, mut quants) =
                (Vec::with_capacity(blocks), Vec::with_capacity(blocks), Vec::with_capacity(blocks * 4));
            for b in src.chunks_exact(bb) {
                let d = rd_f16(b, 0);
                let (m, qs) = if ty == GgmlType::Q4_0 { (-8.0 * d, &b[2..18]) } else { (rd_f16(b, 2), &b[4..20]) };
                scales.push(d);
                mins.push(m);
                quants.extend(words(qs));
            }
            Ok(Packed::Q4 { scales, mins, quants })
        }
        GgmlType::Q8_0 if cols.is_multiple_of(32) => {
            let (mut scales, mut mins, mut quants) =
                (Vec::with_capacity(blocks), Vec::with_capacity(blocks), Vec::with_capacity(blocks * 8));
            for b in src.chunks_exact(34) {
                let d = rd_f16(b, 0);
                scales.push(d);
                mins.push(-128.0 * d);
                let shifted: Vec<u8> = b[2..34].iter().map(|&q| (q as i8 as i16 + 128) as u8).collect();
                quants.extend(words(&shifted));
            }
            Ok(Packed::Q8 { scales, mins, quants })
        }
        GgmlType::Q4_K if cols.is_multiple_of(256) => {
            let (mut scales, mut mins, mut quants) =
                (Vec::with_capacity(blocks), Vec::with_capacity(blocks), Vec::with_capacity(blocks * 4));
            for b in src.chunks_exact(144) {
                let (d, dmin) = (rd_f16(b, 0), rd_f16(b, 2));
                let (sc, qs) = (&b[4..16], &b[16..144]);
                for j in 0..8 {
                    let (s, m) = scale_min_k4(j, sc);
                    scales.push(d * s as f32);
                    mins.push(-dmin * m as f32);
                    let chunk = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                    let code = |i: usize| if j % 2 == 0 { chunk[i] & 15 } else { chunk[i] >> 4 };
                    let packed: Vec<u8> = (0..16).map(|i| code(i) | (code(i + 16) << 4)).collect();
                    quants.extend(words(&packed));
                }
            }
            Ok(Packed::Q4 { scales, mins, quants })
        }
        _ => {
            let mut out = vec![0f32; n];
            crate::quant::dequantize(ty, src, &mut out)?;
            Ok(Packed::F32(out))
        }
    }
}
