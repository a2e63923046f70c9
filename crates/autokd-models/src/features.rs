//! The features contract: every model declares its taps and returns any of them, with the pooled
//! embedding and its prediction, from one forward pass (timm's `feature_info` and
//! `forward_intermediates`; mdistiller's `feats`).
//!
//! Tap names are hierarchical, by the part of the model they come from: `backbone.stem`,
//! `backbone.stage3`, `backbone.block11` for the classifiers; a segmenter adds `aspp`, a detector
//! `fpn.p3` … `fpn.p7`. A name is found by its full path or, when no other tap ends the same way,
//! by its last part (`stage3`); a path that is a prefix of several taps (`fpn`, `backbone`) names
//! their group, and a pattern with `*` (`stage*`, `fpn.p*`) names every tap whose full name, or
//! a dotted tail of it, it matches ([`TapRequest::resolve`]). A tap's `stride` is its spatial
//! step in input pixels, so an `H × W` input (square or not) gives `⌈H / stride⌉ × ⌈W / stride⌉`
//! maps (`⌊·⌋` for VGG, whose 2×2 max-pools round down, as in PyTorch).

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
    /// Hierarchical name, e.g. `backbone.stem`, `backbone.stage3`, `fpn.p4`.
    pub name: String,
    /// Channels (feature maps) or embedding width (tokens).
    pub channels: usize,
    /// Spatial step in input pixels (for tokens: the patch size). A `32×32` input gives
    /// `32 / stride` rows and columns.
    pub stride: usize,
    /// Feature map or tokens.
    pub kind: TapKind,
}

impl TapInfo {
    /// A feature map outside the backbone (a neck's or a head's), named `name`.
    pub(crate) fn map(name: &str, channels: usize, stride: usize) -> Self {
        Self {
            name: name.into(),
            channels,
            stride,
            kind: TapKind::FeatureMap,
        }
    }

    /// A feature map of a classifier's backbone, named `backbone.<name>`.
    pub(crate) fn backbone(name: &str, channels: usize, stride: usize) -> Self {
        Self {
            name: format!("backbone.{name}"),
            channels,
            stride,
            kind: TapKind::FeatureMap,
        }
    }
}

/// The tap of a dense model's prediction map (`[B, K, H/8, W/8]` for DeepLabV3): reached only
/// by name. A feature term without a tap reads the last tap that is not this one
/// ([`default_tap`]), so the prediction never stands in for the features.
pub const PREDICTION_TAP: &str = "head.logits";

/// The tap a feature term without a tap name reads: the last of `info` that is not the
/// prediction ([`PREDICTION_TAP`]).
pub fn default_tap(info: &[TapInfo]) -> Option<usize> {
    info.iter().rposition(|t| t.name != PREDICTION_TAP)
}

