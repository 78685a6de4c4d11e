//! What the training embeddings looked like, and which tiles of a slide do not look like them.
//!
//! A model exported with statistics (format 1.1) describes its training tiles' embeddings `x`
//! by a probabilistic PCA of their standardized values `z_i = (x_i - m_i) s_i` (mean `m`,
//! scale `s = 1 / standard deviation`): the top principal directions `v_c` of `z` with their
//! variances `l_c`, and the variance `r` left in the other directions. A tile's *distance* is
//! its Mahalanobis distance under that model, per dimension:
//! `(1/D) (sum_c p_c^2 / l_c + (|z|^2 - sum_c p_c^2) / r)` with `p_c = v_c . z`. It sees tiles
//! whose dimensions moved or changed scale (another stain, scanner or magnification, values
//! scaled by mistake, absurd values) and tiles whose dimensions keep their spread but not their
//! correlations (another encoder). A session counts the tiles whose distance falls outside the
//! range of the training tiles' distances (its 0.1th to 99.9th percentiles; too close to the
//! mean is also unusual in many dimensions: washed-out embeddings). A slide like the training
//! data has about 0.2 % of them; above [`UNTRUSTED_FRACTION`] of the slide, its scores should
//! not be trusted.

use crate::error::{Error, Result};
use crate::kernels::Isa;

/// Share of a slide's tiles beyond the distance limit above which its scores should not be
/// trusted: the embeddings do not look like the training data (another encoder, dimension
/// order, magnification, stain, or scale).
pub const UNTRUSTED_FRACTION: f32 = 0.1;

/// Share of the training tiles left outside the distance range at each end.
pub const RANGE_TAIL: f64 = 0.001;

/// Principal directions stored (when `D <= 16`, the last ones are zero and count for nothing):
/// one 16-lane vector per embedding dimension, so that a tile's projections accumulate in
/// registers without reductions.
pub const COMPONENTS: usize = 16;

/// Training tiles sampled (evenly) for the principal directions.
pub const SAMPLED_TILES: usize = 16_384;

/// Number of principal directions fitted for `dim`-dimensional embeddings.
#[cfg(feature = "fit")]
fn fitted_components(dim: usize) -> usize {
    COMPONENTS.min(dim.saturating_sub(1))
}

/// Statistics of the training embeddings, as stored in a `.mscl` file.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingStatistics {
    /// Mean of each dimension, `D`.
    pub mean: Vec<f32>,
    /// 1 / standard deviation of each dimension (dimensions that never vary get 1), `D`.
    pub scale: Vec<f32>,
    /// The principal directions in the embeddings' own space, `D x 16` (dimension-major):
    /// row `i` holds `v_c[i] * s[i]` for the 16 directions `c`, so that `p_c = sum_i x_i
    /// row_i[c] - offset_c`.
    pub components: Vec<f32>,
    /// 17 rows of `(offset, weight)`: per direction `offset_c = (v_c * s) . m` and
    /// `weight_c = 1 / l_c`, then `(0, 1 / r)` for the rest.
    pub component_terms: Vec<f32>,
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
    /// Principal directions in the embeddings' space, `D x 16`.
    pub components: &'a [f32],
    /// 17 rows of `(offset, weight)`.
    pub component_terms: &'a [f32],
    /// Distances outside which a tile is out of distribution.
    pub distance_range: [f32; 2],
}

