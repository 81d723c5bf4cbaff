//! 3x3 stride-1 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016):
//! 16 multiplications per 2x2 output tile and input channel instead of 36.
//!
//! Cut the (padded) input into 4x4 tiles `d` overlapping by two, one per 2x2 output tile.
//! With the constant matrices `B^T` (4x4), `G` (4x3) and `A^T` (2x4),
//!
//! `Y_t = A^T [ sum_i (G g_(o,i) G^T) ⊙ (B^T d_(t,i) B) ] A`
//!
//! so that after transforming the kernel (`U = G g G^T`, once per call) and every input tile
//! (`V = B^T d B`, additions only), the sum over input channels is 16 independent matrix
//! products, one per tile element `e`: `M_e [c_out, T] = U_e [c_out, c_in] V_e [c_in, T]`
//! over all `T` tiles of the batch, run by gemm. The output transform (`A^T M A`, additions
//! only) adds the bias (and a residual) as it stores.
//!
//! The input gradient is the same convolution of the output gradient with the flipped,
//! transposed kernel (padding `2 - pad`). The weight gradient follows from the same
//! factorisation: `dU_e = dM_e V_e^T` with `dM = A dY_t A^T`, summed over tiles by one gemm per
//! `e`, then `dg = G^T dU G`.
//!
//! Forward passes and weight gradients over batches with many tiles run F(4x4, 3x3) instead
//! ([`f43`]: 36 multiplications per 4x4 tile, 2.25 per output value against 4 here), and the
//! transformed kernel `U` of a layer whose weights stay the same from call to call (sampling)
//! is kept ([`cache`]) rather than recomputed at every call.
//!
//! Every product is one gemm call on one thread over a column range fixed by the shapes, so
//! the results do not depend on the thread count. Checked against the definition in the
//! tests (and, through the layer, against burn's convolution).

use std::mem::MaybeUninit;
use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use rayon::prelude::*;

use super::avx512;
use super::product::product;
use crate::kernels::flex_tensor::{Shared, unwritten, written};
use crate::kernels::profile::{self, Kernel, flop};
use crate::kernels::strided::{mm, rows, transposed};
use crate::kernels::vectorize::vectorized;

#[cfg(target_arch = "x86_64")]
mod avx2;
mod f43;
mod transforms;

use super::cache::{self, Transform};
use transforms::{
    kernel_grad, tile_rows, transform_input, transform_kernel, transform_output_grad,
};

/// Tile elements: a 4x4 transformed tile.
const E: usize = 16;

/// The sizes of one call: `b` images `[c, h, w]` padded by `pad` (`[top, left, bottom,
/// right]`, each at most 2), output `[b, c_out, ho, wo]` in `th x tw` tiles of 2x2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tiles {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    top: usize,
    left: usize,
    /// Output size.
    pub ho: usize,
    /// Output size.
    pub wo: usize,
    th: usize,
    tw: usize,
}

impl Tiles {
    /// The tiling of `b` images `[c, h, w]` under padding `pad` (each side at most 2); `None`
    /// when the padded image is smaller than the kernel or a size is zero.
    pub(crate) fn new(b: usize, c: usize, h: usize, w: usize, pad: [usize; 4]) -> Option<Self> {
        let [top, left, bottom, right] = pad;
        if pad.iter().any(|&p| p > 2) || b == 0 || c == 0 || h == 0 || w == 0 {
            return None;
        }
        let (ho, wo) = (
            (h + top + bottom).checked_sub(2)?,
            (w + left + right).checked_sub(2)?,
        );
        if ho == 0 || wo == 0 {
            return None;
        }
        Some(Self {
            b,
            c,
            h,
            w,
            top,
            left,
            ho,
            wo,
            th: ho.div_ceil(2),
            tw: wo.div_ceil(2),
        })
    }

    /// Tiles of one image.
    fn per_image(&self) -> usize {
        self.th * self.tw
    }

    /// Tiles of the batch: the products' column count.
    pub(crate) fn t(&self) -> usize {
        self.b * self.per_image()
    }
}

