//! Every GPU kernel against the CPU reference, on every GPU backend this build has, with fresh
//! random inputs, outputs poisoned with NaN before each launch (a kernel that skips an element
//! fails), and several shapes including ragged ones (rows not a multiple of the cube's rows,
//! token counts not a multiple of the tile, contexts longer than one attention chunk).
//!
//! Tolerances, relative to the size of what is summed (`Σ|w·x|` for products, the row's scale
//! otherwise), for f32 arithmetic in another summation order: 1e-5 for element-wise ops, 2e-5 for
//! reductions. Weights in 4- and 8-bit blocks are exact on the GPU (the repacking is checked to be
//! lossless), so the same bounds hold for every format.
//!
//! A backend this build lacks, or whose device the machine lacks, is skipped with the reason
//! printed; `SORAMAI_REQUIRE_GPU=wgpu` (the CI test script sets it) makes a missing wgpu device a
//! failure instead.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

mod common;

use common::rand_vec;
use soramai_kernels::cpu::ops::{self, RopeLayout};
use soramai_kernels::cube::op;
use soramai_kernels::cube::pack::pack;
use soramai_kernels::quant::{self, GgmlType};

fn assert_close(what: &str, got: &[f32], want: &[f64], scale: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (f64::from(*g) - w).abs();
        assert!(err.is_finite() && err <= tol * s.max(1e-6), "{what}[{i}]: got {g}, want {w} (scale {s})");
    }
}

const FORMATS: [GgmlType; 7] =
    [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16, GgmlType::F32];

#[test]
fn repacking_for_the_gpu_is_lossless() {
    for ty in FORMATS {
        let (rows, cols) = (5, 512);
        let w = quant::quantize(ty, &rand_vec(1, rows * cols, 1.0)).expect("quantize");
        let mut want = vec![0f32; rows * cols];
        quant::dequantize(ty, &w, &mut want).expect("dequantize");
        assert_eq!(pack(ty, &w, rows, cols).expect("pack").dequantize(), want, "{ty}");
    }
    assert!(pack(GgmlType::Q4_0, &[0u8; 17], 1, 32).is_err(), "a short tensor is refused");
}

#[test]
fn matmul_matches_the_cpu_for_every_format_and_ragged_shapes() {
    for gpu in common::gpu_devices() {
        for ty in FORMATS {
            // From 16 tokens the tiled kernel runs (64 rows × 32 tokens a cube): ragged both ways too.
            for (rows, cols, ntok) in [
                (1, 256, 1),
                (37, 512, 1),
                (300, 768, 5),
                (129, 256, 9),
                (64, 1536, 33),
                (130, 512, 17),
                (65, 256, 100),
            ] {
                let seed = rows as u64 * 7 + ntok as u64;
                let w = quant::quantize(ty, &rand_vec(seed, rows * cols, 1.0)).expect("quantize");
                let x = rand_vec(seed + 1, ntok * cols, 1.0);
                let mut dense = vec![0f32; rows * cols];
                quant::dequantize(ty, &w, &mut dense).expect("dequantize");
                let (mut want, mut scale) = (Vec::new(), Vec::new());
                for t in 0..ntok {
                    for r in 0..rows {
                        let row = &dense[r * cols..(r + 1) * cols];
                        let xs = &x[t * cols..(t + 1) * cols];
                        want.push(row.iter().zip(xs).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum());
                        scale.push(row.iter().zip(xs).map(|(a, b)| f64::from(a.abs()) * f64::from(b.abs())).sum());
                    }
                }
                let got = op::matmul(&gpu, ty, &w, rows, cols, &x).expect("gpu matmul");
                assert_close(&format!("{} {ty} {rows}x{cols}x{ntok}", gpu.backend()), &got, &want, &scale, 2e-5);
            }
        }
    }
}

#[test]
fn rms_norm_matches_the_cpu() {
    for gpu in common::gpu_devices() {
        // 70000 rows: more cubes than one axis allows.
        for (rows, d) in [(1, 576), (7, 1000), (3, 5), (70_000, 5)] {
            let x = rand_vec(d as u64, rows * d, 3.0);
            let w = rand_vec(d as u64 + 1, d, 1.0);
            let mut want = vec![0f32; rows * d];
            for r in 0..rows {
                ops::rms_norm(&x[r * d..(r + 1) * d], &w, 1e-5, &mut want[r * d..(r + 1) * d]);
            }
            let got = op::rms_norm(&gpu, &x, &w, 1e-5).expect("gpu");
            let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
            let scale: Vec<f64> = want.iter().map(|v| v.abs().max(1.0)).collect();
            assert_close(&format!("rms_norm {rows}x{d}"), &got, &want, &scale, 2e-5);
        }
    }
}

