//! Weight matrices borrowed from the GGUF map, and the products the forward pass needs.

use std::sync::Arc;

use rayon::prelude::*;

use crate::cpu;
use crate::error::{Error, Result};
use crate::gguf::{Gguf, Storage};
use crate::quant::GgmlType;

/// How activations meet weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Production path: activations quantized to 8-bit blocks, integer dot products on the blocks.
    #[default]
    Fast,
    /// Reference path: f32 activations against exactly dequantized weights.
    Exact,
}

impl std::str::FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "fast" => Ok(Precision::Fast),
            "exact" => Ok(Precision::Exact),
            other => Err(Error::Request(format!("precision {other:?} is not fast or exact"))),
        }
    }
}

/// A `rows × cols` weight matrix in a block format, borrowed zero-copy from a GGUF file.
#[derive(Clone, Debug)]
pub struct QMat {
    /// Tensor name.
    pub name: String,
    /// Block format.
    pub ty: GgmlType,
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    storage: Arc<Storage>,
    offset: usize,
    len: usize,
}

impl QMat {
    /// The named 2-D tensor, checked to be `rows × cols` (GGML dims `[cols, rows]`).
    pub fn load(g: &Gguf, name: &str, rows: usize, cols: usize) -> Result<Self> {
        let t = Self::check(g, name, rows, cols)?;
        Ok(QMat { name: name.into(), ty: t.ty, rows, cols, storage: g.storage().clone(), offset: t.offset, len: t.len })
    }

    /// Checks the named tensor's shape and format, as [`QMat::load`] does, without touching its data.
    pub fn check<'g>(g: &'g Gguf, name: &str, rows: usize, cols: usize) -> Result<&'g crate::gguf::TensorInfo> {
        let t = g.tensor(name).ok_or_else(|| Error::Tensor { name: name.into(), reason: "missing".into() })?;
        let dims_ok = t.dims.len() == 2 && t.dims[0] == cols as u64 && t.dims[1] == rows as u64
            || t.dims.len() == 1 && rows == 1 && t.dims[0] == cols as u64;
        if !dims_ok {
            return Err(Error::Tensor {
                name: name.into(),
                reason: format!("shape {:?}, expected [{cols}, {rows}]", t.dims),
            });
        }
        if t.ty == GgmlType::Q8_1 || t.ty == GgmlType::Q8_K {
            return Err(Error::Tensor { name: name.into(), reason: format!("{} is not a weight format", t.ty) });
        }
        Ok(t)
    }

    /// The raw blocks.
    pub fn bytes(&self) -> &[u8] {
        &self.storage[self.offset..self.offset + self.len]
    }

    fn row_bytes(&self) -> usize {
        self.len / self.rows.max(1)
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        if r >= self.rows {
            return Err(Error::Request(format!("row {r} of {} ({} rows)", self.name, self.rows)));
        }
        let rb = self.row_bytes();
        crate::quant::dequantize(self.ty, &self.bytes()[r * rb..(r + 1) * rb], out)
    }

    /// The whole matrix dequantized (for references and training).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.rows * self.cols];
        crate::quant::dequantize(self.ty, self.bytes(), &mut out)?;
        Ok(out)
    }

    /// `out (m × rows) = x (m × cols) · Wᵀ`.
    pub fn matmul(&self, x: &[f32], out: &mut [f32], precision: Precision) -> Result<()> {
        match precision {
            Precision::Fast => cpu::matmul(self.ty, self.bytes(), self.rows, self.cols, x, out),
            Precision::Exact => self.matmul_exact(x, out),
        }
    }

    /// Several matrices over the same input (`m × cols`), `outs[i]` for `mats[i]`: one parallel
    /// region for a single row on the fast path.
    pub fn matmul_group(mats: &[&QMat], x: &[f32], outs: &mut [&mut [f32]], precision: Precision) -> Result<()> {
        let cols = mats.first().map_or(0, |m| m.cols);
        if precision == Precision::Exact || x.len() != cols || mats.iter().any(|m| m.cols != cols) {
            for (m, o) in mats.iter().zip(outs.iter_mut()) {
                m.matmul(x, o, precision)?;
            }
            return Ok(());
        }
        let mut items: Vec<cpu::GroupItem<'_>> = mats
            .iter()
            .zip(outs.iter_mut())
            .map(|(m, o)| cpu::GroupItem { ty: m.ty, w: m.bytes(), rows: m.rows, out: o })
            .collect();
        cpu::matmul_group(&mut items, cols, x)
    }

    fn matmul_exact(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        if cols == 0 || !x.len().is_multiple_of(cols) || out.len() != x.len() / cols * rows {
            return Err(Error::Request(format!("{}: exact matmul of {} activations", self.name, x.len())));
        }
        let m = x.len() / cols;
        let rb = self.row_bytes();
        let bytes = self.bytes();
        let ty = self.ty;
        let per = rows.div_ceil(rayon::current_num_threads().max(1) * 4).clamp(1, 256);
        let mut t = vec![0f32; rows * m];
        t.par_chunks_mut(per * m).enumerate().try_for_each(|(ci, o)| -> Result<()> {
            let mut w = vec![0f32; cols];
            for (k, orow) in o.chunks_exact_mut(m).enumerate() {
                let r = ci * per + k;
                crate::quant::dequantize(ty, &bytes[r * rb..(r + 1) * rb], &mut w)?;
                for (tok, v) in orow.iter_mut().enumerate() {
                    *v = cpu::dot_f32(&w, &x[tok * cols..(tok + 1) * cols]);
                }
            }
            Ok(())
        })?;
        for r in 0..rows {
            for tok in 0..m {
                out[tok * rows + r] = t[r * m + tok];
            }
        }
        Ok(())
    }
}

/// A 1-D f32 parameter (norm weights, biases).
pub fn vector(g: &Gguf, name: &str, len: usize) -> Result<Vec<f32>> {
    check_vector(g, name, len)?;
    g.tensor_f32(name)
}

/// Checks a 1-D parameter's length, as [`vector`] does, without touching its data.
pub fn check_vector(g: &Gguf, name: &str, len: usize) -> Result<()> {
    let t = g.tensor(name).ok_or_else(|| Error::Tensor { name: name.into(), reason: "missing".into() })?;
    if t.elements() != len as u64 {
        return Err(Error::Tensor { name: name.into(), reason: format!("{} elements, expected {len}", t.elements()) });
    }
    Ok(())
}
