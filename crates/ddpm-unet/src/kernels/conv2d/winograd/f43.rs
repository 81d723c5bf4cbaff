//! The forward pass by Winograd's F(4x4, 3x3) (Lavin & Gray 2016, interpolation points
//! 0, ±1, ±2 and infinity): 36 multiplications per 4x4 output tile and input channel, 2.25
//! per output value against F(2x2, 3x3)'s 4 and the direct kernel's 9.
//!
//! The same factorisation as the module's F(2x2, 3x3), with 6x6 input tiles overlapping by
//! two and
//!
//! ```text
//! B^T = [4  0 -5  0 1 0]   G = [ 1/4     0    0 ]   A^T = [1 1  1 1  1 0]
//!       [0 -4 -4  1 1 0]       [-1/6 -1/6 -1/6 ]         [0 1 -1 2 -2 0]
//!       [0  4 -4 -1 1 0]       [-1/6  1/6 -1/6 ]         [0 1  1 4  4 0]
//!       [0 -2 -1  2 1 0]       [1/24 1/12  1/6 ]         [0 1 -1 8 -8 1]
//!       [0  2 -1 -2 1 0]       [1/24 -1/12 1/6 ]
//!       [0  4  0 -5 0 1]       [ 0     0    1  ]
//! ```
//!
//! Its larger constants (up to 8 in `A^T`, 5 in `B^T`) round more than F(2x2, 3x3)'s; the
//! module's tests hold both to the same bound against the definition in f64 (`2e-5` of the
//! largest output, sums over up to 128 channels). Each run-based transform first gathers the
//! tile values into runs over all tiles of a call and then runs both passes over those runs
//! (unit stride, vectorised), so the short tile rows of small images do not matter; on CPUs
//! with AVX2 but no AVX-512 the forward pass's transforms run in registers instead ([`avx2`]).
//!
//! Used for forward passes and weight gradients on batches with many 4x4 tiles (see the
//! module's `large_tiles`); forward passes run the batch in groups of images that stay in
//! cache ([`group_images`]); the weight gradient is the factorisation's adjoint, `dU_e = dM_e
//! V_e^T` with `dM = A dY A^T`, then `dg = G^T dU G` ([`weight_grad`]).

use std::mem::MaybeUninit;
use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use rayon::prelude::*;

use super::super::cache::{self, Transform};
#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::{Tiles, first, product, store_row, with_taken};
use crate::kernels::flex_tensor::Shared;
use crate::kernels::flex_tensor::{initialised, unwritten, written};
use crate::kernels::profile::{self, Kernel, flop};
use crate::kernels::vectorize::vectorized;

/// Tile elements: a 6x6 transformed tile.
const E: usize = 36;

/// Output tiles of the 4x4 tiling: `[tile rows, tiles per row]`.
pub(super) fn grid(g: Tiles) -> [usize; 2] {
    [g.ho.div_ceil(4), g.wo.div_ceil(4)]
}

/// `U = G g G^T` for every `(o, i)` of `w` (`[c_out, c_in, 3, 3]`), stored `[36, c_out,
/// c_in]`: `U_e = sum_k C[e, k] g_k` with the constant `C = G ⊗ G` (`[36, 9]`, computed in
/// f64), over `w` transposed to `[9, c_out c_in]` so that the sums run along unit-stride rows.
fn transform_kernel(w: &[f32], c_out: usize, c_in: usize, wt: &mut Vec<f32>, u: &mut Vec<f32>) {
    let plane = c_out * c_in;
    let coef = coefficients();
    let wt = first(wt, 9 * plane);
    for (oi, g) in w.chunks_exact(9).take(plane).enumerate() {
        for (k, &v) in g.iter().enumerate() {
            wt[k * plane + oi] = v;
        }
    }
    // Every row of `C` has a non-zero entry (each of G's rows has one), so the first term of
    // each sum writes `U_e` and nothing needs zeroing first.
    u.clear();
    u.reserve_exact(E * plane);
    let wt = &wt[..];
    u.spare_capacity_mut()[..E * plane]
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(e, ue)| {
            vectorized(
                #[inline(always)]
                || {
                    let mut terms = coef[e]
                        .iter()
                        .enumerate()
                        .filter(|&(_, &cf)| cf != 0.0)
                        .map(|(k, &cf)| (cf, &wt[k * plane..][..plane]));
                    let (cf, row) = terms.next().expect("a non-zero coefficient in each row");
                    for (a, &g) in ue.iter_mut().zip(row) {
                        a.write(cf * g);
                    }
                    // SAFETY: every value of `ue` was written just above.
                    let ue = unsafe { initialised(ue) };
                    for (cf, row) in terms {
                        ue.iter_mut().zip(row).for_each(|(a, &g)| *a += cf * g);
                    }
                },
            )
        });
    // SAFETY: the capacity holds `E plane` values and the chunks above wrote all of them.
    unsafe { u.set_len(E * plane) };
}

