//! Saving and loading weights: burn's own burnpack format, and PyTorch checkpoints (`.pth`/`.pt`
//! state dicts, also nested under `"model"`/`"state_dict"` as RepDistiller and mdistiller save
//! them) and safetensors in PyTorch layout, through burn-store with per-family key remapping.
//!
//! Loading is strict: a tensor of the model that the file lacks, a tensor of the file the model
//! does not use (BatchNorm's `num_batches_tracked` excepted) or a shape mismatch is an error that
//! lists the keys.

use std::path::Path;

use burn::store::{
    ApplyResult, BurnpackStore, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore,
};

use crate::error::ModelError;
use crate::registry::{Model, ModelName};

/// A weight-file format, told by the file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// burn's burnpack (`.bpk`): what autokd writes.
    Burnpack,
    /// A PyTorch checkpoint (`.pth`, `.pt`, `.tar`).
    Pytorch,
    /// safetensors in PyTorch layout (`.safetensors`).
    Safetensors,
}

impl WeightFormat {
    /// The format of `path`, from its extension.
    pub fn of(path: &Path) -> Result<Self, ModelError> {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("bpk" | "burnpack") => Ok(Self::Burnpack),
            Some("pth" | "pt" | "tar") => Ok(Self::Pytorch),
            Some("safetensors") => Ok(Self::Safetensors),
            _ => Err(weights_err(
                path,
                "unknown weight format; expected .bpk (burnpack), .pth/.pt (PyTorch) or .safetensors",
            )),
        }
    }
}

