//! Batching to tensors, with batches built ahead of the training step by worker threads.
//!
//! Batch `k` of an epoch is built by worker `k mod W` and handed over in order, so batches are
//! identical for any number of workers (burn's multi-threaded loader hands batches over in the
//! order they finish, which is not reproducible). The order of an epoch is a seeded shuffle of
//! `(seed, epoch)`, and each sample's augmentation RNG is seeded by `(seed, epoch, position)`.
//!
//! A loader has one of two pipelines: a [`Transform`] to the dataset's fixed input size
//! (classification: every image of a batch has one size), or a [`DenseTransform`] whose items
//! keep their annotation and any size, padded per batch to a common one ([`DenseTargets`]).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::annotation::{Annotation, BoxAnnotation};
use crate::augment::Transform;
use crate::dataset::Split;
use crate::dense::DenseTransform;
use crate::error::{DataError, Result};

/// How batches are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    /// Images per batch.
    pub batch_size: usize,
    /// Shuffle every epoch (training) or keep the split's order (evaluation).
    pub shuffle: bool,
    /// Drop the last batch if it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Seed of the order and the augmentation.
    pub seed: u64,
    /// Threads that build batches ahead of the step; 0 builds them on the caller's thread.
    pub workers: usize,
    /// Batches each worker may build ahead.
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            shuffle: true,
            drop_last: false,
            seed: 0,
            workers: 1,
            prefetch: 2,
        }
    }
}

/// One batch in host memory: normalized images `[B, C, H, W]` and class indices.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// `B·C·H·W` floats.
    pub images: Vec<f32>,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
    /// Class of each image (the source's label; a dense source's image-level class).
    pub targets: Vec<i64>,
    /// Position in the split of each image (for teacher caches keyed by sample).
    pub positions: Vec<usize>,
    /// A dense pipeline's annotations and padding; `None` for a fixed-size pipeline.
    pub dense: Option<DenseTargets>,
}

/// What a batch of a dense pipeline carries besides its images.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseTargets {
    /// `[B, H, W]`: 1 where a pixel belongs to its image, 0 in the padding.
    pub valid: Vec<u8>,
    /// Each image's `(height, width)` after the pipeline, before padding.
    pub sizes: Vec<(usize, usize)>,
    /// Each image's `(height, width)` as read, before the pipeline (an evaluation maps its
    /// boxes back to it, as mmdet rescales detections to the original image).
    pub original_sizes: Vec<(usize, usize)>,
    /// Each image's annotation after the pipeline (masks padded with [`crate::IGNORE`]).
    pub annotations: Vec<Annotation>,
}

/// One batch on a device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Images `[B, C, H, W]`.
    pub images: Tensor<4>,
    /// Classes `[B]`.
    pub targets: Tensor<1, Int>,
    /// Position in the split of each image.
    pub positions: Vec<usize>,
    /// A dense pipeline's annotations and padding; `None` for a fixed-size pipeline.
    pub dense: Option<DenseBatch>,
}

/// The dense part of a [`Batch`].
#[derive(Debug, Clone)]
pub struct DenseBatch {
    /// `[B, H, W]`: 1.0 on each image's pixels, 0.0 in the padding.
    pub valid: Tensor<3>,
    /// `[B, H, W]` classes when every image of the batch has a mask ([`crate::IGNORE`] in
    /// the padding and on ignored pixels).
    pub masks: Option<Tensor<3, Int>>,
    /// Each image's `(height, width)` before padding.
    pub sizes: Vec<(usize, usize)>,
    /// Each image's `(height, width)` before the pipeline; empty where unknown (batches made
    /// by hand): the sizes before padding stand for them.
    pub original_sizes: Vec<(usize, usize)>,
    /// Each image's boxes (empty for images without boxes), in the padded frame's pixels.
    pub boxes: Vec<Vec<BoxAnnotation>>,
}

