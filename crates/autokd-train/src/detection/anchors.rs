//! Anchors of a one-stage or region-proposal detector: at each position of each pyramid level,
//! one box per (ratio, size), centred on the position's top-left corner `(x·stride, y·stride)`
//! (mmdet's `center_offset = 0`, torchvision's shifts).
//!
//! Order: levels in turn; within a level positions row by row; at a position the ratios in turn,
//! the sizes within a ratio (mmdet's `scale_major`, torchvision's `w_ratios[:, None] * scales`).
//! This is the order of a head's outputs reshaped `[B, A·K, H, W] → [B, H·W·A, K]`.

use super::boxes::Xyxy;
use crate::error::{Result, TrainError};

/// Generates the anchors of every pyramid level.
#[derive(Debug, Clone, PartialEq)]
pub struct AnchorGenerator {
    /// The stride of each level, in input pixels.
    pub strides: Vec<usize>,
    /// The anchor sizes (side of the ratio-1 box) of each level.
    pub sizes: Vec<Vec<f32>>,
    /// Height / width ratios.
    pub ratios: Vec<f32>,
    /// Round the base anchors to whole pixels (torchvision does, mmdet does not).
    pub round: bool,
}

impl AnchorGenerator {
    /// mmdet's RetinaNet anchors: levels P3–P7 (strides 8–128), octave base scale 4, three
    /// scales per octave (sizes `4·stride·2^{k/3}`, so 32, 40.3, 50.8 on P3), ratios 0.5, 1, 2.
    pub fn retinanet() -> Self {
        let strides = vec![8, 16, 32, 64, 128];
        let sizes = strides
            .iter()
            .map(|&s| {
                (0..3)
                    .map(|k| 4.0 * s as f32 * 2f32.powf(k as f32 / 3.0))
                    .collect()
            })
            .collect();
        Self {
            strides,
            sizes,
            ratios: vec![0.5, 1.0, 2.0],
            round: false,
        }
    }

    /// torchvision's `retinanet_resnet50_fpn` anchors: sizes `(x, int(x·2^{1/3}), int(x·2^{2/3}))`
    /// for x = 32 … 512 (so 32, 40, 50 on P3), ratios 0.5, 1, 2, base anchors rounded; what its
    /// checkpoints were trained with.
    pub fn retinanet_torchvision() -> Self {
        let strides = vec![8, 16, 32, 64, 128];
        let sizes = [32.0f32, 64.0, 128.0, 256.0, 512.0]
            .iter()
            .map(|&x| {
                vec![
                    x,
                    (x * 2f32.powf(1.0 / 3.0)).trunc(),
                    (x * 2f32.powf(2.0 / 3.0)).trunc(),
                ]
            })
            .collect();
        Self {
            strides,
            sizes,
            ratios: vec![0.5, 1.0, 2.0],
            round: true,
        }
    }

    /// The same anchors with every size times `factor` (strides and ratios kept).
    pub fn scaled(mut self, factor: f32) -> Self {
        for level in &mut self.sizes {
            for size in level {
                *size *= factor;
            }
        }
        self
    }

    /// Checks that every level has a stride and at least one size, with the same count of sizes.
    pub fn validate(&self) -> Result<()> {
        let per_level = self.sizes.first().map_or(0, Vec::len);
        if self.strides.is_empty()
            || self.strides.len() != self.sizes.len()
            || per_level == 0
            || self.sizes.iter().any(|s| s.len() != per_level)
            || self.ratios.is_empty()
        {
            return Err(TrainError::Config(format!(
                "anchors need one stride and the same number of sizes per level and at least \
                 one ratio; got strides {:?}, sizes {:?}, ratios {:?}",
                self.strides, self.sizes, self.ratios
            )));
        }
        Ok(())
    }

    /// Anchors per position (the same on every level).
    pub fn per_position(&self) -> usize {
        self.ratios.len() * self.sizes.first().map_or(0, Vec::len)
    }

    /// The anchors of level `level` centred on `(0, 0)`, ratios in turn, sizes within a ratio.
    pub fn base_anchors(&self, level: usize) -> Vec<Xyxy> {
        let Some(sizes) = self.sizes.get(level) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(self.per_position());
        for &ratio in &self.ratios {
            let h_ratio = ratio.sqrt();
            let w_ratio = 1.0 / h_ratio;
            for &size in sizes {
                let (w, h) = (w_ratio * size, h_ratio * size);
                let b = [-w / 2.0, -h / 2.0, w / 2.0, h / 2.0];
                out.push(if self.round { b.map(f32::round) } else { b });
            }
        }
        out
    }

    /// The anchors of level `level` on an `height × width` feature map.
    pub fn level_anchors(&self, level: usize, height: usize, width: usize) -> Vec<Xyxy> {
        let base = self.base_anchors(level);
        let stride = self.strides.get(level).copied().unwrap_or(0) as f32;
        let mut out = Vec::with_capacity(height * width * base.len());
        for y in 0..height {
            for x in 0..width {
                let (sx, sy) = (x as f32 * stride, y as f32 * stride);
                out.extend(
                    base.iter()
                        .map(|b| [b[0] + sx, b[1] + sy, b[2] + sx, b[3] + sy]),
                );
            }
        }
        out
    }