/// `C = G ⊗ G` (`[36, 9]`, computed in f64): `U_e = sum_k C[e, k] g_k` for a kernel `g`
/// (`k = 3 ky + kx`), `e = 6 p + q` the element `(p, q)` of `G g G^T`.
fn coefficients() -> [[f32; 9]; E] {
    let gm: [[f64; 3]; 6] = [
        [0.25, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ];
    std::array::from_fn(|e| std::array::from_fn(|k| (gm[e / 6][k / 3] * gm[e % 6][k % 3]) as f32))
}

/// `dg = G^T dU G` for every `(o, i)`: `du` is `[36, c_out, c_in]`, the result `[c_out, c_in,
/// 3, 3]`. The adjoint of [`transform_kernel`]'s `U_e = sum_k C[e, k] g_k`: `dg_k = sum_e C[e,
/// k] dU_e`, summed along unit-stride rows of `du` (one task per tap `k`, the terms in `e`
/// order), then transposed.
fn kernel_grad(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let plane = c_out * c_in;
    assert!(
        du.len() >= E * plane,
        "the transformed gradient of {c_out} x {c_in} kernels"
    );
    let coef = coefficients();
    let mut dgt = vec![0.0f32; 9 * plane];
    dgt.par_chunks_mut(plane).enumerate().for_each(|(k, row)| {
        vectorized(
            #[inline(always)]
            || {
                for (e, c) in coef.iter().enumerate() {
                    let cf = c[k];
                    if cf != 0.0 {
                        let src = &du[e * plane..][..plane];
                        row.iter_mut().zip(src).for_each(|(a, &v)| *a += cf * v);
                    }
                }
            },
        )
    });
    let mut dw = unwritten(9 * plane);
    for (oi, dg) in dw.chunks_exact_mut(9).enumerate() {
        for (k, d) in dg.iter_mut().enumerate() {
            d.write(dgt[k * plane + oi]);
        }
    }
    // SAFETY: the chunks cover `dw`, each of their 9 values written above.
    unsafe { written(dw) }
}

/// `out_i = (A y)_i = sum_a A^T[a, i] y_a` on runs, `i = 0..6`: the adjoint of [`at_runs`]'s
/// rows (`A^T` is `4 x 6`), for the output gradient's transform `dM = A dY A^T`.
#[inline(always)]
fn a_runs<'a>(y: [&[f32]; 4], mut out: impl FnMut(usize) -> &'a mut [f32]) {
    let n = y[0].len();
    let [y0, y1, y2, y3] = y.map(|r| &r[..n]);
    let o = &mut out(0)[..n];
    o.copy_from_slice(y0);
    let (o1, o2) = (&mut out(1)[..n], &mut out(2)[..n]);
    for t in 0..n {
        let (e, od) = (y0[t] + y2[t], y1[t] + y3[t]);
        o1[t] = e + od;
        o2[t] = e - od;
    }
    let (o3, o4) = (&mut out(3)[..n], &mut out(4)[..n]);
    for t in 0..n {
        let (e, od) = (y0[t] + 4.0 * y2[t], 2.0 * y1[t] + 8.0 * y3[t]);
        o3[t] = e + od;
        o4[t] = e - od;
    }
    out(5)[..n].copy_from_slice(y3);
}

