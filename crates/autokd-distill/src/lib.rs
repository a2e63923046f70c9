//! The distiller: every knowledge transform, distance and hyperparameter of the Auto-KD search
//! space, as small tensor functions that run on any burn backend.

pub mod distance;
pub mod error;
pub mod logits;
pub mod real;
#[cfg(test)]
pub(crate) mod testing;
#[allow(missing_docs)]
pub mod transform;

pub use distance::Distance;
pub use error::{DistillError, Result};
pub use logits::LogitsDistance;
pub use real::Real;
pub use transform::{GlobalTransform, IntraSpatial, Relation};
