//! Fused kernels of the decode step: the Q/K/V products in one launch, bias + RoPE + the KV cache
//! write in one, and gate/up + SwiGLU in one. With the norms, attention, the output projection
//! and the down projection (each already one launch, the projections adding into the residual)
//! a layer of a decode step is 8 launches.

use cubecl::prelude::*;

use super::matmul::{block_dot, reduce_lanes};

/// The Q, K and V products of `x` in one launch: rows `0..ra` of the stacked output are
/// `wa·x` into `out_a`, the next `rb` rows `wb·x` into `out_b`, the last `rc` `wc·x` into
/// `out_c` (three block-quantized weights with the same `bits` and columns). Cube and tiling as
/// [`matmul_q`](super::matmul_q).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
#[allow(unused_assignments)]
pub fn matmul_q3(
    sa: &Array<f32>,
    ma: &Array<f32>,
    qa: &Array<u32>,
    sb: &Array<f32>,
    mb: &Array<f32>,
    qb: &Array<u32>,
    sc: &Array<f32>,
    mc: &Array<f32>,
    qc: &Array<u32>,
    x: &Array<f32>,
    out_a: &mut Array<f32>,
    out_b: &mut Array<f32>,
    out_c: &mut Array<f32>,
    ra: u32,
    rb: u32,
    rc: u32,
    nblocks: u32,
    ntok: u32,
    #[comptime] bits: u32,
    #[comptime] tile: u32,
) {
    let lane = UNIT_POS_X;
    let row = CUBE_POS_X * 8u32 + UNIT_POS_Y;
    let rows = ra + rb + rc;
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
            #[unroll]
            for t in 0..tile {
                if t0 + t < ntok {
                    let xo = (t0 + t) * cols + b * 32;
                    let mut v = 0.0f32;
                    if row < ra {
                        v = block_dot(sa, ma, qa, x, row * nblocks + b, xo, bits);
                    } else if row < ra + rb {
                        v = block_dot(sb, mb, qb, x, (row - ra) * nblocks + b, xo, bits);
                    } else {
                        v = block_dot(sc, mc, qc, x, (row - ra - rb) * nblocks + b, xo, bits);
                    }
                    acc[t as usize] += v;
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
            let total = shared[base as usize];
            let tok = t0 + t;
            if row < ra {
                out_a[(tok * ra + row) as usize] = total;
            } else if row < ra + rb {
                out_b[(tok * rb + row - ra) as usize] = total;
            } else {
                out_c[(tok * rc + row - ra - rb) as usize] = total;
            }
        }
        sync_cube();
    }
}

/// Gate and up products and SwiGLU in one launch: `out[t][r] = silu(g)·u` with `g = wg[r]·x[t]`
/// and `u = wu[r]·x[t]` (block-quantized, the same `bits`). Cube and tiling as
/// [`matmul_q`](super::matmul_q).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn matmul_q_swiglu(
    sg: &Array<f32>,
    mg: &Array<f32>,
    qg: &Array<u32>,
    su: &Array<f32>,
    mu: &Array<f32>,
    qu: &Array<u32>,
    x: &Array<f32>,
    out: &mut Array<f32>,
    rows: u32,
    nblocks: u32,
    ntok: u32,
    #[comptime] bits: u32,
    #[comptime] tile: u32,
) {
    let lane = UNIT_POS_X;
    let row = CUBE_POS_X * 8u32 + UNIT_POS_Y;
    let t0 = CUBE_POS_Y * tile;
    let cols = nblocks * 32;
    let mut gsh = SharedMemory::<f32>::new(256usize);
    let mut ush = SharedMemory::<f32>::new(256usize);
    let mut gacc = Array::<f32>::new(tile as usize);
    let mut uacc = Array::<f32>::new(tile as usize);
    #[unroll]
    for t in 0..tile {
        gacc[t as usize] = 0.0;
        uacc[t as usize] = 0.0;
    }
    if row < rows {
        let mut b = lane;
        while b < nblocks {
            let bi = row * nblocks + b;
            #[unroll]
            for t in 0..tile {
                if t0 + t < ntok {
                    let xo = (t0 + t) * cols + b * 32;
                    gacc[t as usize] += block_dot(sg, mg, qg, x, bi, xo, bits);
                    uacc[t as usize] += block_dot(su, mu, qu, x, bi, xo, bits);
                }
            }
            b += 32u32;
        }
    }
    let base = UNIT_POS_Y * 32u32;
    #[unroll]
    for t in 0..tile {
        gsh[(base + lane) as usize] = gacc[t as usize];
        ush[(base + lane) as usize] = uacc[t as usize];
        reduce_lanes(&mut gsh, base, lane);
        reduce_lanes(&mut ush, base, lane);
        if lane == 0 && row < rows && t0 + t < ntok {
            let g = gsh[base as usize];
            out[((t0 + t) * rows + row) as usize] = g / (1.0f32 + f32::exp(-g)) * ush[base as usize];
        }
        sync_cube();
    }
}