/// `V = B^T d B` for every 6x6 input tile of `x` (`[b, c, h, w]`, tiling `g`), stored `[36, c,
/// T]` at `vd` (tile `t = image th tw + ty tw + tx`): one task per input channel, which
/// gathers its tiles' values into runs over all tiles of the batch and then runs both passes
/// over those runs (unit stride, vectorised).
///
/// # Safety
/// `vd` points to `36 c T` writable values that nothing else reads or writes during the call.
unsafe fn transform_input(x: &[f32], g: Tiles, vd: Shared) {
    #[cfg(target_arch = "x86_64")]
    if avx2::used() {
        // SAFETY: the CPU has AVX2 and FMA ([`avx2::used`]); `vd` by the contract.
        return unsafe { transform_input_avx2(x, g, vd) };
    }
    // SAFETY: by the contract.
    unsafe { transform_input_runs(x, g, vd) }
}

/// [`transform_input`] by [`avx2::input_tiles`].
///
/// # Safety
/// The CPU has AVX2 and FMA; `vd` as for [`transform_input`].
#[cfg(target_arch = "x86_64")]
unsafe fn transform_input_avx2(x: &[f32], g: Tiles, vd: Shared) {
    let [th, tw] = grid(g);
    let t_all = g.b * th * tw;
    assert!(x.len() >= g.b * g.c * g.h * g.w, "the input of the tiling");
    let [hp, wp, n] = avx2::planes(g);
    let index = avx2::tile_index(g, [hp, wp]);
    (0..g.c).into_par_iter().for_each(|c| {
        profile::timed(Kernel::WinogradTransforms, 0, || {
            PADDED.with(|padded| {
                let (last, padded) = &mut *padded.borrow_mut();
                let padded = first(padded, n);
                avx2::pad_planes(x, g, c, padded, *last == Some(g));
                *last = Some(g);
                // SAFETY: AVX2 and FMA by the contract; `padded` holds the planes of `g`,
                // whose tiles `index` lists; runs `(e c_in + c) T .. + T` of `v` are this
                // channel's task's alone (the contract).
                unsafe {
                    avx2::input_tiles(padded, &index, wp, vd.ptr().add(c * t_all), g.c * t_all)
                }
            })
        })
    });
}

/// The output transform of [`forward`] by [`avx2::output_tiles`]: `y = A^T M A + bias (+
/// residual)` for `M` (`[36, c_out, T]`), one task per output channel, each through a plane
/// of whole 4x4 tiles and then copied row by row into `out` (`[b, c_out, ho, wo]`).
///
/// # Safety
/// The CPU has AVX2 and FMA; `m` holds `36 c_out T` values; `out` points to `b c_out ho wo`
/// writable values that nothing else reads or writes during the call.
#[cfg(target_arch = "x86_64")]
unsafe fn output_transform_avx2(
    m: &[f32],
    g: Tiles,
    c_out: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    out: Shared,
) {
    let [th, tw] = grid(g);
    let (t_all, ohw, wq) = (g.b * th * tw, g.ho * g.wo, 4 * tw);
    assert!(m.len() >= E * c_out * t_all, "the products of the tiling");
    let index = avx2::tile_index(g, [4 * th, wq]);
    (0..c_out).into_par_iter().for_each(|o| {
        profile::timed(Kernel::WinogradTransforms, 0, || {
            SCRATCH.with(|scratch| {
                let scratch = &mut *scratch.borrow_mut();
                let planes = first(scratch, g.b * 4 * th * wq);
                let add = bias.map_or(0.0, |b| b[o]);
                // SAFETY: AVX2 and FMA by the contract; element `e` of channel `o` is the run
                // at `(e c_out + o) T` (`T` values) of `m`, in bounds (asserted); `planes`
                // holds the `[4 th, 4 tw]` planes of the `b` images.
                unsafe {
                    avx2::output_tiles(
                        m.as_ptr().add(o * t_all),
                        c_out * t_all,
                        &index,
                        wq,
                        add,
                        planes,
                    )
                };
                for img in 0..g.b {
                    for yy in 0..g.ho {
                        let at = (img * c_out + o) * ohw + yy * g.wo;
                        let row = &planes[(img * 4 * th + yy) * wq..][..g.wo];
                        // SAFETY: output row `yy` of channel `o` of image `img` lies inside
                        // `out` (the contract); only this channel's task writes it.
                        unsafe { store_row(out, at, row, residual) };
                    }
                }
            })
        })
    });
}

