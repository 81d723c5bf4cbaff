//! F(4x4, 3x3)'s input transform `V = B^T d B` and output transform `Y = A^T M A` in AVX2 +
//! FMA registers, eight tiles to a vector, for CPUs without AVX-512 (where they were measured;
//! see [`used`]).
//!
//! The run-based transforms of [`f43`](super::f43) gather each tile's 36 values into runs and
//! then make two passes over them: three writes of every value (nearly 1 MiB of scratch per
//! channel at the MNIST U-Net's 28x28 level, batch 64). Here each channel's images are copied
//! once into zero-padded planes, and eight tiles at a time (in tile order `t`, across tile rows
//! and images alike) have their six 6-value rows loaded, transposed to one vector per column
//! (`d[k][q]` for eight tiles), transformed along the rows and down the columns in registers
//! and stored straight into `V`; the output transform reads `M`'s 36 runs eight tiles at a
//! time the same way and writes whole 4x4 tiles into a plane per channel.

use std::arch::x86_64::*;

use super::Tiles;
use super::f43::grid;

/// Whether [`input_tiles`] runs: AVX2 and FMA, and no AVX-512 (the run-based transform was
/// not measured against it there).
pub(super) fn used() -> bool {
    #[cfg(test)]
    if let Some(forced) = FORCED.get() {
        return forced
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma");
    }
    static USED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USED.get_or_init(|| {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && !super::super::avx512::available()
    })
}

#[cfg(test)]
thread_local! {
    /// The test thread's choice of transforms, overriding [`used`]'s (`Some(true)`: these,
    /// wherever the CPU has AVX2 and FMA, AVX-512 hosts too): read on the thread that calls the
    /// transforms, so the kernels' tests on other threads keep the default.
    pub(super) static FORCED: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// The padded planes' geometry for tiling `g`: `[rows, row length, values per channel]`
/// (`b` planes, plus eight values of slack for the last tile's 8-value row loads).
pub(super) fn planes(g: Tiles) -> [usize; 3] {
    let [th, tw] = grid(g);
    let (hp, wp) = (4 * th + 2, 4 * tw + 2);
    [hp, wp, g.b * hp * wp + 8]
}

/// Offset of each tile's top-left value in planes of `[hp, wp]` values (the padded input's,
/// [`planes`], or the output's, `[4 th, 4 tw]`), in tile order.
pub(super) fn tile_index(g: Tiles, [hp, wp]: [usize; 2]) -> Vec<usize> {
    let [th, tw] = grid(g);
    let mut index = Vec::with_capacity(g.b * th * tw);
    for img in 0..g.b {
        for ty in 0..th {
            for tx in 0..tw {
                index.push(img * hp * wp + 4 * ty * wp + 4 * tx);
            }
        }
    }
    index
}

/// Copies channel `c`'s planes of `x` (`[b, c_in, h, w]`) into `padded` (at least
/// [`planes`]`(g)[2]` values), zero-padded by `g`'s tiling; `zeroed`: the padding is zero
/// already (the last call's tiling was `g`), so only the images' values are copied.
pub(super) fn pad_planes(x: &[f32], g: Tiles, c: usize, padded: &mut [f32], zeroed: bool) {
    let [hp, wp, n] = planes(g);
    let hw = g.h * g.w;
    let padded = &mut padded[..n];
    if zeroed {
        for img in 0..g.b {
            let plane = &x[(img * g.c + c) * hw..][..hw];
            for (iy, src) in plane.chunks_exact(g.w).enumerate() {
                padded[(img * hp + iy + g.top) * wp + g.left..][..g.w].copy_from_slice(src);
            }
        }
        return;
    }
    for img in 0..g.b {
        let plane = &x[(img * g.c + c) * hw..][..hw];
        for r in 0..hp {
            let dst = &mut padded[(img * hp + r) * wp..][..wp];
            let iy = r.wrapping_sub(g.top);
            if iy < g.h {
                dst[..g.left].fill(0.0);
                dst[g.left..g.left + g.w].copy_from_slice(&plane[iy * g.w..][..g.w]);
                dst[g.left + g.w..].fill(0.0);
            } else {
                dst.fill(0.0);
            }
        }
    }
    padded[g.b * hp * wp..].fill(0.0);
}

/// `V = B^T d B` for every tile of `index` (from [`tile_index`]) of the padded planes `padded`
/// (row length `wp`): element `e` of tile `t` goes to `v[e stride + t]`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `padded` holds [`planes`]`(g)[2]` values for the tiling `index`
/// came from; `v[e stride + t]` is writable for `e < 36`, `t < index.len()`, and nothing else
/// reads or writes those values during the call.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn input_tiles(
    padded: &[f32],
    index: &[usize],
    wp: usize,
    v: *mut f32,
    stride: usize,
) {
    let n_all = index.len();
    let p = padded.as_ptr();
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut t0 = 0;
    // Sixteen tiles at a time, so that each element's stores fill whole cache lines.
    while t0 < n_all {
        let n = (n_all - t0).min(16);
        // Lanes past the last tile repeat its offset (their values are not stored).
        let at: [usize; 16] = std::array::from_fn(|l| index[t0 + l.min(n - 1)]);
        // rows[h][j][k] = (d B)[k, j] for the eight tiles of half `h`.
        let mut rows = [[[_mm256_setzero_ps(); 6]; 6]; 2];
        for (h, rows) in rows.iter_mut().enumerate() {
            for k in 0..6 {
                // SAFETY: each tile's row `k` (eight values from its offset) lies inside
                // `padded` (its slack), by the caller's contract.
                let d = unsafe { columns(std::array::from_fn(|l| p.add(at[8 * h + l] + k * wp))) };
                for (row, o) in rows.iter_mut().zip(bt(d)) {
                    row[k] = o;
                }
            }
        }
        let masks = [n, n.saturating_sub(8)]
            .map(|m| _mm256_cmpgt_epi32(_mm256_set1_epi32(m.min(8) as i32), lanes));
        for (j, (r0, r1)) in rows[0].iter().zip(&rows[1]).enumerate() {
            let halves = [bt(*r0), bt(*r1)];
            for i in 0..6 {
                for (h, o) in halves.iter().enumerate() {
                    let m = n.saturating_sub(8 * h).min(8);
                    // SAFETY: tiles `t0 + 8 h..` (`m` of them) of element `i 6 + j`, in
                    // bounds and this call's alone by the caller's contract; the mask stores
                    // only the first `m` lanes.
                    unsafe {
                        let dst = v.add((i * 6 + j) * stride + t0 + 8 * h);
                        if m == 8 {
                            _mm256_storeu_ps(dst, o[i]);
                        } else if m > 0 {
                            _mm256_maskstore_ps(dst, masks[h], o[i]);
                        }
                    }
                }
            }
        }
        t0 += n;
    }
}

