//! The distiller: every knowledge transform, distance and hyperparameter of the Auto-KD search
//! space, as small tensor functions that run on any burn backend.

pub mod distance;
pub mod distiller;
pub mod effective;
pub mod error;
pub mod logits;
#[cfg(test)]
mod published;
pub mod real;
pub mod space;
pub mod spec;
#[cfg(test)]
pub(crate) mod testing;
#[allow(missing_docs)]
pub mod transform;

pub use distance::Distance;
pub use distiller::{Connector, Distiller, GroundTruth, LossTerms, map_shape, term_value};
pub use effective::Effective;
pub use error::{DistillError, Result};
pub use logits::LogitsDistance;
pub use real::Real;
pub use space::{Draft, LEVELS, Level, LevelDef, Part, SearchSpace, SearchSpaceConfig};
pub use spec::{
    BASELINES, ConnectorKind, DistillerSpec, FeatureTerm, GroupReduction, LogitsTerm, Region,
    ResolvedTerm, TapPair,
};
pub use transform::{GlobalTransform, IntraSpatial, Relation};
