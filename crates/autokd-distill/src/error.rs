//! Errors of the distiller.

/// What can go wrong when building or applying a distiller.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    /// Two tensors that must agree in shape do not.
    #[error("{op}: student shape {student:?} and teacher shape {teacher:?} differ")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// The student-side shape.
        student: Vec<usize>,
        /// The teacher-side shape.
        teacher: Vec<usize>,
    },
    /// A tensor with an unusable shape (empty, too small for the operation).
    #[error("{op}: shape {shape:?}: {message}")]
    BadShape {
        /// The operation.
        op: &'static str,
        /// The shape given.
        shape: Vec<usize>,
        /// What was expected.
        message: String,
    },
    /// A spec that does not fit the models or the search space.
    #[error("{0}")]
    Spec(String),
    /// A tap that the model does not have.
    #[error(transparent)]
    Model(#[from] autokd_models::ModelError),
}

/// Result type of the distiller.
pub type Result<T> = std::result::Result<T, DistillError>;

pub(crate) fn same_shape<const D: usize>(
    op: &'static str,
    s: &burn::prelude::Tensor<D>,
    t: &burn::prelude::Tensor<D>,
) -> Result<()> {
    let (a, b) = (s.dims(), t.dims());
    if a != b {
        return Err(DistillError::ShapeMismatch {
            op,
            student: a.to_vec(),
            teacher: b.to_vec(),
        });
    }
    if a.contains(&0) {
        return Err(DistillError::BadShape {
            op,
            shape: a.to_vec(),
            message: "empty tensor".into(),
        });
    }
    Ok(())
}