/// `y = conv(x, w) + bias (+ residual)` for a 3x3 kernel `w` (`[c_out, c, 3, 3]`) and the
/// tiling `g` of `x` (`[b, c, h, w]`); `y` is `[b, c_out, ho, wo]`, every value of it
/// written (it may come unwritten: see `flex_tensor::unwritten`).
///
/// The batch's tile rows are cut into blocks of about `16384 / (c + c_out)` tiles (a
/// function of the shapes only), whose transformed tiles and products (`16 (c + c_out)` values
/// per tile, about 1 MiB) stay in the core's cache: one task per block transforms its
/// tiles, runs the 16 products and stores its output rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: Tiles,
    c_out: usize,
    y: &mut [MaybeUninit<f32>],
    owner: Option<&FlexTensor>,
) {
    assert!(
        x.len() >= g.b * g.c * g.h * g.w
            && w.len() >= c_out * g.c * 9
            && y.len() == g.b * c_out * g.ho * g.wo
            && residual.is_none_or(|r| r.len() == y.len())
            && bias.is_none_or(|b| b.len() >= c_out)
    );
    // Weights seen unchanged before (sampling) have their transforms kept; others (training,
    // whose weights change at every step) are transformed afresh.
    let kept = owner.is_some() && cache::is_kept(w, [c_out, g.c]);
    let large = large_tiles(g, kept);
    forward_by(x, w, bias, residual, g, c_out, y, owner, large)
}

/// [`forward`] by F(4x4, 3x3) when `large`, else F(2x2, 3x3).
#[allow(clippy::too_many_arguments)]
fn forward_by(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: Tiles,
    c_out: usize,
    y: &mut [MaybeUninit<f32>],
    owner: Option<&FlexTensor>,
    large: bool,
) {
    if large {
        return f43::forward(x, w, bias, residual, g, c_out, y, owner);
    }
    forward_small(x, w, bias, residual, g, c_out, y, owner)
}