fn weights_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Weights {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Saves `model` as burnpack to `path` (written to a temporary file, then renamed).
pub fn save(model: &Model, path: &Path) -> Result<(), ModelError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file = path
        .file_name()
        .ok_or_else(|| weights_err(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{file}.tmp"));
    let mut store = BurnpackStore::from_file(&tmp).overwrite(true);
    model
        .save_into(&mut store)
        .map_err(|e| weights_err(path, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| weights_err(path, format!("cannot write: {e}")))
}

/// Loads weights into `model` (built for `name`) from `path`, in the format its extension names.
pub fn load(mut model: Model, name: ModelName, path: &Path) -> Result<Model, ModelError> {
    if !path.is_file() {
        return Err(weights_err(path, "file not found"));
    }
    let result = match WeightFormat::of(path)? {
        WeightFormat::Burnpack => {
            let mut store = BurnpackStore::from_file(path).validate(true);
            model
                .load_from(&mut store)
                .map_err(|e| weights_err(path, e.to_string()))?
        }
        WeightFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(PyTorchToBurnAdapter)
                .remap(remapper(name, path)?)
                .skip_enum_variants(true)
                .map_indices_contiguous(false)
                .allow_partial(true);
            model
                .load_from(&mut store)
                .map_err(|e| weights_err(path, e.to_string()))?
        }
        WeightFormat::Pytorch => {
            // State dicts are saved bare (torchvision) or nested (RepDistiller: "model").
            let mut last = None;
            for key in [None, Some("model"), Some("state_dict")] {
                let mut store = PytorchStore::from_file(path)
                    .remap(remapper(name, path)?)
                    .map_indices_contiguous(false)
                    .allow_partial(true);
                if let Some(k) = key {
                    store = store.with_top_level_key(k);
                }
                match model.load_from(&mut store) {
                    Ok(r) if !r.applied.is_empty() => {
                        last = Some(Ok(r));
                        break;
                    }
                    Ok(r) => last = Some(Ok(r)),
                    Err(e) => {
                        if last.is_none() {
                            last = Some(Err(e.to_string()));
                        }
                    }
                }
            }
            match last {
                Some(Ok(r)) => r,
                Some(Err(e)) => return Err(weights_err(path, e)),
                None => return Err(weights_err(path, "no tensors found")),
            }
        }
    };
    check(path, &result)?;
    Ok(model)
}

/// Loads an ImageNet classification checkpoint of the backbone (torchvision's `resnet18` /
/// `resnet50` / `resnet101` state dict: `conv1`, `bn1`, `layer1` … `layer4`, `fc`; or autokd's
/// own `.bpk` of an ImageNet-style ResNet classifier, e.g. one pretrained here) into a
/// segmentation model's or a detector's backbone, as torchvision's `weights_backbone` and
/// CIRKD's `--student-pretrained-base` do; the heads (and a detector's FPN) keep their
/// initialization.
///
/// Strict on the backbone: every backbone tensor must come from the file with its shape, and
/// the file may hold nothing else but the classifier (`fc.*`; MobileNetV2's `features.18` and
/// `classifier`); an error lists the keys. A model
/// that is not a segmentation model is refused (load its weights with [`load`]).
pub fn load_backbone(mut model: Model, name: ModelName, path: &Path) -> Result<Model, ModelError> {
    if !matches!(
        model,
        Model::DeepLabV3(_) | Model::DeepLabV3MobileNet(_) | Model::RetinaNet(_)
    ) {
        return Err(weights_err(
            path,
            format!("{name} has no separate backbone; load its weights whole"),
        ));
    }
    if !path.is_file() {
        return Err(weights_err(path, "file not found"));
    }
    let detector = matches!(model, Model::RetinaNet(_));
    // A Burnpack's paths lead with the model's variant (`RetinaNet.`, `ResNet.`); PyTorch's
    // and safetensors' do not.
    let format = WeightFormat::of(path)?;
    let own_format = matches!(format, WeightFormat::Burnpack);
    let unvariant = |p: &str| -> String {
        match p.split_once('.') {
            Some((_, rest)) if own_format => rest.to_string(),
            _ => p.to_string(),
        }
    };
    let backbone = |p: &str| {
        let p = unvariant(p);
        if detector {
            p.starts_with("backbone.body.")
        } else {
            ["conv1.", "bn1.", "layers.", "stem.", "groups."]
                .iter()
                .any(|b| p.starts_with(b))
        }
    };
    // Only the backbone's keys are renamed: a classifier's own keys (`fc.*`; MobileNetV2's
    // `features.18.*` and `classifier.*`) stay as they are and are left out.
    let remap = KeyRemapper::from_patterns(backbone_key_patterns(name))
        .map_err(|e| weights_err(path, format!("key remapping: {e}")))?;
    let classifier = |k: &str| {
        let k = unvariant(k);
        ["fc.", "features.18.", "classifier."]
            .iter()
            .any(|c| k.starts_with(c))
    };
    let result = match format {
        WeightFormat::Burnpack => {
            // autokd's own ImageNet-style ResNet classifier (`autokd train --model resnet18`):
            // its stem and stages carry the backbone's names under the classifier's variant.
            let target = match &model {
                Model::RetinaNet(_) => "RetinaNet.backbone.body.",
                Model::DeepLabV3(_) => "DeepLabV3.",
                _ => {
                    return Err(weights_err(
                        path,
                        format!(
                            "{name}'s backbone is read from a PyTorch or safetensors checkpoint \
                             (a .bpk backbone is an autokd ResNet classifier)"
                        ),
                    ));
                }
            };
            let own = KeyRemapper::from_patterns(vec![(
                r"^ResNet\.(conv1|bn1|layers)\.".to_string(),
                format!("{target}$1."),
            )])
            .map_err(|e| weights_err(path, format!("key remapping: {e}")))?;
            let mut store = BurnpackStore::from_file(path)
                .remap(own)
                .allow_partial(true);
            model
                .load_from(&mut store)
                .map_err(|e| weights_err(path, format!("does not fit the backbone: {e}")))?
        }
        WeightFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path)
                .with_from_adapter(PyTorchToBurnAdapter)
                .remap(remap.clone())
                .skip_enum_variants(true)
                .map_indices_contiguous(false)
                .allow_partial(true);
            model
                .load_from(&mut store)
                .map_err(|e| weights_err(path, format!("does not fit the backbone: {e}")))?
        }
        WeightFormat::Pytorch => {
            let mut store = PytorchStore::from_file(path)
                .remap(remap.clone())
                .map_indices_contiguous(false)
                .allow_partial(true);
            model
                .load_from(&mut store)
                .map_err(|e| weights_err(path, format!("does not fit the backbone: {e}")))?
        }
    };
    let mut problems = Vec::new();
    if !result.errors.is_empty() {
        problems.push(format!(
            "{} tensors do not fit: {}",
            result.errors.len(),
            result
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let missing: Vec<&str> = result
        .missing
        .iter()
        .map(|(p, _)| p.as_str())
        .filter(|p| backbone(p))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} backbone tensors are missing from the file: {}",
            missing.len(),
            missing.join(", ")
        ));
    }
    let unused: Vec<&str> = result
        .unused
        .iter()
        .map(String::as_str)
        .filter(|k| !k.ends_with("num_batches_tracked") && !classifier(k))
        .collect();
    if !unused.is_empty() {
        problems.push(format!(
            "{} tensors of the file are not the backbone's (an ImageNet classification checkpoint holds the backbone and fc only): {}",
            unused.len(),
            unused.join(", ")
        ));
    }
    // A whole model's checkpoint of the same kind (a detector's own `.bpk`) fits its heads too:
    // only the backbone may be read from the file.
    let foreign: Vec<&str> = result
        .applied
        .iter()
        .map(String::as_str)
        .filter(|p| !backbone(p))
        .collect();
    if !foreign.is_empty() {
        let shown = foreign
            .iter()
            .take(6)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        problems.push(format!(
            "{} tensors of the file are not the backbone's (a classification checkpoint holds the backbone and its classifier only): {shown}{}",
            foreign.len(),
            if foreign.len() > 6 { ", …" } else { "" }
        ));
    }
    if !result.applied.iter().any(|p| backbone(p)) && problems.is_empty() {
        problems.push("no tensor of the file matches the backbone".into());
    }
    if problems.is_empty() {
        Ok(model)
    } else {
        Err(weights_err(path, problems.join("; ")))
    }
}

