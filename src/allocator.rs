//! A process-wide setting of the C allocator that CPU training and sampling gain from.
//!
//! Every training or sampling step allocates and frees the same large tensors (a 64-image
//! batch of 96-channel 28x28 activations is 19 MiB). glibc's `malloc` serves blocks above
//! its mmap threshold (128 KiB at first, raised as such blocks are freed, at most 32 MiB) with
//! fresh `mmap`s and returns them, and trims the heap's free top beyond twice that: so each
//! step faults in and zeroes its big tensors' pages anew. Measured on the ddpm_mnist U-Net
//! (2-core AVX-512, `examples/speed`), that is 10-15 % of a step.
//!
//! [`keep_freed_memory`] fixes the threshold at 32 MiB and stops trimming, so freed blocks are
//! reused from the heap. It changes `malloc` for the whole process, which is the
//! application's choice to make: this crate never calls it by itself (its examples do).

/// Below this size, blocks come from the heap (glibc's largest mmap threshold).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 32 << 20;

/// Tells glibc's `malloc` to serve blocks up to 32 MiB from its heap and never to give the
/// heap's free memory back to the system, so that the large tensors a training or sampling
/// step frees are reused by the next step rather than mapped, faulted in and zeroed again.
/// The resident memory then stays at the peak of a step (a few MiB more measured on the
/// ddpm_mnist U-Net: 316 against 310 MiB).
///
/// Call it once, early in `main`; it affects every allocation of the process. Returns
/// whether the settings took effect: `false` on targets other than glibc Linux (where it does
/// nothing) or if glibc refused them.
///
/// ```
/// let applied = ddpm::allocator::keep_freed_memory();
/// assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes malloc's tuning parameters; it is thread-safe in
        // glibc (it takes the arena locks) and has no other effect.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
