//! The named baselines against their published losses: each is computed here in f64 from the
//! reference code's formula (RepDistiller's `distiller_zoo` for AT, SP and FitNet's `HintLoss`
//! with `ConvReg`, the ICKD authors' `ICKDLoss` with `Embed`), on feature maps of a CIFAR-like
//! student and teacher (different channels, one stage of a different size), and compared with
//! what [`Distiller::loss`] returns for [`DistillerSpec::baseline`]. The learnable connectors
//! are read from the distiller and applied in f64 with batch norm in training mode (batch
//! statistics, biased variance, ε = 10⁻⁵), as PyTorch does in a training step.

use autokd_models::init::InitRng;
use autokd_models::{Feature, Intermediates, Prediction, TapInfo, TapKind};
use burn::prelude::*;

use crate::distiller::{Distiller, GroundTruth};
use crate::spec::DistillerSpec;
use crate::testing::tensor;

/// A feature map in f64, `[B, C, H, W]` row-major.
#[derive(Clone)]
struct Map {
    dims: [usize; 4],
    v: Vec<f64>,
}

impl Map {
    fn of(t: Tensor<4>) -> Self {
        let dims = t.dims();
        let v = t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
        Self { dims, v }
    }

    fn get(&self, b: usize, c: usize, p: usize) -> f64 {
        let [_, cs, h, w] = self.dims;
        self.v[(b * cs + c) * h * w + p]
    }

    /// `F.adaptive_avg_pool2d` to `h × w` where the size divides evenly.
    fn pool(&self, h: usize, w: usize) -> Map {
        let [b, c, hi, wi] = self.dims;
        assert!(hi % h == 0 && wi % w == 0);
        let (ky, kx) = (hi / h, wi / w);
        let mut v = Vec::with_capacity(b * c * h * w);
        for bc in 0..b * c {
            for y in 0..h {
                for x in 0..w {
                    let mut sum = 0.0;
                    for dy in 0..ky {
                        for dx in 0..kx {
                            sum += self.v[bc * hi * wi + (y * ky + dy) * wi + x * kx + dx];
                        }
                    }
                    v.push(sum / (ky * kx) as f64);
                }
            }
        }
        Map {
            dims: [b, c, h, w],
            v,
        }
    }

    /// Each sample's values, `[B][C·H·W]`.
    fn samples(&self) -> Vec<Vec<f64>> {
        let n = self.v.len() / self.dims[0];
        self.v.chunks(n).map(<[f64]>::to_vec).collect()
    }

    /// One sample's channels, `[C][H·W]`.
    fn channels(&self, b: usize) -> Vec<Vec<f64>> {
        let [_, c, h, w] = self.dims;
        (0..c)
            .map(|k| (0..h * w).map(|p| self.get(b, k, p)).collect())
            .collect()
    }
}

/// `F.normalize`: `v / max(‖v‖, 10⁻¹²)`.
fn normalize(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
    v.iter().map(|a| a / n).collect()
}

fn gram(rows: &[Vec<f64>]) -> Vec<Vec<f64>> {
    rows.iter()
        .map(|a| {
            rows.iter()
                .map(|b| a.iter().zip(b).map(|(p, q)| p * q).sum())
                .collect()
        })
        .collect()
}

fn squared_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(p, q)| (p - q).powi(2))
        .sum()
}

/// The larger of two maps average-pooled to the smaller's size (AT's `at_loss`).
fn aligned(s: &Map, t: &Map) -> (Map, Map) {
    let (hs, ht) = (s.dims[2], t.dims[2]);
    match hs.cmp(&ht) {
        std::cmp::Ordering::Greater => (s.pool(ht, ht), t.clone()),
        std::cmp::Ordering::Less => (s.clone(), t.pool(hs, hs)),
        std::cmp::Ordering::Equal => (s.clone(), t.clone()),
    }
}

