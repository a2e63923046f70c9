//! One optimization step of a student distilled by a [`Distiller`]: the task's loss terms, then
//! the distiller's, summed in that order; and its data-parallel form.

use autokd_data::Batch;
use autokd_distill::Distiller;
use autokd_models::{Intermediates, Model};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;

use crate::error::{Result, TrainError};
use crate::task::{Net, Task};

/// The student and the distiller's learnable parts (connectors, generators), trained together.
#[derive(Module, Debug)]
pub struct DistillStudent<N: Module = Model> {
    /// The student network.
    pub student: N,
    /// The distiller.
    pub distiller: Distiller,
}

/// The scalar values of one step's loss terms.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLosses {
    /// Total loss.
    pub total: f64,
    /// Each named term, weighted: the task's (`ce`, …), then the distiller's (`feat0`, …,
    /// `logits`).
    pub terms: Vec<(String, f64)>,
}

/// The loss of `model` on `batch` against the teacher's outputs: the task's terms, then the
/// distiller's, and their sum in that order.
fn step_loss<N: Net>(
    model: &DistillStudent<N>,
    task: &dyn Task,
    batch: &Batch,
    teacher: &Intermediates,
) -> Result<(Tensor<1>, Vec<(String, Tensor<1>)>)> {
    let (request, _) = model.distiller.tap_requests();
    let out = model
        .student
        .forward_intermediates(batch.images.clone(), &request);
    let mut terms = task.loss(&out, batch)?;
    let truth = task.ground_truth(batch, &out);
    terms.extend(model.distiller.loss(&out, teacher, &truth)?.terms);
    let total = terms
        .iter()
        .map(|(_, v)| v.clone())
        .reduce(|a, b| a + b)
        .ok_or_else(|| TrainError::Config("the task and the distiller gave no loss term".into()))?;
    Ok((total, terms))
}

/// Scales the gradients of `model` in `grads` so that their joint L2 norm (all parameters as one
/// vector) is at most `max_norm`, as PyTorch's `clip_grad_norm_` (mmdet's `grad_clip`) does:
/// `g ← g · min(1, max_norm / (‖g‖ + 1e-6))`. Returns the norm before clipping. burn's
/// `GradientClipping::Norm` clips each tensor on its own; after this no tensor's norm exceeds
/// `max_norm`, so that clipping then changes nothing.
pub fn clip_grad_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl burn::module::ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                let s = g.powi_scalar(2).sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + s,
                    None => s,
                });
            }
        }
    }
    struct Scale<'a> {
        grads: &'a mut GradientsParams,
        factor: f64,
    }
    impl burn::module::ModuleVisitor for Scale<'_> {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.factor));
            }
        }
    }
    let mut sum = SumSquares { grads, total: None };
    model.visit(&mut sum);
    let Some(total) = sum.total else {
        return 0.0;
    };
    let norm = f64::from(total.into_scalar::<f32>()).sqrt();
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        model.visit(&mut Scale { grads, factor });
    }
    norm
}

/// The optimizer's step, after [`clip_grad_norm`] when the optimizer clips by norm (the
/// recipe's `clip_grad_norm`): the norm is the joint one, as in PyTorch.
fn clipped_step<M: Module>(
    optim: &mut ModuleOptimizer,
    lr: f64,
    model: M,
    mut grads: GradientsParams,
) -> M {
    if let Some(burn::grad_clipping::GradientClipping::Norm(max)) = optim.grad_clipping() {
        clip_grad_norm(&model, &mut grads, f64::from(*max));
    }
    optim.step(lr, model, grads)
}

fn scalars(terms: &[(String, Tensor<1>)], share: f64) -> Vec<(String, f64)> {
    terms
        .iter()
        .map(|(n, v)| (n.clone(), f64::from(v.clone().into_scalar::<f32>()) * share))
        .collect()
}

