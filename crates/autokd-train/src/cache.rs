//! The teacher cache: the teacher runs once over a split (evaluation transform, no augmentation)
//! and its logits, pooled embeddings and tapped features are kept in device memory, indexed by
//! position in the split. A proxy trial reads them; no teacher pass happens during a search.

use autokd_data::{DataLoader, ItemTransform, Split};
use autokd_models::{Backbone, Feature, Intermediates, Model, Prediction, TapRequest};
use burn::prelude::*;

use crate::error::{Result, TrainError};

/// Default memory budget of a cache: 2 GiB.
pub const DEFAULT_BUDGET_BYTES: usize = 2 << 30;

/// Cached teacher outputs for every image of a split.
#[derive(Debug, Clone)]
pub struct TeacherCache {
    taps: Vec<usize>,
    features: Vec<Feature>,
    logits: Prediction,
    embedding: Tensor<2>,
    len: usize,
}

/// Concatenates batches of predictions along the batch (all of one kind: a model gives rows,
/// maps or anchors, never two of them).
fn cat_predictions(parts: Vec<Prediction>) -> Result<Prediction> {
    let mut rows = Vec::new();
    let mut anchors = Vec::new();
    let mut maps = Vec::new();
    for p in parts {
        match p {
            Prediction::Rows(r) => rows.push(r),
            Prediction::Anchors(a) => anchors.push(a),
            Prediction::Map(m) => maps.push(m),
        }
    }
    match (rows.is_empty(), anchors.is_empty(), maps.is_empty()) {
        (false, true, true) => Ok(Prediction::Rows(Tensor::cat(rows, 0))),
        (true, false, true) => Ok(Prediction::Anchors(Tensor::cat(anchors, 0))),
        (true, true, false) => Ok(Prediction::Map(Tensor::cat(maps, 0))),
        _ => Err(TrainError::Config(
            "teacher cache: the teacher gave no prediction, or predictions of several kinds".into(),
        )),
    }
}

fn cat_features(parts: Vec<Feature>) -> Feature {
    match parts.first() {
        Some(Feature::Tokens(_)) => Feature::Tokens(Tensor::cat(
            parts
                .into_iter()
                .filter_map(|f| {
                    if let Feature::Tokens(t) = f {
                        Some(t)
                    } else {
                        None
                    }
                })
                .collect(),
            0,
        )),
        _ => Feature::Map(Tensor::cat(
            parts
                .into_iter()
                .filter_map(|f| {
                    if let Feature::Map(t) = f {
                        Some(t)
                    } else {
                        None
                    }
                })
                .collect(),
            0,
        )),
    }
}

fn select(f: &Feature, idx: Tensor<1, Int>) -> Feature {
    match f {
        Feature::Map(t) => Feature::Map(t.clone().select(0, idx)),
        Feature::Tokens(t) => Feature::Tokens(t.clone().select(0, idx)),
    }
}

/// `split` in order through `transform`, `batch_size` images a batch, one loader thread (an
/// evaluation's loader).
fn in_order(split: &Split, transform: &ItemTransform, batch_size: usize) -> Result<DataLoader> {
    crate::task::EvalOptions {
        batch_size,
        workers: 1,
        embeddings: 0,
    }
    .loader(split, transform)
}

/// Bytes the cache holds per image: the taps at `taps`, the embedding and the logits, as the
/// teacher really returns them for one `[c, h, w]` input (one forward pass of a zero image, so
/// any tap layout and input size is sized exactly).
pub fn bytes_per_image(
    teacher: &Model,
    taps: &[usize],
    [c, h, w]: [usize; 3],
    device: &Device,
) -> Result<usize> {
    let info = teacher.feature_info();
    if let Some(t) = taps.iter().find(|&&t| t >= info.len()) {
        return Err(TrainError::Config(format!(
            "teacher has no tap index {t} (it has {})",
            info.len()
        )));
    }
    let out = teacher.valid().forward_intermediates(
        Tensor::<4>::zeros([1, c, h, w], device),
        &TapRequest::indices(taps),
    );
    let numel = |dims: Vec<usize>| dims.iter().product::<usize>();
    let floats = out.features.iter().map(|f| numel(f.dims())).sum::<usize>()
        + numel(out.embedding.dims().to_vec())
        + numel(out.logits.dims());
    Ok(4 * floats)
}

/// Where a proxy evaluator takes the teacher's outputs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherSource {
    /// Cached once in memory ([`TeacherCache`]).
    Cache,
    /// The frozen teacher runs on every batch: the cache would not fit its budget, or caching is
    /// off.
    Online,
}

/// How the teacher's outputs of a proxy subset are served, and what the cache would cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TeacherPlan {
    /// Cache or online.
    pub source: TeacherSource,
    /// Bytes of the cache for the whole subset (whether or not it is built).
    pub bytes: usize,
    /// The budget it was checked against.
    pub budget: usize,
}

