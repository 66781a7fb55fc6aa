//! Block quantization formats of GGML: layouts, dequantization and quantization.
//!
//! Every format is a sequence of fixed-size blocks stored as raw little-endian bytes; the kernels
//! read them in place (from a memory map) without casting to structs, so no alignment is assumed.
//! [`legacy`] holds the 32-element formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1), [`k_quants`] the
//! 256-element super-block formats (Q2_K..Q6_K, Q8_K).

pub mod k_quants;
pub mod legacy;

use half::{bf16, f16};

use crate::error::{Error, Result};

/// A GGML tensor type. The discriminants are the type tags of the GGUF format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit float.
    F32 = 0,
    /// IEEE half.
    F16 = 1,
    /// 4-bit, one f16 scale per 32.
    Q4_0 = 2,
    /// 4-bit, f16 scale and minimum per 32.
    Q4_1 = 3,
    /// 5-bit, one f16 scale per 32.
    Q5_0 = 6,
    /// 5-bit, f16 scale and minimum per 32.
    Q5_1 = 7,
    /// 8-bit, one f16 scale per 32.
    Q8_0 = 8,
    /// 8-bit, f16 scale and f16 scaled sum per 32 (the activation format for Q4_1/Q5_1).
    Q8_1 = 9,
    /// 2-bit k-quant.
    Q2_K = 10,
    /// 3-bit k-quant.
    Q3_K = 11,
    /// 4-bit k-quant.
    Q4_K = 12,
    /// 5-bit k-quant.
    Q5_K = 13,
    /// 6-bit k-quant.
    Q6_K = 14,
    /// 8-bit k-quant (the activation format for the k-quants).
    Q8_K = 15,
    /// bfloat16.
    BF16 = 30,
}

impl GgmlType {
    /// Every implemented type.
    pub const ALL: [GgmlType; 15] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ];

    /// The type for a GGUF type tag.
    pub fn from_tag(tag: u32) -> Result<Self> {
        Self::ALL.into_iter().find(|t| *t as u32 == tag).ok_or_else(|| Error::UnsupportedType(format!("tag {tag}")))
    }

    /// Everything about this format the engine acts on, stated once (one arm a format, no
    /// catch-all: a format added to the enum does not compile until its facts are written).
    pub const fn facts(self) -> Facts {
        use GgmlType as T;
        const fn f(block_len: usize, block_bytes: usize, vec_dot: GgmlType, layout: Layout) -> Facts {
            Facts { block_len, block_bytes, vec_dot, layout }
        }
        match self {
            T::F32 => f(1, 4, T::F32, Layout::Float(Float::F32)),
            T::F16 => f(1, 2, T::F32, Layout::Float(Float::F16)),
            T::BF16 => f(1, 2, T::F32, Layout::Float(Float::BF16)),
            T::Q4_0 => f(32, 18, T::Q8_0, Layout::Legacy(Legacy::Q4_0)),
            T::Q4_1 => f(32, 20, T::Q8_1, Layout::Legacy(Legacy::Q4_1)),
            T::Q5_0 => f(32, 22, T::Q8_0, Layout::Legacy(Legacy::Q5_0)),
            T::Q5_1 => f(32, 24, T::Q8_1, Layout::Legacy(Legacy::Q5_1)),
            T::Q8_0 => f(32, 34, T::Q8_0, Layout::Legacy(Legacy::Q8_0)),
            T::Q8_1 => f(32, 36, T::Q8_1, Layout::Legacy(Legacy::Q8_1)),
            T::Q2_K => f(256, 84, T::Q8_K, Layout::K(KQuant::Q2_K)),
            T::Q3_K => f(256, 110, T::Q8_K, Layout::K(KQuant::Q3_K)),
            T::Q4_K => f(256, 144, T::Q8_K, Layout::K(KQuant::Q4_K)),
            T::Q5_K => f(256, 176, T::Q8_K, Layout::K(KQuant::Q5_K)),
            T::Q6_K => f(256, 210, T::Q8_K, Layout::K(KQuant::Q6_K)),
            T::Q8_K => f(256, 292, T::Q8_K, Layout::K(KQuant::Q8_K)),
        }
    }

    /// Elements per block.
    pub const fn block_len(self) -> usize {
        self.facts().block_len
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        self.facts().block_bytes
    }

    /// Whether weights may come in this format (Q8_1 and Q8_K are activation formats only).
    pub const fn is_weight(self) -> bool {
        !matches!(self, GgmlType::Q8_1 | GgmlType::Q8_K)
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number of blocks or overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bl = self.block_len() as u64;
        if !n.is_multiple_of(bl) {
            return None;
        }
        (n / bl).checked_mul(self.block_bytes() as u64)
    }

    /// The name GGML gives the type.
    pub const fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
        }
    }
}

/// What [`GgmlType::facts`] says of a format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Elements per block.
    pub block_len: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// The format activations are quantized to for a product with weights of this format.
    pub vec_dot: GgmlType,
    /// Which family of block codecs reads and writes it.
    pub layout: Layout,
}

/// A format's family of block codecs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One float an element.
    Float(Float),
    /// A 32-value block format ([`legacy`]).
    Legacy(Legacy),
    /// A 256-value super-block format ([`k_quants`]).
    K(KQuant),
}