/// AT, one stage: `(at(f_s) − at(f_t))².mean()` with `at(f) = normalize(f².mean(1).view(B, −1))`.
fn at_stage(s: &Map, t: &Map) -> f64 {
    let (s, t) = aligned(s, t);
    let at = |m: &Map| -> Vec<Vec<f64>> {
        let [b, c, h, w] = m.dims;
        (0..b)
            .map(|i| {
                let a: Vec<f64> = (0..h * w)
                    .map(|p| (0..c).map(|k| m.get(i, k, p).powi(2)).sum::<f64>() / c as f64)
                    .collect();
                normalize(&a)
            })
            .collect()
    };
    let (a, b) = (at(&s), at(&t));
    squared_diff(&a, &b) / (a.len() * a[0].len()) as f64
}

/// SP: `G = normalize(f fᵀ)` per row on `[B, C·H·W]`; `Σ(G_t − G_s)² / B²`.
fn sp(s: &Map, t: &Map) -> f64 {
    let g =
        |m: &Map| -> Vec<Vec<f64>> { gram(&m.samples()).iter().map(|r| normalize(r)).collect() };
    let b = s.dims[0] as f64;
    squared_diff(&g(s), &g(t)) / (b * b)
}

/// ICKD: per sample `G = normalize(F Fᵀ, dim = 2)` on `[C, H·W]`; `Σ(G_s − G_t)² / (C·B)`.
fn ickd(s: &Map, t: &Map) -> f64 {
    let [b, c, _, _] = s.dims;
    let g = |m: &Map, i: usize| -> Vec<Vec<f64>> {
        gram(&m.channels(i)).iter().map(|r| normalize(r)).collect()
    };
    (0..b)
        .map(|i| squared_diff(&g(s, i), &g(t, i)))
        .sum::<f64>()
        / (c * b) as f64
}

/// `F.mse_loss`.
fn mse(s: &Map, t: &Map) -> f64 {
    s.v.iter()
        .zip(&t.v)
        .map(|(p, q)| (p - q).powi(2))
        .sum::<f64>()
        / s.v.len() as f64
}

/// A 1×1 convolution (`w`: `[C_out][C_in]`, no bias), batch norm in training mode (γ = 1,
/// β = 0, ε = 10⁻⁵), and a ReLU when `relu`.
fn conv_bn(x: &Map, w: &[Vec<f64>], relu: bool) -> Map {
    let [b, ci, h, wd] = x.dims;
    let co = w.len();
    let hw = h * wd;
    let mut v = vec![0.0; b * co * hw];
    for i in 0..b {
        for o in 0..co {
            for p in 0..hw {
                v[(i * co + o) * hw + p] = (0..ci).map(|k| w[o][k] * x.get(i, k, p)).sum();
            }
        }
    }
    for o in 0..co {
        let idx = |i: usize, p: usize| (i * co + o) * hw + p;
        let all: Vec<f64> = (0..b)
            .flat_map(|i| (0..hw).map(move |p| (i, p)))
            .map(|(i, p)| v[idx(i, p)])
            .collect();
        let n = all.len() as f64;
        let mean = all.iter().sum::<f64>() / n;
        let var = all.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n;
        for i in 0..b {
            for p in 0..hw {
                let y = (v[idx(i, p)] - mean) / (var + 1e-5).sqrt();
                v[idx(i, p)] = if relu { y.max(0.0) } else { y };
            }
        }
    }
    Map {
        dims: [b, co, h, wd],
        v,
    }
}

fn taps(channels: [usize; 4], strides: [usize; 4]) -> Vec<TapInfo> {
    ["stem", "stage1", "stage2", "stage3"]
        .iter()
        .zip(channels.iter().zip(strides))
        .map(|(n, (&c, s))| TapInfo {
            name: format!("backbone.{n}"),
            channels: c,
            stride: s,
            kind: TapKind::FeatureMap,
        })
        .collect()
}

