//! Errors of the model zoo.

/// What can go wrong when naming a model or a tap.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model name that is not in the registry.
    #[error("unknown model `{name}`; available: {available}")]
    UnknownModel {
        /// The name given.
        name: String,
        /// Every registered name.
        available: String,
    },
    /// A tap name the model does not have.
    #[error("tap `{tap}` not found in {model}; available: {available}")]
    UnknownTap {
        /// The tap asked for.
        tap: String,
        /// The model.
        model: String,
        /// The model's taps.
        available: String,
    },
    /// A weight file that cannot be read, written or applied.
    #[error("{path}: {message}")]
    Weights {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong, with the keys concerned.
        message: String,
    },
    /// An architecture setting that cannot be built.
    #[error("{model}: {message}")]
    Config {
        /// The model.
        model: String,
        /// What is wrong.
        message: String,
    },
}
