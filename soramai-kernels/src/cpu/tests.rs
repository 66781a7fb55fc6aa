//! SIMD kernels against their scalar twins, and quantized products against f32 references, on
//! fresh random inputs.

use super::*;
use crate::quant::{self, GgmlType};

fn rand_vec(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Every instruction set this CPU can run, scalar included.
fn available_isas() -> Vec<Isa> {
    let best = detect();
    [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
        .into_iter()
        .filter(|i| match (i, best) {
            (Isa::Scalar, _) => true,
            (Isa::Avx2, b) => b != Isa::Scalar,
            (Isa::Avx512Vnni, b) => b == Isa::Avx512Vnni,
        })
        .collect()
}

fn act_bytes(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let at = vec_dot_type(ty);
    let mut a = vec![0u8; at.bytes_for(x.len() as u64).expect("whole blocks") as usize];
    quantize_activations(at, x, &mut a);
    a
}

#[test]
fn activation_quantizer_matches_scalar_twin() {
    for seed in 0..20 {
        let x = rand_vec(seed, 512, 3.0);
        for q8_1 in [false, true] {
            let bb = if q8_1 { 36 } else { 34 };
            let mut s = vec![0u8; 16 * bb];
            quantize_q8_scalar(&x, &mut s, q8_1);
            let mut v = vec![0u8; 16 * bb];
            quantize_activations(if q8_1 { GgmlType::Q8_1 } else { GgmlType::Q8_0 }, &x, &mut v);
            assert_eq!(s, v, "seed {seed} q8_1 {q8_1}");
        }
    }
}

#[test]
fn vec_dot_simd_equals_scalar_and_tracks_f32() {
    for ty in GgmlType::ALL.into_iter().filter(|t| !matches!(t, GgmlType::Q8_1)) {
        for seed in 0..8 {
            let n = 512;
            let w = rand_vec(seed * 31 + 1, n, 1.0);
            let x = rand_vec(seed * 31 + 2, n, 2.0);
            let wq = quant::quantize(ty, &w).expect("quantize");
            let a = act_bytes(ty, &x);
            let reference = scalar::vec_dot(ty, n, &wq, &a);
            let tol = 1e-4 * (1.0 + reference.abs());
            for isa in available_isas() {
                let one = vec_dot_rows_on::<1>(isa, ty, n, &wq, [&a])[0];
                assert!((one - reference).abs() <= tol, "{ty} {isa:?} seed {seed}: {one} vs scalar {reference}");
                // Four activation rows at once give each row's own result.
                let others: Vec<Vec<u8>> = (0..3).map(|k| act_bytes(ty, &rand_vec(seed * 97 + k, n, 1.5))).collect();
                let four = vec_dot_rows_on::<4>(isa, ty, n, &wq, [&a, &others[0], &others[1], &others[2]]);
                assert_eq!(four[0].to_bits(), one.to_bits(), "{ty} {isa:?}: row 0 of 4");
                for k in 0..3 {
                    let single = vec_dot_rows_on::<1>(isa, ty, n, &wq, [&others[k]])[0];
                    assert_eq!(four[k + 1].to_bits(), single.to_bits(), "{ty} {isa:?}: row {} of 4", k + 1);
                }
            }
            let fast = vec_dot(ty, n, &wq, &a);
            // Against f32 maths on the dequantized weights and the original activations.
            let mut wd = vec![0f32; n];
            quant::dequantize(ty, &wq, &mut wd).expect("dequantize");
            let exact: f32 = wd.iter().zip(&x).map(|(a, b)| a * b).sum();
            let norm = (wd.iter().map(|v| v * v).sum::<f32>() * x.iter().map(|v| v * v).sum::<f32>()).sqrt();
            assert!((fast - exact).abs() <= 0.02 * norm, "{ty} seed {seed}: {fast} vs f32 {exact} (norm {norm})");
        }
    }
}

#[test]
fn f32_helpers_match_scalar() {
    for n in [0, 1, 7, 8, 15, 16, 17, 64, 100] {
        let x = rand_vec(n as u64 + 5, n, 1.0);
        let y = rand_vec(n as u64 + 9, n, 1.0);
        let d: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert!((dot_f32(&x, &y) - d).abs() < 1e-5, "dot n={n}");
        let mut z = y.clone();
        axpy(0.5, &x, &mut z);
        for i in 0..n {
            assert!((z[i] - (y[i] + 0.5 * x[i])).abs() < 1e-6);
        }
    }
}

#[test]
fn attention_kernel_matches_scalar_twin() {
    for (hd, group, n_kv) in [(8, 1, 1), (64, 3, 3), (72, 2, 2), (128, 4, 1), (136, 1, 2)] {
        let stride = hd * n_kv;
        for n_pos in [1, 3, 4, 5, 17, 200] {
            // Wide score ranges too, so the vector exp sees large negative inputs.
            for spread in [0.5f32, 30.0] {
                let ks = rand_vec(n_pos as u64 * 7 + hd as u64, n_pos * stride, spread);
                let vs = rand_vec(n_pos as u64 * 11 + hd as u64, n_pos * stride, 1.0);
                let q = rand_vec(hd as u64 + 3, group * hd, 1.0);
                let scale = 1.0 / (hd as f32).sqrt();
                let offset = (n_kv - 1) * hd;
                let (mut s1, mut s2) = (Vec::new(), Vec::new());
                let mut want = vec![0f32; group * hd];
                ops::attend_body(&q, &ks, &vs, stride, offset, n_pos, hd, scale, &mut s1, &mut want);
                let mut got = vec![f32::NAN; group * hd];
                attend(&q, &ks, &vs, stride, offset, n_pos, hd, scale, &mut s2, &mut got);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "hd {hd} n {n_pos} i {i}: {a} vs {b}");
                }
            }
        }
    }
}

