//! Errors of the application library.

use std::path::PathBuf;

/// What can stop a search.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A file or folder could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds something else than expected.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A setting that cannot be honoured.
    #[error("{0}")]
    Invalid(String),
    /// The caller's observer could not write the search's output.
    #[error("writing the search's output: {0}")]
    Output(#[source] std::io::Error),
    /// Training or proxy evaluation.
    #[error(transparent)]
    Train(#[from] autokd_train::TrainError),
    /// The distiller or the space.
    #[error(transparent)]
    Distill(#[from] autokd_distill::DistillError),
    /// The data.
    #[error(transparent)]
    Data(#[from] autokd_data::DataError),
    /// A model or its weights.
    #[error(transparent)]
    Model(#[from] autokd_models::ModelError),
    /// The search driver.
    #[error(transparent)]
    Driver(#[from] autokd_search::DriverError),
    /// A trial store.
    #[error(transparent)]
    Store(#[from] autokd_search::StoreError),
    /// JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// TOML.
    #[error(transparent)]
    Toml(#[from] toml::ser::Error),
}

impl AppError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result type of the application library.
pub type Result<T> = std::result::Result<T, AppError>;
