//! DeiT (Touvron et al. 2021), Tiny: embedding 192, 12 blocks, 3 heads, MLP ratio 4, class token
//! plus distillation token with its own head. Patch 16 at 224×224 (the reference model), and a
//! small-patch variant (patch 4 at 32×32) for CIFAR-sized inputs. Submodule names follow timm's
//! state-dict keys (`patch_embed.proj`, `blocks.N.attn.qkv`, `head_dist`, …).
//!
//! Taps `block1` … `block12` are the patch tokens `[B, N, C]` after each block (class and
//! distillation tokens excluded, so that tokens stand for spatial positions). `logits` is the
//! class-token head; `dist_logits` the distillation-token head; DeiT's inference prediction is
//! their mean ([`Intermediates::eval_logits`](crate::Intermediates::eval_logits)).

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};

use crate::features::{Backbone, Collector, Feature, Intermediates, TapInfo, TapKind, TapRequest};
use crate::init::{self, ConvInit, ConvShape, InitRng};
use crate::params::{conv_fwd, count_matmul, linear_fwd};

/// Multi-head self-attention with a fused `qkv` projection (timm layout).
#[derive(Module, Debug)]
pub struct Attention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
}

impl Attention {
    /// # Shapes
    /// - `x`: `[B, N, C]` → `[B, N, C]`
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, c] = x.dims();
        let h = self.num_heads;
        let d = c / h;
        let qkv = linear_fwd(&self.qkv, x).reshape([b, n, 3, h, d]); // [B, N, 3, H, D]
        let part = |i: usize| {
            qkv.clone()
                .narrow(2, i, 1)
                .reshape([b, n, h, d])
                .swap_dims(1, 2)
        }; // [B, H, N, D]
        let (q, k, v) = (part(0), part(1), part(2));
        let attn = softmax(
            q.matmul(k.swap_dims(2, 3))
                .mul_scalar((d as f64).powf(-0.5)),
            3,
        ); // [B, H, N, N]
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b, n, c]); // [B, N, C]
        // q·kᵀ and attn·v: two [N, D] × [D, N]-sized products per head.
        count_matmul(2 * b * h, n, d, n);
        linear_fwd(&self.proj, out)
    }
}

/// Two linear layers with GELU between.
#[derive(Module, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

/// Pre-norm transformer block.
#[derive(Module, Debug)]
pub struct DeitBlock {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl DeitBlock {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x));
        let y = linear_fwd(
            &self.mlp.fc2,
            gelu(linear_fwd(&self.mlp.fc1, self.norm2.forward(x.clone()))),
        );
        x + y
    }
}

/// Patch embedding: a `patch × patch` convolution with stride `patch`.
#[derive(Module, Debug)]
pub struct PatchEmbed {
    proj: Conv2d,
}

/// Configuration of a DeiT.
#[derive(Config, Debug)]
pub struct DeitConfig {
    /// Input side in pixels.
    #[config(default = 224)]
    pub img_size: usize,
    /// Patch side in pixels.
    #[config(default = 16)]
    pub patch_size: usize,
    /// Embedding width.
    #[config(default = 192)]
    pub embed_dim: usize,
    /// Transformer blocks.
    #[config(default = 12)]
    pub depth: usize,
    /// Attention heads.
    #[config(default = 3)]
    pub num_heads: usize,
    /// MLP hidden width over embedding width.
    #[config(default = 4)]
    pub mlp_ratio: usize,
    /// With the distillation token and its head.
    #[config(default = true)]
    pub distilled: bool,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub num_classes: usize,
}

