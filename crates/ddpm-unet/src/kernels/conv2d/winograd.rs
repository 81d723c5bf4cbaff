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
//! Every product is one gemm call on one thread over a column range fixed by the shapes, so
//! the results do not depend on the thread count. Checked against the definition in the
//! tests (and, through the layer, against burn's convolution).

use gemm::Parallelism;
use rayon::prelude::*;

use crate::kernels::vectorize::vectorized;

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
    fn t(&self) -> usize {
        self.b * self.per_image()
    }
}

/// `U = G g G^T` for every `(o, i)` of `w` (`[c_out, c_in, 3, 3]`), stored `[16, c_out, c_in]`.
fn transform_kernel(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; E * c_out * c_in];
    let plane = c_out * c_in;
    for (oi, g) in w.chunks_exact(9).enumerate().take(plane) {
        // G g: [4, 3]
        let mut gg = [[0.0f32; 3]; 4];
        for kx in 0..3 {
            let (g0, g1, g2) = (g[kx], g[3 + kx], g[6 + kx]);
            gg[0][kx] = g0;
            gg[1][kx] = 0.5 * (g0 + g1 + g2);
            gg[2][kx] = 0.5 * (g0 - g1 + g2);
            gg[3][kx] = g2;
        }
        for (p, row) in gg.iter().enumerate() {
            let [g0, g1, g2] = *row;
            let q = [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2];
            for (j, v) in q.into_iter().enumerate() {
                u[(p * 4 + j) * plane + oi] = v;
            }
        }
    }
    u
}

/// `dg = G^T dU G` for every `(o, i)`: `du` is `[16, c_out, c_in]`, the result `[c_out, c_in,
/// 3, 3]`.
fn kernel_grad(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let plane = c_out * c_in;
    let mut dw = vec![0.0f32; plane * 9];
    for (oi, dg) in dw.chunks_exact_mut(9).enumerate() {
        let at = |p: usize, q: usize| du[(p * 4 + q) * plane + oi];
        // G^T dU: [3, 4]; row ky of G^T is column ky of G.
        let mut gt = [[0.0f32; 4]; 3];
        for (q, col) in (0..4).map(|q| (q, [at(0, q), at(1, q), at(2, q), at(3, q)])) {
            gt[0][q] = col[0] + 0.5 * (col[1] + col[2]);
            gt[1][q] = 0.5 * (col[1] - col[2]);
            gt[2][q] = 0.5 * (col[1] + col[2]) + col[3];
        }
        for (ky, r) in gt.iter().enumerate() {
            dg[ky * 3] = r[0] + 0.5 * (r[1] + r[2]);
            dg[ky * 3 + 1] = 0.5 * (r[1] - r[2]);
            dg[ky * 3 + 2] = 0.5 * (r[1] + r[2]) + r[3];
        }
    }
    dw
}

