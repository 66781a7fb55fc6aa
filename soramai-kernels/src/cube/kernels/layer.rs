//! The forward ops of a transformer layer besides the matrix products: RMSNorm, RoPE, SwiGLU,
//! biases, softmax, the paged KV cache's scatter, attention, and the LoRA shrink/expand pair.

use cubecl::prelude::*;

/// RMSNorm of each row (`d` values): `out = x / sqrt(mean(x²) + eps) · w`. One cube per row.
#[cube(launch)]
pub fn rms_norm(x: &Array<f32>, w: &Array<f32>, out: &mut Array<f32>, d: u32, eps: f32, nrows: u32) {
    let tid = UNIT_POS_X;
    // Cubes past the last row (a 2-D launch rounds up) redo the last row and write nothing.
    let live = (CUBE_POS as u32) < nrows;
    let row = u32::min(CUBE_POS as u32, nrows - 1);
    let mut shared = SharedMemory::<f32>::new(128usize);
    let mut ss = 0.0f32;
    let mut c = tid;
    while c < d {
        let v = x[(row * d + c) as usize];
        ss += v * v;
        c += 128u32;
    }
    shared[tid as usize] = ss;
    sync_cube();
    let mut stride = 64u32;
    while stride > 0 {
        if tid < stride {
            let a = shared[(tid + stride) as usize];
            shared[tid as usize] += a;
        }
        sync_cube();
        stride /= 2;
    }
    let inv = 1.0f32 / f32::sqrt(shared[0] / f32::cast_from(d) + eps);
    let mut c = tid;
    while c < d {
        let i = (row * d + c) as usize;
        if live {
            out[i] = x[i] * inv * w[c as usize];
        }
        c += 128u32;
    }
}

/// Rotates the first `rope_dims` values of every head of every row in place, with per-row angles
/// (`cos`/`sin`: `rope_dims / 2` per row). `neox`: pairs `(i, i + half)`, else `(2i, 2i + 1)`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &mut Array<f32>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    nrows: u32,
    heads: u32,
    head_dim: u32,
    rope_dims: u32,
    #[comptime] neox: bool,
) {
    let half = rope_dims / 2;
    let i = ABSOLUTE_POS as u32;
    if i < nrows * heads * half {
        let j = i % half;
        let h = (i / half) % heads;
        let r = i / (half * heads);
        let base = r * heads * head_dim + h * head_dim;
        let (a, b) = if neox { (base + j, base + j + half) } else { (base + 2 * j, base + 2 * j + 1) };
        let c = cos[(r * half + j) as usize];
        let s = sin[(r * half + j) as usize];
        let x0 = x[a as usize];
        let x1 = x[b as usize];
        x[a as usize] = x0 * c - x1 * s;
        x[b as usize] = x0 * s + x1 * c;
    }
}

/// `g = silu(g) · u`, element-wise.
#[cube(launch)]
pub fn swiglu(g: &mut Array<f32>, u: &Array<f32>, n: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let v = g[i as usize];
        g[i as usize] = v / (1.0f32 + f32::exp(-v)) * u[i as usize];
    }
}

/// `x += y + bias[i % width]` (residuals; `width` 0 skips the bias).
#[cube(launch)]
pub fn add_bias(x: &mut Array<f32>, bias: &Array<f32>, n: u32, width: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        x[i as usize] += bias[(i % width) as usize];
    }
}