/// The fused decode kernel (biases, RoPE on Q and K, K and V into their cache slots) equals the
/// separate kernels it replaces, in both layouts, with partial rotation, with and without biases.
#[test]
fn fused_bias_rope_and_cache_write_equal_the_separate_kernels() {
    for gpu in common::gpu_devices() {
        for layout in [RopeLayout::Interleaved, RopeLayout::Neox] {
            for (nh, nkv, hd, dims) in [(4, 2, 16, 16), (3, 1, 16, 8)] {
                for biased in [false, true] {
                    let rows = 3;
                    let (qd, kvd, h2) = (nh * hd, nkv * hd, dims / 2);
                    let (q, k, v) =
                        (rand_vec(1, rows * qd, 1.0), rand_vec(2, rows * kvd, 1.0), rand_vec(3, rows * kvd, 1.0));
                    let (bq, bk, bv) = (rand_vec(4, qd, 0.5), rand_vec(5, kvd, 0.5), rand_vec(6, kvd, 0.5));
                    let (mut cos, mut sin) = (vec![0f32; rows * h2], vec![0f32; rows * h2]);
                    for (r, p) in [3usize, 0, 41].into_iter().enumerate() {
                        ops::rope_angles(
                            p,
                            dims,
                            10000.0,
                            &mut cos[r * h2..(r + 1) * h2],
                            &mut sin[r * h2..(r + 1) * h2],
                        );
                    }
                    let slots = [5u32, 0, 2];
                    let add = |x: &[f32], b: &[f32]| -> Vec<f32> {
                        x.iter().enumerate().map(|(i, v)| if biased { v + b[i % b.len()] } else { *v }).collect()
                    };
                    let want_q = op::rope(&gpu, &add(&q, &bq), &cos, &sin, nh, hd, dims, layout).expect("rope q");
                    let k_rot = op::rope(&gpu, &add(&k, &bk), &cos, &sin, nkv, hd, dims, layout).expect("rope k");
                    let want_k = op::scatter(&gpu, &k_rot, &slots, 6, kvd).expect("scatter k");
                    let want_v = op::scatter(&gpu, &add(&v, &bv), &slots, 6, kvd).expect("scatter v");
                    let bias = biased.then_some([&bq[..], &bk[..], &bv[..]]);
                    let [got_q, got_k, got_v] = op::qkv_rope_scatter(
                        &gpu,
                        [&q, &k, &v],
                        bias,
                        &cos,
                        &sin,
                        &slots,
                        6,
                        (nh, nkv, hd, dims),
                        layout,
                    )
                    .expect("fused");
                    let name = format!("{layout:?} {nh}/{nkv}x{hd}/{dims} bias {biased}");
                    for (what, got, want) in [("q", got_q, want_q), ("k", got_k, want_k), ("v", got_v, want_v)] {
                        let want: Vec<f64> = want.iter().map(|&x| f64::from(x)).collect();
                        let scale = vec![1.0; want.len()];
                        assert_close(&format!("{name} {what}"), &got, &want, &scale, 1e-5);
                    }
                }
            }
        }
    }
}

