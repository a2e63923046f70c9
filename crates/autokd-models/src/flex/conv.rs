//! 2-D convolution on the `flex` backend, computed directly on NCHW data.
//!
//! burn-flex 0.22 runs every 2-D convolution through its 3-D path: it copies the input to NHWC
//! (one thread), builds im2col tiles of 512 output positions, multiplies each tile with the
//! weight into a fresh buffer and scatters the result back to NCHW. Autodiff then computes the
//! input gradient as a transposed convolution and the weight gradient as a convolution whose
//! kernel is the whole output, each through the same machinery. At resnet20's shapes that is
//! 2–3× slower than PyTorch forward and 3–4× slower forward + backward (`autokd bench ops`).
//!
//! Here, for convolutions with one group and no dilation (every convolution of the CIFAR
//! ResNets, WRNs and VGGs, and the dense ones of MobileNetV2 and ShuffleNetV2), each image is
//! lowered to its patch matrix `col` (`[C·KH·KW, OH·OW]`, the layout of Caffe's im2col, which for
//! a 1×1 stride-1 convolution is the image itself) and one gemm writes `W · col` straight into
//! the image's `[O, OH·OW]` block of the NCHW output. Images run in parallel on rayon's pool,
//! each with its own patch buffer, which stays in cache. The backward pass uses the same pieces:
//! the input gradient is `Wᵀ · dY_b` folded back onto the image (col2im), the weight gradient is
//! `Σ_b dY_b · col_bᵀ`, with the patch matrix recomputed rather than stored. Depthwise
//! convolutions (one group per channel) are computed plane by plane without a matrix product
//! ([`depthwise`]). Every result is deterministic: no sum depends on how rayon splits the work.
//!
//! [`conv2d`] takes this path when every tensor lives on `flex` (with or without autodiff, the
//! latter with burn's default no-checkpointing strategy) and is `f32`; everything else goes
//! through burn's `conv2d`. Tests compare outputs and gradients with a plain f64 reference.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::ModuleOps;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::ops::ConvOptions;
use rayon::prelude::*;

use super::{AdFlex, AdPrimitive, f32_data, flex_tensor};

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    batch: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
    /// One group per channel (`groups = C = O`, weight `[C, 1, KH, KW]`) instead of one group.
    depthwise: bool,
}

impl Geometry {
    /// The geometry of `x ⋆ weight`, or `None` when this module does not handle it.
    fn new(x: [usize; 4], weight: [usize; 4], options: &ConvOptions<2>) -> Option<Self> {
        let [batch, c, h, w] = x;
        let [o, ci, kh, kw] = weight;
        let depthwise = options.groups == c && o == c && ci == 1 && c > 1;
        if !(options.groups == 1 && ci == c || depthwise) || options.dilation != [1, 1] {
            return None;
        }
        let [(pt, pb), (pl, pr)] = options.padding;
        let [sh, sw] = options.stride;
        if sh == 0 || sw == 0 || kh == 0 || kw == 0 {
            return None;
        }
        let (hp, wp) = (h + pt + pb, w + pl + pr);
        if hp < kh || wp < kw {
            return None;
        }
        let g = Self {
            batch,
            c,
            h,
            w,
            o,
            kh,
            kw,
            sh,
            sw,
            ph: pt,
            pw: pl,
            oh: (hp - kh) / sh + 1,
            ow: (wp - kw) / sw + 1,
            depthwise,
        };
        (g.batch > 0 && g.c > 0 && g.o > 0).then_some(g)
    }

    /// The weight's shape.
    fn weight_shape(&self) -> [usize; 4] {
        let per_group = if self.depthwise { 1 } else { self.c };
        [self.o, per_group, self.kh, self.kw]
    }

    /// Rows of the patch matrix.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output positions per image.
    fn p(&self) -> usize {
        self.oh * self.ow
    }

    fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    /// A 1×1 stride-1 convolution without padding: the patch matrix is the image.
    fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.oh == self.h
            && self.ow == self.w
    }

    /// The output positions `ox` of one kernel column `kx` whose input column is inside the
    /// image, as `lo..hi`, for stride 1.
    fn valid_cols(&self, kx: usize) -> (usize, usize) {
        // ix = ox + kx - pw must lie in 0..w.
        let hi = (self.w + self.pw).saturating_sub(kx).min(self.ow);
        let lo = self.pw.saturating_sub(kx).min(hi);
        (lo, hi)
    }

    /// The input row of output row `oy` and kernel row `ky`, if inside the image.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.sh + ky)
            .checked_sub(self.ph)
            .filter(|&iy| iy < self.h)
    }

    /// The input column of output column `ox` and kernel column `kx`, if inside the image.
    fn input_col(&self, ox: usize, kx: usize) -> Option<usize> {
        (ox * self.sw + kx)
            .checked_sub(self.pw)
            .filter(|&ix| ix < self.w)
    }
}

