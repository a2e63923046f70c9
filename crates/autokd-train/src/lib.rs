//! Trainers for autokd: the task abstraction ([`Task`]), the one training loop ([`Fit`]) and its
//! distillation step, recipes, the teacher cache, and the proxy evaluator that scores candidate
//! distillers during search.

/// The initialization streams of a run or trial seeded with `seed`: the student's weights and
/// the distiller's learnable parts. Drawn on the host ([`autokd_models::InitRng`]), never from
/// the device's process-wide RNG, so trainings in parallel threads need no lock and the same
/// seed gives the same weights whatever runs beside it.
pub fn init_streams(seed: u64) -> (autokd_models::InitRng, autokd_models::InitRng) {
    let mut student = autokd_models::InitRng::new(seed);
    let distiller = student.fork();
    (student, distiller)
}

#[cfg(test)]
pub(crate) mod testing;

pub mod cache;
pub mod detection;
pub mod error;
pub mod fit;
pub mod full;
pub mod proxy;
pub mod segmentation;
pub mod step;
pub mod task;

pub use cache::{TeacherCache, TeacherPlan, TeacherSource, bytes_per_image};
pub use error::{Result, TrainError};
pub use fit::{
    EpochMetrics, EvalSet, Fit, FitOutcome, MaskSeeds, RunDir, TeacherFeed, TrainEvent,
    find_checkpoint,
};
pub use full::{
    Length, OptimizerKind, OptimizerName, PRESETS, Recipe, RecipeFile, Schedule, ScheduleName,
    TeacherSetup, TrainSummary, accuracy, evaluate, sgd, train,
};
pub use proxy::{
    ProxyConfig, ProxyEvaluator, ProxyFile, RewardKind, TrialOutcome, representation_gap,
};
pub use segmentation::{ConfusionMatrix, Segmentation};
pub use step::{DistillStudent, StepLosses, data_parallel_step, distill_step};
pub use task::{Classification, EvalOptions, Evaluation, Net, Task};
