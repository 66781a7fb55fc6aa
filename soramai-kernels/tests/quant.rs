//! Block formats: hand-built blocks decode to known values, quantize→dequantize stays within each
//! format's error bound, and every type survives a GGUF write/read.

mod common;

use common::rand_vec;
use half::f16;
use soramai_kernels::gguf::{Gguf, GgufWriter, Value};
use soramai_kernels::quant::{GgmlType, dequantize, quantize};

fn deq(ty: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    dequantize(ty, b, &mut out).expect("dequantize");
    out
}

#[test]
fn hand_built_legacy_blocks() {
    // Q4_0: d = 0.5, byte j = (j % 16) | (15 - j % 16) << 4.
    let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let v = deq(GgmlType::Q4_0, &b, 32);
    for j in 0..16 {
        assert_eq!(v[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(v[j + 16], ((15 - j) as f32 - 8.0) * 0.5);
    }
    // Q4_1: d = 2, m = -3.
    let mut b = f16::from_f32(2.0).to_le_bytes().to_vec();
    b.extend(f16::from_f32(-3.0).to_le_bytes());
    b.extend((0..16u8).map(|j| j | (j << 4)));
    let v = deq(GgmlType::Q4_1, &b, 32);
    assert_eq!(v[5], 5.0 * 2.0 - 3.0);
    assert_eq!(v[21], 5.0 * 2.0 - 3.0);
    // Q5_0: the fifth bit of element j is bit j of qh (elements 16.. use bits 16..).
    let mut b = f16::from_f32(1.0).to_le_bytes().to_vec();
    b.extend(((1u32 << 3) | (1u32 << 20)).to_le_bytes());
    b.extend([0u8; 16]);
    let v = deq(GgmlType::Q5_0, &b, 32);
    assert_eq!(v[3], 16.0 - 16.0);
    assert_eq!(v[20], 0.0);
    assert_eq!(v[0], -16.0);
    // Q8_0.
    let mut b = f16::from_f32(0.25).to_le_bytes().to_vec();
    b.extend((0..32i8).map(|j| (j - 16) as u8));
    let v = deq(GgmlType::Q8_0, &b, 32);
    assert_eq!(v[0], -4.0);
    assert_eq!(v[31], 15.0 * 0.25);
}

#[test]
fn hand_built_k_blocks() {
    // Q8_K: d = 0.5 as f32, qs = -128..127.
    let mut b = 0.5f32.to_le_bytes().to_vec();
    b.extend((0..256i32).map(|j| (j - 128) as i8 as u8));
    b.extend([0u8; 32]);
    let v = deq(GgmlType::Q8_K, &b, 256);
    assert_eq!(v[0], -64.0);
    assert_eq!(v[255], 63.5);
    // Q6_K: all codes 33 (q = 1), scales 2, d = 0.5 → every value 1.
    let mut b = vec![0u8; 210];
    b[..128].fill(0x11);
    b[128..192].fill(0b1010_1010);
    b[192..208].fill(2);
    b[208..210].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    assert!(deq(GgmlType::Q6_K, &b, 256).iter().all(|&x| x == 1.0));
    // Q4_K: scale 1 and min 0 in every sub-block, d = 1, dmin = 1, codes 7 → every value 7.
    let mut b = vec![0u8; 144];
    b[0..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
    b[2..4].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
    b[4..8].fill(1);
    b[12..16].fill(0x01);
    b[16..144].fill(0x77);
    assert!(deq(GgmlType::Q4_K, &b, 256).iter().all(|&x| x == 7.0));
}

#[test]
fn round_trip_error_is_bounded_per_format() {
    // Relative RMS error of quantize→dequantize on uniform data, per format.
    let bounds = [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 1e-3),
        (GgmlType::BF16, 5e-3),
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q8_1, 0.01),
        (GgmlType::Q8_K, 0.01),
        (GgmlType::Q6_K, 0.03),
        (GgmlType::Q5_0, 0.05),
        (GgmlType::Q5_1, 0.04),
        (GgmlType::Q5_K, 0.05),
        (GgmlType::Q4_0, 0.1),
        (GgmlType::Q4_1, 0.08),
        (GgmlType::Q4_K, 0.1),
        (GgmlType::Q3_K, 0.2),
        (GgmlType::Q2_K, 0.35),
    ];
    for (ty, bound) in bounds {
        for seed in 0..4 {
            let x = rand_vec(seed + 100, 1024, 3.0);
            let q = quantize(ty, &x).expect("quantize");
            assert_eq!(q.len() as u64, ty.bytes_for(1024).expect("size"));
            let y = deq(ty, &q, 1024);
            let err = (x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>()
                / x.iter().map(|a| a * a).sum::<f32>())
            .sqrt();
            assert!(err <= bound, "{ty}: relative error {err} > {bound}");
        }
        // Zeros stay zeros.
        let z = deq(ty, &quantize(ty, &[0.0; 256]).expect("zeros"), 256);
        assert!(z.iter().all(|&v| v == 0.0), "{ty} zeros");
    }
}

#[test]
fn wrong_sizes_are_errors() {
    assert!(quantize(GgmlType::Q4_0, &[0.0; 33]).is_err());
    assert!(quantize(GgmlType::Q4_K, &[0.0; 32]).is_err());
    let mut out = vec![0f32; 32];
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 17], &mut out).is_err());
    assert!(GgmlType::from_tag(4).is_err());
    assert!(GgmlType::from_tag(99).is_err());
}

#[test]
fn every_type_round_trips_through_a_gguf_file() {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("general.alignment", Value::U32(64));
    w.set("list", Value::Array(vec![Value::I64(-1), Value::I64(2)]));
    let mut want = Vec::new();
    for (i, ty) in GgmlType::ALL.into_iter().enumerate() {
        let x = rand_vec(i as u64, 512, 1.0);
        w.add_f32(format!("t{i}"), &[256, 2], ty, &x).expect("add");
        want.push((ty, quantize(ty, &x).expect("q")));
    }
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("all.gguf");
    w.write(&path).expect("write");
    let g = Gguf::open(&path).expect("open");
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 64);
    assert_eq!(g.get("list"), Some(&Value::Array(vec![Value::I64(-1), Value::I64(2)])));
    for (i, (ty, bytes)) in want.iter().enumerate() {
        let t = g.tensor(&format!("t{i}")).expect("tensor");
        assert_eq!(t.ty, *ty);
        assert_eq!(t.dims, vec![256, 2]);
        assert_eq!(t.offset % 64, 0, "aligned");
        assert_eq!(g.tensor_bytes(t), &bytes[..]);
    }
}
