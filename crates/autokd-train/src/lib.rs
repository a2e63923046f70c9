//! Trainers for autokd: for now, the distillation step shared by full and proxy training.

pub mod error;
pub mod step;

pub use error::{Result, TrainError};
pub use step::{DistillStudent, StepLosses, distill_step};
