//! Training: every op's backward pass against central finite differences of an f64 twin, the whole
//! model's LoRA gradients against finite differences of the independent f64 reference forward,
//! determinism, checkpoint/resume, packing, chat examples and hostile training input.

mod common;

use std::sync::Arc;

use common::{Deltas, rand_vec, reference_logits, retarget, tiny_model_bytes, tiny_train_model, train_example};
use soramai_kernels::cpu::ops::{self as fwd, RopeLayout};
use soramai_kernels::gguf::Gguf;
use soramai_kernels::lora::Target;
use soramai_kernels::model::Model;
use soramai_kernels::quant::GgmlType;
use soramai_kernels::train::ops::{self, Heads, LoraGrads};
use soramai_kernels::train::{Example, TrainConfig, TrainMessage, Trainer, batch_plan, data};
use soramai_kernels::{Engine, Error, Precision};

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Central differences of a scalar f64 function.
fn numeric(f: impl Fn(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
    let h = 1e-6;
    let mut p = x.to_vec();
    (0..x.len())
        .map(|i| {
            p[i] = x[i] + h;
            let up = f(&p);
            p[i] = x[i] - h;
            let down = f(&p);
            p[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Relative L2 error of an analytic gradient against a numeric one.
fn assert_close(what: &str, analytic: &[f32], numeric: &[f64], tol: f64) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: lengths");
    let diff: f64 = analytic.iter().zip(numeric).map(|(a, n)| (f64::from(*a) - n).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = numeric.iter().map(|n| n * n).sum::<f64>().sqrt();
    assert!(norm > 1e-9, "{what}: numeric gradient is zero");
    assert!(diff / norm < tol, "{what}: relative error {:.2e} (norm {norm:.3e})", diff / norm);
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rms64(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let s = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
    x.iter().zip(w).map(|(v, g)| v * s * g).collect()
}

#[test]
fn rms_norm_backward_matches_finite_differences() {
    let (x, w, r) = (rand_vec(1, 24, 2.0), rand_vec(2, 24, 1.0), rand_vec(3, 24, 1.0));
    let mut dx = vec![0f32; 24];
    ops::rms_norm_backward(&x, &w, 1e-5, &r, &mut dx);
    let (w64, r64) = (f64s(&w), f64s(&r));
    let num = numeric(|x| dot(&rms64(x, &w64, 1e-5), &r64), &f64s(&x));
    assert_close("rms_norm dx", &dx, &num, 1e-4);
    // Backward adds into what is there.
    let mut twice = dx.clone();
    ops::rms_norm_backward(&x, &w, 1e-5, &r, &mut twice);
    assert!(twice.iter().zip(&dx).all(|(t, d)| (t - 2.0 * d).abs() <= 1e-6 * d.abs().max(1.0)));
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let (g, u, r) = (rand_vec(4, 16, 4.0), rand_vec(5, 16, 2.0), rand_vec(6, 16, 1.0));
    let (mut dg, mut du) = (vec![0f32; 16], vec![0f32; 16]);
    ops::swiglu_backward(&g, &u, &r, &mut dg, &mut du);
    let r64 = f64s(&r);
    let silu = |v: f64| v / (1.0 + (-v).exp());
    let (g64, u64) = (f64s(&g), f64s(&u));
    let num_g = numeric(|g| g.iter().zip(&u64).zip(&r64).map(|((g, u), r)| silu(*g) * u * r).sum(), &g64);
    let num_u = numeric(|u| g64.iter().zip(u).zip(&r64).map(|((g, u), r)| silu(*g) * u * r).sum(), &u64);
    assert_close("swiglu dg", &dg, &num_g, 1e-5);
    assert_close("swiglu du", &du, &num_u, 1e-5);
}

#[test]
fn geglu_backward_matches_finite_differences() {
    let (g, u, r) = (rand_vec(14, 16, 4.0), rand_vec(15, 16, 2.0), rand_vec(16, 16, 1.0));
    let (mut dg, mut du) = (vec![0f32; 16], vec![0f32; 16]);
    ops::geglu_backward(&g, &u, &r, &mut dg, &mut du);
    let r64 = f64s(&r);
    let gelu = |v: f64| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh());
    let (g64, u64) = (f64s(&g), f64s(&u));
    let num_g = numeric(|g| g.iter().zip(&u64).zip(&r64).map(|((g, u), r)| gelu(*g) * u * r).sum(), &g64);
    let num_u = numeric(|u| g64.iter().zip(u).zip(&r64).map(|((g, u), r)| gelu(*g) * u * r).sum(), &u64);
    assert_close("geglu dg", &dg, &num_g, 1e-5);
    assert_close("geglu du", &du, &num_u, 1e-5);
    // The forward twin computes the same GELU.
    let mut h = g.clone();
    fwd::geglu(&mut h, &u);
    for i in 0..16 {
        assert!((f64::from(h[i]) - gelu(g64[i]) * u64[i]).abs() < 1e-4, "geglu forward {i}");
    }
}

#[test]
fn rope_backward_matches_finite_differences_in_both_layouts() {
    for layout in [RopeLayout::Interleaved, RopeLayout::Neox] {
        let (head, r) = (rand_vec(7, 16, 1.0), rand_vec(8, 16, 1.0));
        let (mut cos, mut sin) = (vec![0f32; 8], vec![0f32; 8]);
        fwd::rope_angles(5, 16, 10000.0, &mut cos, &mut sin);
        let mut d = r.clone();
        ops::rope_backward(&mut d, &cos, &sin, layout);
        let r64 = f64s(&r);
        let num = numeric(
            |h| {
                let mut y: Vec<f32> = h.iter().map(|&v| v as f32).collect();
                // The forward is linear in the head, so f32 evaluation of each basis direction is
                // exact enough; rebuild it in f64 from the rotation itself.
                let mut out = vec![0f64; 16];
                for i in 0..16 {
                    let mut e = vec![0f32; 16];
                    e[i] = 1.0;
                    fwd::rope(&mut e, &cos, &sin, layout);
                    for j in 0..16 {
                        out[j] += h[i] * f64::from(e[j]);
                    }
                }
                y.clear();
                dot(&out, &r64)
            },
            &f64s(&head),
        );
        assert_close("rope dhead", &d, &num, 1e-5);
    }
}

/// f64 twin of packed causal attention.
fn attention64(h: Heads, q: &[f64], k: &[f64], v: &[f64], starts: &[usize]) -> Vec<f64> {
    attention64_masked(h, 1.0 / (h.head_dim as f64).sqrt(), None, q, k, v, starts)
}

/// f64 twin of packed attention with a score scale and an optional sliding window.
fn attention64_masked(
    h: Heads,
    scale: f64,
    window: Option<usize>,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    starts: &[usize],
) -> Vec<f64> {
    let (hd, qd, kvd) = (h.head_dim, h.n_head * h.head_dim, h.n_head_kv * h.head_dim);
    let mut o = vec![0f64; starts.len() * qd];
    for i in 0..starts.len() {
        for head in 0..h.n_head {
            let kh = head / (h.n_head / h.n_head_kv) * hd;
            let qi = &q[i * qd + head * hd..i * qd + (head + 1) * hd];
            let first = window.map_or(starts[i], |w| (i + 1).saturating_sub(w).max(starts[i]));
            let s: Vec<f64> = (first..=i).map(|j| dot(qi, &k[j * kvd + kh..j * kvd + kh + hd]) * scale).collect();
            let mx = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
            for (jj, sj) in s.iter().enumerate() {
                let j = first + jj;
                for c in 0..hd {
                    o[i * qd + head * hd + c] += (sj - mx).exp() / z * v[j * kvd + kh + c];
                }
            }
        }
    }
    o
}

#[test]
fn packed_attention_forward_and_backward_match_f64() {
    let h = Heads { n_head: 4, n_head_kv: 2, head_dim: 8 };
    // Two examples packed: rows 0..4 and 4..9.
    let starts = [0, 0, 0, 0, 4, 4, 4, 4, 4];
    let t = starts.len();
    let (q, k, v) = (rand_vec(9, t * 32, 1.0), rand_vec(10, t * 16, 1.0), rand_vec(11, t * 16, 1.0));
    let r = rand_vec(12, t * 32, 1.0);
    let mut o = vec![0f32; t * 32];
    let mut lse = vec![0f32; t * 4];
    ops::attention_forward(h, &q, &k, &v, &starts, &mut o, &mut lse);
    let o64 = attention64(h, &f64s(&q), &f64s(&k), &f64s(&v), &starts);
    assert!(o.iter().zip(&o64).all(|(a, b)| (f64::from(*a) - b).abs() < 1e-5), "forward");
    let (mut dq, mut dk, mut dv) = (vec![0f32; t * 32], vec![0f32; t * 16], vec![0f32; t * 16]);
    ops::attention_backward(h, &q, &k, &v, &o, &lse, &starts, &r, &mut dq, &mut dk, &mut dv);
    let (q64, k64, v64, r64) = (f64s(&q), f64s(&k), f64s(&v), f64s(&r));
    let nq = numeric(|q| dot(&attention64(h, q, &k64, &v64, &starts), &r64), &q64);
    let nk = numeric(|k| dot(&attention64(h, &q64, k, &v64, &starts), &r64), &k64);
    let nv = numeric(|v| dot(&attention64(h, &q64, &k64, v, &starts), &r64), &v64);
    assert_close("attention dq", &dq, &nq, 1e-4);
    assert_close("attention dk", &dk, &nk, 1e-4);
    assert_close("attention dv", &dv, &nv, 1e-4);
    // Nothing leaks across the packing boundary: the first example's keys get no gradient from
    // the second example's queries.
    let mut dk2 = vec![0f32; t * 16];
    let mut r2 = r.clone();
    r2[..4 * 32].fill(0.0);
    ops::attention_backward(
        h,
        &q,
        &k,
        &v,
        &o,
        &lse,
        &starts,
        &r2,
        &mut vec![0f32; t * 32],
        &mut dk2,
        &mut vec![0f32; t * 16],
    );
    assert!(dk2[..4 * 16].iter().all(|&g| g == 0.0));
}

#[test]
fn windowed_attention_with_its_own_scale_matches_f64() {
    let h = Heads { n_head: 4, n_head_kv: 1, head_dim: 8 };
    let starts = [0, 0, 0, 0, 0, 0, 0, 7, 7, 7, 7, 7];
    let t = starts.len();
    let mask = ops::Mask { scale: 0.2, window: Some(3) };
    let (q, k, v) = (rand_vec(19, t * 32, 1.0), rand_vec(20, t * 8, 1.0), rand_vec(21, t * 8, 1.0));
    let r = rand_vec(22, t * 32, 1.0);
    let (mut o, mut lse) = (vec![0f32; t * 32], vec![0f32; t * 4]);
    ops::attention_forward_masked(h, mask, &q, &k, &v, &starts, &mut o, &mut lse);
    let f = |q: &[f64], k: &[f64], v: &[f64]| attention64_masked(h, 0.2, Some(3), q, k, v, &starts);
    let (q64, k64, v64, r64) = (f64s(&q), f64s(&k), f64s(&v), f64s(&r));
    assert!(o.iter().zip(&f(&q64, &k64, &v64)).all(|(a, b)| (f64::from(*a) - b).abs() < 1e-5), "forward");
    let (mut dq, mut dk, mut dv) = (vec![0f32; t * 32], vec![0f32; t * 8], vec![0f32; t * 8]);
    ops::attention_backward_masked(h, mask, &q, &k, &v, &o, &lse, &starts, &r, &mut dq, &mut dk, &mut dv);
    assert_close("windowed dq", &dq, &numeric(|q| dot(&f(q, &k64, &v64), &r64), &q64), 1e-4);
    assert_close("windowed dk", &dk, &numeric(|k| dot(&f(&q64, k, &v64), &r64), &k64), 1e-4);
    assert_close("windowed dv", &dv, &numeric(|v| dot(&f(&q64, &k64, v), &r64), &v64), 1e-4);
    // Row 6 sees rows 4..=6 only: key 3 gets no gradient from it.
    let mut only6 = vec![0f32; t * 32];
    only6[6 * 32..7 * 32].copy_from_slice(&r[6 * 32..7 * 32]);
    let mut dk6 = vec![0f32; t * 8];
    let (mut sq, mut sv) = (vec![0f32; t * 32], vec![0f32; t * 8]);
    ops::attention_backward_masked(h, mask, &q, &k, &v, &o, &lse, &starts, &only6, &mut sq, &mut dk6, &mut sv);
    assert!(dk6[3 * 8..4 * 8].iter().all(|&g| g == 0.0) && dk6[4 * 8..5 * 8].iter().any(|&g| g != 0.0));
}

#[test]
fn cross_entropy_backward_matches_finite_differences() {
    let z = rand_vec(13, 40, 3.0);
    let (target, w, norm) = (17usize, 0.7f32, 2.5f32);
    let mut dz = z.clone();
    let loss = ops::cross_entropy_backward(&mut dz, target, w, norm);
    let ce = |z: &[f64]| {
        let mx = z.iter().cloned().fold(f64::MIN, f64::max);
        let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
        f64::from(w) * (lse - z[target])
    };
    let z64 = f64s(&z);
    assert!((f64::from(loss) - ce(&z64)).abs() < 1e-5);
    let num: Vec<f64> = numeric(ce, &z64).into_iter().map(|g| g / f64::from(norm)).collect();
    assert_close("cross-entropy dz", &dz, &num, 1e-5);
}

#[test]
fn lora_backward_matches_finite_differences() {
    let (rank, in_f, out_f, m, scale) = (3usize, 10usize, 6usize, 4usize, 1.7f32);
    let (a, b, x, r) = (
        rand_vec(14, rank * in_f, 1.0),
        rand_vec(15, out_f * rank, 1.0),
        rand_vec(16, m * in_f, 1.0),
        rand_vec(17, m * out_f, 1.0),
    );
    let mut y = vec![0f32; m * out_f];
    let ax = ops::lora_forward(&a, &b, rank, scale, &x, &mut y);
    let (mut da, mut db, mut dx) = (vec![0f32; a.len()], vec![0f32; b.len()], vec![0f32; x.len()]);
    ops::lora_backward(&a, &b, rank, scale, &x, &ax, &r, LoraGrads { da: &mut da, db: &mut db, dx: Some(&mut dx) });
    let f = |a: &[f64], b: &[f64], x: &[f64]| -> f64 {
        let mut total = 0.0;
        for t in 0..m {
            let xa: Vec<f64> =
                (0..rank).map(|j| dot(&a[j * in_f..(j + 1) * in_f], &x[t * in_f..(t + 1) * in_f])).collect();
            for o in 0..out_f {
                total += f64::from(scale) * dot(&b[o * rank..(o + 1) * rank], &xa) * f64::from(r[t * out_f + o]);
            }
        }
        total
    };
    let (a64, b64, x64) = (f64s(&a), f64s(&b), f64s(&x));
    assert!((dot(&f64s(&y), &f64s(&r)) - f(&a64, &b64, &x64)).abs() < 1e-4, "forward");
    assert_close("lora dA", &da, &numeric(|a| f(a, &b64, &x64), &a64), 1e-5);
    assert_close("lora dB", &db, &numeric(|b| f(&a64, b, &x64), &b64), 1e-5);
    assert_close("lora dx", &dx, &numeric(|x| f(&a64, &b64, x), &x64), 1e-5);
}

/// The batch's mean weighted loss from the independent f64 forward, each example on its own.
fn reference_loss(model: &Model, batch: &[Example], deltas: &Deltas) -> f64 {
    let (mut sum, mut norm) = (0.0, 0.0);
    for e in batch {
        for i in 1..e.tokens.len() {
            let w = f64::from(e.weights[i]);
            if w == 0.0 {
                continue;
            }
            let z = reference_logits(model, &e.tokens[..i], Some(deltas));
            let mx = z.iter().cloned().fold(f64::MIN, f64::max);
            let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            sum += w * (lse - z[e.tokens[i] as usize]);
            norm += w;
        }
    }
    sum / norm
}

fn deltas_of(tr: &Trainer, model: &Model, scale: f64, a_override: Option<(usize, Target, &[f64], &[f64])>) -> Deltas {
    let mut out = Deltas::new();
    let c = &model.config;
    for l in 0..c.n_layer {
        for t in Target::ALL {
            let Some((a, b)) = tr.pair(l, t) else { continue };
            let (mut a64, mut b64) = (f64s(a), f64s(b));
            if let Some((ol, ot, oa, ob)) = a_override
                && (ol, ot) == (l, t)
            {
                a64 = oa.to_vec();
                b64 = ob.to_vec();
            }
            let (out_f, in_f) = t.shape(c);
            let rank = a.len() / in_f;
            let mut dense = vec![0f64; out_f * in_f];
            for o in 0..out_f {
                for i in 0..in_f {
                    dense[o * in_f + i] = scale * (0..rank).map(|r| b64[o * rank + r] * a64[r * in_f + i]).sum::<f64>();
                }
            }
            out.insert((l, t), dense);
        }
    }
    out
}

#[test]
fn whole_model_lora_gradients_match_finite_differences_of_the_f64_reference() {
    for arch in ["llama", "qwen2"] {
        let model = tiny_train_model(arch, GgmlType::F32);
        let cfg = TrainConfig {
            rank: 2,
            alpha: 3.0,
            targets: Target::ALL.to_vec(),
            precision: Precision::Exact,
            max_seq: 32,
            ..TrainConfig::default()
        };
        let mut tr = Trainer::new(model.clone(), cfg).expect("trainer");
        // Non-zero B everywhere, so A gets gradient too.
        for (i, t) in Target::ALL.into_iter().enumerate() {
            for l in 0..model.config.n_layer {
                let (a, b) = tr.pair(l, t).map(|(a, b)| (a.to_vec(), b.len())).expect("pair");
                tr.set_pair(l, t, &a, &rand_vec(100 + i as u64 * 7 + l as u64, b, 0.3)).expect("set");
            }
        }
        let vocab = model.config.vocab;
        // Two examples that pack into one sequence.
        let batch = [train_example(31, 9, vocab), train_example(32, 7, vocab)];
        let (loss, grads) = tr.gradients(&batch).expect("gradients");
        let scale = 1.5;
        let base = reference_loss(&model, &batch, &deltas_of(&tr, &model, scale, None));
        assert!((f64::from(loss) - base).abs() < 1e-4 * base.abs().max(1.0), "{arch}: loss {loss} vs {base}");
        let mut analytic = Vec::new();
        let mut num = Vec::new();
        for l in 0..model.config.n_layer {
            for t in Target::ALL {
                let (a, b) = tr.pair(l, t).expect("pair");
                let (a64, b64) = (f64s(a), f64s(b));
                let (ga, gb) = &grads[&(l, t)];
                // A few coordinates of each matrix.
                for (is_a, idx) in [(true, 0usize), (true, a.len() - 1), (false, 1), (false, b.len() / 2)] {
                    let h = 1e-4;
                    let eval = |delta: f64| {
                        let (mut pa, mut pb) = (a64.clone(), b64.clone());
                        if is_a {
                            pa[idx] += delta
                        } else {
                            pb[idx] += delta
                        }
                        reference_loss(&model, &batch, &deltas_of(&tr, &model, scale, Some((l, t, &pa, &pb))))
                    };
                    num.push((eval(h) - eval(-h)) / (2.0 * h));
                    analytic.push(if is_a { ga[idx] } else { gb[idx] });
                }
            }
        }
        assert_close(&format!("{arch} whole-model LoRA gradients"), &analytic, &num, 2e-3);
    }
}

fn train_cfg(precision: Precision) -> TrainConfig {
    TrainConfig {
        rank: 4,
        alpha: 8.0,
        targets: vec![Target::Q, Target::V, Target::Down],
        learning_rate: 1e-2,
        total_steps: 40,
        warmup_steps: 2,
        max_seq: 24,
        seed: 9,
        precision,
        ..TrainConfig::default()
    }
}

#[test]
fn fast_path_gradients_follow_the_exact_ones_and_checkpointing_changes_nothing() {
    let model = tiny_train_model("llama", GgmlType::Q8_0);
    let vocab = model.config.vocab;
    let batch = [train_example(41, 12, vocab), train_example(42, 10, vocab), train_example(43, 20, vocab)];
    let mut exact = Trainer::new(model.clone(), train_cfg(Precision::Exact)).expect("trainer");
    exact.step(&batch).expect("a step so B is non-zero");
    let state = exact.save_state().expect("state");
    let (_, ge) = exact.gradients(&batch).expect("exact");
    let c2 = TrainConfig { precision: Precision::Fast, ..exact.config().clone() };
    let fast = Trainer::load_state(model.clone(), &retarget(&state, &c2)).expect("fast");
    let (_, gf) = fast.gradients(&batch).expect("fast");
    for (k, (ea, eb)) in &ge {
        let (fa, fb) = &gf[k];
        for (e, f) in [(ea, fa), (eb, fb)] {
            let dotp: f64 = e.iter().zip(f.iter()).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            let ne = e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nf = f.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            assert!(dotp / (ne * nf) > 0.99, "{k:?}: cosine {}", dotp / (ne * nf));
        }
    }
    // Activation checkpointing recomputes the same numbers.
    let mut c3 = c2.clone();
    c3.checkpoint_activations = true;
    let ck = Trainer::load_state(model, &retarget(&state, &c3)).expect("ckpt");
    let (_, gc) = ck.gradients(&batch).expect("ckpt");
    assert_eq!(gc, gf);
}

#[test]
fn training_lowers_the_loss_identically_for_a_seed_and_resumes_exactly() {
    let model = tiny_train_model("llama", GgmlType::Q8_0);
    let vocab = model.config.vocab;
    let data: Vec<Example> = (0..6).map(|i| train_example(50 + i, 10 + i as usize, vocab)).collect();
    let plan = batch_plan(data.len(), 3, 8, 5);
    assert_eq!(plan.len(), 16);
    assert_eq!(plan, batch_plan(data.len(), 3, 8, 5));
    let batch = |i: usize| plan[i].iter().map(|&j| data[j].clone()).collect::<Vec<_>>();
    let run = |steps: std::ops::Range<usize>, tr: &mut Trainer| -> Vec<f32> {
        steps.map(|i| tr.step(&batch(i)).expect("step").loss).collect()
    };
    let mut a = Trainer::new(model.clone(), train_cfg(Precision::Fast)).expect("a");
    let before = a.loss(&data).expect("loss");
    let la = run(0..16, &mut a);
    let after = a.loss(&data).expect("loss");
    assert!(after < 0.5 * before, "loss {before} -> {after}");
    // The same seed gives the same run, bit for bit; a run stopped at step 7 and resumed from its
    // checkpoint ends in the same state.
    let mut b = Trainer::new(model.clone(), train_cfg(Precision::Fast)).expect("b");
    let mut lb = run(0..7, &mut b);
    let saved = b.save_state().expect("save");
    drop(b);
    let mut b = Trainer::load_state(model.clone(), &saved).expect("resume");
    assert_eq!(b.steps_done(), 7);
    lb.extend(run(7..16, &mut b));
    assert_eq!(la, lb);
    assert_eq!(a.adapter(), b.adapter());
    // Another seed starts elsewhere.
    let mut cfg = train_cfg(Precision::Fast);
    cfg.seed = 10;
    let c = Trainer::new(model, cfg).expect("c");
    assert_ne!(
        c.adapter(),
        Trainer::new(tiny_train_model("llama", GgmlType::Q8_0), train_cfg(Precision::Fast)).expect("d").adapter()
    );
}

#[test]
fn hostile_training_input_is_refused_and_changes_nothing() {
    let model = tiny_train_model("llama", GgmlType::Q8_0);
    let vocab = model.config.vocab;
    let mut tr = Trainer::new(model.clone(), train_cfg(Precision::Fast)).expect("trainer");
    let before = tr.adapter();
    let good = train_example(60, 10, vocab);
    let mut out_of_vocab = good.clone();
    out_of_vocab.tokens[3] = vocab as u32;
    let mut nan = good.clone();
    nan.weights[6] = f32::NAN;
    let mut negative = good.clone();
    negative.weights[6] = -1.0;
    let short = Example { tokens: vec![1], weights: vec![1.0] };
    let mismatched = Example { tokens: good.tokens.clone(), weights: vec![1.0; 3] };
    let no_loss = Example { tokens: good.tokens.clone(), weights: vec![0.0; good.tokens.len()] };
    let too_long = train_example(61, 30, vocab);
    for bad in [
        vec![],
        vec![out_of_vocab],
        vec![nan],
        vec![negative],
        vec![short],
        vec![mismatched],
        vec![no_loss],
        vec![too_long],
    ] {
        let err = tr.step(&bad).expect_err("refused");
        assert!(matches!(err, Error::Training(_)), "{err}");
    }
    assert_eq!(tr.adapter(), before);
    assert_eq!(tr.steps_done(), 0);
    for cfg in [
        TrainConfig { rank: 0, ..train_cfg(Precision::Fast) },
        TrainConfig { alpha: f32::NAN, ..train_cfg(Precision::Fast) },
        TrainConfig { learning_rate: 5.0, ..train_cfg(Precision::Fast) },
        TrainConfig { targets: vec![], ..train_cfg(Precision::Fast) },
        TrainConfig { max_seq: 1 << 20, ..train_cfg(Precision::Fast) },
        TrainConfig { total_steps: 0, ..train_cfg(Precision::Fast) },
    ] {
        assert!(matches!(Trainer::new(model.clone(), cfg), Err(Error::Training(_))));
    }
    // Checkpoints: truncated, flipped, or from a trainer of another shape.
    let state = tr.save_state().expect("state");
    assert!(Trainer::load_state(model.clone(), &state[..state.len() / 2]).is_err());
    let mut flipped = state.clone();
    let at = flipped.len() - 5;
    flipped[at] ^= 0xff;
    flipped[at - 1] = 0xff;
    flipped[at - 2] = 0xff;
    // Either refused or restored with finite values; never a panic.
    if let Ok(t) = Trainer::load_state(model.clone(), &flipped) {
        assert!(t.adapter().layers.iter().flatten().all(|(_, p)| p.a.iter().chain(&p.b).all(|v| v.is_finite())));
    }
    let other = tiny_train_model("qwen2", GgmlType::Q8_0);
    let mut cfg = train_cfg(Precision::Fast);
    cfg.rank = 6;
    let wrong = Trainer::new(other, cfg).expect("other").save_state().expect("state");
    assert!(Trainer::load_state(model, &retarget(&wrong, &train_cfg(Precision::Fast))).is_err());
}

#[test]
fn chat_examples_train_assistant_turns_only_and_honour_weights() {
    let g = Gguf::from_bytes(tiny_model_bytes("llama", GgmlType::Q8_0, 21)).expect("gguf");
    let e = Engine::new(Model::from_gguf(Arc::new(g)).expect("model")).expect("engine");
    let mut msgs = vec![
        TrainMessage::new("system", "be brief"),
        TrainMessage::new("user", "hello"),
        TrainMessage::new("assistant", "world"),
        TrainMessage::new("user", "again"),
        TrainMessage::new("assistant", "hello world"),
    ];
    let ex = data::chat_example(&e, &msgs).expect("example");
    let full = e
        .render_messages(
            &msgs
                .iter()
                .map(|m| soramai_kernels::tokenizer::template::Message::new(m.role.clone(), m.content.clone()))
                .collect::<Vec<_>>(),
            false,
        )
        .expect("render");
    assert_eq!(e.tokenizer.decode(&ex.tokens, true), full);
    let trained: String = ex
        .tokens
        .iter()
        .zip(&ex.weights)
        .filter(|(_, w)| **w > 0.0)
        .map(|(t, _)| e.tokenizer.decode(&[*t], true))
        .collect();
    assert_eq!(trained, "world<|im_end|>\nhello world<|im_end|>\n");
    // weight 0 keeps a turn as context only.
    msgs[2].weight = Some(0.0);
    let ex0 = data::chat_example(&e, &msgs).expect("example");
    assert_eq!(ex0.tokens, ex.tokens);
    assert!(ex0.trained_tokens() < ex.trained_tokens());
    // Hostile: weights where they do not belong or out of range.
    msgs[2].weight = Some(f32::NAN);
    assert!(matches!(data::chat_example(&e, &msgs), Err(Error::Training(_))));
    msgs[2].weight = None;
    msgs[1].weight = Some(1.0);
    assert!(matches!(data::chat_example(&e, &msgs), Err(Error::Training(_))));
    assert!(matches!(data::chat_example(&e, &[]), Err(Error::Training(_))));
}