impl EmbeddingStatistics {
    /// Computes the statistics of `slides` training slides of `dim`-dimensional embeddings,
    /// reading each slide three times through `slide(i)` (`n x dim` row-major values): for the
    /// moments (f64 sums), for the principal directions (an eigendecomposition of the
    /// correlation matrix of up to [`SAMPLED_TILES`] evenly sampled tiles), and for the
    /// distances, whose [`RANGE_TAIL`] and `1 - RANGE_TAIL` quantiles become the range. Errors
    /// from `slide` are passed on.
    #[cfg(feature = "fit")]
    pub fn fit<E: From<Error>>(
        dim: usize,
        slides: usize,
        mut slide: impl FnMut(usize) -> std::result::Result<Vec<f32>, E>,
    ) -> std::result::Result<Self, E> {
        if dim == 0 {
            return Err(Error::invalid_argument("embedding statistics of dimension 0").into());
        }
        let (mut sum, mut sum_sq, mut tiles) = (vec![0.0f64; dim], vec![0.0f64; dim], 0usize);
        for i in 0..slides {
            let x = slide(i)?;
            if !x.len().is_multiple_of(dim) {
                return Err(Error::EmbeddingLength { len: x.len(), dim }.into());
            }
            if x.iter().any(|v| !v.is_finite()) {
                return Err(Error::invalid_argument(format!(
                    "training slide {i} has a non-finite embedding value"
                ))
                .into());
            }
            for tile in x.chunks_exact(dim) {
                for ((s, q), v) in sum.iter_mut().zip(&mut sum_sq).zip(tile) {
                    *s += *v as f64;
                    *q += *v as f64 * *v as f64;
                }
            }
            tiles += x.len() / dim;
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

        // Principal directions of the standardized embeddings of evenly sampled tiles.
        let step = tiles.div_ceil(SAMPLED_TILES);
        let mut sampled: Vec<f32> = Vec::with_capacity(tiles.div_ceil(step) * dim);
        let mut t = 0usize;
        for i in 0..slides {
            for tile in slide(i)?.chunks_exact(dim) {
                if t.is_multiple_of(step) {
                    sampled.extend(
                        tile.iter()
                            .zip(&mean)
                            .zip(&scale)
                            .map(|((x, m), s)| (x - m) * s),
                    );
                }
                t += 1;
            }
        }
        let rows = sampled.len() / dim;
        let z = ndarray::ArrayView2::from_shape((rows, dim), &sampled)
            .map_err(|e| Error::invalid_argument(e.to_string()))?;
        let gram = z.t().dot(&z);
        let denominator = (rows.max(2) - 1) as f64;
        let correlation =
            nalgebra::DMatrix::from_fn(dim, dim, |r, c| gram[[r, c]] as f64 / denominator);
        let trace = correlation.trace();
        if !correlation.iter().all(|v| v.is_finite()) {
            return Err(Error::invalid_argument(
                "the training embeddings' correlation matrix is not finite",
            )
            .into());
        }
        // An iteration limit: nalgebra's default loops forever on some degenerate matrices.
        let eigen = nalgebra::SymmetricEigen::try_new(correlation, f64::EPSILON, 100 * dim)
            .ok_or_else(|| {
                Error::invalid_argument(
                    "the eigendecomposition of the training embeddings did not converge",
                )
            })?;
        let mut order: Vec<usize> = (0..dim).collect();
        order.sort_by(|a, b| eigen.eigenvalues[*b].total_cmp(&eigen.eigenvalues[*a]));
        let k = fitted_components(dim);
        let floor = 1e-6 * (trace / dim as f64).max(f64::MIN_POSITIVE);
        let kept: f64 = order[..k]
            .iter()
            .map(|&c| eigen.eigenvalues[c].max(floor))
            .sum();
        let rest = ((trace - kept) / (dim - k) as f64).max(floor);
        let mut components = vec![0.0f32; dim * COMPONENTS];
        let mut component_terms = Vec::with_capacity(2 * (COMPONENTS + 1));
        for (slot, &c) in order[..k].iter().enumerate() {
            let v = eigen.eigenvectors.column(c);
            let mut offset = 0.0f64;
            for i in 0..dim {
                let u = (v[i] * scale[i] as f64) as f32;
                components[i * COMPONENTS + slot] = u;
                offset += u as f64 * mean[i] as f64;
            }
            component_terms.extend([
                offset as f32,
                (1.0 / eigen.eigenvalues[c].max(floor)) as f32,
            ]);
        }
        // Unused directions (D <= 16): zero, so their projections are zero.
        for _ in k..COMPONENTS {
            component_terms.extend([0.0, 1.0]);
        }
        component_terms.extend([0.0, (1.0 / rest) as f32]);

        let mut statistics = EmbeddingStatistics {
            mean,
            scale,
            components,
            component_terms,
            distance_range: [0.0, f32::MAX],
        };
        let mut distances = Vec::with_capacity(tiles);
        for i in 0..slides {
            let view = statistics.view();
            distances.extend(slide(i)?.chunks_exact(dim).map(|t| view.distance(t)));
        }
        if distances.len() != tiles {
            return Err(Error::invalid_argument(
                "the training slides changed between the passes over them",
            )
            .into());
        }
        distances.sort_unstable_by(f32::total_cmp);
        let quantile = |q: f64| distances[((distances.len() - 1) as f64 * q).round() as usize];
        statistics.distance_range = [quantile(RANGE_TAIL), quantile(1.0 - RANGE_TAIL)];
        Ok(statistics)
    }

    /// Checks the shapes and values a file requires: `D` means and scales, `D x 16`
    /// components and 17 term rows, all finite, scales and weights positive,
    /// `0 <= low <= high`.
    pub fn validate(&self, dim: usize) -> Result<()> {
        if self.mean.len() != dim
            || self.scale.len() != dim
            || self.components.len() != COMPONENTS * dim
            || self.component_terms.len() != 2 * (COMPONENTS + 1)
        {
            return Err(Error::invalid_argument(format!(
                "embedding statistics of the wrong shape for {dim} dimensions"
            )));
        }
        let finite = self
            .mean
            .iter()
            .chain(&self.components)
            .chain(&self.component_terms)
            .all(|v| v.is_finite());
        let weights_positive = self.component_terms.chunks_exact(2).all(|t| t[1] > 0.0);
        let [low, high] = self.distance_range;
        let positive = self.scale.iter().all(|v| v.is_finite() && *v > 0.0)
            && weights_positive
            && high.is_finite()
            && 0.0 <= low
            && low <= high;
        if !(finite && positive) {
            return Err(Error::invalid_argument(
                "embedding statistics must be finite, with positive scales and weights and \
                 0 <= low <= high",
            ));
        }
        Ok(())
    }

    /// Borrowed view, as a loaded model gives it.
    pub fn view(&self) -> StatisticsView<'_> {
        StatisticsView {
            mean: &self.mean,
            scale: &self.scale,
            components: &self.components,
            component_terms: &self.component_terms,
            distance_range: self.distance_range,
        }
    }
}

