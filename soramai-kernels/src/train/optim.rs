//! AdamW with decoupled weight decay, global-norm gradient clipping, and the learning-rate
//! schedule (linear warmup, then constant, linear or cosine decay).

use serde::{Deserialize, Serialize};

/// How the learning rate moves after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Stays at the peak.
    Constant,
    /// Falls linearly to zero at the last step.
    #[default]
    Linear,
    /// Follows half a cosine down to zero at the last step.
    Cosine,
}

/// The learning rate of step `step` (from 0) of `total`.
pub fn learning_rate(peak: f32, step: usize, total: usize, warmup: usize, schedule: Schedule) -> f32 {
    if step < warmup {
        return peak * (step + 1) as f32 / warmup as f32;
    }
    let span = total.saturating_sub(warmup).max(1) as f32;
    let done = ((step - warmup) as f32 / span).clamp(0.0, 1.0);
    match schedule {
        Schedule::Constant => peak,
        Schedule::Linear => peak * (1.0 - done),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f32::consts::PI * done).cos()),
    }
}

/// AdamW's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator guard.
    pub eps: f32,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// A trained tensor with its gradient and AdamW moments.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// Values.
    pub value: Vec<f32>,
    /// Accumulated gradient.
    pub grad: Vec<f32>,
    /// First moment.
    pub m: Vec<f32>,
    /// Second moment.
    pub v: Vec<f32>,
}

impl Param {
    /// A parameter with zero gradient and moments.
    pub fn new(value: Vec<f32>) -> Self {
        let n = value.len();
        Param { value, grad: vec![0.0; n], m: vec![0.0; n], v: vec![0.0; n] }
    }

    /// One AdamW update (step `t` counts from 1) with the gradient multiplied by `grad_scale`.
    pub fn update(&mut self, opt: &AdamW, lr: f32, t: usize, grad_scale: f32) {
        let b1t = 1.0 - opt.beta1.powi(t as i32);
        let b2t = 1.0 - opt.beta2.powi(t as i32);
        for i in 0..self.value.len() {
            let g = self.grad[i] * grad_scale;
            self.m[i] = opt.beta1 * self.m[i] + (1.0 - opt.beta1) * g;
            self.v[i] = opt.beta2 * self.v[i] + (1.0 - opt.beta2) * g * g;
            let mhat = self.m[i] / b1t;
            let vhat = self.v[i] / b2t;
            self.value[i] -= lr * (mhat / (vhat.sqrt() + opt.eps) + opt.weight_decay * self.value[i]);
        }
        self.grad.fill(0.0);
    }

    /// The squared L2 norm of the gradient (summed in f64).
    pub fn grad_sq(&self) -> f64 {
        self.grad.iter().map(|&g| f64::from(g) * f64::from(g)).sum()
    }
}

/// The factor that brings a gradient of norm `norm` down to `max_norm` (1 when already within).
pub fn clip_factor(norm: f64, max_norm: f32) -> f32 {
    if max_norm > 0.0 && norm > f64::from(max_norm) { (f64::from(max_norm) / (norm + 1e-6)) as f32 } else { 1.0 }
}
