//! Many-row integer products (the training step's GEMMs): weights repacked once so that a whole
//! 32-column block of 8 weight rows accumulates in 32-bit integers, one lane per output row.
//!
//! [`PackedMat`] stores every block as unsigned 8-bit codes with a per-row-block scale and offset,
//! `w = d·q + m`, which holds each 4- and 8-bit legacy format exactly (Q4_1: its nibbles, `d`, `m`;
//! Q4_0: `m = −8d`; Q8_0: `q + 128`, `m = −128d`; each 32-value sub-block of Q4_K and Q5_K:
//! `d = d·sc`, `m = −dmin·mn`) and anything else (the other k-quants, floats, a transposed matrix)
//! as asymmetric 8-bit blocks. Rows go in panels of 8; a panel's block is 8 groups of
//! 4 columns × 8 rows × 4 bytes, the operand order of `vpdpbusd`, so one instruction multiplies
//! 4 columns of 8 rows by the same 4 columns of one activation row, broadcast. A block then costs
//! 8 integer instructions per (panel, activation row) plus one conversion and two fused
//! multiply-adds, where the one-row-at-a-time dot kernels reduce and rescale every block of every
//! pair. Activations are [`QuantRows`]: symmetric 8-bit blocks with an f32 scale `a` and
//! `s = a·Σq`, so `Σ w·x = Σ_blocks d·a·Σ(q_w·q_x) + m·s`.
//!
//! Without VNNI, the AVX2 kernel forms the same integer sums with `vpmaddubsw`, whose 16-bit pair
//! sums saturate: a block's products accumulate in 16-bit lanes, exact while every code is at most
//! 16 (the 4-bit formats: 16 products of at most 16·127 per lane), and 8-bit codes are split into
//! their two nibbles, each summed so, then joined as `lo + 16·hi` in 32 bits.
//!
//! The AVX-512 VNNI, AVX2 and portable kernels compute the same sums in the same order with fused
//! multiply-adds, so they agree bit for bit (tested).

#![allow(unsafe_code)]

use rayon::prelude::*;

use super::{Isa, isa};
use crate::error::{Error, Result};
use crate::quant::{GgmlType, rd_f16};

/// Rows per panel.
pub const PANEL: usize = 8;
/// Columns per block.
pub const BLOCK: usize = 32;
/// Bytes of one panel's block.
const PB: usize = PANEL * BLOCK;
/// The largest code the AVX2 kernel sums without splitting: 16 products of 16·127 fit in 16 bits.
const NARROW_MAX: u8 = 16;

/// The kernel a product runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    Portable,
    Avx2,
    Vnni,
}

impl Kernel {
    /// The kernel for a requested instruction set, never beyond what this CPU has.
    fn for_isa(requested: Isa) -> Self {
        match (requested, isa()) {
            (Isa::Avx512Vnni, Isa::Avx512Vnni) => Kernel::Vnni,
            (Isa::Avx2 | Isa::Avx512Vnni, Isa::Avx2 | Isa::Avx512Vnni) => Kernel::Avx2,
            _ => Kernel::Portable,
        }
    }
}

/// A `rows × cols` weight matrix repacked for [`PackedMat::matmul`]. `rows` is a multiple of 8,
/// `cols` of 32.
#[derive(Clone)]
pub struct PackedMat {
    rows: usize,
    cols: usize,
    /// `[panel][block][group of 4 columns][row][4]`.
    q: Vec<u8>,
    /// `[panel][block][row]`.
    d: Vec<f32>,
    /// `[panel][block][row]`.
    m: Vec<f32>,
    /// Every code is at most 16, so the AVX2 kernel sums whole blocks in 16 bits without splitting.
    narrow: bool,
}

impl std::fmt::Debug for PackedMat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMat").field("rows", &self.rows).field("cols", &self.cols).finish_non_exhaustive()
    }
}

/// Whether a `rows × cols` matrix can be packed.
pub fn packable(rows: usize, cols: usize) -> bool {
    rows > 0 && cols > 0 && rows.is_multiple_of(PANEL) && cols.is_multiple_of(BLOCK)
}

/// One row's codes, scales and offsets (`cols`, `cols/32`, `cols/32` values).
type RowCodes<'a> = (&'a mut [u8], &'a mut [f32], &'a mut [f32]);

