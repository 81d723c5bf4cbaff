//! Stride-1 convolutions without im2col: `k x k` GEMMs on shifted views of one padded copy of
//! the image, accumulated in place.
//!
//! Pad the image `[c, h, w]` once into planes of width `wp = w + left + right`. In those
//! coordinates, output pixel `j = oy wp + ox` of tap `(ky, kx)` reads input position
//! `j + ky wp + kx`, so the tap's input is the padded image itself, offset by `ky wp + kx`:
//! a strided matrix view `[c, m]`, no copy. Then
//!
//! `Y[o, j] = sum_(ky, kx) W_(ky, kx)[o, i] X_pad[i, j + ky wp + kx]`
//!
//! is `k^2` products (`[c_out, c_in] x [c_in, m]`) accumulated into one `[c_out, m]` buffer,
//! each reading the padded image in place. Columns `ox >= wo` of each output row
//! are wrap-around garbage (`wp - wo` per row) and are dropped when the result is copied out.
//!
//! Neighbouring rows share their padding: a row's right padding is the next row's left (both
//! zeros), so `wp = w + max(left, right)` rather than `w + left + right`, and likewise
//! neighbouring images share their padding rows. With padding 1 that is 1 garbage column of 29
//! for a 28x28 image, 1 of 8 for 7x7 (instead of 2 of 30 and 2 of 9): fewer wasted products,
//! most at the small levels. im2col, which this replaces, wrote `k^2` copies of the image
//! before every product (about 15 % of a training step's CPU time).
//!
//! The input gradient of a stride-1 convolution is again one: the correlation of the output
//! gradient, padded by `k - 1 - pad`, with the flipped, transposed kernel, read in place
//! through strides. The weight gradient is `k^2` products of the output gradient (in the same
//! padded-width layout, zero in the garbage columns) with the shifted views of a
//! position-major copy of the padded images.
//!
//! The products run on the register-blocked AVX-512 kernels of [`avx512`] where the CPU has
//! AVX-512F ([`Engine::Direct`]), else as one gemm call per tap ([`Engine::Gemm`]); the tests
//! check both against the definition.

use std::mem::MaybeUninit;
use std::rc::Rc;
use std::sync::Arc;

use burn::backend::flex::FlexTensor;

use gemm::Parallelism;

use super::avx512::{self, Layout};
use super::cache::{self, Transform};
use crate::kernels::group_norm::slices::Normalisation;
use crate::kernels::profile::{self, Kernel, flop};
use crate::kernels::vectorize::vectorized;

/// A group of `n` images `[n, c, h, w]` padded by `[top, left, bottom, right]` for a stride-1
/// convolution with a `k x k` kernel, stored channel-major: channel `i` of image `g` starts at
/// `i plane + g image`, so that one shifted view covers the whole group and one GEMM per tap
/// serves `n` images (small images alone make GEMMs too small to run at speed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Padded {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    /// The padding `[top, left, bottom, right]`.
    pad: [usize; 4],
    k: usize,
    /// Padded width: the row stride of both the padded images and the GEMM output,
    /// `w + max(left, right)` (rows share their padding columns).
    wp: usize,
    /// Values per padded image, `(h + max(top, bottom)) wp`: the distance between images of
    /// one channel (images share their padding rows).
    image: usize,
    /// Output size.
    pub ho: usize,
    /// Output size.
    pub wo: usize,
    /// GEMM columns: `(n - 1) image + ho wp` rounded up to a multiple of 16 (whole AVX-512
    /// vectors).
    m: usize,
    /// Values per channel: room for the last tap's `m` columns.
    plane: usize,
}

impl Padded {
    /// The layout for `n` images of `c x h x w`, padding `[top, left, bottom, right]` and a
    /// `k x k` kernel. The caller guarantees `n, c >= 1`, that the kernel fits the padded
    /// image and that every padding is below `k` (as the extension's callers check).
    ///
    /// Output pixel `(oy, ox)` reads padded row `oy + ky` and column `ox + kx`, up to row
    /// `h + top + bottom - 1` and column `w + left + right - 1`. An image keeps
    /// `h + max(top, bottom)` rows of `w + max(left, right)` columns, so the reads past them
    /// land in the next image's first `min(top, bottom)` rows (the next row's first
    /// `min(left, right)` columns): its top (left) padding, zeros. The outputs (`ho` rows of
    /// `wo` columns) fit in that extent, as `min(top, bottom) < k` (`min(left, right) < k`).
    pub(crate) fn new(n: usize, c: usize, h: usize, w: usize, k: usize, pad: [usize; 4]) -> Self {
        let [top, left, bottom, right] = pad;
        debug_assert!(
            pad.iter().all(|&p| p < k),
            "padding {pad:?} for a {k}x{k} kernel"
        );
        let (ho, wo) = (h + top + bottom + 1 - k, w + left + right + 1 - k);
        let wp = w + left.max(right);
        let image = (h + top.max(bottom)) * wp;
        let m = ((n - 1) * image + ho * wp).next_multiple_of(16);
        let plane = (n * image).max((k - 1) * (wp + 1) + m).next_multiple_of(16);
        Self {
            n,
            c,
            h,
            w,
            pad,
            k,
            wp,
            image,
            ho,
            wo,
            m,
            plane,
        }
    }

