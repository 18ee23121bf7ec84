//! DINOv3's 2D rotary position embedding (docs/formats.md §2.2).
//!
//! Per head of width d: d/4 frequencies `1 / base^(4i/d)`; patch centres normalised per axis to
//! (-1, 1); the angle vector is `[θy, θx, θy, θx]` (each d/4 wide) and is applied in the
//! rotate-half layout (dim j pairs with j + d/2). CLS and register tokens are not rotated.
//! The training-time coordinate augmentation (shift/jitter/rescale) is never applied here.

use std::collections::HashMap;
use std::f32::consts::PI;
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor, D};

/// cos/sin tables of shape `[prefix + Hp·Wp, head_dim]`, with cos = 1 and sin = 0 on the prefix
/// rows so that one fused multiply-add leaves CLS and registers exactly unchanged.
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// The cosines, `[prefix + Hp·Wp, head_dim]`.
    pub cos: Tensor,
    /// The sines, laid out as `cos`.
    pub sin: Tensor,
}

/// Computes the tables once per (grid, prefix, dtype, device) and keeps them.
#[derive(Debug)]
pub struct Rope {
    head_dim: usize,
    /// `1 / base^(4i/d)`, computed in f32 as transformers does.
    inv_freq: Vec<f32>,
    cache: Mutex<HashMap<TableKey, RopeTables>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TableKey {
    grid: (usize, usize),
    prefix: usize,
    dtype: DType,
    device: String,
}

impl Rope {
    /// RoPE for heads `head_dim` wide with periods `base^(4i/head_dim)`.
    pub fn new(head_dim: usize, base: f64) -> Self {
        let base = base as f32;
        let inv_freq = (0..head_dim / 4)
            .map(|i| 1.0 / base.powf(4.0 * i as f32 / head_dim as f32))
            .collect();
        Self {
            head_dim,
            inv_freq,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The tables for a `grid_h` x `grid_w` patch grid behind `prefix` unrotated tokens.
    pub fn tables(
        &self,
        grid_h: usize,
        grid_w: usize,
        prefix: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<RopeTables> {
        let key = TableKey {
            grid: (grid_h, grid_w),
            prefix,
            dtype,
            device: format!("{:?}", device.location()),
        };
        if let Some(t) = self.cache.lock().expect("rope cache poisoned").get(&key) {
            return Ok(t.clone());
        }
        let (cos, sin) = self.angles_cos_sin(grid_h, grid_w, prefix);
        let rows = prefix + grid_h * grid_w;
        let tables = RopeTables {
            cos: Tensor::from_vec(cos, (rows, self.head_dim), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (rows, self.head_dim), device)?.to_dtype(dtype)?,
        };
        self.cache
            .lock()
            .expect("rope cache poisoned")
            .insert(key, tables.clone());
        Ok(tables)
    }

    /// Row-major over the grid (y outer, x inner), f32 throughout.
    fn angles_cos_sin(&self, grid_h: usize, grid_w: usize, prefix: usize) -> (Vec<f32>, Vec<f32>) {
        let d = self.head_dim;
        let q = d / 4;
        let rows = prefix + grid_h * grid_w;
        let mut cos = vec![0f32; rows * d];
        let mut sin = vec![0f32; rows * d];
        cos[..prefix * d].fill(1.0);
        // Same operation order as transformers: ((r + 0.5) / n) * 2 - 1, then 2π·c·f.
        let centre = |i: usize, n: usize| 2.0 * ((i as f32 + 0.5) / n as f32) - 1.0;
        for r in 0..grid_h {
            let y = centre(r, grid_h);
            for c in 0..grid_w {
                let x = centre(c, grid_w);
                let row = (prefix + r * grid_w + c) * d;
                for (i, f) in self.inv_freq.iter().enumerate() {
                    let ay = 2.0 * PI * y * f;
                    let ax = 2.0 * PI * x * f;
                    for (offset, angle) in [(i, ay), (q + i, ax), (2 * q + i, ay), (3 * q + i, ax)]
                    {
                        cos[row + offset] = angle.cos();
                        sin[row + offset] = angle.sin();
                    }
                }
            }
        }
        (cos, sin)
    }
}

/// `concat(-x[d/2..], x[..d/2])` on the last dim.
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let first = x.narrow(D::Minus1, 0, d / 2)?;
    let second = x.narrow(D::Minus1, d / 2, d / 2)?;
    Tensor::cat(&[&second.neg()?, &first], D::Minus1)
}

/// Rotates `[batch, heads, tokens, head_dim]` queries or keys: `x·cos + rotate_half(x)·sin`.
pub fn apply_rope(x: &Tensor, tables: &RopeTables) -> Result<Tensor> {
    x.broadcast_mul(&tables.cos)?
        .add(&rotate_half(x)?.broadcast_mul(&tables.sin)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_follow_the_documented_layout() {
        let rope = Rope::new(16, 100.0);
        let t = rope.tables(2, 3, 5, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.cos.dims(), &[5 + 6, 16]);
        let cos = t.cos.to_vec2::<f32>().unwrap();
        let sin = t.sin.to_vec2::<f32>().unwrap();
        assert!(cos[..5].iter().flatten().all(|&v| v == 1.0));
        assert!(sin[..5].iter().flatten().all(|&v| v == 0.0));
        // Patch (r=1, c=0) of a 2x3 grid: y = 0.5, x = -2/3. Periods 100^(i/4) for d = 16.
        let row = &sin[5 + 3];
        for i in 0..4 {
            let period = 100f64.powf(i as f64 / 4.0);
            let ay = 2.0 * std::f64::consts::PI * 0.5 / period;
            let ax = 2.0 * std::f64::consts::PI * (-2.0 / 3.0) / period;
            for (j, a) in [(i, ay), (4 + i, ax), (8 + i, ay), (12 + i, ax)] {
                assert!((row[j] as f64 - a.sin()).abs() < 1e-6, "dim {j}");
            }
        }
        // Cached: the same tensor storage comes back.
        let again = rope.tables(2, 3, 5, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(again.cos.id(), t.cos.id());
    }

    #[test]
    fn rotation_preserves_pairs_norm_and_leaves_prefix_alone() {
        let rope = Rope::new(8, 100.0);
        let t = rope.tables(2, 2, 1, DType::F32, &Device::Cpu).unwrap();
        let x = Tensor::arange(0f32, 40., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 5, 8))
            .unwrap();
        let y = apply_rope(&x, &t).unwrap();
        let xv = x.squeeze(0).unwrap().to_vec3::<f32>().unwrap().remove(0);
        let yv = y.squeeze(0).unwrap().to_vec3::<f32>().unwrap().remove(0);
        assert_eq!(xv[0], yv[0]);
        for tok in 1..5 {
            for j in 0..4 {
                let n_in = xv[tok][j].powi(2) + xv[tok][j + 4].powi(2);
                let n_out = yv[tok][j].powi(2) + yv[tok][j + 4].powi(2);
                assert!((n_in - n_out).abs() < 1e-3 * n_in.max(1.0));
            }
        }
    }
}
