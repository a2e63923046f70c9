//! Intra-spatial transforms (supplementary §0.1.1 "Multi-scale & Local Distillation").
//!
//! - multi-scale: spatial pyramid pooling, average pools to 1×1, 2×2 and 4×4 concatenated along
//!   the spatial axis → `[B, C, 21, 1]`.
//! - local: the map is split into `k × k` patches that become samples of their own
//!   (`[B·k², C, H/k, W/k]`), so the relation and distance act patch by patch. A side that is not
//!   a multiple of `k` is first average-pooled to the multiple below it (or up to `k`).

use burn::prelude::*;
use burn::tensor::module::adaptive_avg_pool2d;
use serde::{Deserialize, Serialize};

/// Pyramid levels of the multi-scale transform.
pub const PYRAMID: [usize; 3] = [1, 2, 4];

/// An intra-spatial transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum IntraSpatial {
    /// The map as it is.
    None,
    /// Spatial pyramid pooling, levels 1, 2, 4.
    MultiScale,
    /// `k × k` local patches, each distilled on its own.
    Local {
        /// Patches per side.
        k: usize,
    },
}

impl IntraSpatial {
    /// Every intra-spatial transform of the paper's space (`k` ∈ {2, 4}).
    pub const ALL: [IntraSpatial; 4] = [
        IntraSpatial::None,
        IntraSpatial::MultiScale,
        IntraSpatial::Local { k: 2 },
        IntraSpatial::Local { k: 4 },
    ];

    /// Name used in formulas.
    pub fn symbol(self) -> String {
        match self {
            IntraSpatial::None => String::new(),
            IntraSpatial::MultiScale => "multi_scale".into(),
            IntraSpatial::Local { k } => format!("local{k}"),
        }
    }

    /// Applies the transform.
    ///
    /// # Shapes
    /// - `x`: `[B, C, H, W]` → `[B, C, 21, 1]` (multi-scale), `[B·k², C, H/k, W/k]` (local)
    pub fn apply(self, x: Tensor<4>) -> Tensor<4> {
        match self {
            IntraSpatial::None => x,
            IntraSpatial::MultiScale => multi_scale(x),
            IntraSpatial::Local { k } => local_patches(x, k.max(1)),
        }
    }
}

fn multi_scale(x: Tensor<4>) -> Tensor<4> {
    let [b, c, _, _] = x.dims();
    let levels: Vec<Tensor<3>> = PYRAMID
        .iter()
        .map(|&l| adaptive_avg_pool2d(x.clone(), [l, l]).reshape([b, c, l * l]))
        .collect();
    let n: usize = PYRAMID.iter().map(|l| l * l).sum();
    Tensor::cat(levels, 2).reshape([b, c, n, 1])
}

fn local_patches(x: Tensor<4>, k: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let fit = |n: usize| if n < k { k } else { n - n % k };
    let (h2, w2) = (fit(h), fit(w));
    let x = if (h2, w2) == (h, w) {
        x
    } else {
        adaptive_avg_pool2d(x, [h2, w2])
    };
    let (ph, pw) = (h2 / k, w2 / k);
    x.reshape([b, c, k, ph, k, pw])
        .permute([0, 2, 4, 1, 3, 5]) // [B, k, k, C, H/k, W/k]
        .reshape([b * k * k, c, ph, pw])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distance::Distance;
    use crate::testing::{grad_check, tensor, vals};

    #[test]
    fn multi_scale_by_hand() {
        let device = Device::flex();
        // One 4×4 channel holding 0..16: level 1 = mean 7.5; level 2 = quadrant means
        // (2.5, 4.5, 10.5, 12.5); level 4 = the values themselves.
        let x = Tensor::<1>::from_floats(
            (0..16).map(|v| v as f32).collect::<Vec<_>>().as_slice(),
            &device,
        )
        .reshape([1, 1, 4, 4]);
        let y = IntraSpatial::MultiScale.apply(x);
        assert_eq!(y.dims(), [1, 1, 21, 1]);
        let mut want = vec![7.5, 2.5, 4.5, 10.5, 12.5];
        want.extend((0..16).map(|v| v as f32));
        assert_eq!(vals(y), want);
    }

    #[test]
    fn local_patches_by_hand() {
        let device = Device::flex();
        let x = Tensor::<1>::from_floats(
            (0..16).map(|v| v as f32).collect::<Vec<_>>().as_slice(),
            &device,
        )
        .reshape([1, 1, 4, 4]);
        let y = IntraSpatial::Local { k: 2 }.apply(x);
        assert_eq!(y.dims(), [4, 1, 2, 2]);
        // Patches in row-major order: top-left (0 1 4 5), top-right (2 3 6 7), bottom-left …
        assert_eq!(
            vals(y),
            vec![
                0., 1., 4., 5., 2., 3., 6., 7., 8., 9., 12., 13., 10., 11., 14., 15.
            ]
        );
        // 5×5 with k = 2 pools to 4×4 first; 1×1 with k = 4 pools up to 4×4.
        assert_eq!(
            IntraSpatial::Local { k: 2 }
                .apply(tensor([2, 3, 5, 5], 1, &device))
                .dims(),
            [8, 3, 2, 2]
        );
        assert_eq!(
            IntraSpatial::Local { k: 4 }
                .apply(tensor([2, 3, 1, 1], 1, &device))
                .dims(),
            [32, 3, 1, 1]
        );
    }

    #[test]
    fn gradients_match_finite_differences() {
        for sp in IntraSpatial::ALL {
            grad_check(&format!("{sp:?}"), [2, 2, 4, 4], |s, t| {
                let (s, t) = (sp.apply(s), sp.apply(t));
                let [b, ..] = s.dims();
                Distance::L2
                    .apply(
                        s.reshape([b as i32, -1]),
                        t.reshape([b as i32, -1]),
                        1.0,
                        false,
                    )
                    .unwrap()
            });
        }
    }
}
