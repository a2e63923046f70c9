//! Errors of the trainers.

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The distiller refused the step's inputs.
    #[error(transparent)]
    Distill(#[from] autokd_distill::DistillError),
    /// A data error.
    #[error(transparent)]
    Data(#[from] autokd_data::DataError),
    /// A model error.
    #[error(transparent)]
    Model(#[from] autokd_models::ModelError),
    /// A setting that cannot be honoured.
    #[error("{0}")]
    Config(String),
    /// The loss became NaN or infinite.
    #[error("loss is not finite ({0})")]
    NonFinite(String),
    /// A run with a divergence check stopped: the loss became NaN or infinite or exploded.
    #[error("{reason}")]
    Diverged {
        /// What happened, and in which epoch.
        reason: String,
        /// The loss terms of the last step.
        last_losses: Vec<(String, f64)>,
    },
}

/// Result type of the trainers.
pub type Result<T> = std::result::Result<T, TrainError>;