/// The distiller's value for `name` on the given maps (one per tap), with its connector
/// weights (`[C_out][C_in]`, one per tap pair that has a connector).
fn autokd_value(
    name: &str,
    student: &[Tensor<4>],
    teacher: &[Tensor<4>],
) -> (f64, Vec<Vec<Vec<f64>>>) {
    let device = Device::flex().autodiff();
    let s_info = taps([4, 4, 8, 8], [1, 1, 2, 4]);
    let t_info = taps([8, 8, 16, 16], [1, 1, 1, 2]);
    let spec = DistillerSpec::baseline(name).unwrap();
    let d = Distiller::new(
        &spec,
        "resnet8",
        &s_info,
        "resnet32",
        &t_info,
        &mut InitRng::new(3),
        &device,
    )
    .unwrap();
    let (s_req, t_req) = d.tap_requests();
    let outputs = |maps: &[Tensor<4>], indices: &[usize]| Intermediates {
        features: indices
            .iter()
            .map(|&i| Feature::Map(maps[i].clone().to_device(&device)))
            .collect(),
        embedding: Tensor::zeros([2, 1], &device),
        logits: Prediction::Rows(Tensor::zeros([2, 3], &device)),
        dist_logits: None,
        aux_logits: None,
        box_deltas: None,
    };
    let out = d
        .loss(
            &outputs(student, &s_req.indices),
            &outputs(teacher, &t_req.indices),
            &GroundTruth::default(),
        )
        .unwrap();
    assert_eq!(out.terms.len(), 1, "{name}");
    let value = f64::from(out.terms[0].1.clone().into_scalar::<f32>());
    let weights = d
        .connector_weights()
        .into_iter()
        .map(|w| {
            let [o, i] = w.dims();
            let v = w.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
            (0..o).map(|r| v[r * i..(r + 1) * i].to_vec()).collect()
        })
        .collect();
    (value, weights)
}

#[test]
fn baselines_compute_their_published_losses() {
    let device = Device::flex();
    // A batch of 2; student stages of 4, 8, 8 channels at 8×8, 4×4, 2×2; teacher stages of 8,
    // 16, 16 channels at 8×8, 4×4, 4×4 (its last stage is larger than the student's).
    let s_shapes = [[2, 4, 8, 8], [2, 4, 8, 8], [2, 8, 4, 4], [2, 8, 2, 2]];
    let t_shapes = [[2, 8, 8, 8], [2, 8, 8, 8], [2, 16, 4, 4], [2, 16, 4, 4]];
    // Post-ReLU-like features: non-negative, as the stage outputs the baselines read.
    let maps = |shapes: &[[usize; 4]; 4], seed: u64| -> Vec<Tensor<4>> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, &sh)| tensor(sh, seed + i as u64, &device).clamp_min(0.0))
            .collect()
    };
    let (s, t) = (maps(&s_shapes, 10), maps(&t_shapes, 20));
    let (sm, tm): (Vec<Map>, Vec<Map>) = (
        s.iter().cloned().map(Map::of).collect(),
        t.iter().cloned().map(Map::of).collect(),
    );
    let close = |name: &str, got: f64, want: f64| {
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1e-3),
            "{name}: autokd {got} vs reference {want}"
        );
    };

    // AT (β = 1000): the sum over the three stage outputs (RepDistiller's `feat[1:-1]`), the
    // larger map pooled to the smaller; no connector.
    let (got, w) = autokd_value("at", &s, &t);
    assert!(w.is_empty());
    let want = 1000.0 * (1..4).map(|k| at_stage(&sm[k], &tm[k])).sum::<f64>();
    close("at", got, want);

    // SP (β = 3000) on the last stage (`feat[-2]`); the B × B matrices need no connector. Our
    // pipeline pools the teacher's 4×4 to 2×2 first (SP's code flattens each as it is).
    let (got, w) = autokd_value("sp", &s, &t);
    assert!(w.is_empty());
    let want = 3000.0 * sp(&sm[3], &tm[3].pool(2, 2));
    close("sp", got, want);

    // ICKD (β = 2.5) on the last stage, the student through `Embed` (1×1 conv + BN).
    let (got, w) = autokd_value("ickd", &s, &t);
    assert_eq!(w.len(), 1);
    let want = 2.5 * ickd(&conv_bn(&sm[3], &w[0], false), &tm[3].pool(2, 2));
    close("ickd", got, want);

    // FitNet (β = 100) on stage 2 (`hint_layer = 2`), the student through `ConvReg` (1×1 conv
    // + BN + ReLU), then `F.mse_loss`.
    let (got, w) = autokd_value("fitnet", &s, &t);
    assert_eq!(w.len(), 1);
    let want = 100.0 * mse(&conv_bn(&sm[2], &w[0], true), &tm[2]);
    close("fitnet", got, want);
}

