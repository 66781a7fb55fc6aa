//! The device: a cubecl compute client, f32 buffers on it, uploads, reads and fills.

use cubecl::prelude::*;
use cubecl::server::Handle;

use super::super::kernels::ROW_THREADS;
use super::super::{Backend, not_compiled};
use super::SUM_BLOCK;
use crate::error::{Error, Result};

/// A compute client of one of the compiled runtimes. cubecl's launchers are generic over the
/// runtime; [`launch!`] picks the one this client belongs to.
#[derive(Clone)]
pub(super) enum Client {
    #[cfg(feature = "wgpu")]
    Wgpu(ComputeClient<cubecl::wgpu::WgpuRuntime>),
    #[cfg(feature = "cuda")]
    Cuda(ComputeClient<cubecl::cuda::CudaRuntime>),
}

/// Runs `$body` with `$c` bound to the client's typed `ComputeClient<$r>` and `$r` its runtime.
macro_rules! with_client {
    ($client:expr, |$c:ident, $r:ident| $body:expr) => {
        match $client {
            #[cfg(feature = "wgpu")]
            $crate::cube::gpu::device::Client::Wgpu($c) => {
                #[allow(dead_code)]
                type $r = cubecl::wgpu::WgpuRuntime;
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::cube::gpu::device::Client::Cuda($c) => {
                #[allow(dead_code)]
                type $r = cubecl::cuda::CudaRuntime;
                $body
            }
        }
    };
}
pub(super) use with_client;

/// Launches kernel `$kernel` (a module of [`kernels`]) on the device's runtime.
macro_rules! launch {
    ($gpu:expr, $kernel:ident, $count:expr, $dim:expr $(, $arg:expr)* $(,)?) => {{
        $gpu.launches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        $crate::cube::gpu::device::with_client!(&$gpu.client, |c, R| {
            $crate::cube::kernels::$kernel::launch::<R>(c, $count, $dim $(, $arg)*)
        })
    }};
}
pub(super) use launch;

impl Client {
    fn open(backend: Backend) -> Result<Self> {
        match backend {
            Backend::Cpu => Err(Error::Backend("the cpu backend has no GPU device".into())),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Client::Wgpu(cubecl::wgpu::WgpuRuntime::client(&Default::default()))),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Ok(Client::Cuda(cubecl::cuda::CudaRuntime::client(&Default::default()))),
            #[allow(unreachable_patterns)]
            other => Err(not_compiled(other)),
        }
    }

    fn name(&self) -> &'static str {
        with_client!(self, |c, R| <R as Runtime>::name(c))
    }
}

/// A device and its compute client.
#[derive(Clone)]
pub struct Gpu {
    pub(super) client: Client,
    pub(super) backend: Backend,
    /// Kernel launches since the device was opened (shared by clones).
    pub(super) launches: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Times the host waited for the device (reads and syncs; shared by clones).
    waits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("backend", &self.backend).field("device", &self.client.name()).finish()
    }
}

/// An f32 buffer on the device.
#[derive(Clone, Debug)]
pub(crate) struct Buf {
    pub(super) handle: Handle,
    pub(crate) len: usize,
}

impl Buf {
    #[allow(unsafe_code)]
    pub(super) fn arg<R: Runtime>(&self) -> ArrayArg<R> {
        // SAFETY: `len` is the number of f32 (or u32) elements the buffer was created with, so
        // the kernels' bounds (which every kernel checks against its own size arguments) stay
        // inside the allocation.
        unsafe { ArrayArg::from_raw_parts(self.handle.clone(), self.len) }
    }
}

