//! A register-blocked direct convolution for AVX-512 CPUs: the inner product of
//! [`shifted`](super::shifted)'s convolution without a GEMM library around it.
//!
//! `acc[o, j] = sum_i sum_t w(o, i, t) xp[i plane + off_t + j]` is computed in tiles of
//! [`R`] output channels by `W x 16` columns, whose `R W` accumulators stay in registers for
//! the whole sum over input channels and taps: per step, `W` unaligned loads of the shifted
//! image, `R` broadcast weights and `R W` fused multiply-adds. A GEMM library instead writes
//! its output back after each tap's product (a convolution's taps are separate products
//! there) and packs the image for each of them; here nothing is packed but the small kernel
//! (once per call) and the output is written once.
//!
//! Each output is summed in a fixed order (input channel, then tap), whatever the thread
//! count, so results are bit-identical from run to run on one machine.

/// Output channels per register tile.
pub(crate) const R: usize = 8;
/// 16-column vectors per register tile (the column remainder takes 1 or 2).
const W: usize = 3;

/// Whether this CPU can run the kernel (AVX-512F), detected at run time.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The kernel in the order the tiles read it: entry `(o, i, t)` at
/// `((o / R * c + i) taps + t) R + o % R`, zero for the rows that round `c_out` up to a
/// multiple of [`R`].
pub(crate) fn pack(
    c_out: usize,
    c: usize,
    taps: usize,
    w: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f32> {
    let mut out = vec![0.0f32; c_out.div_ceil(R) * R * c * taps];
    for o in 0..c_out {
        for i in 0..c {
            for t in 0..taps {
                out[((o / R * c + i) * taps + t) * R + o % R] = w(o, i, t);
            }
        }
    }
    out
}

/// `acc[o m + j] = sum_i sum_t w(o, i, t) xp[i plane + offs[t] + j]` for `o < c_out`,
/// `j < m`, with `packed` from [`pack`]`(c_out, c, offs.len(), w)`.
///
/// # Panics
/// When the CPU lacks AVX-512F ([`available`] is false), `m` is not a multiple of 16, or a
/// read would leave `xp` or `packed` (the caller's layout is wrong).
///
/// # Shapes
/// - `xp`: `c` planes of `plane` values; output: `[c_out, m]`
pub(crate) fn convolve(
    xp: &[f32],
    plane: usize,
    offs: &[usize],
    packed: &[f32],
    c: usize,
    c_out: usize,
    m: usize,
) -> Vec<f32> {
    assert!(available(), "direct convolution needs AVX-512F");
    assert!(m.is_multiple_of(16) && c > 0 && c_out > 0 && !offs.is_empty());
    let max_off = offs.iter().copied().max().unwrap_or(0);
    // The largest index any tile reads, and the packed kernel's size.
    assert!((c - 1) * plane + max_off + m <= xp.len());
    assert!(packed.len() >= c_out.div_ceil(R) * R * c * offs.len());
    let mut acc: Vec<f32> = Vec::with_capacity(c_out * m);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present (asserted above); the asserts above bound every read of
    // `xp` and `packed` the tiles make. `acc` has room for `c_out * m` values, of which tile
    // `(block, j0)` writes rows `block R..min((block + 1) R, c_out)`, columns `j0..j0 + 16 V`
    // with `j0 + 16 V <= m`; the tiles cover every row below `c_out` and every column below
    // `m` (full tiles of 48 columns, then the remaining 0, 16 or 32), so all `c_out * m`
    // values are written before `set_len` (the test `every_output_is_written` checks the
    // column remainders 0, 1 and 2 and row counts that are not multiples of R).
    unsafe {
        avx512::convolve(xp, plane, offs, packed, c, c_out, m, acc.as_mut_ptr());
        acc.set_len(c_out * m);
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{R, W};
    use std::arch::x86_64::*;

    /// Every tile of the output. The caller guarantees AVX-512F and the bounds stated at
    /// [`super::convolve`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn convolve(
        xp: &[f32],
        plane: usize,
        offs: &[usize],
        packed: &[f32],
        c: usize,
        c_out: usize,
        m: usize,
        acc: *mut f32,
    ) {
        let blocks = c_out.div_ceil(R);
        let full = m / (16 * W) * (16 * W);
        let args = Args {
            xp: xp.as_ptr(),
            plane,
            offs,
            packed: packed.as_ptr(),
            c,
            c_out,
            m,
            out: acc,
        };
        // SAFETY (all calls below): the caller's bounds; each tile's columns end at or
        // before `m`.
        for j0 in (0..full).step_by(16 * W) {
            for block in 0..blocks {
                unsafe { tile::<W>(&args, block, j0) };
            }
        }
        for block in 0..blocks {
            match (m - full) / 16 {
                1 => unsafe { tile::<1>(&args, block, full) },
                2 => unsafe { tile::<2>(&args, block, full) },
                _ => {}
            }
        }
    }

    /// The fixed inputs of every tile.
    struct Args<'a> {
        xp: *const f32,
        plane: usize,
        offs: &'a [usize],
        packed: *const f32,
        c: usize,
        c_out: usize,
        m: usize,
        out: *mut f32,
    }

    /// Output rows `block R..` (at most `c_out`), columns `j0..j0 + 16 V`, summed over every
    /// input channel and tap in registers, then stored once.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const V: usize>(a: &Args, block: usize, j0: usize) {
        let taps = a.offs.len();
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for i in 0..a.c {
            // SAFETY: `i < c`, so `i plane + j0 + off + 16 V <= (c - 1) plane + max_off + m`,
            // within `xp`; the weights of (block, i) are `taps R` values inside `packed`.
            let xb = unsafe { a.xp.add(i * a.plane + j0) };
            let wb = unsafe { a.packed.add((block * a.c + i) * taps * R) };
            for (t, &off) in a.offs.iter().enumerate() {
                let mut xv = [_mm512_setzero_ps(); V];
                for (v, x) in xv.iter_mut().enumerate() {
                    *x = unsafe { _mm512_loadu_ps(xb.add(off + 16 * v)) };
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let w = _mm512_set1_ps(unsafe { *wb.add(t * R + r) });
                    for (s, x) in row.iter_mut().zip(&xv) {
                        *s = _mm512_fmadd_ps(*x, w, *s);
                    }
                }
            }
        }
        let rows = (a.c_out - block * R).min(R);
        for (r, row) in acc.iter().enumerate().take(rows) {
            for (v, s) in row.iter().enumerate() {
                // SAFETY: row `block R + r < c_out`, column `j0 + 16 v + 15 < m`.
                unsafe { _mm512_storeu_ps(a.out.add((block * R + r) * a.m + j0 + 16 * v), *s) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output of the kernel equals the definition (so every one was written, the
    /// uninitialised buffer included), for column counts that leave 0, 1 and 2 vectors after
    /// the full tiles, output channels below, at and above a multiple of [`R`], one tap and
    /// nine.
    #[test]
    fn every_output_is_written() {
        if !available() {
            return; // the gemm engine serves this CPU; shifted.rs tests it
        }
        for (m, c_out, c, taps) in [(48, 8, 3, 9), (64, 5, 2, 1), (80, 9, 4, 9), (16, 17, 1, 2)] {
            let plane = m + 40;
            let xp: Vec<f32> = (0..c * plane).map(|v| (v % 13) as f32 - 6.0).collect();
            let offs: Vec<usize> = (0..taps).map(|t| t * 4 + t % 3).collect();
            let w = |o: usize, i: usize, t: usize| ((o * 7 + i * 3 + t) % 5) as f32 - 2.0;
            let packed = pack(c_out, c, taps, w);
            let acc = convolve(&xp, plane, &offs, &packed, c, c_out, m);
            for o in 0..c_out {
                for j in 0..m {
                    let want: f32 = (0..c)
                        .flat_map(|i| (0..taps).map(move |t| (i, t)))
                        .map(|(i, t)| w(o, i, t) * xp[i * plane + offs[t] + j])
                        .sum();
                    assert_eq!(acc[o * m + j], want, "m {m} c_out {c_out} o {o} j {j}");
                }
            }
        }
    }
}