/// `Y = A^T M A + add` for every tile of `index` (from [`tile_index`] for planes of `[4 th, 4
/// tw]`): element `e` of tile `t` is read at `m[e stride + t]`, and the 4x4 tile written to
/// `out` at the tile's offset, in rows of `wq` values.
///
/// # Safety
/// The CPU has AVX2 and FMA; `m[e stride + t]` is readable for `e < 36`, `t < index.len()`;
/// `out` holds the planes `index` came from (`wq = 4 tw`).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn output_tiles(
    m: *const f32,
    stride: usize,
    index: &[usize],
    wq: usize,
    add: f32,
    out: &mut [f32],
) {
    let n_all = index.len();
    let add = _mm256_set1_ps(add);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let o = out.as_mut_ptr();
    let mut t0 = 0;
    while t0 < n_all {
        let n = (n_all - t0).min(8);
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
        // s[a][j] = (A^T M)[a, j] for the eight tiles.
        let mut s = [[_mm256_setzero_ps(); 6]; 4];
        for j in 0..6 {
            // SAFETY: tiles `t0..t0 + n` of element `i 6 + j`, readable by the contract (the
            // mask loads only those).
            let col: [__m256; 6] = std::array::from_fn(|i| unsafe {
                let src = m.add((i * 6 + j) * stride + t0);
                if n == 8 {
                    _mm256_loadu_ps(src)
                } else {
                    _mm256_maskload_ps(src, mask)
                }
            });
            for (sa, y) in s.iter_mut().zip(at(col)) {
                sa[j] = y;
            }
        }
        for (a, sa) in s.iter().enumerate() {
            let y = at(*sa).map(|v| _mm256_add_ps(v, add));
            let quads = quads(y);
            for l in 0..n {
                let q = if l < 4 {
                    _mm256_castps256_ps128(quads[l])
                } else {
                    _mm256_extractf128_ps::<1>(quads[l - 4])
                };
                let at = index[t0 + l] + a * wq;
                assert!(at + 4 <= out.len(), "a tile inside the output planes");
                // SAFETY: four values at `at`, in bounds (just asserted).
                unsafe { _mm_storeu_ps(o.add(at), q) };
            }
        }
        t0 += n;
    }
}

