//! Object detection: boxes and their coding, anchors, assignment (the parts shared by one-stage
//! and two-stage detectors).

pub mod anchors;
pub mod assign;
pub mod boxes;
pub mod coco_eval;
pub mod loss;
pub mod postprocess;
pub mod task;

pub use anchors::AnchorGenerator;
pub use assign::{Assigned, MaxIouAssigner};
pub use boxes::{BoxCoder, Xyxy};
pub use coco_eval::{CocoMetrics, EvalImage, coco_metrics};
pub use loss::{AnchorTargets, l1_box_loss, sigmoid_focal_loss};
pub use postprocess::{Detections, LevelOutputs, PostProcess, batched_nms, detect};
pub use task::Detection;
