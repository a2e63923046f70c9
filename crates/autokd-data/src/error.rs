//! Errors of the data layer. Every variant names the file or folder and what was expected.

use std::path::PathBuf;

/// What can go wrong when reading, splitting or batching a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A folder the dataset needs does not exist.
    #[error("{path}: folder not found ({what})")]
    MissingDir {
        /// The folder.
        path: PathBuf,
        /// What it should hold.
        what: String,
    },
    /// A file the dataset needs does not exist.
    #[error("{path}: file not found ({what})")]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: String,
    },
    /// A file's header does not start with the expected magic number.
    #[error("{path}: bad magic number 0x{found:08x}; expected {expected}")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What the header held.
        found: u32,
        /// What was expected.
        expected: String,
    },
    /// A file is shorter than its header or format says it must be.
    #[error("{path}: truncated: {expected} bytes expected, {found} found")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes expected.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// A file is longer than its header or format says it must be.
    #[error("{path}: oversized: {expected} bytes expected, {found} found")]
    Oversized {
        /// The file.
        path: PathBuf,
        /// Bytes expected.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// A file of fixed-size records whose length is not a multiple of the record size.
    #[error("{path}: {found} bytes is not a whole number of {record}-byte records")]
    RecordSize {
        /// The file.
        path: PathBuf,
        /// The record size of the format.
        record: usize,
        /// The file length.
        found: u64,
    },
    /// A label outside `0..num_classes`.
    #[error("{path}: label {label} at record {index} is out of range; expected 0..{num_classes}")]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// Record index.
        index: usize,
        /// The label found.
        label: u64,
        /// Number of classes of the format.
        num_classes: usize,
    },
    /// Any other violation of a file format.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// An image file that could not be decoded.
    #[error("{path}: cannot decode image: {message}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// An unknown or malformed dataset string.
    #[error("dataset `{spec}`: {message}")]
    Spec {
        /// The string given.
        spec: String,
        /// What was expected.
        message: String,
    },
    /// A split or loader setting that cannot be honoured.
    #[error("{0}")]
    Config(String),
    /// A batch could not be turned into tensors.
    #[error("batch: {0}")]
    Tensor(String),
    /// A loader worker thread died.
    #[error("data loader worker {0} stopped unexpectedly")]
    WorkerLost(usize),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Result type of the data layer.
pub type Result<T> = std::result::Result<T, DataError>;