/// Four vectors of eight lanes, transposed to quads: lane `l`'s four values are the low half
/// of `quads[l]` for `l < 4`, the high half of `quads[l - 4]` otherwise (two in-lane 4x4
/// transposes: `quads[q]` holds value `q` of four rows in each half when the vectors are rows
/// of two 4-value halves).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn quads(y: [__m256; 4]) -> [__m256; 4] {
    let u0 = _mm256_unpacklo_ps(y[0], y[1]);
    let u1 = _mm256_unpackhi_ps(y[0], y[1]);
    let u2 = _mm256_unpacklo_ps(y[2], y[3]);
    let u3 = _mm256_unpackhi_ps(y[2], y[3]);
    [
        _mm256_shuffle_ps::<0x44>(u0, u2),
        _mm256_shuffle_ps::<0xEE>(u0, u2),
        _mm256_shuffle_ps::<0x44>(u1, u3),
        _mm256_shuffle_ps::<0xEE>(u1, u3),
    ]
}

/// `y_a = (A^T m)_a` on vectors, `a = 0..4`: the same sums as [`f43`](super::f43)'s runs.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn at(m: [__m256; 6]) -> [__m256; 4] {
    let s12 = _mm256_add_ps(m[1], m[2]);
    let s34 = _mm256_add_ps(m[3], m[4]);
    let d12 = _mm256_sub_ps(m[1], m[2]);
    let d34 = _mm256_sub_ps(m[3], m[4]);
    let s = _mm256_set1_ps;
    [
        _mm256_add_ps(_mm256_add_ps(m[0], s12), s34),
        _mm256_fmadd_ps(s(2.0), d34, d12),
        _mm256_fmadd_ps(s(4.0), s34, s12),
        _mm256_add_ps(_mm256_fmadd_ps(s(8.0), d34, d12), m[5]),
    ]
}

/// The first six values from each of eight pointers, transposed: `d[q]` holds value `q` of
/// row `l` in lane `l`.
///
/// # Safety
/// AVX2; each pointer reads eight values.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn columns(r: [*const f32; 8]) -> [__m256; 6] {
    // a[l] = [r_l[0..4] | r_(l+4)[0..4]], b[l] the same of values 4..8: in-lane transposes of
    // four of them give the columns with lanes in row order.
    // SAFETY: eight values from each pointer, by the contract.
    let (a, b) = unsafe {
        (
            [0, 1, 2, 3].map(|l| half(r[l], r[l + 4])),
            [0, 1, 2, 3].map(|l| half(r[l].add(4), r[l + 4].add(4))),
        )
    };
    // Value `q < 4` of the rows is `quads(a)[q]`, value `4 + q` is `quads(b)[q]` (the
    // unused unpacks of `b` compile away).
    let (a, b) = (quads(a), quads(b));
    [a[0], a[1], a[2], a[3], b[0], b[1]]
}

/// `[lo[0..4] | hi[0..4]]`.
///
/// # Safety
/// AVX; four values readable at each pointer.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn half(lo: *const f32, hi: *const f32) -> __m256 {
    // SAFETY: by the contract.
    unsafe { _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(_mm_loadu_ps(lo)), _mm_loadu_ps(hi)) }
}

/// `out_j = (B^T d)_j` on vectors, the same sums as [`f43`](super::f43)'s runs.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn bt(d: [__m256; 6]) -> [__m256; 6] {
    let s = _mm256_set1_ps;
    let (four, five, two) = (s(4.0), s(5.0), s(2.0));
    let o0 = _mm256_add_ps(_mm256_fmsub_ps(four, d[0], _mm256_mul_ps(five, d[2])), d[4]);
    let a = _mm256_fnmadd_ps(four, d[2], d[4]);
    let b = _mm256_fnmadd_ps(four, d[1], d[3]);
    let a2 = _mm256_sub_ps(d[4], d[2]);
    let b2 = _mm256_mul_ps(two, _mm256_sub_ps(d[3], d[1]));
    let o5 = _mm256_add_ps(_mm256_fmsub_ps(four, d[1], _mm256_mul_ps(five, d[3])), d[5]);
    [
        o0,
        _mm256_add_ps(a, b),
        _mm256_sub_ps(a, b),
        _mm256_add_ps(a2, b2),
        _mm256_sub_ps(a2, b2),
        o5,
    ]
}
