//! Glue of the trainer's step on the device: fills, copies, row gathers, the loss, and the
//! partial sums of squares for gradient clipping.

use cubecl::prelude::*;

/// `x[i] = value` for `i < n`.
#[cube(launch)]
pub fn fill(x: &mut Array<f32>, value: f32, n: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        x[i as usize] = value;
    }
}

/// `dst[i] = src[i]` for `i < n`.
#[cube(launch)]
pub fn copy(src: &Array<f32>, dst: &mut Array<f32>, n: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n {
        dst[i as usize] = src[i as usize];
    }
}

/// `dst[r] = src[rows[r]]` for `n` rows of `width` values (the inverse of `scatter_rows`).
#[cube(launch)]
pub fn gather_rows(src: &Array<f32>, rows: &Array<u32>, dst: &mut Array<f32>, n: u32, width: u32) {
    let i = ABSOLUTE_POS as u32;
    if i < n * width {
        let r = i / width;
        let c = i % width;
        dst[i as usize] = src[(rows[r as usize] * width + c) as usize];
    }
}

/// Weighted cross-entropy of rows of logits, in place: row `r`, predicting `targets[r]` with
/// weight `w = weights[r]`, becomes the gradient of `w·(lse − z_t) / norm` (`softmax·w/norm`, less
/// `w/norm` at the target), and `loss[base + r]` gets `w·(lse − z_t)`. One cube per row.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    z: &mut Array<f32>,
    targets: &Array<u32>,
    weights: &Array<f32>,
    loss: &mut Array<f32>,
    vocab: u32,
    nrows: u32,
    norm: f32,
    base: u32,
) {
    let tid = UNIT_POS_X;
    let live = (CUBE_POS as u32) < nrows;
    let row = u32::min(CUBE_POS as u32, nrows - 1);
    let target = targets[row as usize];
    // Read before any thread writes the row (the writes come after the barriers below).
    let zt = z[(row * vocab + target) as usize];
    let mut shared = SharedMemory::<f32>::new(128usize);
    let mut m = f32::new(-3.0e38);
    let mut c = tid;
    while c < vocab {
        m = f32::max(m, z[(row * vocab + c) as usize]);
        c += 128u32;
    }
    shared[tid as usize] = m;
    sync_cube();
    let mut stride = 64u32;
    while stride > 0 {
        if tid < stride {
            let a = shared[(tid + stride) as usize];
            let b = shared[tid as usize];
            shared[tid as usize] = f32::max(a, b);
        }
        sync_cube();
        stride /= 2;
    }
    let top = shared[0];
    sync_cube();
    let mut s = 0.0f32;
    let mut c = tid;
    while c < vocab {
        s += f32::exp(z[(row * vocab + c) as usize] - top);
        c += 128u32;
    }
    shared[tid as usize] = s;
    sync_cube();
    let mut stride = 64u32;
    while stride > 0 {
        if tid < stride {
            let a = shared[(tid + stride) as usize];
            shared[tid as usize] += a;
        }
        sync_cube();
        stride /= 2;
    }
    let sum = shared[0];
    let w = weights[row as usize];
    let cw = w / norm;
    let k = cw / sum;
    let mut c = tid;
    while c < vocab {
        let i = (row * vocab + c) as usize;
        if live {
            let mut g = f32::exp(z[i] - top) * k;
            if c == target {
                g -= cw;
            }
            z[i] = g;
        }
        c += 128u32;
    }
    if live && tid == 0 {
        loss[(base + row) as usize] = w * (top + f32::ln(sum) - zt);
    }
}

/// Partial sums of squares: cube `b` writes `Σ x[i]²` over `i` in `b·4096 .. (b+1)·4096` (and
/// below `n`) to `partial[base + b]`. The host adds the partials in order (the gradient norm).
#[cube(launch)]
pub fn sum_squares(x: &Array<f32>, partial: &mut Array<f32>, n: u32, nblocks: u32, base: u32) {
    let tid = UNIT_POS_X;
    let live = (CUBE_POS as u32) < nblocks;
    let b = u32::min(CUBE_POS as u32, nblocks - 1);
    let mut shared = SharedMemory::<f32>::new(128usize);
    let mut s = 0.0f32;
    let mut i = b * 4096u32 + tid;
    let end = u32::min(b * 4096u32 + 4096u32, n);
    while i < end {
        let v = x[i as usize];
        s += v * v;
        i += 128u32;
    }
    shared[tid as usize] = s;
    sync_cube();
    let mut stride = 64u32;
    while stride > 0 {
        if tid < stride {
            let a = shared[(tid + stride) as usize];
            shared[tid as usize] += a;
        }
        sync_cube();
        stride /= 2;
    }
    if live && tid == 0 {
        partial[(base + b) as usize] = shared[0];
    }
}
