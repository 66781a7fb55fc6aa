//! The cubecl kernels. Activations are f32; weights stay in 4- or 8-bit blocks of 32 with an f32
//! scale and offset per block (`w = d·q + m`), unpacked in registers.
//!
//! Reductions use shared memory and `sync_cube` only (no plane intrinsics), so every kernel runs
//! the same on CUDA and on any Vulkan device, software ones included.

use cubecl::prelude::*;

/// Threads per output row in the matrix products (one plane on NVIDIA).
pub const LANES: u32 = 32;
/// Output rows per cube in the matrix products.
pub const ROWS_PER_CUBE: u32 = 8;
/// Threads per cube of the row-wise kernels (norms, attention).
pub const ROW_THREADS: u32 = 128;
/// Key positions scored per pass of the attention kernel (shared memory).
pub const ATTN_CHUNK: u32 = 1024;

/// `out[t][r] (+)= Σ_c w[r][c]·x[t][c]` for block-quantized weights, `bits` 4 or 8. 4-bit:
/// `quants` holds 4 words per block, byte `i` of the 16 carrying weight `i` (low nibble) and
/// `i + 16` (high nibble); 8-bit: 8 words per block, byte `i` carrying weight `i`. Cube:
/// `ROWS_PER_CUBE` rows × `LANES` lanes; cube y: a tile of `tile` tokens.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn matmul_q(
    scales: &[f32],
    mins: &[f32],
    quants: &[u32],
    x: &[f32],
    out: &mut [f32],
    rows: u32,
    nblocks: u32,
    ntok: u32,
    #[comptime] bits: u32,
    #[comptime] tile: u32,
    #[comptime] accumulate: bool,
) {
    let lane = UNIT_POS_X;
    let row = CUBE_POS_X * 8u32 + UNIT_POS_Y;
    let t0 = CUBE_POS_Y * tile;
    let cols = nblocks * 32;
    let mut shared = Shared::<[f32]>::new_slice(256usize);
    let mut acc = Array::<f32>::new(tile as usize);
    #[unroll]
    for t in 0..tile {
        acc[t as usize] = 0.0;
    }
    if row < rows {
        let mut b = lane;
        while b < nblocks {
            let bi = row * nblocks + b;
            let d = scales[bi as usize];
            let m = mins[bi as usize];
            #[unroll]
            for t in 0..tile {
                if t0 + t < ntok {
                    let xo = (t0 + t) * cols + b * 32;
                    let mut dot = 0.0f32;
                    let mut xs = 0.0f32;
                    #[unroll]
                    for k in 0..bits {
                        let q = quants[(bi * bits + k) as usize];
                        #[unroll]
                        for i in 0..4u32 {
                            if bits == 4 {
                                let lo = f32::cast_from((q >> (8 * i)) & 15u32);
                                let hi = f32::cast_from((q >> (8 * i + 4)) & 15u32);
                                let xl = x[(xo + 4 * k + i) as usize];
                                let xh = x[(xo + 4 * k + i + 16) as usize];
                                dot += lo * xl + hi * xh;
                                xs += xl + xh;
                            } else {
                                let v = f32::cast_from((q >> (8 * i)) & 255u32);
                                let xv = x[(xo + 4 * k + i) as usize];
                                dot += v * xv;
                                xs += xv;
                            }
                        }
                    }
                    acc[t as usize] += d * dot + m * xs;
                }
            }
            b += 32u32;
        }
    }
    let base = UNIT_POS_Y * 32u32;
    #[unroll]
    for t in 0..tile {
        shared[(base + lane) as usize] = acc[t as usize];
        sync_cube();
        let mut stride = 16u32;
        while stride > 0 {
            if lane < stride {
                let a = shared[(base + lane + stride) as usize];
                shared[(base + lane) as usize] += a;
            }
            sync_cube();
            stride /= 2;
        }
        if lane == 0 && row < rows && t0 + t < ntok {
            let o = ((t0 + t) * rows + row) as usize;
            if accumulate {
                out[o] += shared[base as usize];
            } else {
                out[o] = shared[base as usize];
            }
        }
        sync_cube();
    }
}

