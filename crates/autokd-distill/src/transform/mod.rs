//! Knowledge transforms, applied identically to student and teacher features.

pub mod attention;
pub mod mask;
pub mod relation;
pub mod spatial;

pub use attention::GlobalTransform;
pub use mask::{MaskGenerator, MaskRng};
pub use relation::Relation;
pub use spatial::IntraSpatial;
