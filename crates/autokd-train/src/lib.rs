//! Trainers for autokd: the distillation step, the teacher cache, and the proxy evaluator that
//! scores candidate distillers during search.

pub mod cache;
pub mod error;
pub mod proxy;
pub mod step;
pub mod supervised;

pub use cache::TeacherCache;
pub use error::{Result, TrainError};
pub use proxy::{ProxyConfig, ProxyEvaluator, RewardKind, TrialOutcome, representation_gap};
pub use step::{DistillStudent, StepLosses, distill_step};
pub use supervised::{EpochReport, SupervisedConfig, accuracy, train_supervised};
