//! The QLoRA trainer's backward ops on each available GPU backend against the CPU trainer's own
//! (`soramai_kernels::train::ops`, themselves checked against finite differences): RMSNorm,
//! SwiGLU and RoPE backward, causal attention over packed examples (forward with log-sum-exp, and
//! backward), the input gradient through every frozen weight format, the f32
//! products of the LoRA pairs' forward and gradients, and AdamW. Inputs are fresh and random,
//! written outputs are poisoned first, and shapes are ragged. Tolerances as in `gpu_ops.rs`.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use common::rand_vec;
use soramai_kernels::cpu::ops::{self, RopeLayout};
use soramai_kernels::cube::op;
use soramai_kernels::quant::{self, GgmlType};
use soramai_kernels::train::ops as tops;
use soramai_kernels::train::{AdamW, Param};

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let top = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * top, "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn rms_norm_swiglu_and_rope_backward_match_the_cpu_trainer() {
    for gpu in common::gpu_devices() {
        for (rows, d) in [(1, 576), (5, 1000), (70_000, 3)] {
            let x = rand_vec(d as u64, rows * d, 2.0);
            let w = rand_vec(d as u64 + 1, d, 1.0);
            let dy = rand_vec(d as u64 + 2, rows * d, 1.0);
            let dx0 = rand_vec(d as u64 + 3, rows * d, 1.0);
            let mut want = dx0.clone();
            tops::rms_norm_backward_rows(&x, &w, 1e-5, &dy, &mut want);
            let got = op::rms_norm_backward(&gpu, &x, &w, 1e-5, &dy, &dx0).expect("gpu");
            close(&format!("rms_norm_backward {rows}x{d}"), &got, &want, 2e-5);
        }
        for n in [1, 999, (1 << 24) + 5] {
            let (g, u, dh) = (rand_vec(1, n, 4.0), rand_vec(2, n, 2.0), rand_vec(3, n, 1.0));
            let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
            tops::swiglu_backward(&g, &u, &dh, &mut dg, &mut du);
            let (gg, gu) = op::swiglu_backward(&gpu, &g, &u, &dh).expect("gpu");
            close(&format!("swiglu_backward dg {n}"), &gg, &dg, 1e-5);
            close(&format!("swiglu_backward du {n}"), &gu, &du, 1e-5);
        }
        for layout in [RopeLayout::Interleaved, RopeLayout::Neox] {
            let (heads, hd, dims, rows) = (9, 64, 32, 4);
            let dx = rand_vec(5, rows * heads * hd, 1.0);
            let (mut cos, mut sin) = (vec![0f32; rows * dims / 2], vec![0f32; rows * dims / 2]);
            let mut want = dx.clone();
            for (r, p) in [3usize, 0, 77, 2048].into_iter().enumerate() {
                let h2 = dims / 2;
                ops::rope_angles(p, dims, 10000.0, &mut cos[r * h2..(r + 1) * h2], &mut sin[r * h2..(r + 1) * h2]);
                for h in 0..heads {
                    let at = r * heads * hd + h * hd;
                    tops::rope_backward(
                        &mut want[at..at + dims],
                        &cos[r * h2..(r + 1) * h2],
                        &sin[r * h2..(r + 1) * h2],
                        layout,
                    );
                }
            }
            let got = op::rope_backward(&gpu, &dx, &cos, &sin, heads, hd, dims, layout).expect("gpu");
            close(&format!("rope_backward {layout:?}"), &got, &want, 1e-5);
        }
    }
}

#[test]
fn input_gradients_through_frozen_weights_match_the_dense_product() {
    for gpu in common::gpu_devices() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16] {
            // Past 16 tokens the tiled kernel: ragged rows, tokens and (for the 32-blocks) a
            // column tile of 64 that runs past the last block.
            let mut shapes = vec![(37, 256, 1), (200, 512, 7), (70, 768, 33)];
            if !matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K) {
                shapes.push((45, 96, 40));
            }
            for (rows, cols, ntok) in shapes {
                let w = quant::quantize(ty, &rand_vec(rows as u64, rows * cols, 1.0)).expect("quantize");
                let mut dense = vec![0f32; rows * cols];
                quant::dequantize(ty, &w, &mut dense).expect("dequantize");
                let dy = rand_vec(ntok as u64, ntok * rows, 1.0);
                let mut want = vec![0f32; ntok * cols];
                for t in 0..ntok {
                    for c in 0..cols {
                        want[t * cols + c] = (0..rows)
                            .map(|r| f64::from(dense[r * cols + c]) * f64::from(dy[t * rows + r]))
                            .sum::<f64>() as f32;
                    }
                }
                let got = op::matmul_t(&gpu, ty, &w, rows, cols, &dy).expect("gpu");
                close(&format!("matmul_t {ty} {rows}x{cols}x{ntok}"), &got, &want, 2e-5);
            }
        }
    }
}

