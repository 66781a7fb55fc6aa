//! The cubecl backend's host side: the device, buffers, one launcher per op, and [`GpuModel`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cubecl::client::Client;
use cubecl::prelude::*;
use cubecl::server::Handle;

use super::kernels::{self, ATTN_CHUNK, LANES, ROW_THREADS, ROWS_PER_CUBE};
use super::pack::{Packed, pack};
use super::{Backend, not_compiled};
use crate::cpu::ops::{self, RopeLayout};
use crate::error::{Error, Result};
use crate::lora::{Adapter, Target};
use crate::model::{Logits, Model, QMat};
use crate::tokenizer::TokenId;
use crate::train::{AdamW, Param};

/// A device and its compute client.
#[derive(Clone)]
pub struct Gpu {
    client: Client,
    backend: Backend,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("backend", &self.backend).field("device", &self.client.name()).finish()
    }
}

/// An f32 buffer on the device.
#[derive(Clone, Debug)]
pub(crate) struct Buf {
    handle: Handle,
    pub(crate) len: usize,
}

impl Buf {
    fn arg(&self) -> BufferArg {
        // SAFETY: `len` is the number of f32 (or u32) elements the buffer was created with, so
        // the kernels' bounds (which every kernel checks against its own size arguments) stay
        // inside the allocation.
        unsafe { BufferArg::from_raw_parts(self.handle.clone(), self.len) }
    }
}

impl Gpu {
    /// Opens the first device of a GPU backend. [`Backend::Cpu`] is refused (it needs no device).
    pub fn new(backend: Backend) -> Result<Self> {
        let device = match backend {
            Backend::Cpu => return Err(Error::Backend("the cpu backend has no GPU device".into())),
            Backend::Wgpu if cfg!(feature = "wgpu") => cubecl::Device::wgpu(Default::default()),
            Backend::Cuda if cfg!(feature = "cuda") => cubecl::Device::cuda(0),
            other => return Err(not_compiled(other)),
        }
        .map_err(|e| Error::Backend(format!("no {backend} device: {e}")))?;
        // Creating the client can panic inside the runtime when no adapter answers.
        let client = std::panic::catch_unwind(|| device.client())
            .map_err(|_| Error::Backend(format!("the {backend} device could not be opened")))?;
        Ok(Gpu { client, backend })
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Waits until the device has finished every queued launch and transfer.
    pub fn sync(&self) -> Result<()> {
        cubecl::future::block_on(self.client.sync()).map_err(|e| Error::Backend(format!("device sync: {e:?}")))
    }

    /// The device's name as the runtime gives it.
    pub fn name(&self) -> &'static str {
        self.client.name()
    }

    pub(crate) fn upload(&self, v: &[f32]) -> Buf {
        let v: &[f32] = if v.is_empty() { &[0.0] } else { v };
        Buf { handle: self.client.create_from_slice(f32::as_bytes(v)), len: v.len() }
    }

    pub(crate) fn upload_u32(&self, v: &[u32]) -> Buf {
        let v: &[u32] = if v.is_empty() { &[0] } else { v };
        Buf { handle: self.client.create_from_slice(u32::as_bytes(v)), len: v.len() }
    }

    /// A buffer of zeros (filled on the device).
    pub(crate) fn zeros(&self, n: usize) -> Buf {
        let b = self.scratch(n);
        self.fill(&b, 0.0);
        b
    }

    /// Sets every value of `b`.
    pub(crate) fn fill(&self, b: &Buf, value: f32) {
        kernels::fill::launch(
            &self.client,
            Self::cubes_1d(b.len, 256),
            CubeDim::new_1d(256),
            b.arg(),
            value,
            b.len as u32,
        );
    }

    /// A device copy of `src`.
    pub(crate) fn copy(&self, src: &Buf) -> Buf {
        let dst = self.scratch(src.len);
        kernels::copy::launch(
            &self.client,
            Self::cubes_1d(src.len, 256),
            CubeDim::new_1d(256),
            src.arg(),
            dst.arg(),
            src.len as u32,
        );
        dst
    }

    /// `dst[r] = src[rows[r]]` for `n` rows of `width`.
    pub(crate) fn gather_rows(&self, src: &Buf, rows: &Buf, dst: &Buf, n: usize, width: usize) {
        kernels::gather_rows::launch(
            &self.client,
            Self::cubes_1d(n * width, 256),
            CubeDim::new_1d(256),
            src.arg(),
            rows.arg(),
            dst.arg(),
            n as u32,
            width as u32,
        );
    }

