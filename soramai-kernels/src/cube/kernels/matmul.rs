//! Matrix products: block-quantized and f32 weights times activations, their transposes (the
//! input gradient of the trainer's backward), and the LoRA-gradient `gemm_add`.

use cubecl::prelude::*;

/// `out[t][r] (+)= Σ_c w[r][c]·x[t][c]` for block-quantized weights, `bits` 4 or 8. 4-bit:
/// `quants` holds 4 words per block, byte `i` of the 16 carrying weight `i` (low nibble) and
/// `i + 16` (high nibble); 8-bit: 8 words per block, byte `i` carrying weight `i`. Cube:
/// `ROWS_PER_CUBE` rows × `LANES` lanes; cube y: a tile of `tile` tokens.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn matmul_q(
    scales: &Array<f32>,
    mins: &Array<f32>,
    quants: &Array<u32>,
    x: &Array<f32>,
    out: &mut Array<f32>,
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
    let mut shared = SharedMemory::<f32>::new(256usize);
    let mut acc = Array::<f32>::new(tile as usize);
    #[unroll]
    for t in 0..tile {
        acc[t as usize] = 0.0;
    }
    if row < rows {
        let mut b = lane;
        while b < nblocks {
            let bi = row * nblocks + b;
            #[unroll]
            for t in 0..tile {
                if t0 + t < ntok {
                    acc[t as usize] += block_dot(scales, mins, quants, x, bi, (t0 + t) * cols + b * 32, bits);
                }
            }
            b += 32u32;
        }
    }
    let base = UNIT_POS_Y * 32u32;
    #[unroll]
    for t in 0..tile {
        shared[(base + lane) as usize] = acc[t as usize];
        reduce_lanes(&mut shared, base, lane);
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

/// `d·Σ q_i·x_i + m·Σ x_i` over block `bi` (32 codes of `bits` bits, the layouts of
/// [`matmul_q`]) and the 32 activations from `xo`.
#[cube]
pub(super) fn block_dot(
    scales: &Array<f32>,
    mins: &Array<f32>,
    quants: &Array<u32>,
    x: &Array<f32>,
    bi: u32,
    xo: u32,
    #[comptime] bits: u32,
) -> f32 {
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
    scales[bi as usize] * dot + mins[bi as usize] * xs
}

/// Sums `LANES` (32) partial sums per row of the cube in `shared` (`base` the row's first slot);
/// the total ends in `shared[base]`. Every thread of the cube must call it.
#[cube]
pub(super) fn reduce_lanes(shared: &mut SharedMemory<f32>, base: u32, lane: u32) {
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
}

/// Code `j` (0..32) of block `bi` in the layouts of [`matmul_q`]: 4-bit, byte `j % 16` of the
/// block's 4 words, low nibble for `j < 16`; 8-bit, byte `j` of its 8 words.
#[cube]
pub(super) fn block_code(quants: &Array<u32>, bi: u32, j: u32, #[comptime] bits: u32) -> u32 {
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
    scales: &Array<f32>,
    mins: &Array<f32>,
    quants: &Array<u32>,
    x: &Array<f32>,
    out: &mut Array<f32>,
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
    let mut wsh = SharedMemory::<f32>::new(2112usize);
    let mut xsh = SharedMemory::<f32>::new(1056usize);
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
            let mut v = 0.0f32;
            if gt < ntok {
                v = x[(gt * cols + b * 32u32 + xcol + e) as usize];
            }
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
    w: &Array<f32>,
    x: &Array<f32>,
    out: &mut Array<f32>,
    rows: u32,
    cols: u32,
    ntok: u32,
    #[comptime] tile: u32,
    #[comptime] accumulate: bool,
) {
    let lane = UNIT_POS_X;
    let row = CUBE_POS_X * 8u32 + UNIT_POS_Y;
    let t0 = CUBE_POS_Y * tile;
    let mut shared = SharedMemory::<f32>::new(256usize);
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

/// Input gradient through a frozen block-quantized weight (`bits` 4 or 8, the layouts of
/// [`matmul_q`]): `dx[t][c] (+)= Σ_r w[r][c]·dy[t][r]`. One thread per (t, c).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn matmul_t_q(
    scales: &Array<f32>,
    mins: &Array<f32>,
    quants: &Array<u32>,
    dy: &Array<f32>,
    dx: &mut Array<f32>,
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
        let mut word = j / 4;
        let mut shift = 8 * (j % 4);
        let mut mask = 255u32;
        if bits == 4 {
            let byte = j % 16;
            word = byte / 4;
            shift = 8 * (byte % 4);
            if j >= 16 {
                shift += 4;
            }
            mask = 15u32;
        }
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
    scales: &Array<f32>,
    mins: &Array<f32>,
    quants: &Array<u32>,
    dy: &Array<f32>,
    dx: &mut Array<f32>,
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
    let mut wsh = SharedMemory::<f32>::new(2080usize);
    let mut ysh = SharedMemory::<f32>::new(1056usize);
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
            let mut v = 0.0f32;
            if gt < ntok && r < rows {
                v = dy[(gt * rows + r) as usize];
            }
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
    w: &Array<f32>,
    dy: &Array<f32>,
    dx: &mut Array<f32>,
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
    a: &Array<f32>,
    b: &Array<f32>,
    out: &mut Array<f32>,
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