/// [`forward`] by F(2x2, 3x3).
#[allow(clippy::too_many_arguments)]
fn forward_small(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: Tiles,
    c_out: usize,
    y: &mut [MaybeUninit<f32>],
    owner: Option<&FlexTensor>,
) {
    let (c_in, hw, ohw, tw) = (g.c, g.h * g.w, g.ho * g.wo, g.tw);
    let compute = || transform_kernel(w, c_out, c_in);
    let u = match owner {
        Some(t) => cache::transformed(w, t, Transform::Small, [c_out, c_in], compute),
        None => Arc::new(compute()),
    };
    let rows_total = g.b * g.th;
    let few = rows_total * tw <= FEW_TILES;
    let per_block = if few {
        rows_total
    } else {
        block_rows(g, c_out)
    };
    let blocks = rows_total.div_ceil(per_block);
    let out = Shared(y.as_mut_ptr().cast());
    (0..blocks).into_par_iter().for_each(|blk| {
        let (r0, r1) = (blk * per_block, ((blk + 1) * per_block).min(rows_total));
        let nb = (r1 - r0) * tw;
        with_scratch(|[v, m, rows]| {
            profile::timed(Kernel::WinogradTransforms, 0, || {
                vectorized(
                    #[inline(always)]
                    || {
                        let vp = first(v, E * c_in * nb).as_mut_ptr();
                        for c in 0..c_in {
                            // The block's rows, image by image.
                            let mut r = r0;
                            while r < r1 {
                                let (img, ty) = (r / g.th, r % g.th);
                                let end = (r1 - img * g.th).min(g.th);
                                let plane = &x[(img * c_in + c) * hw..][..hw];
                                // SAFETY: `v` is `[16, c_in, nb]`: entry `(e, c, (r - r0) tw + ...)`
                                // for the rows `ty..end` lies inside it; `v` is this task's.
                                unsafe {
                                    tile_rows(
                                        plane,
                                        g,
                                        [ty, end],
                                        rows,
                                        vp,
                                        c * nb + (r - r0) * tw,
                                        c_in * nb,
                                    )
                                };
                                r += end - ty;
                            }
                        }
                    },
                )
            });
            let m = first(m, E * c_out * nb);
            profile::timed(
                Kernel::WinogradProducts,
                flop(&[E, c_out, c_in, nb]),
                || {
                    let (md, v) = (Shared(m.as_mut_ptr()), &v[..]);
                    let one = |e: usize| {
                        // SAFETY: `m`'s `[c_out, nb]` block at `e c_out nb`, `u`'s `[c_out, c_in]`
                        // block at `e c_out c_in` and `v`'s `[c_in, nb]` block at `e c_in nb` are in
                        // bounds (the sizes above), all row-major; `m` aliases nothing and each
                        // element's block is written by its own call only.
                        unsafe {
                            product(
                                md.ptr().add(e * c_out * nb),
                                u.as_ptr().add(e * c_out * c_in),
                                v.as_ptr().add(e * c_in * nb),
                                [c_out, c_in, nb],
                                false,
                            )
                        };
                    };
                    if few {
                        // One block for the whole call: its products share the threads.
                        (0..E).into_par_iter().for_each(one);
                    } else {
                        (0..E).for_each(one);
                    }
                },
            );
            profile::timed(Kernel::WinogradTransforms, 0, || {
                vectorized(
                    #[inline(always)]
                    || {
                        // Both passes run over all `nb` tiles of the block at once (runs of
                        // `tw`, 2-16 values, vectorise poorly); only the stores go row by row.
                        let rows = first(rows, 10 * nb + 2 * tw);
                        let (s, rest) = rows.split_at_mut(8 * nb);
                        let (yeo, pair_buf) = rest.split_at_mut(2 * nb);
                        let (ye, yo) = yeo.split_at_mut(nb);
                        for o in 0..c_out {
                            let b = bias.map_or(0.0, |b| b[o]);
                            // Down the columns: s[a, j] = (A^T M)[a, j], every tile.
                            for j in 0..4 {
                                let mm = |i: usize| &m[((i * 4 + j) * c_out + o) * nb..][..nb];
                                let (m0, m1, m2, m3) = (mm(0), mm(1), mm(2), mm(3));
                                let (sa, sb) = s.split_at_mut(4 * nb);
                                let (s0, s1) = (&mut sa[j * nb..][..nb], &mut sb[j * nb..][..nb]);
                                for t in 0..nb {
                                    s0[t] = m0[t] + m1[t] + m2[t];
                                    s1[t] = m1[t] - m2[t] - m3[t];
                                }
                            }
                            for a in 0..2 {
                                // Along the rows: Y[a, 0] and Y[a, 1] of every tile.
                                let sa = &s[a * 4 * nb..][..4 * nb];
                                let (q0, q1, q2, q3) = (
                                    &sa[..nb],
                                    &sa[nb..2 * nb],
                                    &sa[2 * nb..3 * nb],
                                    &sa[3 * nb..],
                                );
                                for t in 0..nb {
                                    ye[t] = q0[t] + q1[t] + q2[t] + b;
                                    yo[t] = q1[t] - q2[t] - q3[t] + b;
                                }
                                for r in r0..r1 {
                                    let (img, ty) = (r / g.th, r % g.th);
                                    let yy = 2 * ty + a;
                                    if yy >= g.ho {
                                        continue;
                                    }
                                    let run = (r - r0) * tw..(r - r0 + 1) * tw;
                                    let (e, od) = (&ye[run.clone()], &yo[run]);
                                    for (pair, (&e, &od)) in
                                        pair_buf.chunks_exact_mut(2).zip(e.iter().zip(od))
                                    {
                                        pair[0] = e;
                                        pair[1] = od;
                                    }
                                    let at = (img * c_out + o) * ohw + yy * g.wo;
                                    // SAFETY: output row `yy` of channel `o` of image `img` lies
                                    // inside `y` (asserted size) and only the block holding
                                    // tile row `ty` of `img` writes it.
                                    unsafe { store_row(out, at, &pair_buf[..g.wo], residual) };
                                }
                            }
                        }
                    },
                )
            });
        });
    });
}

