//! Decoded images and the sources that hold them.

use std::sync::Arc;

use crate::annotation::Annotation;
use crate::error::{DataError, Result};

/// One decoded image: `channels × height × width` bytes, channel-major (CHW), as the models take
/// them. `max_value` is the largest value a pixel can hold (255, or 16 for the digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Number of channels (1 or 3).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// `channels * height * width` bytes in CHW order.
    pub data: Vec<u8>,
}

impl Image {
    /// An image from CHW bytes; the length must equal `channels * height * width`.
    pub fn new(channels: usize, height: usize, width: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != channels * height * width {
            return Err(DataError::Config(format!(
                "image of {channels}x{height}x{width} needs {} bytes, got {}",
                channels * height * width,
                data.len()
            )));
        }
        Ok(Self {
            channels,
            height,
            width,
            data,
        })
    }

    /// The byte at channel `c`, row `y`, column `x`.
    #[inline]
    pub fn at(&self, c: usize, y: usize, x: usize) -> u8 {
        self.data[(c * self.height + y) * self.width + x]
    }
}

/// Where the images of one split come from: memory (IDX, CIFAR, digits) or files decoded on
/// demand (image folders). Implementations must be cheap to share between loader threads.
pub trait ImageSource: Send + Sync + std::fmt::Debug {
    /// Number of images.
    fn len(&self) -> usize;
    /// Whether the source holds no image.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The class of image `index`.
    fn label(&self, index: usize) -> usize;
    /// Image `index`, decoded. Errors name the file for sources backed by files.
    fn image(&self, index: usize) -> Result<Image>;
    /// What image `index` is annotated with: its class unless the source holds more (a mask,
    /// boxes). Errors name the file for sources backed by files.
    fn annotation(&self, index: usize) -> Result<Annotation> {
        let label = self.label(index);
        u16::try_from(label)
            .map(Annotation::Class)
            .map_err(|_| DataError::Config(format!("class {label} of image {index} exceeds 65535")))
    }
}

/// Images of one fixed shape kept in memory as bytes.
#[derive(Debug, Clone)]
pub struct InMemory {
    channels: usize,
    height: usize,
    width: usize,
    pixels: Vec<u8>,
    labels: Vec<u16>,
}

impl InMemory {
    /// Images of shape `channels × height × width`, stored back to back in CHW order.
    pub fn new(
        channels: usize,
        height: usize,
        width: usize,
        pixels: Vec<u8>,
        labels: Vec<u16>,
    ) -> Result<Self> {
        let per = channels * height * width;
        if per == 0 || pixels.len() != per * labels.len() {
            return Err(DataError::Config(format!(
                "{} labels of {channels}x{height}x{width} images need {} bytes, got {}",
                labels.len(),
                per * labels.len(),
                pixels.len()
            )));
        }
        Ok(Self {
            channels,
            height,
            width,
            pixels,
            labels,
        })
    }

    /// All labels, in order.
    pub fn labels(&self) -> &[u16] {
        &self.labels
    }

    /// The raw bytes of image `index`.
    pub fn pixels(&self, index: usize) -> &[u8] {
        let per = self.channels * self.height * self.width;
        &self.pixels[index * per..(index + 1) * per]
    }

    /// Shares this source behind an `Arc`.
    pub fn shared(self) -> Arc<dyn ImageSource> {
        Arc::new(self)
    }
}

impl ImageSource for InMemory {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn label(&self, index: usize) -> usize {
        usize::from(self.labels[index])
    }

    fn image(&self, index: usize) -> Result<Image> {
        if index >= self.labels.len() {
            return Err(DataError::Config(format!(
                "image index {index} out of range (0..{})",
                self.labels.len()
            )));
        }
        Image::new(
            self.channels,
            self.height,
            self.width,
            self.pixels(index).to_vec(),
        )
    }
}
