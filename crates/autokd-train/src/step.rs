//! One optimization step of a student distilled by a [`Distiller`].

use autokd_distill::Distiller;
use autokd_models::{Backbone, Intermediates, Model};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use crate::error::{Result, TrainError};

/// The student and the distiller's learnable parts (connectors, generators), trained together.
#[derive(Module, Debug)]
pub struct DistillStudent {
    /// The student network.
    pub student: Model,
    /// The distiller.
    pub distiller: Distiller,
}

/// The scalar values of one step's loss terms.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLosses {
    /// Total loss.
    pub total: f64,
    /// Each named term (`ce`, `feat0`, …, `logits`), weighted.
    pub terms: Vec<(String, f64)>,
}

/// Runs the student on `images`, computes the distillation loss against the teacher's outputs
/// (online or cached; constants either way), and takes one optimizer step.
///
/// # Shapes
/// - `images`: `[B, C, H, W]` on an autodiff device; `targets`: `[B]`
pub fn distill_step(
    model: DistillStudent,
    optim: &mut ModuleOptimizer,
    lr: f64,
    images: Tensor<4>,
    targets: Tensor<1, Int>,
    teacher: &Intermediates,
) -> Result<(DistillStudent, StepLosses)> {
    let (request, _) = model.distiller.tap_requests();
    let out = model.student.forward_intermediates(images, &request);
    let loss = model.distiller.loss(&out, teacher, targets)?;
    let total: f64 = loss.total.clone().into_scalar::<f32>().into();
    if !total.is_finite() {
        return Err(TrainError::NonFinite(format!("total {total}")));
    }
    let terms = loss
        .terms
        .iter()
        .map(|(n, v)| (n.clone(), f64::from(v.clone().into_scalar::<f32>())))
        .collect();
    let grads = GradientsParams::from_grads(loss.total.backward(), &model);
    let model = optim.step(lr, model, grads);
    Ok((model, StepLosses { total, terms }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use autokd_distill::DistillerSpec;
    use autokd_models::{ModelName, ModelSpec};
    use burn::optim::SgdConfig;
    use burn::tensor::Distribution;

    #[test]
    fn steps_reduce_the_loss_on_a_fixed_batch() {
        let _serial = crate::serial();
        let ad = Device::flex().autodiff();
        let plain = Device::flex();
        ad.seed(1);
        let spec = |name| ModelSpec {
            name,
            in_channels: 1,
            num_classes: 4,
            image_size: 8,
        };
        let student = spec(ModelName::Resnet8).init(&ad).unwrap();
        let teacher = spec(ModelName::Resnet14).init(&plain).unwrap();
        let cwd = DistillerSpec::from_toml(
            "[[features]]\nglobal = { kind = \"none\" }\nintra = { kind = \"none\" }\nrelation = \"channel_softmax\"\ndistance = \"kl\"\ntemperature = 4.0\nweight = 1.0\n[logits]\ndistance = \"kl\"\ntemperature = 4.0\nweight = 1.0\n",
        )
        .unwrap();
        let distiller = Distiller::new(
            &cwd,
            "resnet8",
            &student.feature_info(),
            "resnet14",
            &teacher.feature_info(),
            &ad,
        )
        .unwrap();
        let (_, t_req) = distiller.tap_requests();
        let x = Tensor::<4>::random([8, 1, 8, 8], Distribution::Normal(0.0, 1.0), &plain);
        let t_out = teacher.forward_intermediates(x.clone(), &t_req);
        let targets =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 0, 1, 2, 3], [8]), &ad);
        let mut model = DistillStudent { student, distiller };
        let mut optim = SgdConfig::new().init();
        let mut losses = Vec::new();
        for _ in 0..6 {
            let (m, l) = distill_step(
                model,
                &mut optim,
                0.05,
                x.clone().autodiff(),
                targets.clone(),
                &t_out,
            )
            .unwrap();
            model = m;
            assert_eq!(
                l.terms.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                vec!["ce", "feat0", "logits"]
            );
            losses.push(l.total);
        }
        assert!(losses[5] < losses[0], "{losses:?}");
    }
}
