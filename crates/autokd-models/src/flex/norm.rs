//! Batch norm in training mode on `Autodiff<Flex>`, as one forward and one backward kernel.
//!
//! burn 0.22's backend-generic `batch_norm_train` (which flex does not override) swaps the batch
//! and channel axes and copies the activation in the forward pass and three more times in the
//! backward pass. Composing the statistics from reductions (autokd's earlier path) avoids the
//! copies but still leaves autodiff a dozen elementwise nodes, each a pass over the activation.
//! Here the forward pass is two passes over the input (statistics per channel, in parallel over
//! channels, then the normalization, in parallel over images) and the backward pass likewise
//! (`Σ dy` and `Σ dy·x̂` per channel, then `dx = γ/σ · (dy − mean(dy) − x̂ · mean(dy·x̂))`).

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{Flex, FlexTensor};
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

use super::{AdFlex, AdPrimitive, f32_data, flex_tensor};

/// The sizes of a `[B, C, H·W]` activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    b: usize,
    c: usize,
    hw: usize,
}

impl Dims {
    /// The slices of channel `ci`, one per image.
    fn channel<'a>(&self, data: &'a [f32], ci: usize) -> impl Iterator<Item = &'a [f32]> {
        let (c, hw) = (self.c, self.hw);
        data.chunks_exact(c * hw)
            .map(move |img| &img[ci * hw..(ci + 1) * hw])
    }

    fn count(&self) -> f64 {
        (self.b * self.hw) as f64
    }
}

/// `Σ f(v)` over a slice, in 16 f32 lanes (so that it vectorizes) added up in f64.
fn lanes(s: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0.0f32; 16];
    let mut chunks = s.chunks_exact(16);
    for chunk in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(f(v))).sum();
    acc.iter().map(|&a| f64::from(a)).sum::<f64>() + tail
}

/// `(Σ g, Σ g·v)` over two slices, in 16 f32 lanes added up in f64.
fn lanes2(v: &[f32], g: &[f32], shift: f32) -> (f64, f64) {
    let (mut sg, mut sgv) = ([0.0f32; 16], [0.0f32; 16]);
    let (mut cv, mut cg) = (v.chunks_exact(16), g.chunks_exact(16));
    for (a, b) in (&mut cv).zip(&mut cg) {
        for i in 0..16 {
            sg[i] += b[i];
            sgv[i] += b[i] * (a[i] - shift);
        }
    }
    let mut tail = (0.0f64, 0.0f64);
    for (&a, &b) in cv.remainder().iter().zip(cg.remainder()) {
        tail.0 += f64::from(b);
        tail.1 += f64::from(b) * f64::from(a - shift);
    }
    let total = |l: [f32; 16]| l.iter().map(|&x| f64::from(x)).sum::<f64>();
    (total(sg) + tail.0, total(sgv) + tail.1)
}

/// Per channel: the mean and the biased variance (two passes: the mean, then the squared
/// deviations from it).
fn statistics(d: &Dims, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    (0..d.c)
        .into_par_iter()
        .map(|ci| {
            let sum: f64 = d.channel(x, ci).map(|s| lanes(s, |v| v)).sum();
            let mean = (sum / d.count()) as f32;
            let sq: f64 = d
                .channel(x, ci)
                .map(|s| lanes(s, |v| (v - mean) * (v - mean)))
                .sum();
            (mean, (sq / d.count()) as f32)
        })
        .unzip()
}

/// `y = scale · x + shift` per channel, in parallel over images.
fn affine(d: &Dims, x: &[f32], scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(d.c * d.hw)
        .zip(x.par_chunks(d.c * d.hw))
        .for_each(|(yb, xb)| {
            for (ci, (yc, xc)) in yb
                .chunks_exact_mut(d.hw)
                .zip(xb.chunks_exact(d.hw))
                .enumerate()
            {
                let (a, s) = (scale[ci], shift[ci]);
                for (o, &v) in yc.iter_mut().zip(xc) {
                    *o = v * a + s;
                }
            }
        });
    y
}

/// The state the backward pass needs besides the input.
#[derive(Debug, Clone)]
struct Saved {
    shape: [usize; 4],
    dims: Dims,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    gamma: Vec<f32>,
}

