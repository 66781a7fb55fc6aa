//! The backward passes of the llama block, each the derivative of its forward twin (in
//! [`crate::cpu::ops`] or here), checked against central finite differences in f64 by
//! `tests/train.rs`. Backward functions *add* into their input gradients, so a value that feeds
//! several ops (a residual stream, the normed input of Q, K and V) gathers every contribution.

use rayon::prelude::*;

use crate::cpu::ops::RopeLayout;
use crate::cpu::{axpy, dot_f32};

/// RMSNorm backward for one row: `y = x · s · w` with `s = 1/√(mean(x²) + eps)`, so
/// `dx_j = s·w_j·dy_j − x_j · s³/n · Σ_i x_i·w_i·dy_i`.
pub fn rms_norm_backward(x: &[f32], w: &[f32], eps: f32, dy: &[f32], dx: &mut [f32]) {
    let n = x.len().max(1) as f32;
    let ms = x.iter().map(|v| v * v).sum::<f32>() / n;
    let s = 1.0 / (ms + eps).sqrt();
    let dot: f32 = x.iter().zip(w).zip(dy).map(|((x, w), g)| x * w * g).sum();
    let c = s * s * s * dot / n;
    for (((d, x), w), g) in dx.iter_mut().zip(x).zip(w).zip(dy) {
        *d += s * w * g - c * x;
    }
}

/// RMSNorm backward over rows of `w.len()` values.
pub fn rms_norm_backward_rows(x: &[f32], w: &[f32], eps: f32, dy: &[f32], dx: &mut [f32]) {
    let d = w.len();
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(dy.par_chunks(d))
        .for_each(|((dxr, xr), dyr)| rms_norm_backward(xr, w, eps, dyr, dxr));
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// SwiGLU backward: `h = silu(g)·u` gives `dg = dh·u·σ(g)·(1 + g·(1 − σ(g)))` and
/// `du = dh·silu(g)`. Writes (does not add) `dg` and `du`.
pub fn swiglu_backward(g: &[f32], u: &[f32], dh: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for i in 0..g.len() {
        let s = sigmoid(g[i]);
        dg[i] = dh[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        du[i] = dh[i] * g[i] * s;
    }
}

/// RoPE backward for one head: the transpose of a rotation is the rotation by the opposite angle.
pub fn rope_backward(dhead: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = match layout {
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            RopeLayout::Neox => (i, i + half),
        };
        let (d0, d1) = (dhead[a], dhead[b]);
        dhead[a] = d0 * cos[i] + d1 * sin[i];
        dhead[b] = -d0 * sin[i] + d1 * cos[i];
    }
}

/// Head layout of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (each serves `n_head / n_head_kv` query heads).
    pub n_head_kv: usize,
    /// Values per head.
    pub head_dim: usize,
}