/// Code `j` (0..32) of block `bi` in the layouts of [`matmul_q`]: 4-bit, byte `j % 16` of the
/// block's 4 words, low nibble for `j < 16`; 8-bit, byte `j` of its 8 words.
#[cube]
fn block_code(quants: &[u32], bi: u32, j: u32, #[comptime] bits: u32) -> u32 {
    if bits == 4 {
        let byte = j % 16u32;
        let word = quants[(bi * 4u32 + byte / 4u32) as usize];
        (word >> (8u32 * (byte % 4u32) + (j / 16u32) * 4u32)) & 15u32
    } else {
        let word = quants[(bi * 8u32 + j / 4u32) as usize];
        (word >> (8u32 * (j % 4u32))) & 255u32
    }
}

/// Block-quantized matrix product for many tokens, tiled through shared memory: a cube computes
/// 64 rows × 32 tokens, stepping through the blocks of 32 columns; each step dequantizes the 64 ×
/// 32 weights once (`bits` 4 or 8: the layouts of [`matmul_q`]) and stages the 32
/// tokens' activations, then each thread accumulates 4 rows × 2 tokens from shared memory.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn matmul_q_tiled(
    scales: &[f32],
    mins: &[f32],
    quants: &[u32],
    x: &[f32],
    out: &mut [f32],
    rows: u32,
    nblocks: u32,
    ntok: u32,
    #[comptime] bits: u32,
    #[comptime] accumulate: bool,
) {
    let u = UNIT_POS_X;
    let tx = u % 16u32;
    let ty = u / 16u32;
    let r0 = CUBE_POS_X * 64u32;
    let t0 = CUBE_POS_Y * 32u32;
    let cols = nblocks * 32u32;
    let mut wsh = Shared::<[f32]>::new_slice(2112usize);
    let mut xsh = Shared::<[f32]>::new_slice(1056usize);
    let mut acc = Array::<f32>::new(8usize);
    #[unroll]
    for i in 0..8u32 {
        acc[i as usize] = 0.0;
    }
    // This thread's share of the loads.
    let lrow = u / 4u32;
    let part = u % 4u32;
    let xtok = u / 8u32;
    let xcol = (u % 8u32) * 4u32;
    let mut b = 0u32;
    while b < nblocks {
        let grow = r0 + lrow;
        if grow < rows {
            let bi = grow * nblocks + b;
            let d = scales[bi as usize];
            let m = mins[bi as usize];
            #[unroll]
            for e in 0..8u32 {
                let q = block_code(quants, bi, part * 8u32 + e, bits);
                wsh[(lrow * 33u32 + part * 8u32 + e) as usize] = d * f32::cast_from(q) + m;
            }
        } else {
            #[unroll]
            for e in 0..8u32 {
                wsh[(lrow * 33u32 + part * 8u32 + e) as usize] = 0.0;
            }
        }
        let gt = t0 + xtok;
        #[unroll]
        for e in 0..4u32 {
            let v = if gt < ntok { x[(gt * cols + b * 32u32 + xcol + e) as usize] } else { 0.0f32 };
            xsh[(xtok * 33u32 + xcol + e) as usize] = v;
        }
        sync_cube();
        let mut c = 0u32;
        while c < 32u32 {
            let w0 = wsh[((ty * 4u32) * 33u32 + c) as usize];
            let w1 = wsh[((ty * 4u32 + 1u32) * 33u32 + c) as usize];
            let w2 = wsh[((ty * 4u32 + 2u32) * 33u32 + c) as usize];
            let w3 = wsh[((ty * 4u32 + 3u32) * 33u32 + c) as usize];
            let xa = xsh[((tx * 2u32) * 33u32 + c) as usize];
            let xb = xsh[((tx * 2u32 + 1u32) * 33u32 + c) as usize];
            acc[0] += w0 * xa;
            acc[1] += w0 * xb;
            acc[2] += w1 * xa;
            acc[3] += w1 * xb;
            acc[4] += w2 * xa;
            acc[5] += w2 * xb;
            acc[6] += w3 * xa;
            acc[7] += w3 * xb;
            c += 1u32;
        }
        sync_cube();
        b += 1u32;
    }
    #[unroll]
    for i in 0..8u32 {
        let row = r0 + ty * 4u32 + i / 2u32;
        let tok = t0 + tx * 2u32 + i % 2u32;
        if row < rows && tok < ntok {
            let o = (tok * rows + row) as usize;
            if accumulate {
                out[o] += acc[i as usize];
            } else {
                out[o] = acc[i as usize];
            }
        }
    }
}

