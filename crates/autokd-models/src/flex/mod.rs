//! Kernels for the `flex` backend (pure-Rust CPU) where burn 0.22's own are slow at the shapes
//! of distillation: convolution ([`conv2d`]) and batch norm in training ([`batch_norm_train`]).
//!
//! Each works on flex's tensor primitives, with and without autodiff; on `Autodiff<Flex>` it
//! records its own backward step (burn-autodiff's `Backward` trait), so that the gradients are
//! computed by this module's kernels too. Anything else (another backend, another dtype, a
//! gradient-checkpointing strategy) takes burn's path. Tests compare every output and gradient
//! with a plain f64 reference.

mod conv;
mod norm;

pub use conv::conv2d;
pub use norm::{Normalized, batch_norm_train};

use burn::backend::flex::{Flex, FlexTensor, Layout};
use burn::backend::{Autodiff, BackendTypes};
use burn::prelude::Shape;
use burn::tensor::{Bytes, DType};

/// Whether tensors on `device` can take these kernels: flex's device, with or without autodiff
/// (devices compare by identity, ignoring autodiff). Checked before any conversion, so tensors of
/// another backend (a GPU) never attempt one: a failed `try_into_primitive` formats an error
/// message, which every convolution and batch norm of every step would pay for.
pub fn serves(device: &burn::prelude::Device) -> bool {
    *device == burn::prelude::Device::flex()
}

/// Flex with autodiff (burn's default: no gradient checkpointing).
type AdFlex = Autodiff<Flex>;

/// A float tensor primitive of [`AdFlex`].
type AdPrimitive = <AdFlex as BackendTypes>::FloatTensorPrimitive;

/// `t` as a row-major `f32` tensor (copied only if it is a strided view), or `None` for another
/// dtype.
fn f32_data(t: &FlexTensor) -> Option<FlexTensor> {
    (t.dtype() == DType::F32).then(|| t.to_contiguous())
}

/// A row-major `f32` flex tensor.
fn flex_tensor(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(Shape::from(shape)),
        DType::F32,
    )
}

#[cfg(test)]
mod tests {
    use burn::prelude::Device;

    #[test]
    fn flex_devices_are_served_with_and_without_autodiff() {
        assert!(super::serves(&Device::flex()));
        assert!(super::serves(&Device::flex().autodiff()));
    }
}
