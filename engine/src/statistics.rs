//! What the training embeddings looked like, and which tiles of a slide do not look like them.
//!
//! A model exported with statistics (format 1.1) carries, per embedding dimension, the mean
//! and 1 / standard deviation over the training tiles, and a distance range: the 0.1th and
//! 99.9th percentiles over the training tiles of a tile's *distance*, the mean over dimensions
//! of its squared z-score, `(1/D) sum_i ((x_i - mean_i) * scale_i)^2`. A session counts the
//! tiles outside that range: too far from the training tiles (another encoder, values scaled
//! by mistake, an absurd value), or too close to the mean (washed-out embeddings, as from a
//! faded stain: in many dimensions, typical tiles are never near the mean). A slide from the
//! training distribution has about 0.2 % of them; above [`UNTRUSTED_FRACTION`] of the slide,
//! its scores should not be trusted.

use crate::error::{Error, Result};

/// Share of a slide's tiles beyond the distance limit above which its scores should not be
/// trusted: the embeddings do not look like the training data (another encoder, dimension
/// order, magnification, stain, or scale).
pub const UNTRUSTED_FRACTION: f32 = 0.1;

/// Share of the training tiles left outside the distance range at each end.
pub const RANGE_TAIL: f64 = 0.001;

/// Statistics of the training embeddings, as stored in a `.mscl` file.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingStatistics {
    /// Mean of each dimension.
    pub mean: Vec<f32>,
    /// 1 / standard deviation of each dimension (dimensions that never vary get 1).
    pub scale: Vec<f32>,
    /// The [`RANGE_TAIL`] and `1 - RANGE_TAIL` quantiles of the training tiles' distances.
    pub distance_range: [f32; 2],
}

/// The statistics of a loaded model, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatisticsView<'a> {
    /// Mean of each dimension.
    pub mean: &'a [f32],
    /// 1 / standard deviation of each dimension.
    pub scale: &'a [f32],
    /// Distances outside which a tile is out of distribution.
    pub distance_range: [f32; 2],
}

impl EmbeddingStatistics {
    /// Computes the statistics of `slides` training slides of `dim`-dimensional embeddings,
    /// reading each slide twice through `slide(i)` (`n x dim` row-major values): once for the
    /// moments (f64 sums), once for the distances, whose [`RANGE_TAIL`] and `1 - RANGE_TAIL`
    /// quantiles become the range. Errors from `slide` are passed on.
    pub fn fit<E: From<Error>>(
        dim: usize,
        slides: usize,
        mut slide: impl FnMut(usize) -> std::result::Result<Vec<f32>, E>,
    ) -> std::result::Result<Self, E> {
        if dim == 0 {
            return Err(Error::invalid_argument("embedding statistics of dimension 0").into());
        }
        let (mut sum, mut sum_sq, mut tiles) = (vec![0.0f64; dim], vec![0.0f64; dim], 0u64);
        for i in 0..slides {
            let x = slide(i)?;
            if !x.len().is_multiple_of(dim) {
                return Err(Error::EmbeddingLength { len: x.len(), dim }.into());
            }
            for tile in x.chunks_exact(dim) {
                for ((s, q), v) in sum.iter_mut().zip(&mut sum_sq).zip(tile) {
                    *s += *v as f64;
                    *q += *v as f64 * *v as f64;
                }
            }
            tiles += (x.len() / dim) as u64;
        }
        if tiles < 2 {
            return Err(Error::invalid_argument(
                "embedding statistics need at least two training tiles",
            )
            .into());
        }
        let n = tiles as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let scale: Vec<f32> = sum
            .iter()
            .zip(&sum_sq)
            .map(|(s, q)| {
                let var = ((q - s * s / n) / (n - 1.0)).max(0.0);
                let inv = 1.0 / var.sqrt();
                if inv.is_finite() && inv < f32::MAX as f64 {
                    inv as f32
                } else {
                    1.0 // a dimension that never varies
                }
            })
            .collect();
        let mut distances = Vec::with_capacity(tiles as usize);
        for i in 0..slides {
            let x = slide(i)?;
            distances.extend(x.chunks_exact(dim).map(|t| distance(&mean, &scale, t)));
        }
        distances.sort_unstable_by(f32::total_cmp);
        let quantile = |q: f64| distances[((distances.len() - 1) as f64 * q).round() as usize];
        Ok(EmbeddingStatistics {
            mean,
            scale,
            distance_range: [quantile(RANGE_TAIL), quantile(1.0 - RANGE_TAIL)],
        })
    }