/// As [`matmul_q`] for f32 weights (`rows × cols`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32(
    w: &[f32],
    x: &[f32],
    out: &mut [f32],
    rows: u32,
    cols: u32,
    ntok: u32,
    #[comptime] tile: u32,
    #[comptime] accumulate: bool,
) {
    let lane = UNIT_POS_X;
    let row = CUBE_POS_X * 8u32 + UNIT_POS_Y;
    let t0 = CUBE_POS_Y * tile;
    let mut shared = Shared::<[f32]>::new_slice(256usize);
    let mut acc = Array::<f32>::new(tile as usize);
    #[unroll]
    for t in 0..tile {
        acc[t as usize] = 0.0;
    }
    if row < rows {
        let mut c = lane;
        while c < cols {
            let wv = w[(row * cols + c) as usize];
            #[unroll]
            for t in 0..tile {
                if t0 + t < ntok {
                    acc[t as usize] += wv * x[((t0 + t) * cols + c) as usize];
                }
            }
            c += 32u32;
        }
    }
    let base = UNIT_POS_Y * 32u32;
    #[unroll]
    for t in 0..tile {
        shared[(base + lane) as usize] = acc[t as usize];
        sync_cube();
        let mut stride = 16u32;
        while stride > 0 {
            if lane < stride {
                let a = shared[(base + lane + stride) as usize];
                shared[(base + lane) as usize] += a;
            }
            sync_cube();
            stride /= 2;
        }
        if lane == 0 && row < rows && t0 + t < ntok {
            let o = ((t0 + t) * rows + row) as usize;
            if accumulate {
                out[o] += shared[base as usize];
            } else {
                out[o] = shared[base as usize];
            }
        }
        sync_cube();
    }
}

/// RMSNorm of each row (`d` values): `out = x / sqrt(mean(x²) + eps) · w`. One cube per row.
#[cube(launch)]
pub fn rms_norm(x: &[f32], w: &[f32], out: &mut [f32], d: u32, eps: f32, nrows: u32) {
    let tid = UNIT_POS_X;
    // Cubes past the last row (a 2-D launch rounds up) redo the last row and write nothing.
    let live = (CUBE_POS as u32) < nrows;
    let row = u32::min(CUBE_POS as u32, nrows - 1);
    let mut shared = Shared::<[f32]>::new_slice(128usize);
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
    x: &mut [f32],
    cos: &[f32],
    sin: &[f32],
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
pub fn swiglu(g: &mut [f32], u: &[f32], n: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let v = g[i as usize];
        g[i as usize] = v / (1.0f32 + f32::exp(-v)) * u[i as usize];
    }
}

/// `x += y + bias[i % width]` (residuals; `width` 0 skips the bias).
#[cube(launch)]
pub fn add_bias(x: &mut [f32], bias: &[f32], n: u32, width: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        x[i as usize] += bias[(i % width) as usize];
    }
}

