//! Work counters of the fused compute kernels: for each, how many calls, the FLOPs they did
//! and the time they took on the thread that ran them, added up over the whole process.
//! Divided, that is each kernel's rate per thread, to set against the machine's GEMM rate
//! (`examples/speed --kernel-times` prints both); a sampling profiler gives shares of time,
//! these give rates.
//!
//! Each call costs two clock reads and three relaxed atomic additions (thousands of calls per
//! training step of the MNIST U-Net: well under 0.1 % of it). The counters are process-wide:
//! read them around work that nothing else runs beside.
//!
//! ```
//! use ddpm_unet::kernels::profile::{kernel_times, reset_kernel_times};
//!
//! reset_kernel_times();
//! // ... run a forward pass or a training step ...
//! for k in kernel_times().iter().filter(|k| k.calls > 0) {
//!     println!("{:?}: {:.1} GFLOP/s per thread", k.kernel, k.gflops_per_thread());
//! }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A fused compute kernel whose work is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// The register-blocked AVX-512 convolution of stride 1 (forward passes and input
    /// gradients). FLOPs: `2 c_in c_out k^2` per output value (the padded width's garbage
    /// columns and the rows that round `c_out` up to the register tile are not counted).
    Direct,
    /// The AVX-512 weight gradient of stride 1: `2 c_in c_out k^2` per output value of the
    /// forward pass.
    WeightGrad,
    /// Stride-1 convolutions (forward passes and input gradients) as one gemm call per tap,
    /// on CPUs without AVX-512 ([`Direct`](Kernel::Direct)'s work there), and the forward
    /// passes of unpadded 1x1 convolutions on every CPU (one gemm on the planes in place):
    /// `2 c_in c_out k^2` per output value, the garbage columns of the padded width not
    /// counted.
    GemmTaps,
    /// The weight gradient of stride 1 as one gemm call per tap (CPUs without AVX-512):
    /// `2 c_in c_out k^2` per output value of the forward pass.
    GemmWeightGrad,
    /// Winograd's per-element products of forward passes and input gradients (F(2x2, 3x3)'s
    /// 16 per block of tiles, F(4x4, 3x3)'s 36 over the whole batch), counted as performed:
    /// `2 c_in c_out` per tile element. A 3x3 convolution needs 2.25 (F(2x2, 3x3)) or 4
    /// (F(4x4, 3x3)) times as many FLOPs done directly.
    WinogradProducts,
    /// Winograd's 16 weight-gradient products (`dU_e = dM_e V_e^T` over every tile of the
    /// batch), counted as performed: `2 c_in c_out` per tile element.
    WinogradWeightGrad,
    /// The GEMMs of strided convolutions on their im2col matrices (`2 c_in k^2 c_out` per
    /// output value, each pass).
    Im2col,
    /// Winograd's transforms of input tiles, output gradients and products (additions and a
    /// few multiplications by constants: memory passes, so time only, no FLOPs counted).
    WinogradTransforms,
    /// GroupNorm + activation forward passes, each (image, group) block one call (statistics
    /// and output; a memory pass, time only). The normalisation inside a convolution's padded
    /// copy (sampling) is counted with that convolution.
    GroupNorm,
    /// GroupNorm + activation backward passes, each (image, group) block one call (a memory
    /// pass, time only).
    GroupNormBackward,
}

impl Kernel {
    /// Every kernel, in the order of [`kernel_times`].
    pub const ALL: [Kernel; 10] = [
        Kernel::Direct,
        Kernel::WeightGrad,
        Kernel::GemmTaps,
        Kernel::GemmWeightGrad,
        Kernel::WinogradProducts,
        Kernel::WinogradWeightGrad,
        Kernel::Im2col,
        Kernel::WinogradTransforms,
        Kernel::GroupNorm,
        Kernel::GroupNormBackward,
    ];
}

/// What one kernel did since the last [`reset_kernel_times`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KernelTime {
    /// The kernel.
    pub kernel: Kernel,
    /// How many times it ran.
    pub calls: u64,
    /// The floating-point operations it did (a multiply-add is two).
    pub flop: u64,
    /// Its time on the threads that ran it, added up (two threads busy for one second are
    /// two seconds).
    pub seconds: f64,
}

impl KernelTime {
    /// GFLOP per second of one thread (0 when it never ran).
    pub fn gflops_per_thread(&self) -> f64 {
        if self.seconds > 0.0 {
            self.flop as f64 / self.seconds / 1e9
        } else {
            0.0
        }
    }
}

struct Counter {
    calls: AtomicU64,
    flop: AtomicU64,
    nanos: AtomicU64,
}

impl Counter {
    const fn new() -> Self {
        Self {
            calls: AtomicU64::new(0),
            flop: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
        }
    }
}

static COUNTERS: [Counter; Kernel::ALL.len()] = [const { Counter::new() }; Kernel::ALL.len()];

fn counter(kernel: Kernel) -> &'static Counter {
    let i = Kernel::ALL.iter().position(|&k| k == kernel).unwrap_or(0);
    &COUNTERS[i]
}

/// Runs `f`, one call of `kernel` doing `flop` FLOPs, and counts it.
// Called by the flex kernels only (a build without them keeps the counters at zero).
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn timed<R>(kernel: Kernel, flop: u64, f: impl FnOnce() -> R) -> R {
    let start = Instant::now();
    let result = f();
    let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let c = counter(kernel);
    c.calls.fetch_add(1, Ordering::Relaxed);
    c.flop.fetch_add(flop, Ordering::Relaxed);
    c.nanos.fetch_add(nanos, Ordering::Relaxed);
    result
}

/// `2 a b ...`: the FLOPs of a product of these sizes, saturating (never wrapping) for sizes
/// no buffer could hold.
// Called by the flex kernels only (a build without them keeps the counters at zero).
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn flop(sizes: &[usize]) -> u64 {
    sizes
        .iter()
        .fold(2u64, |acc, &s| acc.saturating_mul(s as u64))
}

/// What each kernel did since the last [`reset_kernel_times`] (or since the process
/// started), in the order of [`Kernel::ALL`].
pub fn kernel_times() -> Vec<KernelTime> {
    Kernel::ALL
        .iter()
        .map(|&kernel| {
            let c = counter(kernel);
            KernelTime {
                kernel,
                calls: c.calls.load(Ordering::Relaxed),
                flop: c.flop.load(Ordering::Relaxed),
                seconds: c.nanos.load(Ordering::Relaxed) as f64 / 1e9,
            }
        })
        .collect()
}

/// Sets every counter back to zero.
pub fn reset_kernel_times() {
    for c in &COUNTERS {
        c.calls.store(0, Ordering::Relaxed);
        c.flop.store(0, Ordering::Relaxed);
        c.nanos.store(0, Ordering::Relaxed);
    }
}