/// Fills `col` (`[C·KH·KW, OH·OW]`) with the patches of one image `x` (`[C, H, W]`).
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let (p, hw) = (g.p(), g.h * g.w);
    for (r, row) in col.chunks_exact_mut(p).enumerate() {
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let plane = &x[ci * hw..(ci + 1) * hw];
        if g.sh == 1 && g.sw == 1 && g.ow == g.w {
            shifted_row(g, plane, row, ky, kx);
            continue;
        }
        for (oy, dst) in row.chunks_exact_mut(g.ow).enumerate() {
            let Some(iy) = g.input_row(oy, ky) else {
                dst.fill(0.0);
                continue;
            };
            let src = &plane[iy * g.w..(iy + 1) * g.w];
            if g.sw == 1 {
                let (lo, hi) = g.valid_cols(kx);
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                if lo < hi {
                    let shift = lo + kx - g.pw;
                    dst[lo..hi].copy_from_slice(&src[shift..shift + (hi - lo)]);
                }
            } else {
                for (ox, d) in dst.iter_mut().enumerate() {
                    *d = g.input_col(ox, kx).map_or(0.0, |ix| src[ix]);
                }
            }
        }
    }
}

/// Where one row of the patch matrix (kernel offset `ky`, `kx`) of a stride-1 convolution with
/// output rows as wide as the input's ("same" padding) reads the image. Output position `q` then
/// reads the input at `q + shift` for one `shift`, so the row is one shifted copy of the plane,
/// except for the output columns whose input column lies outside the image (there the flat shift
/// wraps into the neighbouring row): one copy of `H·W` floats instead of one per output row.
struct Shifted {
    /// Positions `q0..q1` have their input row inside the image.
    q0: usize,
    q1: usize,
    /// Positions `qa..qb` (within `q0..q1`) have their flat source index inside the plane; the
    /// others of `q0..q1` are border columns.
    qa: usize,
    qb: usize,
    shift: isize,
}

impl Shifted {
    fn new(g: &Geometry, ky: usize, kx: usize) -> Self {
        let (ow, hw) = (g.ow as isize, (g.h * g.w) as isize);
        let oy_lo = g.ph.saturating_sub(ky).min(g.oh);
        let oy_hi = (g.h + g.ph).saturating_sub(ky).clamp(oy_lo, g.oh);
        let (q0, q1) = (oy_lo as isize * ow, oy_hi as isize * ow);
        let shift = (ky as isize - g.ph as isize) * g.w as isize + kx as isize - g.pw as isize;
        let qa = q0.max(-shift).min(q1);
        let qb = q1.min(hw - shift).max(qa);
        let u = |v: isize| v as usize;
        Self {
            q0: u(q0),
            q1: u(q1),
            qa: u(qa),
            qb: u(qb),
            shift,
        }
    }

    /// The plane index of position `q` (for `q` in `qa..qb`).
    fn source(&self, q: usize) -> usize {
        (q as isize + self.shift) as usize
    }

    /// Sets the border columns of `row[q0..q1]` to zero.
    fn zero_borders(&self, g: &Geometry, row: &mut [f32], kx: usize) {
        let (lo, hi) = g.valid_cols(kx);
        if lo > 0 || hi < g.ow {
            for out in row[self.q0..self.q1].chunks_exact_mut(g.ow) {
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
            }
        }
    }
}

/// One patch-matrix row of a "same" stride-1 convolution (see [`Shifted`]).
fn shifted_row(g: &Geometry, plane: &[f32], row: &mut [f32], ky: usize, kx: usize) {
    let s = Shifted::new(g, ky, kx);
    row[..s.q0].fill(0.0);
    row[s.q1..].fill(0.0);
    row[s.q0..s.qa].fill(0.0);
    row[s.qb..s.q1].fill(0.0);
    if s.qa < s.qb {
        let from = s.source(s.qa);
        row[s.qa..s.qb].copy_from_slice(&plane[from..from + (s.qb - s.qa)]);
    }
    s.zero_borders(g, row, kx);
}

