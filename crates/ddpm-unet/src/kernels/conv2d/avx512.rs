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

/// Where the kernel stores its results: lane `l` of column vector `v` (columns `16 v..16 v +
/// 16`) of output channel `o` goes to `out[o chan + base + l]` for each `(mask, base)` of
/// `segs[v]` whose `mask` has bit `l`; columns in no mask are dropped. So the product lands in
/// the caller's layout (NCHW images, without the padded width's garbage columns) directly.
pub(crate) struct Layout {
    /// Per column vector, its runs of lanes with consecutive destinations.
    segs: Vec<Vec<(u16, isize)>>,
    /// Distance between output channels.
    chan: usize,
}

impl Layout {
    /// `[c_out, m]` row-major: column `j` of channel `o` at `o m + j`.
    #[cfg(test)]
    pub(crate) fn dense(m: usize) -> Self {
        let segs = (0..m / 16)
            .map(|v| vec![(u16::MAX, 16 * v as isize)])
            .collect();
        Self { segs, chan: m }
    }

    /// Column `j` goes to `dst(j)` (plus `o chan`) where it is `Some`: consecutive columns
    /// with consecutive destinations form one masked store.
    pub(crate) fn from_fn(m: usize, chan: usize, dst: impl Fn(usize) -> Option<usize>) -> Self {
        let segs = (0..m / 16)
            .map(|v| {
                let mut runs: Vec<(u16, isize)> = Vec::new();
                let mut prev: Option<(usize, usize)> = None; // (lane, destination)
                for l in 0..16 {
                    let Some(d) = dst(16 * v + l) else {
                        prev = None;
                        continue;
                    };
                    match (prev, runs.last_mut()) {
                        (Some((pl, pd)), Some(run)) if pl + 1 == l && pd + 1 == d => {
                            run.0 |= 1 << l
                        }
                        _ => runs.push((1 << l, d as isize - l as isize)),
                    }
                    prev = Some((l, d));
                }
                runs
            })
            .collect();
        Self { segs, chan }
    }

    /// The smallest and largest index of channel 0 that any store writes (`None`: none).
    fn span(&self) -> Option<(isize, isize)> {
        let lanes = self.segs.iter().flatten().map(|&(mask, base)| {
            let lo = base + mask.trailing_zeros() as isize;
            let hi = base + 15 - mask.leading_zeros() as isize;
            (lo, hi)
        });
        lanes.reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
    }
}