#[test]
fn rope_matches_the_cpu_in_both_layouts_and_partial_rotation() {
    for gpu in common::gpu_devices() {
        for layout in [RopeLayout::Interleaved, RopeLayout::Neox] {
            for (heads, hd, dims) in [(9, 64, 64), (3, 64, 32), (1, 8, 8)] {
                let rows = 5;
                let positions = [0usize, 1, 7, 100, 4095];
                let x = rand_vec(hd as u64, rows * heads * hd, 1.0);
                let (mut cos, mut sin) = (vec![0f32; rows * dims / 2], vec![0f32; rows * dims / 2]);
                let mut want = x.clone();
                for (r, &p) in positions.iter().enumerate() {
                    let h2 = dims / 2;
                    ops::rope_angles(p, dims, 10000.0, &mut cos[r * h2..(r + 1) * h2], &mut sin[r * h2..(r + 1) * h2]);
                    for h in 0..heads {
                        let at = r * heads * hd + h * hd;
                        ops::rope(
                            &mut want[at..at + dims],
                            &cos[r * h2..(r + 1) * h2],
                            &sin[r * h2..(r + 1) * h2],
                            layout,
                        );
                    }
                }
                let got = op::rope(&gpu, &x, &cos, &sin, heads, hd, dims, layout).expect("gpu");
                let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
                assert_close(
                    &format!("rope {layout:?} {heads}x{hd}/{dims}"),
                    &got,
                    &want,
                    &vec![1.0; want.len()],
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn swiglu_and_softmax_match_the_cpu() {
    for gpu in common::gpu_devices() {
        // 2^24 + 300 elements: more than 65535 cubes of 256, so the launch spreads over two axes.
        for n in [1, 1000, 4097, (1 << 24) + 300] {
            let g = rand_vec(n as u64, n, 4.0);
            let u = rand_vec(n as u64 + 9, n, 2.0);
            let mut want = g.clone();
            ops::swiglu(&mut want, &u);
            let got = op::swiglu(&gpu, &g, &u).expect("gpu");
            let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
            let scale: Vec<f64> = want.iter().map(|v| v.abs().max(1.0)).collect();
            assert_close(&format!("swiglu {n}"), &got, &want, &scale, 1e-5);
        }
        for (rows, d) in [(3, 1), (2, 7), (4, 1000), (1, 5000), (70_000, 3)] {
            // Large logits: the maximum must be subtracted first.
            let x = rand_vec(d as u64, rows * d, 80.0);
            let mut want = Vec::new();
            for r in 0..rows {
                let row: Vec<f64> = x[r * d..(r + 1) * d].iter().map(|&v| f64::from(v)).collect();
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
                want.extend(row.iter().map(|v| (v - m).exp() / s));
            }
            let got = op::softmax(&gpu, &x, d).expect("gpu");
            assert_close(&format!("softmax {rows}x{d}"), &got, &want, &vec![1.0; want.len()], 2e-5);
        }
    }
}

#[test]
fn paged_attention_matches_the_cpu_for_prefill_decode_and_long_contexts() {
    for gpu in common::gpu_devices() {
        let (nh, nkv, hd, page) = (9usize, 3usize, 64usize, 16usize);
        let kvd = nkv * hd;
        // Three sequences: 1, 17 and 1500 cached positions (past one 1024-position chunk).
        let lens = [1usize, 17, 1500];
        let caches: Vec<(Vec<f32>, Vec<f32>)> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| (rand_vec(10 + i as u64, l * kvd, 1.0), rand_vec(20 + i as u64, l * kvd, 1.0)))
            .collect();
        // Rows: a decode row per sequence, and a causal prefill run of the middle one.
        let rows: Vec<(usize, usize)> = vec![(0, 0), (1, 16), (2, 1499), (1, 3), (1, 4), (1, 5), (2, 1023), (2, 1024)];
        let q = rand_vec(99, rows.len() * nh * hd, 1.0);
        let mut want = vec![0f32; q.len()];
        let mut scores = Vec::new();
        for (r, &(s, p)) in rows.iter().enumerate() {
            for h in 0..nh {
                let o = r * nh * hd + h * hd;
                soramai_kernels::cpu::attend(
                    &q[o..o + hd],
                    &caches[s].0,
                    &caches[s].1,
                    kvd,
                    (h / (nh / nkv)) * hd,
                    p + 1,
                    hd,
                    1.0 / (hd as f32).sqrt(),
                    &mut scores,
                    &mut want[o..o + hd],
                );
            }
        }
        let seq: Vec<usize> = rows.iter().map(|r| r.0).collect();
        let pos: Vec<u32> = rows.iter().map(|r| r.1 as u32).collect();
        let got = op::attention(&gpu, &q, &caches, &seq, &pos, nh, nkv, hd, page).expect("gpu");
        let want: Vec<f64> = want.iter().map(|&v| f64::from(v)).collect();
        assert_close("attention", &got, &want, &vec![1.0; want.len()], 2e-5);
    }
}

#[test]
fn batched_lora_applies_each_rows_own_adapter() {
    for gpu in common::gpu_devices() {
        let (cols, rows) = (96usize, 40usize);
        let pairs = vec![
            (rand_vec(1, 4 * cols, 0.5), rand_vec(2, rows * 4, 0.5), 4usize, 2.0f32),
            (rand_vec(3, 8 * cols, 0.5), rand_vec(4, rows * 8, 0.5), 8usize, 0.5f32),
        ];
        let row_slot = [Some(0), None, Some(1), Some(0), Some(1)];
        let n = row_slot.len();
        let x = rand_vec(5, n * cols, 1.0);
        let base = rand_vec(6, n * rows, 1.0);
        let mut want: Vec<f64> = base.iter().map(|&v| f64::from(v)).collect();
        for (r, s) in row_slot.iter().enumerate() {
            let Some(s) = *s else { continue };
            let (a, b, rank, scale) = &pairs[s];
            let tmp: Vec<f64> = (0..*rank)
                .map(|j| (0..cols).map(|c| f64::from(a[j * cols + c]) * f64::from(x[r * cols + c])).sum())
                .collect();
            for o in 0..rows {
                let d: f64 = (0..*rank).map(|j| f64::from(b[o * rank + j]) * tmp[j]).sum();
                want[r * rows + o] += f64::from(*scale) * d;
            }
        }
        let got = op::lora(&gpu, &pairs, &row_slot, &x, &base).expect("gpu");
        let scale: Vec<f64> = want.iter().map(|v| v.abs().max(1.0)).collect();
        assert_close("lora", &got, &want, &scale, 2e-5);
        // A row without an adapter is untouched, bit for bit.
        assert_eq!(&got[rows..2 * rows], &base[rows..2 * rows]);
    }
}

#[test]
fn kv_scatter_writes_exactly_the_slots() {
    for gpu in common::gpu_devices() {
        let width = 12;
        let src = rand_vec(7, 3 * width, 1.0);
        let got = op::scatter(&gpu, &src, &[5, 0, 2], 6, width).expect("gpu");
        for (slot, row) in [(5, 0), (0, 1), (2, 2)] {
            assert_eq!(&got[slot * width..(slot + 1) * width], &src[row * width..(row + 1) * width]);
        }
        for slot in [1, 3, 4] {
            assert!(got[slot * width..(slot + 1) * width].iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn embedding_rows_on_the_device_are_the_dequantized_rows() {
    for gpu in common::gpu_devices() {
        for ty in FORMATS {
            let (rows, cols) = (300, 256);
            let w = quant::quantize(ty, &rand_vec(9, rows * cols, 1.0)).expect("quantize");
            let mut dense = vec![0f32; rows * cols];
            quant::dequantize(ty, &w, &mut dense).expect("dequantize");
            // Ids read from an offset into the buffer; repeated and extreme rows.
            let tokens = [7u32, 299, 0, 299, 42, 150, 3];
            let got = op::embed(&gpu, ty, &w, (rows, cols), &tokens, 2, 4).expect("embed");
            let want: Vec<f64> = tokens[2..6]
                .iter()
                .flat_map(|&t| &dense[t as usize * cols..(t as usize + 1) * cols])
                .map(|&v| v.into())
                .collect();
            let scale: Vec<f64> = want.iter().map(|v| v.abs()).collect();
            assert_close(&format!("{} {ty} embed", gpu.backend()), &got, &want, &scale, 1e-6);
        }
        // An id past the matrix, or a window past the ids, is refused before anything runs.
        let w = quant::quantize(GgmlType::Q8_0, &rand_vec(2, 4 * 32, 1.0)).expect("quantize");
        for (tokens, base, n) in [(vec![0u32, 4], 0, 2), (vec![1, 2], 1, 2), (vec![1], usize::MAX, 2)] {
            let r = op::embed(&gpu, GgmlType::Q8_0, &w, (4, 32), &tokens, base, n);
            assert!(matches!(r, Err(soramai_kernels::Error::Request(_))), "{tokens:?} {base} {n}");
        }
    }
}

#[test]
fn argmax_on_the_device_picks_the_first_largest_as_the_host() {
    for gpu in common::gpu_devices() {
        // A vocabulary that is no multiple of the cube's 128 threads.
        let vocab = 1000;
        let mut z = rand_vec(4, 6 * vocab, 3.0);
        // Row 1: a tie between two columns (the first wins), in different threads' columns.
        z[vocab + 333] = 50.0;
        z[vocab + 901] = 50.0;
        // Row 2: NaNs never win.
        for c in (0..vocab).step_by(3) {
            z[2 * vocab + c] = f32::NAN;
        }
        // Row 3: everything -inf: 0, as the host's fold.
        z[3 * vocab..4 * vocab].fill(f32::NEG_INFINITY);
        // Row 4: the maximum in the last column; row 5: in the first.
        z[5 * vocab - 1] = 99.0;
        z[5 * vocab] = 99.0;
        let host: Vec<u32> = z
            .chunks(vocab)
            .map(|r| {
                r.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
                    as u32
            })
            .collect();
        assert_eq!(&host[1..], &[333, host[2], 0, vocab as u32 - 1, 0]);
        let got = op::argmax(&gpu, &z, vocab, 3).expect("argmax");
        assert_eq!(&got[..3], &[u32::MAX; 3], "{}: ids before the base are untouched", gpu.backend());
        assert_eq!(&got[3..], host.as_slice(), "{}", gpu.backend());
        for (len, vocab) in [(10, 0), (0, 4), (10, 4)] {
            let r = op::argmax(&gpu, &vec![0.0; len], vocab, 0);
            assert!(matches!(r, Err(soramai_kernels::Error::Request(_))), "{len} logits, vocab {vocab}");
        }
    }
}