impl Heads {
    fn qd(&self) -> usize {
        self.n_head * self.head_dim
    }
    fn kvd(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
    fn kv_head(&self, h: usize) -> usize {
        h / (self.n_head / self.n_head_kv).max(1)
    }
}

/// Causal attention over a packed sequence for training: row `i` attends to rows
/// `starts[i]..=i` (its own example's earlier tokens). `q` is `T × n_head·hd`, `k`/`v` are
/// `T × n_head_kv·hd`; writes `o` (`T × n_head·hd`) and the log-sum-exp of each row's scaled
/// scores per head, `lse` (`T × n_head`), which the backward pass uses to rebuild the
/// probabilities instead of keeping a `T × T` matrix per head.
pub fn attention_forward(h: Heads, q: &[f32], k: &[f32], v: &[f32], starts: &[usize], o: &mut [f32], lse: &mut [f32]) {
    let (hd, qd, kvd) = (h.head_dim, h.qd(), h.kvd());
    let scale = 1.0 / (hd as f32).sqrt();
    o.par_chunks_mut(qd).zip(lse.par_chunks_mut(h.n_head)).enumerate().for_each_init(
        Vec::new,
        |p, (i, (orow, lrow))| {
            let s0 = starts[i];
            for head in 0..h.n_head {
                let kh = h.kv_head(head) * hd;
                let qh = &q[i * qd + head * hd..i * qd + (head + 1) * hd];
                p.clear();
                p.extend((s0..=i).map(|j| dot_f32(qh, &k[j * kvd + kh..j * kvd + kh + hd]) * scale));
                let max = p.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                let mut sum = 0f32;
                for x in p.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                lrow[head] = max + sum.ln();
                let out = &mut orow[head * hd..(head + 1) * hd];
                out.fill(0.0);
                for (jj, &w) in p.iter().enumerate() {
                    let j = s0 + jj;
                    axpy(w / sum, &v[j * kvd + kh..j * kvd + kh + hd], out);
                }
            }
        },
    );
}

/// Backward of [`attention_forward`]: from `d_o` adds into `dq`, `dk`, `dv`. With `P` the
/// probabilities rebuilt from `lse`: `dV = Pᵀ·dO`, `dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O))`,
/// `dQ = scale · dS·K`, `dK = scale · dSᵀ·Q`. Parallel over query heads, each with its own
/// key/value gradient buffers, summed afterwards in a fixed order (identical runs stay identical).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    h: Heads,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    lse: &[f32],
    starts: &[usize],
    d_o: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (hd, qd, kvd) = (h.head_dim, h.qd(), h.kvd());
    let t = starts.len();
    let scale = 1.0 / (hd as f32).sqrt();
    let per_head: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..h.n_head)
        .into_par_iter()
        .map(|head| {
            let kh = h.kv_head(head) * hd;
            let (mut gq, mut gk, mut gv) = (vec![0f32; t * hd], vec![0f32; t * hd], vec![0f32; t * hd]);
            for i in 0..t {
                let at = i * qd + head * hd;
                let (qi, oi, doi) = (&q[at..at + hd], &o[at..at + hd], &d_o[at..at + hd]);
                let di = dot_f32(doi, oi);
                let l = lse[i * h.n_head + head];
                for j in starts[i]..=i {
                    let kj = &k[j * kvd + kh..j * kvd + kh + hd];
                    let vj = &v[j * kvd + kh..j * kvd + kh + hd];
                    let p = (dot_f32(qi, kj) * scale - l).exp();
                    axpy(p, doi, &mut gv[j * hd..(j + 1) * hd]);
                    let ds = p * (dot_f32(doi, vj) - di) * scale;
                    axpy(ds, kj, &mut gq[i * hd..(i + 1) * hd]);
                    axpy(ds, qi, &mut gk[j * hd..(j + 1) * hd]);
                }
            }
            (gq, gk, gv)
        })
        .collect();
    for (head, (gq, gk, gv)) in per_head.iter().enumerate() {
        let kh = h.kv_head(head) * hd;
        for i in 0..t {
            let src = i * hd..(i + 1) * hd;
            for (d, s) in dq[i * qd + head * hd..i * qd + (head + 1) * hd].iter_mut().zip(&gq[src.clone()]) {
                *d += s;
            }
            for (d, s) in dk[i * kvd + kh..i * kvd + kh + hd].iter_mut().zip(&gk[src.clone()]) {
                *d += s;
            }
            for (d, s) in dv[i * kvd + kh..i * kvd + kh + hd].iter_mut().zip(&gv[src]) {
                *d += s;
            }
        }
    }
}

/// Weighted cross-entropy of one row of logits against `target`: writes `dz = w/norm · (softmax(z)
/// − onehot(target))` into `z` (in place) and returns the row's loss `w · (logsumexp(z) − z_target)`.
pub fn cross_entropy_backward(z: &mut [f32], target: usize, w: f32, norm: f32) -> f32 {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0f64;
    for x in z.iter() {
        sum += f64::from((x - max).exp());
    }
    let lse = max + sum.ln() as f32;
    let loss = w * (lse - z[target]);
    let c = w / norm;
    for x in z.iter_mut() {
        *x = c * (*x - lse).exp();
    }
    z[target] -= c;
    loss
}