/// `V = B^T d B` for the tiles of tile rows `ty0..ty1` of one channel `plane` (`[h, w]`):
/// element `e` of tile `(ty, tx)` is written to `dst[base + e e_stride + (ty - ty0) tw + tx]`.
/// Each input row's transform along the row is computed once and shared by the two tile rows
/// that overlap on it; `scratch` is reused space.
///
/// # Safety
/// Every entry written lies inside the allocation `dst` points into, and no other thread
/// reads or writes those entries during the call.
#[allow(clippy::too_many_arguments)]
#[inline(always)] // into the callers' `vectorized` closures, compiled for AVX-512 there
unsafe fn tile_rows(
    plane: &[f32],
    g: Tiles,
    [ty0, ty1]: [usize; 2],
    scratch: &mut Vec<f32>,
    dst: *mut f32,
    base: usize,
    e_stride: usize,
) {
    let (tw, width) = (g.tw, 2 * g.tw + 2);
    let n_in = 2 * (ty1 - ty0) + 2;
    scratch.resize(n_in * 4 * tw + width + 2 * (tw + 1), 0.0);
    let (hr, rest) = scratch.split_at_mut(n_in * 4 * tw);
    let (row, eo) = rest.split_at_mut(width);
    let (ev, od) = eo.split_at_mut(tw + 1);
    // Along each input row: hr[k, j, tx] = (d B)[k, j], on the row's even and odd columns
    // (`d = [ev[tx], od[tx], ev[tx + 1], od[tx + 1]]`: unit strides, so the loop vectorises).
    for (k, out) in hr.chunks_exact_mut(4 * tw).enumerate() {
        let r = (2 * ty0 + k).wrapping_sub(g.top);
        if r >= g.h {
            out.fill(0.0);
            continue;
        }
        row[..g.left].fill(0.0);
        row[g.left..g.left + g.w].copy_from_slice(&plane[r * g.w..][..g.w]);
        row[g.left + g.w..].fill(0.0);
        for (k, pair) in row.chunks_exact(2).enumerate() {
            ev[k] = pair[0];
            od[k] = pair[1];
        }
        let (o0, rest) = out.split_at_mut(tw);
        let (o1, rest) = rest.split_at_mut(tw);
        let (o2, o3) = rest.split_at_mut(tw);
        let (e0, e1, d0, d1) = (&ev[..tw], &ev[1..], &od[..tw], &od[1..]);
        for tx in 0..tw {
            o0[tx] = e0[tx] - e1[tx];
            o1[tx] = d0[tx] + e1[tx];
            o2[tx] = e1[tx] - d0[tx];
            o3[tx] = d0[tx] - d1[tx];
        }
    }
    // Down the columns: V[i, j] = (B^T hr)[i, j] over input rows 2 (ty - ty0) .. + 4.
    for ty in ty0..ty1 {
        let k0 = 2 * (ty - ty0);
        for j in 0..4 {
            let h = |d: usize| &hr[((k0 + d) * 4 + j) * tw..][..tw];
            let (h0, h1, h2, h3) = (h(0), h(1), h(2), h(3));
            // SAFETY: the caller's contract: these runs are in bounds and this thread's.
            let out = |i: usize| unsafe {
                std::slice::from_raw_parts_mut(
                    dst.add(base + (i * 4 + j) * e_stride + (ty - ty0) * tw),
                    tw,
                )
            };
            let (v0, v1, v2, v3) = (out(0), out(1), out(2), out(3));
            for tx in 0..tw {
                v0[tx] = h0[tx] - h2[tx];
                v1[tx] = h1[tx] + h2[tx];
                v2[tx] = h2[tx] - h1[tx];
                v3[tx] = h1[tx] - h3[tx];
            }
        }
    }
}

/// `V = B^T d B` for every tile of every image of `x` (`[b, c, h, w]`), stored `[16, c, T]`
/// (tile `t = image th tw + ty tw + tx`), for the weight gradient.
fn transform_input(x: &[f32], g: Tiles, v: &mut Vec<f32>) {
    let (t_all, hw, pi) = (g.t(), g.h * g.w, g.per_image());
    // Every entry is written below: only growth needs initialising.
    v.resize(E * g.c * t_all, 0.0);
    let dst = Shared(v.as_mut_ptr());
    (0..g.c).into_par_iter().for_each(|c| {
        vectorized(
            #[inline(always)]
            || {
                let mut scratch = Vec::new();
                for img in 0..g.b {
                    let plane = &x[(img * g.c + c) * hw..][..hw];
                    let base = c * t_all + img * pi;
                    // SAFETY: `[16, c, T]` has entry `(e, c, img pi + t)` at `e c T + c T + img
                    // pi + t`, inside `v`; only this channel's task writes channel `c`.
                    unsafe {
                        tile_rows(
                            plane,
                            g,
                            [0, g.th],
                            &mut scratch,
                            dst.ptr(),
                            base,
                            g.c * t_all,
                        )
                    };
                }
            },
        )
    });
}

