//! Test helpers: deterministic data, f64 references, finite-difference gradient checks.

use burn::prelude::*;

/// The values of a tensor, in row-major order.
pub(crate) fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// `r × d` deterministic values in about [-2, 2] (a fixed pseudo-random sequence).
pub(crate) fn f64_rows(r: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..r)
        .map(|_| {
            (0..d)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 10_000) as f64 / 2_500.0 - 2.0
                })
                .collect()
        })
        .collect()
}

/// Rows as a `[R, D]` tensor.
pub(crate) fn rows(v: &[Vec<f64>], device: &Device) -> Tensor<2> {
    let (r, d) = (v.len(), v[0].len());
    let flat: Vec<f32> = v.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(flat, [r, d]), device)
}

/// A tensor of `shape` with deterministic values.
pub(crate) fn tensor<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let flat: Vec<f32> = f64_rows(1, n, seed)[0].iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(flat, shape), device)
}

/// Checks the gradient of `loss(s, t)` with respect to `s` against central finite differences
/// (step 1e-2 in f32; a handful of coordinates).
pub(crate) fn grad_check<const D: usize>(
    name: &str,
    shape: [usize; D],
    loss: impl Fn(Tensor<D>, Tensor<D>) -> Tensor<1>,
) {
    let ad = Device::flex().autodiff();
    let plain = Device::flex();
    let s = tensor(shape, 11, &ad).require_grad();
    let t = tensor(shape, 12, &ad);
    let grads = loss(s.clone(), t).backward();
    let g: Vec<f32> = s
        .grad(&grads)
        .expect("gradient")
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32");
    let base: Vec<f32> = tensor(shape, 11, &plain)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32");
    let t_plain = tensor(shape, 12, &plain);
    let eval = |v: &[f32]| -> f64 {
        let x = Tensor::<D>::from_data(TensorData::new(v.to_vec(), shape), &plain);
        f64::from(loss(x, t_plain.clone()).into_scalar::<f32>())
    };
    let h = 1e-2f32;
    let n = base.len();
    for k in [0, n / 3, n / 2, n - 1] {
        let mut up = base.clone();
        up[k] += h;
        let mut down = base.clone();
        down[k] -= h;
        let fd = (eval(&up) - eval(&down)) / (2.0 * f64::from(h));
        let an = f64::from(g[k]);
        assert!(
            (fd - an).abs() <= 5e-3 + 3e-2 * an.abs().max(fd.abs()),
            "{name}: d/ds[{k}] analytic {an} vs finite difference {fd}"
        );
    }
}
