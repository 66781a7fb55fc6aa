//! Elementwise and normalization ops of the llama forward pass.

/// RMSNorm: `out = x / sqrt(mean(x²) + eps) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for ((o, v), g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SwiGLU: `gate = silu(gate) * up`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// GeGLU: `gate = gelu(gate) * up`, GELU in its tanh form (as Gemma and llama.cpp compute it).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    for (g, u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh()) * u;
    }
}

/// Rotary position embedding layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(x[2i], x[2i+1])` (GGUF llama: Q and K rows were permuted at conversion).
    Interleaved,
    /// Halves `(x[i], x[i + d/2])` (GPT-NeoX, Qwen2).
    Neox,
}

/// Precomputed cos/sin for one position: `d/2` angles `pos · base^(-2i/d)`.
pub fn rope_angles(pos: usize, dims: usize, base: f32, out_cos: &mut [f32], out_sin: &mut [f32]) {
    for i in 0..dims / 2 {
        let theta = pos as f32 * base.powf(-2.0 * i as f32 / dims as f32);
        out_cos[i] = theta.cos();
        out_sin[i] = theta.sin();
    }
}

/// As [`rope_angles`], with positions scaled by `scale` (linear RoPE scaling) and each angle
/// divided by its frequency factor where `factors` (`dims/2` values, `rope_freqs`) are given.
pub fn rope_angles_scaled(
    pos: usize,
    dims: usize,
    base: f32,
    scale: f32,
    factors: Option<&[f32]>,
    out_cos: &mut [f32],
    out_sin: &mut [f32],
) {
    let p = pos as f32 * scale;
    for i in 0..dims / 2 {
        let f = factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0);
        let theta = p * base.powf(-2.0 * i as f32 / dims as f32) / f;
        out_cos[i] = theta.cos();
        out_sin[i] = theta.sin();
    }
}

/// Rotates the first `cos.len() * 2` dimensions of one head.
pub fn rope(head: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    let half = cos.len();
    for i in 0..half {
        let (a, b) = match layout {
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            RopeLayout::Neox => (i, i + half),
        };
        let (x0, x1) = (head[a], head[b]);
        head[a] = x0 * cos[i] - x1 * sin[i];
        head[b] = x0 * sin[i] + x1 * cos[i];
    }
}

/// Attention of one KV head's query group at one position: `q` holds `group` query heads of
/// `hd` values, `ks`/`vs` the cached keys and values (`n_pos` rows of `stride` values, this head's
/// slice starting at `offset`), `out` receives `group × hd` values. The scalar twin of the AVX2
/// kernel that [`crate::cpu::attend`] picks where the CPU has it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_body(
    q: &[f32],
    ks: &[f32],
    vs: &[f32],
    stride: usize,
    offset: usize,
    n_pos: usize,
    hd: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let group = q.len() / hd;
    scores.clear();
    scores.resize(group * n_pos, 0.0);
    for p in 0..n_pos {
        let k = &ks[p * stride + offset..p * stride + offset + hd];
        for g in 0..group {
            let qh = &q[g * hd..(g + 1) * hd];
            let mut acc = [0f32; 8];
            for (qc, kc) in qh.chunks_exact(8).zip(k.chunks_exact(8)) {
                for i in 0..8 {
                    acc[i] = qc[i].mul_add(kc[i], acc[i]);
                }
            }
            let mut s: f32 = acc.iter().sum();
            for i in hd - hd % 8..hd {
                s += qh[i] * k[i];
            }
            scores[g * n_pos + p] = s * scale;
        }
    }
    for g in 0..group {
        softmax(&mut scores[g * n_pos..(g + 1) * n_pos]);
    }
    out.fill(0.0);
    for p in 0..n_pos {
        let v = &vs[p * stride + offset..p * stride + offset + hd];
        for g in 0..group {
            let w = scores[g * n_pos + p];
            for (o, x) in out[g * hd..(g + 1) * hd].iter_mut().zip(v) {
                *o = w.mul_add(*x, *o);
            }
        }
    }
}