/// After the Q/K/V products, for each row: adds the biases (`has_bias`), rotates the first
/// `rope_dims` values of every head of Q and K (angles per row as [`rope`](super::rope)), writes
/// the rotated Q to `q_out` and K and V to their slots of the paged caches. One thread per value
/// of the row's Q, K and V (`qd + 2·kvd`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
#[allow(unused_assignments)]
pub fn qkv_rope_scatter(
    q: &Array<f32>,
    k: &Array<f32>,
    v: &Array<f32>,
    bq: &Array<f32>,
    bk: &Array<f32>,
    bv: &Array<f32>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    slots: &Array<u32>,
    q_out: &mut Array<f32>,
    k_cache: &mut Array<f32>,
    v_cache: &mut Array<f32>,
    nrows: u32,
    qd: u32,
    kvd: u32,
    head_dim: u32,
    rope_dims: u32,
    #[comptime] neox: bool,
    #[comptime] has_bias: bool,
) {
    let width = qd + 2 * kvd;
    let i = ABSOLUTE_POS as u32;
    if i < nrows * width {
        let r = i / width;
        let e = i % width;
        let half = rope_dims / 2;
        if e < qd + kvd {
            // Q or K: element `j` of a head, rotated with its partner when `j < rope_dims`.
            let is_q = e < qd;
            let mut off = e;
            let mut w = qd;
            if !is_q {
                off = e - qd;
                w = kvd;
            }
            let j = off % head_dim;
            let head0 = off - j;
            let mut partner = off;
            let mut angle = 0u32;
            let mut first = true;
            if j < rope_dims {
                if neox {
                    angle = j % half;
                    first = j < half;
                    partner = head0 + j + half;
                    if !first {
                        partner = head0 + j - half;
                    }
                } else {
                    angle = j / 2;
                    first = (j & 1u32) == 0;
                    partner = head0 + j + 1;
                    if !first {
                        partner = head0 + j - 1;
                    }
                }
            }
            let mut x0 = 0.0f32;
            let mut x1 = 0.0f32;
            if is_q {
                x0 = q[(r * w + off) as usize];
                x1 = q[(r * w + partner) as usize];
                if has_bias {
                    x0 += bq[off as usize];
                    x1 += bq[partner as usize];
                }
            } else {
                x0 = k[(r * w + off) as usize];
                x1 = k[(r * w + partner) as usize];
                if has_bias {
                    x0 += bk[off as usize];
                    x1 += bk[partner as usize];
                }
            }
            let mut y = x0;
            if j < rope_dims {
                let c = cos[(r * half + angle) as usize];
                let s = sin[(r * half + angle) as usize];
                // Pair (a, b): a' = a·c − b·s, b' = a·s + b·c.
                if first {
                    y = x0 * c - x1 * s;
                } else {
                    y = x1 * s + x0 * c;
                }
            }
            if is_q {
                q_out[(r * qd + off) as usize] = y;
            } else {
                let slot = slots[r as usize];
                k_cache[(slot * kvd + off) as usize] = y;
            }
        } else {
            let off = e - qd - kvd;
            let mut y = v[(r * kvd + off) as usize];
            if has_bias {
                y += bv[off as usize];
            }
            let slot = slots[r as usize];
            v_cache[(slot * kvd + off) as usize] = y;
        }
    }
}