/// Adds the patch-matrix gradient `col` back onto one image's gradient `dx` (`[C, H, W]`).
/// `col` is scratch: its border entries of "same" convolutions are zeroed on the way.
fn col2im(g: &Geometry, col: &mut [f32], dx: &mut [f32]) {
    let (p, hw) = (g.p(), g.h * g.w);
    for (r, row) in col.chunks_exact_mut(p).enumerate() {
        let (ci, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
        let plane = &mut dx[ci * hw..(ci + 1) * hw];
        if g.sh == 1 && g.sw == 1 && g.ow == g.w {
            // Border entries belong to no input pixel: zero them, then add one shifted run.
            let s = Shifted::new(g, ky, kx);
            s.zero_borders(g, row, kx);
            if s.qa < s.qb {
                let from = s.source(s.qa);
                let dst = &mut plane[from..from + (s.qb - s.qa)];
                for (d, v) in dst.iter_mut().zip(&row[s.qa..s.qb]) {
                    *d += *v;
                }
            }
            continue;
        }
        for (oy, src) in row.chunks_exact(g.ow).enumerate() {
            let Some(iy) = g.input_row(oy, ky) else {
                continue;
            };
            let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
            if g.sw == 1 {
                let (lo, hi) = g.valid_cols(kx);
                if lo < hi {
                    let shift = lo + kx - g.pw;
                    for (d, s) in dst[shift..shift + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                        *d += *s;
                    }
                }
            } else {
                for (ox, s) in src.iter().enumerate() {
                    if let Some(ix) = g.input_col(ox, kx) {
                        dst[ix] += *s;
                    }
                }
            }
        }
    }
}

std::thread_local! {
    /// Each thread's patch-matrix buffer, reused across images, layers and steps.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `f` on a scratch buffer of `len` floats (contents unspecified): this thread's buffer, or a
/// fresh one if that is in use.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// A matrix operand: its data, row stride and column stride.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

impl Mat<'_> {
    /// Whether every element of a `rows × cols` matrix lies inside `data`.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// How a result matrix is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    RowMajor,
    ColumnMajor,
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`), `a` being `m × k`, `b` `k × n` and `dst`
/// an `m × n` matrix stored in `order`, on the calling thread.
///
/// The one `unsafe` block of autokd: `gemm::gemm` (the kernel burn-flex itself uses) takes raw
/// pointers and strides. The bounds of all three matrices are checked against their slices
/// first, so no read or write leaves them; the checks are invariants of this module's callers.
#[allow(unsafe_code)]
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    dst: &mut [f32],
    order: Order,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst.len() >= m * n && a.holds(m, k) && b.holds(k, n),
        "sgemm: operands smaller than {m}×{k} · {k}×{n}"
    );
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let stride = |s: usize| s as isize;
    let (dst_rs, dst_cs) = match order {
        Order::RowMajor => (n, 1),
        Order::ColumnMajor => (1, m),
    };
    // SAFETY: the assertion above keeps every element `gemm` reads (a: (m-1)·rs + (k-1)·cs,
    // b likewise) and writes (dst: m × n, dense in either order) inside its slice; `dst` is
    // borrowed mutably, so it cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            stride(dst_cs),
            stride(dst_rs),
            accumulate,
            a.data.as_ptr(),
            stride(a.cs),
            stride(a.rs),
            b.data.as_ptr(),
            stride(b.cs),
            stride(b.rs),
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The forward convolution of contiguous `x` (`[B, C, H, W]`) and `weight` (`[O, C, KH, KW]`).
fn forward(g: &Geometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
    if g.depthwise {
        return depthwise::forward(g, x, weight);
    }
    let (k, p) = (g.k(), g.p());
    let wmat = Mat {
        data: weight,
        rs: k,
        cs: 1,
    };
    let mut out = vec![0.0f32; g.batch * g.o * p];
    out.par_chunks_mut(g.o * p)
        .zip(x.par_chunks(g.image()))
        .for_each(|(y, xb)| {
            let run = |cols: &[f32], y: &mut [f32]| {
                let cmat = Mat {
                    data: cols,
                    rs: p,
                    cs: 1,
                };
                sgemm(g.o, p, k, wmat, cmat, y, Order::RowMajor, false);
            };
            if g.pointwise() {
                run(xb, y);
            } else {
                with_scratch(k * p, |col| {
                    im2col(g, xb, col);
                    run(col, y);
                });
            }
        });
    out
}

/// The gradient with respect to the input, from `weight` and the output gradient `dy`.
fn input_grad(g: &Geometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    if g.depthwise {
        return depthwise::input_grad(g, weight, dy);
    }
    let (k, p) = (g.k(), g.p());
    // Wᵀ: element (r, o) is weight[o·K + r].
    let wt = Mat {
        data: weight,
        rs: 1,
        cs: k,
    };
    let mut dx = vec![0.0f32; g.batch * g.image()];
    dx.par_chunks_mut(g.image())
        .zip(dy.par_chunks(g.o * p))
        .for_each(|(dxb, dyb)| {
            let dmat = Mat {
                data: dyb,
                rs: p,
                cs: 1,
            };
            if g.pointwise() {
                sgemm(k, p, g.o, wt, dmat, dxb, Order::RowMajor, false);
            } else {
                with_scratch(k * p, |col| {
                    sgemm(k, p, g.o, wt, dmat, col, Order::RowMajor, false);
                    col2im(g, col, dxb);
                });
            }
        });
    dx
}

/// The gradient with respect to the weight, from the input `x` and the output gradient `dy`.
///
/// Accumulated column-major (as `dWᵀ`) and transposed at the end: gemm's microkernel wants its
/// result column-major, and for a row-major result it would swap the operands and repack the
/// whole patch matrix of every image into its column order: at 64×16×32×32 with 3×3 kernels
/// that took 16.6 ms against 3.0 ms.
fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if g.depthwise {
        return depthwise::weight_grad(g, x, dy);
    }
    let (k, p) = (g.k(), g.p());
    let size = g.o * k;
    // Fixed groups of images, each summed in order on one thread, then the groups' sums in
    // order: the same floats whatever the thread count or scheduling (runs are reproducible,
    // and a resumed training run matches an uninterrupted one bit for bit).
    const GROUP: usize = 4;
    let partials: Vec<Vec<f32>> = x
        .par_chunks(GROUP * g.image())
        .zip(dy.par_chunks(GROUP * g.o * p))
        .map(|(xs, dys)| {
            let mut acc = vec![0.0f32; size];
            for (xb, dyb) in xs.chunks_exact(g.image()).zip(dys.chunks_exact(g.o * p)) {
                let mut run = |cols: &[f32]| {
                    // colᵀ: element (q, r) is col[r·P + q].
                    let ct = Mat {
                        data: cols,
                        rs: 1,
                        cs: p,
                    };
                    let dmat = Mat {
                        data: dyb,
                        rs: p,
                        cs: 1,
                    };
                    sgemm(g.o, k, p, dmat, ct, &mut acc, Order::ColumnMajor, true);
                };
                if g.pointwise() {
                    run(xb);
                } else {
                    with_scratch(k * p, |col| {
                        im2col(g, xb, col);
                        run(col);
                    });
                }
            }
            acc
        })
        .collect();
    // The sum of the groups, and dWᵀ (`[K, O]`) to dW (`[O, K]`).
    let mut dw = vec![0.0f32; size];
    for part in &partials {
        for (r, row) in part.chunks_exact(g.o).enumerate() {
            for (o, &v) in row.iter().enumerate() {
                dw[o * k + r] += v;
            }
        }
    }
    dw
}

/// Depthwise convolutions (MobileNetV2, ShuffleNet): each channel is convolved with its own
/// `KH × KW` filter, plane by plane, with no matrix product. burn-flex has a direct forward pass
/// for these but computes the backward pass through its general transposed and weight-gradient
/// convolutions.
mod depthwise {
    use super::Geometry;
    use rayon::prelude::*;

    /// `Σ a·b` in 16 f32 lanes (so that it vectorizes).
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; 16];
        let (mut ca, mut cb) = (a.chunks_exact(16), b.chunks_exact(16));
        for (x, y) in (&mut ca).zip(&mut cb) {
            for i in 0..16 {
                acc[i] += x[i] * y[i];
            }
        }
        let tail: f32 = ca
            .remainder()
            .iter()
            .zip(cb.remainder())
            .map(|(x, y)| x * y)
            .sum();
        acc.iter().sum::<f32>() + tail
    }

    /// For each kernel offset and output row inside the image: `f(tap, oy, iy, lo..hi, first
    /// input column)`, where output columns `lo..hi` read input columns `first, first + sw, …`.
    fn taps(g: &Geometry, mut f: impl FnMut(usize, usize, usize, (usize, usize), usize)) {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                // Output columns whose input column ox·sw + kx − pw lies in 0..w.
                let lo = g.pw.saturating_sub(kx).div_ceil(g.sw).min(g.ow);
                let hi = (g.w + g.pw)
                    .saturating_sub(kx)
                    .div_ceil(g.sw)
                    .clamp(lo, g.ow);
                if lo == hi {
                    continue;
                }
                let first = lo * g.sw + kx - g.pw;
                for oy in 0..g.oh {
                    if let Some(iy) = g.input_row(oy, ky) {
                        f(ky * g.kw + kx, oy, iy, (lo, hi), first);
                    }
                }
            }
        }
    }

    pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32]) -> Vec<f32> {
        let (p, hw, kk) = (g.p(), g.h * g.w, g.kh * g.kw);
        let mut out = vec![0.0f32; g.batch * g.c * p];
        out.par_chunks_mut(p)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(plane, (y, xp))| {
                let w = &weight[(plane % g.c) * kk..][..kk];
                taps(g, |tap, oy, iy, (lo, hi), first| {
                    let dst = &mut y[oy * g.ow + lo..oy * g.ow + hi];
                    let src = &xp[iy * g.w..(iy + 1) * g.w];
                    let wv = w[tap];
                    if g.sw == 1 {
                        for (d, s) in dst.iter_mut().zip(&src[first..]) {
                            *d += wv * *s;
                        }
                    } else {
                        for (d, s) in dst.iter_mut().zip(src[first..].iter().step_by(g.sw)) {
                            *d += wv * *s;
                        }
                    }
                });
            });
        out
    }

    pub(super) fn input_grad(g: &Geometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
        let (p, hw, kk) = (g.p(), g.h * g.w, g.kh * g.kw);
        let mut dx = vec![0.0f32; g.batch * g.c * hw];
        dx.par_chunks_mut(hw)
            .zip(dy.par_chunks(p))
            .enumerate()
            .for_each(|(plane, (dxp, dyp))| {
                let w = &weight[(plane % g.c) * kk..][..kk];
                taps(g, |tap, oy, iy, (lo, hi), first| {
                    let src = &dyp[oy * g.ow + lo..oy * g.ow + hi];
                    let dst = &mut dxp[iy * g.w..(iy + 1) * g.w];
                    let wv = w[tap];
                    if g.sw == 1 {
                        for (d, s) in dst[first..].iter_mut().zip(src) {
                            *d += wv * *s;
                        }
                    } else {
                        for (d, s) in dst[first..].iter_mut().step_by(g.sw).zip(src) {
                            *d += wv * *s;
                        }
                    }
                });
            });
        dx
    }

    /// Per channel in parallel, the images in order: deterministic.
    pub(super) fn weight_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let (p, hw, kk) = (g.p(), g.h * g.w, g.kh * g.kw);
        let per_channel: Vec<Vec<f64>> = (0..g.c)
            .into_par_iter()
            .map(|c| {
                let mut acc = vec![0.0f64; kk];
                for b in 0..g.batch {
                    let xp = &x[(b * g.c + c) * hw..][..hw];
                    let dyp = &dy[(b * g.c + c) * p..][..p];
                    taps(g, |tap, oy, iy, (lo, hi), first| {
                        let grad = &dyp[oy * g.ow + lo..oy * g.ow + hi];
                        let src = &xp[iy * g.w..(iy + 1) * g.w];
                        let sum = if g.sw == 1 {
                            dot(grad, &src[first..first + (hi - lo)])
                        } else {
                            grad.iter()
                                .zip(src[first..].iter().step_by(g.sw))
                                .map(|(a, b)| a * b)
                                .sum()
                        };
                        acc[tap] += f64::from(sum);
                    });
                }
                acc
            })
            .collect();
        per_channel
            .into_iter()
            .flatten()
            .map(|v| v as f32)
            .collect()
    }
}

