//! Plain supervised training (cross-entropy), for teachers and vanilla students: SGD with
//! momentum and weight decay, learning rate ×`gamma` at each milestone epoch, the dataset's usual
//! augmentation, seeded.

use autokd_data::{Augment, DataLoader, Dataset, LoaderConfig, Transform};
use autokd_models::{Backbone, Model, ModelSpec};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::full::{OptimizerKind, Recipe, Schedule};

/// A supervised recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisedConfig {
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Epochs at which the learning rate is multiplied by `gamma`.
    pub milestones: Vec<usize>,
    /// Learning-rate factor at each milestone.
    pub gamma: f64,
    /// Seed of initialization, order and augmentation.
    pub seed: u64,
}

impl Default for SupervisedConfig {
    /// A small recipe that trains a CIFAR-style ResNet on the digits in seconds.
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 64,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            milestones: vec![20, 25],
            gamma: 0.1,
            seed: 0,
        }
    }
}

impl SupervisedConfig {
    /// The same schedule and optimizer as a [`Recipe`]: SGD, ×`gamma` at each milestone.
    pub fn recipe(&self) -> Recipe {
        Recipe {
            epochs: self.epochs,
            batch_size: self.batch_size,
            lr: self.lr,
            optimizer: OptimizerKind::Sgd {
                momentum: self.momentum,
                weight_decay: self.weight_decay,
            },
            schedule: Schedule::MultiStep {
                milestones: self.milestones.clone(),
                gamma: self.gamma,
            },
        }
    }
}

/// What one epoch did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Learning rate of the epoch.
    pub lr: f64,
    /// Top-1 accuracy on the test split after the epoch.
    pub test_accuracy: f64,
}

/// Top-1 accuracy of `model` (its `valid()` copy) on the test split of `dataset`.
pub fn accuracy(model: &Model, dataset: &Dataset, device: &Device) -> Result<f64> {
    Ok(crate::full::evaluate(model, dataset, device)?.0)
}

/// Trains `spec` from scratch on the training split of `dataset`; `on_epoch` sees each epoch.
pub fn train_supervised(
    spec: &ModelSpec,
    dataset: &Dataset,
    config: &SupervisedConfig,
    device: &Device,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<(Model, Vec<EpochReport>)> {
    let ad = device.clone().autodiff();
    let mut model = {
        let _guard = crate::INIT_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ad.seed(config.seed);
        let model = spec.init(&ad)?;
        crate::force_init(&model);
        model
    };
    let loader = DataLoader::new(
        dataset.train.clone(),
        Transform::train(&dataset.info, Augment::for_dataset(&dataset.info))?,
        LoaderConfig {
            batch_size: config.batch_size,
            shuffle: true,
            seed: config.seed,
            workers: 1,
            ..LoaderConfig::default()
        },
    )?;
    let recipe = config.recipe();
    let mut optim = recipe.optimizer();
    let ce = CrossEntropyLossConfig::new().init(&ad);
    let mut reports = Vec::new();
    for epoch in 0..config.epochs {
        let lr = recipe.lr_at(epoch);
        let (mut sum, mut steps) = (0.0f64, 0usize);
        for batch in loader.epoch(epoch as u64, &ad) {
            let batch = batch?;
            let logits = model.forward(batch.images);
            let loss = ce.forward(logits, batch.targets);
            let v = f64::from(loss.clone().into_scalar::<f32>());
            if !v.is_finite() {
                return Err(TrainError::NonFinite(format!(
                    "epoch {}: training loss {v}",
                    epoch + 1
                )));
            }
            sum += v;
            steps += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
        }
        let report = EpochReport {
            epoch: epoch + 1,
            train_loss: sum / steps.max(1) as f64,
            lr,
            test_accuracy: accuracy(&model, dataset, device)?,
        };
        on_epoch(&report);
        reports.push(report);
    }
    Ok((model.valid(), reports))
}

#[cfg(test)]
mod tests {
    use super::*;
    use autokd_data::DatasetSpec;
    use autokd_models::ModelName;

    #[test]
    fn a_small_resnet_learns_the_digits() {
        let _serial = crate::serial();
        let device = Device::flex();
        let ds = DatasetSpec::Digits.load().unwrap();
        let spec = crate::testing::digits_spec(ModelName::Resnet8);
        let cfg = SupervisedConfig {
            epochs: 4,
            milestones: vec![3],
            ..SupervisedConfig::default()
        };
        let (model, reports) = train_supervised(&spec, &ds, &cfg, &device, |_| {}).unwrap();
        assert_eq!(reports.len(), 4);
        assert!((reports[3].lr - 0.005).abs() < 1e-12);
        assert!(reports[3].train_loss < reports[0].train_loss, "{reports:?}");
        // Chance is 0.1; a few epochs of a small ResNet reach far above it.
        let acc = accuracy(&model, &ds, &device).unwrap();
        assert!(acc > 0.6, "{acc}");
        assert_eq!(acc, reports[3].test_accuracy);
    }
}
