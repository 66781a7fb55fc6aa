//! Minimal NumPy `.npy` (v1.0) encoding and decoding of 1-D little-endian f32 arrays.

use crate::error::{Error, Result};

/// Encodes a 1-D float32 array.
pub fn f32_vector(v: &[f32]) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", v.len());
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to 64 bytes, then '\n'.
    let total = (10 + header.len() + 1).next_multiple_of(64);
    while 10 + header.len() + 1 < total {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(total + v.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Decodes a 1-D float32 array written by [`f32_vector`] or NumPy.
pub fn read_f32_vector(b: &[u8]) -> Result<Vec<f32>> {
    let bad = |m: &str| Error::Request(format!("npy: {m}"));
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" || b[6] != 1 {
        return Err(bad("not a v1 .npy file"));
    }
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = b.get(10..10 + hl).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not UTF-8"))?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(bad("not little-endian float32 in C order"));
    }
    let data = &b[10 + hl..];
    if !data.len().is_multiple_of(4) {
        return Err(bad("data is not whole f32 values"));
    }
    Ok(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}
