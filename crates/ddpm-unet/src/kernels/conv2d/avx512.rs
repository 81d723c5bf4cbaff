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
//! The weight gradient ([`correlate`]) turns the roles: its tiles are output channels by
//! input channels, the sum runs over the image positions, and the input-channel vectors come
//! from a position-major copy of the images.
//!
//! Each output is summed in a fixed order (input channel, then tap), whatever the thread
//! count, so results are bit-identical from run to run on one machine.

use std::mem::MaybeUninit;

/// Output channels per register tile.
pub(crate) const R: usize = 8;
/// 16-column vectors per register tile (the column remainder takes 1 or 2).
const W: usize = 3;
/// Positions per block of the weight gradient: every output channel's and every tap's tiles
/// of a block of positions and `16 W` input channels run before the next, so that its rows
/// of input channels (`POSITIONS + max(offs)` rows of up to `16 W` channels) are read from L1
/// after the first tile, not from L2 by each.
const POSITIONS: usize = 128;

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

/// Whether this CPU has AMX tiles (CPUID leaf 7, EDX bit 24): Intel's Xeons from Sapphire
/// Rapids on, whose cores run two 512-bit FMAs per cycle beside larger caches. Read once.
///
/// Nothing here uses AMX; it tells such cores apart, on which the one-tap [`correlate`]
/// is bound by its loads while gemm is not (see `winograd::weight_grad`).
pub(crate) fn has_amx() -> bool {
    static AMX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AMX.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
            // SAFETY: CPUID exists on every x86_64 CPU; leaf 7 is read only when the
            // highest leaf reaches it.
            #[allow(unused_unsafe)]
            unsafe {
                __get_cpuid_max(0).0 >= 7 && (__cpuid_count(7, 0).edx >> 24) & 1 == 1
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
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
    out: &mut [MaybeUninit<f32>],
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
        let out = out.as_mut_ptr().cast::<f32>();
        simd::convolve(xp, plane, offs, packed, dims, (bias, residual), layout, out);
    }
}

