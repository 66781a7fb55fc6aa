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

/// GeGLU backward: `h = gelu(g)·u` (tanh GELU, `gelu(g) = g·Φ̃(g)` with
/// `Φ̃(g) = ½(1 + tanh(k(g + a·g³)))`) gives `dg = dh·u·gelu'(g)`, `du = dh·gelu(g)`, where
/// `gelu'(g) = Φ̃(g) + ½·g·(1 − tanh²)·k(1 + 3a·g²)`. Writes (does not add) `dg` and `du`.
pub fn geglu_backward(g: &[f32], u: &[f32], dh: &[f32], dg: &mut [f32], du: &mut [f32]) {
    const K: f32 = 0.797_884_6;
    const A: f32 = 0.044_715;
    for i in 0..g.len() {
        let x = g[i];
        let t = (K * x * (1.0 + A * x * x)).tanh();
        let gelu = 0.5 * x * (1.0 + t);
        let slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * K * (1.0 + 3.0 * A * x * x);
        dg[i] = dh[i] * u[i] * slope;
        du[i] = dh[i] * gelu;
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

/// Which keys a query sees and how its scores are scaled.
#[derive(Clone, Copy, Debug)]
pub struct Mask {
    /// Score scale (`1/√head_dim` for most families).
    pub scale: f32,
    /// A sliding window: row `i` of an example sees rows `i + 1 − window ..= i` only.
    pub window: Option<usize>,
}

impl Mask {
    /// Plain causal attention with the usual `1/√head_dim` scale.
    pub fn causal(head_dim: usize) -> Self {
        Mask { scale: 1.0 / (head_dim as f32).sqrt(), window: None }
    }

    /// The first row (within its example) that row `i` sees.
    fn first(&self, i: usize) -> usize {
        self.window.map_or(0, |w| (i + 1).saturating_sub(w))
    }
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

/// `a (m × k) · b (k × n)`, row-major, as a new `m × n` matrix: the small dense products of the
/// training attention. Tiles of 4 rows × 16 columns stay in registers over the whole `k` loop; the
/// body is compiled a second time with AVX2 and FMA, used where the CPU has them.
pub fn matmul_f32(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    if a.len() < m * k || b.len() < k * n {
        return c;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::isa() != crate::cpu::Isa::Scalar {
        // SAFETY: AVX2 and FMA were detected (every non-scalar ISA here has them); the body indexes
        // through checked slices only.
        #[allow(unsafe_code)]
        unsafe {
            matmul_f32_fma(a, b, m, k, n, &mut c)
        };
        return c;
    }
    matmul_f32_body(a, b, m, k, n, &mut c, |x, y, acc| x * y + acc);
    c
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn matmul_f32_fma(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, c: &mut [f32]) {
    matmul_f32_body(a, b, m, k, n, c, f32::mul_add);
}

#[inline(always)]
fn matmul_f32_body(
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    c: &mut [f32],
    fma: impl Fn(f32, f32, f32) -> f32,
) {
    const MR: usize = 4;
    const NR: usize = 16;
    let mut i = 0;
    while i + MR <= m {
        let mut j = 0;
        while j + NR <= n {
            let mut acc = [[0f32; NR]; MR];
            for kk in 0..k {
                let brow: &[f32; NR] = b[kk * n + j..kk * n + j + NR].try_into().unwrap_or(&[0.0; NR]);
                for (r, accr) in acc.iter_mut().enumerate() {
                    let av = a[(i + r) * k + kk];
                    for (x, &bv) in accr.iter_mut().zip(brow) {
                        *x = fma(av, bv, *x);
                    }
                }
            }
            for (r, accr) in acc.iter().enumerate() {
                c[(i + r) * n + j..(i + r) * n + j + NR].copy_from_slice(accr);
            }
            j += NR;
        }
        for r in i..i + MR {
            for jj in j..n {
                c[r * n + jj] = (0..k).fold(0.0, |s, kk| fma(a[r * k + kk], b[kk * n + jj], s));
            }
        }
        i += MR;
    }
    for r in i..m {
        for kk in 0..k {
            let av = a[r * k + kk];
            for (x, &bv) in c[r * n..(r + 1) * n].iter_mut().zip(&b[kk * n..(kk + 1) * n]) {
                *x = fma(av, bv, *x);
            }
        }
    }
}

/// `m` (`r × c`) transposed.
fn transpose(m: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = m[i * c + j];
        }
    }
    t
}

/// Rows `rows` of one head (`hd` values at `offset` in rows of `stride`), gathered `n × hd`.
fn gather(x: &[f32], rows: std::ops::Range<usize>, stride: usize, offset: usize, hd: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * hd);
    for i in rows {
        out.extend_from_slice(&x[i * stride + offset..i * stride + offset + hd]);
    }
    out
}

/// The examples of a packed sequence: maximal runs of rows sharing a start.
fn example_spans(starts: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < starts.len() {
        let mut e = i + 1;
        while e < starts.len() && starts[e] == starts[i] {
            e += 1;
        }
        spans.push(i..e);
        i = e;
    }
    spans
}

/// Causal attention over a packed sequence for training: row `i` attends to rows
/// `starts[i]..=i` (its own example's earlier tokens). `q` is `T × n_head·hd`, `k`/`v` are
/// `T × n_head_kv·hd`; writes `o` (`T × n_head·hd`) and the log-sum-exp of each row's scaled
/// scores per head, `lse` (`T × n_head`), which the backward pass uses to rebuild the
/// probabilities instead of keeping a `T × T` matrix per head. Each (head, example) is three
/// dense products: `S = Q·Kᵀ`, the masked softmax, `O = P·V`.
pub fn attention_forward(h: Heads, q: &[f32], k: &[f32], v: &[f32], starts: &[usize], o: &mut [f32], lse: &mut [f32]) {
    attention_forward_masked(h, Mask::causal(h.head_dim), q, k, v, starts, o, lse)
}

/// [`attention_forward`] with a given score scale and, where `mask.window` says, a sliding window.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_masked(
    h: Heads,
    mask: Mask,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    starts: &[usize],
    o: &mut [f32],
    lse: &mut [f32],
) {
    let (hd, qd, kvd) = (h.head_dim, h.qd(), h.kvd());
    let scale = mask.scale;
    let spans = example_spans(starts);
    let tasks: Vec<(usize, std::ops::Range<usize>)> =
        (0..h.n_head).flat_map(|head| spans.iter().map(move |s| (head, s.clone()))).collect();
    let done: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|(head, span)| {
            let n = span.len();
            let kh = h.kv_head(*head) * hd;
            let qb = gather(q, span.clone(), qd, head * hd, hd);
            let kt = transpose(&gather(k, span.clone(), kvd, kh, hd), n, hd);
            let mut p = matmul_f32(&qb, &kt, n, hd, n);
            let mut l = vec![0f32; n];
            for (i, row) in p.chunks_exact_mut(n).enumerate() {
                let lo = mask.first(i);
                let max = row[lo..=i].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
                let mut sum = 0f32;
                for x in row[lo..=i].iter_mut() {
                    *x = (*x * scale - max).exp();
                    sum += *x;
                }
                row[lo..=i].iter_mut().for_each(|x| *x /= sum);
                row[..lo].fill(0.0);
                row[i + 1..].fill(0.0);
                l[i] = max + sum.ln();
            }
            (matmul_f32(&p, &gather(v, span.clone(), kvd, kh, hd), n, n, hd), l)
        })
        .collect();
    for ((head, span), (ob, l)) in tasks.iter().zip(&done) {
        for (r, i) in span.clone().enumerate() {
            o[i * qd + head * hd..i * qd + (head + 1) * hd].copy_from_slice(&ob[r * hd..(r + 1) * hd]);
            lse[i * h.n_head + head] = l[r];
        }
    }
}