/// Softmax of each row of `d` values in place. One cube per row.
#[cube(launch)]
pub fn softmax(x: &mut Array<f32>, d: u32, nrows: u32) {
    let tid = UNIT_POS_X;
    // Cubes past the last row (a 2-D launch rounds up) would race on the last row: they only
    // take part in the barriers.
    let live = (CUBE_POS as u32) < nrows;
    let row = u32::min(CUBE_POS as u32, nrows - 1);
    let mut shared = SharedMemory::<f32>::new(128usize);
    let mut m = f32::new(-3.0e38);
    let mut c = tid;
    while c < d {
        m = f32::max(m, x[(row * d + c) as usize]);
        c += 128u32;
    }
    shared[tid as usize] = m;
    sync_cube();
    let mut stride = 64u32;
    while stride > 0 {
        if tid < stride {
            let a = shared[(tid + stride) as usize];
            let b = shared[tid as usize];
            shared[tid as usize] = f32::max(a, b);
        }
        sync_cube();
        stride /= 2;
    }
    let top = shared[0];
    sync_cube();
    let mut s = 0.0f32;
    let mut c = tid;
    while c < d {
        s += f32::exp(x[(row * d + c) as usize] - top);
        c += 128u32;
    }
    shared[tid as usize] = s;
    sync_cube();
    let mut stride = 64u32;
    while stride > 0 {
        if tid < stride {
            let a = shared[(tid + stride) as usize];
            shared[tid as usize] += a;
        }
        sync_cube();
        stride /= 2;
    }
    let inv = 1.0f32 / shared[0];
    let mut c = tid;
    while c < d {
        let i = (row * d + c) as usize;
        if live {
            x[i] = f32::exp(x[i] - top) * inv;
        }
        c += 128u32;
    }
}

/// Writes each new row's keys or values (`width` values) into its slot of the paged cache.
#[cube(launch)]
pub fn scatter_rows(src: &Array<f32>, slots: &Array<u32>, cache: &mut Array<f32>, n: u32, width: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n * width {
        let r = i / width;
        let c = i % width;
        let slot = slots[r as usize];
        cache[(slot * width + c) as usize] = src[i as usize];
    }
}

/// Causal attention with grouped KV heads over a paged cache. One cube per (row, query head);
/// row `r` attends to positions `0..=pos[r]` of its sequence, whose pages are
/// `table[table_start[r]..]` (`page` positions each). Also writes each (row, head)'s log-sum-exp of
/// the scaled scores to `lse` (the training backward rebuilds the probabilities from it). Scores are taken `ATTN_CHUNK` at a time with
/// a running maximum and sum, so any context length works; each thread owns output dimensions
/// `tid, tid + ROW_THREADS, …` (`head_dim` ≤ `ROW_THREADS · dims_per_thread`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &Array<f32>,
    k_cache: &Array<f32>,
    v_cache: &Array<f32>,
    table: &Array<u32>,
    table_start: &Array<u32>,
    pos: &Array<u32>,
    out: &mut Array<f32>,
    lse: &mut Array<f32>,
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    page: u32,
    scale: f32,
    #[comptime] dims_per_thread: u32,
) {
    let tid = UNIT_POS_X;
    let r = CUBE_POS_Y;
    let h = CUBE_POS_X;
    let kvh = h / (n_head / n_head_kv);
    let kv_dim = n_head_kv * head_dim;
    let len = pos[r as usize] + 1;
    let start = table_start[r as usize];
    let qo = (r * n_head + h) * head_dim;
    let mut scores = SharedMemory::<f32>::new(1024usize);
    let mut red = SharedMemory::<f32>::new(128usize);
    let mut acc = Array::<f32>::new(dims_per_thread as usize);
    #[unroll]
    for j in 0..dims_per_thread {
        acc[j as usize] = 0.0;
    }
    let mut run_max = f32::new(-3.0e38);
    let mut run_sum = 0.0f32;
    let mut c0 = 0u32;
    while c0 < len {
        let clen = u32::min(1024u32, len - c0);
        // Scores of this chunk, one position per thread at a time.
        let mut p = tid;
        let mut local_max = f32::new(-3.0e38);
        while p < clen {
            let gp = c0 + p;
            let slot = table[(start + gp / page) as usize] * page + gp % page;
            let ko = slot * kv_dim + kvh * head_dim;
            let mut s = 0.0f32;
            let mut d = 0u32;
            while d < head_dim {
                s += q[(qo + d) as usize] * k_cache[(ko + d) as usize];
                d += 1;
            }
            s *= scale;
            scores[p as usize] = s;
            local_max = f32::max(local_max, s);
            p += 128u32;
        }
        red[tid as usize] = local_max;
        sync_cube();
        let mut stride = 64u32;
        while stride > 0 {
            if tid < stride {
                let a = red[(tid + stride) as usize];
                let b = red[tid as usize];
                red[tid as usize] = f32::max(a, b);
            }
            sync_cube();
            stride /= 2;
        }
        let new_max = f32::max(run_max, red[0]);
        sync_cube();
        let rescale = f32::exp(run_max - new_max);
        let mut p = tid;
        let mut local_sum = 0.0f32;
        while p < clen {
            let e = f32::exp(scores[p as usize] - new_max);
            scores[p as usize] = e;
            local_sum += e;
            p += 128u32;
        }
        red[tid as usize] = local_sum;
        sync_cube();
        let mut stride = 64u32;
        while stride > 0 {
            if tid < stride {
                let a = red[(tid + stride) as usize];
                red[tid as usize] += a;
            }
            sync_cube();
            stride /= 2;
        }
        run_sum = run_sum * rescale + red[0];
        run_max = new_max;
        #[unroll]
        for j in 0..dims_per_thread {
            let d = tid + j * 128u32;
            if d < head_dim {
                let mut a = acc[j as usize] * rescale;
                let mut p = 0u32;
                while p < clen {
                    let gp = c0 + p;
                    let slot = table[(start + gp / page) as usize] * page + gp % page;
                    a += scores[p as usize] * v_cache[(slot * kv_dim + kvh * head_dim + d) as usize];
                    p += 1;
                }
                acc[j as usize] = a;
            }
        }
        sync_cube();
        c0 += 1024u32;
    }
    let inv = 1.0f32 / run_sum;
    #[unroll]
    for j in 0..dims_per_thread {
        let d = tid + j * 128u32;
        if d < head_dim {
            out[(qo + d) as usize] = acc[j as usize] * inv;
        }
    }
    if tid == 0 {
        lse[(r * n_head + h) as usize] = run_max + f32::ln(run_sum);
    }
}