/// [`transform_input`] on runs: gathers each channel's tile values into runs over all tiles
/// of the batch, then runs both passes over those runs.
///
/// # Safety
/// As for [`transform_input`].
unsafe fn transform_input_runs(x: &[f32], g: Tiles, vd: Shared) {
    let (c_in, hw) = (g.c, g.h * g.w);
    let [th, tw] = grid(g);
    let (pi, t_all) = (th * tw, g.b * th * tw);
    (0..c_in).into_par_iter().for_each(|c| {
        profile::timed(Kernel::WinogradTransforms, 0, || {
            // Not under `vectorized`: these loops run faster compiled for the baseline (4-wide
            // SSE) than for the dispatched AVX-512 (`speed --model cifar10 --batch 16 --phase
            // training --kernel-times on`, three alternated rounds: transforms 3.40-3.49 thread-s
            // per four steps against 3.86-3.90).
            SCRATCH.with(|scratch| {
                let scratch = &mut *scratch.borrow_mut();
                let scratch = first(scratch, 2 * E * t_all + 4 * tw + 2);
                let (p, rest) = scratch.split_at_mut(E * t_all);
                let (rr, row) = rest.split_at_mut(E * t_all);
                // p[(q 6 + k) T + t]: value (k, q) of tile t (row k, column q).
                for img in 0..g.b {
                    let plane = &x[(img * c_in + c) * hw..][..hw];
                    for ty in 0..th {
                        let t0 = img * pi + ty * tw;
                        for k in 0..6 {
                            let iy = (4 * ty + k).wrapping_sub(g.top);
                            if iy >= g.h {
                                for q in 0..6 {
                                    p[(q * 6 + k) * t_all + t0..][..tw].fill(0.0);
                                }
                                continue;
                            }
                            row.fill(0.0);
                            row[g.left..g.left + g.w].copy_from_slice(&plane[iy * g.w..][..g.w]);
                            for q in 0..6 {
                                let dst = &mut p[(q * 6 + k) * t_all + t0..][..tw];
                                for (d, quad) in dst.iter_mut().zip(row[q..].chunks(4)) {
                                    *d = quad[0];
                                }
                            }
                        }
                    }
                }
                // Along the rows: rr[(j 6 + k) T + t] = (d B)[k, j].
                for k in 0..6 {
                    let d = std::array::from_fn(|q| &p[(q * 6 + k) * t_all..][..t_all]);
                    let base = rr.as_mut_ptr();
                    // SAFETY: run `j 6 + k` of `rr` (`36 T` values); the six runs are
                    // distinct and `rr` is not read meanwhile.
                    bt_runs(d, |j| unsafe {
                        std::slice::from_raw_parts_mut(base.add((j * 6 + k) * t_all), t_all)
                    });
                }
                // Down the columns: V[i, j] = (B^T (d B))[i, j].
                for j in 0..6 {
                    let d = std::array::from_fn(|k| &rr[(j * 6 + k) * t_all..][..t_all]);
                    // SAFETY: run `(i 6 + j) c_in + c` of `v` (`36 c_in T` values) is
                    // written by this channel's task only; the six runs are distinct.
                    bt_runs(d, |i| unsafe {
                        std::slice::from_raw_parts_mut(
                            vd.ptr().add(((i * 6 + j) * c_in + c) * t_all),
                            t_all,
                        )
                    });
                }
            })
        })
    });
}

/// `out_j = (B^T d)_j` on runs: `d[q]` is the run of the tiles' values `q`, `out(j)` the run
/// written for row `j` of `B^T`.
#[inline(always)]
fn bt_runs<'a>(d: [&[f32]; 6], mut out: impl FnMut(usize) -> &'a mut [f32]) {
    let n = d[0].len();
    let [d0, d1, d2, d3, d4, d5] = d.map(|r| &r[..n]);
    let o = out(0);
    for t in 0..n {
        o[t] = 4.0 * d0[t] - 5.0 * d2[t] + d4[t];
    }
    let (o1, o2) = (out(1), out(2));
    for t in 0..n {
        let (a, b) = (d4[t] - 4.0 * d2[t], d3[t] - 4.0 * d1[t]);
        o1[t] = a + b;
        o2[t] = a - b;
    }
    let (o3, o4) = (out(3), out(4));
    for t in 0..n {
        let (a, b) = (d4[t] - d2[t], 2.0 * (d3[t] - d1[t]));
        o3[t] = a + b;
        o4[t] = a - b;
    }
    let o = out(5);
    for t in 0..n {
        o[t] = 4.0 * d1[t] - 5.0 * d3[t] + d5[t];
    }
}

