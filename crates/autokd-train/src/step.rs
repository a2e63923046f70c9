//! One optimization step of a student distilled by a [`Distiller`].

use autokd_distill::Distiller;
use autokd_models::{Backbone, Feature, Intermediates, Model};
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

/// One shard's gradients (on the first device), weighted loss terms and total.
type ShardResult = (GradientsParams, Vec<(String, f64)>, f64);

/// [`distill_step`] on several devices at once (data parallel, as DDP does on one node): the
/// batch is split along its first axis, one replica per device computes the gradient of its shard
/// (its loss weighted by the shard's share of the batch, so that the sum is the full batch's mean
/// loss), the gradients are summed on the first device and one optimizer step updates the model
/// there. BatchNorm uses each shard's statistics and the first device's running statistics are
/// kept, as with `DistributedDataParallel` without synchronized BatchNorm. With one device this
/// is [`distill_step`].
///
/// # Shapes
/// - `images`: `[B, C, H, W]` and `targets`: `[B]`, on the first device, without autodiff;
///   `teacher`: outputs for the whole batch
pub fn data_parallel_step(
    model: DistillStudent,
    optim: &mut ModuleOptimizer,
    lr: f64,
    images: Tensor<4>,
    targets: Tensor<1, Int>,
    teacher: &Intermediates,
    devices: &[Device],
) -> Result<(DistillStudent, StepLosses)> {
    let Some(main) = devices.first() else {
        return Err(TrainError::Config("no device to train on".into()));
    };
    if devices.len() == 1 {
        return distill_step(
            model,
            optim,
            lr,
            images.autodiff(),
            targets.autodiff(),
            teacher,
        );
    }
    let b = images.dims()[0];
    let n = devices.len().min(b.max(1));
    let (request, _) = model.distiller.tap_requests();
    // Shard i: rows [start, start + len) of the batch.
    let shards: Vec<(usize, usize)> = (0..n)
        .map(|i| (i * b / n, (i + 1) * b / n - i * b / n))
        .collect();
    let shard_of = |t: &Intermediates, start: usize, len: usize, device: &Device| Intermediates {
        features: t
            .features
            .iter()
            .map(|f| match f {
                Feature::Map(m) => Feature::Map(m.clone().narrow(0, start, len).to_device(device)),
                Feature::Tokens(t) => {
                    Feature::Tokens(t.clone().narrow(0, start, len).to_device(device))
                }
            })
            .collect(),
        embedding: t.embedding.clone().narrow(0, start, len).to_device(device),
        logits: t.logits.clone().narrow(0, start, len).to_device(device),
        dist_logits: t
            .dist_logits
            .as_ref()
            .map(|d| d.clone().narrow(0, start, len).to_device(device)),
    };
    // Each shard after the first draws its MGD masks from its own stream, forked here in order
    // so that the masks do not depend on which thread draws first.
    let mut streams: Vec<_> = (1..n).map(|_| model.distiller.fork_masks()).collect();
    let results: Vec<Result<ShardResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .zip(devices)
            .enumerate()
            .map(|(i, (&(start, len), device))| {
                let (images, targets, model, request) = (&images, &targets, &model, &request);
                let stream = i
                    .checked_sub(1)
                    .map(|j| streams.get_mut(j).map(std::mem::take).unwrap_or_default());
                scope.spawn(move || -> Result<_> {
                    let ad = device.clone().autodiff();
                    // Shard 0 trains the model itself (its BatchNorm running statistics are
                    // kept); the others train independent copies.
                    let replica = match stream {
                        None => model.clone(),
                        Some(stream) => {
                            let mut r = model.valid().train().fork(&ad);
                            r.distiller.set_masks(stream);
                            r
                        }
                    };
                    let x = images.clone().narrow(0, start, len).to_device(&ad);
                    let y = targets.clone().narrow(0, start, len).to_device(&ad);
                    let t = shard_of(teacher, start, len, device);
                    let out = replica.student.forward_intermediates(x, request);
                    let loss = replica.distiller.loss(&out, &t, y)?;
                    let share = len as f64 / b as f64;
                    let total = f64::from(loss.total.clone().into_scalar::<f32>()) * share;
                    let terms = loss
                        .terms
                        .iter()
                        .map(|(k, v)| {
                            (k.clone(), f64::from(v.clone().into_scalar::<f32>()) * share)
                        })
                        .collect();
                    let grads = GradientsParams::from_grads(
                        loss.total.mul_scalar(share).backward(),
                        &replica,
                    );
                    Ok((grads.to_device(main, model), terms, total))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(TrainError::Config("a data-parallel worker panicked".into()))
                })
            })
            .collect()
    });
    let mut acc = burn::optim::GradientsAccumulator::new();
    let (mut total, mut terms): (f64, Vec<(String, f64)>) = (0.0, Vec::new());
    for r in results {
        let (grads, t, tot) = r?;
        acc.accumulate(&model, grads);
        total += tot;
        if terms.is_empty() {
            terms = t;
        } else {
            for (slot, (_, v)) in terms.iter_mut().zip(t) {
                slot.1 += v;
            }
        }
    }
    if !total.is_finite() {
        return Err(TrainError::NonFinite(format!("total {total}")));
    }
    let model = optim.step(lr, model, acc.grads());
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

    #[test]
    fn data_parallel_step_equals_the_full_batch_step() {
        // DeiT has LayerNorm only: without BatchNorm, shards of a batch give exactly the full
        // batch's mean gradient, so two "devices" (both flex here) must reach the same weights as
        // one step on the whole batch.
        let _serial = crate::serial();
        let plain = Device::flex();
        let ad = plain.clone().autodiff();
        let spec = ModelSpec {
            name: ModelName::DeitTinyP4,
            in_channels: 1,
            num_classes: 4,
            image_size: 8,
        };
        let teacher = ModelSpec {
            name: ModelName::Resnet8,
            ..spec
        }
        .init(&plain)
        .unwrap();
        let _guard = crate::INIT_LOCK.lock().unwrap();
        ad.seed(3);
        let student = spec.init(&ad).unwrap();
        let kd = DistillerSpec::baseline("kd").unwrap();
        let distiller = Distiller::new(
            &kd,
            "deit_tiny_p4",
            &student.feature_info(),
            "resnet8",
            &teacher.feature_info(),
            &ad,
        )
        .unwrap();
        let model = DistillStudent { student, distiller };
        crate::force_init(&model);
        drop(_guard);
        let copy = || model.valid().train();
        let x = Tensor::<4>::random([6, 1, 8, 8], Distribution::Normal(0.0, 1.0), &plain);
        let y =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 1, 2], [6]), &plain);
        let (_, t_req) = model.distiller.tap_requests();
        let t_out = teacher.forward_intermediates(x.clone(), &t_req);
        let mut o1 = SgdConfig::new().init();
        let (one, l1) = distill_step(
            copy(),
            &mut o1,
            0.1,
            x.clone().autodiff(),
            y.clone().autodiff(),
            &t_out,
        )
        .unwrap();
        let mut o2 = SgdConfig::new().init();
        let devices = [plain.clone(), plain.clone()];
        let (two, l2) = data_parallel_step(copy(), &mut o2, 0.1, x, y, &t_out, &devices).unwrap();
        assert!((l1.total - l2.total).abs() < 1e-5, "{l1:?} vs {l2:?}");
        let snapshot = crate::testing::snapshot;
        let (a, b, before) = (snapshot(&one), snapshot(&two), snapshot(&copy()));
        assert_eq!(a.len(), b.len());
        let moved = a.iter().zip(&before).filter(|(u, v)| u != v).count();
        assert!(moved > 1000, "the step changed only {moved} floats");
        let worst = a
            .iter()
            .zip(&b)
            .map(|(u, v)| (u - v).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "largest difference {worst}");
    }

    #[test]
    fn data_parallel_step_trains_a_batchnorm_student() {
        let _serial = crate::serial();
        let plain = Device::flex();
        let ad = plain.clone().autodiff();
        let spec = ModelSpec {
            name: ModelName::Resnet8,
            in_channels: 1,
            num_classes: 4,
            image_size: 8,
        };
        let student = spec.init(&ad).unwrap();
        let distiller = Distiller::new(
            &DistillerSpec::baseline("vanilla").unwrap(),
            "resnet8",
            &student.feature_info(),
            "none",
            &[],
            &ad,
        )
        .unwrap();
        let mut model = DistillStudent { student, distiller };
        let x = Tensor::<4>::random([8, 1, 8, 8], Distribution::Normal(0.0, 1.0), &plain);
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(vec![0i64, 1, 2, 3, 0, 1, 2, 3], [8]),
            &plain,
        );
        let none = Intermediates::no_teacher(8, 4, &plain);
        let mut optim = SgdConfig::new().init();
        let devices = [plain.clone(), plain.clone(), plain.clone()];
        let mut losses = Vec::new();
        for _ in 0..6 {
            let (m, l) = data_parallel_step(
                model,
                &mut optim,
                0.05,
                x.clone(),
                y.clone(),
                &none,
                &devices,
            )
            .unwrap();
            model = m;
            losses.push(l.total);
        }
        assert!(
            losses.iter().all(|l| l.is_finite()) && losses[5] < losses[0],
            "{losses:?}"
        );
        assert!(data_parallel_step(model, &mut optim, 0.05, x, y, &none, &[]).is_err());
    }
}
