//! Row-wise helpers: activations, the attention and tile-classifier heads, and the f64
//! accumulation of the slide embedding.
//!
//! These run once per tile over `H` or `K` values (the matrix products run over `D x H`), so
//! they are written for accuracy first: reductions accumulate in f64.

/// `x = max(x, 0)` for every element.
#[inline]
pub fn relu_in_place(row: &mut [f32]) {
    for v in row {
        *v = v.max(0.0);
    }
}

/// Logistic function in f64, stable for any finite input.
#[inline]
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[inline]
fn sigmoid_f32(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Attention logit from the attention pre-activations of one tile:
/// `bias + sum_k w[k] * tanh(a[k]) * sigmoid(gate[k])` (gated) or without the sigmoid factor
/// (plain, `gate = None`). `a` and `gate` already include their biases.
#[inline]
pub fn attention_logit(a: &[f32], gate: Option<&[f32]>, w: &[f32], bias: f32) -> f64 {
    let mut sum = bias as f64;
    match gate {
        Some(gate) => {
            for ((a, g), w) in a.iter().zip(gate).zip(w) {
                sum += (a.tanh() * sigmoid_f32(*g)) as f64 * *w as f64;
            }
        }
        None => {
            for (a, w) in a.iter().zip(w) {
                sum += a.tanh() as f64 * *w as f64;
            }
        }
    }
    sum
}

/// Dot product accumulated in f64, plus a bias.
#[inline]
pub fn dot_f64(x: &[f32], w: &[f32], bias: f64) -> f64 {
    let mut lanes = [0.0f64; 4];
    let (xc, xr) = x.as_chunks::<4>();
    let (wc, wr) = w.as_chunks::<4>();
    for (x4, w4) in xc.iter().zip(wc) {
        for l in 0..4 {
            lanes[l] += x4[l] as f64 * w4[l] as f64;
        }
    }
    let mut tail = 0.0;
    for (x, w) in xr.iter().zip(wr) {
        tail += *x as f64 * *w as f64;
    }
    bias + ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + tail
}

/// `acc += weight * h` with `acc` in f64.
#[inline]
pub fn axpy_f64(acc: &mut [f64], weight: f64, h: &[f32]) {
    for (a, v) in acc.iter_mut().zip(h) {
        *a += weight * *v as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_is_stable_at_extremes() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(1e4) == 1.0 && sigmoid(-1e4) == 0.0);
        assert!((sigmoid(2.0) - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-15);
    }

    #[test]
    fn dot_handles_tails() {
        let x: Vec<f32> = (1..=7).map(|v| v as f32).collect();
        let w = vec![2.0f32; 7];
        assert_eq!(dot_f64(&x, &w, 1.0), 1.0 + 2.0 * 28.0);
    }

    #[test]
    fn attention_logit_plain_and_gated() {
        let a = [0.5f32, -1.0];
        let g = [0.0f32, 2.0];
        let w = [1.0f32, 2.0];
        let plain = attention_logit(&a, None, &w, 0.25);
        let want_plain = 0.25 + (0.5f64).tanh() + 2.0 * (-1.0f64).tanh();
        assert!((plain - want_plain).abs() < 1e-6);
        let gated = attention_logit(&a, Some(&g), &w, 0.0);
        let want_gated = (0.5f64).tanh() * 0.5 + 2.0 * (-1.0f64).tanh() * sigmoid(2.0);
        assert!((gated - want_gated).abs() < 1e-6);
    }
}