/// `y_a = (A^T m)_a` on runs, `a = 0..4`, plus `add`.
#[inline(always)]
fn at_runs<'a>(m: [&[f32]; 6], add: f32, mut out: impl FnMut(usize) -> &'a mut [f32]) {
    let n = m[0].len();
    let [m0, m1, m2, m3, m4, m5] = m.map(|r| &r[..n]);
    let (y0, y2) = (out(0), out(2));
    for t in 0..n {
        let (s12, s34) = (m1[t] + m2[t], m3[t] + m4[t]);
        y0[t] = m0[t] + s12 + s34 + add;
        y2[t] = s12 + 4.0 * s34 + add;
    }
    let (y1, y3) = (out(1), out(3));
    for t in 0..n {
        let (d12, d34) = (m1[t] - m2[t], m3[t] - m4[t]);
        y1[t] = d12 + 2.0 * d34 + add;
        y3[t] = d12 + 8.0 * d34 + m5[t] + add;
    }
}

/// `y = conv(x, w) + bias (+ residual)` by F(4x4, 3x3), the same contract as the module's
/// [`forward`](super::forward), which calls it.
///
/// The kernel is transformed once (or found kept), then the batch runs in groups of
/// [`group_images`] images (the last one smaller when that does not divide the batch), each
/// through [`forward_group`]: small enough that a group's transformed tiles and products stay
/// in the last-level cache, wide enough for the products.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: Tiles,
    c_out: usize,
    y: &mut [MaybeUninit<f32>],
    owner: Option<&FlexTensor>,
) {
    let (c_in, per) = (g.c, group_images(g, c_out));
    let (x_image, y_image) = (g.c * g.h * g.w, c_out * g.ho * g.wo);
    with_taken(&BUFFERS, |[v, m, wt]| {
        let mut compute = || {
            let mut u = Vec::new();
            transform_kernel(w, c_out, c_in, wt, &mut u);
            u
        };
        let u = match owner {
            Some(t) => cache::transformed(w, t, Transform::Large, [c_out, c_in], compute),
            None => Arc::new(compute()),
        };
        let mut i0 = 0;
        while i0 < g.b {
            let n = per.min(g.b - i0);
            let (xs, ys) = (
                i0 * x_image..(i0 + n) * x_image,
                i0 * y_image..(i0 + n) * y_image,
            );
            let residual = residual.map(|r| &r[ys.clone()]);
            let group = Tiles { b: n, ..g };
            forward_group(&x[xs], &u, bias, residual, group, c_out, &mut y[ys], [v, m]);
            i0 += n;
        }
    });
}

/// Images per group of [`forward`]: about [`GROUP_BYTES`] of transformed tiles and products
/// (`36 (c + c_out)` values per tile) but at least [`GROUP_TILES`] tiles, then evened out
/// over the groups that makes (a function of the shapes only).
///
/// Measured (the ignored test `batch_in_groups_at_unet_shapes`, 2-core AVX2 host, groupings
/// alternated, two runs): the MNIST U-Net's 28x28 level at batch 64 (32 channels, 27.6 MiB
/// over the whole batch) 7.56 / 9.07 ms whole, 3.98 / 4.84 in 8 groups of 8 (3.4 MiB); its
/// 14x14 level (64 channels) 4.76 / 6.14 whole, 4.26 / 4.89 in groups of 16; the CIFAR-10
/// U-Net's 32x32 level at batch 16 (128 channels) 13.83 / 19.49 whole, 12.02 / 17.09 in
/// groups of 2; its 16x16 level (256 channels) 10.94 / 13.80 whole, 11.08 / 13.17 in two
/// groups, 11.28 / 15.26 in eight groups of 2 (its products too narrow). A run earlier in
/// the day, on a quieter host, had the whole batch as fast as the groups: the gain is the
/// working set that still fits when the cache is shared with other work.
pub(super) fn group_images(g: Tiles, c_out: usize) -> usize {
    #[cfg(test)]
    if let Some(per) = GROUP_IMAGES.get() {
        return per.clamp(1, g.b);
    }
    let [th, tw] = grid(g);
    let tiles = th * tw;
    let bytes = E * (g.c + c_out) * tiles * std::mem::size_of::<f32>();
    let per = (GROUP_BYTES / bytes.max(1))
        .max(GROUP_TILES.div_ceil(tiles))
        .clamp(1, g.b);
    g.b.div_ceil(g.b.div_ceil(per))
}

