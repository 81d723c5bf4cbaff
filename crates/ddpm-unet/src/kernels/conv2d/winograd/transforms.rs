//! The transforms of Winograd's F(2x2, 3x3): the kernel's (`U = G g G^T`) and its gradient's
//! (`G^T dU G`), the input tiles' (`V = B^T d B`) and the output gradient's (`dM = A dY A^T`);
//! additions only, on unit-stride runs of tiles so that the loops vectorise.

use rayon::prelude::*;

use super::{E, Tiles, first};
use crate::kernels::flex_tensor::Shared;
use crate::kernels::flex_tensor::{unwritten, written};
use crate::kernels::profile::{self, Kernel};
use crate::kernels::vectorize::vectorized;

/// `U = G g G^T` for every `(o, i)` of `w` (`[c_out, c_in, 3, 3]`), stored `[16, c_out, c_in]`.
pub(super) fn transform_kernel(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    // Every value is written below (16 per kernel): no zero fill first.
    let plane = c_out * c_in;
    assert!(w.len() >= 9 * plane, "a 3x3 kernel of {c_out} x {c_in}");
    let mut u = unwritten(E * plane);
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
                u[(p * 4 + j) * plane + oi].write(v);
            }
        }
    }
    // SAFETY: entries `(p 4 + j) plane + oi` for `p, j < 4`, `oi < plane`: all of `u`.
    unsafe { written(u) }
}

/// `dg = G^T dU G` for every `(o, i)`: `du` is `[16, c_out, c_in]`, the result `[c_out, c_in,
/// 3, 3]`.
pub(super) fn kernel_grad(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let plane = c_out * c_in;
    let mut dw = unwritten(plane * 9);
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
            dg[ky * 3].write(r[0] + 0.5 * (r[1] + r[2]));
            dg[ky * 3 + 1].write(0.5 * (r[1] - r[2]));
            dg[ky * 3 + 2].write(0.5 * (r[1] + r[2]) + r[3]);
        }
    }
    // SAFETY: the chunks cover `dw`, each of their 9 values written above.
    unsafe { written(dw) }
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
pub(super) unsafe fn tile_rows(
    plane: &[f32],
    g: Tiles,
    [ty0, ty1]: [usize; 2],
    scratch: &mut Vec<f32>,
    dst: *mut f32,
    base: usize,
    e_stride: usize,
) {
    let (tw, width) = (g.tw, 2 * g.tw + 2);
    let (rows, half) = (ty1 - ty0, ty1 - ty0 + 1); // tile rows; input rows of each parity
    let scratch = first(scratch, 8 * half * tw + width + 2 * (tw + 1));
    let (hr, rest) = scratch.split_at_mut(8 * half * tw);
    let (row, eo) = rest.split_at_mut(width);
    let (ev, od) = eo.split_at_mut(tw + 1);
    // `hr[(p 4 + j) half + q]` (runs of `tw`): (d B)[j] of input row `2 q + p`, the even and
    // odd input rows apart, so that the column pass below reads one run over all its tile
    // rows (rows `2 ty`, `2 ty + 2` are consecutive even rows) instead of `tw` values at a
    // time.
    let mut parts: Vec<&mut [f32]> = hr.chunks_exact_mut(half * tw).collect();
    // Along each input row: (d B)[k, j, tx] on the row's even and odd columns
    // (`d = [ev[tx], od[tx], ev[tx + 1], od[tx + 1]]`: unit strides, so the loop vectorises).
    for k in 0..2 * half {
        let (p, q) = (k % 2, k / 2);
        let Ok([o0, o1, o2, o3]) = parts.get_disjoint_mut([4 * p, 4 * p + 1, 4 * p + 2, 4 * p + 3])
        else {
            unreachable!("four distinct parts");
        };
        let run = q * tw..(q + 1) * tw;
        let (o0, o1, o2, o3) = (
            &mut o0[run.clone()],
            &mut o1[run.clone()],
            &mut o2[run.clone()],
            &mut o3[run],
        );
        let r = (2 * ty0 + k).wrapping_sub(g.top);
        if r >= g.h {
            for o in [o0, o1, o2, o3] {
                o.fill(0.0);
            }
            continue;
        }
        row[..g.left].fill(0.0);
        row[g.left..g.left + g.w].copy_from_slice(&plane[r * g.w..][..g.w]);
        row[g.left + g.w..].fill(0.0);
        for (k, pair) in row.chunks_exact(2).enumerate() {
            ev[k] = pair[0];
            od[k] = pair[1];
        }
        let (e0, e1, d0, d1) = (&ev[..tw], &ev[1..], &od[..tw], &od[1..]);
        for tx in 0..tw {
            o0[tx] = e0[tx] - e1[tx];
            o1[tx] = d0[tx] + e1[tx];
            o2[tx] = e1[tx] - d0[tx];
            o3[tx] = d0[tx] - d1[tx];
        }
    }
    // Down the columns, all tile rows in one run: V[i, j] = (B^T hr)[i, j] over input rows
    // 2 ty .. 2 ty + 4, i.e. even rows ty, ty + 1 and odd rows ty, ty + 1.
    let n = rows * tw;
    for j in 0..4 {
        let (even, odd) = (&parts[j], &parts[4 + j]);
        let (h0, h1, h2, h3) = (&even[..n], &odd[..n], &even[tw..tw + n], &odd[tw..tw + n]);
        // SAFETY: the caller's contract: these runs are in bounds and this thread's.
        let out = |i: usize| unsafe {
            std::slice::from_raw_parts_mut(dst.add(base + (i * 4 + j) * e_stride), n)
        };
        let (v0, v1, v2, v3) = (out(0), out(1), out(2), out(3));
        for t in 0..n {
            v0[t] = h0[t] - h2[t];
            v1[t] = h1[t] + h2[t];
            v2[t] = h2[t] - h1[t];
            v3[t] = h1[t] - h3[t];
        }
    }
}