    /// Weighted cross-entropy of `nrows` rows of logits, in place (see the kernel): the rows
    /// become the loss's gradient, `loss[base + r]` the row's weighted loss.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cross_entropy(
        &self,
        z: &Buf,
        targets: &Buf,
        weights: &Buf,
        loss: &Buf,
        (nrows, vocab): (usize, usize),
        norm: f32,
        base: usize,
    ) {
        kernels::cross_entropy::launch(
            &self.client,
            Self::cubes_1d(nrows, 1),
            CubeDim::new_1d(ROW_THREADS),
            z.arg(),
            targets.arg(),
            weights.arg(),
            loss.arg(),
            vocab as u32,
            nrows as u32,
            norm,
            base as u32,
        );
    }

    /// Values of `partial` that [`Gpu::sum_squares`] writes for a buffer of `n` values.
    pub(crate) fn sum_squares_len(n: usize) -> usize {
        n.div_ceil(SUM_BLOCK).max(1)
    }

    /// Partial sums of squares of `x` into `partial[base..base + sum_squares_len(x.len)]`.
    pub(crate) fn sum_squares(&self, x: &Buf, partial: &Buf, base: usize) {
        let nblocks = Self::sum_squares_len(x.len);
        kernels::sum_squares::launch(
            &self.client,
            Self::cubes_1d(nblocks, 1),
            CubeDim::new_1d(ROW_THREADS),
            x.arg(),
            partial.arg(),
            x.len as u32,
            nblocks as u32,
            base as u32,
        );
    }

    /// A buffer whose contents are undefined until a kernel writes all of it.
    pub(crate) fn scratch(&self, n: usize) -> Buf {
        Buf { handle: self.client.empty(4 * n.max(1)), len: n.max(1) }
    }

    /// A buffer of NaNs: an output a kernel must overwrite entirely (op tests).
    pub(crate) fn poisoned(&self, n: usize) -> Buf {
        self.upload(&vec![f32::NAN; n.max(1)])
    }

    pub(crate) fn read(&self, b: &Buf) -> Result<Vec<f32>> {
        let bytes =
            self.client.read_one(b.handle.clone()).map_err(|e| Error::Backend(format!("device read: {e:?}")))?;
        Ok(f32::from_bytes(&bytes)[..b.len].to_vec())
    }

    fn cubes(n: usize, per: u32) -> u32 {
        u32::try_from(n.div_ceil(per as usize)).unwrap_or(u32::MAX)
    }

    /// Enough cubes of `per` units for `n` units, spread over x and y: devices allow at most
    /// 65535 cubes along one axis (the kernels use the linear position and check bounds).
    fn cubes_1d(n: usize, per: u32) -> CubeCount {
        let c = n.div_ceil(per as usize).max(1);
        if c <= 65_535 {
            CubeCount::Static(c as u32, 1, 1)
        } else {
            CubeCount::Static(65_535, u32::try_from(c.div_ceil(65_535)).unwrap_or(u32::MAX), 1)
        }
    }

    /// `out (ntok × rows) (+)= x (ntok × cols) · Wᵀ`.
    pub(crate) fn matmul(&self, w: &GpuMat, x: &Buf, ntok: usize, out: &Buf, accumulate: bool) {
        // Many tokens: the shared-memory tiled product (64 rows × 32 tokens per cube).
        if ntok >= TILED_MIN_TOKENS
            && let GpuWeights::Quant { bits, scales, mins, quants } = &w.data
        {
            kernels::matmul_q_tiled::launch(
                &self.client,
                CubeCount::Static(Self::cubes(w.rows, 64), Self::cubes(ntok, 32), 1),
                CubeDim::new_1d(256),
                scales.arg(),
                mins.arg(),
                quants.arg(),
                x.arg(),
                out.arg(),
                w.rows as u32,
                (w.cols / 32) as u32,
                ntok as u32,
                *bits,
                accumulate,
            );
            return;
        }
        let tile: u32 = if ntok == 1 { 1 } else { 8 };
        let count = CubeCount::Static(Self::cubes(w.rows, ROWS_PER_CUBE), Self::cubes(ntok, tile), 1);
        let dim = CubeDim::new_2d(LANES, ROWS_PER_CUBE);
        let (rows, ntok) = (w.rows as u32, ntok as u32);
        match &w.data {
            GpuWeights::Quant { bits, scales, mins, quants } => kernels::matmul_q::launch(
                &self.client,
                count,
                dim,
                scales.arg(),
                mins.arg(),
                quants.arg(),
                x.arg(),
                out.arg(),
                rows,
                (w.cols / 32) as u32,
                ntok,
                *bits,
                tile,
                accumulate,
            ),
            GpuWeights::F32(m) => kernels::matmul_f32::launch(
                &self.client,
                count,
                dim,
                m.arg(),
                x.arg(),
                out.arg(),
                rows,
                w.cols as u32,
                ntok,
                tile,
                accumulate,
            ),
        }
    }

    pub(crate) fn rms_norm(&self, x: &Buf, w: &Buf, out: &Buf, nrows: usize, eps: f32) {
        kernels::rms_norm::launch(
            &self.client,
            Self::cubes_1d(nrows, 1),
            CubeDim::new_1d(ROW_THREADS),
            x.arg(),
            w.arg(),
            out.arg(),
            w.len as u32,
            eps,
            nrows as u32,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rope(
        &self,
        x: &Buf,
        cos: &Buf,
        sin: &Buf,
        nrows: usize,
        heads: usize,
        head_dim: usize,
        rope_dims: usize,
        layout: RopeLayout,
    ) {
        let n = nrows * heads * rope_dims / 2;
        kernels::rope::launch(
            &self.client,
            Self::cubes_1d(n, 256),
            CubeDim::new_1d(256),
            x.arg(),
            cos.arg(),
            sin.arg(),
            nrows as u32,
            heads as u32,
            head_dim as u32,
            rope_dims as u32,
            layout == RopeLayout::Neox,
        );
    }

    pub(crate) fn swiglu(&self, g: &Buf, u: &Buf, n: usize) {
        kernels::swiglu::launch(&self.client, Self::cubes_1d(n, 256), CubeDim::new_1d(256), g.arg(), u.arg(), n as u32);
    }

    pub(crate) fn add_bias(&self, x: &Buf, bias: &Buf, n: usize) {
        kernels::add_bias::launch(
            &self.client,
            Self::cubes_1d(n, 256),
            CubeDim::new_1d(256),
            x.arg(),
            bias.arg(),
            n as u32,
            bias.len as u32,
        );
    }

    pub(crate) fn softmax(&self, x: &Buf, nrows: usize, d: usize) {
        kernels::softmax::launch(
            &self.client,
            Self::cubes_1d(nrows, 1),
            CubeDim::new_1d(ROW_THREADS),
            x.arg(),
            d as u32,
            nrows as u32,
        );
    }

    pub(crate) fn scatter_rows(&self, src: &Buf, slots: &Buf, cache: &Buf, n: usize, width: usize) {
        kernels::scatter_rows::launch(
            &self.client,
            Self::cubes_1d(n * width, 256),
            CubeDim::new_1d(256),
            src.arg(),
            slots.arg(),
            cache.arg(),
            n as u32,
            width as u32,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention(
        &self,
        q: &Buf,
        k: &Buf,
        v: &Buf,
        table: &Buf,
        table_start: &Buf,
        pos: &Buf,
        out: &Buf,
        lse: &Buf,
        nrows: usize,
        shape: AttnShape,
    ) {
        let dims_per_thread = (shape.head_dim as u32).div_ceil(ROW_THREADS).max(1);
        kernels::attention::launch(
            &self.client,
            CubeCount::Static(shape.n_head as u32, nrows as u32, 1),
            CubeDim::new_1d(ROW_THREADS),
            q.arg(),
            k.arg(),
            v.arg(),
            table.arg(),
            table_start.arg(),
            pos.arg(),
            out.arg(),
            lse.arg(),
            shape.n_head as u32,
            shape.n_head_kv as u32,
            shape.head_dim as u32,
            shape.page as u32,
            1.0 / (shape.head_dim as f32).sqrt(),
            dims_per_thread,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lora(&self, bank: &LoraBank, slots: &Buf, x: &Buf, tmp: &Buf, out: &Buf, n: usize) {
        kernels::lora_shrink::launch(
            &self.client,
            Self::cubes_1d(n * bank.rank, 64),
            CubeDim::new_1d(64),
            x.arg(),
            bank.a.arg(),
            slots.arg(),
            tmp.arg(),
            n as u32,
            bank.rank as u32,
            bank.cols as u32,
        );
        kernels::lora_expand::launch(
            &self.client,
            Self::cubes_1d(n * bank.rows, 256),
            CubeDim::new_1d(256),
            tmp.arg(),
            bank.b.arg(),
            bank.scales.arg(),
            slots.arg(),
            out.arg(),
            n as u32,
            bank.rank as u32,
            bank.rows as u32,
        );
    }

    /// `dx (ntok × cols) (+)= dy (ntok × rows) · W`: the input gradient through a frozen weight.
    pub(crate) fn matmul_t(&self, w: &GpuMat, dy: &Buf, ntok: usize, dx: &Buf, accumulate: bool) {
        // Many tokens: the shared-memory tiled product (64 columns × 32 tokens per cube).
        if ntok >= TILED_MIN_TOKENS
            && let GpuWeights::Quant { bits, scales, mins, quants } = &w.data
        {
            kernels::matmul_t_q_tiled::launch(
                &self.client,
                CubeCount::Static(Self::cubes(w.cols, 64), Self::cubes(ntok, 32), 1),
                CubeDim::new_1d(256),
                scales.arg(),
                mins.arg(),
                quants.arg(),
                dy.arg(),
                dx.arg(),
                w.rows as u32,
                (w.cols / 32) as u32,
                ntok as u32,
                *bits,
                accumulate,
            );
            return;
        }
        let count = Self::cubes_1d(ntok * w.cols, 256);
        let dim = CubeDim::new_1d(256);
        let (rows, ntok) = (w.rows as u32, ntok as u32);
        match &w.data {
            GpuWeights::Quant { bits, scales, mins, quants } => kernels::matmul_t_q::launch(
                &self.client,
                count,
                dim,
                scales.arg(),
                mins.arg(),
                quants.arg(),
                dy.arg(),
                dx.arg(),
                rows,
                (w.cols / 32) as u32,
                ntok,
                *bits,
                accumulate,
            ),
            GpuWeights::F32(m) => kernels::matmul_t_f32::launch(
                &self.client,
                count,
                dim,
                m.arg(),
                dy.arg(),
                dx.arg(),
                rows,
                w.cols as u32,
                ntok,
                accumulate,
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rms_norm_backward(&self, x: &Buf, w: &Buf, dy: &Buf, dx: &Buf, nrows: usize, eps: f32) {
        kernels::rms_norm_backward::launch(
            &self.client,
            Self::cubes_1d(nrows, 1),
            CubeDim::new_1d(ROW_THREADS),
            x.arg(),
            w.arg(),
            dy.arg(),
            dx.arg(),
            w.len as u32,
            eps,
            nrows as u32,
        );
    }

    pub(crate) fn swiglu_backward(&self, g: &Buf, u: &Buf, dh: &Buf, dg: &Buf, du: &Buf, n: usize) {
        kernels::swiglu_backward::launch(
            &self.client,
            Self::cubes_1d(n, 256),
            CubeDim::new_1d(256),
            g.arg(),
            u.arg(),
            dh.arg(),
            dg.arg(),
            du.arg(),
            n as u32,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm_add(
        &self,
        a: &Buf,
        b: &Buf,
        out: &Buf,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        trans_a: bool,
        trans_b: bool,
    ) {
        kernels::gemm_add::launch(
            &self.client,
            Self::cubes_1d(m * n, 256),
            CubeDim::new_1d(256),
            a.arg(),
            b.arg(),
            out.arg(),
            m as u32,
            n as u32,
            k as u32,
            alpha,
            trans_a,
            trans_b,
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn adamw(&self, value: &Buf, grad: &Buf, m: &Buf, v: &Buf, opt: &AdamW, lr: f32, t: usize, gscale: f32) {
        let step = i32::try_from(t).unwrap_or(i32::MAX);
        kernels::adamw::launch(
            &self.client,
            Self::cubes_1d(value.len, 256),
            CubeDim::new_1d(256),
            value.arg(),
            grad.arg(),
            m.arg(),
            v.arg(),
            value.len as u32,
            lr,
            opt.beta1,
            opt.beta2,
            opt.eps,
            opt.weight_decay,
            1.0 - opt.beta1.powi(step),
            1.0 - opt.beta2.powi(step),
            gscale,
        );
    }
    /// Attention backward for training (packed rows, `starts`/`ends` per row): adds into `dq`,
    /// `dk`, `dv`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_backward(
        &self,
        t: [&Buf; 6],
        starts: &Buf,
        ends: &Buf,
        grads: [&Buf; 3],
        nrows: usize,
        shape: AttnShape,
    ) {
        let [q, k, v, o, d_o, lse] = t;
        let [dq, dk, dv] = grads;
        let dims = (shape.head_dim as u32).div_ceil(ROW_THREADS).max(1);
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        kernels::attention_backward_q::launch(
            &self.client,
            CubeCount::Static(shape.n_head as u32, nrows as u32, 1),
            CubeDim::new_1d(ROW_THREADS),
            q.arg(),
            k.arg(),
            v.arg(),
            o.arg(),
            d_o.arg(),
            lse.arg(),
            starts.arg(),
            dq.arg(),
            shape.n_head as u32,
            shape.n_head_kv as u32,
            shape.head_dim as u32,
            scale,
            dims,
        );
        kernels::attention_backward_kv::launch(
            &self.client,
            CubeCount::Static(shape.n_head_kv as u32, nrows as u32, 1),
            CubeDim::new_1d(ROW_THREADS),
            q.arg(),
            k.arg(),
            v.arg(),
            o.arg(),
            d_o.arg(),
            lse.arg(),
            ends.arg(),
            dk.arg(),
            dv.arg(),
            shape.n_head as u32,
            shape.n_head_kv as u32,
            shape.head_dim as u32,
            scale,
            dims,
        );
    }
}

/// For packed rows where row `i` attends rows `starts[i]..=i`: the end of each row's example (the
/// rows that attend it are `i..ends[i]`), as the training attention's key/value backward takes it.
pub(crate) fn row_ends(starts: &[usize]) -> Vec<u32> {
    let n = starts.len();
    let mut ends = vec![0u32; n];
    for i in (0..n).rev() {
        ends[i] = if i + 1 < n && starts[i + 1] == starts[i] { ends[i + 1] } else { i as u32 + 1 };
    }
    ends
}

/// Refuses models whose heads the attention kernels cannot hold.
pub(crate) fn check_head_dim(c: &crate::model::Config) -> Result<()> {
    if c.head_dim > (ROW_THREADS * 8) as usize {
        return Err(Error::Backend(format!("head dimension {} is too large for the GPU kernels", c.head_dim)));
    }
    Ok(())
}

/// Values per partial sum of [`kernels::sum_squares`].
const SUM_BLOCK: usize = 4096;

/// Token counts from which block-quantized products take the tiled kernel.
pub(crate) const TILED_MIN_TOKENS: usize = 16;

/// Attention shape (heads and the cache's page size).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub page: usize,
}

#[derive(Debug)]
enum GpuWeights {
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
    rows: usize,
    cols: usize,
    data: GpuWeights,
    bytes: usize,
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

/// Options of a [`GpuModel`].
#[derive(Clone, Copy, Debug)]
pub struct GpuOptions {
    /// Token positions the paged KV cache holds, over all sequences together.
    pub kv_tokens: usize,
    /// Positions per page.
    pub page: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions { kv_tokens: 16_384, page: 16 }
    }
}

#[derive(Debug)]
pub(crate) struct GpuLayer {
    pub(crate) attn_norm: Buf,
    wq: GpuMat,
    wk: GpuMat,
    wv: GpuMat,
    pub(crate) wo: GpuMat,
    pub(crate) bias: Option<[Buf; 3]>,
    pub(crate) ffn_norm: Buf,
    gate: GpuMat,
    up: GpuMat,
    down: GpuMat,
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

#[derive(Debug, Default)]
struct Adapters {
    names: Vec<String>,
    hosts: Vec<Arc<Adapter>>,
    banks: HashMap<(usize, Target), LoraBank>,
}

/// A sequence's place in the paged KV cache. Its pages go back to the pool when it is dropped.
#[derive(Debug)]
pub struct GpuCache {
    pages: Vec<u32>,
    len: usize,
    free: Arc<Mutex<Vec<u32>>>,
}

impl GpuCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for GpuCache {
    fn drop(&mut self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.append(&mut self.pages);
    }
}

/// One sequence's part of a batch on the GPU (as [`crate::model::Lane`]).
#[derive(Debug)]
pub struct GpuLane<'a> {
    /// Its cache; the tokens are appended.
    pub cache: &'a mut GpuCache,
    /// New tokens.
    pub tokens: &'a [TokenId],
    /// The name of a loaded adapter, if any.
    pub adapter: Option<&'a str>,
    /// Which logits to return.
    pub logits: Logits,
}

/// A model's frozen weights on the device, uploaded once (embeddings stay on the host: a step
/// uploads only its rows).
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

/// A model on a GPU: every weight uploaded once, a paged KV cache shared by all sequences, and
/// LoRA adapters stacked per projection so a batch mixes adapters in one pass.
pub struct GpuModel {
    gpu: Gpu,
    model: Arc<Model>,
    weights: DeviceWeights,
    k_cache: Vec<Buf>,
    v_cache: Vec<Buf>,
    free: Arc<Mutex<Vec<u32>>>,
    options: GpuOptions,
    adapters: Mutex<Adapters>,
}

impl Drop for GpuModel {
    fn drop(&mut self) {
        // Let queued work finish before its buffers go: a process that ends right after (a test,
        // a CLI call) then never tears the driver down under running launches, which software
        // Vulkan answers with a crash at exit.
        let _ = self.gpu.sync();
    }
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel").field("gpu", &self.gpu).field("weight_bytes", &self.weights.bytes).finish()
    }
}

impl GpuModel {
    /// Uploads a model's weights to `gpu` and allocates its KV cache.
    pub fn new(gpu: Gpu, model: Arc<Model>, options: GpuOptions) -> Result<Self> {
        let c = &model.config;
        if options.page == 0 || options.kv_tokens < options.page {
            return Err(Error::Backend("the KV cache needs at least one page".into()));
        }
        check_head_dim(c)?;
        let weights = DeviceWeights::upload(&gpu, &model)?;
        let pages = options.kv_tokens / options.page;
        let slots = pages * options.page * c.kv_dim();
        let k_cache = (0..c.n_layer).map(|_| gpu.zeros(slots)).collect();
        let v_cache = (0..c.n_layer).map(|_| gpu.zeros(slots)).collect();
        let free = Arc::new(Mutex::new((0..pages as u32).rev().collect()));
        Ok(GpuModel { gpu, weights, k_cache, v_cache, free, options, adapters: Mutex::new(Adapters::default()), model })
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The model on the host (configuration, embeddings, tokenizer data).
    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Bytes of weights on the device (the bytes a decode step reads at least).
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes
    }

    /// A fresh cache for one sequence.
    pub fn new_cache(&self) -> GpuCache {
        GpuCache { pages: Vec::new(), len: 0, free: Arc::clone(&self.free) }
    }

    /// Loads (or replaces) an adapter under `name`; the stacked banks are rebuilt.
    pub fn add_adapter(&self, name: impl Into<String>, adapter: Adapter) -> Result<()> {
        let c = &self.model.config;
        if adapter.layers.len() != c.n_layer {
            return Err(Error::Adapter("adapter was built for another model shape".into()));
        }
        let name = name.into();
        let mut a = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        match a.names.iter().position(|n| *n == name) {
            Some(i) => a.hosts[i] = Arc::new(adapter),
            None => {
                a.names.push(name);
                a.hosts.push(Arc::new(adapter));
            }
        }
        self.rebuild_banks(&mut a)
    }

    /// Unloads an adapter; returns whether it was loaded.
    pub fn remove_adapter(&self, name: &str) -> Result<bool> {
        let mut a = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = a.names.iter().position(|n| n == name) else { return Ok(false) };
        a.names.remove(i);
        a.hosts.remove(i);
        self.rebuild_banks(&mut a)?;
        Ok(true)
    }

    fn rebuild_banks(&self, a: &mut Adapters) -> Result<()> {
        let c = &self.model.config;
        a.banks.clear();
        for l in 0..c.n_layer {
            for t in Target::ALL {
                let pairs: Vec<_> = a.hosts.iter().map(|h| h.pair(l, t)).collect();
                let Some(rank) = pairs.iter().flatten().map(|p| p.rank).max() else { continue };
                let (rows, cols) = t.shape(c);
                let slots = pairs.len();
                let mut am = vec![0f32; slots * rank * cols];
                let mut bm = vec![0f32; slots * rows * rank];
                let mut scales = vec![0f32; slots];
                for (s, p) in pairs.iter().enumerate() {
                    let Some(p) = p else { continue };
                    if p.a.len() != p.rank * cols || p.b.len() != rows * p.rank {
                        return Err(Error::Adapter(format!("layer {l} {}: wrong pair shape", t.module())));
                    }
                    scales[s] = p.scale;
                    for j in 0..p.rank {
                        am[(s * rank + j) * cols..(s * rank + j + 1) * cols]
                            .copy_from_slice(&p.a[j * cols..(j + 1) * cols]);
                    }
                    for o in 0..rows {
                        bm[(s * rows + o) * rank..(s * rows + o) * rank + p.rank]
                            .copy_from_slice(&p.b[o * p.rank..(o + 1) * p.rank]);
                    }
                }
                let bank = LoraBank {
                    a: self.gpu.upload(&am),
                    b: self.gpu.upload(&bm),
                    scales: self.gpu.upload(&scales),
                    rank,
                    rows,
                    cols,
                };
                a.banks.insert((l, t), bank);
            }
        }
        Ok(())
    }

    /// Runs the lanes' new tokens through the model in one pass; returns per lane the logits it
    /// asked for (as [`Model::forward`]).
    pub fn forward(&self, lanes: &mut [GpuLane<'_>]) -> Result<Vec<Vec<f32>>> {
        let c = &self.model.config;
        let (d, qd, kvd, hd) = (c.n_embd, c.q_dim(), c.kv_dim(), c.head_dim);
        let page = self.options.page;
        let adapters = self.adapters.lock().unwrap_or_else(|e| e.into_inner());
        // Validate everything before touching the cache.
        let mut lane_slot = Vec::with_capacity(lanes.len());
        for lane in lanes.iter() {
            if lane.tokens.is_empty() {
                return Err(Error::Request("a lane has no tokens".into()));
            }
            if let Some(&t) = lane.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(Error::Request(format!("token id {t} is outside the {}-token vocabulary", c.vocab)));
            }
            if !Arc::ptr_eq(&lane.cache.free, &self.free) {
                return Err(Error::Request("a KV cache from another model".into()));
            }
            let end = lane.cache.len + lane.tokens.len();
            if end > c.n_ctx {
                return Err(Error::Request(format!("{end} tokens exceed the {}-token context", c.n_ctx)));
            }
            lane_slot.push(match lane.adapter {
                None => u32::MAX,
                Some(name) => adapters
                    .names
                    .iter()
                    .position(|n| n == name)
                    .ok_or_else(|| Error::Adapter(format!("no adapter named {name:?} is loaded")))?
                    as u32,
            });
        }
        // Pages for the new positions.
        {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            let need: usize = lanes
                .iter()
                .map(|l| (l.cache.len + l.tokens.len()).div_ceil(page).saturating_sub(l.cache.pages.len()))
                .sum();
            if need > free.len() {
                return Err(Error::Request(format!(
                    "the GPU KV cache is full ({} free pages, {need} needed)",
                    free.len()
                )));
            }
            for lane in lanes.iter_mut() {
                while lane.cache.pages.len() * page < lane.cache.len + lane.tokens.len() {
                    let p = free.pop().ok_or_else(|| Error::Request("the GPU KV cache is full".into()))?;
                    lane.cache.pages.push(p);
                }
            }
        }
        // Row tables.
        let n: usize = lanes.iter().map(|l| l.tokens.len()).sum();
        let h2 = c.rope_dims / 2;
        let (mut x, mut cos, mut sin) = (vec![0f32; n * d], vec![0f32; n * h2], vec![0f32; n * h2]);
        let (mut slots, mut pos, mut starts, mut table, mut row_adapter) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::new(), Vec::with_capacity(n));
        let mut spans = Vec::with_capacity(lanes.len());
        let mut r = 0;
        for (i, lane) in lanes.iter().enumerate() {
            let start = table.len() as u32;
            table.extend_from_slice(&lane.cache.pages);
            spans.push(r..r + lane.tokens.len());
            for (k, &t) in lane.tokens.iter().enumerate() {
                let p = lane.cache.len + k;
                self.model.tok_embd.dequantize_row(t as usize, &mut x[r * d..(r + 1) * d])?;
                ops::rope_angles(
                    p,
                    c.rope_dims,
                    c.rope_base,
                    &mut cos[r * h2..(r + 1) * h2],
                    &mut sin[r * h2..(r + 1) * h2],
                );
                slots.push(lane.cache.pages[p / page] * page as u32 + (p % page) as u32);
                pos.push(p as u32);
                starts.push(start);
                row_adapter.push(lane_slot[i]);
                r += 1;
            }
        }
        let g = &self.gpu;
        let (xb, cosb, sinb) = (g.upload(&x), g.upload(&cos), g.upload(&sin));
        let (slotb, posb, startb, tableb) =
            (g.upload_u32(&slots), g.upload_u32(&pos), g.upload_u32(&starts), g.upload_u32(&table));
        let any_adapter = row_adapter.iter().any(|&s| s != u32::MAX);
        let adapterb = g.upload_u32(&row_adapter);
        // Scratch, each written in full by the kernel that produces it before anything reads it.
        let (xn, q, kk, vv, att) =
            (g.scratch(n * d), g.scratch(n * qd), g.scratch(n * kvd), g.scratch(n * kvd), g.scratch(n * qd));
        let (gb, ub) = (g.scratch(n * c.n_ff), g.scratch(n * c.n_ff));
        let max_rank = adapters.banks.values().map(|b| b.rank).max().unwrap_or(1);
        let tmp = g.scratch(n * max_rank);
        let lse = g.scratch(n * c.n_head);
        let shape = AttnShape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: hd, page };
        let lora = |l: usize, t: Target, input: &Buf, out: &Buf| {
            if any_adapter && let Some(bank) = adapters.banks.get(&(l, t)) {
                g.lora(bank, &adapterb, input, &tmp, out, n);
            }
        };
        for (l, layer) in self.weights.layers.iter().enumerate() {
            g.rms_norm(&xb, &layer.attn_norm, &xn, n, c.eps);
            for (t, out) in [(Target::Q, &q), (Target::K, &kk), (Target::V, &vv)] {
                g.matmul(layer.weight(t), &xn, n, out, false);
                lora(l, t, &xn, out);
            }
            if let Some([bq, bk, bv]) = &layer.bias {
                g.add_bias(&q, bq, n * qd);
                g.add_bias(&kk, bk, n * kvd);
                g.add_bias(&vv, bv, n * kvd);
            }
            g.rope(&q, &cosb, &sinb, n, c.n_head, hd, c.rope_dims, c.rope_layout);
            g.rope(&kk, &cosb, &sinb, n, c.n_head_kv, hd, c.rope_dims, c.rope_layout);
            g.scatter_rows(&kk, &slotb, &self.k_cache[l], n, kvd);
            g.scatter_rows(&vv, &slotb, &self.v_cache[l], n, kvd);
            g.attention(&q, &self.k_cache[l], &self.v_cache[l], &tableb, &startb, &posb, &att, &lse, n, shape);
            g.matmul(&layer.wo, &att, n, &xb, true);
            lora(l, Target::O, &att, &xb);
            g.rms_norm(&xb, &layer.ffn_norm, &xn, n, c.eps);
            g.matmul(&layer.gate, &xn, n, &gb, false);
            lora(l, Target::Gate, &xn, &gb);
            g.matmul(&layer.up, &xn, n, &ub, false);
            lora(l, Target::Up, &xn, &ub);
            g.swiglu(&gb, &ub, n * c.n_ff);
            g.matmul(&layer.down, &gb, n, &xb, true);
            lora(l, Target::Down, &gb, &xb);
        }
        drop(adapters);
        for lane in lanes.iter_mut() {
            lane.cache.len += lane.tokens.len();
        }
        // Final norm on the device; the wanted rows' logits (or mean hidden states) come back.
        g.rms_norm(&xb, &self.weights.output_norm, &xn, n, c.eps);
        let wanted: Vec<usize> = lanes
            .iter()
            .zip(&spans)
            .flat_map(|(lane, span)| match lane.logits {
                Logits::None | Logits::MeanHidden => 0..0,
                Logits::Last => span.end - 1..span.end,
                Logits::All => span.clone(),
            })
            .collect();
        // When every row wants logits (decode steps, full-sequence scoring) the projection reads
        // the normed rows where they are; otherwise the wanted rows come back and go up again.
        let every_row = wanted.len() == n;
        let need_hidden = lanes.iter().any(|l| l.logits == Logits::MeanHidden) || (!wanted.is_empty() && !every_row);
        let hidden = if need_hidden { g.read(&xn)? } else { Vec::new() };
        let logits = if wanted.is_empty() {
            Vec::new()
        } else if every_row {
            let out = g.scratch(n * c.vocab);
            g.matmul(&self.weights.output, &xn, n, &out, false);
            g.read(&out)?
        } else {
            let mut h = vec![0f32; wanted.len() * d];
            for (k, &row) in wanted.iter().enumerate() {
                h[k * d..(k + 1) * d].copy_from_slice(&hidden[row * d..(row + 1) * d]);
            }
            let out = g.scratch(wanted.len() * c.vocab);
            g.matmul(&self.weights.output, &g.upload(&h), wanted.len(), &out, false);
            g.read(&out)?
        };
        let mut result = Vec::with_capacity(lanes.len());
        let mut at = 0;
        for (lane, span) in lanes.iter().zip(&spans) {
            match lane.logits {
                Logits::None => result.push(Vec::new()),
                Logits::MeanHidden => {
                    let mut mean = vec![0f32; d];
                    for row in span.clone() {
                        for (m, v) in mean.iter_mut().zip(&hidden[row * d..(row + 1) * d]) {
                            *m += v;
                        }
                    }
                    let inv = 1.0 / span.len() as f32;
                    mean.iter_mut().for_each(|m| *m *= inv);
                    result.push(mean);
                }
                Logits::Last | Logits::All => {
                    let m = if lane.logits == Logits::Last { 1 } else { span.len() };
                    result.push(logits[at * c.vocab..(at + m) * c.vocab].to_vec());
                    at += m;
                }
            }
        }
        Ok(result)
    }

    /// Greedy decoding of `max_tokens` after `prompt` (for tests and benchmarks).
    pub fn greedy(&self, prompt: &[TokenId], max_tokens: usize, adapter: Option<&str>) -> Result<Vec<TokenId>> {
        let mut cache = self.new_cache();
        let mut out = Vec::with_capacity(max_tokens);
        let mut next = prompt.to_vec();
        for _ in 0..max_tokens {
            let logits =
                self.forward(&mut [GpuLane { cache: &mut cache, tokens: &next, adapter, logits: Logits::Last }])?;
            let t = argmax(&logits[0]);
            out.push(t);
            next = vec![t];
        }
        Ok(out)
    }
}

/// Single-op entry points on host slices (upload, launch, read back), for the op test suite that
/// compares every kernel with the CPU reference.
pub mod op {
    use super::*;

    /// `x (ntok × cols) · Wᵀ` for weights in GGUF format `ty`.
    pub fn matmul(
        gpu: &Gpu,
        ty: crate::quant::GgmlType,
        w: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
    ) -> Result<Vec<f32>> {
        let m = GpuMat::from_packed(gpu, pack(ty, w, rows, cols)?, rows, cols)?;
        let ntok = x.len() / cols;
        let out = gpu.poisoned(ntok * rows);
        gpu.matmul(&m, &gpu.upload(x), ntok, &out, false);
        gpu.read(&out)
    }

    /// RMSNorm of each row.
    pub fn rms_norm(gpu: &Gpu, x: &[f32], w: &[f32], eps: f32) -> Result<Vec<f32>> {
        let out = gpu.poisoned(x.len());
        gpu.rms_norm(&gpu.upload(x), &gpu.upload(w), &out, x.len() / w.len(), eps);
        gpu.read(&out)
    }

    /// RoPE on `nrows` rows of `heads` heads with per-row angles.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        gpu: &Gpu,
        x: &[f32],
        cos: &[f32],
        sin: &[f32],
        heads: usize,
        head_dim: usize,
        rope_dims: usize,
        layout: RopeLayout,
    ) -> Result<Vec<f32>> {
        let b = gpu.upload(x);
        let nrows = x.len() / (heads * head_dim);
        gpu.rope(&b, &gpu.upload(cos), &gpu.upload(sin), nrows, heads, head_dim, rope_dims, layout);
        gpu.read(&b)
    }

    /// `silu(g) · u`.
    pub fn swiglu(gpu: &Gpu, g: &[f32], u: &[f32]) -> Result<Vec<f32>> {
        let b = gpu.upload(g);
        gpu.swiglu(&b, &gpu.upload(u), g.len());
        gpu.read(&b)
    }

    /// Row-wise softmax.
    pub fn softmax(gpu: &Gpu, x: &[f32], d: usize) -> Result<Vec<f32>> {
        let b = gpu.upload(x);
        gpu.softmax(&b, x.len() / d, d);
        gpu.read(&b)
    }

    /// Causal GQA attention of `q` (rows × n_head × head_dim) at positions `pos` over per-row
    /// caches given as dense `k`/`v` (`len × n_head_kv × head_dim` each, row `r` using the
    /// cache of sequence `seq[r]`), laid out in pages of `page` positions.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        gpu: &Gpu,
        q: &[f32],
        caches: &[(Vec<f32>, Vec<f32>)],
        seq: &[usize],
        pos: &[u32],
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
        page: usize,
    ) -> Result<Vec<f32>> {
        let kvd = n_head_kv * head_dim;
        // Pages of every sequence, scattered in reverse order to exercise the tables.
        let mut table_of = Vec::new();
        let mut next_page = 0u32;
        let total: usize = caches.iter().map(|(k, _)| (k.len() / kvd).div_ceil(page)).sum();
        let mut k_arena = vec![0f32; total.max(1) * page * kvd];
        let mut v_arena = vec![0f32; total.max(1) * page * kvd];
        for (k, v) in caches {
            let len = k.len() / kvd;
            let mut pages = Vec::new();
            for p in 0..len.div_ceil(page) {
                let phys = total as u32 - 1 - next_page;
                next_page += 1;
                pages.push(phys);
                for i in 0..page.min(len - p * page) {
                    let src = (p * page + i) * kvd;
                    let dst = (phys as usize * page + i) * kvd;
                    k_arena[dst..dst + kvd].copy_from_slice(&k[src..src + kvd]);
                    v_arena[dst..dst + kvd].copy_from_slice(&v[src..src + kvd]);
                }
            }
            table_of.push(pages);
        }
        let mut table = Vec::new();
        let mut starts_of = Vec::new();
        for pages in &table_of {
            starts_of.push(table.len() as u32);
            table.extend_from_slice(pages);
        }
        let starts: Vec<u32> = seq.iter().map(|&s| starts_of[s]).collect();
        let out = gpu.poisoned(q.len());
        let nrows = pos.len();
        gpu.attention(
            &gpu.upload(q),
            &gpu.upload(&k_arena),
            &gpu.upload(&v_arena),
            &gpu.upload_u32(&table),
            &gpu.upload_u32(&starts),
            &gpu.upload_u32(pos),
            &out,
            &gpu.scratch(nrows * n_head),
            nrows,
            AttnShape { n_head, n_head_kv, head_dim, page },
        );
        gpu.read(&out)
    }

    /// `out + scale_s · B_s·A_s·x` per row, `s` the row's slot (`None`: unchanged), for pairs
    /// `(a: rank × cols, b: rows × rank, scale)` of possibly different ranks.
    pub fn lora(
        gpu: &Gpu,
        pairs: &[(Vec<f32>, Vec<f32>, usize, f32)],
        row_slot: &[Option<usize>],
        x: &[f32],
        out: &[f32],
    ) -> Result<Vec<f32>> {
        let n = row_slot.len();
        let (cols, rows) = (x.len() / n, out.len() / n);
        let rank = pairs.iter().map(|p| p.2).max().unwrap_or(1);
        let mut am = vec![0f32; pairs.len() * rank * cols];
        let mut bm = vec![0f32; pairs.len() * rows * rank];
        for (s, (a, b, r, _)) in pairs.iter().enumerate() {
            am[s * rank * cols..(s * rank + r) * cols].copy_from_slice(a);
            for o in 0..rows {
                bm[(s * rows + o) * rank..(s * rows + o) * rank + r].copy_from_slice(&b[o * r..(o + 1) * r]);
            }
        }
        let scales: Vec<f32> = pairs.iter().map(|p| p.3).collect();
        let bank = LoraBank { a: gpu.upload(&am), b: gpu.upload(&bm), scales: gpu.upload(&scales), rank, rows, cols };
        let slots: Vec<u32> = row_slot.iter().map(|s| s.map_or(u32::MAX, |s| s as u32)).collect();
        let o = gpu.upload(out);
        gpu.lora(&bank, &gpu.upload_u32(&slots), &gpu.upload(x), &gpu.poisoned(n * rank), &o, n);
        gpu.read(&o)
    }

    /// RMSNorm backward over rows, added into `dx`.
    pub fn rms_norm_backward(gpu: &Gpu, x: &[f32], w: &[f32], eps: f32, dy: &[f32], dx: &[f32]) -> Result<Vec<f32>> {
        let out = gpu.upload(dx);
        gpu.rms_norm_backward(&gpu.upload(x), &gpu.upload(w), &gpu.upload(dy), &out, x.len() / w.len(), eps);
        gpu.read(&out)
    }

    /// SwiGLU backward: `(dg, du)`.
    pub fn swiglu_backward(gpu: &Gpu, g: &[f32], u: &[f32], dh: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let (dg, du) = (gpu.poisoned(g.len()), gpu.poisoned(g.len()));
        gpu.swiglu_backward(&gpu.upload(g), &gpu.upload(u), &gpu.upload(dh), &dg, &du, g.len());
        Ok((gpu.read(&dg)?, gpu.read(&du)?))
    }

    /// RoPE backward: the rotation by the opposite angle (the forward kernel with `-sin`).
    #[allow(clippy::too_many_arguments)]
    pub fn rope_backward(
        gpu: &Gpu,
        dx: &[f32],
        cos: &[f32],
        sin: &[f32],
        heads: usize,
        head_dim: usize,
        rope_dims: usize,
        layout: RopeLayout,
    ) -> Result<Vec<f32>> {
        let neg: Vec<f32> = sin.iter().map(|s| -s).collect();
        rope(gpu, dx, cos, &neg, heads, head_dim, rope_dims, layout)
    }

    /// `dy (ntok × rows) · W` for weights in GGUF format `ty`: the input gradient of a frozen
    /// projection, read from its blocks.
    pub fn matmul_t(
        gpu: &Gpu,
        ty: crate::quant::GgmlType,
        w: &[u8],
        rows: usize,
        cols: usize,
        dy: &[f32],
    ) -> Result<Vec<f32>> {
        let m = GpuMat::from_packed(gpu, pack(ty, w, rows, cols)?, rows, cols)?;
        let ntok = dy.len() / rows;
        let out = gpu.poisoned(ntok * cols);
        gpu.matmul_t(&m, &gpu.upload(dy), ntok, &out, false);
        gpu.read(&out)
    }

    /// `out + alpha · op(a)·op(b)` (`m × n`, inner size `k`).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_add(
        gpu: &Gpu,
        a: &[f32],
        b: &[f32],
        out: &[f32],
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Vec<f32>> {
        let o = gpu.upload(out);
        gpu.gemm_add(&gpu.upload(a), &gpu.upload(b), &o, (m, n, k), alpha, trans_a, trans_b);
        gpu.read(&o)
    }

    /// One AdamW step of a parameter on the device (step `t` from 1); the gradient is cleared.
    pub fn adamw(gpu: &Gpu, p: &mut Param, opt: &AdamW, lr: f32, t: usize, gscale: f32) -> Result<()> {
        let (value, grad, m, v) = (gpu.upload(&p.value), gpu.upload(&p.grad), gpu.upload(&p.m), gpu.upload(&p.v));
        gpu.adamw(&value, &grad, &m, &v, opt, lr, t, gscale);
        p.value = gpu.read(&value)?;
        p.grad = gpu.read(&grad)?;
        p.m = gpu.read(&m)?;
        p.v = gpu.read(&v)?;
        Ok(())
    }

    /// Training attention over packed rows (row `i` attends `starts[i]..=i`): `(o, lse)`, as
    /// `train::ops::attention_forward`. The inference kernel with pages of one position.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_train_forward(
        gpu: &Gpu,
        (n_head, n_head_kv, head_dim): (usize, usize, usize),
        q: &[f32],
        k: &[f32],
        v: &[f32],
        starts: &[usize],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let t = starts.len();
        let table: Vec<u32> = (0..t as u32).collect();
        let st: Vec<u32> = starts.iter().map(|&s| s as u32).collect();
        let pos: Vec<u32> = starts.iter().enumerate().map(|(i, &s)| (i - s) as u32).collect();
        let (out, lse) = (gpu.poisoned(q.len()), gpu.poisoned(t * n_head));
        gpu.attention(
            &gpu.upload(q),
            &gpu.upload(k),
            &gpu.upload(v),
            &gpu.upload_u32(&table),
            &gpu.upload_u32(&st),
            &gpu.upload_u32(&pos),
            &out,
            &lse,
            t,
            AttnShape { n_head, n_head_kv, head_dim, page: 1 },
        );
        Ok((gpu.read(&out)?, gpu.read(&lse)?))
    }

    /// Training attention backward (as `train::ops::attention_backward`): `(dq, dk, dv)` added to
    /// the given ones.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_train_backward(
        gpu: &Gpu,
        (n_head, n_head_kv, head_dim): (usize, usize, usize),
        [q, k, v, o, lse, d_o]: [&[f32]; 6],
        starts: &[usize],
        [dq, dk, dv]: [&[f32]; 3],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let t = starts.len();
        let ends = row_ends(starts);
        let st: Vec<u32> = starts.iter().map(|&s| s as u32).collect();
        let (gq, gk, gv) = (gpu.upload(dq), gpu.upload(dk), gpu.upload(dv));
        let up = |x: &[f32]| gpu.upload(x);
        gpu.attention_backward(
            [&up(q), &up(k), &up(v), &up(o), &up(d_o), &up(lse)],
            &gpu.upload_u32(&st),
            &gpu.upload_u32(&ends),
            [&gq, &gk, &gv],
            t,
            AttnShape { n_head, n_head_kv, head_dim, page: 1 },
        );
        Ok((gpu.read(&gq)?, gpu.read(&gk)?, gpu.read(&gv)?))
    }

    /// Writes rows into slots of a cache of `slots_total` rows of `width` (returns the cache).
    pub fn scatter(gpu: &Gpu, src: &[f32], slots: &[u32], slots_total: usize, width: usize) -> Result<Vec<f32>> {
        let cache = gpu.zeros(slots_total * width);
        gpu.scatter_rows(&gpu.upload(src), &gpu.upload_u32(slots), &cache, slots.len(), width);
        gpu.read(&cache)
    }
}

const _: () = assert!(ATTN_CHUNK >= ROW_THREADS);

fn argmax(v: &[f32]) -> TokenId {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
        as TokenId
}