/// Softmax of each row of `d` values in place. One cube per row.
#[cube(launch)]
pub fn softmax(x: &mut [f32], d: u32, nrows: u32) {
    let tid = UNIT_POS_X;
    // Cubes past the last row (a 2-D launch rounds up) would race on the last row: they only
    // take part in the barriers.
    let live = (CUBE_POS as u32) < nrows;
    let row = u32::min(CUBE_POS as u32, nrows - 1);
    let mut shared = Shared::<[f32]>::new_slice(128usize);
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
pub fn scatter_rows(src: &[f32], slots: &[u32], cache: &mut [f32], n: u32, width: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n * width {
        let r = i / width;
        let c = i % width;
        cache[(slots[r as usize] * width + c) as usize] = src[i as usize];
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
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    table: &[u32],
    table_start: &[u32],
    pos: &[u32],
    out: &mut [f32],
    lse: &mut [f32],
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
    let mut scores = Shared::<[f32]>::new_slice(1024usize);
    let mut red = Shared::<[f32]>::new_slice(128usize);
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
pub fn lora_shrink(x: &[f32], a: &[f32], slot: &[u32], tmp: &mut [f32], n: u32, rank: u32, cols: u32) {
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
    tmp: &[f32],
    b: &[f32],
    scales: &[f32],
    slot: &[u32],
    out: &mut [f32],
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

// ---- Backward ops of the QLoRA trainer (see `crate::train::ops`). ----

/// RMSNorm backward over rows, *adding* into `dx`: `dx_j += s·w_j·dy_j − x_j·s³/n·Σ x·w·dy`.
/// One cube per row.
#[cube(launch)]
pub fn rms_norm_backward(x: &[f32], w: &[f32], dy: &[f32], dx: &mut [f32], d: u32, eps: f32, nrows: u32) {
    let tid = UNIT_POS_X;
    let live = (CUBE_POS as u32) < nrows;
    let row = u32::min(CUBE_POS as u32, nrows - 1);
    let mut ss = Shared::<[f32]>::new_slice(128usize);
    let mut dot = Shared::<[f32]>::new_slice(128usize);
    let mut a = 0.0f32;
    let mut b = 0.0f32;
    let mut c = tid;
    while c < d {
        let i = (row * d + c) as usize;
        let v = x[i];
        a += v * v;
        b += v * w[c as usize] * dy[i];
        c += 128u32;
    }
    ss[tid as usize] = a;
    dot[tid as usize] = b;
    sync_cube();
    let mut stride = 64u32;
    while stride > 0 {
        if tid < stride {
            let p = ss[(tid + stride) as usize];
            let q = dot[(tid + stride) as usize];
            ss[tid as usize] += p;
            dot[tid as usize] += q;
        }
        sync_cube();
        stride /= 2;
    }
    let n = f32::cast_from(d);
    let s = 1.0f32 / f32::sqrt(ss[0] / n + eps);
    let k = s * s * s * dot[0] / n;
    let mut c = tid;
    while c < d {
        let i = (row * d + c) as usize;
        if live {
            dx[i] += s * w[c as usize] * dy[i] - k * x[i];
        }
        c += 128u32;
    }
}

/// SwiGLU backward: `dg = dh·u·σ(g)·(1 + g·(1 − σ(g)))`, `du = dh·silu(g)` (written).
#[cube(launch)]
pub fn swiglu_backward(g: &[f32], u: &[f32], dh: &[f32], dg: &mut [f32], du: &mut [f32], n: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let gv = g[i as usize];
        let s = 1.0f32 / (1.0f32 + f32::exp(-gv));
        let h = dh[i as usize];
        dg[i as usize] = h * u[i as usize] * s * (1.0f32 + gv * (1.0f32 - s));
        du[i as usize] = h * gv * s;
    }
}

/// Input gradient through a frozen block-quantized weight (`bits` 4 or 8, the layouts of
/// [`matmul_q`]): `dx[t][c] (+)= Σ_r w[r][c]·dy[t][r]`. One thread per (t, c).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn matmul_t_q(
    scales: &[f32],
    mins: &[f32],
    quants: &[u32],
    dy: &[f32],
    dx: &mut [f32],
    rows: u32,
    nblocks: u32,
    ntok: u32,
    #[comptime] bits: u32,
    #[comptime] accumulate: bool,
) {
    let i = ABSOLUTE_POS as u32;
    let cols = nblocks * 32;
    if i < ntok * cols {
        let t = i / cols;
        let c = i % cols;
        let j = c % 32;
        // The word and shift of weight `j` within its block.
        let (word, shift, mask) = if bits == 4 {
            let byte = if j < 16 { j } else { j - 16 };
            (byte / 4, 8 * (byte % 4) + if j < 16 { 0u32 } else { 4u32 }, 15u32)
        } else {
            (j / 4, 8 * (j % 4), 255u32)
        };
        let mut acc = 0.0f32;
        let mut r = 0u32;
        while r < rows {
            let bi = r * nblocks + c / 32;
            let q = (quants[(bi * bits + word) as usize] >> shift) & mask;
            acc += (scales[bi as usize] * f32::cast_from(q) + mins[bi as usize]) * dy[(t * rows + r) as usize];
            r += 1;
        }
        if accumulate {
            dx[i as usize] += acc;
        } else {
            dx[i as usize] = acc;
        }
    }
}

/// The input gradient through a block-quantized weight for many tokens, tiled through shared
/// memory as [`matmul_q_tiled`] is: a cube computes 64 columns × 32 tokens of `dx (+)= dy · W`,
/// stepping through the rows 32 at a time; each step dequantizes the 32 rows × 64 columns of
/// weights once (two blocks a row) and stages the 32 tokens' gradients, then each thread
/// accumulates 4 columns × 2 tokens from shared memory.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn matmul_t_q_tiled(
    scales: &[f32],
    mins: &[f32],
    quants: &[u32],
    dy: &[f32],
    dx: &mut [f32],
    rows: u32,
    nblocks: u32,
    ntok: u32,
    #[comptime] bits: u32,
    #[comptime] accumulate: bool,
) {
    let u = UNIT_POS_X;
    let tx = u % 16u32;
    let ty = u / 16u32;
    let c0 = CUBE_POS_X * 64u32;
    let t0 = CUBE_POS_Y * 32u32;
    let cols = nblocks * 32u32;
    let mut wsh = Shared::<[f32]>::new_slice(2080usize);
    let mut ysh = Shared::<[f32]>::new_slice(1056usize);
    let mut acc = Array::<f32>::new(8usize);
    #[unroll]
    for i in 0..8u32 {
        acc[i as usize] = 0.0;
    }
    // This thread's share of the loads: 8 weights of one row (a quarter of one of the tile's two
    // blocks), 4 gradients of one token.
    let lrow = u / 8u32;
    let part = u % 8u32;
    let quarter = part % 4u32;
    let block = c0 / 32u32 + part / 4u32;
    let ytok = u / 8u32;
    let yrow = (u % 8u32) * 4u32;
    let mut r0 = 0u32;
    while r0 < rows {
        let grow = r0 + lrow;
        if grow < rows && block < nblocks {
            let bi = grow * nblocks + block;
            let d = scales[bi as usize];
            let m = mins[bi as usize];
            #[unroll]
            for e in 0..8u32 {
                let q = block_code(quants, bi, quarter * 8u32 + e, bits);
                wsh[(lrow * 65u32 + part * 8u32 + e) as usize] = d * f32::cast_from(q) + m;
            }
        } else {
            #[unroll]
            for e in 0..8u32 {
                wsh[(lrow * 65u32 + part * 8u32 + e) as usize] = 0.0;
            }
        }
        let gt = t0 + ytok;
        #[unroll]
        for e in 0..4u32 {
            let r = r0 + yrow + e;
            let v = if gt < ntok && r < rows { dy[(gt * rows + r) as usize] } else { 0.0f32 };
            ysh[(ytok * 33u32 + yrow + e) as usize] = v;
        }
        sync_cube();
        let mut k = 0u32;
        while k < 32u32 {
            let w0 = wsh[(k * 65u32 + ty * 4u32) as usize];
            let w1 = wsh[(k * 65u32 + ty * 4u32 + 1u32) as usize];
            let w2 = wsh[(k * 65u32 + ty * 4u32 + 2u32) as usize];
            let w3 = wsh[(k * 65u32 + ty * 4u32 + 3u32) as usize];
            let ya = ysh[((tx * 2u32) * 33u32 + k) as usize];
            let yb = ysh[((tx * 2u32 + 1u32) * 33u32 + k) as usize];
            acc[0] += w0 * ya;
            acc[1] += w0 * yb;
            acc[2] += w1 * ya;
            acc[3] += w1 * yb;
            acc[4] += w2 * ya;
            acc[5] += w2 * yb;
            acc[6] += w3 * ya;
            acc[7] += w3 * yb;
            k += 1u32;
        }
        sync_cube();
        r0 += 32u32;
    }
    #[unroll]
    for i in 0..8u32 {
        let col = c0 + ty * 4u32 + i / 2u32;
        let tok = t0 + tx * 2u32 + i % 2u32;
        if col < cols && tok < ntok {
            let o = (tok * cols + col) as usize;
            if accumulate {
                dx[o] += acc[i as usize];
            } else {
                dx[o] = acc[i as usize];
            }
        }
    }
}

/// As [`matmul_t_q`] for f32 weights (`rows × cols`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn matmul_t_f32(
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    rows: u32,
    cols: u32,
    ntok: u32,
    #[comptime] accumulate: bool,
) {
    let i = ABSOLUTE_POS as u32;
    if i < ntok * cols {
        let t = i / cols;
        let c = i % cols;
        let mut acc = 0.0f32;
        let mut r = 0u32;
        while r < rows {
            acc += w[(r * cols + c) as usize] * dy[(t * rows + r) as usize];
            r += 1;
        }
        if accumulate {
            dx[i as usize] += acc;
        } else {
            dx[i as usize] = acc;
        }
    }
}