#[test]
fn matmul_matches_row_dots_for_any_batch() {
    let (rows, cols) = (37, 256);
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::F16] {
        let w = quant::quantize(ty, &rand_vec(3, rows * cols, 1.0)).expect("quantize");
        let x = rand_vec(4, 5 * cols, 1.0);
        let mut out = vec![0f32; 5 * rows];
        matmul(ty, &w, rows, cols, &x, &mut out).expect("matmul");
        let rb = w.len() / rows;
        for t in 0..5 {
            let a = act_bytes(ty, &x[t * cols..(t + 1) * cols]);
            let mut single = vec![0f32; rows];
            matmul(ty, &w, rows, cols, &x[t * cols..(t + 1) * cols], &mut single).expect("matmul");
            for r in 0..rows {
                let v = vec_dot(ty, cols, &w[r * rb..(r + 1) * rb], &a);
                assert_eq!(out[t * rows + r].to_bits(), v.to_bits(), "{ty} t{t} r{r}");
                assert_eq!(single[r].to_bits(), v.to_bits(), "{ty} batch of one, r{r}");
            }
        }
    }
    assert!(matmul(GgmlType::Q4_1, &[0u8; 10], 1, 32, &[0.0; 32], &mut [0.0]).is_err());
}

#[test]
#[ignore = "needs the reference model at SORAMAI_TEST_MODEL"]
fn real_weights_simd_equals_scalar() {
    let Ok(path) = std::env::var("SORAMAI_TEST_MODEL") else { return };
    let g = crate::gguf::Gguf::open(path).expect("open");
    for name in ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "token_embd.weight"] {
        let t = g.tensor(name).expect("tensor");
        let cols = t.dims[0] as usize;
        let bytes = g.tensor_bytes(t);
        let rb = bytes.len() / t.dims[1] as usize;
        let x = rand_vec(7, cols, 5.0);
        let a = act_bytes(t.ty, &x);
        let mut worst = 0f32;
        for r in 0..64 {
            let w = &bytes[r * rb..(r + 1) * rb];
            let f = vec_dot(t.ty, cols, w, &a);
            let s = scalar::vec_dot(t.ty, cols, w, &a);
            worst = worst.max((f - s).abs());
        }
        println!("{name}: worst {worst}");
        assert!(worst < 1e-3, "{name}");
    }
}