impl Gpu {
    /// Opens the first device of a GPU backend. [`Backend::Cpu`] is refused (it needs no device).
    pub fn new(backend: Backend) -> Result<Self> {
        // Creating the client panics inside the runtime when no adapter or driver answers.
        let client = std::panic::catch_unwind(|| Client::open(backend)).map_err(|_| {
            Error::Backend(format!("no {backend} device could be opened (no driver or no device on this machine)"))
        })??;
        Ok(Gpu { client, backend, launches: Default::default(), waits: Default::default() })
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Waits until the device has finished every queued launch and transfer.
    pub fn sync(&self) -> Result<()> {
        self.waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        with_client!(&self.client, |c, R| cubecl::future::block_on(c.sync()))
            .map_err(|e| Error::Backend(format!("device sync: {e:?}")))
    }

    /// Kernel launches since the device was opened, by this handle and its clones: how many
    /// dispatches a step costs (the benchmark prints it per decode step and layer).
    pub fn launches(&self) -> u64 {
        self.launches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Times the host has waited for the device (a read of a buffer, a sync) since it was
    /// opened, by this handle and its clones: a decode loop on the device waits once per chunk of
    /// steps, not once per token.
    pub fn waits(&self) -> u64 {
        self.waits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The device's name as the runtime gives it.
    pub fn name(&self) -> &'static str {
        self.client.name()
    }

    pub(crate) fn upload(&self, v: &[f32]) -> Buf {
        let v: &[f32] = if v.is_empty() { &[0.0] } else { v };
        Buf { handle: with_client!(&self.client, |c, R| c.create_from_slice(f32::as_bytes(v))), len: v.len() }
    }

    pub(crate) fn upload_u32(&self, v: &[u32]) -> Buf {
        let v: &[u32] = if v.is_empty() { &[0] } else { v };
        Buf { handle: with_client!(&self.client, |c, R| c.create_from_slice(u32::as_bytes(v))), len: v.len() }
    }

    /// A buffer of zeros (filled on the device).
    pub(crate) fn zeros(&self, n: usize) -> Buf {
        let b = self.scratch(n);
        self.fill(&b, 0.0);
        b
    }

    /// Sets every value of `b`.
    pub(crate) fn fill(&self, b: &Buf, value: f32) {
        launch!(self, fill, Self::cubes_1d(b.len, 256), CubeDim::new_1d(256), b.arg(), value, b.len as u32,);
    }

    /// A device copy of `src`.
    pub(crate) fn copy(&self, src: &Buf) -> Buf {
        let dst = self.scratch(src.len);
        self.copy_into(src, &dst);
        dst
    }

    /// Copies `src` into `dst` (at least as long).
    pub(crate) fn copy_into(&self, src: &Buf, dst: &Buf) {
        launch!(self, copy, Self::cubes_1d(src.len, 256), CubeDim::new_1d(256), src.arg(), dst.arg(), src.len as u32,);
    }

    /// `dst[r] = src[rows[r]]` for `n` rows of `width`.
    pub(crate) fn gather_rows(&self, src: &Buf, rows: &Buf, dst: &Buf, n: usize, width: usize) {
        launch!(
            self,
            gather_rows,
            Self::cubes_1d(n * width, 256),
            CubeDim::new_1d(256),
            src.arg(),
            rows.arg(),
            dst.arg(),
            n as u32,
            width as u32,
        );
    }

    /// Weighted cross-entropy of `nrows` rows of logits, in place (see the kernel): the rows
    /// become the loss's gradient, `loss[base + r]` the row's weighted loss.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cross_entropy(
        &self,
        z: &Buf,
        targets: &Buf,
        weights: &Buf,
        loss: &Buf,
        (nrows, vocab): (usize, usize),
        norm: f32,
        base: usize,
    ) {
        launch!(
            self,
            cross_entropy,
            Self::cubes_1d(nrows, 1),
            CubeDim::new_1d(ROW_THREADS),
            z.arg(),
            targets.arg(),
            weights.arg(),
            loss.arg(),
            vocab as u32,
            nrows as u32,
            norm,
            base as u32,
        );
    }

    /// Values of `partial` that [`Gpu::sum_squares`] writes for a buffer of `n` values.
    pub(crate) fn sum_squares_len(n: usize) -> usize {
        n.div_ceil(SUM_BLOCK).max(1)
    }

    /// Partial sums of squares of `x` into `partial[base..base + sum_squares_len(x.len)]`.
    pub(crate) fn sum_squares(&self, x: &Buf, partial: &Buf, base: usize) {
        let nblocks = Self::sum_squares_len(x.len);
        launch!(
            self,
            sum_squares,
            Self::cubes_1d(nblocks, 1),
            CubeDim::new_1d(ROW_THREADS),
            x.arg(),
            partial.arg(),
            x.len as u32,
            nblocks as u32,
            base as u32,
        );
    }

    /// A buffer whose contents are undefined until a kernel writes all of it.
    pub(crate) fn scratch(&self, n: usize) -> Buf {
        Buf { handle: with_client!(&self.client, |c, R| c.empty(4 * n.max(1))), len: n.max(1) }
    }

    /// A buffer of NaNs: an output a kernel must overwrite entirely (op tests).
    pub(crate) fn poisoned(&self, n: usize) -> Buf {
        self.upload(&vec![f32::NAN; n.max(1)])
    }

    pub(crate) fn read(&self, b: &Buf) -> Result<Vec<f32>> {
        self.read_with(b, |bytes| f32::from_bytes(bytes)[..b.len].to_vec())
    }

    /// A buffer of `u32` (token ids) back on the host.
    pub(crate) fn read_u32(&self, b: &Buf) -> Result<Vec<u32>> {
        self.read_with(b, |bytes| u32::from_bytes(bytes)[..b.len].to_vec())
    }

    fn read_with<T>(&self, b: &Buf, f: impl FnOnce(&[u8]) -> T) -> Result<T> {
        self.waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = with_client!(&self.client, |c, R| c.read_one(b.handle.clone()))
            .map_err(|e| Error::Backend(format!("device read: {e:?}")))?;
        Ok(f(&bytes))
    }

    pub(super) fn cubes(n: usize, per: u32) -> u32 {
        u32::try_from(n.div_ceil(per as usize)).unwrap_or(u32::MAX)
    }

    /// Enough cubes of `per` units for `n` units, spread over x and y: devices allow at most
    /// 65535 cubes along one axis (the kernels use the linear position and check bounds).
    pub(super) fn cubes_1d(n: usize, per: u32) -> CubeCount {
        let c = n.div_ceil(per as usize).max(1);
        if c <= 65_535 {
            CubeCount::Static(c as u32, 1, 1)
        } else {
            CubeCount::Static(65_535, u32::try_from(c.div_ceil(65_535)).unwrap_or(u32::MAX), 1)
        }
    }
}