/// `out (m × n) += alpha · op(a) · op(b)` over `k`, with `a` stored `m × k` (or `k × m` when
/// `trans_a`) and `b` stored `k × n` (or `n × k` when `trans_b`): the LoRA pairs' forward and
/// gradient products. One thread per output element.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn gemm_add(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    m: u32,
    n: u32,
    k: u32,
    alpha: f32,
    #[comptime] trans_a: bool,
    #[comptime] trans_b: bool,
) {
    let i = ABSOLUTE_POS as u32;
    if i < m * n {
        let r = i / n;
        let c = i % n;
        let mut acc = 0.0f32;
        let mut p = 0u32;
        while p < k {
            let av = if trans_a { a[(p * m + r) as usize] } else { a[(r * k + p) as usize] };
            let bv = if trans_b { b[(c * k + p) as usize] } else { b[(p * n + c) as usize] };
            acc += av * bv;
            p += 1;
        }
        out[i as usize] += alpha * acc;
    }
}

/// One AdamW step on `n` parameters (decoupled weight decay), the gradient scaled by `gscale`
/// (clipping) and then cleared; `b1t`/`b2t` are the bias corrections `1 − β^t`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    value: &mut [f32],
    grad: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    b1t: f32,
    b2t: f32,
    gscale: f32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let j = i as usize;
        let g = grad[j] * gscale;
        let mj = beta1 * m[j] + (1.0f32 - beta1) * g;
        let vj = beta2 * v[j] + (1.0f32 - beta2) * g * g;
        m[j] = mj;
        v[j] = vj;
        let mhat = mj / b1t;
        let vhat = vj / b2t;
        value[j] -= lr * (mhat / (f32::sqrt(vhat) + eps) + weight_decay * value[j]);
        grad[j] = 0.0;
    }
}