/// Tiles per block of [`count_of`]: their projections stay in registers while the directions
/// stream by once.
const BLOCK: usize = 8;

/// `sum_i ((x_i - m_i) s_i)^2` in 16 partial sums, then a fixed order.
#[inline(always)]
fn squared_z(x: &[f32], m: &[f32], s: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (cx, tx) = x.as_chunks::<16>();
    let (cm, tm) = m[..x.len()].as_chunks::<16>();
    let (cs, ts) = s[..x.len()].as_chunks::<16>();
    for ((x, m), s) in cx.iter().zip(cm).zip(cs) {
        for l in 0..16 {
            let z = (x[l] - m[l]) * s[l];
            lanes[l] += z * z;
        }
    }
    for l in 0..tx.len() {
        let z = (tx[l] - tm[l]) * ts[l];
        lanes[l] += z * z;
    }
    lanes.iter().sum()
}

/// The tiles outside the range. Per block of [`BLOCK`] tiles, each tile's 16 projections
/// accumulate in one 16-lane array (a register) as the dimension-major directions stream by:
/// per dimension, one vector of directions times each tile's value. Plain loops: iterator
/// adapters would be generic functions of their own, compiled without the caller's target
/// features.
///
/// `FUSED`: fused multiply-adds (the AVX2 and AVX-512 builds; the portable one would call
/// libm's `fmaf`).
#[inline(always)]
fn count_of<const FUSED: bool>(
    v: &StatisticsView<'_>,
    x: &[f32],
    n: usize,
    stride: usize,
) -> usize {
    let d = v.mean.len();
    let rows = &v.components[..d * COMPONENTS];
    let terms = &v.component_terms[..2 * (COMPONENTS + 1)];
    let mut outside = 0;
    let mut t0 = 0;
    while t0 < n {
        let b = BLOCK.min(n - t0);
        let mut p = [[0.0f32; COMPONENTS]; BLOCK];
        for i in 0..d {
            let row: &[f32; COMPONENTS] = rows[i * COMPONENTS..(i + 1) * COMPONENTS]
                .try_into()
                .expect("16 directions per dimension");
            for t in 0..b {
                let xi = x[(t0 + t) * stride + i];
                for c in 0..COMPONENTS {
                    p[t][c] = if FUSED {
                        xi.mul_add(row[c], p[t][c])
                    } else {
                        p[t][c] + xi * row[c]
                    };
                }
            }
        }
        for (t, p) in p.iter().enumerate().take(b) {
            let (mut explained, mut weighted) = (0.0f32, 0.0f32);
            for c in 0..COMPONENTS {
                let q = p[c] - terms[2 * c];
                explained += q * q;
                weighted += q * q * terms[2 * c + 1];
            }
            let tile = &x[(t0 + t) * stride..(t0 + t) * stride + d];
            let total = squared_z(tile, v.mean, v.scale);
            let rest = (total - explained).max(0.0);
            let dist = (weighted + rest * terms[2 * COMPONENTS + 1]) / d as f32;
            outside += usize::from(!(v.distance_range[0] <= dist && dist <= v.distance_range[1]));
        }
        t0 += b;
    }
    outside
}

