//! Deterministic random weights for any model that loads through a `VarBuilder`.
//!
//! Used for the `tiny` backbone preset (the whole pipeline runs in tests and demos with no files)
//! and for benchmarking real architectures (ViT-L) without their checkpoints. Values depend only
//! on the seed and the tensor's full name, never on load order, so a model built twice, or a
//! model whose modules are loaded in another order, gets the same weights.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// A `VarBuilder` whose every tensor is drawn from a seeded generator.
///
/// Initialisation by name (the checkpoints' conventions, so activations stay in a sane range
/// through deep stacks): one-dimensional `weight`s (norms) and LayerScale gammas/lambdas are
/// drawn around 1 and 0.1 respectively; biases, embeddings and tokens with a small spread; every
/// matrix with standard deviation `1/sqrt(fan_in)` so that activations keep their scale.
pub fn seeded_var_builder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    let backend: Box<dyn SimpleBackend> = Box::new(SeededWeights { seed });
    VarBuilder::from_backend(backend, dtype, device.clone())
}

struct SeededWeights {
    seed: u64,
}

/// SplitMix64 ([`ssvp_util::rng`]: fully specified, so values are identical on every platform)
/// with the mappings of the seeded weights.
struct SplitMix64(ssvp_util::rng::SplitMix64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in (0, 1].
    fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Standard normal by Box-Muller.
    fn next_normal(&mut self) -> f64 {
        let (u1, u2) = (self.next_unit(), self.next_unit());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

impl SeededWeights {
    fn values(&self, shape: &Shape, name: &str) -> Vec<f32> {
        let mut rng = SplitMix64(ssvp_util::rng::SplitMix64::new(
            self.seed ^ ssvp_util::rng::fnv1a(name.as_bytes()),
        ));
        let dims = shape.dims();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        let (mean, std) = if dims.len() <= 1 {
            match leaf {
                "weight" => (1.0, 0.05),
                "gamma" | "lambda1" => (0.1, 0.02),
                _ => (0.0, 0.02),
            }
        } else if name.contains("embed") || name.contains("token") || leaf == "class_embedding" {
            (0.0, 0.02)
        } else {
            // Linear [out, in] and conv [out, in, kh, kw]: fan-in is everything but dim 0.
            let fan_in: usize = dims[1..].iter().product();
            (0.0, 1.0 / (fan_in.max(1) as f64).sqrt())
        };
        (0..shape.elem_count())
            .map(|_| (mean + std * rng.next_normal()) as f32)
            .collect()
    }
}

impl SimpleBackend for SeededWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let values = self.values(&shape, name);
        Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "seeded weights need a shape for `{name}`"
        )))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_depend_on_seed_and_name_only() {
        let dev = Device::Cpu;
        let a = seeded_var_builder(7, DType::F32, &dev);
        let b = seeded_var_builder(7, DType::F32, &dev);
        let c = seeded_var_builder(8, DType::F32, &dev);
        let wa = a.pp("layer.0").get((8, 4), "weight").unwrap();
        // Another tensor fetched first must not change the values of this one.
        let _ = b.get(3, "bias").unwrap();
        let wb = b.pp("layer.0").get((8, 4), "weight").unwrap();
        let wc = c.pp("layer.0").get((8, 4), "weight").unwrap();
        let diff = |x: &Tensor, y: &Tensor| {
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(diff(&wa, &wb), 0.0);
        assert!(diff(&wa, &wc) > 0.01);
        // Matrices keep activations at scale: std close to 1/sqrt(fan_in) = 0.5.
        let big = a.get((256, 4), "proj.weight").unwrap();
        let std = big
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!((std - 0.5).abs() < 0.05, "std {std}");
        // Norm weights sit around one.
        let norm = a.get(1024, "norm.weight").unwrap();
        let mean = norm.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
    }
}