/// Where a tap name (full path, unique last part, group prefix, or a pattern with `*`) points in
/// `info`: the indices of its members in forward order, or `None` when nothing matches.
///
/// A pattern matches a tap when it matches its full name or a tail of it after a `.`:
/// `stage*` finds `backbone.stage1` … `backbone.stage3` and not `backbone.stem`.
pub fn find_taps(info: &[TapInfo], name: &str) -> Option<Vec<usize>> {
    if name.contains('*') {
        let matched: Vec<usize> = (0..info.len())
            .filter(|&i| {
                let full = info[i].name.as_str();
                glob(name, full)
                    || full
                        .match_indices('.')
                        .any(|(dot, _)| glob(name, &full[dot + 1..]))
            })
            .collect();
        return (!matched.is_empty()).then_some(matched);
    }
    if let Some(i) = info.iter().position(|t| t.name == name) {
        return Some(vec![i]);
    }
    let suffix = format!(".{name}");
    let ends: Vec<usize> = (0..info.len())
        .filter(|&i| info[i].name.ends_with(&suffix))
        .collect();
    if ends.len() == 1 {
        return Some(ends);
    }
    let prefix = format!("{name}.");
    let group: Vec<usize> = (0..info.len())
        .filter(|&i| info[i].name.starts_with(&prefix))
        .collect();
    (!group.is_empty()).then_some(group)
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (none included).
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty(); // no `*`: the whole text was the prefix
    };
    for middle in parts {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// A model's class scores: a row per image, a map, or a row per anchor.
#[derive(Debug, Clone)]
pub enum Prediction {
    /// One row per image: `[B, K]` (classification), softmax over the classes.
    Rows(Tensor<2>),
    /// One row per pixel: `[B, K, H, W]` (segmentation), softmax over the classes.
    Map(Tensor<4>),
    /// One row per anchor of a dense detector: `[B, ΣA, K]` (levels in turn), each class an
    /// independent sigmoid (RetinaNet's focal-loss head).
    Anchors(Tensor<3>),
}

impl Prediction {
    /// The scores as rows `[R, K]`: the rows themselves, or `[B·H·W, K]` for a map (pixels of
    /// each image in row-major order). Prediction terms of distillers compare these.
    /// An anchor prediction gives `[B·ΣA, K]` (the anchors of each image together).
    pub fn rows(&self) -> Tensor<2> {
        match self {
            Prediction::Rows(r) => r.clone(),
            Prediction::Map(m) => {
                let [b, k, h, w] = m.dims();
                m.clone().permute([0, 2, 3, 1]).reshape([b * h * w, k])
            }
            Prediction::Anchors(a) => {
                let [b, n, k] = a.dims();
                a.clone().reshape([b * n, k])
            }
        }
    }

    /// Whether each class is an independent sigmoid (a detector's anchors) rather than one
    /// softmax over the classes.
    pub fn is_sigmoid(&self) -> bool {
        matches!(self, Prediction::Anchors(_))
    }

    /// The tensor's dimensions.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Prediction::Rows(t) => t.dims().to_vec(),
            Prediction::Map(t) => t.dims().to_vec(),
            Prediction::Anchors(t) => t.dims().to_vec(),
        }
    }

    /// The same prediction with `f2`, `f3` or `f4` applied to its tensor by rank (e.g. moving
    /// it to another device, or taking images `start..start + len`: every rank leads with the
    /// batch).
    pub fn map_tensor(
        &self,
        f2: impl Fn(Tensor<2>) -> Tensor<2>,
        f3: impl Fn(Tensor<3>) -> Tensor<3>,
        f4: impl Fn(Tensor<4>) -> Tensor<4>,
    ) -> Self {
        match self {
            Prediction::Rows(t) => Prediction::Rows(f2(t.clone())),
            Prediction::Map(t) => Prediction::Map(f4(t.clone())),
            Prediction::Anchors(t) => Prediction::Anchors(f3(t.clone())),
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

    /// Looks up taps by name in `info` ([`find_taps`]: full path, unique last part or group, in
    /// that order); the error lists the available taps.
    pub fn by_names(model: &str, info: &[TapInfo], names: &[&str]) -> Result<Self, ModelError> {
        let indices = names
            .iter()
            .map(|n| Self::resolve(model, info, n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::indices(&indices.concat()))
    }

    /// The indices a tap name stands for in `info` (one tap, or every member of a group); the
    /// error lists the available taps.
    pub fn resolve(model: &str, info: &[TapInfo], name: &str) -> Result<Vec<usize>, ModelError> {
        find_taps(info, name).ok_or_else(|| ModelError::UnknownTap {
            tap: name.to_string(),
            model: model.to_string(),
            available: info
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// Everything one forward pass returns.
#[derive(Debug, Clone)]
pub struct Intermediates {
    /// The requested taps, in request order.
    pub features: Vec<Feature>,
    /// The pooled embedding `[B, D]` (of a classifier: what its head reads).
    pub embedding: Tensor<2>,
    /// The prediction: class scores `[B, K]` for a classifier, a `[B, K, H, W]` map for a
    /// segmenter, `[B, ΣA, K]` per anchor for a detector.
    pub logits: Prediction,
    /// Scores of a distillation-token head (DeiT), trained against the teacher.
    pub dist_logits: Option<Prediction>,
    /// Scores of an auxiliary head (DeepLabV3's FCN head on stage 3), which the task trains
    /// with its own loss at a lower weight; inference ignores it.
    pub aux_logits: Option<Prediction>,
    /// Box deltas of a detector, `[B, ΣA, 4]` (anchors in the order of its class rows).
    pub box_deltas: Option<Tensor<3>>,
}

impl Intermediates {
    /// What stands for the teacher's outputs when there is no teacher (a model trained from
    /// scratch): zeros that no loss term reads, `[B, 1]` embedding and `[B, classes]` logits.
    pub fn no_teacher(batch: usize, classes: usize, device: &Device) -> Self {
        Self {
            features: Vec::new(),
            embedding: Tensor::zeros([batch, 1], device),
            logits: Prediction::Rows(Tensor::zeros([batch, classes], device)),
            dist_logits: None,
            aux_logits: None,
            box_deltas: None,
        }
    }

    /// The prediction at evaluation, as rows `[R, K]`: `logits`, or the mean of both heads for
    /// DeiT with a distillation token (as DeiT evaluates).
    pub fn eval_logits(&self) -> Tensor<2> {
        match &self.dist_logits {
            Some(d) => (self.logits.rows() + d.rows()).div_scalar(2.0),
            None => self.logits.rows(),
        }
    }

    /// The same outputs with `f` applied to every tensor (whatever its rank; all lead with the
    /// batch): e.g. taking images `start..start + len`, or moving them to another device.
    pub fn map_tensors(
        &self,
        f2: impl Fn(Tensor<2>) -> Tensor<2>,
        f3: impl Fn(Tensor<3>) -> Tensor<3>,
        f4: impl Fn(Tensor<4>) -> Tensor<4>,
    ) -> Self {
        Self {
            features: self
                .features
                .iter()
                .map(|f| match f {
                    Feature::Map(m) => Feature::Map(f4(m.clone())),
                    Feature::Tokens(t) => Feature::Tokens(f3(t.clone())),
                })
                .collect(),
            embedding: f2(self.embedding.clone()),
            logits: self.logits.map_tensor(&f2, &f3, &f4),
            dist_logits: self
                .dist_logits
                .as_ref()
                .map(|d| d.map_tensor(&f2, &f3, &f4)),
            aux_logits: self
                .aux_logits
                .as_ref()
                .map(|d| d.map_tensor(&f2, &f3, &f4)),
            box_deltas: self.box_deltas.as_ref().map(|d| f3(d.clone())),
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
            logits: Prediction::Rows(logits),
            dist_logits: None,
            aux_logits: None,
            box_deltas: None,
        }
    }

    /// The outputs of a dense detector: class scores per anchor `[B, ΣA, K]` and box deltas
    /// `[B, ΣA, 4]`.
    pub(crate) fn finish_anchors(
        self,
        embedding: Tensor<2>,
        logits: Tensor<3>,
        box_deltas: Tensor<3>,
    ) -> Intermediates {
        Intermediates {
            features: self.slots.into_iter().flatten().collect(),
            embedding,
            logits: Prediction::Anchors(logits),
            dist_logits: None,
            aux_logits: None,
            box_deltas: Some(box_deltas),
        }
    }

    /// The outputs of a dense model: its prediction is a `[B, K, H, W]` map.
    pub(crate) fn finish_map(self, embedding: Tensor<2>, logits: Tensor<4>) -> Intermediates {
        Intermediates {
            features: self.slots.into_iter().flatten().collect(),
            embedding,
            logits: Prediction::Map(logits),
            dist_logits: None,
            aux_logits: None,
            box_deltas: None,
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
    /// - taps: `[B, C, ⌈H/s⌉, ⌈W/s⌉]` (maps, `s` the tap's stride; `⌊·⌋` for VGG) or `[B, N, C]` (tokens)
    /// - embedding `[B, D]`, logits `[B, num_classes]` (a classifier) or `[B, K, H', W']`
    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates;

    /// Restarts the model's dropout streams from `seed` (a training seeds them at each epoch,
    /// so that a resumed run draws what an uninterrupted one would). Models without dropout
    /// ignore it.
    fn seed_dropout(&self, _seed: u64) {}

    /// Gives this copy dropout streams of its own, forked in order from the shared ones (a
    /// data-parallel replica). Models without dropout ignore it.
    fn fork_dropout(&mut self) {}

    /// The prediction as rows: equal to those of [`Backbone::forward_intermediates`].
    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_intermediates(x, &TapRequest::none())
            .logits
            .rows()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taps(names: &[&str]) -> Vec<TapInfo> {
        names.iter().map(|n| TapInfo::backbone(n, 8, 1)).collect()
    }

    #[test]
    fn patterns_find_groups_of_taps() {
        let info = taps(&["stem", "stage1", "stage2", "stage3"]);
        assert_eq!(find_taps(&info, "stage*"), Some(vec![1, 2, 3]));
        assert_eq!(find_taps(&info, "backbone.stage*"), Some(vec![1, 2, 3]));
        assert_eq!(find_taps(&info, "s*"), Some(vec![0, 1, 2, 3]));
        assert_eq!(find_taps(&info, "*2"), Some(vec![2]));
        assert_eq!(find_taps(&info, "st*e*"), Some(vec![0, 1, 2, 3])); // stem: st·e·m
        assert_eq!(find_taps(&info, "sta*e*"), Some(vec![1, 2, 3]));
        assert_eq!(find_taps(&info, "head*"), None);
        // Without `*`: full path, unique last part, group prefix.
        assert_eq!(find_taps(&info, "backbone.stage2"), Some(vec![2]));
        assert_eq!(find_taps(&info, "stem"), Some(vec![0]));
        assert_eq!(find_taps(&info, "backbone"), Some(vec![0, 1, 2, 3]));
        assert!(glob("a*b*c", "axxbyyc") && !glob("a*b*c", "axxbyy") && glob("*", ""));
        assert!(!glob("ab*ab", "ab") && glob("a*a", "aa"));
    }
}