#[cfg(test)]
thread_local! {
    /// The test thread's group size, overriding [`group_images`]' (read on the thread that
    /// calls [`forward`]).
    pub(super) static GROUP_IMAGES: std::cell::Cell<Option<usize>> =
        const { std::cell::Cell::new(None) };
}

/// The working set [`group_images`] aims at: 4 MiB.
const GROUP_BYTES: usize = 4 << 20;

/// The fewest tiles in a group of [`group_images`] (the products' width).
const GROUP_TILES: usize = 128;

/// [`forward`] for one group of images `g.b` (`x`, `y` and `residual` theirs), with the
/// transformed kernel `u` and the calling thread's buffers `[v, m]`.
///
/// Three passes over the group, each split over fixed work items: the input transform
/// (one task per input channel) into `V` (`[36, c_in, T]`), the 36 products `M_e = U_e V_e`
/// (one task each, each a full-width gemm over the group's `T` tiles) and the output
/// transform (one task per output channel).
#[allow(clippy::too_many_arguments)]
fn forward_group(
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: Tiles,
    c_out: usize,
    y: &mut [MaybeUninit<f32>],
    [v, m]: [&mut Vec<f32>; 2],
) {
    let (c_in, ohw) = (g.c, g.ho * g.wo);
    let [th, tw] = grid(g);
    let (pi, t_all) = (th * tw, g.b * th * tw);
    let v = first(v, E * c_in * t_all);
    let m = first(m, E * c_out * t_all);
    let vd = Shared(v.as_mut_ptr());
    // SAFETY: `v` holds `36 c_in T` values (just above), this call's alone.
    unsafe { transform_input(x, g, vd) };
    let (v, md) = (&v[..], Shared(m.as_mut_ptr()));
    (0..E).into_par_iter().for_each(|e| {
        profile::timed(
            Kernel::WinogradProducts,
            flop(&[c_out, c_in, t_all]),
            // SAFETY: `m`'s `[c_out, T]` block at `e c_out T` (written by this task only),
            // `u`'s `[c_out, c_in]` block at `e c_out c_in` and `v`'s `[c_in, T]` block at
            // `e c_in T` are in bounds (the sizes above), all row-major.
            || unsafe {
                product(
                    md.ptr().add(e * c_out * t_all),
                    u.as_ptr().add(e * c_out * c_in),
                    v.as_ptr().add(e * c_in * t_all),
                    [c_out, c_in, t_all],
                    false,
                )
            },
        )
    });
    let (m, out) = (&m[..], Shared(y.as_mut_ptr().cast()));
    #[cfg(target_arch = "x86_64")]
    if avx2::used() {
        // SAFETY: AVX2 and FMA ([`avx2::used`]); `m` holds `36 c_out T` values (above);
        // `out` as for this function (asserted by the caller).
        unsafe { output_transform_avx2(m, g, c_out, bias, residual, out) };
        return;
    }
    (0..c_out).into_par_iter().for_each(|o| {
        profile::timed(Kernel::WinogradTransforms, 0, || {
            // Not under `vectorized`: these loops run faster compiled for the baseline (4-wide
            // SSE) than for the dispatched AVX-512 (`speed --model cifar10 --batch 16 --phase
            // training --kernel-times on`, three alternated rounds: transforms 3.40-3.49 thread-s
            // per four steps against 3.86-3.90).
            SCRATCH.with(|scratch| {
                let scratch = &mut *scratch.borrow_mut();
                let scratch = first(scratch, 40 * t_all + 4 * tw);
                let (s, rest) = scratch.split_at_mut(24 * t_all);
                let (yt, line) = rest.split_at_mut(16 * t_all);
                let add = bias.map_or(0.0, |b| b[o]);
                // Down the columns: s[(a 6 + j) T + t] = (A^T M)[a, j].
                for j in 0..6 {
                    let mm =
                        std::array::from_fn(|i| &m[((i * 6 + j) * c_out + o) * t_all..][..t_all]);
                    let base = s.as_mut_ptr();
                    // SAFETY: run `a 6 + j` of `s` (`24 T` values); the four runs are
                    // distinct.
                    at_runs(mm, 0.0, |a| unsafe {
                        std::slice::from_raw_parts_mut(base.add((a * 6 + j) * t_all), t_all)
                    });
                }
                // Along the rows: yt[(a 4 + b) T + t] = Y[a, b] + bias.
                for a in 0..4 {
                    let sa = std::array::from_fn(|j| &s[(a * 6 + j) * t_all..][..t_all]);
                    let base = yt.as_mut_ptr();
                    // SAFETY: run `a 4 + b` of `yt` (`16 T` values); the four runs are
                    // distinct.
                    at_runs(sa, add, |b| unsafe {
                        std::slice::from_raw_parts_mut(base.add((a * 4 + b) * t_all), t_all)
                    });
                }
                for img in 0..g.b {
                    for ty in 0..th {
                        let t0 = img * pi + ty * tw;
                        for a in 0..4 {
                            let yy = 4 * ty + a;
                            if yy >= g.ho {
                                break;
                            }
                            for b in 0..4 {
                                let run = &yt[(a * 4 + b) * t_all + t0..][..tw];
                                for (quad, &val) in line[b..].chunks_mut(4).zip(run) {
                                    quad[0] = val;
                                }
                            }
                            let at = (img * c_out + o) * ohw + yy * g.wo;
                            // SAFETY: output row `yy` of channel `o` of image `img`
                            // lies inside `y` (asserted by the caller); only this
                            // channel's task writes it.
                            unsafe { store_row(out, at, &line[..g.wo], residual) };
                        }
                    }
                }
            })
        })
    });
}