/// [`count_of`] compiled for AVX-512F.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn count_avx512(v: &StatisticsView<'_>, x: &[f32], n: usize, stride: usize) -> usize {
    count_of::<true>(v, x, n, stride)
}

/// [`count_of`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn count_avx2(v: &StatisticsView<'_>, x: &[f32], n: usize, stride: usize) -> usize {
    count_of::<true>(v, x, n, stride)
}

impl StatisticsView<'_> {
    /// A tile's distance (see the module documentation); infinite when a value is so large
    /// that a square overflows.
    pub fn distance(&self, tile: &[f32]) -> f32 {
        let d = self.mean.len();
        let x = &tile[..d];
        let terms = self.component_terms;
        let (mut explained, mut weighted) = (0.0f32, 0.0f32);
        for c in 0..COMPONENTS {
            let mut p = 0.0f32;
            for (i, xi) in x.iter().enumerate() {
                p += xi * self.components[i * COMPONENTS + c];
            }
            let q = p - terms[2 * c];
            explained += q * q;
            weighted += q * q * terms[2 * c + 1];
        }
        let rest = (squared_z(x, self.mean, self.scale) - explained).max(0.0);
        (weighted + rest * terms[2 * COMPONENTS + 1]) / d as f32
    }

    /// Whether `tile` lies outside the distance range.
    pub fn is_outside(&self, tile: &[f32]) -> bool {
        count_of::<false>(self, tile, 1, tile.len()) == 1
    }

    /// Number of the `n` tiles of `x` (row `t` at `t * stride`) outside the range, with the
    /// best instruction set of this CPU.
    pub fn count_outside(&self, x: &[f32], n: usize, stride: usize) -> usize {
        self.count_outside_with(Isa::detect(), x, n, stride)
    }

    /// [`Self::count_outside`] compiled for `isa` (a session's; the portable code if this CPU
    /// lacks it). The sums run in another order on each instruction set: a tile within
    /// rounding of the range's ends may count on one CPU and not on another.
    pub fn count_outside_with(&self, isa: Isa, x: &[f32], n: usize, stride: usize) -> usize {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = is_x86_feature_detected!("fma") && is_x86_feature_detected!("avx2");
            if isa.vector() == Isa::Avx512 && fma && is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F, AVX2 and FMA were detected on this CPU just above.
                return unsafe { count_avx512(self, x, n, stride) };
            }
            if isa != Isa::Portable && fma && is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 and FMA were detected on this CPU just above.
                return unsafe { count_avx2(self, x, n, stride) };
            }
        }
        let _ = isa;
        count_of::<false>(self, x, n, stride)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Statistics whose directions are `dirs` (`(dimension, direction, value)`), with
    /// `weights` for the directions and `rest` for the remainder.
    fn with_directions(
        mean: &[f32],
        scale: &[f32],
        dirs: &[(usize, usize, f32)],
        weights: &[f32],
        rest: f32,
    ) -> EmbeddingStatistics {
        let d = mean.len();
        let mut components = vec![0.0; d * COMPONENTS];
        for &(i, c, v) in dirs {
            components[i * COMPONENTS + c] = v;
        }
        let mut component_terms: Vec<f32> = (0..COMPONENTS)
            .flat_map(|c| [0.0, weights.get(c).copied().unwrap_or(1.0)])
            .collect();
        component_terms.extend([0.0, rest]);
        EmbeddingStatistics {
            mean: mean.to_vec(),
            scale: scale.to_vec(),
            components,
            component_terms,
            distance_range: [0.0, 1.0],
        }
    }

    #[test]
    fn distance_is_the_mean_squared_z_score_without_directions() {
        // By hand: z = ((1 - 0) * 1, (4 - 2) * 0.5, (0 - 3) * 2) = (1, 1, -6); mean of squares 38/3.
        let s = with_directions(&[0.0, 2.0, 3.0], &[1.0, 0.5, 2.0], &[], &[], 1.0);
        let d = s.view().distance(&[1.0, 4.0, 0.0]);
        assert!((d - 38.0 / 3.0).abs() < 1e-5, "{d}");
        // 20 dimensions: the tail after 16 lanes counts too.
        let s = with_directions(&[0.0; 20], &[1.0; 20], &[], &[], 1.0);
        assert_eq!(s.view().distance(&[2.0; 20]), 4.0);
        let s = with_directions(&[0.0; 2], &[1.0; 2], &[], &[], 1.0);
        assert_eq!(s.view().distance(&[1e30, 0.0]), f32::INFINITY);
    }

    #[test]
    fn a_direction_weighs_its_projection_by_its_variance() {
        // Two dimensions, direction 0 = (1, 0) with variance 4, the rest variance 0.25: for
        // x = (2, 1), p = 2: (2^2 / 4 + (5 - 4) / 0.25) / 2 = 2.5 (by hand).
        let s = with_directions(&[0.0, 0.0], &[1.0, 1.0], &[(0, 0, 1.0)], &[0.25], 4.0);
        s.validate(2).unwrap();
        assert_eq!(s.view().distance(&[2.0, 1.0]), 2.5);
        assert!(s.view().is_outside(&[2.0, 1.0]));
        assert!(!s.view().is_outside(&[1.0, 0.0]));
        // Every instruction set counts the same here (values far from the range's ends).
        let tiles = [2.0f32, 1.0, 1.0, 0.0, 0.5, 0.5, 3.0, 0.0];
        for isa in [Isa::Portable, Isa::Avx2Fma, Isa::Avx512] {
            assert_eq!(s.view().count_outside_with(isa, &tiles, 4, 2), 2, "{isa:?}");
        }
        assert!(s.validate(3).is_err());
    }

    #[cfg(feature = "fit")]
    #[test]
    fn fit_finds_the_correlated_direction() {
        // Tiles on the line x1 = x0 (plus a little noise): one direction explains nearly all
        // of it, so a tile off the line is far and tiles on it are near.
        let tiles: Vec<f32> = (0..400)
            .flat_map(|t| {
                let a = (t as f32 * 0.37).sin();
                [
                    a,
                    a + 0.01 * (t as f32 * 1.7).cos(),
                    0.5 * (t as f32 * 0.11).cos(),
                ]
            })
            .collect();
        let s = EmbeddingStatistics::fit::<Error>(3, 1, |_| Ok(tiles.clone())).unwrap();
        s.validate(3).unwrap();
        let v = s.view();
        assert!(v.distance(&[0.5, 0.5, 0.0]) < v.distance_range[1]);
        assert!(
            v.is_outside(&[0.5, -0.5, 0.0]),
            "off the line: {}",
            v.distance(&[0.5, -0.5, 0.0])
        );
        // About 0.2 % of the training tiles are outside their own range.
        let outside = v.count_outside(&tiles, 400, 3);
        assert!(outside <= 2, "{outside}");
    }
}