/// The gradients of input, gamma and beta from the input `x` and the output gradient `dy`.
fn backward(s: &Saved, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = s.dims;
    // Per channel: Σ dy and Σ dy·x̂.
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (0..d.c)
        .into_par_iter()
        .map(|ci| {
            let (sum, dot) = d
                .channel(x, ci)
                .zip(d.channel(dy, ci))
                .map(|(xs, gs)| lanes2(xs, gs, s.mean[ci]))
                .fold((0.0, 0.0), |(a, b), (u, v)| (a + u, b + v));
            (sum as f32, (dot * f64::from(s.inv_std[ci])) as f32)
        })
        .unzip();
    // dx = γ·σ⁻¹ · (dy − Σdy/N − x̂ · Σ(dy·x̂)/N), as dy·a + x·b + c per channel.
    let n = d.count();
    let (mut a, mut bcoef, mut ccoef) = (vec![0.0f32; d.c], vec![0.0f32; d.c], vec![0.0f32; d.c]);
    for ci in 0..d.c {
        let (g, is, m) = (
            f64::from(s.gamma[ci]),
            f64::from(s.inv_std[ci]),
            f64::from(s.mean[ci]),
        );
        let k = g * is;
        let q = f64::from(dgamma[ci]) / n * is; // multiplies x̂ = (x − m)·is
        a[ci] = k as f32;
        bcoef[ci] = (-k * q) as f32;
        ccoef[ci] = (k * (q * m - f64::from(dbeta[ci]) / n)) as f32;
    }
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(d.c * d.hw)
        .zip(x.par_chunks(d.c * d.hw).zip(dy.par_chunks(d.c * d.hw)))
        .for_each(|(db, (xb, gb))| {
            for (ci, (dc, (xc, gc))) in db
                .chunks_exact_mut(d.hw)
                .zip(xb.chunks_exact(d.hw).zip(gb.chunks_exact(d.hw)))
                .enumerate()
            {
                let (a, b, c) = (a[ci], bcoef[ci], ccoef[ci]);
                for (o, (&v, &g)) in dc.iter_mut().zip(xc.iter().zip(gc)) {
                    *o = g * a + v * b + c;
                }
            }
        });
    (dx, dgamma, dbeta)
}

#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    type State = (NodeId, Saved);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_state, saved) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let (xc, dyc) = (f32_data(&x), f32_data(&dy));
        let Some((xs, dys)) = xc
            .as_ref()
            .and_then(|t| t.as_slice::<f32>())
            .zip(dyc.as_ref().and_then(|t| t.as_slice::<f32>()))
        else {
            // Unreachable: the forward pass checked that the input is f32, and gradients have
            // the dtype of their tensor.
            return;
        };
        let (dx, dgamma, dbeta) = backward(&saved, xs, dys);
        let d = saved.dims;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex_tensor(dx, saved.shape.to_vec()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex_tensor(dgamma, vec![d.c]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex_tensor(dbeta, vec![d.c]));
        }
    }
}

/// What [`batch_norm_train`] returns: the output and the batch statistics.
pub struct Normalized {
    /// `γ · (x − mean) / √(var + ε) + β`, `[B, C, H, W]`.
    pub output: Tensor<4>,
    /// The batch mean per channel.
    pub mean: Vec<f32>,
    /// The biased batch variance per channel.
    pub var: Vec<f32>,
}

