//! The features contract, for every registered model: declared taps have the declared shapes,
//! `forward` equals the logits of `forward_intermediates`, pre-activation taps are the taps before
//! their ReLU, nothing is NaN, and the input channels and class count are honoured.

use autokd_models::{Backbone, Family, Feature, ModelName, ModelSpec, TapKind, TapRequest};
use burn::prelude::*;
use burn::tensor::Distribution;

fn max_abs_diff(a: &Tensor<2>, b: &Tensor<2>) -> f32 {
    (a.clone() - b.clone()).abs().max().into_scalar()
}

#[test]
fn every_model_honours_the_features_contract() {
    let device = Device::flex();
    device.seed(0);
    for &name in ModelName::ALL {
        // Tiny inputs: CIFAR family at 32×32, ImageNet family at 64×64; 2 input channels and 7
        // classes, so nothing depends on the reference sizes.
        let side = match name.family() {
            Family::Cifar => 32,
            Family::ImageNet | Family::Segmentation | Family::Detection => 64,
        };
        // A classifier predicts a row per image, a segmenter one per cell of its 1/8 grid, a
        // detector one per anchor: 9 at each position of P3–P7 (8², 4², 2², 1, 1 at 64×64).
        let rows = match name.family() {
            Family::Segmentation => 2 * (side / 8) * (side / 8),
            Family::Detection => 2 * 9 * (64 + 16 + 4 + 1 + 1),
            _ => 2,
        };
        let spec = ModelSpec {
            name,
            in_channels: 2,
            num_classes: 7,
            image_size: side,
        };
        let model = spec.init(&device).unwrap();
        let info = model.feature_info();
        assert!(!info.is_empty(), "{name}: no taps");
        let x = Tensor::<4>::random([2, 2, side, side], Distribution::Normal(0.0, 1.0), &device);
        let logits = model.forward(x.clone());
        assert_eq!(logits.dims(), [rows, 7], "{name}");
        let all = model.forward_intermediates(x.clone(), &TapRequest::all(&info));
        assert!(
            max_abs_diff(&logits, &all.logits.rows()) == 0.0,
            "{name}: forward != logits"
        );
        assert_eq!(all.features.len(), info.len(), "{name}");
        for (tap, feature) in info.iter().zip(&all.features) {
            let expected = match tap.kind {
                TapKind::FeatureMap => {
                    // ⌈·⌉: a detector's P7 (stride 128) is 1×1 at 64×64.
                    let s = side.div_ceil(tap.stride);
                    vec![2, tap.channels, s, s]
                }
                TapKind::Tokens => vec![2, (side / tap.stride).pow(2), tap.channels],
            };
            assert_eq!(feature.dims(), expected, "{name}: tap {}", tap.name);
            let finite = match feature {
                Feature::Map(t) => !t.clone().is_nan().any().into_scalar::<bool>(),
                Feature::Tokens(t) => !t.clone().is_nan().any().into_scalar::<bool>(),
            };
            assert!(finite, "{name}: NaN in {}", tap.name);
        }
        assert_eq!(all.embedding.dims()[0], 2, "{name}");
        assert!(
            !all.logits.rows().is_nan().any().into_scalar::<bool>(),
            "{name}: NaN logits"
        );

        // Pre-activation taps: same shapes; where they differ from the taps, ReLU(pre) = tap for
        // the residual families that return `relu(pre)` as their output.
        let pre = model.forward_intermediates(
            x.clone(),
            &TapRequest {
                indices: (0..info.len()).collect(),
                pre_act: true,
            },
        );
        for (tap, (p, f)) in info.iter().zip(pre.features.iter().zip(&all.features)) {
            assert_eq!(p.dims(), f.dims(), "{name}: pre-act {}", tap.name);
        }
        if matches!(
            name,
            ModelName::Resnet20
                | ModelName::Resnet18
                | ModelName::MobileNetV1
                | ModelName::ShuffleNetV1
        ) {
            let last = info.len() - 1;
            if let (Feature::Map(p), Feature::Map(f)) = (&pre.features[last], &all.features[last]) {
                let relu_p = burn::tensor::activation::relu(p.clone());
                let diff: f32 = (relu_p - f.clone()).abs().max().into_scalar();
                assert!(diff == 0.0, "{name}: relu(pre) != tap");
                assert!(
                    p.clone().lower_elem(0.0).any().into_scalar::<bool>(),
                    "{name}: pre-act has no negative value"
                );
            }
        }

        // Taps come back in request order, duplicates included.
        let order = TapRequest::indices(&[info.len() - 1, 0, info.len() - 1]);
        let some = model.forward_intermediates(x, &order);
        assert_eq!(some.features.len(), 3, "{name}");
        assert_eq!(
            some.features[0].dims(),
            all.features[info.len() - 1].dims(),
            "{name}"
        );
        assert_eq!(some.features[1].dims(), all.features[0].dims(), "{name}");
    }
}

