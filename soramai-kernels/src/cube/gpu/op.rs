//! Single-op entry points on host slices (upload, launch, read back), for the op test suite that
//! compares every kernel with the CPU reference.

use super::super::pack::pack;
use super::{AttnShape, Gpu, GpuMat, LoraBank, row_ends};
use crate::cpu::ops::RopeLayout;
use crate::error::{Error, Result};
use crate::train::{AdamW, Param};

/// The device's copy bandwidth in bytes per second (read plus written): 16 back-to-back copies of
/// `bytes` bytes between two syncs, the median of five such runs after a warm-up. The memory speed
/// the benchmark's bytes-moved floor divides by (keep `bytes` within the device's largest buffer:
/// 64 MiB fits everywhere).
pub fn copy_bandwidth(gpu: &Gpu, bytes: usize) -> Result<f64> {
    const COPIES: usize = 16;
    let src = gpu.zeros(bytes / 4);
    let dst = gpu.zeros(bytes / 4);
    gpu.copy_into(&src, &dst);
    gpu.sync()?;
    let mut times = Vec::with_capacity(5);
    for _ in 0..5 {
        let t = std::time::Instant::now();
        for _ in 0..COPIES {
            gpu.copy_into(&src, &dst);
        }
        gpu.sync()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((2 * COPIES * (bytes / 4 * 4)) as f64 / times[2].max(1e-9))
}

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

/// Biases, RoPE and the KV cache write of a step in one launch (the fused decode kernel): `q`, `k`
/// and `v` rows (`n_head·head_dim`, `n_head_kv·head_dim` values) in; the rotated Q and the two
/// caches of `slots_total` slots out.
#[allow(clippy::too_many_arguments)]
pub fn qkv_rope_scatter(
    gpu: &Gpu,
    qkv: [&[f32]; 3],
    bias: Option<[&[f32]; 3]>,
    cos: &[f32],
    sin: &[f32],
    slots: &[u32],
    slots_total: usize,
    shape: (usize, usize, usize, usize),
    layout: RopeLayout,
) -> Result<[Vec<f32>; 3]> {
    let (n_head, n_head_kv, head_dim, rope_dims) = shape;
    let kvd = n_head_kv * head_dim;
    let [q, k, v] = qkv.map(|x| gpu.upload(x));
    let bias = bias.map(|b| b.map(|x| gpu.upload(x)));
    let q_out = gpu.poisoned(q.len);
    let cache = [gpu.zeros(slots_total * kvd), gpu.zeros(slots_total * kvd)];
    let shape = AttnShape { n_head, n_head_kv, head_dim, page: 1 };
    gpu.qkv_rope_scatter(
        [&q, &k, &v],
        bias.as_ref(),
        &gpu.upload(cos),
        &gpu.upload(sin),
        &gpu.upload_u32(slots),
        &q_out,
        [&cache[0], &cache[1]],
        slots.len(),
        shape,
        rope_dims,
        layout,
    );
    Ok([gpu.read(&q_out)?, gpu.read(&cache[0])?, gpu.read(&cache[1])?])
}

/// Writes rows into slots of a cache of `slots_total` rows of `width` (returns the cache).
pub fn scatter(gpu: &Gpu, src: &[f32], slots: &[u32], slots_total: usize, width: usize) -> Result<Vec<f32>> {
    let cache = gpu.zeros(slots_total * width);
    gpu.scatter_rows(&gpu.upload(src), &gpu.upload_u32(slots), &cache, slots.len(), width);
    gpu.read(&cache)
}

/// Rows `tokens[base..base + n]` of a `rows × cols` matrix in GGUF format `ty`, embedded on the
/// device. Ids past the matrix or a window past the ids are refused.
pub fn embed(
    gpu: &Gpu,
    ty: crate::quant::GgmlType,
    w: &[u8],
    (rows, cols): (usize, usize),
    tokens: &[u32],
    base: usize,
    n: usize,
) -> Result<Vec<f32>> {
    let window = base.checked_add(n).and_then(|end| tokens.get(base..end));
    let Some(window) = window else {
        return Err(Error::Request(format!("ids {base}..{base}+{n} are past the {} given", tokens.len())));
    };
    if let Some(t) = window.iter().find(|&&t| t as usize >= rows) {
        return Err(Error::Request(format!("token id {t} is past the matrix's {rows} rows")));
    }
    let m = GpuMat::from_packed(gpu, pack(ty, w, rows, cols)?, rows, cols)?;
    let out = gpu.poisoned(n * cols);
    gpu.embed(&m, &gpu.upload_u32(tokens), base, &out, n);
    gpu.read(&out)
}

/// The device's greedy choice for each row of `vocab` logits, written at `base..` of a buffer of
/// `base + rows` ids (the ones before `base` are left as they were: `u32::MAX`). Logits that are
/// not whole rows are refused.
pub fn argmax(gpu: &Gpu, z: &[f32], vocab: usize, base: usize) -> Result<Vec<u32>> {
    if vocab == 0 || z.is_empty() || !z.len().is_multiple_of(vocab) {
        return Err(Error::Request(format!("{} logits are no whole rows of {vocab}", z.len())));
    }
    let nrows = z.len() / vocab;
    let out = gpu.upload_u32(&vec![u32::MAX; base + nrows]);
    gpu.argmax(&gpu.upload(z), &out, nrows, vocab, base);
    gpu.read_u32(&out)
}