impl DeitConfig {
    /// Builds the network, its weights drawn from `rng` as timm's DeiT does: linear layers
    /// `N(0, 0.02²)` with zero bias (`trunc_normal_(std=.02)`; its cut at ±2 lies 100 standard
    /// deviations out), the class, distillation and position tokens `N(0, 0.02²)`, layer norms
    /// ones and zeros, the patch projection PyTorch's default convolution.
    pub fn init(&self, rng: &mut InitRng, device: &Device) -> Deit {
        let c = self.embed_dim;
        let patches = (self.img_size / self.patch_size).pow(2);
        let tokens = patches + if self.distilled { 2 } else { 1 };
        let std = 0.02;
        let linear =
            |i: usize, o: usize, rng: &mut InitRng| init::linear_normal(i, o, std, rng, device);
        let norm = || init::layer_norm(c, 1e-6, device);
        let blocks = (0..self.depth)
            .map(|_| DeitBlock {
                norm1: norm(),
                attn: Attention {
                    qkv: linear(c, 3 * c, rng),
                    proj: linear(c, c, rng),
                    num_heads: self.num_heads,
                },
                norm2: norm(),
                mlp: Mlp {
                    fc1: linear(c, c * self.mlp_ratio, rng),
                    fc2: linear(c * self.mlp_ratio, c, rng),
                },
            })
            .collect();
        let p = self.patch_size;
        Deit {
            patch_embed: PatchEmbed {
                proj: init::conv2d(
                    ConvShape {
                        in_ch: self.in_channels,
                        out_ch: c,
                        kernel: p,
                        stride: p,
                        padding: 0,
                        groups: 1,
                        bias: true,
                    },
                    ConvInit::TorchDefault,
                    rng,
                    device,
                ),
            },
            cls_token: rng.normal([1, 1, c], std, device),
            dist_token: self.distilled.then(|| rng.normal([1, 1, c], std, device)),
            pos_embed: rng.normal([1, tokens, c], std, device),
            blocks,
            norm: norm(),
            head: linear(c, self.num_classes, rng),
            head_dist: self.distilled.then(|| linear(c, self.num_classes, rng)),
            embed_dim: c,
            patch_size: self.patch_size,
        }
    }
}

/// DeiT with taps `block1` … `blockN` (patch tokens).
#[derive(Module, Debug)]
pub struct Deit {
    patch_embed: PatchEmbed,
    cls_token: Param<Tensor<3>>,
    dist_token: Option<Param<Tensor<3>>>,
    pos_embed: Param<Tensor<3>>,
    blocks: Vec<DeitBlock>,
    norm: LayerNorm,
    head: Linear,
    head_dist: Option<Linear>,
    embed_dim: usize,
    patch_size: usize,
}

impl Backbone for Deit {
    fn feature_info(&self) -> Vec<TapInfo> {
        (1..=self.blocks.len())
            .map(|i| TapInfo {
                name: format!("backbone.block{i}"),
                channels: self.embed_dim,
                stride: self.patch_size,
                kind: TapKind::Tokens,
            })
            .collect()
    }

    fn forward_intermediates(&self, x: Tensor<4>, request: &TapRequest) -> Intermediates {
        let mut taps = Collector::new(request);
        let x = conv_fwd(&self.patch_embed.proj, x); // [B, C, H/p, W/p]
        let [b, c, h, w] = x.dims();
        let x = x.reshape([b, c, h * w]).swap_dims(1, 2); // [B, N, C]
        let mut parts = vec![self.cls_token.val().expand([b, 1, c])];
        if let Some(d) = &self.dist_token {
            parts.push(d.val().expand([b, 1, c]));
        }
        let extra = parts.len();
        parts.push(x);
        let mut x = Tensor::cat(parts, 1) + self.pos_embed.val(); // [B, extra + N, C]
        let n = h * w;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if taps.wants(i) {
                let patches = x.clone().narrow(1, extra, n);
                taps.offer(i, || Feature::Tokens(patches.clone()));
            }
        }
        let x = self.norm.forward(x);
        let cls = x.clone().narrow(1, 0, 1).reshape([b, c]);
        let logits = linear_fwd(&self.head, cls.clone());
        let dist_logits = match (&self.head_dist, extra) {
            (Some(head), 2) => Some(linear_fwd(head, x.narrow(1, 1, 1).reshape([b, c]))),
            _ => None,
        };
        let mut out = taps.finish(cls, logits);
        out.dist_logits = dist_logits.map(crate::Prediction::Rows);
        out
    }
}