    /// Checks the shapes and values a file requires: `dim` values each, finite, scales
    /// positive, `0 <= low <= high`.
    pub fn validate(&self, dim: usize) -> Result<()> {
        if self.mean.len() != dim || self.scale.len() != dim {
            return Err(Error::invalid_argument(format!(
                "embedding statistics have {} means and {} scales for {dim} dimensions",
                self.mean.len(),
                self.scale.len()
            )));
        }
        let finite = self.mean.iter().all(|v| v.is_finite());
        let [low, high] = self.distance_range;
        let positive = self.scale.iter().all(|v| v.is_finite() && *v > 0.0)
            && high.is_finite()
            && 0.0 <= low
            && low <= high;
        if !(finite && positive) {
            return Err(Error::invalid_argument(
                "embedding statistics must be finite, with positive scales and 0 <= low <= high",
            ));
        }
        Ok(())
    }

    /// Borrowed view, as a loaded model gives it.
    pub fn view(&self) -> StatisticsView<'_> {
        StatisticsView {
            mean: &self.mean,
            scale: &self.scale,
            distance_range: self.distance_range,
        }
    }
}

impl StatisticsView<'_> {
    /// Whether `tile` lies outside the distance range.
    pub fn is_outside(&self, tile: &[f32]) -> bool {
        let d = distance(self.mean, self.scale, tile);
        !(self.distance_range[0] <= d && d <= self.distance_range[1])
    }

    /// Number of the `n` tiles of `x` (row `t` at `t * stride`) outside the range.
    pub fn count_outside(&self, x: &[f32], n: usize, stride: usize) -> usize {
        let d = self.mean.len();
        (0..n)
            .filter(|t| self.is_outside(&x[t * stride..t * stride + d]))
            .count()
    }
}

/// A tile's distance: the mean over dimensions of its squared z-score, in f32 with 16
/// partial sums in a fixed order (vectorisable; the same bits on every CPU). Infinite when a
/// value is so large that its square overflows.
pub fn distance(mean: &[f32], scale: &[f32], tile: &[f32]) -> f32 {
    const LANES: usize = 16;
    let d = mean.len();
    let mut lanes = [0.0f32; LANES];
    let whole = d / LANES * LANES;
    for ((m, s), x) in mean[..whole]
        .chunks_exact(LANES)
        .zip(scale[..whole].chunks_exact(LANES))
        .zip(tile[..whole].chunks_exact(LANES))
    {
        for l in 0..LANES {
            let z = (x[l] - m[l]) * s[l];
            lanes[l] += z * z;
        }
    }
    for i in whole..d {
        let z = (tile[i] - mean[i]) * scale[i];
        lanes[i - whole] += z * z;
    }
    lanes.iter().sum::<f32>() / d as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_is_the_mean_squared_z_score() {
        // By hand: z = ((1 - 0) * 1, (4 - 2) * 0.5, (0 - 3) * 2) = (1, 1, -6); mean of squares 38/3.
        let d = distance(&[0.0, 2.0, 3.0], &[1.0, 0.5, 2.0], &[1.0, 4.0, 0.0]);
        assert!((d - 38.0 / 3.0).abs() < 1e-6, "{d}");
        // 20 dimensions: the tail after 16 lanes counts too.
        let d = distance(&[0.0; 20], &[1.0; 20], &[2.0; 20]);
        assert_eq!(d, 4.0);
        assert_eq!(distance(&[0.0], &[1.0], &[1e30]), f32::INFINITY);
    }

    #[test]
    fn fit_gives_moments_and_the_percentile_limit() {
        // Two dimensions; the first alternates 1, 3 (mean 2, sample std sqrt(4/3) over 4
        // tiles), the second is constant (scale 1).
        let tiles = [1.0f32, 5.0, 3.0, 5.0, 1.0, 5.0, 3.0, 5.0];
        let s = EmbeddingStatistics::fit::<Error>(2, 2, |i| Ok(tiles[i * 4..i * 4 + 4].to_vec()))
            .unwrap();
        assert_eq!(s.mean, vec![2.0, 5.0]);
        assert!((s.scale[0] as f64 - (3.0f64 / 4.0).sqrt()).abs() < 1e-6);
        assert_eq!(s.scale[1], 1.0);
        // Every tile has z = (+-1 * sqrt(3/4), 0): distance 3/8.
        assert!((s.distance_range[0] - 0.375).abs() < 1e-6);
        assert!((s.distance_range[1] - 0.375).abs() < 1e-6);
        s.validate(2).unwrap();
        assert!(s.validate(3).is_err());
    }
}