    /// The same layout for `n` images.
    pub(crate) fn with_images(self, n: usize) -> Self {
        Self::new(n, self.c, self.h, self.w, self.k, self.pad)
    }

    /// How many images of this layout one GEMM should cover in a batch of `b`: about 2,048
    /// columns, but at least 8 groups when the batch allows (work for every thread). A
    /// function of the shapes only, never of the thread count.
    pub(crate) fn group_for(&self, b: usize) -> usize {
        (2048 / self.image).clamp(1, (b / 8).max(1))
    }

    /// The images `x` (`[n, c, h, w]`) in a zeroed `[c, plane]` buffer, written into `out`
    /// (its old contents dropped, its allocation reused) value by value: zeros for the
    /// padding, the image rows between.
    pub(crate) fn pad_into(&self, x: &[f32], out: &mut Vec<f32>) {
        out.clear();
        out.reserve(self.c * self.plane);
        let [top, left, _, _] = self.pad;
        let (hw, right) = (self.h * self.w, self.wp - self.w - left);
        let zeros = |out: &mut Vec<f32>, n: usize| out.resize(out.len() + n, 0.0);
        for i in 0..self.c {
            let start = out.len();
            for img in x.chunks(self.c * hw) {
                let src = &img[i * hw..(i + 1) * hw];
                zeros(out, top * self.wp);
                for row in src.chunks(self.w) {
                    zeros(out, left);
                    out.extend_from_slice(row);
                    zeros(out, right);
                }
                zeros(out, self.image - (top + self.h) * self.wp);
            }
            zeros(out, start + self.plane - out.len());
        }
    }

    /// [`pad_into`](Self::pad_into) of the GroupNorm + activation of `x`, `norm` (of these
    /// images) applied in place after the copy: the values [`pad_into`](Self::pad_into) would
    /// copy from the normalised tensor, bit for bit, without that tensor in memory. Each
    /// image's channel is normalised from its first value to its last as one run (long loops,
    /// whole vectors), the padding between its rows after it zeroed again.
    pub(crate) fn pad_normalised_into(&self, x: &[f32], norm: &Normalisation, out: &mut Vec<f32>) {
        self.pad_into(x, out);
        let [top, left, _, _] = self.pad;
        let (wp, gap) = (self.wp, self.wp - self.w);
        let span = (self.h - 1) * wp + self.w;
        vectorized(
            #[inline(always)]
            || {
                for i in 0..self.c {
                    for g in 0..self.n {
                        let start = i * self.plane + g * self.image + top * wp + left;
                        let run = &mut out[start..start + span];
                        norm.coefficients(g, i).apply(run);
                        for y in 1..self.h {
                            // One value with the usual padding of 1: a store, not a memset.
                            match gap {
                                1 => run[y * wp - 1] = 0.0,
                                _ => run[y * wp - gap..y * wp].fill(0.0),
                            }
                        }
                    }
                }
            },
        );
    }

    /// The images `x` (`[n, c, h, w]`) padded as by [`pad_into`](Self::pad_into) but
    /// position-major, written into `out` (its allocation reused): the `c` values of padded
    /// position `p` at `p c..(p + 1) c`, `plane c` values in all. The weight gradient's GEMMs
    /// read this layout in place; the channel-major one they would first copy once per tap.
    pub(crate) fn pad_t(&self, x: &[f32], out: &mut Vec<f32>) {
        self.pad_t_by(x, out, avx512::available());
    }

    /// [`pad_t`](Self::pad_t), each row transposed by [`avx512::transpose`] when `direct`,
    /// else value by value.
    fn pad_t_by(&self, x: &[f32], out: &mut Vec<f32>, direct: bool) {
        let (c, hw, [top, left, _, _]) = (self.c, self.h * self.w, self.pad);
        let right = self.wp - self.w - left;
        // Written in order, each padding run zeroed just before the values after it: one
        // pass over the buffer, not a full zero fill and then a second pass.
        out.clear();
        out.reserve(c * self.plane);
        let zeros = |out: &mut Vec<f32>, n: usize| out.resize(out.len() + n, 0.0);
        for img in x.chunks(c * hw) {
            zeros(out, top * self.wp * c);
            for y in 0..self.h {
                zeros(out, left * c);
                let start = out.len();
                zeros(out, self.w * c);
                let (src, dst) = (&img[y * self.w..], &mut out[start..]);
                if direct {
                    avx512::transpose(src, hw, [c, self.w], dst);
                } else {
                    for (xx, px) in dst.chunks_mut(c).enumerate() {
                        px.iter_mut()
                            .zip(src[xx..].iter().step_by(hw))
                            .for_each(|(d, &v)| *d = v);
                    }
                }
                zeros(out, right * c);
            }
            zeros(out, (self.image - (top + self.h) * self.wp) * c);
        }
        zeros(out, c * self.plane - out.len());
    }