/// `out[layout(o, j)] = bias[o] + sum_i sum_t w(o, i, t) xp[i plane + offs[t] + j]` for
/// `o < c_out`, `j < m`, with `packed` from [`pack`]`(c_out, c, offs.len(), w)`: every column
/// the layout keeps is written, the others are dropped.
///
/// # Panics
/// When the CPU lacks AVX-512F ([`available`] is false), `m` is not a multiple of 16, the
/// layout has fewer than `m / 16` column vectors or would write outside `out`, `bias` has
/// fewer than `c_out` values, or a read would leave `xp` or `packed` (the caller's layout is
/// wrong).
///
/// # Shapes
/// - `xp`: `c` planes of `plane` values; `bias`: `[c_out]`
#[allow(clippy::too_many_arguments)]
pub(crate) fn convolve(
    xp: &[f32],
    plane: usize,
    offs: &[usize],
    packed: &[f32],
    [c, c_out, m]: [usize; 3],
    (bias, residual): (Option<&[f32]>, Option<&[f32]>),
    layout: &Layout,
    out: &mut [f32],
) {
    assert!(available(), "direct convolution needs AVX-512F");
    assert!(m.is_multiple_of(16) && c > 0 && c_out > 0 && !offs.is_empty());
    let max_off = offs.iter().copied().max().unwrap_or(0);
    // The largest index any tile reads, the packed kernel's size (checked arithmetic: an
    // overflow is a failed bound, not a wrapped one).
    let read_end = (c - 1)
        .checked_mul(plane)
        .and_then(|v| v.checked_add(max_off))
        .and_then(|v| v.checked_add(m));
    assert!(read_end.is_some_and(|end| end <= xp.len()));
    let packed_len = (c_out.div_ceil(R) * R)
        .checked_mul(c)
        .and_then(|v| v.checked_mul(offs.len()));
    assert!(packed_len.is_some_and(|len| packed.len() >= len));
    // Every store's destination, over all channels, inside `out`.
    assert!(layout.segs.len() >= m / 16);
    if let Some((lo, hi)) = layout.span() {
        let last = (c_out - 1)
            .checked_mul(layout.chan)
            .and_then(|v| isize::try_from(v).ok())
            .and_then(|v| v.checked_add(hi));
        assert!(lo >= 0 && last.is_some_and(|l| usize::try_from(l).is_ok_and(|l| l < out.len())));
    }
    let zeros = vec![0.0f32; c_out];
    let bias = bias.unwrap_or(&zeros);
    assert!(bias.len() >= c_out);
    // The residual is read where the output is written.
    let residual = residual.map(|r| {
        assert!(r.len() >= out.len());
        r.as_ptr()
    });
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present (asserted above); the asserts above bound every read of
    // `xp` and `packed` the tiles make; every store is a masked store whose enabled lanes
    // write `out[o chan + base + l]` with `o < c_out`, which lies inside `out` (the span
    // assert above), and the residual is read by masked loads at the same indices (it is at
    // least as long as `out`); disabled lanes touch no memory.
    unsafe {
        let dims = [c, c_out, m];
        let out = out.as_mut_ptr();
        simd::convolve(xp, plane, offs, packed, dims, (bias, residual), layout, out);
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Layout, R, W};
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
        [c, c_out, m]: [usize; 3],
        (bias, residual): (&[f32], Option<*const f32>),
        layout: &Layout,
        out: *mut f32,
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
            bias,
            residual,
            layout,
            out,
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
        bias: &'a [f32],
        residual: Option<*const f32>,
        layout: &'a Layout,
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
            let o = block * R + r;
            let b = _mm512_set1_ps(a.bias[o]);
            for (v, s) in row.iter().enumerate() {
                let value = _mm512_add_ps(*s, b);
                for &(mask, base) in &a.layout.segs[j0 / 16 + v] {
                    let at = base + (o * a.layout.chan) as isize;
                    // SAFETY: the enabled lanes `l` write `out[at + l]` (and read the
                    // residual there), inside the output (the caller's span check); the
                    // pointers are formed with wrapping arithmetic, and disabled lanes
                    // (possibly before their start) are not accessed.
                    let value = match a.residual {
                        Some(r) => unsafe {
                            let r = _mm512_maskz_loadu_ps(mask, r.wrapping_offset(at));
                            _mm512_add_ps(value, r)
                        },
                        None => value,
                    };
                    unsafe { _mm512_mask_storeu_ps(a.out.wrapping_offset(at), mask, value) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output of the kernel equals the definition, bias and residual added (so every
    /// one was written over the NaNs it starts from), for column counts that leave 0, 1 and 2 vectors after
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
            let mut buf = crate::kernels::test_support::guard::buffer(c_out * m, f32::NAN);
            let acc = crate::kernels::test_support::guard::inner(&mut buf);
            let dense = Layout::dense(m);
            let bias: Vec<f32> = (0..c_out).map(|o| o as f32 - 2.0).collect();
            let res: Vec<f32> = (0..c_out * m).map(|v| (v % 3) as f32 - 1.0).collect();
            let dims = [c, c_out, m];
            let extra = (Some(&bias[..]), Some(&res[..]));
            convolve(&xp, plane, &offs, &packed, dims, extra, &dense, acc);
            for o in 0..c_out {
                for j in 0..m {
                    let want: f32 = (0..c)
                        .flat_map(|i| (0..taps).map(move |t| (i, t)))
                        .map(|(i, t)| w(o, i, t) * xp[i * plane + offs[t] + j])
                        .sum::<f32>()
                        + bias[o]
                        + res[o * m + j];
                    assert_eq!(acc[o * m + j], want, "m {m} c_out {c_out} o {o} j {j}");
                }
            }
            crate::kernels::test_support::guard::check(&buf, &format!("m {m} c_out {c_out}"));
        }
    }
}