/// Writes `row` to the output values `at..at + row.len()` that `out` points to, plus the
/// residual's values there when there is one: the last step of both tilings' output
/// transforms.
///
/// # Safety
/// Those values lie inside the output (and inside `residual`, of the output's size), and no
/// other thread reads or writes them during the call.
unsafe fn store_row(out: Shared, at: usize, row: &[f32], residual: Option<&[f32]>) {
    // SAFETY: in bounds and not shared, by the caller's contract; the values may be unwritten
    // before the copy (the output is allocated without a fill), written after it.
    let dst = unsafe {
        let dst = out.ptr().add(at);
        std::ptr::copy_nonoverlapping(row.as_ptr(), dst, row.len());
        std::slice::from_raw_parts_mut(dst, row.len())
    };
    if let Some(res) = residual {
        let r = &res[at..][..row.len()];
        dst.iter_mut().zip(r).for_each(|(d, r)| *d += r);
    }
}

/// Whether a forward pass on tiling `g` runs F(4x4, 3x3) rather than F(2x2, 3x3): when the
/// batch has at least [`LARGE_TILES`] 4x4 tiles, or [`LARGE_TILES_FRESH`] when the kernel is
/// transformed afresh at every call (`!reuse`: the input gradient's flipped kernel, which has
/// no tensor to keep).
/// Measured (the ignored test `tilings_at_unet_shapes`, 2-core AVX-512, time of F(4x4, 3x3)
/// over F(2x2, 3x3)'s with the transformed kernels kept / transformed afresh): 16 x 256 x 16 x
/// 16 (256 tiles) 0.78 / 0.91, 16 x 128 x 32 x 32 0.79 / 0.84, 16 x 256 x 8 x 8 (64 tiles)
/// 0.91 / 1.42, 1 x 128 x 32 x 32 (64 tiles) 0.88 / 1.31; at 16 tiles (16 x 256 x 4 x 4,
/// 1 x 256 x 16 x 16) 1.14-1.20 / 2.1-2.6, its products too narrow for gemm.
fn large_tiles(g: Tiles, reuse: bool) -> bool {
    let [th, tw] = f43::grid(g);
    let min = if reuse {
        LARGE_TILES
    } else {
        LARGE_TILES_FRESH
    };
    g.b * th * tw >= min
}

/// The fewest 4x4 tiles for F(4x4, 3x3) when the transformed kernel is kept from call to call.
const LARGE_TILES: usize = 64;

/// The fewest 4x4 tiles for F(4x4, 3x3) when the kernel is transformed at every call.
const LARGE_TILES_FRESH: usize = 256;

/// Tile rows per block of [`forward`]: about `16384 / (c + c_out)` tiles (at least 16), so
/// that a block's transformed tiles and products (`16 (c + c_out)` values per tile, about 1
/// MiB) stay in one core's cache. A function of the shapes only.
fn block_rows(g: Tiles, c_out: usize) -> usize {
    ((16384 / (g.c + c_out)).max(16) / g.tw).max(1)
}

thread_local! {
    /// Each thread's block buffers, reused from call to call.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = Default::default();
}

/// Runs `f` on this thread's scratch buffers (taken out by [`with_taken`], so a call that
/// reaches this again on the same thread gets buffers of its own).
fn with_scratch<R>(f: impl FnOnce(&mut [Vec<f32>; 3]) -> R) -> R {
    with_taken(&SCRATCH, f)
}

/// Runs `f` on this thread's buffers in `key`, taken out of their cell while `f` runs and put
/// back after, rather than borrowed: a thread that waits inside `f` for parallel work may run
/// another call's task meanwhile (rayon's work stealing), which then starts from empty
/// buffers instead of finding the cell borrowed.
fn with_taken<T: Default, R>(
    key: &'static std::thread::LocalKey<std::cell::RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut buffers = key.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let result = f(&mut buffers);
    key.with(|b| *b.borrow_mut() = buffers);
    result
}