#[test]
fn lora_products_and_adamw_match_the_cpu_trainer() {
    for gpu in common::gpu_devices() {
        // The three shapes of a LoRA pair's gradients: out += alpha·A·Bᵀ, A·B and Aᵀ·B.
        let (m, n, k) = (17, 33, 40);
        let out0 = rand_vec(9, m * n, 1.0);
        let a_nt = rand_vec(10, m * k, 1.0);
        let b_nt = rand_vec(11, n * k, 1.0);
        let mut want = out0.clone();
        tops::gemm_nt_add(&a_nt, &b_nt, k, 0.5, &mut want);
        let got = op::gemm_add(&gpu, &a_nt, &b_nt, &out0, (m, n, k), 0.5, false, true).expect("gpu nt");
        close("gemm nt", &got, &want, 2e-5);
        let b_nn = rand_vec(12, k * n, 1.0);
        let mut want = out0.clone();
        tops::gemm_nn_add(&a_nt, &b_nn, k, 2.0, &mut want);
        let got = op::gemm_add(&gpu, &a_nt, &b_nn, &out0, (m, n, k), 2.0, false, false).expect("gpu nn");
        close("gemm nn", &got, &want, 2e-5);
        let a_tn = rand_vec(13, k * m, 1.0);
        let mut want = out0.clone();
        tops::gemm_tn_add(&a_tn, &b_nn, m, -1.0, &mut want);
        let got = op::gemm_add(&gpu, &a_tn, &b_nn, &out0, (m, n, k), -1.0, true, false).expect("gpu tn");
        close("gemm tn", &got, &want, 2e-5);

        // AdamW: three steps with clipping factors, against the trainer's update.
        let opt = AdamW { weight_decay: 0.01, ..AdamW::default() };
        let mut cpu = Param::new(rand_vec(20, 1000, 1.0));
        let mut dev = Param::new(cpu.value.clone());
        for t in 1..=3 {
            let g = rand_vec(20 + t as u64, 1000, 0.1);
            cpu.grad.copy_from_slice(&g);
            dev.grad.copy_from_slice(&g);
            cpu.update(&opt, 1e-3, t, 0.7);
            op::adamw(&gpu, &mut dev, &opt, 1e-3, t, 0.7).expect("gpu adamw");
            close(&format!("adamw value, step {t}"), &dev.value, &cpu.value, 1e-6);
            close(&format!("adamw m, step {t}"), &dev.m, &cpu.m, 1e-6);
            close(&format!("adamw v, step {t}"), &dev.v, &cpu.v, 1e-6);
            assert!(dev.grad.iter().all(|&g| g == 0.0), "the gradient is cleared");
        }
    }
}

#[test]
fn training_attention_forward_and_backward_match_the_cpu_trainer() {
    for gpu in common::gpu_devices() {
        let (nh, nkv, hd) = (6usize, 2usize, 32usize);
        let heads = tops::Heads { n_head: nh, n_head_kv: nkv, head_dim: hd };
        // Packed examples of 3, 1 and 1100 rows (the last spans two 1024-position chunks).
        let mut starts = Vec::new();
        for (s, len) in [(0usize, 3usize), (3, 1), (4, 1100)] {
            starts.extend(std::iter::repeat_n(s, len));
        }
        let t = starts.len();
        let (q, k, v) = (rand_vec(1, t * nh * hd, 1.0), rand_vec(2, t * nkv * hd, 1.0), rand_vec(3, t * nkv * hd, 1.0));
        let (mut o, mut lse) = (vec![0f32; t * nh * hd], vec![0f32; t * nh]);
        tops::attention_forward(heads, &q, &k, &v, &starts, &mut o, &mut lse);
        let (go, glse) = op::attention_train_forward(&gpu, (nh, nkv, hd), &q, &k, &v, &starts).expect("gpu forward");
        close("attention forward o", &go, &o, 2e-5);
        close("attention forward lse", &glse, &lse, 2e-5);
        let d_o = rand_vec(4, t * nh * hd, 1.0);
        let (dq0, dk0, dv0) = (rand_vec(5, q.len(), 0.1), rand_vec(6, k.len(), 0.1), rand_vec(7, v.len(), 0.1));
        let (mut dq, mut dk, mut dv) = (dq0.clone(), dk0.clone(), dv0.clone());
        tops::attention_backward(heads, &q, &k, &v, &o, &lse, &starts, &d_o, &mut dq, &mut dk, &mut dv);
        let (gq, gk, gv) = op::attention_train_backward(
            &gpu,
            (nh, nkv, hd),
            [&q, &k, &v, &o, &lse, &d_o],
            &starts,
            [&dq0, &dk0, &dv0],
        )
        .expect("gpu backward");
        close("attention dq", &gq, &dq, 1e-4);
        close("attention dk", &gk, &dk, 1e-4);
        close("attention dv", &gv, &dv, 1e-4);
    }
}