fn tensor(data: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    flex_tensor(data, shape.to_vec())
}

/// The forward pass on flex primitives, or burn's when the data is not `f32`.
fn forward_flex(
    g: &Geometry,
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let data = f32_data(&x).zip(f32_data(&weight));
    let bias_data = bias.as_ref().and_then(f32_data);
    let bs = bias_data.as_ref().and_then(|t| t.as_slice::<f32>());
    match data
        .as_ref()
        .and_then(|(xc, wc)| xc.as_slice::<f32>().zip(wc.as_slice::<f32>()))
    {
        Some((xs, ws)) if bias.is_none() || bs.is_some_and(|b| b.len() == g.o) => {
            let mut out = forward(g, xs, ws);
            if let Some(b) = bs {
                // One pass over the output while it is still warm, instead of a tensor add.
                out.par_chunks_mut(g.p())
                    .enumerate()
                    .for_each(|(plane, y)| y.iter_mut().for_each(|v| *v += b[plane % g.o]));
            }
            tensor(out, [g.batch, g.o, g.oh, g.ow])
        }
        _ => Flex::conv2d(x, weight, bias, options.clone()),
    }
}

/// The backward step of a convolution on `Autodiff<Flex>`.
#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    type State = (NodeId, NodeId, Geometry, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_state, w_state, g, options) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let weight: FlexTensor = checkpointer.retrieve_node_output(w_state);
        let data = f32_data(&dy);
        let dys = data.as_ref().and_then(|t| t.as_slice::<f32>());
        if let Some(node) = node_x {
            let wc = f32_data(&weight);
            let grad = match (wc.as_ref().and_then(|t| t.as_slice::<f32>()), dys) {
                (Some(ws), Some(dys)) => tensor(input_grad(&g, ws, dys), [g.batch, g.c, g.h, g.w]),
                _ => {
                    Flex::conv2d_x_backward(x.clone(), weight.clone(), dy.clone(), options.clone())
                }
            };
            grads.register::<Flex>(node.id, grad);
        }
        if let Some(node) = node_w {
            let xc = f32_data(&x);
            let grad = match (xc.as_ref().and_then(|t| t.as_slice::<f32>()), dys) {
                (Some(xs), Some(dys)) => tensor(weight_grad(&g, xs, dys), g.weight_shape()),
                _ => Flex::conv2d_weight_backward(x, weight, dy, options),
            };
            grads.register::<Flex>(node.id, grad);
        }
    }
}

