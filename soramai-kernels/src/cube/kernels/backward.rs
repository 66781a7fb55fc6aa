//! Backward ops of the QLoRA trainer (see `crate::train::ops`) and its AdamW update.

use cubecl::prelude::*;

/// RMSNorm backward over rows, *adding* into `dx`: `dx_j += s·w_j·dy_j − x_j·s³/n·Σ x·w·dy`.
/// One cube per row.
#[cube(launch)]
pub fn rms_norm_backward(
    x: &Array<f32>,
    w: &Array<f32>,
    dy: &Array<f32>,
    dx: &mut Array<f32>,
    d: u32,
    eps: f32,
    nrows: u32,
) {
    let tid = UNIT_POS_X;
    let live = (CUBE_POS as u32) < nrows;
    let row = u32::min(CUBE_POS as u32, nrows - 1);
    let mut ss = SharedMemory::<f32>::new(128usize);
    let mut dot = SharedMemory::<f32>::new(128usize);
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
pub fn swiglu_backward(
    g: &Array<f32>,
    u: &Array<f32>,
    dh: &Array<f32>,
    dg: &mut Array<f32>,
    du: &mut Array<f32>,
    n: u32,
) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        let gv = g[i as usize];
        let s = 1.0f32 / (1.0f32 + f32::exp(-gv));
        let h = dh[i as usize];
        dg[i as usize] = h * u[i as usize] * s * (1.0f32 + gv * (1.0f32 - s));
        du[i as usize] = h * gv * s;
    }
}

/// Training attention backward, query side, over a packed batch (`k`, `v`: `T × kv_dim`, row `i`
/// attending rows `starts[i]..=i`): `dq_i += scale · Σ_j p_ij·(dO_i·v_j − dO_i·O_i)·k_j` with
/// `p_ij = exp(scale·q_i·k_j − lse_i)`. One cube per (head, row); adds into `dq`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_q(
    q: &Array<f32>,
    k: &Array<f32>,
    v: &Array<f32>,
    o: &Array<f32>,
    d_o: &Array<f32>,
    lse: &Array<f32>,
    starts: &Array<u32>,
    dq: &mut Array<f32>,
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
    let mut ds = SharedMemory::<f32>::new(1024usize);
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
    q: &Array<f32>,
    k: &Array<f32>,
    v: &Array<f32>,
    o: &Array<f32>,
    d_o: &Array<f32>,
    lse: &Array<f32>,
    ends: &Array<u32>,
    dk: &mut Array<f32>,
    dv: &mut Array<f32>,
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
    let mut pb = SharedMemory::<f32>::new(1024usize);
    let mut db = SharedMemory::<f32>::new(1024usize);
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

/// One AdamW step on `n` parameters (decoupled weight decay), the gradient scaled by `gscale`
/// (clipping) and then cleared; `b1t`/`b2t` are the bias corrections `1 − β^t`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    value: &mut Array<f32>,
    grad: &mut Array<f32>,
    m: &mut Array<f32>,
    v: &mut Array<f32>,
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