#[test]
fn taps_by_name_and_unknown_taps() {
    let device = Device::flex();
    let model = ModelName::Resnet20.reference_spec().init(&device).unwrap();
    let info = model.feature_info();
    let names: Vec<&str> = info.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "backbone.stem",
            "backbone.stage1",
            "backbone.stage2",
            "backbone.stage3"
        ]
    );
    // Full paths, unique last parts, and groups.
    let req = TapRequest::by_names("resnet20", &info, &["backbone.stage3", "stage1"]).unwrap();
    assert_eq!(req.indices, vec![3, 1]);
    let group = TapRequest::by_names("resnet20", &info, &["backbone"]).unwrap();
    assert_eq!(group.indices, vec![0, 1, 2, 3]);
    let msg = TapRequest::by_names("resnet20", &info, &["stage9"])
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "tap `stage9` not found in resnet20; available: backbone.stem, backbone.stage1, backbone.stage2, backbone.stage3"
    );
}

/// Convolutional models take non-square inputs whose sides are not multiples of the strides:
/// each map tap is `⌈H/s⌉ × ⌈W/s⌉` at its stride `s`, and the logits keep their shape. (DeiT's
/// position embedding fixes its input size.)
#[test]
fn convolutional_models_take_non_square_inputs() {
    let device = Device::flex();
    for &name in ModelName::ALL {
        let (h, w) = match name.family() {
            Family::Cifar => (36, 52),
            Family::ImageNet | Family::Segmentation | Family::Detection => (72, 104),
        };
        if name.as_str().starts_with("deit") {
            continue;
        }
        let spec = ModelSpec {
            name,
            in_channels: 3,
            num_classes: 5,
            image_size: h,
        };
        let model = spec.init(&device).unwrap();
        let info = model.feature_info();
        assert!(info.iter().all(|t| t.kind == TapKind::FeatureMap), "{name}");
        let x = Tensor::<4>::random([1, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
        let out = model.forward_intermediates(x, &TapRequest::all(&info));
        let logits = match name.family() {
            Family::Segmentation => vec![1, 5, h.div_ceil(8), w.div_ceil(8)],
            // 9 anchors at each position of P3–P7: 9·13 + 5·7 + 3·4 + 2·2 + 1·1 = 169.
            Family::Detection => vec![1, 9 * 169, 5],
            _ => vec![1, 5],
        };
        assert_eq!(out.logits.dims(), logits, "{name}");
        // Padded stride-2 convolutions and 3×3 max-pools round up; VGG's 2×2 max-pools
        // round down (as in PyTorch).
        let side = |x: usize, s: usize| {
            if name.as_str().starts_with("vgg") {
                x / s
            } else {
                x.div_ceil(s)
            }
        };
        for (tap, f) in info.iter().zip(&out.features) {
            let s = tap.stride;
            assert_eq!(
                f.dims(),
                vec![1, tap.channels, side(h, s), side(w, s)],
                "{name}: {}",
                tap.name
            );
        }
    }
}

#[test]
fn deit_distillation_head() {
    let device = Device::flex();
    let spec = ModelSpec {
        name: ModelName::DeitTinyP4,
        in_channels: 3,
        num_classes: 5,
        image_size: 8,
    };
    let model = spec.init(&device).unwrap();
    let out =
        model.forward_intermediates(Tensor::zeros([1, 3, 8, 8], &device), &TapRequest::none());
    let dist = out.dist_logits.clone().unwrap();
    assert_eq!(dist.dims(), [1, 5]);
    let mean = (out.logits.rows() + dist.rows()).div_scalar(2.0);
    assert!(max_abs_diff(&mean, &out.eval_logits()) < 1e-6);
}

/// Every float parameter of `m` (weights, biases, norm scales and shifts), in visit order, and
/// whether all of them were created initialized (nothing left to draw lazily).
fn params<M: burn::module::Module>(m: &M) -> (Vec<f32>, bool) {
    struct V(Vec<f32>, bool);
    impl burn::module::ModuleVisitor for V {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            self.1 &= p.is_initialized();
            self.0
                .extend(p.val().into_data().try_to_vec::<f32>().unwrap_or_default());
        }
    }
    let mut v = V(Vec::new(), true);
    m.visit(&mut v);
    (v.0, v.1)
}

/// Initial weights come from the run's own stream (`InitRng`), never the device RNG: every
/// parameter exists initialized after construction, and models built at once in several
/// threads from one seed are bit for bit equal while another thread keeps reseeding and drawing
/// from the device RNG; another seed gives other weights. Likewise a distiller's connectors and
/// generation blocks.
#[test]
fn seeded_initialization_is_the_same_in_parallel_threads() {
    use autokd_models::InitRng;
    let device = Device::flex();
    let names = [
        ModelName::Resnet8,
        ModelName::Wrn16_1,
        ModelName::Vgg8,
        ModelName::MobileNetV2,
        ModelName::ShuffleNetV1,
        ModelName::ShuffleNetV2,
        ModelName::DeitTinyP4,
        ModelName::MobileNetV1,
        ModelName::Deeplabv3Resnet18,
    ];
    let spec = |name: ModelName| ModelSpec {
        name,
        in_channels: 1,
        num_classes: 5,
        image_size: match name.family() {
            Family::Cifar => 32,
            Family::ImageNet | Family::Segmentation | Family::Detection => 64,
        },
    };
    let build = |seed: u64| -> Vec<Vec<f32>> {
        names
            .iter()
            .map(|&n| {
                let m = spec(n).init_with(&mut InitRng::new(seed), &device).unwrap();
                let (values, initialized) = params(&m);
                assert!(
                    initialized,
                    "{n}: a parameter was left to lazy initialization"
                );
                values
            })
            .collect()
    };
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (runs, other) = std::thread::scope(|s| {
        let noise = s.spawn(|| {
            let mut k = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                device.seed(k);
                let _ = Tensor::<1>::random([64], Distribution::Default, &device).into_data();
                k += 1;
            }
        });
        let runs: Vec<_> = (0..3).map(|_| s.spawn(|| build(7))).collect();
        let runs: Vec<Vec<Vec<f32>>> = runs.into_iter().map(|h| h.join().unwrap()).collect();
        let other = build(8);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        noise.join().unwrap();
        (runs, other)
    });
    for (i, n) in names.iter().enumerate() {
        assert!(
            runs.iter().all(|r| r[i] == runs[0][i]),
            "{n}: same seed, other weights"
        );
        assert_ne!(
            runs[0][i], other[i],
            "{n}: another seed gave the same weights"
        );
    }
    // A distiller with connectors (64 → 128 channels) and MGD generation blocks.
    let student = spec(ModelName::Resnet8).init(&device).unwrap();
    let teacher = spec(ModelName::Wrn16_2).init(&device).unwrap();
    let mgd = autokd_distill::DistillerSpec::from_toml(
        "[[features]]\nglobal = { kind = \"mask\", ratio = 0.5 }\nintra = { kind = \"none\" }\nrelation = \"none\"\ndistance = \"l2\"\ntemperature = 1.0\nweight = 1.0\n",
    )
    .unwrap();
    let distiller = |seed: u64| {
        let d = autokd_distill::Distiller::new(
            &mgd,
            "resnet8",
            &student.feature_info(),
            "wrn_16_2",
            &teacher.feature_info(),
            &mut InitRng::new(seed),
            &device,
        )
        .unwrap();
        let (values, initialized) = params(&d);
        assert!(initialized && !values.is_empty());
        values
    };
    assert_eq!(distiller(3), distiller(3));
    assert_ne!(distiller(3), distiller(4));
}