/// The convolution on `Autodiff<Flex>` primitives, recording [`ConvBackward`] when tracked.
fn forward_autodiff(
    g: Geometry,
    x: AdPrimitive,
    weight: AdPrimitive,
    options: ConvOptions<2>,
) -> AdPrimitive {
    match ConvBackward
        .prepare::<NoCheckpointing>([x.node(), weight.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&x);
            let w_state = prep.checkpoint(&weight);
            let out = forward_flex(
                &g,
                x.into_primitive(),
                weight.into_primitive(),
                None,
                &options,
            );
            prep.finish((x_state, w_state, g, options), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward_flex(
            &g,
            x.into_primitive(),
            weight.into_primitive(),
            None,
            &options,
        )),
    }
}

/// `conv2d(x, weight) + bias` as burn's `burn::tensor::module::conv2d`, through this module's
/// kernels when the tensors are `f32` on `flex` and the convolution has no dilation and one
/// group or one group per channel (depthwise).
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let out = Geometry::new(x.dims(), weight.dims(), &options)
        .filter(|_| x.dtype() == DType::F32)
        .and_then(|g| fast(g, &x, &weight, bias.as_ref(), &options));
    match (out, bias) {
        (Some((y, false)), Some(b)) => {
            let o = b.dims()[0];
            y + b.reshape([1, o, 1, 1])
        }
        (Some((y, _)), _) => y,
        (None, bias) => burn::tensor::module::conv2d(x, weight, bias, options),
    }
}

