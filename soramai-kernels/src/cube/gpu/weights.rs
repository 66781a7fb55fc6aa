//! Weights on the device: matrices kept in their blocks, LoRA banks stacked by slot, the
//! layers of a model uploaded once.

use super::super::pack::{Packed, pack};
use super::{Buf, Gpu};
use crate::error::Result;
use crate::lora::Target;
use crate::model::{Model, QMat};

#[derive(Debug)]
pub(super) enum GpuWeights {
    /// Blocks of 32 with `bits` (4 or 8) per code.
    Quant {
        bits: u32,
        scales: Buf,
        mins: Buf,
        quants: Buf,
    },
    F32(Buf),
}

/// A weight matrix on the device.
#[derive(Debug)]
pub(crate) struct GpuMat {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) data: GpuWeights,
    pub(super) bytes: usize,
}

impl GpuMat {
    pub(crate) fn upload(gpu: &Gpu, m: &QMat) -> Result<Self> {
        Self::from_packed(gpu, pack(m.ty, m.bytes(), m.rows, m.cols)?, m.rows, m.cols)
    }

    pub(crate) fn from_packed(gpu: &Gpu, p: Packed, rows: usize, cols: usize) -> Result<Self> {
        let bytes = p.device_bytes();
        let data = match p {
            Packed::Q4 { scales, mins, quants } | Packed::Q8 { scales, mins, quants } => GpuWeights::Quant {
                // 32 codes of `bits` bits take `bits` words.
                bits: (quants.len() / scales.len().max(1)) as u32,
                scales: gpu.upload(&scales),
                mins: gpu.upload(&mins),
                quants: gpu.upload_u32(&quants),
            },
            Packed::F32(w) => GpuWeights::F32(gpu.upload(&w)),
        };
        Ok(GpuMat { rows, cols, data, bytes })
    }
}

/// Every loaded adapter's pair for one (layer, projection), stacked by slot and padded to the
/// largest rank: `a` is `slots × rank × cols`, `b` `slots × rows × rank`.
#[derive(Debug)]
pub(crate) struct LoraBank {
    pub(crate) a: Buf,
    pub(crate) b: Buf,
    pub(crate) scales: Buf,
    pub(crate) rank: usize,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

#[derive(Debug)]
pub(crate) struct GpuLayer {
    pub(crate) attn_norm: Buf,
    pub(super) wq: GpuMat,
    pub(super) wk: GpuMat,
    pub(super) wv: GpuMat,
    pub(crate) wo: GpuMat,
    pub(crate) bias: Option<[Buf; 3]>,
    pub(crate) ffn_norm: Buf,
    pub(super) gate: GpuMat,
    pub(super) up: GpuMat,
    pub(super) down: GpuMat,
}

impl GpuLayer {
    pub(crate) fn weight(&self, t: Target) -> &GpuMat {
        match t {
            Target::Q => &self.wq,
            Target::K => &self.wk,
            Target::V => &self.wv,
            Target::O => &self.wo,
            Target::Gate => &self.gate,
            Target::Up => &self.up,
            Target::Down => &self.down,
        }
    }
}

/// A model's frozen weights on the device, uploaded once: the layers and the output projection
/// (an untied model's token embeddings are [`GpuModel`](super::GpuModel)'s own upload; the
/// trainer embeds on the host).
#[derive(Debug)]
pub(crate) struct DeviceWeights {
    pub(crate) layers: Vec<GpuLayer>,
    pub(crate) output_norm: Buf,
    pub(crate) output: GpuMat,
    /// Bytes of matrices on the device.
    pub(crate) bytes: usize,
}

impl DeviceWeights {
    pub(crate) fn upload(gpu: &Gpu, model: &Model) -> Result<Self> {
        let mut bytes = 0;
        let mut up = |m: &QMat| -> Result<GpuMat> {
            let g = GpuMat::upload(gpu, m)?;
            bytes += g.bytes;
            Ok(g)
        };
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            layers.push(GpuLayer {
                attn_norm: gpu.upload(&l.attn_norm),
                wq: up(&l.wq)?,
                wk: up(&l.wk)?,
                wv: up(&l.wv)?,
                wo: up(&l.wo)?,
                bias: l.bias.as_ref().map(|[q, k, v]| [gpu.upload(q), gpu.upload(k), gpu.upload(v)]),
                ffn_norm: gpu.upload(&l.ffn_norm),
                gate: up(&l.gate)?,
                up: up(&l.up)?,
                down: up(&l.down)?,
            });
        }
        let output = up(&model.output)?;
        Ok(DeviceWeights { layers, output_norm: gpu.upload(&model.output_norm), output, bytes })
    }
}
