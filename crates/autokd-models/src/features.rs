//! The features contract: every model declares its taps and returns any of them, with the pooled
//! embedding and the logits, from one forward pass (timm's `feature_info` and
//! `forward_intermediates`; mdistiller's `feats`).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// What a tap holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TapKind {
    /// A feature map `[B, C, H, W]`.
    FeatureMap,
    /// ViT tokens `[B, N, C]` (the tokens play the role of spatial positions).
    Tokens,
}

/// One tap of a model: a named stage whose output a distiller can reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TapInfo {
    /// Name, e.g. `stem`, `stage3`, `block12`.
    pub name: String,
    /// Channels (feature maps) or embedding width (tokens).
    pub channels: usize,
    /// Spatial reduction against the input at the model's reference input size (for tokens:
    /// the patch size). A `32×32` input gives `32 / reduction` rows and columns.
    pub reduction: usize,
    /// Feature map or tokens.
    pub kind: TapKind,
}

impl TapInfo {
    pub(crate) fn map(name: &str, channels: usize, reduction: usize) -> Self {
        Self {
            name: name.to_string(),
            channels,
            reduction,
            kind: TapKind::FeatureMap,
        }
    }
}

/// The output of one tap.
#[derive(Debug, Clone)]
pub enum Feature {
    /// `[B, C, H, W]`.
    Map(Tensor<4>),
    /// `[B, N, C]`.
    Tokens(Tensor<3>),
}

impl Feature {
    /// The tensor's dimensions.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Feature::Map(t) => t.dims().to_vec(),
            Feature::Tokens(t) => t.dims().to_vec(),
        }
    }
}

/// Which taps to return, by index into `feature_info()`, and whether residual stages give their
/// output before the final ReLU (the pre-activation of OFD / ReviewKD-style distillers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TapRequest {
    /// Indices into `feature_info()`, in the order the features are returned.
    pub indices: Vec<usize>,
    /// Pre-activation features where the model has them.
    pub pre_act: bool,
}

impl TapRequest {
    /// No tap: only embedding and logits.
    pub fn none() -> Self {
        Self::default()
    }

    /// The taps at `indices`, post-activation.
    pub fn indices(indices: &[usize]) -> Self {
        Self {
            indices: indices.to_vec(),
            pre_act: false,
        }
    }

    /// Every tap of `info`.
    pub fn all(info: &[TapInfo]) -> Self {
        Self::indices(&(0..info.len()).collect::<Vec<_>>())
    }

    /// Looks up taps by name in `info`; the error lists the available taps.
    pub fn by_names(model: &str, info: &[TapInfo], names: &[&str]) -> Result<Self, ModelError> {
        let indices = names
            .iter()
            .map(|n| {
                info.iter()
                    .position(|t| t.name == *n)
                    .ok_or_else(|| ModelError::UnknownTap {
                        tap: n.to_string(),
                        model: model.to_string(),
                        available: info
                            .iter()
                            .map(|t| t.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::indices(&indices))
    }
}

/// Everything one forward pass returns.
#[derive(Debug, Clone)]
pub struct Intermediates {
    /// The requested taps, in request order.
    pub features: Vec<Feature>,
    /// The pooled embedding fed to the classifier `[B, D]`.
    pub embedding: Tensor<2>,
    /// Class scores `[B, num_classes]`.
    pub logits: Tensor<2>,
    /// Scores of a distillation-token head (DeiT), trained against the teacher.
    pub dist_logits: Option<Tensor<2>>,
}

impl Intermediates {
    /// What stands for the teacher's outputs when there is no teacher (a model trained from
    /// scratch): zeros that no loss term reads, `[B, 1]` embedding and `[B, classes]` logits.
    pub fn no_teacher(batch: usize, classes: usize, device: &Device) -> Self {
        Self {
            features: Vec::new(),
            embedding: Tensor::zeros([batch, 1], device),
            logits: Tensor::zeros([batch, classes], device),
            dist_logits: None,
        }
    }

    /// The prediction at evaluation: `logits`, or the mean of both heads for DeiT with a
    /// distillation token (as DeiT evaluates).
    pub fn eval_logits(&self) -> Tensor<2> {
        match &self.dist_logits {
            Some(d) => (self.logits.clone() + d.clone()).div_scalar(2.0),
            None => self.logits.clone(),
        }
    }
}

/// Gathers requested taps while a model runs.
pub(crate) struct Collector<'a> {
    request: &'a TapRequest,
    slots: Vec<Option<Feature>>,
}

impl<'a> Collector<'a> {
    pub(crate) fn new(request: &'a TapRequest) -> Self {
        Self {
            request,
            slots: vec![None; request.indices.len()],
        }
    }

    /// Whether pre-activation features were asked for.
    pub(crate) fn pre_act(&self) -> bool {
        self.request.pre_act
    }

    /// Whether tap `index` is wanted (so the caller can skip computing it).
    pub(crate) fn wants(&self, index: usize) -> bool {
        self.request.indices.contains(&index)
    }

    /// Runs the residual units of stage `index` on `x` (each returns its output and its
    /// pre-activation) and offers the stage's output, or its last pre-activation when asked.
    pub(crate) fn stage<U>(
        &mut self,
        index: usize,
        units: &[U],
        mut x: Tensor<4>,
        forward: impl Fn(&U, Tensor<4>) -> (Tensor<4>, Tensor<4>),
    ) -> Tensor<4> {
        let mut pre = None;
        for unit in units {
            let (out, p) = forward(unit, x);
            x = out;
            pre = Some(p);
        }
        match (self.request.pre_act, pre) {
            (true, Some(p)) => self.offer_map(index, &p),
            _ => self.offer_map(index, &x),
        }
        x
    }

    pub(crate) fn offer_map(&mut self, index: usize, x: &Tensor<4>) {
        self.offer(index, || Feature::Map(x.clone()));
    }

    pub(crate) fn offer(&mut self, index: usize, make: impl Fn() -> Feature) {
        for (slot, &i) in self.slots.iter_mut().zip(&self.request.indices) {
            if i == index {
                *slot = Some(make());
            }
        }
    }

    /// The features in request order. A tap index the model does not have yields nothing, so
    /// callers validate requests against `feature_info()` first (configs do).
    pub(crate) fn finish(self, embedding: Tensor<2>, logits: Tensor<2>) -> Intermediates {
        Intermediates {
            features: self.slots.into_iter().flatten().collect(),
            embedding,
            logits,
            dist_logits: None,
        }
    }
}

/// A classifier with the features contract.
pub trait Backbone {
    /// The taps this model exposes, in forward order.
    fn feature_info(&self) -> Vec<TapInfo>;

    /// The requested taps, the embedding and the logits of one pass.
    ///
    /// # Shapes
    /// - `x`: `[B, C_in, H, W]`
    /// - taps: `[B, C, H/r, W/r]` (maps) or `[B, N, C]` (tokens)
    /// - embedding `[B, D]`, logits `[B, num_classes]`
    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates;

    /// The logits: equal to those of [`Backbone::forward_intermediates`].
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_intermediates(x, &TapRequest::none()).logits
    }
}