/// LoRA shrink for a batch whose rows use different adapters (BGMV): `tmp[r][j] = Σ_c
/// a[slot(r)][j][c]·x[r][c]`, `slot` `u32::MAX` for none (then 0). `a` stacks every loaded
/// adapter's `A` padded to `rank` rows. One thread per (row, j).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn lora_shrink(
    x: &Array<f32>,
    a: &Array<f32>,
    slot: &Array<u32>,
    tmp: &mut Array<f32>,
    n: u32,
    rank: u32,
    cols: u32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < n * rank {
        let r = i / rank;
        let j = i % rank;
        let s = slot[r as usize];
        let mut acc = 0.0f32;
        if s != u32::MAX {
            let ao = (s * rank + j) * cols;
            let xo = r * cols;
            let mut c = 0u32;
            while c < cols {
                acc += a[(ao + c) as usize] * x[(xo + c) as usize];
                c += 1;
            }
        }
        tmp[i as usize] = acc;
    }
}

/// LoRA expand: `out[r][o] += scale[slot(r)] · Σ_j b[slot(r)][o][j]·tmp[r][j]`. One thread per
/// (row, o).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn lora_expand(
    tmp: &Array<f32>,
    b: &Array<f32>,
    scales: &Array<f32>,
    slot: &Array<u32>,
    out: &mut Array<f32>,
    n: u32,
    rank: u32,
    rows: u32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < n * rows {
        let r = i / rows;
        let o = i % rows;
        let s = slot[r as usize];
        if s != u32::MAX {
            let bo = (s * rows + o) * rank;
            let to = r * rank;
            let mut acc = 0.0f32;
            let mut j = 0u32;
            while j < rank {
                acc += b[(bo + j) as usize] * tmp[(to + j) as usize];
                j += 1;
            }
            out[i as usize] += scales[s as usize] * acc;
        }
    }
}