/// Runs the student on `batch` (on an autodiff device), computes the task's loss and the
/// distillation terms against the teacher's outputs (online or cached; constants either way),
/// and takes one optimizer step.
pub fn distill_step<N: Net>(
    model: DistillStudent<N>,
    optim: &mut ModuleOptimizer,
    lr: f64,
    task: &dyn Task,
    batch: &Batch,
    teacher: &Intermediates,
) -> Result<(DistillStudent<N>, StepLosses)> {
    let (loss, terms) = step_loss(&model, task, batch, teacher)?;
    let total: f64 = loss.clone().into_scalar::<f32>().into();
    if !total.is_finite() {
        return Err(TrainError::NonFinite(format!("total {total}")));
    }
    let terms = scalars(&terms, 1.0);
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = clipped_step(optim, lr, model, grads);
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
/// - `batch` on the first device, without autodiff; `teacher`: outputs for the whole batch
pub fn data_parallel_step<N: Net>(
    model: DistillStudent<N>,
    optim: &mut ModuleOptimizer,
    lr: f64,
    task: &dyn Task,
    batch: &Batch,
    teacher: &Intermediates,
    devices: &[Device],
) -> Result<(DistillStudent<N>, StepLosses)> {
    let Some(main) = devices.first() else {
        return Err(TrainError::Config("no device to train on".into()));
    };
    let b = batch.positions.len();
    if devices.len() == 1 {
        let batch = batch.narrow(0, b, &main.clone().autodiff());
        return distill_step(model, optim, lr, task, &batch, teacher);
    }
    let n = devices.len().min(b.max(1));
    // Shard i: rows [start, start + len) of the batch.
    let shards: Vec<(usize, usize)> = (0..n)
        .map(|i| (i * b / n, (i + 1) * b / n - i * b / n))
        .collect();
    // Each shard after the first draws its MGD masks and its dropout from streams of its own,
    // forked here in order so that they do not depend on which thread draws first.
    let mut streams: Vec<_> = (1..n)
        .map(|_| {
            let mut replica = model.valid().train();
            replica.student.fork_dropout();
            (model.distiller.fork_masks(), replica)
        })
        .collect();
    let results: Vec<Result<ShardResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .zip(devices)
            .enumerate()
            .map(|(i, (&(start, len), device))| {
                let model = &model;
                let stream = i.checked_sub(1).and_then(|j| {
                    streams
                        .get_mut(j)
                        .map(|s| (std::mem::take(&mut s.0), s.1.clone()))
                });
                scope.spawn(move || -> Result<_> {
                    let ad = device.clone().autodiff();
                    // Shard 0 trains the model itself (its BatchNorm running statistics are
                    // kept); the others train independent copies.
                    let replica = match stream {
                        None => model.clone(),
                        Some((masks, replica)) => {
                            let mut r = replica.fork(&ad);
                            r.distiller.set_masks(masks);
                            r
                        }
                    };
                    let part = batch.narrow(start, len, &ad);
                    let t = teacher.map_tensors(
                        |x| x.narrow(0, start, len).to_device(device),
                        |x| x.narrow(0, start, len).to_device(device),
                        |x| x.narrow(0, start, len).to_device(device),
                    );
                    let (loss, terms) = step_loss(&replica, task, &part, &t)?;
                    let share = len as f64 / b as f64;
                    let total = f64::from(loss.clone().into_scalar::<f32>()) * share;
                    let terms = scalars(&terms, share);
                    let grads =
                        GradientsParams::from_grads(loss.mul_scalar(share).backward(), &replica);
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
    let model = clipped_step(optim, lr, model, acc.grads());
    Ok((model, StepLosses { total, terms }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Classification;
    use autokd_distill::DistillerSpec;
    use autokd_models::{Backbone, ModelName, ModelSpec};

    /// Joint clipping by hand: a `Linear(3, 2)` whose weight gradient is all 3 (6 entries) and
    /// bias gradient all 4 (2 entries) has joint norm √(54 + 32) = √86 ≈ 9.2736; at max 5 every
    /// entry is scaled by 5 / (√86 + 1e-6), so the weight's 3 becomes 1.6175 (burn's per-tensor
    /// clipping would leave the weight at norm 5, 2.0412 each, and the bias' norm 5.657 at 5, not
    /// 2.8868); at max 20 nothing changes.
    #[test]
    fn clip_grad_norm_is_the_joint_norm() {
        let device = Device::flex();
        let linear = burn::nn::LinearConfig::new(3, 2).init(&device);
        let grads = || {
            let mut g = GradientsParams::new();
            g.register(linear.weight.id, Tensor::<2>::full([3, 2], 3.0, &device));
            if let Some(b) = &linear.bias {
                g.register(b.id, Tensor::<1>::full([2], 4.0, &device));
            }
            g
        };
        let values = |g: &GradientsParams| -> (Vec<f32>, Vec<f32>) {
            let w = g.get::<2>(linear.weight.id).unwrap();
            let b = g.get::<1>(linear.bias.as_ref().unwrap().id).unwrap();
            (
                w.into_data().try_to_vec::<f32>().unwrap(),
                b.into_data().try_to_vec::<f32>().unwrap(),
            )
        };
        let want_norm = 86f64.sqrt();
        let mut g = grads();
        let norm = clip_grad_norm(&linear, &mut g, 5.0);
        assert!((norm - want_norm).abs() < 1e-5, "{norm}");
        let f = 5.0 / (want_norm + 1e-6);
        let (w, b) = values(&g);
        assert!(
            w.iter().all(|&v| (f64::from(v) - 3.0 * f).abs() < 1e-5),
            "{w:?}"
        );
        assert!(
            b.iter().all(|&v| (f64::from(v) - 4.0 * f).abs() < 1e-5),
            "{b:?}"
        );
        assert!((3.0 * f - 1.6175).abs() < 1e-4);
        let mut g = grads();
        clip_grad_norm(&linear, &mut g, 20.0);
        let (w, b) = values(&g);
        assert!(w.iter().all(|&v| v == 3.0) && b.iter().all(|&v| v == 4.0));
    }

    fn batch(images: Tensor<4>, targets: Tensor<1, Int>) -> Batch {
        let b = images.dims()[0];
        Batch {
            images,
            targets,
            positions: (0..b).collect(),
            dense: None,
        }
    }
    use burn::optim::SgdConfig;

    #[test]
    fn steps_reduce_the_loss_on_a_fixed_batch() {
        let ad = Device::flex().autodiff();
        let plain = Device::flex();
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
            &mut autokd_models::InitRng::new(0),
            &ad,
        )
        .unwrap();
        let (_, t_req) = distiller.tap_requests();
        let x = crate::testing::normal([8, 1, 8, 8], 1, &plain);
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
                &Classification,
                &batch(x.clone().autodiff(), targets.clone()),
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
        let student = spec
            .init_with(&mut autokd_models::InitRng::new(3), &ad)
            .unwrap();
        let kd = DistillerSpec::baseline("kd").unwrap();
        let distiller = Distiller::new(
            &kd,
            "deit_tiny_p4",
            &student.feature_info(),
            "resnet8",
            &teacher.feature_info(),
            &mut autokd_models::InitRng::new(0),
            &ad,
        )
        .unwrap();
        let model = DistillStudent { student, distiller };
        let copy = || model.valid().train();
        let x = crate::testing::normal([6, 1, 8, 8], 3, &plain);
        let y =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 1, 2], [6]), &plain);
        let (_, t_req) = model.distiller.tap_requests();
        let t_out = teacher.forward_intermediates(x.clone(), &t_req);
        let mut o1 = SgdConfig::new().init();
        let (one, l1) = distill_step(
            copy(),
            &mut o1,
            0.1,
            &Classification,
            &batch(x.clone().autodiff(), y.clone().autodiff()),
            &t_out,
        )
        .unwrap();
        let mut o2 = SgdConfig::new().init();
        let devices = [plain.clone(), plain.clone()];
        let (two, l2) = data_parallel_step(
            copy(),
            &mut o2,
            0.1,
            &Classification,
            &batch(x, y),
            &t_out,
            &devices,
        )
        .unwrap();
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
            &mut autokd_models::InitRng::new(0),
            &ad,
        )
        .unwrap();
        let mut model = DistillStudent { student, distiller };
        let x = crate::testing::normal([8, 1, 8, 8], 1, &plain);
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
                &Classification,
                &batch(x.clone(), y.clone()),
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
        assert!(
            data_parallel_step(
                model,
                &mut optim,
                0.05,
                &Classification,
                &batch(x, y),
                &none,
                &[]
            )
            .is_err()
        );
    }
}