impl DenseTargets {
    /// Moves the targets onto `device`.
    pub fn to_device(self, [b, _, h, w]: [usize; 4], device: &Device) -> DenseBatch {
        let valid: Vec<f32> = self.valid.iter().map(|&v| f32::from(v)).collect();
        let valid = Tensor::<3>::from_data(TensorData::new(valid, [b, h, w]), device);
        let masks: Option<Vec<i64>> = self
            .annotations
            .iter()
            .map(|a| match a {
                Annotation::Mask(m) => Some(
                    (0..m.height * m.width)
                        .map(|i| i64::from(m.at(i / m.width, i % m.width)))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat());
        let masks =
            masks.map(|m| Tensor::<3, Int>::from_data(TensorData::new(m, [b, h, w]), device));
        let boxes = self
            .annotations
            .into_iter()
            .map(|a| match a {
                Annotation::Boxes(b) => b,
                _ => Vec::new(),
            })
            .collect();
        DenseBatch {
            valid,
            masks,
            sizes: self.sizes,
            original_sizes: self.original_sizes,
            boxes,
        }
    }
}

impl Batch {
    /// Images `start..start + len` of the batch with their targets, on `device` (a shard of
    /// data-parallel training).
    pub fn narrow(&self, start: usize, len: usize, device: &Device) -> Batch {
        Batch {
            images: self.images.clone().narrow(0, start, len).to_device(device),
            targets: self.targets.clone().narrow(0, start, len).to_device(device),
            positions: self.positions[start..start + len].to_vec(),
            dense: self.dense.as_ref().map(|d| DenseBatch {
                valid: d.valid.clone().narrow(0, start, len).to_device(device),
                masks: d
                    .masks
                    .as_ref()
                    .map(|m| m.clone().narrow(0, start, len).to_device(device)),
                sizes: d.sizes[start..start + len].to_vec(),
                original_sizes: d
                    .original_sizes
                    .get(start..start + len)
                    .map(<[_]>::to_vec)
                    .unwrap_or_default(),
                boxes: d.boxes[start..start + len].to_vec(),
            }),
        }
    }
}

impl HostBatch {
    /// Moves the batch onto `device`.
    pub fn to_device(self, device: &Device) -> Batch {
        let n = self.targets.len();
        let images = Tensor::<4>::from_data(TensorData::new(self.images, self.shape), device);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(self.targets, [n]), device);
        Batch {
            images,
            targets,
            positions: self.positions,
            dense: self.dense.map(|d| d.to_device(self.shape, device)),
        }
    }
}

/// What turns a split's items into a batch's images.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemTransform {
    /// To the dataset's input size (classification): every image of a batch has one size.
    Fixed(Transform),
    /// Annotated items of any size, padded per batch ([`DenseTargets`]).
    Dense(DenseTransform),
}

impl From<Transform> for ItemTransform {
    fn from(t: Transform) -> Self {
        ItemTransform::Fixed(t)
    }
}

impl From<DenseTransform> for ItemTransform {
    fn from(t: DenseTransform) -> Self {
        ItemTransform::Dense(t)
    }
}

/// Draws batches of a [`Split`] through a [`Transform`].
#[derive(Debug, Clone)]
pub struct DataLoader {
    split: Split,
    pipeline: Arc<ItemTransform>,
    config: LoaderConfig,
}

/// splitmix64: decorrelates the seeds derived from `(seed, epoch, position)`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn derive(seed: u64, epoch: u64, position: u64) -> u64 {
    mix(mix(mix(seed) ^ epoch) ^ position)
}

impl DataLoader {
    /// A loader over `split`. Fails on a zero batch size or an empty split.
    pub fn new(split: Split, transform: Transform, config: LoaderConfig) -> Result<Self> {
        Self::with_transform(split, ItemTransform::Fixed(transform), config)
    }

    /// A loader of annotated items through a dense pipeline: each batch is padded to a common
    /// size and carries [`DenseTargets`]. Fails on a zero batch size or an empty split.
    pub fn dense(split: Split, transform: DenseTransform, config: LoaderConfig) -> Result<Self> {
        Self::with_transform(split, ItemTransform::Dense(transform), config)
    }

