//! Architectures for distillation, each with the features contract ([`Backbone`]): declared
//! taps, one forward pass that returns any of them with the pooled embedding and the logits.
//!
//! [`ModelName`] lists every architecture ([`ModelName::ALL`]); a [`ModelSpec`] (name, input
//! channels, classes, input size) builds a [`Model`] on any device.

pub mod common;
pub mod deeplab;
pub mod deeplab_mobilenet;
pub mod deit;
pub mod error;
pub mod features;
#[cfg(feature = "flex")]
pub mod flex;
pub mod init;
pub mod mobilenet_v1;
pub mod mobilenet_v2;
pub mod params;
pub mod registry;
pub mod resnet;
pub mod retinanet;
pub mod shufflenet;
pub mod vgg;
pub mod weights;
pub mod wrn;

pub use error::ModelError;
pub use features::{
    Backbone, Feature, Intermediates, PREDICTION_TAP, Prediction, TapInfo, TapKind, TapRequest,
    default_tap, find_taps,
};
pub use init::InitRng;
pub use params::{forward_macs, trainable_params};
pub use registry::{Family, Model, ModelName, ModelSpec};
pub use weights::{WeightFormat, load as load_weights, load_backbone, save as save_weights};
