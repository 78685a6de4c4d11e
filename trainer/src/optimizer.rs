//! Adam as PyTorch implements it, written out so that its state (moments and step) can be
//! checkpointed and restored exactly.

use tch::{nn, Tensor};

use crate::config::TrainConfig;

/// Adam as PyTorch implements it (L2 weight decay added to the gradient, bias-corrected
/// moments), written out so that its state can be checkpointed and restored exactly.
#[derive(Debug)]
pub struct Adam {
    /// Variable names, sorted: the order of `params`, `m` and `v`.
    pub names: Vec<String>,
    params: Vec<Tensor>,
    /// First moments.
    pub m: Vec<Tensor>,
    /// Second moments.
    pub v: Vec<Tensor>,
    /// Steps taken.
    pub step: i64,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl Adam {
    /// Zero moments for every variable of `vs`, with `c`'s learning rate, betas, epsilon and
    /// weight decay.
    pub fn new(vs: &nn::VarStore, c: &TrainConfig) -> Adam {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let m = vars.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = vars.iter().map(|(_, p)| p.zeros_like()).collect();
        Adam {
            names: vars.iter().map(|(n, _)| n.clone()).collect(),
            params: vars.into_iter().map(|(_, p)| p).collect(),
            m,
            v,
            step: 0,
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
        }
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update of every parameter that has a gradient.
    pub fn step(&mut self) {
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2 = 1.0 - self.beta2.powi(t);
        tch::no_grad(|| {
            for ((p, m), v) in self.params.iter_mut().zip(&mut self.m).zip(&mut self.v) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let g = if self.weight_decay != 0.0 {
                    &grad + &*p * self.weight_decay
                } else {
                    grad
                };
                *m = &*m * self.beta1 + &g * (1.0 - self.beta1);
                *v = &*v * self.beta2 + (&g * &g) * (1.0 - self.beta2);
                let denom = v.sqrt() / bias2.sqrt() + self.eps;
                let update = (&*m / denom) * (self.lr / bias1);
                *p -= &update;
            }
        });
    }

    /// Current parameter tensors, in `names` order.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// The parameter tensors, to overwrite in place (restoring weights).
    pub(crate) fn params_mut(&mut self) -> &mut [Tensor] {
        &mut self.params
    }
}