/// The convolution through this module's kernels if both tensors are on flex (both with
/// autodiff or both without), and whether it added `bias` (without autodiff, when the bias is
/// on flex too; otherwise the caller adds it).
fn fast(
    g: Geometry,
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    options: &ConvOptions<2>,
) -> Option<(Tensor<4>, bool)> {
    // The device says whether and which conversion can succeed; a failed one formats an error
    // message, which every training step would otherwise pay for at every layer.
    let device = x.device();
    if !super::serves(&device) {
        return None;
    }
    if device.is_autodiff() {
        let xp = x.clone().try_into_primitive::<AdFlex>().ok()?;
        let wp = weight.clone().try_into_primitive::<AdFlex>().ok()?;
        let y = forward_autodiff(g, xp, wp, options.clone());
        return Some((Tensor::from_primitive::<AdFlex>(y), false));
    }
    let xp = x.clone().try_into_primitive::<Flex>().ok()?;
    let wp = weight.clone().try_into_primitive::<Flex>().ok()?;
    let bp = bias.and_then(|b| b.clone().try_into_primitive::<Flex>().ok());
    let added = bp.is_some();
    let y = forward_flex(&g, xp, wp, bp, options);
    Some((Tensor::from_primitive::<Flex>(y), added))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A convolution case: input `[B, C, H, W]`, weight `[O, C/groups, KH, KW]`, options.
    struct Case {
        x: [usize; 4],
        w: [usize; 4],
        stride: [usize; 2],
        padding: [(usize, usize); 2],
        dilation: [usize; 2],
        groups: usize,
    }

    impl Case {
        fn options(&self) -> ConvOptions<2> {
            ConvOptions::new_with_padding(self.stride, self.padding, self.dilation, self.groups)
        }

        fn out(&self) -> [usize; 4] {
            let [b, _, h, w] = self.x;
            let [o, _, kh, kw] = self.w;
            let size = |n: usize, (p0, p1): (usize, usize), k: usize, s: usize, d: usize| {
                (n + p0 + p1 - d * (k - 1) - 1) / s + 1
            };
            [
                b,
                o,
                size(h, self.padding[0], kh, self.stride[0], self.dilation[0]),
                size(w, self.padding[1], kw, self.stride[1], self.dilation[1]),
            ]
        }
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + seed * 11) % 29) as f32 - 14.0) / 9.0)
            .collect()
    }

    /// Plain f64 convolution and its adjoints: `y`, and for a loss `Σ y·r`, `dx`, `dw`, `db`.
    #[allow(clippy::type_complexity)]
    fn reference(
        case: &Case,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        r: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let [nb, c, h, wd] = case.x;
        let [o, cg, kh, kw] = case.w;
        let [_, _, oh, ow] = case.out();
        let og = o / case.groups;
        let mut y = vec![0.0f64; nb * o * oh * ow];
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; w.len()];
        let mut db = vec![0.0f64; o];
        for b in 0..nb {
            for oc in 0..o {
                let g = oc / og;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let yi = ((b * o + oc) * oh + oy) * ow + ox;
                        let mut acc = f64::from(bias[oc]);
                        let rv = f64::from(r[yi]);
                        db[oc] += rv;
                        for ci in 0..cg {
                            let cin = g * cg + ci;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * case.stride[0] + ky * case.dilation[0]) as isize
                                        - case.padding[0].0 as isize;
                                    let ix = (ox * case.stride[1] + kx * case.dilation[1]) as isize
                                        - case.padding[1].0 as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xi = ((b * c + cin) * h + iy as usize) * wd + ix as usize;
                                    let wi = ((oc * cg + ci) * kh + ky) * kw + kx;
                                    acc += f64::from(x[xi]) * f64::from(w[wi]);
                                    dx[xi] += rv * f64::from(w[wi]);
                                    dw[wi] += rv * f64::from(x[xi]);
                                }
                            }
                        }
                        y[yi] = acc;
                    }
                }
            }
        }
        (y, dx, dw, db)
    }

    fn close(got: Vec<f32>, want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    fn data(t: Tensor<4>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn cases() -> Vec<Case> {
        let case = |x, w, stride, padding, dilation, groups| Case {
            x,
            w,
            stride,
            padding,
            dilation,
            groups,
        };
        vec![
            // ResNet 3×3, stride 1 and 2.
            case(
                [2, 3, 6, 5],
                [4, 3, 3, 3],
                [1, 1],
                [(1, 1), (1, 1)],
                [1, 1],
                1,
            ),
            case(
                [3, 2, 7, 6],
                [5, 2, 3, 3],
                [2, 2],
                [(1, 1), (1, 1)],
                [1, 1],
                1,
            ),
            // Pointwise (the patch matrix is the image) and strided pointwise.
            case(
                [2, 4, 3, 5],
                [3, 4, 1, 1],
                [1, 1],
                [(0, 0), (0, 0)],
                [1, 1],
                1,
            ),
            case(
                [2, 4, 6, 4],
                [3, 4, 1, 1],
                [2, 2],
                [(0, 0), (0, 0)],
                [1, 1],
                1,
            ),
            // Asymmetric padding, unequal strides, a kernel as large as the padded input.
            case(
                [1, 2, 5, 6],
                [2, 2, 3, 2],
                [3, 1],
                [(2, 0), (0, 1)],
                [1, 1],
                1,
            ),
            case(
                [2, 1, 3, 3],
                [2, 1, 5, 5],
                [1, 1],
                [(1, 1), (1, 1)],
                [1, 1],
                1,
            ),
            // "Same" padding (one shifted copy per patch row): 5×5, and 3×3 on one-pixel-wide
            // and one-pixel-high images.
            case(
                [2, 2, 5, 4],
                [3, 2, 5, 5],
                [1, 1],
                [(2, 2), (2, 2)],
                [1, 1],
                1,
            ),
            case(
                [2, 2, 4, 1],
                [2, 2, 3, 3],
                [1, 1],
                [(1, 1), (1, 1)],
                [1, 1],
                1,
            ),
            case(
                [2, 2, 1, 4],
                [2, 2, 3, 3],
                [1, 1],
                [(1, 1), (1, 1)],
                [1, 1],
                1,
            ),
            // Depthwise, stride 1 and 2.
            case(
                [2, 3, 6, 5],
                [3, 1, 3, 3],
                [1, 1],
                [(1, 1), (1, 1)],
                [1, 1],
                3,
            ),
            case(
                [2, 4, 7, 6],
                [4, 1, 3, 3],
                [2, 2],
                [(1, 1), (1, 1)],
                [1, 1],
                4,
            ),
            // Not handled here: other groupings and dilation go through burn.
            case(
                [2, 4, 5, 5],
                [6, 2, 3, 3],
                [1, 1],
                [(1, 1), (1, 1)],
                [1, 1],
                2,
            ),
            case(
                [1, 2, 7, 7],
                [3, 2, 3, 3],
                [1, 1],
                [(2, 2), (2, 2)],
                [2, 2],
                1,
            ),
        ]
    }

    #[test]
    fn matches_a_plain_f64_convolution_and_its_gradients() {
        let ad = Device::flex().autodiff();
        for (n, case) in cases().iter().enumerate() {
            let count = |s: [usize; 4]| s.iter().product::<usize>();
            let (xv, wv) = (values(count(case.x), n), values(count(case.w), n + 1));
            let bv = values(case.w[0], n + 2);
            let rv = values(count(case.out()), n + 3);
            let (y, dx, dw, db) = reference(case, &xv, &wv, &bv, &rv);
            let what = |s: &str| format!("case {n} {s}");

            // With autodiff: output and the gradients of input, weight and bias.
            let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), case.x), &ad).require_grad();
            let w = Tensor::<4>::from_data(TensorData::new(wv.clone(), case.w), &ad).require_grad();
            let b = Tensor::<1>::from_data(TensorData::new(bv.clone(), [case.w[0]]), &ad)
                .require_grad();
            let r = Tensor::<4>::from_data(TensorData::new(rv.clone(), case.out()), &ad);
            let out = conv2d(x.clone(), w.clone(), Some(b.clone()), case.options());
            assert_eq!(out.dims(), case.out(), "{}", what("shape"));
            let grads = (out.clone() * r).sum().backward();
            close(data(out), &y, &what("output"));
            close(data(x.grad(&grads).unwrap()), &dx, &what("input gradient"));
            close(data(w.grad(&grads).unwrap()), &dw, &what("weight gradient"));
            close(
                b.grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
                &db,
                &what("bias gradient"),
            );

            // Without autodiff, and without bias.
            let plain = Device::flex();
            let x = Tensor::<4>::from_data(TensorData::new(xv.clone(), case.x), &plain);
            let w = Tensor::<4>::from_data(TensorData::new(wv.clone(), case.w), &plain);
            let zero = vec![0.0f32; case.w[0]];
            let (y, ..) = reference(case, &xv, &wv, &zero, &rv);
            close(
                data(conv2d(x, w, None, case.options())),
                &y,
                &what("plain output"),
            );
        }
    }

    #[test]
    fn handles_exactly_one_group_without_dilation() {
        let handled: Vec<bool> = cases()
            .iter()
            .map(|c| Geometry::new(c.x, c.w, &c.options()).is_some())
            .collect();
        assert_eq!(
            handled,
            [
                true, true, true, true, true, true, true, true, true, true, true, false, false
            ]
        );
        // And the tensors of both flex devices take this module's path.
        let case = &cases()[0];
        let g = Geometry::new(case.x, case.w, &case.options()).unwrap();
        for device in [Device::flex(), Device::flex().autodiff()] {
            let x = Tensor::<4>::ones(case.x, &device);
            let w = Tensor::<4>::ones(case.w, &device);
            let w = if device.is_autodiff() {
                w.require_grad()
            } else {
                w
            };
            assert!(
                fast(g, &x, &w, None, &case.options()).is_some(),
                "{device:?}"
            );
        }
    }

    #[test]
    fn gradients_do_not_depend_on_the_thread_count() {
        // 9 images: two full groups of 4 and one short group.
        let opts = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        let g = Geometry::new([9, 3, 6, 6], [5, 3, 3, 3], &opts).unwrap();
        let x = values(9 * 3 * 36, 1);
        let dy = values(9 * 5 * 36, 2);
        let w = values(5 * 27, 3);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| (weight_grad(&g, &x, &dy), input_grad(&g, &w, &dy)))
        };
        let one = run(1);
        for threads in [2, 3, 8] {
            let other = run(threads);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&one.0),
                bits(&other.0),
                "weight gradient, {threads} threads"
            );
            assert_eq!(
                bits(&one.1),
                bits(&other.1),
                "input gradient, {threads} threads"
            );
        }
    }

    #[test]
    fn kernels_on_slices_match_the_reference() {
        // The slice kernels directly, so the test fails if `conv2d` quietly fell back to burn.
        for (n, case) in cases().iter().enumerate().take(11) {
            let g = Geometry::new(case.x, case.w, &case.options()).unwrap();
            let count = |s: [usize; 4]| s.iter().product::<usize>();
            let (xv, wv) = (values(count(case.x), n), values(count(case.w), n + 1));
            let rv = values(count(case.out()), n + 3);
            let zero = vec![0.0f32; case.w[0]];
            let (y, dx, dw, _) = reference(case, &xv, &wv, &zero, &rv);
            close(forward(&g, &xv, &wv), &y, &format!("case {n} forward"));
            close(
                input_grad(&g, &wv, &rv),
                &dx,
                &format!("case {n} input gradient"),
            );
            close(
                weight_grad(&g, &xv, &rv),
                &dw,
                &format!("case {n} weight gradient"),
            );
        }
    }
}