/// The weight gradient (`[c_out, c, 3, 3]`) of the convolution [`forward`] computes, for input
/// `x` (tiling `g`) and output gradient `dy` (`[b, c_out, ho, wo]`), by the same F(4x4, 3x3)
/// factorisation: `dU_e = dM_e V_e^T` over every 4x4 output tile of the batch (36 products, on
/// a quarter of F(2x2, 3x3)'s tiles: 36 / 64 of its multiplications), with `dM = A dY A^T`
/// and `V` the forward pass's transformed input tiles, then `dg = G^T dU G`. The products run
/// as the module's `weight_grad` runs F(2x2, 3x3)'s (`direct`: on the AVX-512 kernel).
///
/// Over the whole batch, not in [`forward`]'s groups: its products sum over the tiles, which
/// groups shorten. Measured (each group's `dU` summed, alternated, two runs, 2-core AVX2
/// host): 64 x 32 x 28 x 28 7.74 / 8.48 ms whole against 9.17 / 7.01 in [`group_images`]'
/// eight groups; 16 x 128 x 32 x 32 15.95 / 17.39 against 15.28 / 15.08; 16 x 256 x 16 x 16
/// 17.34 / 15.60 against 18.23 / 17.14.
pub(super) fn weight_grad(x: &[f32], dy: &[f32], g: Tiles, c_out: usize, direct: bool) -> Vec<f32> {
    let [th, tw] = grid(g);
    let t_all = g.b * th * tw;
    assert!(x.len() >= g.b * g.c * g.h * g.w && dy.len() >= g.b * c_out * g.ho * g.wo);
    with_taken(&WGRAD, |[v, dm]| {
        // SAFETY: `v` holds `36 c T` values, this thread's (taken out of its cell).
        unsafe { transform_input(x, g, Shared(first(v, E * g.c * t_all).as_mut_ptr())) };
        transform_output_grad(dy, g, c_out, first(dm, E * c_out * t_all));
        let du = super::products_grad(v, dm, [E, g.c, c_out, t_all], direct);
        kernel_grad(&du, c_out, g.c)
    })
}

