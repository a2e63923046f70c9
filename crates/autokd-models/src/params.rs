//! Model size: trainable parameters as PyTorch counts them, and forward multiply-accumulates.

use std::cell::Cell;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

use crate::features::{Backbone, TapRequest};

struct Trainable {
    path: Vec<String>,
    /// The type of the module each entered field belongs to (`Struct:BatchNorm`, …).
    containers: Vec<String>,
    count: usize,
}

/// The module type that holds a detector's ResNet with frozen batch norms
/// ([`crate::retinanet::FrozenBnResNet`]): torchvision builds it with `FrozenBatchNorm2d`,
/// whose four tensors are all buffers.
const FROZEN_BN_BODY: &str = "Struct:FrozenBnResNet";

impl ModuleVisitor for Trainable {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // Batch-norm running statistics are buffers, not parameters (PyTorch's
        // `sum(p.numel() for p in model.parameters())` leaves them out); so are the affine terms
        // of a detector backbone's frozen batch norms.
        let buffer = matches!(
            self.path.last().map(String::as_str),
            Some("running_mean" | "running_var")
        ) || (self
            .containers
            .last()
            .is_some_and(|c| c == "Struct:BatchNorm")
            && self.containers.iter().any(|c| c == FROZEN_BN_BODY));
        if !buffer {
            self.count += param.lazy_shape().num_elements();
        }
    }
}

/// Trainable parameters, counted as PyTorch does (batch-norm running statistics excluded).
pub fn trainable_params<M: Module>(module: &M) -> usize {
    let mut v = Trainable {
        path: Vec::new(),
        containers: Vec::new(),
        count: 0,
    };
    module.visit(&mut v);
    v.count
}

thread_local! {
    static MACS: Cell<Option<u64>> = const { Cell::new(None) };
}

fn add_macs(n: u64) {
    MACS.with(|m| {
        if let Some(v) = m.get() {
            m.set(Some(v + n));
        }
    });
}

/// A convolution that counts its multiply-accumulates while [`forward_macs`] runs.
pub(crate) fn conv_fwd(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let y = crate::common::conv2d(conv, x);
    count_conv(conv, &y);
    y
}

/// Counts the multiply-accumulates of `conv` having produced `y`, while [`forward_macs`] runs.
pub(crate) fn count_conv(conv: &Conv2d, y: &Tensor<4>) {
    if MACS.with(|m| m.get().is_some()) {
        let [b, co, ho, wo] = y.dims();
        let [_, ci_g, kh, kw] = conv.weight.shape().dims();
        add_macs((b * co * ho * wo * ci_g * kh * kw) as u64);
    }
}

/// A linear layer that counts its multiply-accumulates while [`forward_macs`] runs.
pub(crate) fn linear_fwd<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    let y = linear.forward(x);
    if MACS.with(|m| m.get().is_some()) {
        let [d_in, d_out] = linear.weight.shape().dims();
        let rows: usize = y.dims()[..D - 1].iter().product();
        add_macs((rows * d_in * d_out) as u64);
    }
    y
}

/// Counts the multiply-accumulates of a matrix product `[.., m, k] × [.., k, n]`.
pub(crate) fn count_matmul(batch: usize, m: usize, k: usize, n: usize) {
    add_macs((batch * m * k * n) as u64);
}

/// Multiply-accumulates of one forward pass of a single image of shape `[C, H, W]`
/// (convolutions, linear layers and attention products; normalization and pooling excluded,
/// as fvcore/ptflops-style counters report).
pub fn forward_macs<M: Backbone>(model: &M, input: [usize; 3], device: &Device) -> u64 {
    let [c, h, w] = input;
    MACS.with(|m| m.set(Some(0)));
    let _ = model.forward_intermediates(Tensor::zeros([1, c, h, w], device), &TapRequest::none());
    MACS.with(|m| m.replace(None)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ModelName;

    #[test]
    fn macs_by_hand() {
        let device = Device::flex();
        // resnet20 at 3×32×32, 100 classes: Σ H·W·C_out·C_in·k² over the 19 convolutions and
        // the two 1×1 projections, plus 64·100 for the classifier (summed in a few lines of
        // Python over the layer list): 40,818,944.
        let m = ModelName::Resnet20.reference_spec().init(&device).unwrap();
        assert_eq!(forward_macs(&m, [3, 32, 32], &device), 40_818_944);
        // torchvision ResNet-18 at 224×224: 1,814,073,344 (torchvision lists 1.81 GFLOPS).
        let m = ModelName::Resnet18.reference_spec().init(&device).unwrap();
        assert_eq!(forward_macs(&m, [3, 224, 224], &device), 1_814_073_344);
        // Counting is off outside forward_macs.
        let _ = m.forward(Tensor::zeros([1, 3, 32, 32], &device));
        assert!(MACS.with(|c| c.get()).is_none());
    }

    #[test]
    fn running_statistics_are_not_parameters() {
        let device = Device::flex();
        let bn = burn::nn::BatchNormConfig::new(5).init(&device);
        assert_eq!(bn.num_params(), 20, "burn counts the running statistics");
        assert_eq!(trainable_params(&bn), 10, "PyTorch does not");
    }
}