/// Training attention backward, query side, over a packed batch (`k`, `v`: `T × kv_dim`, row `i`
/// attending rows `starts[i]..=i`): `dq_i += scale · Σ_j p_ij·(dO_i·v_j − dO_i·O_i)·k_j` with
/// `p_ij = exp(scale·q_i·k_j − lse_i)`. One cube per (head, row); adds into `dq`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_q(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    d_o: &[f32],
    lse: &[f32],
    starts: &[u32],
    dq: &mut [f32],
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    scale: f32,
    #[comptime] dims_per_thread: u32,
) {
    let tid = UNIT_POS_X;
    let i = CUBE_POS_Y;
    let h = CUBE_POS_X;
    let kvh = h / (n_head / n_head_kv);
    let kvd = n_head_kv * head_dim;
    let qo = (i * n_head + h) * head_dim;
    let mut di = 0.0f32;
    let mut d = 0u32;
    while d < head_dim {
        di += d_o[(qo + d) as usize] * o[(qo + d) as usize];
        d += 1;
    }
    let l = lse[(i * n_head + h) as usize];
    let s0 = starts[i as usize];
    let len = i + 1 - s0;
    let mut ds = Shared::<[f32]>::new_slice(1024usize);
    let mut acc = Array::<f32>::new(dims_per_thread as usize);
    #[unroll]
    for jd in 0..dims_per_thread {
        acc[jd as usize] = 0.0;
    }
    let mut c0 = 0u32;
    while c0 < len {
        let clen = u32::min(1024u32, len - c0);
        let mut p = tid;
        while p < clen {
            let ko = (s0 + c0 + p) * kvd + kvh * head_dim;
            let mut s = 0.0f32;
            let mut dv = 0.0f32;
            let mut d = 0u32;
            while d < head_dim {
                s += q[(qo + d) as usize] * k[(ko + d) as usize];
                dv += d_o[(qo + d) as usize] * v[(ko + d) as usize];
                d += 1;
            }
            let pr = f32::exp(s * scale - l);
            ds[p as usize] = pr * (dv - di) * scale;
            p += 128u32;
        }
        sync_cube();
        #[unroll]
        for jd in 0..dims_per_thread {
            let d = tid + jd * 128u32;
            if d < head_dim {
                let mut a = acc[jd as usize];
                let mut p = 0u32;
                while p < clen {
                    a += ds[p as usize] * k[((s0 + c0 + p) * kvd + kvh * head_dim + d) as usize];
                    p += 1;
                }
                acc[jd as usize] = a;
            }
        }
        sync_cube();
        c0 += 1024u32;
    }
    #[unroll]
    for jd in 0..dims_per_thread {
        let d = tid + jd * 128u32;
        if d < head_dim {
            dq[(qo + d) as usize] += acc[jd as usize];
        }
    }
}