fn check(path: &Path, r: &ApplyResult) -> Result<(), ModelError> {
    let mut problems = Vec::new();
    if !r.errors.is_empty() {
        problems.push(format!(
            "{} tensors do not fit: {}",
            r.errors.len(),
            r.errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if !r.missing.is_empty() {
        problems.push(format!(
            "{} tensors of the model are missing from the file: {}",
            r.missing.len(),
            r.missing
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let unused: Vec<&str> = r
        .unused
        .iter()
        .map(String::as_str)
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .collect();
    if !unused.is_empty() {
        problems.push(format!(
            "{} tensors of the file are not used by the model: {}",
            unused.len(),
            unused.join(", ")
        ));
    }
    if r.applied.is_empty() && problems.is_empty() {
        problems.push("no tensor of the file matches the model".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(weights_err(path, problems.join("; ")))
    }
}

/// The key patterns of a segmentation model's backbone alone: torchvision's classification
/// layout (`conv1`, `layer1` … for a ResNet; `features.0` … `features.17` for MobileNetV2),
/// also under `backbone.` as its segmentation checkpoints nest it. Other models: none.
pub fn backbone_key_patterns(name: ModelName) -> Vec<(String, String)> {
    use ModelName as N;
    let mut p: Vec<(String, String)> = Vec::new();
    let mut add = |from: &str, to: &str| p.push((from.to_string(), to.to_string()));
    match name {
        N::Deeplabv3Resnet18 | N::Deeplabv3Resnet50 | N::Deeplabv3Resnet101 => {
            add(r"^backbone\.", "");
            for i in 1..=4 {
                add(&format!(r"^layer{i}\."), &format!("layers.{}.", i - 1));
            }
            add(r"\.downsample\.0\.", ".downsample.conv.");
            add(r"\.downsample\.1\.", ".downsample.bn.");
        }
        N::RetinanetResnet18
        | N::RetinanetResnet50
        | N::RetinanetResnet101
        | N::RetinanetResnet18Gn
        | N::RetinanetResnet50Gn => {
            // The ResNet is the detector's `backbone.body`.
            for i in 1..=4 {
                add(
                    &format!(r"^layer{i}\."),
                    &format!("backbone.body.layers.{}.", i - 1),
                );
            }
            add(r"^(conv1|bn1)\.", "backbone.body.$1.");
            add(r"\.downsample\.0\.", ".downsample.conv.");
            add(r"\.downsample\.1\.", ".downsample.bn.");
        }
        N::Deeplabv3Mobilenetv2 => {
            // torchvision's segmentation models nest MobileNet features as `backbone.<index>`.
            add(r"^backbone\.", "features.");
            add(r"^features\.0\.0\.", "stem.conv.");
            add(r"^features\.0\.1\.", "stem.bn.");
            // torchvision's features.1 … features.17 are the blocks of the seven groups in
            // order; a block with expansion names its parts conv.0 (1×1 + BN), conv.1 (3×3
            // depthwise + BN), conv.2 / conv.3 (projection, BN); without (the first) conv.0 is
            // the depthwise pair and conv.1 / conv.2 the projection.
            let mut k = 1;
            for (g, &(t, _, n, _)) in crate::deeplab_mobilenet::SETTINGS.iter().enumerate() {
                for i in 0..n {
                    let to = format!("groups.{g}.{i}.");
                    let f = format!(r"^features\.{k}\.conv\.");
                    if t == 1 {
                        add(&format!(r"{f}0\.0\."), &format!("{to}depthwise.conv."));
                        add(&format!(r"{f}0\.1\."), &format!("{to}depthwise.bn."));
                        add(&format!(r"{f}1\."), &format!("{to}project.conv."));
                        add(&format!(r"{f}2\."), &format!("{to}project.bn."));
                    } else {
                        add(&format!(r"{f}0\.0\."), &format!("{to}expand.conv."));
                        add(&format!(r"{f}0\.1\."), &format!("{to}expand.bn."));
                        add(&format!(r"{f}1\.0\."), &format!("{to}depthwise.conv."));
                        add(&format!(r"{f}1\.1\."), &format!("{to}depthwise.bn."));
                        add(&format!(r"{f}2\."), &format!("{to}project.conv."));
                        add(&format!(r"{f}3\."), &format!("{to}project.bn."));
                    }
                    k += 1;
                }
            }
        }
        _ => {}
    }
    p
}

/// PyTorch state-dict key → autokd module path, for the reference layouts of each family.
pub fn pytorch_key_patterns(name: ModelName) -> Vec<(String, String)> {
    use ModelName as N;
    let mut p: Vec<(String, String)> = Vec::new();
    let mut add = |from: &str, to: &str| p.push((from.to_string(), to.to_string()));
    match name {
        N::Resnet8
        | N::Resnet14
        | N::Resnet20
        | N::Resnet32
        | N::Resnet44
        | N::Resnet56
        | N::Resnet110
        | N::Resnet8x4
        | N::Resnet32x4
        | N::Resnet18
        | N::Resnet34
        | N::Resnet50
        | N::Resnet50Cifar => {
            for i in 1..=4 {
                add(&format!(r"^layer{i}\."), &format!("layers.{}.", i - 1));
            }
            // torchvision / RepDistiller resnet.py: downsample; RepDistiller resnetv2.py: shortcut.
            add(r"\.(downsample|shortcut)\.0\.", ".downsample.conv.");
            add(r"\.(downsample|shortcut)\.1\.", ".downsample.bn.");
            add(r"^linear\.", "fc.");
        }
        N::RetinanetResnet18
        | N::RetinanetResnet50
        | N::RetinanetResnet101
        | N::RetinanetResnet18Gn
        | N::RetinanetResnet50Gn => {
            // torchvision's `retinanet_resnet50_fpn` layout: `backbone.body` (IntermediateLayerGetter
            // over the ResNet), `backbone.fpn` (Conv2dNormActivation wrappers: `.0`), the heads'
            // `conv.{i}.0` stacks and their `cls_logits` / `bbox_reg` outputs.
            for i in 1..=4 {
                add(
                    &format!(r"^backbone\.body\.layer{i}\."),
                    &format!("backbone.body.layers.{}.", i - 1),
                );
            }
            add(r"\.downsample\.0\.", ".downsample.conv.");
            add(r"\.downsample\.1\.", ".downsample.bn.");
            add(
                r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.0\.",
                "backbone.fpn.$1.$2.",
            );
            add(
                r"^head\.(classification_head|regression_head)\.conv\.(\d+)\.0\.",
                "head.$1.conv.$2.",
            );
            // The GroupNorm head's norms (`retinanet_resnet50_fpn_v2`'s layout).
            add(
                r"^head\.(classification_head|regression_head)\.conv\.(\d+)\.1\.",
                "head.$1.norm.$2.",
            );
            add(
                r"^head\.classification_head\.cls_logits\.",
                "head.classification_head.out.",
            );
            add(
                r"^head\.regression_head\.bbox_reg\.",
                "head.regression_head.out.",
            );
        }
        N::Wrn16_1 | N::Wrn16_2 | N::Wrn40_1 | N::Wrn40_2 => {
            for g in 1..=3 {
                add(
                    &format!(r"^block{g}\.layer\."),
                    &format!("blocks.{}.", g - 1),
                );
            }
            add(r"\.convShortcut\.", ".conv_shortcut.");
        }
        N::Vgg8 | N::Vgg11 | N::Vgg13 | N::Vgg16 | N::Vgg19 => {
            // nn.Sequential of [conv, bn, relu]* without the last relu: conv at 3k, bn at 3k+1.
            for k in 0..4 {
                add(
                    &format!(r"^block(\d)\.{}\.", 3 * k),
                    &format!("blocks.$1.{k}.conv."),
                );
                add(
                    &format!(r"^block(\d)\.{}\.", 3 * k + 1),
                    &format!("blocks.$1.{k}.bn."),
                );
            }
        }
        N::MobileNetV2 => {
            add(r"^conv1\.0\.", "conv1.conv.");
            add(r"^conv1\.1\.", "conv1.bn.");
            add(r"^conv2\.0\.", "conv2.conv.");
            add(r"^conv2\.1\.", "conv2.bn.");
            add(r"^classifier\.0\.", "classifier.");
            for (i, part) in [
                "expand.conv",
                "expand.bn",
                "",
                "depthwise.conv",
                "depthwise.bn",
                "",
                "project.conv",
                "project.bn",
            ]
            .iter()
            .enumerate()
            {
                if !part.is_empty() {
                    add(
                        &format!(r"^blocks\.(\d+)\.(\d+)\.conv\.{i}\."),
                        &format!("blocks.$1.$2.{part}."),
                    );
                }
            }
        }
        N::ShuffleNetV1 | N::ShuffleNetV2 => {
            add(r"^conv1\.", "stem.conv.");
            add(r"^bn1\.", "stem.bn.");
            for l in 1..=3 {
                for k in 1..=5 {
                    add(
                        &format!(r"^layer{l}\.(\d+)\.conv{k}\."),
                        &format!("layers.{}.$1.conv{k}.conv.", l - 1),
                    );
                    add(
                        &format!(r"^layer{l}\.(\d+)\.bn{k}\."),
                        &format!("layers.{}.$1.conv{k}.bn.", l - 1),
                    );
                }
            }
        }
        N::MobileNetV1 => {
            add(r"^model\.0\.0\.", "stem.conv.");
            add(r"^model\.0\.1\.", "stem.bn.");
            for j in 1..=13 {
                for (i, part) in [
                    (0, "depthwise.conv"),
                    (1, "depthwise.bn"),
                    (3, "pointwise.conv"),
                    (4, "pointwise.bn"),
                ] {
                    add(
                        &format!(r"^model\.{j}\.{i}\."),
                        &format!("blocks.{}.{part}.", j - 1),
                    );
                }
            }
        }
        // timm's DeiT names are ours.
        N::DeitTiny | N::DeitTinyP4 => {}
        // torchvision's segmentation layout: `backbone.` (IntermediateLayerGetter of a ResNet),
        // `classifier` = DeepLabHead (ASPP, 3×3 conv, BN, ReLU, 1×1), `aux_classifier` =
        // FCNHead (3×3 conv, BN, ReLU, dropout, 1×1).
        N::Deeplabv3Resnet18
        | N::Deeplabv3Resnet50
        | N::Deeplabv3Resnet101
        | N::Deeplabv3Mobilenetv2 => {
            p.extend(backbone_key_patterns(name));
            let mut add = |from: &str, to: &str| p.push((from.to_string(), to.to_string()));
            // The pooling branch is [AdaptiveAvgPool2d, conv, BN, ReLU]; the others [conv, BN, ReLU].
            add(r"^classifier\.0\.convs\.4\.1\.", "aspp.pool.conv.");
            add(r"^classifier\.0\.convs\.4\.2\.", "aspp.pool.bn.");
            add(r"^classifier\.0\.convs\.(\d)\.0\.", "aspp.convs.$1.conv.");
            add(r"^classifier\.0\.convs\.(\d)\.1\.", "aspp.convs.$1.bn.");
            add(r"^classifier\.0\.project\.0\.", "aspp.project.conv.");
            add(r"^classifier\.0\.project\.1\.", "aspp.project.bn.");
            add(r"^classifier\.1\.", "head.conv.");
            add(r"^classifier\.2\.", "head.bn.");
            add(r"^classifier\.4\.", "classifier.");
            add(r"^aux_classifier\.0\.", "aux.conv.conv.");
            add(r"^aux_classifier\.1\.", "aux.conv.bn.");
            add(r"^aux_classifier\.4\.", "aux.classifier.");
        }
    }
    p
}

fn remapper(name: ModelName, path: &Path) -> Result<KeyRemapper, ModelError> {
    KeyRemapper::from_patterns(pytorch_key_patterns(name))
        .map_err(|e| weights_err(path, format!("key remapping: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Backbone;
    use crate::registry::ModelSpec;
    use crate::resnet::ResNetConfig;
    use burn::prelude::*;
    use std::path::PathBuf;

    /// The fixtures folder, from the crate's folder as cargo gives it to the running test (a
    /// test binary reused from a clone at another path would otherwise read that clone's
    /// folder, baked in at compile time).
    fn fixtures() -> PathBuf {
        let dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
        dir.join("../../models/fixtures")
    }

    /// The input of `make_fixtures.py`: sin(0.37 i) + 0.5 cos(0.11 i) over the flat index.
    fn fixed_input(device: &Device) -> Tensor<4> {
        let v: Vec<f32> = (0..2 * 3 * 32 * 32)
            .map(|i| {
                let i = i as f64;
                ((0.37 * i).sin() + 0.5 * (0.11 * i).cos()) as f32
            })
            .collect();
        Tensor::from_data(TensorData::new(v, [2, 3, 32, 32]), device)
    }

    /// Logits the NumPy reference forward pass computed in float64 (`expected.json`).
    fn expected(name: &str) -> Vec<f32> {
        let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[name]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
            })
            .collect()
    }

    fn assert_close(got: Tensor<2>, want: &[f32], what: &str) {
        let got: Vec<f32> = got.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-4 * scale.max(1.0),
                "{what}: {got:?} vs {want:?}"
            );
        }
    }

    fn resnet8(device: &Device) -> Model {
        ModelSpec {
            name: ModelName::Resnet8,
            in_channels: 3,
            num_classes: 10,
            image_size: 32,
        }
        .init(device)
        .unwrap()
    }

    /// A DeepLabV3 on the narrow ResNet-18 of the fixtures (5 classes, head 16 channels).
    fn narrow_deeplab(device: &Device) -> Model {
        let cfg = crate::deeplab::DeepLabV3Config::new(
            "deeplabv3_resnet18".into(),
            3,
            5,
            vec![2, 2, 2, 2],
            false,
        )
        .with_planes(vec![8, 16, 32, 64])
        .with_stem_channels(8)
        .with_channels(16);
        Model::DeepLabV3(cfg.init(&mut crate::init::InitRng::new(0), device))
    }

    /// The `stage1` tap of `m` on the fixed input.
    fn stage1_of(m: &Model, device: &Device) -> Vec<f32> {
        let info = m.feature_info();
        let req = crate::TapRequest::by_names("m", &info, &["stage1"]).unwrap();
        let out = m.valid().forward_intermediates(fixed_input(device), &req);
        match &out.features[0] {
            crate::Feature::Map(x) => x.clone().into_data().try_to_vec::<f32>().unwrap(),
            crate::Feature::Tokens(_) => panic!("a map"),
        }
    }

    fn narrow_resnet18(device: &Device) -> Model {
        let cfg = ResNetConfig::new(
            "resnet18".into(),
            3,
            10,
            crate::resnet::Stem::ImageNet,
            8,
            vec![8, 16, 32, 64],
            vec![2, 2, 2, 2],
            false,
        );
        Model::ResNet(cfg.init(&mut crate::init::InitRng::new(0), device))
    }

    #[test]
    fn repdistiller_checkpoint_matches_the_reference_forward() {
        let device = Device::flex();
        let want = expected("resnet8_cifar10");
        // RepDistiller saves {"model": state_dict, "epoch": 240}.
        let m = load(
            resnet8(&device),
            ModelName::Resnet8,
            &fixtures().join("resnet8_cifar10.pth"),
        )
        .unwrap();
        assert_close(m.forward(fixed_input(&device)), &want, "pth");
        let m = load(
            resnet8(&device),
            ModelName::Resnet8,
            &fixtures().join("resnet8_cifar10.safetensors"),
        )
        .unwrap();
        assert_close(m.forward(fixed_input(&device)), &want, "safetensors");
    }

    #[test]
    fn torchvision_resnet_checkpoint_matches_the_reference_forward() {
        let device = Device::flex();
        let m = load(
            narrow_resnet18(&device),
            ModelName::Resnet18,
            &fixtures().join("resnet18_narrow.pth"),
        )
        .unwrap();
        assert_close(
            m.forward(fixed_input(&device)),
            &expected("resnet18_narrow"),
            "resnet18",
        );
    }

    /// An ImageNet classification checkpoint (the narrow torchvision ResNet-18 fixture) loads
    /// into a DeepLabV3's backbone: the stem and stage 1, which dilation leaves alone, give the
    /// classifier's stage-1 features exactly; the heads are not read from the file. A file with
    /// other tensors than the backbone and `fc`, or of another architecture, is an error that
    /// names them; a classifier has no separate backbone.
    #[test]
    fn an_imagenet_checkpoint_loads_into_the_backbone() {
        let device = Device::flex();
        let pth = fixtures().join("resnet18_narrow.pth");
        let deeplab = || narrow_deeplab(&device);
        let seg = load_backbone(deeplab(), ModelName::Deeplabv3Resnet18, &pth).unwrap();
        let cls = load(narrow_resnet18(&device), ModelName::Resnet18, &pth).unwrap();
        let stage1 = |m: &Model| stage1_of(m, &device);
        let (a, b) = (stage1(&seg), stage1(&cls));
        assert_eq!(a.len(), 2 * 8 * 8 * 8);
        assert_eq!(a, b);
        // A fresh model's stage 1 differs: the file was read.
        assert_ne!(stage1(&deeplab()), b);
        // A segmentation checkpoint is not a classification one.
        let err = load_backbone(
            deeplab(),
            ModelName::Deeplabv3Resnet18,
            &fixtures().join("deeplabv3_narrow.pth"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("deeplabv3_narrow.pth"), "{err}");
        assert!(
            ["does not fit", "do not fit", "not the backbone"]
                .iter()
                .any(|w| err.contains(w)),
            "{err}"
        );
        let err = load_backbone(narrow_resnet18(&device), ModelName::Resnet18, &pth)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no separate backbone"), "{err}");
    }

    /// The same checkpoint into a RetinaNet's backbone (torchvision's `weights_backbone`): the
    /// stage-1 features equal the classifier's (the detector's frozen batch norms use the
    /// file's statistics, as the classifier's inference does); the FPN and heads are not read.
    #[test]
    fn an_imagenet_checkpoint_loads_into_a_detectors_backbone() {
        let device = Device::flex();
        let pth = fixtures().join("resnet18_narrow.pth");
        let retinanet = || {
            let cfg = crate::retinanet::RetinaNetConfig::resnet18(4)
                .with_planes(vec![8, 16, 32, 64])
                .with_stem_channels(8)
                .with_channels(16);
            Model::RetinaNet(cfg.init(&mut crate::init::InitRng::new(0), &device))
        };
        let det = load_backbone(retinanet(), ModelName::RetinanetResnet18, &pth).unwrap();
        let cls = load(narrow_resnet18(&device), ModelName::Resnet18, &pth).unwrap();
        let stage1 = |m: &Model| stage1_of(m, &device);
        let (a, b) = (stage1(&det), stage1(&cls));
        assert_eq!(a.len(), 2 * 8 * 8 * 8);
        assert_eq!(a, b);
        assert_ne!(stage1(&retinanet()), b);

        // autokd's own classifier checkpoint (a .bpk from `autokd train`) loads the same way,
        // into a detector and into a DeepLabV3.
        let dir = tempfile::tempdir().unwrap();
        let bpk = dir.path().join("resnet18.bpk");
        save(&cls, &bpk).unwrap();
        let det = load_backbone(retinanet(), ModelName::RetinanetResnet18, &bpk).unwrap();
        assert_eq!(stage1(&det), b);
        let deeplab = || narrow_deeplab(&device);
        let seg = load_backbone(deeplab(), ModelName::Deeplabv3Resnet18, &bpk).unwrap();
        assert_eq!(stage1(&seg), b);
        // A detector's own checkpoint is not a classifier's: its tensors are named.
        let own = dir.path().join("retinanet.bpk");
        save(&retinanet(), &own).unwrap();
        let err = load_backbone(retinanet(), ModelName::RetinanetResnet18, &own)
            .unwrap_err()
            .to_string();
        assert!(err.contains("retinanet.bpk"), "{err}");
        assert!(err.contains("not the backbone's"), "{err}");
        assert!(err.contains("backbone.fpn."), "{err}");
        // A classifier of other widths does not fit, and says which tensors.
        let wide = dir.path().join("wide.bpk");
        let cfg = ResNetConfig::new(
            "resnet18".into(),
            3,
            10,
            crate::resnet::Stem::ImageNet,
            16,
            vec![16, 32, 64, 128],
            vec![2, 2, 2, 2],
            false,
        );
        save(
            &Model::ResNet(cfg.init(&mut crate::init::InitRng::new(0), &device)),
            &wide,
        )
        .unwrap();
        let err = load_backbone(retinanet(), ModelName::RetinanetResnet18, &wide)
            .unwrap_err()
            .to_string();
        assert!(err.contains("wide.bpk"), "{err}");
        assert!(
            ["does not fit", "do not fit"]
                .iter()
                .any(|w| err.contains(w)),
            "{err}"
        );
    }

    /// torchvision's own RetinaNet, v1 head and v2's GroupNorm head (`make_detector_fixtures.py`:
    /// a narrow ResNet-18 body, FPN at 16 / 32 channels, 3 classes, every weight and frozen
    /// statistic redrawn, saved with `torch.save`): its state dict loads strictly, and our class
    /// logits and box deltas for the same [2, 3, 64, 48] input equal torchvision's head outputs
    /// (ΣA = 594 anchors per image, the same row order) to 1e-4 of their largest magnitude.
    #[test]
    fn torchvision_retinanet_checkpoints_match_the_reference_forward() {
        let device = Device::flex();
        let text = std::fs::read_to_string(fixtures().join("retinanet_expected.json")).unwrap();
        let all: serde_json::Value = serde_json::from_str(&text).unwrap();
        let v: Vec<f32> = (0..2 * 3 * 64 * 48)
            .map(|i| {
                let i = i as f64;
                ((0.37 * i).sin() + 0.5 * (0.11 * i).cos()) as f32
            })
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(v, [2, 3, 64, 48]), &device);
        for (file, name, channels, gn) in [
            ("retinanet_narrow", ModelName::RetinanetResnet18, 16, false),
            (
                "retinanet_gn_narrow",
                ModelName::RetinanetResnet18Gn,
                32,
                true,
            ),
        ] {
            let cfg = crate::retinanet::RetinaNetConfig::resnet18(3)
                .with_planes(vec![8, 16, 32, 64])
                .with_stem_channels(8)
                .with_channels(channels)
                .with_head_norm(gn);
            let fresh = Model::RetinaNet(cfg.init(&mut crate::init::InitRng::new(0), &device));
            let m = load(fresh, name, &fixtures().join(format!("{file}.pth"))).unwrap();
            let out = m
                .valid()
                .forward_intermediates(x.clone(), &crate::TapRequest::none());
            let crate::Prediction::Anchors(logits) = out.logits else {
                panic!("{file}: anchor scores");
            };
            assert_eq!(logits.dims(), [2, 594, 3], "{file}");
            let deltas = out.box_deltas.unwrap();
            assert_eq!(deltas.dims(), [2, 594, 4], "{file}");
            let want = |k: &str| -> Vec<f32> {
                all[file][k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            };
            assert_close(
                logits.reshape([2 * 594, 3]),
                &want("cls_logits"),
                &format!("{file} logits"),
            );
            assert_close(
                deltas.reshape([2 * 594, 4]),
                &want("bbox_regression"),
                &format!("{file} deltas"),
            );
        }
    }

    #[test]
    fn burnpack_round_trip_is_exact() {
        let device = Device::flex();
        let m = load(
            narrow_resnet18(&device),
            ModelName::Resnet18,
            &fixtures().join("resnet18_narrow.pth"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("student.bpk");
        save(&m, &path).unwrap();
        assert!(!dir.path().join(".student.bpk.tmp").exists());
        let back = load(narrow_resnet18(&device), ModelName::Resnet18, &path).unwrap();
        let (a, b) = (
            m.forward(fixed_input(&device)),
            back.forward(fixed_input(&device)),
        );
        let diff: f32 = (a - b).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn mismatches_are_errors_that_name_keys() {
        let device = Device::flex();
        let pth = fixtures().join("resnet8_cifar10.pth");
        // Wrong class count: fc shapes differ.
        let m = ModelSpec {
            name: ModelName::Resnet8,
            in_channels: 3,
            num_classes: 100,
            image_size: 32,
        }
        .init(&device)
        .unwrap();
        let msg = load(m, ModelName::Resnet8, &pth).unwrap_err().to_string();
        assert!(
            msg.contains("fc.weight") && msg.contains("resnet8_cifar10.pth"),
            "{msg}"
        );
        // A deeper model: its extra blocks are missing from the file.
        let m = ModelSpec {
            name: ModelName::Resnet14,
            in_channels: 3,
            num_classes: 10,
            image_size: 32,
        }
        .init(&device)
        .unwrap();
        let msg = load(m, ModelName::Resnet14, &pth).unwrap_err().to_string();
        assert!(
            msg.contains("missing from the file") && msg.contains("layers.0.1.conv1.weight"),
            "{msg}"
        );
        // The torchvision checkpoint into a CIFAR ResNet: nothing fits.
        let msg = load(
            resnet8(&device),
            ModelName::Resnet8,
            &fixtures().join("resnet18_narrow.pth"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("resnet18_narrow.pth")
                && msg.contains("Shape mismatch for 'conv1.weight'"),
            "{msg}"
        );
        assert!(
            load(
                resnet8(&device),
                ModelName::Resnet8,
                Path::new("/nonexistent/w.pth")
            )
            .unwrap_err()
            .to_string()
            .contains("file not found")
        );
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("w.ckpt");
        std::fs::write(&odd, b"x").unwrap();
        assert!(
            load(resnet8(&device), ModelName::Resnet8, &odd)
                .unwrap_err()
                .to_string()
                .contains("unknown weight format")
        );
        let junk = dir.path().join("w.pth");
        std::fs::write(&junk, b"not a zip").unwrap();
        assert!(load(resnet8(&device), ModelName::Resnet8, &junk).is_err());
    }

    /// Writes a zero-filled safetensors file holding `keys` (PyTorch names and shapes).
    fn zero_safetensors(path: &Path, keys: &serde_json::Map<String, serde_json::Value>) {
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for (k, shape) in keys {
            let shape: Vec<usize> = shape
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            if k.ends_with("num_batches_tracked") {
                continue; // an int64 buffer; PyTorch-format checkpoints carry it, we ignore it
            }
            let bytes = 4 * shape.iter().product::<usize>();
            header.insert(k.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}));
            offset += bytes;
        }
        let h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.resize(out.len() + offset, 0);
        std::fs::write(path, out).unwrap();
    }

    /// torchvision's ImageNet `mobilenet_v2` layout (the segmentation keys of
    /// `reference_keys.json` as `features.<index>`, plus `features.18` and `classifier.1`) loads
    /// into DeepLabV3-MobileNetV2's backbone: every backbone tensor from the file (zeros here:
    /// the stem's output is then BN's bias alone, 0), the classifier's keys left out; a file
    /// without one block is an error that names its tensors.
    #[test]
    fn an_imagenet_mobilenet_v2_loads_into_the_backbone() {
        let text = std::fs::read_to_string(fixtures().join("reference_keys.json")).unwrap();
        let all: serde_json::Value = serde_json::from_str(&text).unwrap();
        let seg = all["deeplabv3_mobilenetv2"].as_object().unwrap();
        let mut keys = serde_json::Map::new();
        for (k, v) in seg {
            if let Some(rest) = k.strip_prefix("backbone.") {
                keys.insert(format!("features.{rest}"), v.clone());
            }
        }
        keys.insert(
            "features.18.0.weight".into(),
            serde_json::json!([1280, 320, 1, 1]),
        );
        keys.insert(
            "classifier.1.weight".into(),
            serde_json::json!([1000, 1280]),
        );
        keys.insert("classifier.1.bias".into(), serde_json::json!([1000]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mobilenet_v2.safetensors");
        zero_safetensors(&path, &keys);
        let device = Device::flex();
        let name = ModelName::Deeplabv3Mobilenetv2;
        let fresh = || name.reference_spec().init(&device).unwrap();
        let m = load_backbone(fresh(), name, &path).unwrap();
        let info = m.feature_info();
        let req = crate::TapRequest::by_names("m", &info, &["stem"]).unwrap();
        let x = Tensor::<4>::ones([2, 3, 32, 32], &device);
        let crate::Feature::Map(stem) = &m.valid().forward_intermediates(x, &req).features[0]
        else {
            panic!("a map")
        };
        let max: f32 = stem.clone().abs().max().into_scalar();
        assert_eq!(max, 0.0);
        keys.retain(|k, _| !k.starts_with("features.5."));
        zero_safetensors(&path, &keys);
        let err = load_backbone(fresh(), name, &path).unwrap_err().to_string();
        assert!(err.contains("groups.2.1.expand.conv.weight"), "{err}");
    }

    /// torchvision's segmentation layout on a narrow bottleneck DeepLabV3 (`make_fixtures.py`):
    /// the head's and the auxiliary head's maps equal the NumPy forward pass of torchvision's
    /// definition (dilated stages 3–4, ASPP at rates 1/2/3 with image pooling, FCN head).
    #[test]
    fn torchvision_deeplabv3_checkpoint_matches_the_reference_forward() {
        let device = Device::flex();
        let cfg = crate::deeplab::DeepLabV3Config::new(
            "deeplabv3_resnet50".into(),
            3,
            5,
            vec![1, 1, 2, 2],
            true,
        )
        .with_planes(vec![4, 8, 16, 32])
        .with_stem_channels(8)
        .with_rates(vec![1, 2, 3])
        .with_channels(16);
        let model = Model::DeepLabV3(cfg.init(&mut crate::init::InitRng::new(0), &device));
        let m = load(
            model,
            ModelName::Deeplabv3Resnet50,
            &fixtures().join("deeplabv3_narrow.pth"),
        )
        .unwrap();
        let out =
            m.forward_intermediates(fixed_input(&device), &crate::features::TapRequest::none());
        let flat = |p: &crate::features::Prediction| match p {
            crate::features::Prediction::Map(t) => {
                let [b, k, h, w] = t.dims();
                t.clone().reshape([b * k * h * w, 1])
            }
            other => panic!("not a map: {other:?}"),
        };
        assert_eq!(out.logits.dims(), vec![2, 5, 4, 4]);
        assert_close(
            flat(&out.logits),
            &expected("deeplabv3_narrow"),
            "deeplabv3",
        );
        assert_close(
            flat(out.aux_logits.as_ref().unwrap()),
            &expected("deeplabv3_narrow_aux"),
            "deeplabv3 aux",
        );
    }

    /// Every family's key mapping, end to end: the state-dict keys and shapes of the reference
    /// implementation (`reference_keys.json`, written by `make_fixtures.py` from the reference
    /// definitions) load strictly into our model: no key missing, none unused, every shape fits.
    #[test]
    fn every_family_maps_the_reference_state_dict() {
        let device = Device::flex();
        let text = std::fs::read_to_string(fixtures().join("reference_keys.json")).unwrap();
        let all: serde_json::Value = serde_json::from_str(&text).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let families = all.as_object().unwrap();
        assert!(families.len() >= 13);
        for (name, keys) in families {
            let model_name: ModelName = name.parse().unwrap();
            let path = dir.path().join(format!("{name}.safetensors"));
            zero_safetensors(&path, keys.as_object().unwrap());
            let model = model_name.reference_spec().init(&device).unwrap();
            let loaded = load(model, model_name, &path);
            assert!(loaded.is_ok(), "{name}: {}", loaded.unwrap_err());
        }
    }
}