    /// A loader through either kind of transform. Fails on a zero batch size or an empty split.
    pub fn with_transform(
        split: Split,
        transform: ItemTransform,
        config: LoaderConfig,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::Config("batch_size must be at least 1".into()));
        }
        if split.is_empty() {
            return Err(DataError::Config(
                "cannot load batches from an empty split".into(),
            ));
        }
        Ok(Self {
            split,
            pipeline: Arc::new(transform),
            config,
        })
    }

    /// The split it draws from.
    pub fn split(&self) -> &Split {
        &self.split
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.split.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Positions in the split of the batches of `epoch`, in order.
    pub fn epoch_order(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.split.len()).collect();
        if self.config.shuffle {
            let mut rng = ChaCha8Rng::seed_from_u64(derive(self.config.seed, epoch, u64::MAX));
            order.shuffle(&mut rng);
        }
        order
            .chunks(self.config.batch_size)
            .take(self.num_batches())
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Builds one batch from split positions (the `k`-th batch of `epoch`).
    fn build(
        split: &Split,
        pipeline: &ItemTransform,
        seed: u64,
        epoch: u64,
        positions: Vec<usize>,
    ) -> Result<HostBatch> {
        match pipeline {
            ItemTransform::Fixed(t) => Self::build_fixed(split, t, seed, epoch, positions),
            ItemTransform::Dense(t) => Self::build_dense(split, t, seed, epoch, positions),
        }
    }

    /// A batch of a dense pipeline: each item through the steps with its own RNG, then padded.
    fn build_dense(
        split: &Split,
        transform: &DenseTransform,
        seed: u64,
        epoch: u64,
        positions: Vec<usize>,
    ) -> Result<HostBatch> {
        let mut items = Vec::with_capacity(positions.len());
        let mut targets = Vec::with_capacity(positions.len());
        let mut original_sizes = Vec::with_capacity(positions.len());
        for &pos in &positions {
            let mut rng = ChaCha8Rng::seed_from_u64(derive(seed, epoch, pos as u64));
            let item = split.annotated(pos)?;
            original_sizes.push(item.size());
            items.push(transform.apply(item, &mut rng)?);
            targets.push(split.label(pos) as i64);
        }
        let (images, padded) = transform.collate(&items)?;
        Ok(HostBatch {
            images,
            shape: [
                positions.len(),
                padded.channels,
                padded.padded.0,
                padded.padded.1,
            ],
            targets,
            positions,
            dense: Some(DenseTargets {
                valid: padded.valid,
                sizes: padded.sizes,
                original_sizes,
                annotations: padded.annotations,
            }),
        })
    }

    /// A batch of a fixed-size pipeline.
    fn build_fixed(
        split: &Split,
        transform: &Transform,
        seed: u64,
        epoch: u64,
        positions: Vec<usize>,
    ) -> Result<HostBatch> {
        let per = transform.output_len();
        let [c, h, w] = transform.output_shape();
        let mut images = vec![0.0f32; positions.len() * per];
        let mut targets = Vec::with_capacity(positions.len());
        for (slot, &pos) in positions.iter().enumerate() {
            let img = split.image(pos)?;
            let mut rng = ChaCha8Rng::seed_from_u64(derive(seed, epoch, pos as u64));
            transform.apply(&img, &mut rng, &mut images[slot * per..(slot + 1) * per])?;
            targets.push(split.label(pos) as i64);
        }
        Ok(HostBatch {
            images,
            shape: [positions.len(), c, h, w],
            targets,
            positions,
            dense: None,
        })
    }

    /// The host batches of `epoch`, built ahead by the worker threads.
    pub fn host_epoch(&self, epoch: u64) -> HostBatches {
        let batches = self.epoch_order(epoch);
        let total = batches.len();
        let workers = self.config.workers;
        if workers == 0 {
            return HostBatches {
                inner: Inner::Inline {
                    loader: self.clone(),
                    epoch,
                    batches: batches.into_iter(),
                },
                next: 0,
                total,
            };
        }
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        let mut per_worker: Vec<Vec<Vec<usize>>> = vec![Vec::new(); workers];
        for (k, b) in batches.into_iter().enumerate() {
            per_worker[k % workers].push(b);
        }
        for mine in per_worker {
            let (tx, rx): (SyncSender<Result<HostBatch>>, Receiver<_>) =
                sync_channel(self.config.prefetch.max(1));
            let split = self.split.clone();
            let pipeline = Arc::clone(&self.pipeline);
            let seed = self.config.seed;
            handles.push(std::thread::spawn(move || {
                for positions in mine {
                    let batch = Self::build(&split, &pipeline, seed, epoch, positions);
                    let failed = batch.is_err();
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            }));
            receivers.push(rx);
        }
        HostBatches {
            inner: Inner::Threads { receivers, handles },
            next: 0,
            total,
        }
    }

    /// The batches of `epoch` on `device`.
    pub fn epoch<'a>(
        &self,
        epoch: u64,
        device: &'a Device,
    ) -> impl Iterator<Item = Result<Batch>> + 'a {
        self.host_epoch(epoch)
            .map(move |b| b.map(|b| b.to_device(device)))
    }
}