/// The first `n` values of a reused buffer whose every entry the caller writes before it
/// reads it: `v` grows (zero-filled) where shorter but never shrinks, so that a call at a
/// smaller size does not make the next larger one `memset` the regrown part (with the layers'
/// sizes going up and down, tens of MiB per CIFAR-10 training step).
fn first(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// The most 2x2 tiles for which a call of F(2x2, 3x3) runs as one block whose 16 products
/// share the threads, rather than blocks of about `16384 / (c + c_out)` tiles, one per
/// thread (at 256 channels, 32 tiles: the batch-1 CIFAR-10 U-Net's 16x16 level had two
/// blocks, its 8x8 and 4x4 levels one, so one thread idle). Measured (`examples/speed --model
/// cifar10 --batch 1 --iters 15 --phase sampling`, fastest step, alternated): 82.6-84.1 ms
/// with blocks, 68.2-71.6 at 16 tiles, 62.0-66.1 at 64, 64.7-64.8 at 256; batch 16 unchanged
/// within the host's noise (training 2346-2470 ms against 2377-2439).
const FEW_TILES: usize = 64;

/// The input gradient `dx` (`[b, c_in, h, w]`) of the convolution `forward` computes, for
/// the output gradient `dy` (`[b, c_out, ho, wo]`), padding `pad` and kernel `w`
/// (`[c_out, c_in, 3, 3]`): the convolution of `dy`, padded by `2 - pad`, with the flipped,
/// transposed kernel.
pub(crate) fn input_grad(
    dy: &[f32],
    w: &[f32],
    dims: [usize; 4],
    c_out: usize,
    pad: [usize; 4],
    dx: &mut [MaybeUninit<f32>],
) {
    input_grad_by(dy, w, dims, c_out, pad, dx, None);
}

/// [`input_grad`], by F(4x4, 3x3) or F(2x2, 3x3) as `large` says (`None`: as
/// [`large_tiles`] chooses).
#[allow(clippy::too_many_arguments)]
fn input_grad_by(
    dy: &[f32],
    w: &[f32],
    [b, c_in, h, wd]: [usize; 4],
    c_out: usize,
    pad: [usize; 4],
    dx: &mut [MaybeUninit<f32>],
    large: Option<bool>,
) {
    let g = Tiles::new(b, c_in, h, wd, pad).expect("a tiling checked by the caller");
    let back = pad.map(|p| 2 - p);
    let gd = Tiles::new(b, c_out, g.ho, g.wo, back).expect("the flipped tiling fits");
    debug_assert_eq!((gd.ho, gd.wo), (h, wd));
    // Written in order (the reads stride instead): every value once, no zero fill first.
    let mut wf = unwritten(c_in * c_out * 9);
    for (io, dst) in wf.chunks_exact_mut(9).enumerate() {
        let (i, o) = (io / c_out, io % c_out);
        let src = &w[(o * c_in + i) * 9..][..9];
        for (t, d) in dst.iter_mut().enumerate() {
            d.write(src[8 - t]);
        }
    }
    // SAFETY: the chunks cover `wf`, each of their 9 values written above.
    let wf = unsafe { written(wf) };
    let large = large.unwrap_or_else(|| large_tiles(gd, false));
    forward_by(dy, &wf, None, None, gd, c_in, dx, None, large);
}

/// The weight gradient (`[c_out, c, 3, 3]`) of the convolution `forward` computes, for input
/// `x` (tiling `g`) and output gradient `dy` (`[b, c_out, ho, wo]`).
///
/// Batches with many 4x4 tiles (the input gradient's rule, [`large_tiles`] without a kept
/// kernel) run F(4x4, 3x3) ([`f43::weight_grad`]: 36 products on a quarter of the tiles, 36 /
/// 64 of the multiplications, and transformed tensors 2.25 instead of 4 times the input's
/// size). Measured (`examples/speed --model cifar10 --batch 16 --phase training --iters 3
/// --kernel-times on`, alternated, three rounds): the weight-gradient products 1.15-1.28
/// thread-s against 1.79-1.98, the transforms 2.61-2.73 against 2.67-2.95, over three steps
/// (the 32x32 and 16x16 layers); within `2e-5` of the largest value of F(2x2, 3x3)'s (tested).
///
/// The products run on [`avx512::correlate`] on AVX-512 CPUs without AMX, on gemm on the
/// others. Measured with `examples/speed --model cifar10 --batch 16 --phase training
/// --kernel-times on`: on the AVX-512 host of earlier sessions (sgemm 101 GFLOP/s per
/// thread) correlate ran these products at 92 % of sgemm and gemm at 55 %; on a Xeon with AMX
/// (sgemm 178-197 per thread, two FMAs per cycle) correlate stayed near the same 78 GFLOP/s
/// (43-44 %: its rows of `V_e^T` streamed from L2 for every tile of output channels) while
/// gemm ran them at 133-138 (68-76 %). Since correlate reads each block of positions from L1
/// for all output channels, it runs them at 130-131 there too, but the transpose it needs
/// keeps gemm ahead (training step 2176-2287 ms against 2341-2396, alternated). The choice
/// depends on the CPU only, never on timing, so results are the same from run to run.
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], g: Tiles, c_out: usize) -> Vec<f32> {
    let direct = avx512::available() && !avx512::has_amx();
    if large_tiles(g, false) {
        return f43::weight_grad(x, dy, g, c_out, direct);
    }
    weight_grad_by(x, dy, g, c_out, direct)
}