/// `V = B^T d B` for every tile of every image of `x` (`[b, c, h, w]`), stored `[16, c, T]`
/// (tile `t = image th tw + ty tw + tx`), for the weight gradient.
pub(super) fn transform_input(x: &[f32], g: Tiles, v: &mut Vec<f32>) {
    let (t_all, hw, pi) = (g.t(), g.h * g.w, g.per_image());
    // Every entry is written below.
    let dst = Shared(first(v, E * g.c * t_all).as_mut_ptr());
    (0..g.c).into_par_iter().for_each(|c| {
        profile::timed(Kernel::WinogradTransforms, 0, || {
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
        })
    });
}

/// `dM = A dY A^T` for every tile of the output gradient `dy` (`[b, c_out, ho, wo]`, zero
/// past the output's edge), stored `[16, c_out, T]`.
pub(super) fn transform_output_grad(dy: &[f32], g: Tiles, c_out: usize, m: &mut Vec<f32>) {
    let (t_all, hw, pi) = (g.t(), g.ho * g.wo, g.per_image());
    // Every entry is written below.
    let out = Shared(first(m, c_out * E * t_all).as_mut_ptr());
    (0..c_out).into_par_iter().for_each(|o| {
        profile::timed(Kernel::WinogradTransforms, 0, || {
            vectorized(
                #[inline(always)]
                || {
                    // s[(a 4 + j) pi + t] = (dY A^T)[a, j] of the image's tile t: the row pass
                    // tile row by tile row, then the column pass over all `pi` tiles of the
                    // image in one run (contiguous in `m`).
                    let tw = g.tw;
                    let mut s = vec![0.0f32; 8 * pi];
                    for img in 0..g.b {
                        let plane = &dy[(img * c_out + o) * hw..][..hw];
                        for (a, sa) in s.chunks_exact_mut(4 * pi).enumerate() {
                            let (s0, rest) = sa.split_at_mut(pi);
                            let (s1, rest) = rest.split_at_mut(pi);
                            let (s2, s3) = rest.split_at_mut(pi);
                            for ty in 0..g.th {
                                let (y, run) = (2 * ty + a, ty * tw..(ty + 1) * tw);
                                let (s0, s1, s2, s3) = (
                                    &mut s0[run.clone()],
                                    &mut s1[run.clone()],
                                    &mut s2[run.clone()],
                                    &mut s3[run],
                                );
                                if y >= g.ho {
                                    for sj in [s0, s1, s2, s3] {
                                        sj.fill(0.0);
                                    }
                                    continue;
                                }
                                let row = &plane[y * g.wo..][..g.wo];
                                for tx in 0..tw {
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
                        }
                        // Down the columns: dM[i, j] = (A s)[i, j].
                        let t0 = img * pi;
                        for j in 0..4 {
                            let (a0, a1) = (&s[j * pi..][..pi], &s[(4 + j) * pi..][..pi]);
                            // SAFETY: `[((i 4 + j) c_out + o) T + t0, + pi)` lies inside `m`
                            // (`16 c_out T` values, `t0 + pi <= T`) and only this channel's
                            // task writes it.
                            let dst = |i: usize| unsafe {
                                std::slice::from_raw_parts_mut(
                                    out.ptr().add(((i * 4 + j) * c_out + o) * t_all + t0),
                                    pi,
                                )
                            };
                            let (d0, d1, d2, d3) = (dst(0), dst(1), dst(2), dst(3));
                            for t in 0..pi {
                                d0[t] = a0[t];
                                d1[t] = a0[t] + a1[t];
                                d2[t] = a0[t] - a1[t];
                                d3[t] = -a1[t];
                            }
                        }
                    }
                },
            )
        })
    });
}
