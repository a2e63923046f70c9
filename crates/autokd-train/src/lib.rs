//! Trainers for autokd: the task abstraction ([`Task`]), the one training loop ([`Fit`]) and its
//! distillation step, recipes, the teacher cache, and the proxy evaluator that scores candidate
//! distillers during search.

/// Serializes seeding the device RNG (process-wide on CPU backends) and drawing initial weights,
/// so that seeded initializations are reproducible when several trainings share a process.
pub(crate) static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Touches every float parameter so that lazily initialized ones are drawn now (inside the
/// seeded, locked section) rather than at their first use.
pub(crate) fn force_init<M: burn::module::Module>(module: &M) {
    struct Touch;
    impl burn::module::ModuleVisitor for Touch {
        fn visit_float<const D: usize>(
            &mut self,
            p: &burn::module::Param<burn::prelude::Tensor<D>>,
        ) {
            let _ = p.val();
        }
    }
    module.visit(&mut Touch);
}

/// Tests that seed the process-wide device RNG run one at a time.
#[cfg(test)]
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
pub(crate) mod testing;

pub mod cache;
pub mod error;
pub mod fit;
pub mod full;
pub mod proxy;
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
pub use step::{DistillStudent, StepLosses, data_parallel_step, distill_step};
pub use task::{Classification, EvalOptions, Evaluation, Net, Task};
