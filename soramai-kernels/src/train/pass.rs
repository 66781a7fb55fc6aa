//! One packed sequence through the model and back: each layer's forward pass with what its
//! backward needs kept ([`LayerCache`]), the LoRA projections on the frozen quantized weights, and
//! the explicit backward of every block operation.

use super::*;

/// What a layer's backward pass needs from its forward pass.
pub(super) struct LayerCache {
    x: Vec<f32>,
    xn1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    lse: Vec<f32>,
    xmid: Vec<f32>,
    xn2: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    /// `silu(g)·u`, the down projection's input.
    h: Vec<f32>,
    /// `x·Aᵀ` of each LoRA pair of the layer.
    ax: HashMap<Target, Vec<f32>>,
    /// Q and K before their per-head norms (families with q/k norms; empty otherwise).
    q_pre: Vec<f32>,
    k_pre: Vec<f32>,
    /// The attention and feed-forward outputs before their post norms (families with post
    /// norms; empty otherwise).
    o_pre: Vec<f32>,
    down_pre: Vec<f32>,
}

/// Per-row rotary angles of a packed sequence.
pub(super) struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl Rope {
    /// Applies `f` (the rotation, or its transpose in the backward pass) to the rotated dimensions
    /// of every head of every row of `q` (`T × q_dim`) and `k` (`T × kv_dim`).
    fn apply(
        &self,
        c: &crate::model::Config,
        q: &mut [f32],
        k: &mut [f32],
        f: fn(&mut [f32], &[f32], &[f32], RopeLayout),
    ) {
        let (hd, qd, kvd) = (c.head_dim, c.q_dim(), c.kv_dim());
        for i in 0..q.len() / qd.max(1) {
            let cs = &self.cos[i * self.half..(i + 1) * self.half];
            let sn = &self.sin[i * self.half..(i + 1) * self.half];
            for h in 0..c.n_head {
                f(&mut q[i * qd + h * hd..i * qd + h * hd + c.rope_dims], cs, sn, c.rope_layout);
            }
            for h in 0..c.n_head_kv {
                f(&mut k[i * kvd + h * hd..i * kvd + h * hd + c.rope_dims], cs, sn, c.rope_layout);
            }
        }
    }
}

impl Trainer {
    /// Forward (and with `backward`, backward) over one packed sequence: the summed weighted loss
    /// and the pairs' gradients of `loss / norm`.
    pub(super) fn run(&self, p: &Packed, norm: f32, backward: bool) -> Result<(f64, Grads)> {
        let m = &*self.model;
        let c = &m.config;
        let (d, n) = (c.n_embd, p.tokens.len());
        let mut x = vec![0f32; n * d];
        m.embed(&p.tokens, &mut x)?;
        // The global layers' angles and, where the family has sliding-window layers, theirs.
        let half = c.rope_dims / 2;
        let ropes: Vec<Rope> = m.rope_tables(&p.pos).into_iter().map(|(cos, sin)| Rope { cos, sin, half }).collect();
        let rope_of = |l: usize| &ropes[usize::from(c.is_local(l))];
        let lowest = self.lowest_layer();
        let mut caches: Vec<Option<LayerCache>> = Vec::with_capacity(c.n_layer);
        let mut inputs: Vec<Vec<f32>> = vec![Vec::new(); c.n_layer];
        for l in 0..c.n_layer {
            let keep = backward && l >= lowest;
            if keep && self.config.checkpoint_activations {
                inputs[l] = x.clone();
            }
            let (out, cache) = self.layer_forward(l, x, rope_of(l), &p.starts)?;
            caches.push(if keep && !self.config.checkpoint_activations { Some(cache) } else { None });
            x = out;
        }
        // Head: logits only for rows that predict a weighted token.
        let rows: Vec<usize> = (0..n.saturating_sub(1)).filter(|&i| p.weights[i + 1] > 0.0).collect();
        let mut dx = vec![0f32; if backward { n * d } else { 0 }];
        let mut loss = 0f64;
        let exact_out = if backward && self.output.bwd.is_none() { Some(m.output.dequantize()?) } else { None };
        for chunk in rows.chunks(32) {
            let mut h = vec![0f32; chunk.len() * d];
            for (k, &r) in chunk.iter().enumerate() {
                fwd::rms_norm(&x[r * d..(r + 1) * d], &m.output_norm, c.eps, &mut h[k * d..(k + 1) * d]);
            }
            let mut z = vec![0f32; chunk.len() * c.vocab];
            match &self.output.fwd {
                Some(w) => w.matmul(&QuantRows::new(&h, d)?, &mut z, false)?,
                None => m.output.matmul(&h, &mut z, self.config.precision)?,
            }
            let losses: Vec<f32> = z
                .par_chunks_mut(c.vocab)
                .zip(chunk.par_iter())
                .map(|(zr, &r)| ops::cross_entropy_backward(zr, p.tokens[r + 1] as usize, p.weights[r + 1], norm))
                .collect();
            loss += losses.iter().map(|&v| f64::from(v)).sum::<f64>();
            if !backward {
                continue;
            }
            let mut dh = vec![0f32; chunk.len() * d];
            match (&self.output.bwd, &exact_out) {
                (Some(wt), _) => wt.matmul(&QuantRows::new(&z, c.vocab)?, &mut dh, true)?,
                (None, Some(w)) => ops::gemm_nn_add(&z, w, c.vocab, 1.0, &mut dh),
                (None, None) => return Err(Error::Training("no output weight for the backward pass".into())),
            }
            for (k, &r) in chunk.iter().enumerate() {
                ops::rms_norm_backward(
                    &x[r * d..(r + 1) * d],
                    &m.output_norm,
                    c.eps,
                    &dh[k * d..(k + 1) * d],
                    &mut dx[r * d..(r + 1) * d],
                );
            }
        }
        let mut grads = Grads::new();
        if !backward {
            return Ok((loss, grads));
        }
        for l in (lowest..c.n_layer).rev() {
            let cache = match caches[l].take() {
                Some(cache) => cache,
                None => self.layer_forward(l, std::mem::take(&mut inputs[l]), rope_of(l), &p.starts)?.1,
            };
            dx = self.layer_backward(l, &cache, rope_of(l), &p.starts, dx, l > lowest, &mut grads)?;
        }
        Ok((loss, grads))
    }