/// `out (m × n) += a (m × k) · bᵀ` for `b` of `n × k`: rows of the output in parallel.
pub fn gemm_nt_add(a: &[f32], b: &[f32], k: usize, alpha: f32, out: &mut [f32]) {
    let n = b.len() / k.max(1);
    out.par_chunks_mut(n.max(1)).zip(a.par_chunks(k.max(1))).for_each(|(orow, arow)| {
        for (j, o) in orow.iter_mut().enumerate() {
            *o += alpha * dot_f32(arow, &b[j * k..(j + 1) * k]);
        }
    });
}

/// `out (m × n) += alpha · a (m × k) · b (k × n)`: rows of the output in parallel.
pub fn gemm_nn_add(a: &[f32], b: &[f32], k: usize, alpha: f32, out: &mut [f32]) {
    let n = b.len() / k.max(1);
    out.par_chunks_mut(n.max(1)).zip(a.par_chunks(k.max(1))).for_each(|(orow, arow)| {
        for (kk, &av) in arow.iter().enumerate() {
            if av != 0.0 {
                axpy(alpha * av, &b[kk * n..(kk + 1) * n], orow);
            }
        }
    });
}

/// `out (p × n) += alpha · aᵀ · b` for `a` of `m × p` and `b` of `m × n` (a weight gradient from
/// output gradients and inputs): rows of the output in parallel, each summing over `m` in order.
pub fn gemm_tn_add(a: &[f32], b: &[f32], p: usize, alpha: f32, out: &mut [f32]) {
    let m = a.len() / p.max(1);
    let n = b.len() / m.max(1);
    out.par_chunks_mut(n.max(1)).enumerate().for_each(|(r, orow)| {
        for i in 0..m {
            let av = a[i * p + r];
            if av != 0.0 {
                axpy(alpha * av, &b[i * n..(i + 1) * n], orow);
            }
        }
    });
}

/// LoRA forward: `ax = x·Aᵀ` (`T × r`, kept for the backward pass) and `y += scale · ax·Bᵀ`.
pub fn lora_forward(a: &[f32], b: &[f32], rank: usize, scale: f32, x: &[f32], y: &mut [f32]) -> Vec<f32> {
    let in_f = a.len() / rank.max(1);
    let m = x.len() / in_f.max(1);
    let mut ax = vec![0f32; m * rank];
    gemm_nt_add(x, a, in_f, 1.0, &mut ax);
    gemm_nt_add(&ax, b, rank, scale, y);
    ax
}

/// Gradients of one LoRA pair and of its input.
#[derive(Debug)]
pub struct LoraGrads<'a> {
    /// `r × in`, added to.
    pub da: &'a mut [f32],
    /// `out × r`, added to.
    pub db: &'a mut [f32],
    /// `T × in`, added to (absent when nothing below needs it).
    pub dx: Option<&'a mut [f32]>,
}

/// LoRA backward from `dy` (`T × out`), the input `x` and the kept `ax`:
/// `dB += scale · dyᵀ·ax`, `d(ax) = scale · dy·B`, `dA += d(ax)ᵀ·x`, `dx += d(ax)·A`.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    a: &[f32],
    b: &[f32],
    rank: usize,
    scale: f32,
    x: &[f32],
    ax: &[f32],
    dy: &[f32],
    g: LoraGrads<'_>,
) {
    let out_f = b.len() / rank.max(1);
    gemm_tn_add(dy, ax, out_f, scale, g.db);
    let m = ax.len() / rank.max(1);
    let mut dax = vec![0f32; m * rank];
    gemm_nn_add(dy, b, out_f, scale, &mut dax);
    gemm_tn_add(&dax, x, rank, 1.0, g.da);
    if let Some(dx) = g.dx {
        gemm_nn_add(&dax, a, rank, 1.0, dx);
    }
}