    /// Output gradients `[n, c_out, ho, wo]` in the GEMM output layout `[c_out, m]`, zero in
    /// the garbage columns, written into `out` (its allocation reused).
    pub(crate) fn spread(&self, dy: &[f32], c_out: usize, out: &mut Vec<f32>) {
        out.clear();
        out.reserve(c_out * self.m);
        let hw = self.ho * self.wo;
        let zeros = |out: &mut Vec<f32>, n: usize| out.resize(out.len() + n, 0.0);
        for o in 0..c_out {
            let start = out.len();
            for img in dy.chunks(c_out * hw) {
                for row in img[o * hw..(o + 1) * hw].chunks(self.wo) {
                    out.extend_from_slice(row);
                    zeros(out, self.wp - self.wo);
                }
                zeros(out, self.image - self.ho * self.wp);
            }
            // The last image's trailing rows may lie past `m` (or `m` past them).
            out.resize(start + self.m, 0.0);
        }
    }

    /// Where column `j` of the GEMM output belongs in the images `[n, c_out, ho, wo]` (channel
    /// 0): `None` for the padded width's garbage columns and the rounding up to `m`.
    fn destination(&self, j: usize, c_out: usize) -> Option<usize> {
        let (g, rem) = (j / self.image, j % self.image);
        let (oy, ox) = (rem / self.wp, rem % self.wp);
        (g < self.n && oy < self.ho && ox < self.wo)
            .then(|| g * c_out * self.ho * self.wo + oy * self.wo + ox)
    }

    /// Where tap `t = ky k + kx` reads, relative to the output column: `ky wp + kx`.
    fn tap_offsets(&self) -> Vec<usize> {
        let k = self.k;
        (0..k * k).map(|t| t / k * self.wp + t % k).collect()
    }

    /// With [`Engine::Direct`] taps, the convolution of `xp` stored straight into `dst`
    /// (`[n, c_out, ho, wo]`, `bias` and `residual` (`dst`'s shape) added), with no product buffer and no [`gather`]
    /// (Self::gather) pass; `false` (nothing written) for gemm taps.
    fn store_direct(
        &self,
        xp: &[f32],
        taps: &Taps,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        dst: &mut [MaybeUninit<f32>],
    ) -> bool {
        let Some(packed) = &taps.packed else {
            return false;
        };
        let (c_out, m) = (taps.rows, self.m);
        let need = [c_out, self.ho, self.wo]
            .iter()
            .try_fold(self.n, |a, &b| a.checked_mul(b));
        assert!(self.c == taps.cols && need.is_some_and(|n| dst.len() >= n));
        let offs = self.tap_offsets();
        let layout = self.layout(c_out);
        let dims = [self.c, c_out, m];
        let work = self.flop(c_out);
        profile::timed(Kernel::Direct, work, || {
            let extra = (bias, residual);
            avx512::convolve(xp, self.plane, &offs, packed, dims, extra, &layout, dst);
        });
        true
    }

    /// The direct kernel's output layout for `c_out` channels (where each column goes in the
    /// NCHW images), kept per thread for the next call of the same layout: built once per
    /// convolution and thread instead of once per group of images (a vector per 16 columns,
    /// two divisions per column: 1-2 % of a sampling step, `perf`).
    fn layout(&self, c_out: usize) -> Rc<Layout> {
        LAYOUT.with(|kept| {
            let mut kept = kept.borrow_mut();
            if let Some((key, layout)) = &*kept
                && *key == (*self, c_out)
            {
                return Rc::clone(layout);
            }
            let chan = self.ho * self.wo;
            let layout = Rc::new(Layout::from_fn(self.m, chan, |j| {
                self.destination(j, c_out)
            }));
            *kept = Some(((*self, c_out), Rc::clone(&layout)));
            layout
        })
    }

    /// Writes the GEMM output `acc` (`[c_out, m]`) into every value of `dst` (`[n, c_out, ho,
    /// wo]`), adding `bias[o]` to channel `o` and the `residual` (`dst`'s shape) when given.
    pub(crate) fn gather(
        &self,
        acc: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        dst: &mut [MaybeUninit<f32>],
    ) {
        let (hw, wo) = (self.ho * self.wo, self.wo);
        let c_out = acc.len() / self.m;
        for (g, img) in dst.chunks_mut(c_out * hw).enumerate() {
            for (o, plane) in img.chunks_mut(hw).enumerate() {
                let b = bias.map_or(0.0, |b| b[o]);
                let src = &acc[o * self.m + g * self.image..];
                let at = (g * c_out + o) * hw;
                for (y, (row, src)) in plane.chunks_mut(wo).zip(src.chunks(self.wp)).enumerate() {
                    match residual {
                        Some(res) => {
                            let res = &res[at + y * wo..][..row.len()];
                            for ((d, &s), &r) in row.iter_mut().zip(src).zip(res) {
                                d.write(s + b + r);
                            }
                        }
                        None => row.iter_mut().zip(src).for_each(|(d, &s)| {
                            d.write(s + b);
                        }),
                    }
                }
            }
        }
    }