enum Inner {
    Inline {
        loader: DataLoader,
        epoch: u64,
        batches: std::vec::IntoIter<Vec<usize>>,
    },
    Threads {
        receivers: Vec<Receiver<Result<HostBatch>>>,
        handles: Vec<JoinHandle<()>>,
    },
}

/// Iterator over the host batches of one epoch, in order. Stops after the first error.
pub struct HostBatches {
    inner: Inner,
    next: usize,
    total: usize,
}

impl Iterator for HostBatches {
    type Item = Result<HostBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let k = self.next;
        let item = match &mut self.inner {
            Inner::Inline {
                loader,
                epoch,
                batches,
            } => {
                let positions = batches.next()?;
                DataLoader::build(
                    &loader.split,
                    &loader.pipeline,
                    loader.config.seed,
                    *epoch,
                    positions,
                )
            }
            Inner::Threads { receivers, .. } => {
                let w = k % receivers.len();
                receivers[w].recv().unwrap_or(Err(DataError::WorkerLost(w)))
            }
        };
        self.next = if item.is_err() { self.total } else { k + 1 };
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total - self.next;
        (left, Some(left))
    }
}

impl Drop for HostBatches {
    fn drop(&mut self) {
        if let Inner::Threads { receivers, handles } = &mut self.inner {
            // Closing the channels stops workers at their next send.
            receivers.clear();
            for h in handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotation::{BoxAnnotation, ClassMask, IGNORE, MaskValues};
    use crate::augment::Augment;
    use crate::dataset::DatasetInfo;
    use crate::dense::{DensePipeline, DenseStep};
    use crate::image::{Image, ImageSource, InMemory};

    fn toy(n: usize) -> (Split, DatasetInfo) {
        let pixels: Vec<u8> = (0..n * 4).map(|v| (v * 7 % 256) as u8).collect();
        let labels: Vec<u16> = (0..n).map(|i| (i % 3) as u16).collect();
        let info = DatasetInfo {
            name: "toy".into(),
            channels: 1,
            height: 2,
            width: 2,
            num_classes: 3,
            class_names: vec!["a".into(), "b".into(), "c".into()],
            pixel_max: 255.0,
            mean: vec![0.0],
            std: vec![1.0],
            anchor_base: None,
        };
        (
            Split::all(InMemory::new(1, 2, 2, pixels, labels).unwrap().shared()),
            info,
        )
    }

    fn collect(loader: &DataLoader, epoch: u64) -> Vec<HostBatch> {
        loader
            .host_epoch(epoch)
            .collect::<Result<Vec<_>>>()
            .unwrap()
    }

    #[test]
    fn same_batches_for_any_worker_count() {
        let (split, info) = toy(23);
        let t = Transform::train(&info, Augment::shift(1)).unwrap();
        let cfg = |workers| LoaderConfig {
            batch_size: 5,
            seed: 11,
            workers,
            ..LoaderConfig::default()
        };
        let base = collect(
            &DataLoader::new(split.clone(), t.clone(), cfg(0)).unwrap(),
            2,
        );
        assert_eq!(base.len(), 5);
        assert_eq!(base[4].shape, [3, 1, 2, 2]);
        for w in [1, 2, 3] {
            let l = DataLoader::new(split.clone(), t.clone(), cfg(w)).unwrap();
            assert_eq!(collect(&l, 2), base, "workers = {w}");
        }
        // Every image once per epoch, targets match labels.
        let mut seen: Vec<usize> = base.iter().flat_map(|b| b.positions.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..23).collect::<Vec<_>>());
        for b in &base {
            for (t, &p) in b.targets.iter().zip(&b.positions) {
                assert_eq!(*t as usize, p % 3);
            }
        }
        // Another epoch, another order.
        let l = DataLoader::new(split, t, cfg(2)).unwrap();
        assert_ne!(collect(&l, 3)[0].positions, base[0].positions);
    }

    /// A source of images of different sizes with masks (image `i` is `(4 + i) × (10 − i)`,
    /// grey value `10·i`, its mask class `i mod 3` everywhere).
    #[derive(Debug)]
    struct Masks(usize);

    impl ImageSource for Masks {
        fn len(&self) -> usize {
            self.0
        }
        fn label(&self, index: usize) -> usize {
            index % 3
        }
        fn image(&self, i: usize) -> Result<Image> {
            let (h, w) = (4 + i, 10 - i);
            Image::new(1, h, w, vec![(10 * i) as u8; h * w])
        }
        fn annotation(&self, i: usize) -> Result<Annotation> {
            let (h, w) = (4 + i, 10 - i);
            Ok(Annotation::Mask(ClassMask::new(
                h,
                w,
                MaskValues::U8(vec![(i % 3) as u8; h * w]),
            )?))
        }
    }

    /// Dense batches: each image keeps its size inside a batch padded to a multiple of 8, the
    /// valid mask and the masks' IGNORE padding match the sizes, values are normalized by
    /// hand, the batches are the same for any number of workers, and they reach the device
    /// with their masks.
    #[test]
    fn dense_batches_pad_and_stay_deterministic() {
        let (_, info) = toy(1);
        let src: Arc<dyn ImageSource> = Arc::new(Masks(5));
        let pipeline = DensePipeline {
            steps: vec![DenseStep::Flip { p: 0.5 }],
            pad_multiple: 8,
        };
        let cfg = |workers| LoaderConfig {
            batch_size: 2,
            seed: 5,
            workers,
            ..LoaderConfig::default()
        };
        let load = |workers| {
            let t = DenseTransform::new(&info, pipeline.clone()).unwrap();
            collect(
                &DataLoader::dense(Split::all(Arc::clone(&src)), t, cfg(workers)).unwrap(),
                1,
            )
        };
        let base = load(0);
        assert_eq!(base.len(), 3);
        for w in [1, 2] {
            assert_eq!(load(w), base, "workers = {w}");
        }
        for b in &base {
            let d = b.dense.as_ref().unwrap();
            let [n, c, h, w] = b.shape;
            let want_h = b
                .positions
                .iter()
                .map(|&i| 4 + i)
                .max()
                .unwrap()
                .div_ceil(8)
                * 8;
            let want_w = b
                .positions
                .iter()
                .map(|&i| 10 - i)
                .max()
                .unwrap()
                .div_ceil(8)
                * 8;
            assert_eq!((n, c, h, w), (b.positions.len(), 1, want_h, want_w));
            for (k, &i) in b.positions.iter().enumerate() {
                let (ih, iw) = (4 + i, 10 - i);
                assert_eq!(d.sizes[k], (ih, iw));
                assert_eq!(d.original_sizes[k], (ih, iw));
                let Annotation::Mask(m) = &d.annotations[k] else {
                    panic!("not a mask")
                };
                for y in 0..h {
                    for x in 0..w {
                        let inside = y < ih && x < iw;
                        assert_eq!(d.valid[(k * h + y) * w + x], u8::from(inside));
                        assert_eq!(m.at(y, x), if inside { (i % 3) as u16 } else { IGNORE });
                        // mean 0, std 1: v / 255 inside, 0 outside.
                        let want = if inside { (10 * i) as f32 / 255.0 } else { 0.0 };
                        assert!((b.images[(k * h + y) * w + x] - want).abs() < 1e-6);
                    }
                }
            }
        }
        let device = Device::flex();
        let batch = base[0].clone().to_device(&device);
        let d = batch.dense.unwrap();
        let masks = d.masks.unwrap();
        assert_eq!(masks.dims(), [2, base[0].shape[2], base[0].shape[3]]);
        let valid: f32 = d.valid.sum().into_scalar();
        let sizes: usize = d.sizes.iter().map(|(h, w)| h * w).sum();
        assert_eq!(valid as usize, sizes);
    }

    /// Boxes reach the device per image, in order, with no mask tensor; a shard of the batch
    /// keeps its images' boxes, sizes and valid rows.
    #[test]
    fn boxes_travel_with_their_images() {
        let b = |x: f32, label| BoxAnnotation {
            xyxy: [x, 1.0, x + 2.0, 3.0],
            label,
            crowd: false,
            area: 4.0,
        };
        let host = HostBatch {
            images: vec![0.0; 2 * 3 * 4],
            shape: [2, 1, 3, 4],
            targets: vec![0, 0],
            positions: vec![7, 9],
            dense: Some(DenseTargets {
                valid: [[1u8; 12], [1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]].concat(),
                sizes: vec![(3, 4), (2, 2)],
                original_sizes: vec![(6, 8), (4, 4)],
                annotations: vec![
                    Annotation::Boxes(vec![b(0.0, 1), b(1.0, 2)]),
                    Annotation::Boxes(vec![]),
                ],
            }),
        };
        let device = Device::flex();
        let batch = host.to_device(&device);
        let d = batch.dense.as_ref().unwrap();
        assert!(d.masks.is_none());
        assert_eq!(d.boxes, vec![vec![b(0.0, 1), b(1.0, 2)], vec![]]);
        let second = batch.narrow(1, 1, &device);
        let d2 = second.dense.unwrap();
        assert_eq!((second.positions, d2.sizes), (vec![9], vec![(2, 2)]));
        assert_eq!(d2.original_sizes, vec![(4, 4)]);
        assert!(d2.boxes[0].is_empty());
        assert_eq!(d2.valid.sum().into_scalar::<f32>(), 4.0);
    }

    /// A fixed-size source read as annotated items: each image with its class.
    #[test]
    fn a_classification_source_annotates_its_classes() {
        let (split, _) = toy(4);
        let a = split.annotated(2).unwrap();
        assert_eq!(a.annotation, Annotation::Class(2));
        assert_eq!(a.image, split.image(2).unwrap());
    }

    #[test]
    fn eval_order_drop_last_and_values() {
        let (split, info) = toy(7);
        let t = Transform::eval(&info).unwrap();
        let cfg = LoaderConfig {
            batch_size: 3,
            shuffle: false,
            drop_last: true,
            ..LoaderConfig::default()
        };
        let l = DataLoader::new(split, t, cfg).unwrap();
        assert_eq!(l.num_batches(), 2);
        let b = collect(&l, 0);
        assert_eq!(b[0].positions, vec![0, 1, 2]);
        // Image 1 holds bytes 4..8 times 7: 28, 35, 42, 49; mean 0, std 1 → v / 255.
        let expect: Vec<f32> = [28.0, 35.0, 42.0, 49.0].iter().map(|v| v / 255.0).collect();
        for (got, want) in b[0].images[4..8].iter().zip(&expect) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }

    #[test]
    fn to_device_tensors() {
        let (split, info) = toy(4);
        let l = DataLoader::new(
            split,
            Transform::eval(&info).unwrap(),
            LoaderConfig {
                batch_size: 4,
                shuffle: false,
                ..LoaderConfig::default()
            },
        )
        .unwrap();
        let device = Device::flex();
        let batch = l.epoch(0, &device).next().unwrap().unwrap();
        assert_eq!(batch.images.dims(), [4, 1, 2, 2]);
        let t: Vec<i64> = batch
            .targets
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        assert_eq!(t, vec![0, 1, 2, 0]);
    }

    #[test]
    fn errors_stop_the_epoch() {
        let (split, info) = toy(4);
        assert!(
            DataLoader::new(
                split.clone(),
                Transform::eval(&info).unwrap(),
                LoaderConfig {
                    batch_size: 0,
                    ..LoaderConfig::default()
                }
            )
            .is_err()
        );
        let empty = split.subset(&[]).unwrap();
        assert!(
            DataLoader::new(
                empty,
                Transform::eval(&info).unwrap(),
                LoaderConfig::default()
            )
            .is_err()
        );
        // A 3-channel transform on 1-channel images fails in the worker and is reported.
        let mut rgb = info.clone();
        rgb.channels = 3;
        rgb.mean = vec![0.0; 3];
        rgb.std = vec![1.0; 3];
        let l = DataLoader::new(
            split,
            Transform::eval(&rgb).unwrap(),
            LoaderConfig {
                batch_size: 2,
                workers: 2,
                ..LoaderConfig::default()
            },
        )
        .unwrap();
        let items: Vec<_> = l.host_epoch(0).collect();
        assert_eq!(items.len(), 1);
        assert!(
            items[0]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("channels")
        );
    }
}