/// Without a connector, a term that compares channels refuses different channel counts at
/// construction, naming the taps.
#[test]
fn a_term_without_connector_needs_matching_channels() {
    let device = Device::flex();
    let mut spec = DistillerSpec::baseline("sp").unwrap();
    spec.features[0].relation = crate::Relation::ChannelCorrelation;
    let err = Distiller::new(
        &spec,
        "resnet8",
        &taps([4, 4, 8, 8], [1, 1, 2, 4]),
        "resnet32",
        &taps([8, 8, 16, 16], [1, 1, 1, 2]),
        &mut InitRng::new(0),
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no connector")
            && err.contains("backbone.stage3 has 8 channels")
            && err.contains("16"),
        "{err}"
    );
}

/// mmrazor's `PKDLoss.norm` of one map: each channel over the batch and positions, less its
/// mean, over its unbiased standard deviation plus 10⁻⁶; returned as `[C][B·H·W]`.
fn pkd_norm(x: &Map) -> Vec<Vec<f64>> {
    let [b, c, h, w] = x.dims;
    (0..c)
        .map(|k| {
            let v: Vec<f64> = (0..b)
                .flat_map(|i| (0..h * w).map(move |p| (i, p)))
                .map(|(i, p)| x.get(i, k, p))
                .collect();
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let sd = (v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            v.iter().map(|a| (a - mean) / (sd + 1e-6)).collect()
        })
        .collect()
}

/// PKD (mmrazor's `PKDLoss`, loss weight 10 as its RetinaNet config) over an FPN group of three
/// levels: `10 · Σ_levels F.mse_loss(norm(S), norm(T)) / 2`, computed in f64; the FPNs share
/// their width, so no connector is built.
#[test]
fn pkd_computes_its_published_loss() {
    let device = Device::flex();
    let shapes = [[2, 4, 4, 4], [2, 4, 2, 2], [2, 4, 1, 1]];
    let info: Vec<TapInfo> = [("p3", 8), ("p4", 16), ("p5", 32)]
        .iter()
        .map(|&(n, stride)| TapInfo {
            name: format!("fpn.{n}"),
            channels: 4,
            stride,
            kind: TapKind::FeatureMap,
        })
        .collect();
    let maps = |seed: u64| -> Vec<Tensor<4>> {
        shapes
            .iter()
            .enumerate()
            .map(|(i, &sh)| tensor(sh, seed + i as u64, &device))
            .collect()
    };
    let (s, t) = (maps(30), maps(40));
    let ad = Device::flex().autodiff();
    let spec = DistillerSpec::baseline("pkd").unwrap();
    let d = Distiller::new(
        &spec,
        "retinanet_resnet18_fpn",
        &info,
        "retinanet_resnet50_fpn",
        &info,
        &mut InitRng::new(3),
        &ad,
    )
    .unwrap();
    assert!(d.connector_weights().is_empty());
    let outputs = |maps: &[Tensor<4>]| Intermediates {
        features: maps
            .iter()
            .map(|m| Feature::Map(m.clone().to_device(&ad)))
            .collect(),
        embedding: Tensor::zeros([2, 1], &ad),
        logits: Prediction::Rows(Tensor::zeros([2, 3], &ad)),
        dist_logits: None,
        aux_logits: None,
        box_deltas: None,
    };
    let out = d
        .loss(&outputs(&s), &outputs(&t), &GroundTruth::default())
        .unwrap();
    let got = f64::from(out.terms[0].1.clone().into_scalar::<f32>());
    let want = 10.0
        * s.iter()
            .zip(&t)
            .map(|(a, b)| {
                let (na, nb) = (pkd_norm(&Map::of(a.clone())), pkd_norm(&Map::of(b.clone())));
                let (sum, n) = na
                    .iter()
                    .flatten()
                    .zip(nb.iter().flatten())
                    .fold((0.0, 0.0), |(s, n), (p, q)| (s + (p - q).powi(2), n + 1.0));
                sum / n / 2.0
            })
            .sum::<f64>();
    assert!(
        (got - want).abs() <= 1e-4 * want,
        "pkd: autokd {got} vs reference {want}"
    );
}
