//! Datasets, augmentation and batching for autokd.
//!
//! A dataset is named by a [`DatasetSpec`] string (`digits`, `fashion-mnist[:DIR]`,
//! `cifar10:DIR`, `cifar100:DIR`, `imagefolder:DIR`), read into a [`Dataset`] of
//! [`Split`]s, split with [`stratified_split`], and batched onto a device by a [`DataLoader`]
//! through a [`Transform`]; annotated items (masks, boxes) of any size go through a
//! [`DenseTransform`] into padded batches ([`DataLoader::dense`]). Nothing here downloads
//! anything; bad input is a [`DataError`] that names the file.

pub mod annotation;
pub mod augment;
pub mod cifar;
pub mod cityscapes;
pub mod coco;
pub mod dataset;
pub mod dense;
pub mod digits;
pub mod error;
pub mod fashion_mnist;
pub mod folder;
pub mod idx;
pub mod image;
pub mod loader;
pub mod scenes;
pub mod spec;
pub mod split;
pub mod voc;
pub mod vocseg;

pub use annotation::{
    Annotated, Annotation, BoxAnnotation, ClassMask, IGNORE, MaskValues, PaddedBatch,
    keep_ratio_size, pad_batch,
};
pub use augment::{Augment, Transform};
pub use dataset::{Dataset, DatasetInfo, Split};
pub use dense::{DensePipeline, DenseStep, DenseTransform, PhotometricDistortion};
pub use error::{DataError, Result};
pub use image::{Image, ImageSource, InMemory};
pub use loader::{
    Batch, DataLoader, DenseBatch, DenseTargets, HostBatch, ItemTransform, LoaderConfig,
};
pub use spec::{DATASET_FORMS, DatasetSpec, DeclaredSize};
pub use split::{stratified_split, stratified_subset};