/// `dM = A dY A^T` for every 4x4 tile of the output gradient `dy` (`[b, c_out, ho, wo]`, zero
/// past the output's edge), stored `[36, c_out, T]` in `m`: one task per output channel,
/// gathering its tiles' values into runs over all tiles of the batch, then both passes of
/// [`a_runs`] over those runs.
fn transform_output_grad(dy: &[f32], g: Tiles, c_out: usize, m: &mut [f32]) {
    let [th, tw] = grid(g);
    let (pi, t_all, ohw) = (th * tw, g.b * th * tw, g.ho * g.wo);
    assert!(m.len() >= E * c_out * t_all);
    let out = Shared(m.as_mut_ptr());
    (0..c_out).into_par_iter().for_each(|o| {
        profile::timed(Kernel::WinogradTransforms, 0, || {
            // Compiled for the baseline like the forward pass's transforms (see there); on
            // AVX-512 this one measured the same (transforms 3.28-3.70 thread-s per four
            // CIFAR-10 training steps against 3.24-3.63).
            SCRATCH.with(|scratch| {
                let scratch = &mut *scratch.borrow_mut();
                let scratch = first(scratch, 40 * t_all);
                let (q, r) = scratch.split_at_mut(16 * t_all);
                // q[(a 4 + b) T + t] = dY[a, b] of tile t.
                for img in 0..g.b {
                    let plane = &dy[(img * c_out + o) * ohw..][..ohw];
                    for ty in 0..th {
                        let t0 = img * pi + ty * tw;
                        for a in 0..4 {
                            let yy = 4 * ty + a;
                            for b in 0..4 {
                                let dst = &mut q[(a * 4 + b) * t_all + t0..][..tw];
                                if yy >= g.ho {
                                    dst.fill(0.0);
                                    continue;
                                }
                                let row = &plane[yy * g.wo..][..g.wo];
                                for (tx, d) in dst.iter_mut().enumerate() {
                                    let xx = 4 * tx + b;
                                    *d = if xx < g.wo { row[xx] } else { 0.0 };
                                }
                            }
                        }
                    }
                }
                // Along the rows: r[(a 6 + j) T + t] = (dY A^T)[a, j].
                for a in 0..4 {
                    let y = std::array::from_fn(|b| &q[(a * 4 + b) * t_all..][..t_all]);
                    let base = r.as_mut_ptr();
                    // SAFETY: run `a 6 + j` of `r` (`24 T` values); the six runs are
                    // distinct and `r` is not read meanwhile.
                    a_runs(y, |j| unsafe {
                        std::slice::from_raw_parts_mut(base.add((a * 6 + j) * t_all), t_all)
                    });
                }
                // Down the columns: dM[i, j] = (A (dY A^T))[i, j].
                for j in 0..6 {
                    let y = std::array::from_fn(|a| &r[(a * 6 + j) * t_all..][..t_all]);
                    // SAFETY: run `(i 6 + j) c_out + o` of `m` (`36 c_out T` values,
                    // asserted) is written by this channel's task only; the six runs
                    // are distinct.
                    a_runs(y, |i| unsafe {
                        std::slice::from_raw_parts_mut(
                            out.ptr().add(((i * 6 + j) * c_out + o) * t_all),
                            t_all,
                        )
                    });
                }
            })
        })
    });
}

thread_local! {
    /// The calling thread's transformed tiles `V` and products `M` (tens of MiB for the
    /// CIFAR-10 U-Net), reused from call to call: no fresh pages to fault in.
    static BUFFERS: std::cell::RefCell<[Vec<f32>; 3]> = Default::default();
    /// The calling thread's `V` and `dM` of [`weight_grad`], reused from call to call.
    static WGRAD: std::cell::RefCell<[Vec<f32>; 2]> = Default::default();
    /// Each thread's scratch space for one channel's transform.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = Default::default();
    /// [`transform_input_avx2`]'s padded planes, and the tiling whose padding they hold.
    static PADDED: std::cell::RefCell<(Option<Tiles>, Vec<f32>)> = Default::default();
}
