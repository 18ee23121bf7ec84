//! Adam/AdamW with one learning rate per parameter group and a linear-warm-up + cosine schedule
//! (the schedule of `transformers.get_cosine_schedule_with_warmup`, which Bayes-PFL uses).
//!
//! `candle_nn::AdamW` holds one learning rate, so there is one optimiser per group. Its weight
//! decay is decoupled (AdamW); with `weight_decay = 0` it is exactly Adam.

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

use crate::config::OptimConfig;
use crate::error::Result;
use crate::head::{ParamGroup, SsvpHead};

/// Learning-rate multiplier per optimiser step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineSchedule {
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Steps of the whole run.
    pub total_steps: usize,
    /// Without decay the multiplier stays 1 after warm-up.
    pub cosine: bool,
}

impl CosineSchedule {
    /// `warmup_steps = floor(warmup_fraction * total_steps)`.
    pub fn new(cfg: &OptimConfig, total_steps: usize) -> Self {
        Self {
            warmup_steps: (cfg.warmup_fraction * total_steps as f64).floor() as usize,
            total_steps,
            cosine: cfg.cosine_decay,
        }
    }

    /// Multiplier of the base learning rate at 0-based step `step`: `step / warmup` during
    /// warm-up, then `0.5 (1 + cos(π · progress))`, floored at 0.
    pub fn factor(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps.max(1) as f64;
        }
        if !self.cosine {
            return 1.0;
        }
        let progress = (step - self.warmup_steps) as f64
            / (self.total_steps.saturating_sub(self.warmup_steps)).max(1) as f64;
        (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
    }
}

struct GroupOptimizer {
    group: ParamGroup,
    base_lr: f64,
    opt: AdamW,
}

/// The head's optimiser: per-group Adam(W) and the shared schedule.
pub struct SsvpOptimizer {
    groups: Vec<GroupOptimizer>,
    schedule: CosineSchedule,
    step: usize,
}

impl SsvpOptimizer {
    /// Optimises every trainable tensor of `head` for `total_steps` steps.
    pub fn new(head: &SsvpHead, cfg: &OptimConfig, total_steps: usize) -> Result<Self> {
        let groups = [
            (ParamGroup::Prompts, cfg.lr_prompts),
            (ParamGroup::Rest, cfg.lr_rest),
        ]
        .into_iter()
        .map(|(group, base_lr)| {
            let vars = head.group_vars(group).into_iter().map(|(_, v)| v).collect();
            let params = ParamsAdamW {
                lr: base_lr,
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.eps,
                weight_decay: cfg.weight_decay,
            };
            Ok(GroupOptimizer {
                group,
                base_lr,
                opt: AdamW::new(vars, params)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            groups,
            schedule: CosineSchedule::new(cfg, total_steps),
            step: 0,
        })
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> &CosineSchedule {
        &self.schedule
    }

    /// Index of the next step (0 before the first).
    pub fn step_index(&self) -> usize {
        self.step
    }

    /// Moves the schedule (not the Adam moments) to `step`, e.g. when resuming.
    pub fn set_step_index(&mut self, step: usize) {
        self.step = step;
    }

    /// The learning rate each group uses at the next step.
    pub fn learning_rates(&self) -> Vec<(ParamGroup, f64)> {
        let f = self.schedule.factor(self.step);
        self.groups
            .iter()
            .map(|g| (g.group, g.base_lr * f))
            .collect()
    }

    /// One update of every group from precomputed gradients.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        let f = self.schedule.factor(self.step);
        for g in &mut self.groups {
            g.opt.set_learning_rate(g.base_lr * f);
            g.opt.step(grads)?;
        }
        self.step += 1;
        Ok(())
    }

    /// Backpropagates `loss` and applies one update.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }
}