    /// A base projection plus its pair (if any): `out = input·Wᵀ (+ scale·B·A·input)`.
    fn project(
        &self,
        l: usize,
        t: Target,
        input: &[f32],
        qin: Option<&QuantRows>,
        out: &mut [f32],
        ax: &mut HashMap<Target, Vec<f32>>,
    ) -> Result<()> {
        match (self.frozen.get(&(l, t)).and_then(|f| f.fwd.as_ref()), qin) {
            (Some(w), Some(q)) => w.matmul(q, out, false)?,
            _ => self.model.layers[l].weight(t).matmul(input, out, self.config.precision)?,
        }
        if let Some(p) = self.pairs.get(&(l, t)) {
            ax.insert(t, ops::lora_forward(&p.a.value, &p.b.value, self.config.rank, self.scale(), input, out));
        }
        Ok(())
    }

    /// `x` quantized for layer `l`'s packed products (none where the layer has none).
    fn quantize_for(&self, l: usize, x: &[f32], cols: usize) -> Result<Option<QuantRows>> {
        if self.frozen.contains_key(&(l, Target::Q)) { quantized(x, cols) } else { Ok(None) }
    }

    fn layer_forward(&self, l: usize, x: Vec<f32>, rope: &Rope, starts: &[usize]) -> Result<(Vec<f32>, LayerCache)> {
        let c = &self.model.config;
        let layer = &self.model.layers[l];
        let n = starts.len();
        let (d, qd, kvd, hd, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.head_dim, c.n_ff);
        let mut ax = HashMap::new();
        let mut xn1 = vec![0f32; n * d];
        norm_rows(&x, &layer.attn_norm, c.eps, &mut xn1);
        let (mut q, mut k, mut v) = (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        let q1 = self.quantize_for(l, &xn1, d)?;
        self.project(l, Target::Q, &xn1, q1.as_ref(), &mut q, &mut ax)?;
        self.project(l, Target::K, &xn1, q1.as_ref(), &mut k, &mut ax)?;
        self.project(l, Target::V, &xn1, q1.as_ref(), &mut v, &mut ax)?;
        if let Some([bq, bk, bv]) = &layer.bias {
            add_bias(&mut q, bq);
            add_bias(&mut k, bk);
            add_bias(&mut v, bv);
        }
        // Per-head q/k norms (heads are rows of `head_dim`), keeping the inputs for the backward.
        let q_pre = post_norm(layer.qk_norm.as_ref().map(|[qn, _]| qn), c.eps, &mut q);
        let k_pre = post_norm(layer.qk_norm.as_ref().map(|[_, kn]| kn), c.eps, &mut k);
        rope.apply(c, &mut q, &mut k, fwd::rope);
        let heads = Heads { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: hd };
        let mut att = vec![0f32; n * qd];
        let mut lse = vec![0f32; n * c.n_head];
        ops::attention_forward_masked(heads, mask(c, l), &q, &k, &v, starts, &mut att, &mut lse);
        let mut o = vec![0f32; n * d];
        self.project(l, Target::O, &att, self.quantize_for(l, &att, qd)?.as_ref(), &mut o, &mut ax)?;
        let o_pre = post_norm(layer.post_norms.as_ref().map(|[a, _]| a), c.eps, &mut o);
        let mut xmid = x.clone();
        xmid.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        let mut xn2 = vec![0f32; n * d];
        norm_rows(&xmid, &layer.ffn_norm, c.eps, &mut xn2);
        let (mut g, mut u) = (vec![0f32; n * ff], vec![0f32; n * ff]);
        let q2 = self.quantize_for(l, &xn2, d)?;
        self.project(l, Target::Gate, &xn2, q2.as_ref(), &mut g, &mut ax)?;
        self.project(l, Target::Up, &xn2, q2.as_ref(), &mut u, &mut ax)?;
        let mut h = g.clone();
        let act = match c.family.activation() {
            Activation::SwiGlu => fwd::swiglu,
            Activation::GeGlu => fwd::geglu,
        };
        h.par_chunks_mut(ff).zip(u.par_chunks(ff)).for_each(|(hr, ur)| act(hr, ur));
        let mut out = vec![0f32; n * d];
        self.project(l, Target::Down, &h, self.quantize_for(l, &h, ff)?.as_ref(), &mut out, &mut ax)?;
        let down_pre = post_norm(layer.post_norms.as_ref().map(|[_, f]| f), c.eps, &mut out);
        out.iter_mut().zip(&xmid).for_each(|(a, b)| *a += b);
        let cache = LayerCache { x, xn1, q, k, v, att, lse, xmid, xn2, g, u, h, ax, q_pre, k_pre, o_pre, down_pre };
        Ok((out, cache))
    }

    /// `dx += dy·W` through the frozen base weight.
    fn frozen_backward(&self, l: usize, t: Target, dy: &[f32], dx: &mut [f32]) -> Result<()> {
        let w = self.model.layers[l].weight(t);
        match self.frozen.get(&(l, t)).and_then(|f| f.bwd.as_ref()) {
            Some(wt) => wt.matmul(&QuantRows::new(dy, w.rows)?, dx, true)?,
            None => ops::gemm_nn_add(dy, &w.dequantize()?, w.rows, 1.0, dx),
        }
        Ok(())
    }

    /// Backward of [`Trainer::project`]: the pair's gradients into `grads`, and (when `dx` is given)
    /// the input gradient through the frozen weight and the pair.
    #[allow(clippy::too_many_arguments)]
    fn project_backward(
        &self,
        l: usize,
        t: Target,
        input: &[f32],
        cache: &LayerCache,
        dy: &[f32],
        mut dx: Option<&mut [f32]>,
        grads: &mut Grads,
    ) -> Result<()> {
        if let Some(dx) = dx.as_deref_mut() {
            self.frozen_backward(l, t, dy, dx)?;
        }
        if let (Some(p), Some(ax)) = (self.pairs.get(&(l, t)), cache.ax.get(&t)) {
            let e = grads.entry((l, t)).or_insert_with(|| (vec![0.0; p.a.value.len()], vec![0.0; p.b.value.len()]));
            let g = LoraGrads { da: &mut e.0, db: &mut e.1, dx };
            ops::lora_backward(&p.a.value, &p.b.value, self.config.rank, self.scale(), input, ax, dy, g);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_backward(
        &self,
        l: usize,
        cache: &LayerCache,
        rope: &Rope,
        starts: &[usize],
        dout: Vec<f32>,
        need_dx: bool,
        grads: &mut Grads,
    ) -> Result<Vec<f32>> {
        let c = &self.model.config;
        let layer = &self.model.layers[l];
        let n = starts.len();
        let (d, qd, kvd, hd, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.head_dim, c.n_ff);
        // Feed-forward (through its post norm where the family has one).
        let mut dh = vec![0f32; n * ff];
        let d_down = post_norm_backward(layer.post_norms.as_ref().map(|[_, f]| f), c.eps, &cache.down_pre, &dout);
        self.project_backward(
            l,
            Target::Down,
            &cache.h,
            cache,
            d_down.as_deref().unwrap_or(&dout),
            Some(&mut dh),
            grads,
        )?;
        let (mut dg, mut du) = (vec![0f32; n * ff], vec![0f32; n * ff]);
        let act_backward = match c.family.activation() {
            Activation::SwiGlu => ops::swiglu_backward,
            Activation::GeGlu => ops::geglu_backward,
        };
        dg.par_chunks_mut(ff).zip(du.par_chunks_mut(ff)).enumerate().for_each(|(i, (dgr, dur))| {
            let r = i * ff..(i + 1) * ff;
            act_backward(&cache.g[r.clone()], &cache.u[r.clone()], &dh[r], dgr, dur);
        });
        let mut dxn2 = vec![0f32; n * d];
        self.project_backward(l, Target::Gate, &cache.xn2, cache, &dg, Some(&mut dxn2), grads)?;
        self.project_backward(l, Target::Up, &cache.xn2, cache, &du, Some(&mut dxn2), grads)?;
        let mut dxmid = dout;
        ops::rms_norm_backward_rows(&cache.xmid, &layer.ffn_norm, c.eps, &dxn2, &mut dxmid);
        // Attention.
        let mut datt = vec![0f32; n * qd];
        let d_o = post_norm_backward(layer.post_norms.as_ref().map(|[a, _]| a), c.eps, &cache.o_pre, &dxmid);
        self.project_backward(
            l,
            Target::O,
            &cache.att,
            cache,
            d_o.as_deref().unwrap_or(&dxmid),
            Some(&mut datt),
            grads,
        )?;
        let (mut dq, mut dk, mut dv) = (vec![0f32; n * qd], vec![0f32; n * kvd], vec![0f32; n * kvd]);
        let heads = Heads { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: hd };
        let (q, k, v) = (&cache.q, &cache.k, &cache.v);
        let (o, lse) = (&cache.att, &cache.lse);
        ops::attention_backward_masked(heads, mask(c, l), q, k, v, o, lse, starts, &datt, &mut dq, &mut dk, &mut dv);
        rope.apply(c, &mut dq, &mut dk, ops::rope_backward);
        if let Some([qn, kn]) = &layer.qk_norm {
            let (mut dq_pre, mut dk_pre) = (vec![0f32; n * qd], vec![0f32; n * kvd]);
            ops::rms_norm_backward_rows(&cache.q_pre, qn, c.eps, &dq, &mut dq_pre);
            ops::rms_norm_backward_rows(&cache.k_pre, kn, c.eps, &dk, &mut dk_pre);
            dq = dq_pre;
            dk = dk_pre;
        }
        let mut dxn1 = vec![0f32; if need_dx { n * d } else { 0 }];
        for (t, dy) in [(Target::Q, &dq), (Target::K, &dk), (Target::V, &dv)] {
            let dx = if need_dx { Some(&mut dxn1[..]) } else { None };
            self.project_backward(l, t, &cache.xn1, cache, dy, dx, grads)?;
        }
        if !need_dx {
            return Ok(Vec::new());
        }
        let mut dx = dxmid;
        ops::rms_norm_backward_rows(&cache.x, &layer.attn_norm, c.eps, &dxn1, &mut dx);
        Ok(dx)
    }
}

/// The attention mask of layer `l`: the family's score scale, and its window on sliding layers.
fn mask(c: &crate::model::Config, l: usize) -> Mask {
    Mask { scale: c.attn_scale, window: if c.is_local(l) { c.sliding_window } else { None } }
}

/// The gradient before a post norm from the one after it (`None` where there is no post norm).
fn post_norm_backward(w: Option<&Vec<f32>>, eps: f32, pre: &[f32], dy: &[f32]) -> Option<Vec<f32>> {
    let w = w?;
    let mut dx = vec![0f32; dy.len()];
    ops::rms_norm_backward_rows(pre, w, eps, dy, &mut dx);
    Some(dx)
}