/// Batch norm in training mode (batch statistics) when `x`, `gamma` and `beta` are `f32` on
/// `Autodiff<Flex>`; `None` otherwise (the caller takes another path).
pub fn batch_norm_train(
    x: &Tensor<4>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    epsilon: f64,
) -> Option<Normalized> {
    let [b, c, h, w] = x.dims();
    if x.dtype() != DType::F32
        || gamma.dims() != [c]
        || beta.dims() != [c]
        || b * h * w == 0
        || !super::serves(&x.device())
        || !x.device().is_autodiff()
    {
        return None;
    }
    let xp = x.clone().try_into_primitive::<AdFlex>().ok()?;
    let gp = gamma.clone().try_into_primitive::<AdFlex>().ok()?;
    let bp = beta.clone().try_into_primitive::<AdFlex>().ok()?;
    let dims = Dims { b, c, hw: h * w };
    let (gv, bv) = (f32_data(gp.primitive())?, f32_data(bp.primitive())?);
    let (gamma_v, beta_v) = (
        gv.as_slice::<f32>()?.to_vec(),
        bv.as_slice::<f32>()?.to_vec(),
    );
    let xc = f32_data(xp.primitive())?;
    let xs = xc.as_slice::<f32>()?;
    let (mean, var) = statistics(&dims, xs);
    let inv_std: Vec<f32> = var
        .iter()
        .map(|&v| (1.0 / (f64::from(v) + epsilon).sqrt()) as f32)
        .collect();
    let scale: Vec<f32> = gamma_v.iter().zip(&inv_std).map(|(g, s)| g * s).collect();
    let shift: Vec<f32> = (0..c).map(|i| beta_v[i] - mean[i] * scale[i]).collect();
    let y = flex_tensor(affine(&dims, xs, &scale, &shift), vec![b, c, h, w]);
    let saved = Saved {
        shape: [b, c, h, w],
        dims,
        mean: mean.clone(),
        inv_std,
        gamma: gamma_v,
    };
    let out: AdPrimitive = match BatchNormBackward
        .prepare::<NoCheckpointing>([xp.node(), gp.node(), bp.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let x_state = prep.checkpoint(&xp);
            prep.finish((x_state, saved), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Normalized {
        output: Tensor::from_primitive::<AdFlex>(out),
        mean,
        var,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((((i * 37 + seed * 13) % 31) as f32 - 15.0) / 7.0) * scale + 0.3)
            .collect()
    }

    /// Plain f64 batch norm: output, mean, biased variance, and for the loss `Σ y·r` the
    /// gradients of input, gamma and beta (by the chain rule through mean and variance, written
    /// out term by term rather than in the kernel's closed form).
    #[allow(clippy::type_complexity)]
    fn reference(
        shape: [usize; 4],
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        r: &[f32],
        eps: f64,
    ) -> [Vec<f64>; 6] {
        let [b, c, h, w] = shape;
        let hw = h * w;
        let n = (b * hw) as f64;
        let idx = |bi: usize, ci: usize, k: usize| (bi * c + ci) * hw + k;
        let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let (mut means, mut vars, mut dg, mut db) =
            (vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![0.0; c]);
        for ci in 0..c {
            let all: Vec<(usize, f64)> = (0..b)
                .flat_map(|bi| (0..hw).map(move |k| idx(bi, ci, k)))
                .map(|i| (i, f64::from(x[i])))
                .collect();
            let mean = all.iter().map(|p| p.1).sum::<f64>() / n;
            let var = all.iter().map(|p| (p.1 - mean).powi(2)).sum::<f64>() / n;
            let s = 1.0 / (var + eps).sqrt();
            let g = f64::from(gamma[ci]);
            // dL/dx̂, then the gradients through var and mean.
            let dxhat: Vec<f64> = all.iter().map(|&(i, _)| f64::from(r[i]) * g).collect();
            let dvar: f64 = all
                .iter()
                .zip(&dxhat)
                .map(|(&(_, v), d)| d * (v - mean) * -0.5 * s.powi(3))
                .sum();
            let dmean: f64 = all.iter().zip(&dxhat).map(|(_, d)| -d * s).sum::<f64>()
                + dvar * all.iter().map(|p| -2.0 * (p.1 - mean)).sum::<f64>() / n;
            for (&(i, v), d) in all.iter().zip(&dxhat) {
                let xhat = (v - mean) * s;
                y[i] = g * xhat + f64::from(beta[ci]);
                dx[i] = d * s + dvar * 2.0 * (v - mean) / n + dmean / n;
                dg[ci] += f64::from(r[i]) * xhat;
                db[ci] += f64::from(r[i]);
            }
            means[ci] = mean;
            vars[ci] = var;
        }
        [y, dx, dg, db, means, vars]
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 2e-4 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    fn vec_of<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn matches_a_plain_f64_batch_norm_and_its_gradients() {
        let ad = Device::flex().autodiff();
        // Odd sizes (tails shorter than the 16 lanes), a large offset, a single pixel.
        for (n, shape) in [[3, 2, 5, 7], [2, 3, 4, 4], [4, 2, 1, 1], [2, 1, 9, 5]]
            .into_iter()
            .enumerate()
        {
            let [_, c, _, _] = shape;
            let count = shape.iter().product();
            let xv: Vec<f32> = values(count, n, 2.0).iter().map(|v| v + 5.0).collect();
            let (gv, bv) = (values(c, n + 1, 1.0), values(c, n + 2, 1.0));
            let rv = values(count, n + 3, 1.0);
            let eps = 1e-5;
            let [y, dx, dg, db, mean, var] = reference(shape, &xv, &gv, &bv, &rv, eps);
            let x = Tensor::<4>::from_data(TensorData::new(xv, shape), &ad).require_grad();
            let g = Tensor::<1>::from_data(TensorData::new(gv, [c]), &ad).require_grad();
            let b = Tensor::<1>::from_data(TensorData::new(bv, [c]), &ad).require_grad();
            let r = Tensor::<4>::from_data(TensorData::new(rv, shape), &ad);
            let out = batch_norm_train(&x, &g, &b, eps).unwrap();
            let what = |s: &str| format!("shape {shape:?} {s}");
            close(&out.mean, &mean, &what("mean"));
            close(&out.var, &var, &what("variance"));
            let grads = (out.output.clone() * r).sum().backward();
            close(&vec_of(out.output), &y, &what("output"));
            close(
                &vec_of(x.grad(&grads).unwrap()),
                &dx,
                &what("input gradient"),
            );
            close(
                &vec_of(g.grad(&grads).unwrap()),
                &dg,
                &what("gamma gradient"),
            );
            close(
                &vec_of(b.grad(&grads).unwrap()),
                &db,
                &what("beta gradient"),
            );
        }
    }

    #[test]
    fn other_devices_and_dtypes_are_left_to_the_caller() {
        let plain = Device::flex();
        let x = Tensor::<4>::ones([2, 3, 2, 2], &plain);
        let (g, b) = (
            Tensor::<1>::ones([3], &plain),
            Tensor::<1>::zeros([3], &plain),
        );
        assert!(batch_norm_train(&x, &g, &b, 1e-5).is_none());
        let ad = plain.autodiff();
        let x = Tensor::<4>::ones([2, 3, 2, 2], &ad);
        let (g, b) = (Tensor::<1>::ones([3], &ad), Tensor::<1>::zeros([3], &ad));
        assert!(batch_norm_train(&x, &g, &b, 1e-5).is_some());
        // Mismatched parameter sizes are not this kernel's business either.
        let g4 = Tensor::<1>::ones([4], &ad);
        assert!(batch_norm_train(&x, &g4, &b, 1e-5).is_none());
    }
}
