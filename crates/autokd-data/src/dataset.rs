//! A loaded dataset: what it is ([`DatasetInfo`]) and its splits ([`Split`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::annotation::Annotated;
use crate::error::{DataError, Result};
use crate::image::{Image, ImageSource};

/// What a model needs to know about a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// The dataset string it was loaded from, e.g. `cifar100:/data/cifar-100-binary`.
    pub name: String,
    /// Channels of the images the model sees.
    pub channels: usize,
    /// Height of the images the model sees (after resize for image folders).
    pub height: usize,
    /// Width of the images the model sees.
    pub width: usize,
    /// Number of classes.
    pub num_classes: usize,
    /// Class names, `num_classes` of them.
    pub class_names: Vec<String>,
    /// The largest pixel value of the stored bytes (255; 16 for the digits).
    pub pixel_max: f32,
    /// Per-channel mean of pixel values scaled to `[0, 1]`, for normalization.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation of pixel values scaled to `[0, 1]`.
    pub std: Vec<f32>,
    /// For detection: the side in input pixels of the smallest anchor (the ratio-1 box of the
    /// first size on the finest level) that this dataset's objects call for; `None`: the
    /// detector's own (32 for RetinaNet on P3). Small CPU-scale scenes declare theirs, as an
    /// mmdet config sets `octave_base_scale` per dataset.
    pub anchor_base: Option<f32>,
}

impl DatasetInfo {
    /// Input shape `[channels, height, width]`.
    pub fn input_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }
}

/// A view of a subset of an [`ImageSource`] (the whole of it, a validation split, a proxy
/// subset). Cloning is cheap: the images are shared.
#[derive(Debug, Clone)]
pub struct Split {
    source: Arc<dyn ImageSource>,
    indices: Arc<Vec<usize>>,
}

impl Split {
    /// All images of `source`.
    pub fn all(source: Arc<dyn ImageSource>) -> Self {
        let indices = (0..source.len()).collect();
        Self {
            source,
            indices: Arc::new(indices),
        }
    }

    /// The images at `indices` of this split (positions in this split, not in the source).
    pub fn subset(&self, positions: &[usize]) -> Result<Self> {
        let indices = positions
            .iter()
            .map(|&p| {
                self.indices.get(p).copied().ok_or_else(|| {
                    DataError::Config(format!(
                        "subset position {p} out of range (split of {})",
                        self.len()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            source: Arc::clone(&self.source),
            indices: Arc::new(indices),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the split is empty.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The class of the image at `position`.
    pub fn label(&self, position: usize) -> usize {
        self.source.label(self.indices[position])
    }

    /// All labels in order.
    pub fn labels(&self) -> Vec<usize> {
        self.indices.iter().map(|&i| self.source.label(i)).collect()
    }

    /// The image at `position`, decoded.
    pub fn image(&self, position: usize) -> Result<Image> {
        let index = *self.indices.get(position).ok_or_else(|| {
            DataError::Config(format!(
                "position {position} out of range (split of {})",
                self.len()
            ))
        })?;
        self.source.image(index)
    }

    /// The image at `position` with its annotation, decoded.
    pub fn annotated(&self, position: usize) -> Result<Annotated> {
        let image = self.image(position)?;
        Annotated::new(image, self.source.annotation(self.indices[position])?)
    }

    /// Positions in the source of this split's images.
    pub fn source_indices(&self) -> &[usize] {
        &self.indices
    }

    /// Images per class, for `num_classes` classes.
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &i in self.indices.iter() {
            if let Some(c) = counts.get_mut(self.source.label(i)) {
                *c += 1;
            }
        }
        counts
    }
}

/// A dataset with its training and test splits, as read from disk or the binary.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// What it is.
    pub info: DatasetInfo,
    /// The training split (search and training draw their validation split from it).
    pub train: Split,
    /// The test split (reported, never used for selection).
    pub test: Split,
}
