//! `autokd convert`: load a PyTorch checkpoint (or safetensors, or burnpack) into a registered
//! architecture, strictly, and save it as burnpack for autokd to use (e.g. a RepDistiller teacher).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use autokd_models::{ModelName, ModelSpec, load_weights, save_weights, trainable_params};

use crate::device::select_device;

/// Arguments of `autokd convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Architecture (see `autokd info`).
    #[arg(long)]
    pub model: ModelName,
    /// Classes of the checkpoint's classifier; default: the model family's reference count.
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Input channels; default 3.
    #[arg(long, default_value_t = 3)]
    pub in_channels: usize,
    /// Input side in pixels (DeiT's position embedding); default: the family's reference size.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// The weights to read: .pth/.pt (PyTorch), .safetensors, or .bpk.
    #[arg(long)]
    pub weights: PathBuf,
    /// Where to write the burnpack (.bpk).
    #[arg(long)]
    pub out: PathBuf,
}

/// Converts and reports.
pub fn run(args: &ConvertArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let reference = args.model.reference_spec();
    let spec = ModelSpec {
        name: args.model,
        in_channels: args.in_channels,
        num_classes: args.num_classes.unwrap_or(reference.num_classes),
        image_size: args.image_size.unwrap_or(reference.image_size),
    };
    let device = select_device(&Default::default())?;
    let model = spec.init(&device)?;
    let model = load_weights(model, args.model, &args.weights)
        .with_context(|| format!("loading {} into {}", args.weights.display(), args.model))?;
    save_weights(&model, &args.out)?;
    writeln!(
        out,
        "{}: {} parameters loaded from {}, written to {}",
        args.model,
        trainable_params(&model),
        args.weights.display(),
        args.out.display()
    )?;
    Ok(())
}