/// Backward of [`attention_forward`]: from `d_o` adds into `dq`, `dk`, `dv`. With `P` the
/// probabilities rebuilt from `lse`: `dV = Pᵀ·dO`, `dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O))`,
/// `dQ = scale · dS·K`, `dK = scale · dSᵀ·Q`, each a dense product per (head, example). The
/// (head, example) tasks run in parallel and their gradients are summed afterwards in a fixed
/// order (identical runs stay identical).
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
    attention_backward_masked(h, Mask::causal(h.head_dim), q, k, v, o, lse, starts, d_o, dq, dk, dv)
}

/// Backward of [`attention_forward_masked`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_masked(
    h: Heads,
    mask: Mask,
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
    let scale = mask.scale;
    let spans = example_spans(starts);
    let tasks: Vec<(usize, std::ops::Range<usize>)> =
        (0..h.n_head).flat_map(|head| spans.iter().map(move |s| (head, s.clone()))).collect();
    type Parts = (Vec<f32>, Vec<f32>, Vec<f32>);
    let done: Vec<Parts> = tasks
        .par_iter()
        .map(|(head, span)| {
            let n = span.len();
            let kh = h.kv_head(*head) * hd;
            let qb = gather(q, span.clone(), qd, head * hd, hd);
            let kb = gather(k, span.clone(), kvd, kh, hd);
            let vb = gather(v, span.clone(), kvd, kh, hd);
            let dob = gather(d_o, span.clone(), qd, head * hd, hd);
            let ob = gather(o, span.clone(), qd, head * hd, hd);
            let mut p = matmul_f32(&qb, &transpose(&kb, n, hd), n, hd, n);
            let mut ds = matmul_f32(&dob, &transpose(&vb, n, hd), n, hd, n);
            for i in 0..n {
                let l = lse[(span.start + i) * h.n_head + head];
                let di = dot_f32(&dob[i * hd..(i + 1) * hd], &ob[i * hd..(i + 1) * hd]);
                let (prow, drow) = (&mut p[i * n..(i + 1) * n], &mut ds[i * n..(i + 1) * n]);
                let lo = mask.first(i);
                for j in lo..=i {
                    prow[j] = (prow[j] * scale - l).exp();
                    drow[j] = prow[j] * (drow[j] - di) * scale;
                }
                prow[..lo].fill(0.0);
                drow[..lo].fill(0.0);
                prow[i + 1..].fill(0.0);
                drow[i + 1..].fill(0.0);
            }
            let gq = matmul_f32(&ds, &kb, n, n, hd);
            let gk = matmul_f32(&transpose(&ds, n, n), &qb, n, n, hd);
            let gv = matmul_f32(&transpose(&p, n, n), &dob, n, n, hd);
            (gq, gk, gv)
        })
        .collect();
    for ((head, span), (gq, gk, gv)) in tasks.iter().zip(&done) {
        let kh = h.kv_head(*head) * hd;
        for (r, i) in span.clone().enumerate() {
            let src = r * hd..(r + 1) * hd;
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
    let zt = z[target];
    let sum = crate::cpu::exp_shift_sum(z, max);
    let lse = max + sum.ln();
    let loss = w * (lse - zt);
    let c = w / norm;
    let k = c / sum;
    z.iter_mut().for_each(|x| *x *= k);
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
    let out_f = b.len() / rank.max(1);
    // Bᵀ (r × out): the rank-sized products run as long rows, not one call per output value.
    let bt = transpose(b, out_f, rank);
    y.par_chunks_mut(out_f.max(1)).zip(ax.par_chunks(rank.max(1))).for_each(|(yr, axr)| {
        for (k, &v) in axr.iter().enumerate() {
            axpy(scale * v, &bt[k * out_f..(k + 1) * out_f], yr);
        }
    });
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
    let m = ax.len() / rank.max(1);
    // dBᵀ (r × out): row k gathers Σ_t scale·ax[t][k]·dy[t].
    let mut dbt = vec![0f32; rank * out_f];
    gemm_tn_add(ax, dy, rank, scale, &mut dbt);
    for o in 0..out_f {
        for k in 0..rank {
            g.db[o * rank + k] += dbt[k * out_f + o];
        }
    }
    let bt = transpose(b, out_f, rank);
    let mut dax = vec![0f32; m * rank];
    dax.par_chunks_mut(rank.max(1)).zip(dy.par_chunks(out_f.max(1))).for_each(|(dr, dyr)| {
        for (k, v) in dr.iter_mut().enumerate() {
            *v = scale * dot_f32(dyr, &bt[k * out_f..(k + 1) * out_f]);
        }
    });
    gemm_tn_add(&dax, x, rank, 1.0, g.da);
    if let Some(dx) = g.dx {
        gemm_nn_add(&dax, a, rank, 1.0, dx);
    }
}