    /// The FLOPs of one pass of the convolution with `c_out` output channels over the group:
    /// `2 c c_out k^2` per output value (what every pass's counter adds).
    fn flop(&self, c_out: usize) -> u64 {
        flop(&[self.c, c_out, self.k * self.k, self.n, self.ho, self.wo])
    }

    /// [`convolve_into`](Self::convolve_into), counted as [`Kernel::GemmTaps`].
    fn timed_convolve_into(&self, xp: &[f32], taps: &Taps, acc: &mut Vec<f32>) {
        let work = self.flop(taps.rows);
        profile::timed(Kernel::GemmTaps, work, || self.convolve_into(xp, taps, acc));
    }

    /// `acc[o, j] = sum_(ky, kx) sum_i w(ky, kx)[o, i] xp[i, j + ky wp + kx]` for `j < m`:
    /// the convolution of the padded images `xp` (from [`pad_into`](Self::pad_into)) in the
    /// GEMM output layout, one gemm per tap ([`Engine::Gemm`]; [`Engine::Direct`] taps go
    /// through `store_direct`); `acc` is resized to `[taps.rows, m]` (its allocation reused)
    /// and every value overwritten.
    ///
    /// # Shapes
    /// - `xp`: `[c, plane]`; `acc`: `[taps.rows, m]`
    pub(crate) fn convolve_into(&self, xp: &[f32], taps: &Taps, acc: &mut Vec<f32>) {
        let (c, m, c_out) = (self.c, self.m, taps.rows);
        assert!(
            c.checked_mul(self.plane).is_some_and(|n| xp.len() >= n)
                && c == taps.cols
                && c > 0
                && c_out > 0
        );
        acc.resize(c_out * m, 0.0);
        let offsets = || (0..self.k).flat_map(|ky| (0..self.k).map(move |kx| (ky, kx)));
        let (w, w_rs, w_cs) = (taps.w, taps.rs, taps.cs);
        for (ky, kx) in offsets() {
            let (w0, x0) = (taps.offset(ky, kx), ky * self.wp + kx);
            // Bounds of every element the GEMM reads or writes.
            assert!(
                last_index(w0, [(c_out - 1, w_rs), (c - 1, w_cs)]).is_some_and(|i| i < w.len())
            );
            assert!(
                last_index(x0 + m, [(c - 1, self.plane), (0, 0)]).is_some_and(|i| i <= xp.len())
            );
            // SAFETY: `acc` is `[c_out, m]` row-major (checked by construction); the
            // kernel view `[c_out, c]` and the shifted image view `[c, m]` lie inside
            // `w` and `xp` (the asserts above: the largest index of each is in bounds);
            // nothing aliases `acc`. gemm reads `acc` only when `read_dst` (after the
            // first tap, which wrote every entry).
            unsafe {
                gemm::gemm(
                    c_out,
                    m,
                    c,
                    acc.as_mut_ptr(),
                    1,
                    m as isize,
                    ky + kx > 0,
                    w.as_ptr().add(w0),
                    w_cs as isize,
                    w_rs as isize,
                    xp.as_ptr().add(x0),
                    1,
                    self.plane as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        }
    }

    /// `dw[tap(ky, kx) + o dw_rs + i dw_cs] (+)= sum_j dy[o, j] xp[i, j + ky wp + kx]`: the
    /// weight gradient of the group's images, added to `dw` when `accumulate`.
    ///
    /// # Shapes
    /// - `xt`: `[plane, c]` (from [`pad_t`](Self::pad_t)); `dy`: `[c_out, m]` (from
    ///   [`spread`](Self::spread))
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn correlate(
        &self,
        xt: &[f32],
        dy: &[f32],
        c_out: usize,
        dw: &mut [f32],
        [dw_rs, dw_cs]: [usize; 2],
        tap: impl Fn(usize, usize) -> usize,
        accumulate: bool,
    ) {
        let (c, m) = (self.c, self.m);
        assert!(c_out.checked_mul(m).is_some_and(|n| dy.len() >= n) && c > 0 && c_out > 0);
        for ky in 0..self.k {
            for kx in 0..self.k {
                let (w0, x0) = (tap(ky, kx), ky * self.wp + kx);
                let dw_last = last_index(w0, [(c_out - 1, dw_rs), (c - 1, dw_cs)]);
                assert!(dw_last.is_some_and(|i| i < dw.len()));
                let xt_end = x0.checked_add(m).and_then(|v| v.checked_mul(c));
                assert!(xt_end.is_some_and(|e| e <= xt.len()));
                // SAFETY: the `[c_out, c]` view of `dw` at `w0` with strides (dw_rs, dw_cs),
                // the `[m, c]` view of `xt` at position `x0` (row stride `c`; its last entry
                // is `(x0 + m) c - 1`) and `dy` (`[c_out, m]` row-major) are in bounds (the
                // asserts above); `dw` is not read through any other pointer during the call.
                // Distinct taps write distinct entries of `dw`.
                unsafe {
                    gemm::gemm(
                        c_out,
                        c,
                        m,
                        dw.as_mut_ptr().add(w0),
                        dw_cs as isize,
                        dw_rs as isize,
                        accumulate,
                        dy.as_ptr(),
                        1,
                        m as isize,
                        xt.as_ptr().add(x0 * c),
                        1,
                        c as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
        }
    }
}

/// How [`Padded::convolve`] multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// The register-blocked AVX-512 kernel of [`avx512`].
    Direct,
    /// One gemm call per tap, accumulated.
    Gemm,
}

impl Engine {
    /// [`Engine::Direct`] where the CPU has AVX-512F, else [`Engine::Gemm`].
    pub(crate) fn best() -> Self {
        if avx512::available() {
            Self::Direct
        } else {
            Self::Gemm
        }
    }
}

/// The kernel of a stride-1 convolution as [`Padded::convolve`] reads it: entry `(o, i)` of
/// tap `(ky, kx)` is `w[offset(ky, kx) + o rs + i cs]`, packed once per call (or kept from
/// call to call, [`Taps::forward_kept`]) for
/// [`Engine::Direct`].
pub(crate) struct Taps<'a> {
    w: &'a [f32],
    rs: usize,
    cs: usize,
    k: usize,
    flipped: bool,
    /// Output channels.
    rows: usize,
    /// Input channels.
    cols: usize,
    packed: Option<Arc<Vec<f32>>>,
}

impl<'a> Taps<'a> {
    /// A layer's kernel `w` (`[c_out, c_in, k, k]`) for its forward pass.
    pub(crate) fn forward(w: &'a [f32], c_out: usize, c_in: usize, k: usize, e: Engine) -> Self {
        Self::new(w, [c_out, c_in], [c_in * k * k, k * k], k, false, e)
    }

    /// The flipped, transposed kernel of a layer (`w`: `[c_out, c_in, k, k]`) for its input
    /// gradient: entry `(i, o)` of tap `(ky, kx)` is `w[o, i, k - 1 - ky, k - 1 - kx]`.
    pub(crate) fn flipped(w: &'a [f32], c_out: usize, c_in: usize, k: usize, e: Engine) -> Self {
        Self::new(w, [c_in, c_out], [k * k, c_in * k * k], k, true, e)
    }

    fn new(
        w: &'a [f32],
        [rows, cols]: [usize; 2],
        [rs, cs]: [usize; 2],
        k: usize,
        flipped: bool,
        engine: Engine,
    ) -> Self {
        let mut taps = Self {
            w,
            rs,
            cs,
            k,
            flipped,
            rows,
            cols,
            packed: None,
        };
        if engine == Engine::Direct {
            taps.packed = Some(Arc::new(taps.pack()));
        }
        taps
    }

    /// [`Taps::forward`] with the packed kernel kept from call to call while `owner` (the
    /// tensor holding `w`) comes back unchanged ([`cache::transformed`]: sampling runs every
    /// layer with the same weights at each step; packing was 17 % of a batch-1 MNIST
    /// sampling step by `perf`).
    pub(crate) fn forward_kept(
        w: &'a [f32],
        owner: &FlexTensor,
        [c_out, c_in, k]: [usize; 3],
        e: Engine,
    ) -> Self {
        let mut taps = Self::forward(w, c_out, c_in, k, Engine::Gemm);
        if e == Engine::Direct {
            let packed =
                cache::transformed(w, owner, Transform::Packed, [c_out, c_in], || taps.pack());
            taps.packed = Some(packed);
        }
        taps
    }

    /// The kernel in [`avx512::pack`]'s order.
    fn pack(&self) -> Vec<f32> {
        let k = self.k;
        let at = |o, i, t| {
            let (ky, kx) = (t / k, t % k);
            self.w[self.offset(ky, kx) + o * self.rs + i * self.cs]
        };
        avx512::pack(self.rows, self.cols, k * k, at)
    }

    /// Where tap `(ky, kx)` starts in `w`.
    fn offset(&self, ky: usize, kx: usize) -> usize {
        let k = self.k;
        if self.flipped {
            (k - 1 - ky) * k + (k - 1 - kx)
        } else {
            ky * k + kx
        }
    }
}

/// A group of images (`g.n`) of a stride-1 convolution: `y = conv(x, w) + bias` (`[n, c_out,
/// ho, wo]`, the `residual` added when given), `taps` from [`Taps::forward`]; every value of
/// `dst` is written (it may start uninitialised).
///
/// With `norm` (of these images), of the GroupNorm + activation of `x` instead, applied as
/// the images are padded.
pub(crate) fn forward(
    x: &[f32],
    norm: Option<&Normalisation>,
    taps: &Taps,
    bias: &[f32],
    residual: Option<&[f32]>,
    g: Padded,
    dst: &mut [MaybeUninit<f32>],
) {
    with_scratch(|xp, acc| {
        match norm {
            Some(norm) => g.pad_normalised_into(x, norm, xp),
            None => g.pad_into(x, xp),
        }
        if !g.store_direct(xp, taps, Some(bias), residual, dst) {
            g.timed_convolve_into(xp, taps, acc);
            g.gather(acc, Some(bias), residual, dst);
        }
    });
}

thread_local! {
    /// Each thread's padded images and product, reused from call to call (no fresh pages
    /// to fault in and zero for every group of images).
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = Default::default();
    /// Each thread's last direct-kernel layout and what it was built for
    /// ([`Padded::layout`]).
    static LAYOUT: std::cell::RefCell<Option<LayoutKept>> = const { std::cell::RefCell::new(None) };
}

/// A layout of [`Padded::layout`] with the group layout and output channels it serves.
type LayoutKept = ((Padded, usize), Rc<Layout>);

/// Runs `f` on this thread's scratch buffers (`f` must not call back into this module).
fn with_scratch<R>(f: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> R) -> R {
    SCRATCH.with(|s| {
        let (xp, acc) = &mut *s.borrow_mut();
        f(xp, acc)
    })
}

/// The input gradient of a group of images (`g.n`) of a stride-1 convolution with input
/// layout `g` (`[n, c_in, h, w]`) and output gradient `dy` (`[n, c_out, ho, wo]`): the
/// correlation of `dy`, padded by `k - 1 - pad`, with the flipped, transposed kernel
/// (`taps` from [`Taps::flipped`]); every value of `dst` (`[n, c_in, h, w]`) is written.
pub(crate) fn input_grad(
    dy: &[f32],
    taps: &Taps,
    g: Padded,
    pad: [usize; 4],
    dst: &mut [MaybeUninit<f32>],
) {
    let k = g.k;
    let back = pad.map(|p| k - 1 - p);
    let gd = Padded::new(g.n, taps.cols, g.ho, g.wo, k, back);
    debug_assert_eq!((gd.ho, gd.wo), (g.h, g.w));
    with_scratch(|dyp, acc| {
        gd.pad_into(dy, dyp);
        if !gd.store_direct(dyp, taps, None, None, dst) {
            gd.timed_convolve_into(dyp, taps, acc);
            gd.gather(acc, None, None, dst);
        }
    });
}

/// The weight gradient (`[c_out, c, k, k]`) of a group of images (`g.n`, input `x`, output
/// gradient `dy`: `[n, c_out, ho, wo]`) of a stride-1 convolution, from the position-major
/// padded images: with [`Engine::Direct`] the register-tiled [`avx512::correlate`], else one
/// gemm per tap ([`Padded::correlate`]).
pub(crate) fn weight_grad(x: &[f32], dy: &[f32], g: Padded, c_out: usize, e: Engine) -> Vec<f32> {
    let (k, c) = (g.k, g.c);
    let mut dw = vec![0.0f32; c_out * c * k * k];
    with_scratch(|xt, dys| {
        g.pad_t(x, xt);
        g.spread(dy, c_out, dys);
        match e {
            Engine::Direct => {
                let work = g.flop(c_out);
                profile::timed(Kernel::WeightGrad, work, || {
                    avx512::correlate(xt, &g.tap_offsets(), dys, [c, c_out, g.m], &mut dw);
                });
            }
            Engine::Gemm => {
                let tap = |ky, kx| ky * k + kx;
                let work = g.flop(c_out);
                profile::timed(Kernel::GemmWeightGrad, work, || {
                    g.correlate(xt, dys, c_out, &mut dw, [c * k * k, k * k], tap, false);
                });
            }
        }
    });
    dw
}

/// `base + sum(count * stride)` with checked arithmetic: the last index of a strided view,
/// `None` when it overflows (which every bound check treats as out of bounds).
fn last_index(base: usize, terms: [(usize, usize); 2]) -> Option<usize> {
    terms
        .iter()
        .try_fold(base, |acc, &(n, s)| acc.checked_add(n.checked_mul(s)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::flex_tensor::writable;
    use crate::kernels::test_support::guard;

    /// Reproducible values in roughly [-1, 1].
    fn noise(len: usize, seed: u64) -> Vec<f32> {
        let scale = |v: f32| v / 3.0;
        crate::kernels::test_support::noise(len, seed)
            .into_iter()
            .map(scale)
            .collect()
    }

    /// The definition, in f64: `y[o, oy, ox] = b[o] + sum w[o, i, ky, kx] x[i, oy + ky - top,
    /// ox + kx - left]`.
    #[allow(clippy::too_many_arguments)]
    fn definition(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        [c, h, wd]: [usize; 3],
        c_out: usize,
        k: usize,
        [top, left, bottom, right]: [usize; 4],
    ) -> Vec<f64> {
        let (ho, wo) = (h + top + bottom + 1 - k, wd + left + right + 1 - k);
        let mut y = vec![0.0f64; c_out * ho * wo];
        for o in 0..c_out {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut s = b[o] as f64;
                    for i in 0..c {
                        for ky in 0..k {
                            for kx in 0..k {
                                let (iy, ix) = (oy + ky, ox + kx);
                                if iy < top || ix < left || iy - top >= h || ix - left >= wd {
                                    continue;
                                }
                                let xv = x[(i * h + iy - top) * wd + ix - left] as f64;
                                s += w[((o * c + i) * k + ky) * k + kx] as f64 * xv;
                            }
                        }
                    }
                    y[(o * ho + oy) * wo + ox] = s;
                }
            }
        }
        y
    }

    /// Every engine this CPU runs.
    fn engines() -> impl Iterator<Item = Engine> {
        [Engine::Gemm, Engine::Direct]
            .into_iter()
            .filter(|&e| e == Engine::Gemm || avx512::available())
    }

    /// `([images, c_in, h, w], c_out, k, pad)`: 3x3 same, 1x1, a 1x1 image, a 5x5 kernel
    /// with uneven padding, valid 3x3, odd sizes, groups of 1 to 4 images.
    const CASES: [([usize; 4], usize, usize, [usize; 4]); 7] = [
        ([1, 3, 7, 5], 4, 3, [1, 1, 1, 1]),
        ([3, 1, 1, 1], 2, 3, [1, 1, 1, 1]),
        ([2, 5, 6, 9], 3, 1, [0, 0, 0, 0]),
        ([1, 2, 8, 5], 3, 5, [1, 2, 0, 4]),
        ([4, 2, 8, 5], 3, 5, [1, 2, 0, 4]),
        ([2, 4, 5, 5], 2, 3, [0, 0, 0, 0]),
        ([2, 17, 28, 28], 33, 3, [1, 1, 1, 1]),
    ];

    /// Rows and images share their padding: 29 columns per row and 29 rows per image for a
    /// 28x28 image with padding 1, `w + max(left, right)` columns and `h + max(top, bottom)`
    /// rows for uneven padding.
    #[test]
    fn neighbours_share_their_padding() {
        let same = Padded::new(2, 1, 28, 28, 3, [1, 1, 1, 1]);
        assert_eq!(
            (same.wp, same.image, same.ho, same.wo),
            (29, 29 * 29, 28, 28)
        );
        assert_eq!(same.m, (29 * 29 + 28 * 29usize).next_multiple_of(16));
        let uneven = Padded::new(1, 1, 8, 5, 5, [1, 2, 0, 4]);
        assert_eq!((uneven.wp, uneven.image), (5 + 4, (8 + 1) * (5 + 4)));
    }

    /// The position-major copy holds what the channel-major one does, transposed, for channel
    /// counts below, at and past 16 and widths below and past 16; the value-by-value
    /// transpose (CPUs without AVX-512) writes the same buffer as the vector one; reusing an
    /// allocation leaves no stale values.
    #[test]
    fn position_major_copy_is_the_transpose() {
        let cases = CASES.iter().map(|&(d, _, k, p)| (d, k, p));
        let more = [
            ([3, 16, 7, 7], 3, [1, 1, 1, 1]),
            ([2, 48, 16, 17], 3, [1, 1, 1, 1]),
        ];
        for (n, ([imgs, c, h, w], k, pad)) in cases.chain(more).enumerate() {
            let x = noise(imgs * c * h * w, 400 + n as u64);
            let g = Padded::new(imgs, c, h, w, k, pad);
            let (mut xp, mut xt) = (Vec::new(), vec![f32::NAN; 5 * c * g.plane]);
            g.pad_into(&x, &mut xp);
            g.pad_t(&x, &mut xt);
            // The value-by-value transpose (CPUs without AVX-512) writes the same buffer.
            let mut by_value = vec![f32::NAN; 3];
            g.pad_t_by(&x, &mut by_value, false);
            let same = by_value
                .iter()
                .zip(&xt)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && by_value.len() == xt.len(), "case {n}: by value");
            assert_eq!(xt.len(), c * g.plane, "case {n}");
            for p in 0..g.plane {
                for i in 0..c {
                    let (a, e) = (xt[p * c + i], xp[i * g.plane + p]);
                    assert!(
                        a.to_bits() == e.to_bits(),
                        "case {n} p {p} i {i}: {a} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn forward_equals_the_definition() {
        for (n, ([imgs, c, h, w], c_out, k, pad)) in CASES.into_iter().enumerate() {
            let x = noise(imgs * c * h * w, 1 + n as u64);
            let wt = noise(c_out * c * k * k, 100 + n as u64);
            let b = noise(c_out, 200 + n as u64);
            let g = Padded::new(imgs, c, h, w, k, pad);
            let want: Vec<f64> = x
                .chunks(c * h * w)
                .flat_map(|x| definition(x, &wt, &b, [c, h, w], c_out, k, pad))
                .collect();
            // Without and with a residual added (a ResBlock's skip connection).
            let res = noise(want.len(), 300 + n as u64);
            for (engine, residual) in engines().flat_map(|e| [(e, None), (e, Some(&res[..]))]) {
                let taps = Taps::forward(&wt, c_out, c, k, engine);
                let mut buf = guard::buffer(imgs * c_out * g.ho * g.wo, f32::NAN);
                // SAFETY: the kernels write only initialised values.
                let dst = unsafe { writable(guard::inner(&mut buf)) };
                forward(&x, None, &taps, &b, residual, g, dst);
                guard::check(&buf, &format!("case {n} {engine:?} forward"));
                let y = guard::inner(&mut buf);
                assert_eq!(y.len(), want.len());
                for (i, (a, e)) in y.iter().zip(&want).enumerate() {
                    let e = e + residual.map_or(0.0, |r| r[i] as f64);
                    assert!(
                        (*a as f64 - e).abs() < 1e-4,
                        "case {n} {engine:?} residual {}: {a} vs {e}",
                        residual.is_some()
                    );
                }
            }
        }
    }

    /// Both gradients against their definitions, in f64:
    /// `dx[i, iy, ix] = sum w[o, i, ky, kx] dy[o, iy + top - ky, ix + left - kx]` and
    /// `dw[o, i, ky, kx] = sum dy[o, oy, ox] x[i, oy + ky - top, ox + kx - left]`.
    #[test]
    fn gradients_equal_the_definition() {
        for (n, ([imgs, c, h, w], c_out, k, pad)) in CASES.into_iter().enumerate() {
            let [top, left, _, _] = pad;
            let x = noise(imgs * c * h * w, 11 + n as u64);
            let wt = noise(c_out * c * k * k, 111 + n as u64);
            let g = Padded::new(imgs, c, h, w, k, pad);
            let (ho, wo) = (g.ho, g.wo);
            let dy = noise(imgs * c_out * ho * wo, 211 + n as u64);
            let dxs: Vec<(Engine, Vec<f32>)> = engines()
                .map(|engine| {
                    let mut dx_buf = guard::buffer(imgs * c * h * w, f32::NAN);
                    let taps = Taps::flipped(&wt, c_out, c, k, engine);
                    // SAFETY: the kernels write only initialised values.
                    let dst = unsafe { writable(guard::inner(&mut dx_buf)) };
                    input_grad(&dy, &taps, g, pad, dst);
                    guard::check(&dx_buf, &format!("case {n} {engine:?} input gradient"));
                    (engine, guard::inner(&mut dx_buf).to_vec())
                })
                .collect();
            // The weight gradient of the group, accumulated twice.
            let mut dw_buf = guard::buffer(wt.len(), f32::NAN);
            let kk = k * k;
            let (mut xt, mut dys) = (Vec::new(), vec![f32::NAN; 3]);
            g.pad_t(&x, &mut xt);
            g.spread(&dy, c_out, &mut dys);
            let tap = |ky, kx| ky * k + kx;
            for accumulate in [false, true] {
                let dw = guard::inner(&mut dw_buf);
                g.correlate(&xt, &dys, c_out, dw, [c * kk, kk], tap, accumulate);
            }
            guard::check(&dw_buf, &format!("case {n} weight gradient"));
            let dw = guard::inner(&mut dw_buf).to_vec();
            let once: Vec<(Engine, Vec<f32>)> = engines()
                .map(|e| (e, weight_grad(&x, &dy, g, c_out, e)))
                .collect();
            let mut want_dx = vec![0.0f64; imgs * c * h * w];
            let mut want_dw = vec![0.0f64; dw.len()];
            for (img, o) in (0..imgs).flat_map(|img| (0..c_out).map(move |o| (img, o))) {
                for i in 0..c {
                    for ky in 0..k {
                        for kx in 0..k {
                            let q = ((o * c + i) * k + ky) * k + kx;
                            for oy in 0..ho {
                                for ox in 0..wo {
                                    let (iy, ix) = (oy + ky, ox + kx);
                                    if iy < top || ix < left || iy - top >= h || ix - left >= w {
                                        continue;
                                    }
                                    let p = ((img * c + i) * h + iy - top) * w + ix - left;
                                    let d = dy[((img * c_out + o) * ho + oy) * wo + ox] as f64;
                                    want_dx[p] += wt[q] as f64 * d;
                                    want_dw[q] += 2.0 * x[p] as f64 * d;
                                }
                            }
                        }
                    }
                }
            }
            for (engine, dx) in dxs {
                for (p, (a, e)) in dx.iter().zip(&want_dx).enumerate() {
                    assert!(
                        (*a as f64 - e).abs() < 1e-4,
                        "case {n} {engine:?} dx[{p}]: {a}, {e}"
                    );
                }
            }
            for (q, (a, e)) in dw.iter().zip(&want_dw).enumerate() {
                let tol = 1e-4 * (1.0 + e.abs());
                assert!((*a as f64 - e).abs() < tol, "case {n} dw[{q}]: {a} vs {e}");
            }
            for (engine, once) in once {
                for (q, (a, e)) in once.iter().zip(&want_dw).enumerate() {
                    let a = 2.0 * *a as f64; // one pass, against the doubled definition
                    assert!(
                        (a - e).abs() < 1e-4 * (1.0 + e.abs()),
                        "case {n} {engine:?} dw[{q}]: {a}, {e}"
                    );
                }
            }
        }
    }
}