/// `dM = A dY A^T` for every tile of the output gradient `dy` (`[b, c_out, ho, wo]`, zero
/// past the output's edge), stored `[16, c_out, T]`.
fn transform_output_grad(dy: &[f32], g: Tiles, c_out: usize, m: &mut Vec<f32>) {
    let (t_all, hw, pi) = (g.t(), g.ho * g.wo, g.per_image());
    // Every entry is written below: only growth needs initialising.
    m.resize(c_out * E * t_all, 0.0);
    let out = Shared(m.as_mut_ptr());
    (0..c_out).into_par_iter().for_each(|o| {
        vectorized(
            #[inline(always)]
            || {
                let mut s = [vec![0.0f32; 4 * g.tw], vec![0.0f32; 4 * g.tw]];
                for img in 0..g.b {
                    let plane = &dy[(img * c_out + o) * hw..][..hw];
                    for ty in 0..g.th {
                        // Along each of the tile row's two output rows: (dY A^T)[a, j].
                        for (a, sa) in s.iter_mut().enumerate() {
                            let y = 2 * ty + a;
                            if y >= g.ho {
                                sa.fill(0.0);
                                continue;
                            }
                            let row = &plane[y * g.wo..][..g.wo];
                            let (s0, rest) = sa.split_at_mut(g.tw);
                            let (s1, rest) = rest.split_at_mut(g.tw);
                            let (s2, s3) = rest.split_at_mut(g.tw);
                            for tx in 0..g.tw {
                                let y0 = row[2 * tx];
                                let y1 = if 2 * tx + 1 < g.wo {
                                    row[2 * tx + 1]
                                } else {
                                    0.0
                                };
                                s0[tx] = y0;
                                s1[tx] = y0 + y1;
                                s2[tx] = y0 - y1;
                                s3[tx] = -y1;
                            }
                        }
                        // Down the columns: dM[i, j] = (A s)[i, j].
                        let t0 = img * pi + ty * g.tw;
                        for j in 0..4 {
                            let (a0, a1) = (&s[0][j * g.tw..][..g.tw], &s[1][j * g.tw..][..g.tw]);
                            let put = |i: usize, f: &dyn Fn(usize) -> f32| {
                                // SAFETY: `[((i 4 + j) c_out + o) T + t0, + tw)` lies inside
                                // `m` (`16 c_out T` values) and only this channel's task writes it.
                                let dst = unsafe {
                                    std::slice::from_raw_parts_mut(
                                        out.ptr().add(((i * 4 + j) * c_out + o) * t_all + t0),
                                        g.tw,
                                    )
                                };
                                dst.iter_mut().enumerate().for_each(|(tx, d)| *d = f(tx));
                            };
                            put(0, &|tx| a0[tx]);
                            put(1, &|tx| a0[tx] + a1[tx]);
                            put(2, &|tx| a0[tx] - a1[tx]);
                            put(3, &|tx| -a1[tx]);
                        }
                    }
                }
            },
        )
    });
}

