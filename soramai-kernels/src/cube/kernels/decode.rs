//! The two ends of a decode step kept on the device: token ids to embedding rows, and logits to
//! the next token ids (greedy), so a decode loop feeds each step's tokens to the next without the
//! host.

use cubecl::prelude::*;

use super::matmul::block_code;

/// `x[r] = w[tokens[base + r]]` for `n` rows of a block-quantized matrix (`bits` 4 or 8, the
/// layouts of [`super::matmul_q`]): the rows dequantized as the products read them.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn embed_q(
    scales: &Array<f32>,
    mins: &Array<f32>,
    quants: &Array<u32>,
    tokens: &Array<u32>,
    x: &mut Array<f32>,
    base: u32,
    n: u32,
    nblocks: u32,
    #[comptime] bits: u32,
) {
    let i = ABSOLUTE_POS as u32;
    let cols = nblocks * 32u32;
    if i < n * cols {
        let r = i / cols;
        let j = i % cols;
        let bi = tokens[(base + r) as usize] * nblocks + j / 32u32;
        let code = f32::cast_from(block_code(quants, bi, j % 32u32, bits));
        x[i as usize] = scales[bi as usize] * code + mins[bi as usize];
    }
}

/// `x[r] = w[tokens[base + r]]` for `n` rows of an f32 matrix of `cols` columns.
#[cube(launch)]
pub fn embed_f32(w: &Array<f32>, tokens: &Array<u32>, x: &mut Array<f32>, base: u32, n: u32, cols: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n * cols {
        let r = i / cols;
        x[i as usize] = w[(tokens[(base + r) as usize] * cols + i % cols) as usize];
    }
}

/// `tokens[base + r] = argmax z[r]` over `nrows` rows of `vocab` logits: the first index of the
/// largest value, as the host's greedy choice (NaNs never win; a row with no value above
/// `-3e38` gives 0). One cube of 128 threads per row.
#[cube(launch)]
pub fn argmax_rows(z: &Array<f32>, tokens: &mut Array<u32>, vocab: u32, nrows: u32, base: u32) {
    let tid = UNIT_POS_X;
    let live = (CUBE_POS as u32) < nrows;
    let row = u32::min(CUBE_POS as u32, nrows - 1);
    let mut values = SharedMemory::<f32>::new(128usize);
    let mut index = SharedMemory::<u32>::new(128usize);
    // Each thread scans its columns in increasing order and keeps the first strict maximum.
    let mut best = f32::new(-3.0e38);
    let mut at = vocab;
    let mut c = tid;
    while c < vocab {
        let v = z[(row * vocab + c) as usize];
        if v > best {
            best = v;
            at = c;
        }
        c += 128u32;
    }
    values[tid as usize] = best;
    index[tid as usize] = at;
    sync_cube();
    // Pairwise: the larger value wins, the lower index on a tie.
    let mut stride = 64u32;
    while stride > 0 {
        if tid < stride {
            let ov = values[(tid + stride) as usize];
            let oi = index[(tid + stride) as usize];
            let v = values[tid as usize];
            let i = index[tid as usize];
            if ov > v || (ov == v && oi < i) {
                values[tid as usize] = ov;
                index[tid as usize] = oi;
            }
        }
        sync_cube();
        stride /= 2;
    }
    if live && tid == 0 {
        let mut i = index[0];
        if i >= vocab {
            i = 0u32;
        }
        tokens[(base + row) as usize] = i;
    }
}