    /// The anchors of all levels, for feature maps of these `(height, width)`s (one per level),
    /// concatenated in level order.
    pub fn anchors(&self, feature_sizes: &[(usize, usize)]) -> Result<Vec<Xyxy>> {
        self.validate()?;
        if feature_sizes.len() != self.strides.len() {
            return Err(TrainError::Config(format!(
                "anchors for {} levels were asked for {} feature maps",
                self.strides.len(),
                feature_sizes.len()
            )));
        }
        let mut out = Vec::new();
        for (level, &(h, w)) in feature_sizes.iter().enumerate() {
            out.extend(self.level_anchors(level, h, w));
        }
        Ok(out)
    }

    /// The feature-map sizes of each level for an input of `height × width`, as a ResNet-FPN
    /// makes them (each stride-2 convolution rounds up: `⌈n / stride⌉`).
    pub fn feature_sizes(&self, height: usize, width: usize) -> Vec<(usize, usize)> {
        self.strides
            .iter()
            .map(|&s| (height.div_ceil(s), width.div_ceil(s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Xyxy, b: &Xyxy, tol: f32) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn torchvision_base_anchors_by_hand() {
        // torchvision: h_ratios = √r, w_ratios = 1/√r, ws = w_ratios·size, base = round([−ws, −hs,
        // ws, hs] / 2). Ratio 0.5, size 32: ws = 45.25, hs = 22.63 → [−23, −11, 23, 11].
        let g = AnchorGenerator::retinanet_torchvision();
        assert_eq!(g.sizes[0], vec![32.0, 40.0, 50.0]);
        assert_eq!(g.sizes[4], vec![512.0, 645.0, 812.0]);
        let base = g.base_anchors(0);
        assert_eq!(base.len(), 9);
        assert_eq!(base[0], [-23.0, -11.0, 23.0, 11.0]);
        // Ratio 1: sizes 32, 40, 50.
        assert_eq!(base[3], [-16.0, -16.0, 16.0, 16.0]);
        assert_eq!(base[4], [-20.0, -20.0, 20.0, 20.0]);
        assert_eq!(base[5], [-25.0, -25.0, 25.0, 25.0]);
        // Ratio 2, size 50: ws = 35.36, hs = 70.71 → [−18, −35, 18, 35].
        assert_eq!(base[8], [-18.0, -35.0, 18.0, 35.0]);
    }

    #[test]
    fn mmdet_base_anchors_by_hand() {
        // mmdet: base size = stride 8, scales 4·2^{k/3}; ratio 1, k = 1: 32·2^{1/3} = 40.3175.
        let g = AnchorGenerator::retinanet();
        let base = g.base_anchors(0);
        let s = 32.0 * 2f32.powf(1.0 / 3.0) / 2.0;
        assert!(close(&base[4], &[-s, -s, s, s], 1e-4), "{:?}", base[4]);
        // P7 (stride 128), ratio 0.5, k = 0: 512·√2 wide, 512/√2 high.
        let b = g.base_anchors(4)[0];
        assert!((b[2] - b[0] - 512.0 * 2f32.sqrt()).abs() < 1e-2, "{b:?}");
        assert!((b[3] - b[1] - 512.0 / 2f32.sqrt()).abs() < 1e-2, "{b:?}");
    }

    #[test]
    fn grids_shift_by_the_stride_row_by_row() {
        let g = AnchorGenerator::retinanet_torchvision();
        // A 64×64 input: P3–P7 maps of 8, 4, 2, 1, 1 → (64 + 16 + 4 + 1 + 1)·9 = 774 anchors.
        let sizes = g.feature_sizes(64, 64);
        assert_eq!(sizes, vec![(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]);
        let all = g.anchors(&sizes).unwrap_or_default();
        assert_eq!(all.len(), 774);
        // Level 0, position (y 0, x 1): the base anchors moved 8 to the right.
        assert_eq!(all[9 + 3], [-8.0, -16.0, 24.0, 16.0]);
        // Position (y 1, x 0) comes after the 8 positions of row 0.
        assert_eq!(all[8 * 9 + 3], [-16.0, -8.0, 16.0, 24.0]);
        // Level 1 starts after 64 positions; its ratio-1 size-64 anchor at (0, 0).
        assert_eq!(all[64 * 9 + 3], [-32.0, -32.0, 32.0, 32.0]);
        // Odd sizes round up, as a stride-2 convolution with padding does.
        assert_eq!(g.feature_sizes(100, 36)[0], (13, 5));
    }

    #[test]
    fn inconsistent_generators_are_refused() {
        let mut g = AnchorGenerator::retinanet();
        assert!(g.anchors(&[(1, 1)]).is_err());
        g.sizes[2].pop();
        let err = g
            .anchors(&g.feature_sizes(64, 64))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("same number of sizes")));
    }
}