/// The float formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Float {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

/// The 32-value block formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum Legacy {
    /// See [`GgmlType::Q4_0`].
    Q4_0,
    /// See [`GgmlType::Q4_1`].
    Q4_1,
    /// See [`GgmlType::Q5_0`].
    Q5_0,
    /// See [`GgmlType::Q5_1`].
    Q5_1,
    /// See [`GgmlType::Q8_0`].
    Q8_0,
    /// See [`GgmlType::Q8_1`].
    Q8_1,
}

impl Legacy {
    /// The tensor type.
    pub const fn ty(self) -> GgmlType {
        match self {
            Legacy::Q4_0 => GgmlType::Q4_0,
            Legacy::Q4_1 => GgmlType::Q4_1,
            Legacy::Q5_0 => GgmlType::Q5_0,
            Legacy::Q5_1 => GgmlType::Q5_1,
            Legacy::Q8_0 => GgmlType::Q8_0,
            Legacy::Q8_1 => GgmlType::Q8_1,
        }
    }
}

/// The 256-value super-block formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum KQuant {
    /// See [`GgmlType::Q2_K`].
    Q2_K,
    /// See [`GgmlType::Q3_K`].
    Q3_K,
    /// See [`GgmlType::Q4_K`].
    Q4_K,
    /// See [`GgmlType::Q5_K`].
    Q5_K,
    /// See [`GgmlType::Q6_K`].
    Q6_K,
    /// See [`GgmlType::Q8_K`].
    Q8_K,
}

impl KQuant {
    /// The tensor type.
    pub const fn ty(self) -> GgmlType {
        match self {
            KQuant::Q2_K => GgmlType::Q2_K,
            KQuant::Q3_K => GgmlType::Q3_K,
            KQuant::Q4_K => GgmlType::Q4_K,
            KQuant::Q5_K => GgmlType::Q5_K,
            KQuant::Q6_K => GgmlType::Q6_K,
            KQuant::Q8_K => GgmlType::Q8_K,
        }
    }
}

// The block sizes against the layouts they describe (legacy.rs, k_quants.rs).
const _: () = {
    assert!(GgmlType::Q4_0.block_bytes() == 2 + 16);
    assert!(GgmlType::Q4_1.block_bytes() == 2 + 2 + 16);
    assert!(GgmlType::Q5_0.block_bytes() == 2 + 4 + 16);
    assert!(GgmlType::Q5_1.block_bytes() == 2 + 2 + 4 + 16);
    assert!(GgmlType::Q8_0.block_bytes() == 2 + 32);
    assert!(GgmlType::Q8_1.block_bytes() == 2 + 2 + 32);
    assert!(GgmlType::Q2_K.block_bytes() == 16 + 64 + 2 + 2);
    assert!(GgmlType::Q3_K.block_bytes() == 32 + 64 + 12 + 2);
    assert!(GgmlType::Q4_K.block_bytes() == 2 + 2 + 12 + 128);
    assert!(GgmlType::Q5_K.block_bytes() == 2 + 2 + 12 + 32 + 128);
    assert!(GgmlType::Q6_K.block_bytes() == 128 + 64 + 16 + 2);
    assert!(GgmlType::Q8_K.block_bytes() == 4 + 256 + 2 * 16);
};

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[inline]
pub(crate) fn rd_f16(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

#[inline]
pub(crate) fn wr_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

fn check_len(ty: GgmlType, src_bytes: usize, n: usize) -> Result<()> {
    let want = ty.bytes_for(n as u64).ok_or_else(|| {
        Error::UnsupportedType(format!("{ty}: {n} elements is not a whole number of {}-blocks", ty.block_len()))
    })?;
    if want != src_bytes as u64 {
        return Err(Error::UnsupportedType(format!("{ty}: {src_bytes} bytes do not hold {n} elements")));
    }
    Ok(())
}

/// Dequantizes `out.len()` elements of type `ty` from `src`.
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<()> {
    check_len(ty, src.len(), out.len())?;
    match ty.facts().layout {
        Layout::Float(Float::F32) => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        Layout::Float(Float::F16) => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Layout::Float(Float::BF16) => {
            for (o, c) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        Layout::Legacy(l) => legacy::dequantize(l, src, out),
        Layout::K(k) => k_quants::dequantize(k, src, out),
    }
    Ok(())
}

/// Quantizes `src` into type `ty`, returning the blocks. `src.len()` must be a whole number of blocks.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    let n = ty
        .bytes_for(src.len() as u64)
        .ok_or_else(|| Error::UnsupportedType(format!("{ty}: {} elements is not whole blocks", src.len())))?;
    let mut out = vec![0u8; n as usize];
    match ty.facts().layout {
        Layout::Float(Float::F32) => {
            for (c, v) in out.chunks_exact_mut(4).zip(src) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        Layout::Float(Float::F16) => {
            for (c, v) in out.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        Layout::Float(Float::BF16) => {
            for (c, v) in out.chunks_exact_mut(2).zip(src) {
                c.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
        Layout::Legacy(l) => legacy::quantize(l, src, &mut out),
        Layout::K(k) => k_quants::quantize(k, src, &mut out),
    }
    Ok(out)
}