/// Training attention backward, key/value side: for row `j` and KV head `g`, over the query heads
/// of the group and the rows `i` in `j..ends[j]` (the rest of `j`'s example), `dv_j += Σ p_ij·dO_i`
/// and `dk_j += scale · Σ p_ij·(dO_i·v_j − dO_i·O_i)·q_i`. One cube per (KV head, row); adds.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_kv(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    d_o: &[f32],
    lse: &[f32],
    ends: &[u32],
    dk: &mut [f32],
    dv: &mut [f32],
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    scale: f32,
    #[comptime] dims_per_thread: u32,
) {
    let tid = UNIT_POS_X;
    let j = CUBE_POS_Y;
    let g = CUBE_POS_X;
    let group = n_head / n_head_kv;
    let kvd = n_head_kv * head_dim;
    let ko = j * kvd + g * head_dim;
    let len = ends[j as usize] - j;
    let mut pb = Shared::<[f32]>::new_slice(1024usize);
    let mut db = Shared::<[f32]>::new_slice(1024usize);
    let mut acc_k = Array::<f32>::new(dims_per_thread as usize);
    let mut acc_v = Array::<f32>::new(dims_per_thread as usize);
    #[unroll]
    for jd in 0..dims_per_thread {
        acc_k[jd as usize] = 0.0;
        acc_v[jd as usize] = 0.0;
    }
    let mut hh = 0u32;
    while hh < group {
        let h = g * group + hh;
        let mut c0 = 0u32;
        while c0 < len {
            let clen = u32::min(1024u32, len - c0);
            let mut p = tid;
            while p < clen {
                let qo = ((j + c0 + p) * n_head + h) * head_dim;
                let mut s = 0.0f32;
                let mut di = 0.0f32;
                let mut dvv = 0.0f32;
                let mut d = 0u32;
                while d < head_dim {
                    let dov = d_o[(qo + d) as usize];
                    s += q[(qo + d) as usize] * k[(ko + d) as usize];
                    di += dov * o[(qo + d) as usize];
                    dvv += dov * v[(ko + d) as usize];
                    d += 1;
                }
                let pr = f32::exp(s * scale - lse[((j + c0 + p) * n_head + h) as usize]);
                pb[p as usize] = pr;
                db[p as usize] = pr * (dvv - di) * scale;
                p += 128u32;
            }
            sync_cube();
            #[unroll]
            for jd in 0..dims_per_thread {
                let d = tid + jd * 128u32;
                if d < head_dim {
                    let mut ak = acc_k[jd as usize];
                    let mut av = acc_v[jd as usize];
                    let mut p = 0u32;
                    while p < clen {
                        let qo = ((j + c0 + p) * n_head + h) * head_dim;
                        av += pb[p as usize] * d_o[(qo + d) as usize];
                        ak += db[p as usize] * q[(qo + d) as usize];
                        p += 1;
                    }
                    acc_k[jd as usize] = ak;
                    acc_v[jd as usize] = av;
                }
            }
            sync_cube();
            c0 += 1024u32;
        }
        hh += 1;
    }
    #[unroll]
    for jd in 0..dims_per_thread {
        let d = tid + jd * 128u32;
        if d < head_dim {
            dk[(ko + d) as usize] += acc_k[jd as usize];
            dv[(ko + d) as usize] += acc_v[jd as usize];
        }
    }
}

