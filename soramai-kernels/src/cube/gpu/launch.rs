//! One launcher per kernel: shapes checked on the host, cube counts chosen, arguments bound.

use cubecl::prelude::*;

use super::super::kernels::{ATTN_CHUNK, LANES, ROW_THREADS, ROWS_PER_CUBE};
use super::device::launch;
use super::{Buf, Gpu, GpuMat, GpuWeights, LoraBank};
use crate::cpu::ops::RopeLayout;
use crate::train::AdamW;

/// Values per partial sum of [`kernels::sum_squares`].
pub(super) const SUM_BLOCK: usize = 4096;

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

impl Gpu {
    /// `out (ntok × rows) (+)= x (ntok × cols) · Wᵀ`.
    pub(crate) fn matmul(&self, w: &GpuMat, x: &Buf, ntok: usize, out: &Buf, accumulate: bool) {
        // Many tokens: the shared-memory tiled product (64 rows × 32 tokens per cube).
        if ntok >= TILED_MIN_TOKENS
            && let GpuWeights::Quant { bits, scales, mins, quants } = &w.data
        {
            launch!(
                self,
                matmul_q_tiled,
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
            GpuWeights::Quant { bits, scales, mins, quants } => launch!(
                self,
                matmul_q,
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
            GpuWeights::F32(m) => launch!(
                self,
                matmul_f32,
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

    /// The Q, K and V products of a small step (fewer than [`TILED_MIN_TOKENS`] tokens) in one
    /// launch, when the three weights are block-quantized alike; `false` (nothing launched) when
    /// they are not, and the caller runs three products.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul_qkv(&self, w: [&GpuMat; 3], x: &Buf, ntok: usize, q: &Buf, k: &Buf, v: &Buf) -> bool {
        let (
            GpuWeights::Quant { bits, scales: sa, mins: ma, quants: qa },
            GpuWeights::Quant { bits: bk, scales: sb, mins: mb, quants: qb },
            GpuWeights::Quant { bits: bv, scales: sc, mins: mc, quants: qc },
        ) = (&w[0].data, &w[1].data, &w[2].data)
        else {
            return false;
        };
        if ntok >= TILED_MIN_TOKENS || bits != bk || bits != bv || w[1].cols != w[0].cols || w[2].cols != w[0].cols {
            return false;
        }
        let tile: u32 = if ntok == 1 { 1 } else { 8 };
        let rows = w[0].rows + w[1].rows + w[2].rows;
        launch!(
            self,
            matmul_q3,
            CubeCount::Static(Self::cubes(rows, ROWS_PER_CUBE), Self::cubes(ntok, tile), 1),
            CubeDim::new_2d(LANES, ROWS_PER_CUBE),
            sa.arg(),
            ma.arg(),
            qa.arg(),
            sb.arg(),
            mb.arg(),
            qb.arg(),
            sc.arg(),
            mc.arg(),
            qc.arg(),
            x.arg(),
            q.arg(),
            k.arg(),
            v.arg(),
            w[0].rows as u32,
            w[1].rows as u32,
            w[2].rows as u32,
            (w[0].cols / 32) as u32,
            ntok as u32,
            *bits,
            tile,
        );
        true
    }

    /// `out = silu(gate·x) · (up·x)` for a small step in one launch, when both weights are
    /// block-quantized alike; `false` (nothing launched) otherwise.
    pub(crate) fn matmul_swiglu(&self, gate: &GpuMat, up: &GpuMat, x: &Buf, ntok: usize, out: &Buf) -> bool {
        let (
            GpuWeights::Quant { bits, scales: sg, mins: mg, quants: qg },
            GpuWeights::Quant { bits: bu, scales: su, mins: mu, quants: qu },
        ) = (&gate.data, &up.data)
        else {
            return false;
        };
        if ntok >= TILED_MIN_TOKENS || bits != bu || gate.rows != up.rows || gate.cols != up.cols {
            return false;
        }
        let tile: u32 = if ntok == 1 { 1 } else { 8 };
        launch!(
            self,
            matmul_q_swiglu,
            CubeCount::Static(Self::cubes(gate.rows, ROWS_PER_CUBE), Self::cubes(ntok, tile), 1),
            CubeDim::new_2d(LANES, ROWS_PER_CUBE),
            sg.arg(),
            mg.arg(),
            qg.arg(),
            su.arg(),
            mu.arg(),
            qu.arg(),
            x.arg(),
            out.arg(),
            gate.rows as u32,
            (gate.cols / 32) as u32,
            ntok as u32,
            *bits,
            tile,
        );
        true
    }

    /// Biases (if any), RoPE on Q and K, rotated Q into `q_out`, K and V into their cache slots:
    /// one launch for what the trainer's forward does in seven.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn qkv_rope_scatter(
        &self,
        qkv: [&Buf; 3],
        bias: Option<&[Buf; 3]>,
        cos: &Buf,
        sin: &Buf,
        slots: &Buf,
        q_out: &Buf,
        cache: [&Buf; 2],
        n: usize,
        shape: AttnShape,
        rope_dims: usize,
        layout: RopeLayout,
    ) {
        let (qd, kvd) = (shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim);
        // Without biases the kernel reads none: any buffer stands in.
        let [bq, bk, bv] = match bias {
            Some([bq, bk, bv]) => [bq, bk, bv],
            None => [qkv[0], qkv[0], qkv[0]],
        };
        launch!(
            self,
            qkv_rope_scatter,
            Self::cubes_1d(n * (qd + 2 * kvd), 256),
            CubeDim::new_1d(256),
            qkv[0].arg(),
            qkv[1].arg(),
            qkv[2].arg(),
            bq.arg(),
            bk.arg(),
            bv.arg(),
            cos.arg(),
            sin.arg(),
            slots.arg(),
            q_out.arg(),
            cache[0].arg(),
            cache[1].arg(),
            n as u32,
            qd as u32,
            kvd as u32,
            shape.head_dim as u32,
            rope_dims as u32,
            layout == RopeLayout::Neox,
            bias.is_some(),
        );
    }

    /// `x[r] = w[tokens[base + r]]` for `n` rows: the embedding rows of token ids that are on
    /// the device (uploaded, or chosen there by [`Gpu::argmax`]).
    pub(crate) fn embed(&self, w: &GpuMat, tokens: &Buf, base: usize, x: &Buf, n: usize) {
        let count = Self::cubes_1d(n * w.cols, 256);
        match &w.data {
            GpuWeights::Quant { bits, scales, mins, quants } => launch!(
                self,
                embed_q,
                count,
                CubeDim::new_1d(256),
                scales.arg(),
                mins.arg(),
                quants.arg(),
                tokens.arg(),
                x.arg(),
                base as u32,
                n as u32,
                (w.cols / 32) as u32,
                *bits,
            ),
            GpuWeights::F32(m) => launch!(
                self,
                embed_f32,
                count,
                CubeDim::new_1d(256),
                m.arg(),
                tokens.arg(),
                x.arg(),
                base as u32,
                n as u32,
                w.cols as u32,
            ),
        }
    }

    /// `tokens[base + r] = argmax z[r]` for `nrows` rows of `vocab` logits (the first index of the
    /// largest, as the host's greedy choice).
    pub(crate) fn argmax(&self, z: &Buf, tokens: &Buf, nrows: usize, vocab: usize, base: usize) {
        launch!(
            self,
            argmax_rows,
            Self::cubes_1d(nrows, 1),
            CubeDim::new_1d(ROW_THREADS),
            z.arg(),
            tokens.arg(),
            vocab as u32,
            nrows as u32,
            base as u32,
        );
    }

    pub(crate) fn rms_norm(&self, x: &Buf, w: &Buf, out: &Buf, nrows: usize, eps: f32) {
        launch!(
            self,
            rms_norm,
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
        launch!(
            self,
            rope,
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
        launch!(self, swiglu, Self::cubes_1d(n, 256), CubeDim::new_1d(256), g.arg(), u.arg(), n as u32);
    }

    pub(crate) fn add_bias(&self, x: &Buf, bias: &Buf, n: usize) {
        launch!(
            self,
            add_bias,
            Self::cubes_1d(n, 256),
            CubeDim::new_1d(256),
            x.arg(),
            bias.arg(),
            n as u32,
            bias.len as u32,
        );
    }

    pub(crate) fn softmax(&self, x: &Buf, nrows: usize, d: usize) {
        launch!(self, softmax, Self::cubes_1d(nrows, 1), CubeDim::new_1d(ROW_THREADS), x.arg(), d as u32, nrows as u32,);
    }

    pub(crate) fn scatter_rows(&self, src: &Buf, slots: &Buf, cache: &Buf, n: usize, width: usize) {
        launch!(
            self,
            scatter_rows,
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
        launch!(
            self,
            attention,
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
        launch!(
            self,
            lora_shrink,
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
        launch!(
            self,
            lora_expand,
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
            launch!(
                self,
                matmul_t_q_tiled,
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
            GpuWeights::Quant { bits, scales, mins, quants } => launch!(
                self,
                matmul_t_q,
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
            GpuWeights::F32(m) => launch!(
                self,
                matmul_t_f32,
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
        launch!(
            self,
            rms_norm_backward,
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
        launch!(
            self,
            swiglu_backward,
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
        launch!(
            self,
            gemm_add,
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
        launch!(
            self,
            adamw,
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
        launch!(
            self,
            attention_backward_q,
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
        launch!(
            self,
            attention_backward_kv,
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

const _: () = assert!(ATTN_CHUNK >= ROW_THREADS);