/// A raw pointer that tasks writing disjoint parts of one buffer share.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes a disjoint set of entries (see the callers).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the whole `Shared`, which is `Sync`).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `y = conv(x, w) + bias (+ residual)` for a 3x3 kernel `w` (`[c_out, c, 3, 3]`) and the
/// tiling `g` of `x` (`[b, c, h, w]`); `y` is `[b, c_out, ho, wo]`.
///
/// The batch's tile rows are cut into blocks of about `16384 / (c + c_out)` tiles (a
/// function of the shapes only), whose transformed tiles and products (`16 (c + c_out)` values
/// per tile, about 1 MiB) stay in the core's cache: one task per block transforms its
/// tiles, runs the 16 products and stores its output rows.
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    g: Tiles,
    c_out: usize,
    y: &mut [f32],
) {
    assert!(
        x.len() >= g.b * g.c * g.h * g.w
            && w.len() >= c_out * g.c * 9
            && y.len() == g.b * c_out * g.ho * g.wo
            && residual.is_none_or(|r| r.len() == y.len())
            && bias.is_none_or(|b| b.len() >= c_out)
    );
    let (c_in, hw, ohw, tw) = (g.c, g.h * g.w, g.ho * g.wo, g.tw);
    let u = transform_kernel(w, c_out, c_in);
    let rows_total = g.b * g.th;
    let per_block = block_rows(g, c_out);
    let blocks = rows_total.div_ceil(per_block);
    let out = Shared(y.as_mut_ptr());
    (0..blocks).into_par_iter().for_each(|blk| {
        let (r0, r1) = (blk * per_block, ((blk + 1) * per_block).min(rows_total));
        let nb = (r1 - r0) * tw;
        with_scratch(|[v, m, rows]| {
            vectorized(
                #[inline(always)]
                || {
                    v.resize(E * c_in * nb, 0.0);
                    let vp = v.as_mut_ptr();
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
            );
            m.resize(E * c_out * nb, 0.0);
            for e in 0..E {
                // SAFETY: `m`'s `[c_out, nb]` block at `e c_out nb`, `u`'s `[c_out, c_in]`
                // block at `e c_out c_in` and `v`'s `[c_in, nb]` block at `e c_in nb` are in
                // bounds (the sizes above), all row-major; `m` aliases nothing.
                unsafe {
                    gemm::gemm(
                        c_out,
                        nb,
                        c_in,
                        m.as_mut_ptr().add(e * c_out * nb),
                        1,
                        nb as isize,
                        false,
                        u.as_ptr().add(e * c_out * c_in),
                        1,
                        c_in as isize,
                        v.as_ptr().add(e * c_in * nb),
                        1,
                        nb as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            vectorized(
                #[inline(always)]
                || {
                    rows.resize(12 * tw, 0.0);
                    let (s, row) = rows.split_at_mut(8 * tw);
                    let (row, pair_buf) = row.split_at_mut(2 * tw);
                    for o in 0..c_out {
                        let b = bias.map_or(0.0, |b| b[o]);
                        for r in r0..r1 {
                            let (img, ty) = (r / g.th, r % g.th);
                            let at = (r - r0) * tw;
                            // Down the columns: s[a, j] = (A^T M)[a, j].
                            for j in 0..4 {
                                let mm = |i: usize| &m[((i * 4 + j) * c_out + o) * nb + at..][..tw];
                                let (m0, m1, m2, m3) = (mm(0), mm(1), mm(2), mm(3));
                                let (sa, sb) = s.split_at_mut(4 * tw);
                                let (s0, s1) = (&mut sa[j * tw..][..tw], &mut sb[j * tw..][..tw]);
                                for tx in 0..tw {
                                    s0[tx] = m0[tx] + m1[tx] + m2[tx];
                                    s1[tx] = m1[tx] - m2[tx] - m3[tx];
                                }
                            }
                            // Along the rows: Y[a, 0] and Y[a, 1] of each tile, interleaved.
                            for a in 0..2 {
                                let yy = 2 * ty + a;
                                if yy >= g.ho {
                                    break;
                                }
                                let sa = &s[a * 4 * tw..][..4 * tw];
                                let (q0, q1, q2, q3) = (
                                    &sa[..tw],
                                    &sa[tw..2 * tw],
                                    &sa[2 * tw..3 * tw],
                                    &sa[3 * tw..],
                                );
                                let (ye, yo) = row.split_at_mut(tw);
                                for tx in 0..tw {
                                    ye[tx] = q0[tx] + q1[tx] + q2[tx] + b;
                                    yo[tx] = q1[tx] - q2[tx] - q3[tx] + b;
                                }
                                for (pair, (&e, &o)) in
                                    pair_buf.chunks_exact_mut(2).zip(ye.iter().zip(yo.iter()))
                                {
                                    pair[0] = e;
                                    pair[1] = o;
                                }
                                let at = (img * c_out + o) * ohw + yy * g.wo;
                                // SAFETY: output row `yy` of channel `o` of image `img` lies
                                // inside `y` (asserted size) and only the block holding tile row
                                // `ty` of `img` writes it.
                                let dst = unsafe {
                                    std::slice::from_raw_parts_mut(out.ptr().add(at), g.wo)
                                };
                                dst.copy_from_slice(&pair_buf[..g.wo]);
                                if let Some(res) = residual {
                                    let r = &res[at..][..g.wo];
                                    dst.iter_mut().zip(r).for_each(|(d, r)| *d += r);
                                }
                            }
                        }
                    }
                },
            );
        });
    });
}

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

/// Runs `f` on this thread's scratch buffers (`f` must not call back into this module).
fn with_scratch<R>(f: impl FnOnce(&mut [Vec<f32>; 3]) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// The input gradient `dx` (`[b, c_in, h, w]`) of the convolution `forward` computes, for
/// the output gradient `dy` (`[b, c_out, ho, wo]`), padding `pad` and kernel `w`
/// (`[c_out, c_in, 3, 3]`): the convolution of `dy`, padded by `2 - pad`, with the flipped,
/// transposed kernel.
pub(crate) fn input_grad(
    dy: &[f32],
    w: &[f32],
    [b, c_in, h, wd]: [usize; 4],
    c_out: usize,
    pad: [usize; 4],
    dx: &mut [f32],
) {
    let g = Tiles::new(b, c_in, h, wd, pad).expect("a tiling checked by the caller");
    let back = pad.map(|p| 2 - p);
    let gd = Tiles::new(b, c_out, g.ho, g.wo, back).expect("the flipped tiling fits");
    debug_assert_eq!((gd.ho, gd.wo), (h, wd));
    let mut wf = vec![0.0f32; c_in * c_out * 9];
    for o in 0..c_out {
        for i in 0..c_in {
            for t in 0..9 {
                wf[(i * c_out + o) * 9 + t] = w[(o * c_in + i) * 9 + 8 - t];
            }
        }
    }
    forward(dy, &wf, None, None, gd, c_in, dx);
}

/// The weight gradient (`[c_out, c, 3, 3]`) of the convolution `forward` computes, for input
/// `x` (tiling `g`) and output gradient `dy` (`[b, c_out, ho, wo]`).
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], g: Tiles, c_out: usize) -> Vec<f32> {
    assert!(dy.len() >= g.b * c_out * g.ho * g.wo);
    WGRAD.with(|buffers| {
        let (v, dm) = &mut *buffers.borrow_mut();
        transform_input(x, g, v);
        transform_output_grad(dy, g, c_out, dm);
        weight_grad_from(v, dm, g, c_out)
    })
}

thread_local! {
    /// The calling thread's transformed tiles and output gradients of [`weight_grad`] (tens of
    /// MiB for the CIFAR-10 U-Net), reused from call to call: no fresh pages to fault in.
    static WGRAD: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = Default::default();
}

/// `G^T (dM_e V_e^T) G` from the transformed tiles `v` (`[16, c, T]`) and output gradients
/// `dm` (`[16, c_out, T]`).
fn weight_grad_from(v: &[f32], dm: &[f32], g: Tiles, c_out: usize) -> Vec<f32> {
    let t_all = g.t();
    assert!(v.len() >= E * g.c * t_all && dm.len() >= E * c_out * t_all);
    let (c_in, plane) = (g.c, c_out * g.c);
    let mut du = vec![0.0f32; E * plane];
    du.par_chunks_mut(plane).enumerate().for_each(|(e, due)| {
        // SAFETY: `due` is `[c_out, c_in]` row-major; `dm`'s `[c_out, T]` block at
        // `e c_out T` and `v`'s `[c_in, T]` block at `e c_in T` (read as `[T, c_in]`) lie
        // inside them (`16 c_out T` and `16 c_in T` values).
        unsafe {
            gemm::gemm(
                c_out,
                c_in,
                t_all,
                due.as_mut_ptr(),
                1,
                c_in as isize,
                false,
                dm.as_ptr().add(e * c_out * t_all),
                1,
                t_all as isize,
                v.as_ptr().add(e * c_in * t_all),
                t_all as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    });
    kernel_grad(&du, c_out, c_in)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_support::{noise, with_threads};

    /// The definition in f64 (`x` `[b, c, h, w]`, `w` `[c_out, c, 3, 3]`, no bias).
    fn definition(x: &[f32], w: &[f32], g: Tiles, c_out: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; g.b * c_out * g.ho * g.wo];
        for img in 0..g.b {
            for o in 0..c_out {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let mut s = 0.0f64;
                        for i in 0..g.c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = (oy + ky, ox + kx);
                                    if iy < g.top || ix < g.left {
                                        continue;
                                    }
                                    let (iy, ix) = (iy - g.top, ix - g.left);
                                    if iy >= g.h || ix >= g.w {
                                        continue;
                                    }
                                    s += w[((o * g.c + i) * 3 + ky) * 3 + kx] as f64
                                        * x[((img * g.c + i) * g.h + iy) * g.w + ix] as f64;
                                }
                            }
                        }
                        y[((img * c_out + o) * g.ho + oy) * g.wo + ox] = s;
                    }
                }
            }
        }
        y
    }

    fn close(a: &[f32], b: &[f64], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (k, (&a, &b)) in a.iter().zip(b).enumerate() {
            assert!(
                (a as f64 - b).abs() <= 2e-5 * scale,
                "{what}: value {k}: {a} against {b}"
            );
        }
    }

    /// Shapes: odd and even sizes, a 1x1 and a 1x2 image, one-sided and zero padding, batch 1.
    const CASES: [(usize, usize, usize, usize, usize, [usize; 4]); 7] = [
        (2, 3, 4, 6, 6, [1, 1, 1, 1]),
        (1, 5, 2, 7, 5, [1, 1, 1, 1]),
        (3, 2, 3, 1, 1, [1, 1, 1, 1]),
        (1, 4, 3, 1, 2, [1, 1, 1, 1]),
        (2, 3, 2, 5, 8, [0, 0, 0, 0]),
        (2, 2, 3, 6, 5, [2, 0, 1, 2]),
        (1, 16, 8, 9, 9, [1, 1, 1, 1]),
    ];

    /// The forward pass, with a bias and a residual, equals the definition.
    #[test]
    fn forward_equals_the_definition() {
        for (seed, (b, c, c_out, h, w, pad)) in CASES.into_iter().enumerate() {
            let g = Tiles::new(b, c, h, w, pad).unwrap();
            let x = noise(b * c * h * w, seed as u64);
            let k = noise(c_out * c * 9, seed as u64 + 50);
            let bias = noise(c_out, seed as u64 + 7);
            let n = b * c_out * g.ho * g.wo;
            let res = noise(n, seed as u64 + 9);
            let mut y = vec![f32::NAN; n];
            forward(&x, &k, Some(&bias), Some(&res), g, c_out, &mut y);
            let mut want = definition(&x, &k, g, c_out);
            let hw = g.ho * g.wo;
            for (j, v) in want.iter_mut().enumerate() {
                *v += bias[(j / hw) % c_out] as f64 + res[j] as f64;
            }
            close(
                &y,
                &want,
                &format!("forward {:?}", (b, c, c_out, h, w, pad)),
            );
        }
    }

    /// Both gradients equal the definition's: `dx` and `dw` of `L = sum(y * r)` computed
    /// from the definition's adjoint, in f64.
    #[test]
    fn gradients_equal_the_definition() {
        for (seed, (b, c, c_out, h, w, pad)) in CASES.into_iter().enumerate() {
            let g = Tiles::new(b, c, h, w, pad).unwrap();
            let x = noise(b * c * h * w, seed as u64 + 1);
            let k = noise(c_out * c * 9, seed as u64 + 2);
            let r = noise(b * c_out * g.ho * g.wo, seed as u64 + 3);
            // dL/dx[img, i, iy, ix] = sum_(o, ky, kx) r[img, o, iy + top - ky, ...] w[o, i, ky, kx]
            // and dL/dw[o, i, ky, kx] = sum r[img, o, oy, ox] x[img, i, oy + ky - top, ...]:
            // both linear, so probe them with unit vectors through the definition.
            let dot = |y: &[f64]| y.iter().zip(&r).map(|(a, &b)| a * b as f64).sum::<f64>();
            let mut dx = vec![f32::NAN; x.len()];
            input_grad(&r, &k, [b, c, h, w], c_out, pad, &mut dx);
            let dw = weight_grad(&x, &r, g, c_out);
            let mut want_dx = vec![0.0f64; x.len()];
            for (j, v) in want_dx.iter_mut().enumerate() {
                let mut e = vec![0.0f32; x.len()];
                e[j] = 1.0;
                *v = dot(&definition(&e, &k, g, c_out));
            }
            let mut want_dw = vec![0.0f64; k.len()];
            for (j, v) in want_dw.iter_mut().enumerate() {
                let mut e = vec![0.0f32; k.len()];
                e[j] = 1.0;
                *v = dot(&definition(&x, &e, g, c_out));
            }
            let case = (b, c, c_out, h, w, pad);
            close(&dx, &want_dx, &format!("dx {case:?}"));
            close(&dw, &want_dw, &format!("dw {case:?}"));
        }
    }

    /// 1, 2 and 3 threads give the same bits (several blocks of tile rows).
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (b, c, c_out, h, w) = (2, 128, 128, 20, 19);
        let g = Tiles::new(b, c, h, w, [1; 4]).unwrap();
        assert!(b * g.th > 2 * block_rows(g, c_out));
        let (x, k) = (noise(b * c * h * w, 1), noise(c_out * c * 9, 2));
        let r = noise(b * c_out * g.ho * g.wo, 3);
        let run = |threads| {
            with_threads(threads, || {
                let mut y = vec![0.0f32; r.len()];
                forward(&x, &k, None, None, g, c_out, &mut y);
                let mut dx = vec![0.0f32; x.len()];
                input_grad(&r, &k, [b, c, h, w], c_out, [1; 4], &mut dx);
                (y, dx, weight_grad(&x, &r, g, c_out))
            })
        };
        let one = run(1);
        for threads in [2, 3] {
            assert!(run(threads) == one, "{threads} threads");
        }
    }

    #[test]
    fn tilings_that_do_not_fit_are_refused() {
        assert!(Tiles::new(1, 1, 1, 1, [0; 4]).is_none());
        assert!(Tiles::new(1, 1, 5, 5, [3, 0, 0, 0]).is_none());
        assert!(Tiles::new(0, 1, 5, 5, [1; 4]).is_none());
        assert!(Tiles::new(1, 1, 2, 5, [0; 4]).is_none());
        assert!(Tiles::new(1, 1, 3, 3, [0; 4]).is_some());
    }
}
