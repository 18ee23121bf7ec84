//! Creation of the head's trainable tensors: every one is a `Var` registered in a `VarMap` under a
//! dotted name, initialised from a seeded generator so that a run is reproducible from
//! `OptimConfig::seed` (candle's CPU RNG cannot be seeded).

use std::cell::RefCell;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use ssvp_backbones::nn::{LayerNorm, Linear};

use crate::error::Result;

/// How one tensor starts.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Every value the same.
    Const(f64),
    /// Drawn from a normal distribution.
    Normal {
        /// Its mean.
        mean: f64,
        /// Its standard deviation.
        std: f64,
    },
    /// Drawn uniformly from `[lo, hi)`.
    Uniform {
        /// The lower bound.
        lo: f64,
        /// The upper bound.
        hi: f64,
    },
}

/// SplitMix64 ([`ssvp_util::rng`]) followed by Box-Muller: tiny, portable and good enough for
/// weight init.
#[derive(Debug)]
struct Rng(ssvp_util::rng::SplitMix64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in the open interval (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit(), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// A `VarMap` plus a name prefix, in the spirit of `VarBuilder::pp`.
#[derive(Clone)]
pub struct ParamBuilder {
    varmap: VarMap,
    prefix: String,
    rng: Rc<RefCell<Rng>>,
    device: Device,
}

impl ParamBuilder {
    /// A builder that creates its tensors in `varmap`, drawing initial values from `seed`.
    pub fn new(varmap: VarMap, seed: u64, device: &Device) -> Self {
        Self {
            varmap,
            prefix: String::new(),
            rng: Rc::new(RefCell::new(Rng(ssvp_util::rng::SplitMix64::new(seed)))),
            device: device.clone(),
        }
    }

    /// The device the tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A builder whose names live under `prefix.name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Creates and registers one trainable tensor; returns its (tracked) tensor.
    pub fn get(&self, shape: &[usize], name: &str, init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let mut rng = self.rng.borrow_mut();
        let values: Vec<f32> = (0..n)
            .map(|_| match init {
                Init::Const(c) => c as f32,
                Init::Normal { mean, std } => (mean + std * rng.normal()) as f32,
                Init::Uniform { lo, hi } => (lo + (hi - lo) * rng.unit()) as f32,
            })
            .collect();
        drop(rng);
        self.insert(name, &Tensor::from_vec(values, shape, &self.device)?)
    }

    /// Registers a trainable tensor with the given initial value.
    fn insert(&self, name: &str, init: &Tensor) -> Result<Tensor> {
        let var = Var::from_tensor(init)?;
        debug_assert_eq!(var.dtype(), DType::F32);
        self.varmap
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .insert(self.full_name(name), var.clone());
        Ok(var.as_tensor().clone())
    }

    /// `Linear(in -> out)` with PyTorch's default init, U(-1/sqrt(in), 1/sqrt(in)) for both
    /// weight and bias.
    pub fn linear(&self, name: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            hi: bound,
        };
        let vb = self.pp(name);
        let weight = vb.get(&[out_dim, in_dim], "weight", init)?;
        let bias = vb.get(&[out_dim], "bias", init)?;
        Ok(Linear::new(weight, Some(bias)))
    }

    /// `Linear(in -> out)` without bias, PyTorch's default weight init.
    pub fn linear_no_bias(&self, name: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let weight = self.pp(name).get(
            &[out_dim, in_dim],
            "weight",
            Init::Uniform {
                lo: -bound,
                hi: bound,
            },
        )?;
        Ok(Linear::new(weight, None))
    }

    /// `Linear(in -> out)` starting at exactly zero (weight and bias).
    pub fn linear_zeros(&self, name: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let vb = self.pp(name);
        let weight = vb.get(&[out_dim, in_dim], "weight", Init::Const(0.0))?;
        let bias = vb.get(&[out_dim], "bias", Init::Const(0.0))?;
        Ok(Linear::new(weight, Some(bias)))
    }

    /// `Linear(dim -> dim)` starting at exactly the identity (unit diagonal, zero bias).
    pub fn linear_identity(&self, name: &str, dim: usize) -> Result<Linear> {
        let vb = self.pp(name);
        let weight = vb.insert("weight", &Tensor::eye(dim, DType::F32, &self.device)?)?;
        let bias = vb.get(&[dim], "bias", Init::Const(0.0))?;
        Ok(Linear::new(weight, Some(bias)))
    }

    /// LayerNorm with unit weight and zero bias.
    pub fn layer_norm(&self, name: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        let vb = self.pp(name);
        let weight = vb.get(&[dim], "weight", Init::Const(1.0))?;
        let bias = vb.get(&[dim], "bias", Init::Const(0.0))?;
        Ok(LayerNorm::new(weight, bias, eps))
    }
}
