//! Test helpers shared by the trainers' tests.

use autokd_models::{ModelName, ModelSpec};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

/// `name` sized for the embedded digits: 1 channel, 10 classes, 8×8.
pub(crate) fn digits_spec(name: ModelName) -> ModelSpec {
    ModelSpec {
        name,
        in_channels: 1,
        num_classes: 10,
        image_size: 8,
    }
}

/// A tensor of `shape` drawn from `N(0, 1)` on the host with `seed` (no device RNG).
pub(crate) fn normal<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let v = autokd_models::InitRng::new(seed).normal_values(shape.iter().product(), 1.0);
    Tensor::<D>::from_data(TensorData::new(v, shape), device)
}

/// Every float of a module (parameters and BatchNorm running statistics, synchronized by
/// `valid()`), in visit order.
pub(crate) fn snapshot<M: Module>(m: &M) -> Vec<f32> {
    struct V(Vec<f32>);
    impl ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0
                .extend(p.val().into_data().try_to_vec::<f32>().unwrap_or_default());
        }
    }
    let mut v = V(Vec::new());
    m.valid().visit(&mut v);
    v.0
}
