//! Trainers for autokd: the distillation step, the teacher cache, and the proxy evaluator that
//! scores candidate distillers during search.

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
pub mod full;
pub mod proxy;
pub mod step;

pub use cache::{TeacherCache, TeacherPlan, TeacherSource, bytes_per_image};
pub use error::{Result, TrainError};
pub use full::{
    EpochMetrics, OptimizerKind, PRESETS, Recipe, Schedule, SupervisedConfig, TeacherSetup,
    TrainEvent, TrainSummary, accuracy, evaluate, find_checkpoint, sgd, train,
};
pub use proxy::{ProxyConfig, ProxyEvaluator, RewardKind, TrialOutcome, representation_gap};
pub use step::{DistillStudent, StepLosses, data_parallel_step, distill_step};