/// [`weight_grad`], its products on [`avx512::correlate`] when `direct`, else on gemm.
fn weight_grad_by(x: &[f32], dy: &[f32], g: Tiles, c_out: usize, direct: bool) -> Vec<f32> {
    assert!(dy.len() >= g.b * c_out * g.ho * g.wo);
    with_taken(&WGRAD, |(v, dm)| {
        transform_input(x, g, v);
        transform_output_grad(dy, g, c_out, dm);
        weight_grad_from(v, dm, g, c_out, direct)
    })
}

thread_local! {
    /// The calling thread's transformed tiles and output gradients of [`weight_grad`] (tens of
    /// MiB for the CIFAR-10 U-Net), reused from call to call: no fresh pages to fault in.
    static WGRAD: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = Default::default();
}

/// `G^T (dM_e V_e^T) G` from the transformed tiles `v` (`[16, c, T]`) and output gradients
/// `dm` (`[16, c_out, T]`): one task per tile element `e`. When `direct` (the CPU has
/// AVX-512F), `V_e` is transposed to `[T, c]` and the product runs on [`avx512::correlate`] (the stride-1
/// weight-gradient kernel with one tap: accumulators in registers over all `T` tiles), else
/// on gemm, whose packing of two operands that are both contiguous along `T` held it near
/// half the sgemm rate (`examples/speed --kernel-times on`).
fn weight_grad_from(v: &[f32], dm: &[f32], g: Tiles, c_out: usize, direct: bool) -> Vec<f32> {
    let du = products_grad(v, dm, [E, g.c, c_out, g.t()], direct);
    kernel_grad(&du, c_out, g.c)
}

/// `dU_e = dM_e V_e^T` for each of `elements` tile elements: `v` is `[elements, c_in, T]`,
/// `dm` `[elements, c_out, T]`, the result `[elements, c_out, c_in]`; one task per element,
/// on [`avx512::correlate`] when `direct`, else on gemm (see [`weight_grad_from`]). Shared by
/// both tilings' weight gradients.
fn products_grad(
    v: &[f32],
    dm: &[f32],
    [elements, c_in, c_out, t_all]: [usize; 4],
    direct: bool,
) -> Vec<f32> {
    assert!(v.len() >= elements * c_in * t_all && dm.len() >= elements * c_out * t_all);
    let plane = c_out * c_in;
    let mut du = vec![0.0f32; elements * plane];
    du.par_chunks_mut(plane).enumerate().for_each(|(e, due)| {
        let work = flop(&[c_out, c_in, t_all]);
        let (ve, dme) = (&v[e * c_in * t_all..], &dm[e * c_out * t_all..]);
        if direct {
            VT.with(|vt| {
                let vt = &mut *vt.borrow_mut();
                let vt = first(vt, t_all * c_in);
                avx512::transpose(ve, t_all, [c_in, t_all], vt);
                profile::timed(Kernel::WinogradWeightGrad, work, || {
                    avx512::correlate(vt, &[0], dme, [c_in, c_out, t_all], due);
                });
            });
            return;
        }
        // dU_e [c_out, c_in] = dM_e [c_out, T] V_e^T (V_e is [c_in, T]).
        profile::timed(Kernel::WinogradWeightGrad, work, || {
            mm(
                due,
                rows(dme, t_all),
                transposed(ve, t_all),
                [c_out, c_in, t_all],
            );
        });
    });
    du
}

thread_local! {
    /// Each thread's `V_e` transposed to `[T, c]` for [`weight_grad_from`], reused.
    static VT: std::cell::RefCell<Vec<f32>> = Default::default();
}

#[cfg(test)]
mod tests;