/// Asymmetric 8-bit codes of `x`, a block at a time.
fn encode_f32(x: &[f32], (q, d, m): RowCodes<'_>) {
    for (b, xs) in x.chunks_exact(BLOCK).enumerate() {
        let lo = xs.iter().fold(f32::INFINITY, |a, &v| a.min(v));
        let hi = xs.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
        let scale = (hi - lo) / 255.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for (o, &v) in q[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(xs) {
            // Round to nearest by adding and subtracting 1.5·2²³ (exact below 2²²).
            *o = (((v - lo) * inv + 12_582_912.0) - 12_582_912.0).clamp(0.0, 255.0) as u8;
        }
        d[b] = scale;
        m[b] = lo;
    }
}

/// The codes of one row of blocks of type `ty`: exact for the legacy 4- and 8-bit formats.
fn encode_blocks(ty: GgmlType, src: &[u8], codes: RowCodes<'_>, scratch: &mut [f32]) -> Result<()> {
    let (q, d, m) = codes;
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (bb, off) = if ty == GgmlType::Q4_0 { (18, 2) } else { (20, 4) };
            for (b, blk) in src.chunks_exact(bb).enumerate() {
                let scale = rd_f16(blk, 0);
                d[b] = scale;
                m[b] = if ty == GgmlType::Q4_0 { -8.0 * scale } else { rd_f16(blk, 2) };
                let out = &mut q[b * BLOCK..(b + 1) * BLOCK];
                for j in 0..16 {
                    out[j] = blk[off + j] & 0x0F;
                    out[j + 16] = blk[off + j] >> 4;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (b, blk) in src.chunks_exact(34).enumerate() {
                let scale = rd_f16(blk, 0);
                d[b] = scale;
                m[b] = -128.0 * scale;
                for (o, &v) in q[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(&blk[2..]) {
                    *o = (v as i8 as i16 + 128) as u8;
                }
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // Each 32-value sub-block is `d·sc·q − dmin·mn` with q < 16 (Q4_K) or < 32 (Q5_K):
            // exactly a packed block with scale `d·sc`, offset `−dmin·mn` and the codes q.
            let five = ty == GgmlType::Q5_K;
            let bb = if five { 176 } else { 144 };
            for (k, blk) in src.chunks_exact(bb).enumerate() {
                let (dk, dmin) = (rd_f16(blk, 0), rd_f16(blk, 2));
                let qs = if five { &blk[48..176] } else { &blk[16..144] };
                let (sc, mn) = crate::quant::k_quants::scales_mins_k4(&blk[4..16]);
                for j in 0..8 {
                    let b = k * 8 + j;
                    d[b] = dk * f32::from(sc[j]);
                    m[b] = -dmin * f32::from(mn[j]);
                    let (chunk, high) = (j / 2, j % 2 == 1);
                    for l in 0..BLOCK {
                        let byte = qs[chunk * 32 + l];
                        let mut c = if high { byte >> 4 } else { byte & 0x0F };
                        if five && blk[16 + l] & (1 << j) != 0 {
                            c += 16;
                        }
                        q[b * BLOCK + l] = c;
                    }
                }
            }
        }
        _ => {
            crate::quant::dequantize(ty, src, scratch)?;
            encode_f32(scratch, (q, d, m));
        }
    }
    Ok(())
}

impl PackedMat {
    /// Packs `rows` rows produced by `row(r, codes, scratch)`.
    fn build<F>(rows: usize, cols: usize, row: F) -> Result<Self>
    where
        F: Fn(usize, RowCodes<'_>, &mut [f32]) -> Result<()> + Sync,
    {
        if !packable(rows, cols) {
            return Err(Error::UnsupportedType(format!(
                "{rows}x{cols} is not packable (8-row panels, 32-column blocks)"
            )));
        }
        let nb = cols / BLOCK;
        let mut q = vec![0u8; rows * cols];
        let mut d = vec![0f32; rows * nb];
        let mut m = vec![0f32; rows * nb];
        q.par_chunks_mut(PANEL * cols)
            .zip(d.par_chunks_mut(PANEL * nb))
            .zip(m.par_chunks_mut(PANEL * nb))
            .enumerate()
            .try_for_each(|(p, ((pq, pd), pm))| -> Result<()> {
                let mut codes = vec![0u8; cols];
                let (mut rd, mut rm) = (vec![0f32; nb], vec![0f32; nb]);
                let mut scratch = vec![0f32; cols];
                for r in 0..PANEL {
                    row(p * PANEL + r, (&mut codes, &mut rd, &mut rm), &mut scratch)?;
                    for b in 0..nb {
                        pd[b * PANEL + r] = rd[b];
                        pm[b * PANEL + r] = rm[b];
                        for g in 0..BLOCK / 4 {
                            let at = b * PB + g * PANEL * 4 + r * 4;
                            pq[at..at + 4].copy_from_slice(&codes[b * BLOCK + g * 4..b * BLOCK + g * 4 + 4]);
                        }
                    }
                }
                Ok(())
            })?;
        let narrow = q.par_iter().all(|&c| c <= NARROW_MAX);
        Ok(PackedMat { rows, cols, q, d, m, narrow })
    }

    /// Packs a `rows × cols` matrix of `ty` blocks (row-major, as GGUF stores them).
    pub fn from_blocks(ty: GgmlType, w: &[u8], rows: usize, cols: usize) -> Result<Self> {
        let row_bytes = ty
            .bytes_for(cols as u64)
            .filter(|_| !matches!(ty, GgmlType::Q8_1 | GgmlType::Q8_K))
            .ok_or_else(|| Error::UnsupportedType(format!("{ty}: a row of {cols} is not a weight row")))?
            as usize;
        if w.len() != row_bytes * rows {
            return Err(Error::UnsupportedType(format!("{ty}: {} bytes do not hold {rows}x{cols}", w.len())));
        }
        Self::build(rows, cols, |r, codes, scratch| {
            encode_blocks(ty, &w[r * row_bytes..(r + 1) * row_bytes], codes, scratch)
        })
    }

    /// Packs `Wᵀ` of a `rows × cols` f32 matrix `w` (so the result is `cols × rows`): the input
    /// gradient `dy·W` of a layer `y = x·Wᵀ` becomes `dy·(Wᵀ)ᵀ`, a product of this same shape.
    pub fn transposed_from_f32(w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if w.len() != rows * cols {
            return Err(Error::UnsupportedType(format!("{} values do not hold {rows}x{cols}", w.len())));
        }
        Self::build(cols, rows, |c, codes, scratch| {
            for (r, v) in scratch.iter_mut().enumerate() {
                *v = w[r * cols + c];
            }
            encode_f32(scratch, codes);
            Ok(())
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.q.len() + 4 * (self.d.len() + self.m.len())
    }

    /// `out (t × rows) = x (t × cols) · Wᵀ`, or with `accumulate` `out += …`.
    pub fn matmul(&self, x: &QuantRows, out: &mut [f32], accumulate: bool) -> Result<()> {
        self.matmul_on(isa(), x, out, accumulate)
    }

    /// [`PackedMat::matmul`] with a given kernel (none beyond what this CPU has: a request for VNNI
    /// runs AVX2 on a CPU without it, and the portable kernel without AVX2).
    pub fn matmul_on(&self, isa: Isa, x: &QuantRows, out: &mut [f32], accumulate: bool) -> Result<()> {
        let t = x.rows;
        if x.cols != self.cols || out.len() != t * self.rows {
            return Err(Error::UnsupportedType(format!(
                "packed matmul: {}x{} weights, {}x{} activations, {} outputs",
                self.rows,
                self.cols,
                t,
                x.cols,
                out.len()
            )));
        }
        if t == 0 {
            return Ok(());
        }
        let kernel = Kernel::for_isa(isa);
        let nb = self.cols / BLOCK;
        // Tasks of two panels (16 rows) over every activation row; each writes its own columns.
        const TP: usize = 2;
        let n_tasks = self.rows.div_ceil(TP * PANEL);
        let (rows, dst) = (self.rows, OutPtr(out.as_mut_ptr()));
        (0..n_tasks).into_par_iter().for_each_init(Vec::new, |tile, ci| {
            let p0 = ci * TP;
            let np = (rows / PANEL - p0).min(TP);
            let w = Panels {
                q: &self.q[p0 * nb * PB..(p0 + np) * nb * PB],
                d: &self.d[p0 * nb * PANEL..(p0 + np) * nb * PANEL],
                m: &self.m[p0 * nb * PANEL..(p0 + np) * nb * PANEL],
                nb,
                narrow: self.narrow,
            };
            let width = np * PANEL;
            tile.clear();
            tile.resize(t * width, 0f32);
            panel_rows(kernel, &w, np, x, tile);
            let col = p0 * PANEL;
            for (tok, src) in tile.chunks_exact(width).enumerate() {
                // SAFETY: `out` holds t × rows values (checked above) and outlives this parallel
                // loop; task ci alone writes columns col..col + width of each row, so the
                // slices of different tasks never overlap.
                let o = unsafe { std::slice::from_raw_parts_mut(dst.at(tok * rows + col), width) };
                if accumulate {
                    o.iter_mut().zip(src).for_each(|(a, v)| *a += v);
                } else {
                    o.copy_from_slice(src);
                }
            }
        });
        Ok(())
    }
}

/// The output of a parallel product, written by tasks that own disjoint columns.
struct OutPtr(*mut f32);

// SAFETY: the pointer is only used to build non-overlapping slices (one column range per task)
// of an output that outlives the parallel loop.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(&self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Rows of activations quantized for [`PackedMat::matmul`]: 8-bit codes, and per block of 32 the
/// scale `a = max|x|/127` and `s = a·Σq`.
#[derive(Clone, Debug, Default)]
pub struct QuantRows {
    rows: usize,
    cols: usize,
    q: Vec<i8>,
    a: Vec<f32>,
    s: Vec<f32>,
}

impl QuantRows {
    /// Quantizes `x` (`rows × cols`, `cols` a multiple of 32).
    pub fn new(x: &[f32], cols: usize) -> Result<Self> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || !x.len().is_multiple_of(cols) {
            return Err(Error::UnsupportedType(format!("{} activations in rows of {cols}", x.len())));
        }
        let rows = x.len() / cols;
        let nb = cols / BLOCK;
        let mut q = vec![0i8; x.len()];
        let mut a = vec![0f32; rows * nb];
        let mut s = vec![0f32; rows * nb];
        type Row<'a> = ((&'a mut [i8], &'a mut [f32]), (&'a mut [f32], &'a [f32]));
        let quant = |((qr, ar), (sr, xr)): Row<'_>| {
            for (b, xs) in xr.chunks_exact(BLOCK).enumerate() {
                let (scale, sum) = quantize_block(xs, &mut qr[b * BLOCK..(b + 1) * BLOCK]);
                ar[b] = scale;
                sr[b] = scale * sum as f32;
            }
        };
        let it = q.par_chunks_mut(cols).zip(a.par_chunks_mut(nb)).zip(s.par_chunks_mut(nb).zip(x.par_chunks(cols)));
        // Small inputs quantize on the calling thread: a parallel region costs more than it saves.
        if rows * cols >= 1 << 18 {
            it.for_each(quant);
        } else {
            q.chunks_mut(cols).zip(a.chunks_mut(nb)).zip(s.chunks_mut(nb).zip(x.chunks(cols))).for_each(quant);
        }
        Ok(QuantRows { rows, cols, q, a, s })
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// One block of 32 activations to symmetric 8-bit codes: returns the scale and the codes' sum.
/// Written so the compiler vectorizes it (eight running maxima; rounding to nearest even by adding
/// and subtracting 1.5·2²³, exact for the |values| ≤ 127 it sees).
#[inline]
fn quantize_block(xs: &[f32], q: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if super::has_avx2() && xs.len() == BLOCK && q.len() == BLOCK {
        // SAFETY: AVX2/FMA were detected; both slices hold 32 values (checked).
        return unsafe { super::avx2::quantize_block_i8(xs, q) };
    }
    quantize_block_portable(xs, q)
}

/// The portable twin of the AVX2 block quantizer.
fn quantize_block_portable(xs: &[f32], q: &mut [i8]) -> (f32, i32) {
    const ROUND: f32 = 12_582_912.0;
    let mut m = [0f32; 8];
    for c in xs.chunks_exact(8) {
        for i in 0..8 {
            m[i] = m[i].max(c[i].abs());
        }
    }
    let amax = m.iter().fold(0f32, |a, &b| a.max(b));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut codes = [0i32; BLOCK];
    for (o, &v) in codes.iter_mut().zip(xs) {
        *o = ((v * inv + ROUND) - ROUND) as i32;
    }
    for (o, &c) in q.iter_mut().zip(&codes) {
        *o = c as i8;
    }
    (scale, codes.iter().sum())
}

/// A run of consecutive panels.
struct Panels<'a> {
    q: &'a [u8],
    d: &'a [f32],
    m: &'a [f32],
    nb: usize,
    narrow: bool,
}

/// Activation rows per kernel call.
const MR: usize = 6;
/// Activation rows per AVX2 kernel call, with narrow and with split codes.
const MR_AVX2: usize = 4;
const MR_AVX2_WIDE: usize = 2;

/// Every activation row against `np` (1 or 2) panels; `out` is `[t][np·8]`.
fn panel_rows(kernel: Kernel, w: &Panels<'_>, np: usize, x: &QuantRows, out: &mut [f32]) {
    let (cols, nb) = (x.cols, w.nb);
    let width = np * PANEL;
    // AVX2 has 16 vector registers: fewer rows per call, fewer still with split (wide) codes.
    let step = match kernel {
        Kernel::Avx2 if w.narrow => MR_AVX2,
        Kernel::Avx2 => MR_AVX2_WIDE,
        _ => MR,
    };
    let mut tok = 0;
    while tok < x.rows {
        let mr = (x.rows - tok).min(step);
        let rows = Rows {
            q: &x.q[tok * cols..(tok + mr) * cols],
            a: &x.a[tok * nb..(tok + mr) * nb],
            s: &x.s[tok * nb..(tok + mr) * nb],
        };
        let o = &mut out[tok * width..(tok + mr) * width];
        tok += mr;
        #[cfg(target_arch = "x86_64")]
        {
            macro_rules! go {
                ($m:ident, $r:literal, $p:literal $(, $wide:literal)?) => {
                    // SAFETY: the kernel's instruction set was detected (`Kernel::for_isa`);
                    // `Panels` holds `$p` panels of `nb` blocks, `rows` holds `$r` rows of `nb`
                    // blocks and `o` holds `$r × $p·8` values (built above).
                    unsafe { $m::tile::<$r, $p $(, $wide)?>(w, &rows, o) }
                };
            }
            match (kernel, w.narrow, mr, np) {
                (Kernel::Vnni, _, 6, 2) => go!(vnni, 6, 2),
                (Kernel::Vnni, _, 5, 2) => go!(vnni, 5, 2),
                (Kernel::Vnni, _, 4, 2) => go!(vnni, 4, 2),
                (Kernel::Vnni, _, 3, 2) => go!(vnni, 3, 2),
                (Kernel::Vnni, _, 2, 2) => go!(vnni, 2, 2),
                (Kernel::Vnni, _, 1, 2) => go!(vnni, 1, 2),
                (Kernel::Vnni, _, 6, _) => go!(vnni, 6, 1),
                (Kernel::Vnni, _, 5, _) => go!(vnni, 5, 1),
                (Kernel::Vnni, _, 4, _) => go!(vnni, 4, 1),
                (Kernel::Vnni, _, 3, _) => go!(vnni, 3, 1),
                (Kernel::Vnni, _, 2, _) => go!(vnni, 2, 1),
                (Kernel::Vnni, _, _, _) => go!(vnni, 1, 1),
                (Kernel::Avx2, true, 4, 2) => go!(avx2, 4, 2, false),
                (Kernel::Avx2, true, 3, 2) => go!(avx2, 3, 2, false),
                (Kernel::Avx2, true, 2, 2) => go!(avx2, 2, 2, false),
                (Kernel::Avx2, true, 1, 2) => go!(avx2, 1, 2, false),
                (Kernel::Avx2, true, 4, _) => go!(avx2, 4, 1, false),
                (Kernel::Avx2, true, 3, _) => go!(avx2, 3, 1, false),
                (Kernel::Avx2, true, 2, _) => go!(avx2, 2, 1, false),
                (Kernel::Avx2, true, _, _) => go!(avx2, 1, 1, false),
                (Kernel::Avx2, false, 2, 2) => go!(avx2, 2, 2, true),
                (Kernel::Avx2, false, 1, 2) => go!(avx2, 1, 2, true),
                (Kernel::Avx2, false, 2, _) => go!(avx2, 2, 1, true),
                (Kernel::Avx2, false, _, _) => go!(avx2, 1, 1, true),
                (Kernel::Portable, ..) => tile_portable(w, np, &rows, mr, o),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        tile_portable(w, np, &rows, mr, o);
    }
}

/// Up to [`MR`] activation rows.
struct Rows<'a> {
    q: &'a [i8],
    a: &'a [f32],
    s: &'a [f32],
}

/// The portable kernel: the SIMD kernels' arithmetic in the same order.
fn tile_portable(w: &Panels<'_>, np: usize, x: &Rows<'_>, mr: usize, out: &mut [f32]) {
    let nb = w.nb;
    let cols = nb * BLOCK;
    let width = np * PANEL;
    for j in 0..mr {
        for p in 0..np {
            let mut acc = [0f32; PANEL];
            for b in 0..nb {
                let blk = &w.q[(p * nb + b) * PB..(p * nb + b + 1) * PB];
                let xq = &x.q[j * cols + b * BLOCK..j * cols + (b + 1) * BLOCK];
                let mut sums = [0i32; PANEL];
                for g in 0..BLOCK / 4 {
                    for (r, sum) in sums.iter_mut().enumerate() {
                        for i in 0..4 {
                            *sum += i32::from(blk[g * PANEL * 4 + r * 4 + i]) * i32::from(xq[g * 4 + i]);
                        }
                    }
                }
                let (xa, xs) = (x.a[j * nb + b], x.s[j * nb + b]);
                for r in 0..PANEL {
                    let at = (p * nb + b) * PANEL + r;
                    acc[r] = (sums[r] as f32).mul_add(w.d[at] * xa, acc[r]);
                    acc[r] = w.m[at].mul_add(xs, acc[r]);
                }
            }
            out[j * width + p * PANEL..j * width + (p + 1) * PANEL].copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK, PANEL, PB, Panels, Rows};

    /// `R` activation rows × `P` panels.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI (and AVX2, FMA); `w` holds `P` panels of `w.nb` blocks,
    /// `x` holds `R` rows of `w.nb` blocks, and `out` holds `R × P·8` values.
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn tile<const R: usize, const P: usize>(w: &Panels<'_>, x: &Rows<'_>, out: &mut [f32]) {
        let nb = w.nb;
        let cols = nb * BLOCK;
        let (wq, wd, wm) = (w.q.as_ptr(), w.d.as_ptr(), w.m.as_ptr());
        let (xq, xa, xs) = (x.q.as_ptr(), x.a.as_ptr(), x.s.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); P]; R];
        for b in 0..nb {
            let mut sums = [[_mm256_setzero_si256(); P]; R];
            for g in 0..BLOCK / 4 {
                // SAFETY: panel p's block b group g is 32 bytes inside `w.q` (P panels of nb blocks);
                // row j's 4 codes at b·32 + 4g are inside `x.q` (R rows of `cols`).
                unsafe {
                    let wv: [__m256i; P] =
                        std::array::from_fn(|p| _mm256_loadu_si256(wq.add((p * nb + b) * PB + g * 32).cast()));
                    for j in 0..R {
                        let xv = _mm256_set1_epi32(xq.add(j * cols + b * BLOCK + g * 4).cast::<i32>().read_unaligned());
                        for p in 0..P {
                            sums[j][p] = _mm256_dpbusd_epi32(sums[j][p], wv[p], xv);
                        }
                    }
                }
            }
            for p in 0..P {
                // SAFETY: block b of panel p has 8 scales and 8 offsets inside `w.d`/`w.m`; row j's
                // block b scale and sum are inside `x.a`/`x.s`.
                unsafe {
                    let d = _mm256_loadu_ps(wd.add((p * nb + b) * PANEL));
                    let m = _mm256_loadu_ps(wm.add((p * nb + b) * PANEL));
                    for j in 0..R {
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(*xa.add(j * nb + b)));
                        acc[j][p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[j][p]), scale, acc[j][p]);
                        acc[j][p] = _mm256_fmadd_ps(m, _mm256_set1_ps(*xs.add(j * nb + b)), acc[j][p]);
                    }
                }
            }
        }
        for j in 0..R {
            for p in 0..P {
                // SAFETY: out holds R rows of P·8 values.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j * P * PANEL + p * PANEL), acc[j][p]) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK, PANEL, PB, Panels, Rows};

    /// `R` activation rows × `P` panels; `WIDE` splits 8-bit codes into nibbles (without it every
    /// code is at most [`super::NARROW_MAX`]).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `w` holds `P` panels of `w.nb` blocks, `x` holds `R` rows of
    /// `w.nb` blocks, and `out` holds `R × P·8` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const R: usize, const P: usize, const WIDE: bool>(
        w: &Panels<'_>,
        x: &Rows<'_>,
        out: &mut [f32],
    ) {
        let nb = w.nb;
        let cols = nb * BLOCK;
        let (wq, wd, wm) = (w.q.as_ptr(), w.d.as_ptr(), w.m.as_ptr());
        let (xq, xa, xs) = (x.q.as_ptr(), x.a.as_ptr(), x.s.as_ptr());
        let (ones, sixteens, nibble) = (_mm256_set1_epi16(1), _mm256_set1_epi16(16), _mm256_set1_epi8(0x0f));
        let mut acc = [[_mm256_setzero_ps(); P]; R];
        for b in 0..nb {
            // 16-bit sums of a block: every code (narrow), or the low and high nibbles (wide).
            let mut lo = [[_mm256_setzero_si256(); P]; R];
            let mut hi = [[_mm256_setzero_si256(); P]; R];
            for g in 0..BLOCK / 4 {
                // SAFETY: panel p's block b group g is 32 bytes inside `w.q` (P panels of nb blocks);
                // row j's 4 codes at b·32 + 4g are inside `x.q` (R rows of `cols`).
                unsafe {
                    let wv: [__m256i; P] =
                        std::array::from_fn(|p| _mm256_loadu_si256(wq.add((p * nb + b) * PB + g * 32).cast()));
                    let wl: [__m256i; P] =
                        std::array::from_fn(|p| if WIDE { _mm256_and_si256(wv[p], nibble) } else { wv[p] });
                    let wh: [__m256i; P] = std::array::from_fn(|p| {
                        if WIDE { _mm256_and_si256(_mm256_srli_epi16(wv[p], 4), nibble) } else { wv[p] }
                    });
                    for j in 0..R {
                        let xv = _mm256_set1_epi32(xq.add(j * cols + b * BLOCK + g * 4).cast::<i32>().read_unaligned());
                        for p in 0..P {
                            lo[j][p] = _mm256_add_epi16(lo[j][p], _mm256_maddubs_epi16(wl[p], xv));
                            if WIDE {
                                hi[j][p] = _mm256_add_epi16(hi[j][p], _mm256_maddubs_epi16(wh[p], xv));
                            }
                        }
                    }
                }
            }
            for p in 0..P {
                // SAFETY: block b of panel p has 8 scales and 8 offsets inside `w.d`/`w.m`; row j's
                // block b scale and sum are inside `x.a`/`x.s`.
                unsafe {
                    let d = _mm256_loadu_ps(wd.add((p * nb + b) * PANEL));
                    let m = _mm256_loadu_ps(wm.add((p * nb + b) * PANEL));
                    for j in 0..R {
                        let mut sums = _mm256_madd_epi16(lo[j][p], ones);
                        if WIDE {
                            sums = _mm256_add_epi32(sums, _mm256_madd_epi16(hi[j][p], sixteens));
                        }
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(*xa.add(j * nb + b)));
                        acc[j][p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc[j][p]);
                        acc[j][p] = _mm256_fmadd_ps(m, _mm256_set1_ps(*xs.add(j * nb + b)), acc[j][p]);
                    }
                }
            }
        }
        for j in 0..R {
            for p in 0..P {
                // SAFETY: out holds R rows of P·8 values.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j * P * PANEL + p * PANEL), acc[j][p]) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `x·Wᵀ` in f64 from dequantized weights and the f32 activations.
    fn reference(w: &[f32], rows: usize, x: &[f32], cols: usize) -> Vec<f64> {
        let t = x.len() / cols;
        let mut out = vec![0f64; t * rows];
        for tok in 0..t {
            for r in 0..rows {
                out[tok * rows + r] =
                    (0..cols).map(|c| f64::from(w[r * cols + c]) * f64::from(x[tok * cols + c])).sum();
            }
        }
        out
    }

    /// Element (r, c) of a packed matrix, `d·q + m`, from its panel layout.
    fn packed_value(p: &PackedMat, r: usize, c: usize) -> f32 {
        let nb = p.cols / BLOCK;
        let (panel, pr, b, col) = (r / PANEL, r % PANEL, c / BLOCK, c % BLOCK);
        let at = (panel * nb + b) * PB + (col / 4) * PANEL * 4 + pr * 4 + col % 4;
        let s = (panel * nb + b) * PANEL + pr;
        p.d[s] * f32::from(p.q[at]) + p.m[s]
    }

    #[test]
    fn packs_q4_k_and_q5_k_exactly() {
        let mut seed = 11;
        for ty in [GgmlType::Q4_K, GgmlType::Q5_K] {
            let (rows, cols) = (16, 512);
            let wf: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
            let blocks = quantize(ty, &wf).expect("quantize");
            let mut w = vec![0f32; rows * cols];
            crate::quant::dequantize(ty, &blocks, &mut w).expect("dequantize");
            let p = PackedMat::from_blocks(ty, &blocks, rows, cols).expect("pack");
            for r in 0..rows {
                for c in 0..cols {
                    let (got, want) = (packed_value(&p, r, c), w[r * cols + c]);
                    assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-3), "{ty} ({r}, {c}): {got} vs {want}");
                }
            }
            assert_eq!(p.narrow, ty == GgmlType::Q4_K, "{ty}: codes up to 15 are narrow, up to 31 are not");
        }
    }

    #[test]
    fn packs_legacy_blocks_exactly_and_multiplies_within_activation_rounding() {
        let mut seed = 7;
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16, GgmlType::Q4_K, GgmlType::Q5_K] {
            let (rows, cols) = (24, 256);
            let wf: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
            let blocks = quantize(ty, &wf).expect("quantize");
            let mut w = vec![0f32; rows * cols];
            crate::quant::dequantize(ty, &blocks, &mut w).expect("dequantize");
            let p = PackedMat::from_blocks(ty, &blocks, rows, cols).expect("pack");
            for t in [1, 3, 4, 7, 9] {
                let x: Vec<f32> = (0..t * cols).map(|_| lcg(&mut seed)).collect();
                let want = reference(&w, rows, &x, cols);
                let qx = QuantRows::new(&x, cols).expect("quantize rows");
                let mut got = vec![f32::NAN; t * rows];
                p.matmul(&qx, &mut got, false).expect("matmul");
                for isa in [Isa::Scalar, Isa::Avx2] {
                    let mut other = vec![f32::NAN; t * rows];
                    p.matmul_on(isa, &qx, &mut other, false).expect("matmul");
                    assert_eq!(got, other, "{ty} t={t}: the {isa:?} kernel differs");
                }
                for (g, w) in got.iter().zip(&want) {
                    // 8-bit activations: ~0.4% of each block's largest value per element.
                    assert!((f64::from(*g) - w).abs() < 0.15, "{ty} t={t}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn extreme_codes_sum_exactly_in_every_kernel() {
        // The largest products the 16-bit AVX2 sums meet: codes 0 and 255 (and 0 and 15) against
        // activations ±127, every sign pattern, so a saturating or overflowing lane would show.
        let (rows, cols) = (32, 128);
        let pattern = |i: usize, salt: usize| if (i * 7 + salt).is_multiple_of(3) { -1.0f32 } else { 1.0 };
        let w: Vec<f32> =
            (0..rows * cols).map(|i| pattern(i, 1) * if i.is_multiple_of(5) { 0.0 } else { 1.0 }).collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::F16] {
            let blocks = quantize(ty, &w).expect("quantize");
            let p = if ty == GgmlType::F16 {
                PackedMat::transposed_from_f32(&w, rows, cols).expect("pack")
            } else {
                PackedMat::from_blocks(ty, &blocks, rows, cols).expect("pack")
            };
            let (pr, pc) = (p.rows(), p.cols());
            for salt in 0..3 {
                let x: Vec<f32> =
                    (0..5 * pc).map(|i| pattern(i, salt) * if i.is_multiple_of(11) { 0.5 } else { 1.0 }).collect();
                let qx = QuantRows::new(&x, pc).expect("rows");
                let outs: Vec<Vec<f32>> = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
                    .into_iter()
                    .map(|isa| {
                        let mut o = vec![f32::NAN; 5 * pr];
                        p.matmul_on(isa, &qx, &mut o, false).expect("matmul");
                        o
                    })
                    .collect();
                assert!(outs[1] == outs[0] && outs[2] == outs[0], "{ty} salt {salt}: kernels differ");
            }
        }
    }

    #[test]
    fn block_quantizers_agree() {
        let mut seed = 11;
        for scale in [0.0f32, 1e-3, 1.0, 300.0] {
            let xs: Vec<f32> = (0..BLOCK).map(|i| if i == 5 { 0.5 * scale } else { lcg(&mut seed) * scale }).collect();
            let (mut a, mut b) = ([0i8; BLOCK], [0i8; BLOCK]);
            assert_eq!(quantize_block(&xs, &mut a), quantize_block_portable(&xs, &mut b));
            assert_eq!(a, b);
        }
    }

    #[test]
    fn transposed_packing_gives_the_input_gradient() {
        let mut seed = 3;
        let (rows, cols) = (64, 40);
        let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
        let p = PackedMat::transposed_from_f32(&w, rows, cols).expect("pack");
        assert_eq!((p.rows(), p.cols()), (cols, rows));
        let dy: Vec<f32> = (0..5 * rows).map(|_| lcg(&mut seed)).collect();
        let mut dx = vec![1f32; 5 * cols];
        p.matmul(&QuantRows::new(&dy, rows).expect("rows"), &mut dx, true).expect("matmul");
        for t in 0..5 {
            for c in 0..cols {
                let want: f64 =
                    1.0 + (0..rows).map(|r| f64::from(dy[t * rows + r]) * f64::from(w[r * cols + c])).sum::<f64>();
                assert!((f64::from(dx[t * cols + c]) - want).abs() < 0.1, "{t},{c}: {} vs {want}", dx[t * cols + c]);
            }
        }
    }

    #[test]
    fn refuses_shapes_it_cannot_pack_or_multiply() {
        assert!(PackedMat::transposed_from_f32(&[0.0; 12 * 32], 12, 32).is_err());
        assert!(PackedMat::from_blocks(GgmlType::Q8_0, &[0u8; 10], 8, 32).is_err());
        assert!(QuantRows::new(&[0.0; 48], 48).is_err());
        let p = PackedMat::transposed_from_f32(&[0.5; 32 * 8], 32, 8).expect("pack");
        let x = QuantRows::new(&[1.0; 64], 32).expect("rows");
        assert!(p.matmul(&x, &mut [0.0; 3], false).is_err());
        let mut out = [0.0; 16];
        p.matmul(&x, &mut out, false).expect("matmul");
        assert!(out.iter().all(|&v| (v - 16.0).abs() < 0.2), "{out:?}");
    }
}