// ---- Glue of the trainer's step on the device. ----

/// `x[i] = value` for `i < n`.
#[cube(launch)]
pub fn fill(x: &mut [f32], value: f32, n: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        x[i as usize] = value;
    }
}

/// `dst[i] = src[i]` for `i < n`.
#[cube(launch)]
pub fn copy(src: &[f32], dst: &mut [f32], n: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        dst[i as usize] = src[i as usize];
    }
}

/// `dst[r] = src[rows[r]]` for `n` rows of `width` values (the inverse of [`scatter_rows`]).
#[cube(launch)]
pub fn gather_rows(src: &[f32], rows: &[u32], dst: &mut [f32], n: u32, width: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n * width {
        let r = i / width;
        let c = i % width;
        dst[i as usize] = src[(rows[r as usize] * width + c) as usize];
    }
}

/// Weighted cross-entropy of rows of logits, in place: row `r`, predicting `targets[r]` with
/// weight `w = weights[r]`, becomes the gradient of `w·(lse − z_t) / norm` (`softmax·w/norm`, less
/// `w/norm` at the target), and `loss[base + r]` gets `w·(lse − z_t)`. One cube per row.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    z: &mut [f32],
    targets: &[u32],
    weights: &[f32],
    loss: &mut [f32],
    vocab: u32,
    nrows: u32,
    norm: f32,
    base: u32,
) {
    let tid = UNIT_POS_X;
    let live = (CUBE_POS as u32) < nrows;
    let row = u32::min(CUBE_POS as u32, nrows - 1);
    let target = targets[row as usize];
    // Read before any thread writes the row (the writes come after the barriers below).
    let zt = z[(row * vocab + target) as usize];
    let mut shared = Shared::<[f32]>::new_slice(128usize);
    let mut m = f32::new(-3.0e38);
    let mut c = tid;
    while c < vocab {
        m = f32::max(m, z[(row * vocab + c) as usize]);
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
    while c < vocab {
        s += f32::exp(z[(row * vocab + c) as usize] - top);
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
    let sum = shared[0];
    let w = weights[row as usize];
    let cw = w / norm;
    let k = cw / sum;
    let mut c = tid;
    while c < vocab {
        let i = (row * vocab + c) as usize;
        if live {
            let mut g = f32::exp(z[i] - top) * k;
            if c == target {
                g -= cw;
            }
            z[i] = g;
        }
        c += 128u32;
    }
    if live && tid == 0 {
        loss[(base + row) as usize] = w * (top + f32::ln(sum) - zt);
    }
}

/// Partial sums of squares: cube `b` writes `Σ x[i]²` over `i` in `b·4096 .. (b+1)·4096` (and
/// below `n`) to `partial[base + b]`. The host adds the partials in order (the gradient norm).
#[cube(launch)]
pub fn sum_squares(x: &[f32], partial: &mut [f32], n: u32, nblocks: u32, base: u32) {
    let tid = UNIT_POS_X;
    let live = (CUBE_POS as u32) < nblocks;
    let b = u32::min(CUBE_POS as u32, nblocks - 1);
    let mut shared = Shared::<[f32]>::new_slice(128usize);
    let mut s = 0.0f32;
    let mut i = b * 4096u32 + tid;
    let end = u32::min(b * 4096u32 + 4096u32, n);
    while i < end {
        let v = x[i as usize];
        s += v * v;
        i += 128u32;
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
    if live && tid == 0 {
        partial[(base + b) as usize] = shared[0];
    }
}

// Inside the kernels the shared-memory sizes, thread counts and the reductions' first strides are
// literals: a mutable kernel variable initialised from a folded constant expression (`128u32 / 2`)
// fails cubecl 0.11's verifier ("expected cube.ptr, found builtin.integer"). These consts are the
// host's copy of the same numbers.
const _: () = assert!(LANES * ROWS_PER_CUBE == 256 && ROW_THREADS == 128 && ATTN_CHUNK == 1024);
