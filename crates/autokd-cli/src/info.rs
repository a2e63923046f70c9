//! `autokd info`: what this build can do.

use std::io::Write;

use anyhow::Context;
use autokd_data::{DatasetSpec, fashion_mnist};

use autokd_models::{Backbone, ModelName, TapKind, forward_macs, trainable_params};

use crate::device::{Backend, select_device, visible_devices};

/// Arguments of `autokd info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Do not probe GPU backends for devices (probing opens every adapter).
    #[arg(long)]
    pub no_probe: bool,
    /// Print the model table: parameters, taps with their shapes, multiply-accumulates (at each
    /// model's reference input: 3×32×32 and 100 classes for the CIFAR family, 3×224×224 and
    /// 1,000 classes for ImageNet and DeiT). Runs one forward pass per model on the CPU.
    #[arg(long)]
    pub models: bool,
}

/// Prints the version, backends, devices, datasets and models.
pub fn run(args: &InfoArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "autokd {}", env!("CARGO_PKG_VERSION"))?;
    writeln!(out, "burn 0.22.1")?;
    writeln!(out)?;
    writeln!(out, "backends:")?;
    for b in Backend::ALL {
        if b.compiled() {
            writeln!(out, "  {:<8} compiled", b.name())?;
        } else {
            let note = b.build_note().map(|n| format!("; {n}")).unwrap_or_default();
            writeln!(
                out,
                "  {:<8} not compiled (--features {}{note})",
                b.name(),
                b.name()
            )?;
        }
    }
    writeln!(out)?;
    writeln!(out, "devices (--device):")?;
    let mut any = false;
    for b in Backend::compiled_list() {
        if args.no_probe && b != Backend::Flex {
            writeln!(out, "  {:<10} not probed", b.name())?;
            continue;
        }
        let devices = visible_devices(b);
        if devices.is_empty() {
            writeln!(out, "  {:<10} none found", b.name())?;
        }
        for (name, desc) in devices {
            any = true;
            writeln!(out, "  {name:<10} {desc}")?;
        }
    }
    if !any {
        writeln!(out, "  (no usable device)")?;
    }
    writeln!(out)?;
    writeln!(out, "datasets (--dataset):")?;
    let d = DatasetSpec::Digits
        .load()
        .context("loading the embedded digits")?;
    writeln!(
        out,
        "  {:<22} embedded: {} train + {} test images, {}x{}x{}, {} classes (UCI, CC BY 4.0)",
        "digits",
        d.train.len(),
        d.test.len(),
        d.info.channels,
        d.info.height,
        d.info.width,
        d.info.num_classes
    )?;
    let fm = std::path::Path::new(fashion_mnist::DEFAULT_DIR);
    let state = if fm.is_dir() {
        "installed"
    } else {
        "not installed: apt-get install dataset-fashion-mnist"
    };
    writeln!(
        out,
        "  {:<22} 28x28x1, 10 classes; default {} ({state})",
        "fashion-mnist[:DIR]",
        fm.display()
    )?;
    writeln!(
        out,
        "  {:<22} CIFAR-10 binary version, 32x32x3, 10 classes",
        "cifar10:DIR"
    )?;
    writeln!(
        out,
        "  {:<22} CIFAR-100 binary version, 32x32x3, 100 classes",
        "cifar100:DIR"
    )?;
    writeln!(
        out,
        "  {:<22} DIR/train/<class>/*.jpg|png and DIR/val/<class>/*, RGB 224x224",
        "imagefolder:DIR"
    )?;
    writeln!(
        out,
        "  {:<22} PASCAL VOC segmentation: DIR/JPEGImages/*.jpg with DIR/SegmentationClass/*.png masks",
        "vocseg:DIR"
    )?;
    writeln!(
        out,
        "  {:<22} Cityscapes: DIR/leftImg8bit/<split>/<city>/*.png with DIR/gtFine/... labelTrainIds (or labelIds)",
        "cityscapes:DIR"
    )?;
    writeln!(
        out,
        "  {:<22} segmentation scenes composed of real digits (48x48) or Fashion-MNIST items (64x64)",
        "scenes[:fashion-mnist[:DIR]]"
    )?;
    writeln!(
        out,
        "  {:<22} the same scenes with their items' boxes (detection, 10 classes)",
        "boxscenes[:fashion-mnist[:DIR]]"
    )?;
    writeln!(
        out,
        "  {:<22} PASCAL VOC detection: DIR/Annotations/*.xml with DIR/JPEGImages, or XML beside images",
        "voc:DIR"
    )?;
    writeln!(
        out,
        "  {:<22} COCO detection: DIR/annotations/instances_train*.json (+ val) or one instances file",
        "coco:DIR|FILE"
    )?;
    writeln!(out)?;
    if args.models {
        model_table(out)?;
    } else {
        let names: Vec<&str> = ModelName::ALL.iter().map(|m| m.as_str()).collect();
        writeln!(
            out,
            "models ({}; `autokd info --models` for sizes and taps):",
            names.len()
        )?;
        for chunk in names.chunks(8) {
            writeln!(out, "  {}", chunk.join(", "))?;
        }
    }
    Ok(())
}

fn model_table(out: &mut dyn Write) -> anyhow::Result<()> {
    let device = select_device(&Default::default())?;
    writeln!(
        out,
        "models (at the reference input; taps as name CxHxW, or name NxC for tokens):"
    )?;
    writeln!(
        out,
        "  {:<15} {:>11} {:>9} {:>8}  taps",
        "name", "params", "input", "GMACs"
    )?;
    for &name in ModelName::ALL {
        let spec = name.reference_spec();
        let model = spec.init(&device)?;
        let side = spec.image_size;
        let taps: Vec<String> = model
            .feature_info()
            .iter()
            .map(|t| {
                let s = side / t.stride;
                match t.kind {
                    TapKind::FeatureMap => format!("{} {}x{}x{}", t.name, t.channels, s, s),
                    TapKind::Tokens => format!("{} {}x{}", t.name, s * s, t.channels),
                }
            })
            .collect();
        let macs = forward_macs(&model, [spec.in_channels, side, side], &device);
        writeln!(
            out,
            "  {:<15} {:>11} {:>9} {:>8.3}  {}",
            name.as_str(),
            trainable_params(&model),
            format!("{}x{}x{}", spec.in_channels, side, side),
            macs as f64 / 1e9,
            taps.join(", ")
        )?;
    }
    Ok(())
}