/// The weight gradient of a stride-1 convolution, from the position-major padded images:
/// `dw[(o c + i) taps + t] = sum_(j < m) dy[o m + j] xt[(j + offs[t]) c + i]` for `o < c_out`,
/// `i < c` and every tap `t`, written over `dw`'s old values.
///
/// The forward kernel's tiling with the roles turned: for each tap, tiles of [`R`] output
/// channels by `16 W` input channels keep their `R W` accumulators in registers for the
/// whole sum over `j`; per step, `W` loads of one shifted position's channels, `R` broadcast
/// values of `dy` and `R W` fused multiply-adds, so that (unlike a kernel loading both
/// operands as vectors) loads do not limit it. Each accumulator lane is one input channel:
/// no horizontal sums. A GEMM library instead packs both operands of every tap's product.
/// Each entry is summed in the order of `j`, whatever the thread count.
///
/// # Panics
/// When the CPU lacks AVX-512F ([`available`] is false), a size is 0, a read would leave
/// `xt` or `dy`, or `dw` is shorter than `c_out c taps`.
///
/// # Shapes
/// - `xt`: `[positions, c]` with `positions >= max(offs) + m`; `dy`: `[c_out, m]`;
///   `dw`: `[c_out, c, offs.len()]`
pub(crate) fn correlate(
    xt: &[f32],
    offs: &[usize],
    dy: &[f32],
    [c, c_out, m]: [usize; 3],
    dw: &mut [f32],
) {
    assert!(available(), "direct convolution needs AVX-512F");
    assert!(m > 0 && c > 0 && c_out > 0 && !offs.is_empty());
    let max_off = offs.iter().copied().max().unwrap_or(0);
    let read_end = max_off.checked_add(m).and_then(|p| p.checked_mul(c));
    assert!(read_end.is_some_and(|end| end <= xt.len()));
    assert!(c_out.checked_mul(m).is_some_and(|n| n <= dy.len()));
    let dw_len = c_out.checked_mul(c).and_then(|v| v.checked_mul(offs.len()));
    assert!(dw_len.is_some_and(|n| n <= dw.len()));
    // What the rows past the last output channel read.
    let zeros = vec![0.0f32; m];
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present (asserted above). A tile reads `dy` rows `o < c_out` (`m`
    // values from `o m`, inside `dy`) or `zeros` (`m` values), and `xt` at positions
    // `off + j < max_off + m`, channels `i < c` only (masked loads at the last vector), so
    // below `(max_off + m) c <= xt.len()`. The stores write `dw[(o c + i) taps + t]` for
    // `o < c_out`, `i < c`, `t < taps`: inside `dw` (asserted).
    unsafe {
        simd::correlate(xt, offs, dy, [c, c_out, m], &zeros, dw);
    }
}

/// `dst[x c + i] = src[i stride + x]` for `i < c`, `x < w`: `c` rows of `w` values (row `i`
/// at `i stride`) rewritten position-major, in blocks of 16 x 16 transposed in registers
/// (masked loads and stores at the edges), where element-wise copies would make `c` strided
/// scalar reads per position.
///
/// # Panics
/// When the CPU lacks AVX-512F ([`available`] is false), or a read would leave `src` or a
/// write `dst`.
pub(crate) fn transpose(src: &[f32], stride: usize, [c, w]: [usize; 2], dst: &mut [f32]) {
    assert!(available(), "the transpose needs AVX-512F");
    if c == 0 || w == 0 {
        return;
    }
    let read_end = (c - 1).checked_mul(stride).and_then(|v| v.checked_add(w));
    assert!(read_end.is_some_and(|end| end <= src.len()));
    assert!(c.checked_mul(w).is_some_and(|n| n <= dst.len()));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX-512F is present (asserted above). The loads read rows `i < c`, positions
    // `x < w` (masked at the last block), below `(c - 1) stride + w <= src.len()`; the stores
    // write `dst[x c + i]` for `x < w`, `i < c` (masked to the channels that exist), below
    // `c w <= dst.len()`.
    unsafe {
        simd::transpose(src.as_ptr(), stride, [c, w], dst.as_mut_ptr());
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{Layout, POSITIONS, R, W};
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
        // The sums start from the bias (a zeroed array would be a `memset` on the stack, and a
        // `vzeroupper` before it, for every tile).
        let mut acc: [[__m512; V]; R] = std::array::from_fn(|r| {
            let o = block * R + r;
            [_mm512_set1_ps(if o < a.c_out { a.bias[o] } else { 0.0 }); V]
        });
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
            for (v, &value) in row.iter().enumerate() {
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

    /// The blocks of [`super::transpose`]. The caller guarantees AVX-512F and its bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose(
        src: *const f32,
        stride: usize,
        [c, w]: [usize; 2],
        dst: *mut f32,
    ) {
        let mask = |n: usize| if n >= 16 { u16::MAX } else { (1u16 << n) - 1 };
        for i0 in (0..c).step_by(16) {
            let rows = (c - i0).min(16);
            for x0 in (0..w).step_by(16) {
                let cols = (w - x0).min(16);
                let mut r = [_mm512_setzero_ps(); 16];
                for (k, r) in r.iter_mut().enumerate().take(rows) {
                    // SAFETY: row `i0 + k < c`, positions `x0..x0 + cols <= w` (masked).
                    *r = unsafe {
                        _mm512_maskz_loadu_ps(mask(cols), src.add((i0 + k) * stride + x0))
                    };
                }
                let t = transpose16(r);
                for (p, t) in t.iter().enumerate().take(cols) {
                    // SAFETY: position `x0 + p < w`, channels `i0..i0 + rows <= c` (masked).
                    unsafe { _mm512_mask_storeu_ps(dst.add((x0 + p) * c + i0), mask(rows), *t) };
                }
            }
        }
    }

    /// The transpose of a 16 x 16 block: lane `k` of output `p` is lane `p` of input `k`
    /// (pairs interleaved, then quadruples, then 128-bit lanes twice).
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
        let t: [__m512; 16] = std::array::from_fn(|k| match k % 2 {
            0 => _mm512_unpacklo_ps(r[k], r[k + 1]),
            _ => _mm512_unpackhi_ps(r[k - 1], r[k]),
        });
        // Within each group of four: (t0, t2) and (t1, t3) by 64-bit halves.
        let u: [__m512; 16] = std::array::from_fn(|k| {
            let (base, j) = (k / 4 * 4, k % 4);
            let (a, b) = (t[base + j / 2], t[base + j / 2 + 2]);
            match j % 2 {
                0 => _mm512_shuffle_ps::<0x44>(a, b),
                _ => _mm512_shuffle_ps::<0xEE>(a, b),
            }
        });
        // 128-bit lanes: groups of four at distance 4, then at distance 8.
        let v: [__m512; 16] = std::array::from_fn(|k| {
            let (base, j) = (k / 8 * 8, k % 8);
            let (a, b) = (u[base + j % 4], u[base + j % 4 + 4]);
            match j / 4 {
                0 => _mm512_shuffle_f32x4::<0x88>(a, b),
                _ => _mm512_shuffle_f32x4::<0xDD>(a, b),
            }
        });
        std::array::from_fn(|k| {
            let (a, b) = (v[k % 8], v[k % 8 + 8]);
            match k / 8 {
                0 => _mm512_shuffle_f32x4::<0x88>(a, b),
                _ => _mm512_shuffle_f32x4::<0xDD>(a, b),
            }
        })
    }

    /// The tiles of [`super::correlate`]. The caller guarantees AVX-512F and its bounds.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn correlate(
        xt: &[f32],
        offs: &[usize],
        dy: &[f32],
        [c, c_out, m]: [usize; 3],
        zeros: &[f32],
        dw: &mut [f32],
    ) {
        let taps = offs.len();
        let (rows, chunks) = (c_out.div_ceil(R), c.div_ceil(16 * W));
        // Each tile's running sums between blocks of positions: tile (t, o0 / R, i0 / 16 W).
        let mut sums = vec![[[0.0f32; 16 * W]; R]; taps * rows * chunks];
        for j0 in (0..m).step_by(POSITIONS) {
            let len = (m - j0).min(POSITIONS);
            for (ii, i0) in (0..c).step_by(16 * W).enumerate() {
                let width = (c - i0).min(16 * W);
                // The last vector's lanes inside the channels (all 16 but at the end).
                let last = match width % 16 {
                    0 => u16::MAX,
                    r => (1u16 << r) - 1,
                };
                // Every output channel's tiles on this block of positions and channels: its
                // rows of `xt` are read from L1 after the first tile.
                for (oi, o0) in (0..c_out).step_by(R).enumerate() {
                    let dys: [*const f32; R] = std::array::from_fn(|r| match o0 + r < c_out {
                        true => dy[(o0 + r) * m + j0..].as_ptr(),
                        false => zeros.as_ptr(),
                    });
                    for (t, &off) in offs.iter().enumerate() {
                        // SAFETY: `xt` holds `(off + m) c` values (the caller's bounds); the
                        // tile reads positions `off + j0..off + j0 + len`, channels
                        // `i0..i0 + width`.
                        let x = unsafe { xt.as_ptr().add((off + j0) * c + i0) };
                        let (dims, out) = ([c, len], &mut sums[(t * rows + oi) * chunks + ii]);
                        match width.div_ceil(16) {
                            1 => unsafe { wtile::<1>(&dys, x, dims, last, out) },
                            2 => unsafe { wtile::<2>(&dys, x, dims, last, out) },
                            _ => unsafe { wtile::<W>(&dys, x, dims, last, out) },
                        }
                    }
                }
            }
        }
        for (t, (oi, ii)) in (0..taps)
            .flat_map(|t| (0..rows).flat_map(move |o| (0..chunks).map(move |i| (t, (o, i)))))
        {
            let (o0, i0) = (oi * R, ii * 16 * W);
            let width = (c - i0).min(16 * W);
            let tile = &sums[(t * rows + oi) * chunks + ii];
            for (r, row) in tile.iter().enumerate().take(c_out - o0) {
                for (q, &v) in row.iter().enumerate().take(width) {
                    dw[((o0 + r) * c + i0 + q) * taps + t] = v;
                }
            }
        }
    }

    /// `out[r][16 v + l] += sum_(j < m) dys[r][j] x[j c + 16 v + l]` for `V` vectors of input
    /// channels, the last one's lanes limited to `last`, each sum continued from `out` in the
    /// order of `j`; the accumulators stay in registers for the whole sum (not inlined: alone,
    /// the loop keeps them all in registers).
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    unsafe fn wtile<const V: usize>(
        dys: &[*const f32; R],
        x: *const f32,
        [c, m]: [usize; 2],
        last: u16,
        out: &mut [[f32; 16 * W]; R],
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for (a, o) in acc.iter_mut().zip(out.iter()) {
            for (v, a) in a.iter_mut().enumerate() {
                // SAFETY: `o` holds `16 W >= 16 V` values.
                *a = unsafe { _mm512_loadu_ps(o.as_ptr().add(16 * v)) };
            }
        }
        for j in 0..m {
            // SAFETY: the caller's bounds: position `j` of the tile's channels, the last
            // vector masked to the channels that exist.
            let row = unsafe { x.add(j * c) };
            let mut xv = [_mm512_setzero_ps(); V];
            for (v, xv) in xv.iter_mut().enumerate() {
                let mask = if v + 1 == V { last } else { u16::MAX };
                *xv = unsafe { _mm512_maskz_loadu_ps(mask, row.add(16 * v)) };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let d = _mm512_set1_ps(unsafe { *dys[r].add(j) });
                for (s, xv) in acc.iter_mut().zip(&xv) {
                    *s = _mm512_fmadd_ps(*xv, d, *s);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            for (v, a) in a.iter().enumerate() {
                // SAFETY: `o` holds `16 W >= 16 V` values.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(16 * v), *a) };
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
            // SAFETY: the kernel writes only initialised values.
            let out = unsafe { crate::kernels::flex_tensor::writable(acc) };
            convolve(&xp, plane, &offs, &packed, dims, extra, &dense, out);
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

    /// Every weight gradient entry equals its definition (exact small integers, so exactly),
    /// written over the NaNs it starts from, for input channels that fill 1, 2 and 3
    /// vectors and leave a masked remainder after full tiles (1, 17, 50, 96), output
    /// channels below and above a multiple of [`R`], one tap and nine.
    #[test]
    fn every_weight_gradient_is_written() {
        if !available() {
            return; // the gemm engine serves this CPU; shifted.rs tests it
        }
        for (c, c_out, m, taps) in [
            (1, 3, 20, 9),
            (17, 9, 33, 9),
            (50, 8, 16, 1),
            (96, 17, 5, 2),
            (33, 12, 2 * POSITIONS + 44, 9),
        ] {
            let offs: Vec<usize> = (0..taps).map(|t| t * 3 + t % 2).collect();
            let positions = offs.iter().max().unwrap() + m;
            let xt: Vec<f32> = (0..positions * c).map(|v| (v % 7) as f32 - 3.0).collect();
            let dy: Vec<f32> = (0..c_out * m).map(|v| (v % 5) as f32 - 2.0).collect();
            let mut buf = crate::kernels::test_support::guard::buffer(c_out * c * taps, f32::NAN);
            let dw = crate::kernels::test_support::guard::inner(&mut buf);
            correlate(&xt, &offs, &dy, [c, c_out, m], dw);
            for o in 0..c_out {
                for i in 0..c {
                    for (t, off) in offs.iter().enumerate() {
                        let want: f32 = (0..m).map(|j| dy[o * m + j] * xt[(j + off) * c + i]).sum();
                        let got = dw[(o * c + i) * taps + t];
                        assert_eq!(got, want, "c {c} c_out {c_out} o {o} i {i} t {t}");
                    }
                }
            }
            crate::kernels::test_support::guard::check(&buf, &format!("c {c} c_out {c_out}"));
        }
    }

    /// The transpose moves every value and writes nothing else: channel counts and widths
    /// below, at and past a block of 16, a row stride longer than the rows, and NaN guards
    /// after the output.
    #[test]
    fn transpose_moves_every_value() {
        if !available() {
            return;
        }
        for (c, w) in [(1, 1), (15, 7), (16, 16), (17, 28), (33, 5), (48, 33)] {
            let stride = w + 3;
            let src: Vec<f32> = (0..c * stride).map(|v| v as f32).collect();
            let mut dst = vec![f32::NAN; c * w + 16];
            transpose(&src, stride, [c, w], &mut dst);
            for x in 0..w {
                for i in 0..c {
                    assert_eq!(
                        dst[x * c + i],
                        src[i * stride + x],
                        "c {c} w {w} x {x} i {i}"
                    );
                }
            }
            assert!(
                dst[c * w..].iter().all(|v| v.is_nan()),
                "c {c} w {w}: wrote past the end"
            );
        }
    }
}