impl TeacherPlan {
    /// The plan for caching `taps` of `teacher` over `images` inputs of shape `input`: the
    /// cache when it fits `budget` and `cache` is on, else the online teacher.
    pub fn new(
        teacher: &Model,
        taps: &[usize],
        input: [usize; 3],
        images: usize,
        budget: usize,
        cache: bool,
        device: &Device,
    ) -> Result<Self> {
        let bytes = images * bytes_per_image(teacher, taps, input, device)?;
        let source = if cache && bytes <= budget {
            TeacherSource::Cache
        } else {
            TeacherSource::Online
        };
        Ok(Self {
            source,
            bytes,
            budget,
        })
    }
}

impl TeacherCache {
    /// Runs `teacher` (frozen: its `valid()` copy, without autodiff) over `split` through
    /// `transform` (images of `shape` `[C, H, W]`) and keeps the taps at `taps` (indices of its
    /// `feature_info()`), its logits and embeddings. Fails before running if the cache would
    /// exceed `budget_bytes`, and when the images come in more than one size (a dense dataset
    /// of varying sizes: run the teacher online instead).
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        teacher: &Model,
        taps: &[usize],
        split: &Split,
        transform: ItemTransform,
        shape: [usize; 3],
        batch_size: usize,
        budget_bytes: usize,
        device: &Device,
    ) -> Result<Self> {
        let [c, h, w] = shape;
        let bytes = split.len() * bytes_per_image(teacher, taps, [c, h, w], device)?;
        if bytes > budget_bytes {
            return Err(TrainError::Config(format!(
                "teacher cache of {} images ({}x{}x{}) needs {} MiB, over its budget of {} MiB; cache fewer taps or images",
                split.len(),
                c,
                h,
                w,
                bytes >> 20,
                budget_bytes >> 20
            )));
        }
        let frozen = teacher.valid();
        let loader = in_order(split, &transform, batch_size)?;
        let request = TapRequest::indices(taps);
        let mut feats: Vec<Vec<Feature>> = vec![Vec::new(); taps.len()];
        let (mut logits, mut emb) = (Vec::new(), Vec::new());
        let mut size: Option<Vec<usize>> = None;
        for batch in loader.epoch(0, device) {
            let batch = batch?;
            let dims = batch.images.dims()[1..].to_vec();
            if *size.get_or_insert_with(|| dims.clone()) != dims {
                return Err(TrainError::Config(format!(
                    "teacher cache: images of sizes {:?} and {dims:?}; a cache needs one size (run the teacher online: cache_teacher = false)",
                    size.unwrap_or_default()
                )));
            }
            let out = frozen.forward_intermediates(batch.images, &request);
            for (slot, f) in feats.iter_mut().zip(out.features) {
                slot.push(f);
            }
            logits.push(out.logits);
            emb.push(out.embedding);
        }
        Ok(Self {
            taps: taps.to_vec(),
            features: feats.into_iter().map(cat_features).collect(),
            logits: cat_predictions(logits)?,
            embedding: Tensor::cat(emb, 0),
            len: split.len(),
        })
    }

    /// The pooled embeddings `[N, D]` of `teacher` (frozen) over `split` through `transform`,
    /// and nothing else: what the representation gap reads. Unlike a cache, images may differ in
    /// size, and a dense model's prediction (a detector's is `ΣA × K` floats per image) is not
    /// kept.
    pub fn embeddings_of(
        teacher: &Model,
        split: &Split,
        transform: ItemTransform,
        batch_size: usize,
        device: &Device,
    ) -> Result<Tensor<2>> {
        let frozen = teacher.valid();
        let loader = in_order(split, &transform, batch_size)?;
        let mut emb = Vec::new();
        for batch in loader.epoch(0, device) {
            let out = frozen.forward_intermediates(batch?.images, &TapRequest::none());
            emb.push(out.embedding);
        }
        if emb.is_empty() {
            return Err(TrainError::Config(
                "teacher embeddings: the split holds no image".into(),
            ));
        }
        Ok(Tensor::cat(emb, 0))
    }

    /// Images cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cached embeddings `[N, D]`.
    pub fn embeddings(&self) -> Tensor<2> {
        self.embedding.clone()
    }

    /// The teacher's outputs for the images at `positions`, with the taps of `request` (which
    /// must all be cached), in request order.
    pub fn lookup(&self, positions: &[usize], request: &TapRequest) -> Result<Intermediates> {
        let device = self.embedding.device();
        let idx: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [positions.len()]), &device);
        let features = request
            .indices
            .iter()
            .map(|t| {
                let slot = self.taps.iter().position(|c| c == t).ok_or_else(|| {
                    TrainError::Config(format!(
                        "teacher tap {t} is not in the cache (cached: {:?})",
                        self.taps
                    ))
                })?;
                Ok(select(&self.features[slot], idx.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Intermediates {
            features,
            embedding: self.embedding.clone().select(0, idx.clone()),
            logits: self.logits.map_tensor(
                |t| t.select(0, idx.clone()),
                |t| t.select(0, idx.clone()),
                |t| t.select(0, idx.clone()),
            ),
            dist_logits: None,
            aux_logits: None,
            box_deltas: None,
        })
    }
}
