//! CLIP vision tower (HF `CLIPVisionTransformer` + `visual_projection`), inference only.
//!
//! Beyond the plain forward it runs at any patch grid (the positional table is resampled per grid,
//! bicubic like HF/open_clip or bilinear like AnomalyCLIP, and cached), returns the raw output of
//! requested blocks and their joint-space projection, and optionally applies AnomalyCLIP's V-V
//! dual-path attention from a chosen block on (docs/formats.md §3).

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{bail, DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::config::ClipVisionConfig;
use super::encoder::{ClipEncoderLayer, ClipLayerConfig};
use crate::nn::{Grad, LayerNorm, Linear};

/// How the trained positional grid is resampled to another patch grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PosInterp {
    /// torch bicubic (a = -0.75), align_corners=False: HF `interpolate_pos_encoding`, open_clip.
    #[default]
    Bicubic,
    /// torch bilinear, align_corners=False: AnomalyCLIP.
    Bilinear,
}

impl std::str::FromStr for PosInterp {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bicubic" => Ok(Self::Bicubic),
            "bilinear" => Ok(Self::Bilinear),
            other => Err(format!(
                "unknown positional interpolation `{other}` (bicubic|bilinear)"
            )),
        }
    }
}

/// What a vision forward should produce besides the image embedding.
#[derive(Debug, Clone, Default)]
pub struct VisionOptions {
    /// 1-based block numbers whose output to return (HF `hidden_states[i]`).
    pub layers: Vec<usize>,
    /// First block (1-based) that runs AnomalyCLIP's dual-path V-V attention; `None` disables it.
    pub dpam_from: Option<usize>,
    /// How the positional table is resampled for a grid other than the trained one.
    pub pos_interp: PosInterp,
}

/// What a vision forward returns.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// Per requested block, its raw output `[batch, tokens, width]` (CLS first, then patches
    /// row-major). Blocks at or after `dpam_from` give the V-V path's state.
    pub hidden: Vec<Tensor>,
    /// Per requested block, `proj(ln_post(token))` of every token: `[batch, tokens, embed]`.
    pub patch: Vec<Tensor>,
    /// `proj(ln_post(CLS))` of the last block's (original-path) state: `[batch, embed]`.
    pub image_embed: Tensor,
    /// The last block's CLS before `ln_post` (`[batch, width]`); AnomalyCLIP's global feature is
    /// `project(cls_raw)` without `ln_post`.
    pub cls_raw: Tensor,
    /// Patch grid `(rows, cols)` the image was run at.
    pub grid: (usize, usize),
}

/// The requested blocks of a tower stopped after the deepest of them
/// ([`ClipVisionTransformer::forward_layers`]); the fields are those of [`VisionOutput`].
#[derive(Debug, Clone)]
pub struct VisionLayers {
    /// Per requested block, its raw output (see [`VisionOutput::hidden`]).
    pub hidden: Vec<Tensor>,
    /// Per requested block, the projected tokens (see [`VisionOutput::patch`]).
    pub patch: Vec<Tensor>,
    /// Patch grid `(rows, cols)` the image was run at.
    pub grid: (usize, usize),
}

/// What running the blocks leaves: the requested states, the original path's last state and
/// the grid.
struct BlockRun {
    collected: HashMap<usize, Tensor>,
    state: Tensor,
    grid: (usize, usize),
}

#[derive(Debug)]
struct VisionEmbeddings {
    class_embedding: Tensor,
    /// Patch conv weight flattened to a `[width, channels·p·p]` Linear (no bias): patches are cut
    /// by a reshape, which equals a stride-p convolution and runs as one matmul.
    patch_embedding: Linear,
    position_embedding: Tensor,
    patch_size: usize,
    channels: usize,
    native_grid: usize,
    cache: Mutex<HashMap<(usize, usize, PosInterp), Tensor>>,
}

impl VisionEmbeddings {
    fn load(vb: VarBuilder, cfg: &ClipVisionConfig) -> Result<Self> {
        let (w, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let conv = vb.get((w, c, p, p), "patch_embedding.weight")?;
        Ok(Self {
            class_embedding: vb.get(w, "class_embedding")?,
            patch_embedding: Linear::new(conv.reshape((w, c * p * p))?, None),
            position_embedding: vb.get((cfg.num_positions(), w), "position_embedding.weight")?,
            patch_size: p,
            channels: c,
            native_grid: cfg.grid_size(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The positional table for a `rows × cols` grid, CLS row first.
    fn positions(&self, rows: usize, cols: usize, interp: PosInterp) -> Result<Tensor> {
        let g = self.native_grid;
        if rows == g && cols == g {
            return Ok(self.position_embedding.clone());
        }
        let key = (rows, cols, interp);
        if let Some(t) = self.cache.lock().expect("cache lock").get(&key) {
            return Ok(t.clone());
        }
        let dtype = self.position_embedding.dtype();
        let width = self.position_embedding.dim(1)?;
        let table = self.position_embedding.to_dtype(DType::F32)?;
        let cls = table.narrow(0, 0, 1)?;
        let grid = table.narrow(0, 1, g * g)?; // [g·g, width], row-major (y outer)
        let dev = table.device();
        let wy = Tensor::from_vec(resample_matrix(g, rows, interp), (rows, g), dev)?;
        let wx = Tensor::from_vec(resample_matrix(g, cols, interp), (cols, g), dev)?;
        // Separable: rows first ([rows, g·width]), then columns per output row.
        let by_rows = wy
            .matmul(&grid.reshape((g, g * width))?)?
            .reshape((rows, g, width))?;
        let resampled = wx
            .unsqueeze(0)?
            .broadcast_as((rows, cols, g))?
            .contiguous()?
            .matmul(&by_rows)?
            .reshape((rows * cols, width))?;
        let out = Tensor::cat(&[&cls, &resampled], 0)?.to_dtype(dtype)?;
        self.cache
            .lock()
            .expect("cache lock")
            .insert(key, out.clone());
        Ok(out)
    }

    fn forward(&self, pixels: &Tensor, interp: PosInterp) -> Result<(Tensor, (usize, usize))> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.patch_size;
        if c != self.channels {
            bail!(
                "CLIP vision input has {c} channels, the model expects {}",
                self.channels
            );
        }
        if !h.is_multiple_of(p) || !w.is_multiple_of(p) || h == 0 || w == 0 {
            bail!("CLIP vision input is {h}x{w}; height and width must be positive multiples of the patch size {p}");
        }
        let (rows, cols) = (h / p, w / p);
        let dtype = self.class_embedding.dtype();
        // [B, C, rows, p, cols, p] → [B, rows, cols, C, p, p]: same flattening as the conv weight.
        // On the weights' device, as DINOv3 takes them: callers may hand over CPU pixels.
        let patches = pixels
            .to_device(self.class_embedding.device())?
            .to_dtype(dtype)?
            .reshape((b, c, rows, p, cols, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, rows * cols, c * p * p))?;
        let patches = self.patch_embedding.forward(&patches)?;
        let width = self.class_embedding.dim(0)?;
        let cls = self
            .class_embedding
            .reshape((1, 1, width))?
            .broadcast_as((b, 1, width))?;
        let tokens = Tensor::cat(&[&cls.contiguous()?, &patches], 1)?;
        let pos = self.positions(rows, cols, interp)?;
        Ok((tokens.broadcast_add(&pos)?, (rows, cols)))
    }
}

/// `[out, in]` row-major weights of torch's 1-D resampling with align_corners=False.
pub fn resample_matrix(input: usize, output: usize, interp: PosInterp) -> Vec<f32> {
    let mut m = vec![0f32; input * output];
    let scale = input as f64 / output as f64;
    let last = input as i64 - 1;
    for o in 0..output {
        let row = &mut m[o * input..(o + 1) * input];
        match interp {
            PosInterp::Bilinear => {
                // torch clamps the source coordinate at 0 for linear modes.
                let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (src.floor() as i64).min(last);
                let i1 = (i0 + 1).min(last);
                let t = (src - i0 as f64) as f32;
                row[i0 as usize] += 1.0 - t;
                row[i1 as usize] += t;
            }
            PosInterp::Bicubic => {
                // torch computes the source index in the output's float type (f32 here).
                let src = (scale as f32) * (o as f32 + 0.5) - 0.5;
                let i = src.floor();
                let t = src - i;
                let a = -0.75f32;
                let near = |x: f32| ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
                let far = |x: f32| ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
                let coeffs = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
                for (k, w) in coeffs.iter().enumerate() {
                    let idx = (i as i64 - 1 + k as i64).clamp(0, last) as usize;
                    row[idx] += w;
                }
            }
        }
    }
    m
}

/// The CLIP vision tower with its projection into the joint space.
#[derive(Debug)]
pub struct ClipVisionTransformer {
    embeddings: VisionEmbeddings,
    pre_layrnorm: LayerNorm,
    layers: Vec<ClipEncoderLayer>,
    post_layernorm: LayerNorm,
    /// `None` for checkpoints without a projection (HF `CLIPVisionModel`): the joint space is then
    /// the post-LN width.
    visual_projection: Option<Linear>,
    config: ClipVisionConfig,
}

impl ClipVisionTransformer {
    /// `vb` at the checkpoint root (HF names: `vision_model.…`, `visual_projection.weight`).
    pub fn load(
        vb: VarBuilder,
        cfg: &ClipVisionConfig,
        projection_dim: Option<usize>,
    ) -> Result<Self> {
        let vm = vb.pp("vision_model");
        let w = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let layer_cfg = ClipLayerConfig::from(cfg);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(&layer_cfg, vm.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let visual_projection = match projection_dim {
            Some(e) => Some(Linear::load(vb.pp("visual_projection"), w, e, false)?),
            None => None,
        };
        Ok(Self {
            embeddings: VisionEmbeddings::load(vm.pp("embeddings"), cfg)?,
            pre_layrnorm: LayerNorm::load(vm.pp("pre_layrnorm"), w, eps)?,
            layers,
            post_layernorm: LayerNorm::load(vm.pp("post_layernorm"), w, eps)?,
            visual_projection,
            config: cfg.clone(),
        })
    }

    /// The tower's hyper-parameters.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// Whether the checkpoint has a visual projection (HF `CLIPVisionModel` files have none).
    pub fn has_projection(&self) -> bool {
        self.visual_projection.is_some()
    }

    /// Width of the joint space (the projection's output, or the tower width without one).
    pub fn embed_dim(&self) -> usize {
        match &self.visual_projection {
            Some(p) => p.weight().dims()[0],
            None => self.config.hidden_size,
        }
    }

    /// Applies the projection alone (identity without one) to `[..., width]`.
    pub fn project(&self, x: &Tensor) -> Result<Tensor> {
        match &self.visual_projection {
            Some(p) => p.forward(x),
            None => Ok(x.clone()),
        }
    }

    /// `ln_post(x)` on every token of `[..., width]`.
    pub fn post_layernorm(&self, x: &Tensor) -> Result<Tensor> {
        self.post_layernorm
            .forward_with(&x.contiguous()?, Grad::Frozen)
    }

    /// `proj(ln_post(x))` on every token of `[..., width]`.
    pub fn project_tokens(&self, x: &Tensor) -> Result<Tensor> {
        self.project(&self.post_layernorm(x)?)
    }

    /// `pixels`: `[batch, 3, H, W]` f32, normalised, H and W multiples of the patch size.
    /// Runs every block: the image embedding reads the last one.
    pub fn forward(&self, pixels: &Tensor, opts: &VisionOptions) -> Result<VisionOutput> {
        let depth = self.layers.len();
        let mut run = self.run_blocks(pixels, opts, depth)?;
        let cls_raw = run.state.narrow(1, 0, 1)?.squeeze(1)?;
        let image_embed = self.project(
            &self
                .post_layernorm
                .forward_with(&cls_raw.contiguous()?, Grad::Frozen)?,
        )?;
        let (hidden, patch) = self.layer_outputs(&mut run, &opts.layers)?;
        Ok(VisionOutput {
            hidden,
            patch,
            image_embed,
            cls_raw,
            grid: run.grid,
        })
    }

    /// The requested blocks alone, the tower stopped after the last of them: no image
    /// embedding, and the blocks past the deepest requested one never run (a scorer that reads
    /// patch tokens of early blocks only skips the rest of the tower). The outputs are those of
    /// [`Self::forward`], bit for bit: both run the same blocks in the same order.
    pub fn forward_layers(&self, pixels: &Tensor, opts: &VisionOptions) -> Result<VisionLayers> {
        let through = opts.layers.iter().copied().max().unwrap_or(0);
        let mut run = self.run_blocks(pixels, opts, through)?;
        let (hidden, patch) = self.layer_outputs(&mut run, &opts.layers)?;
        Ok(VisionLayers {
            hidden,
            patch,
            grid: run.grid,
        })
    }

    /// Embeds `pixels` and runs blocks `1..=through`, keeping the states of `opts.layers`.
    fn run_blocks(
        &self,
        pixels: &Tensor,
        opts: &VisionOptions,
        through: usize,
    ) -> Result<BlockRun> {
        let depth = self.layers.len();
        for &l in &opts.layers {
            if l == 0 || l > depth {
                bail!("requested vision block {l}; this model has blocks 1..={depth}");
            }
        }
        if let Some(from) = opts.dpam_from {
            if from == 0 || from > depth {
                bail!("dpam_from = {from}; this model has blocks 1..={depth}");
            }
        }
        let (x, grid) = self.embeddings.forward(pixels, opts.pos_interp)?;
        let mut x = self.pre_layrnorm.forward_with(&x, Grad::Frozen)?;
        // The V-V path starts from the state entering block `dpam_from`.
        let mut x_vv: Option<Tensor> = None;
        let mut collected: HashMap<usize, Tensor> = HashMap::new();
        for (i, layer) in self.layers.iter().take(through).enumerate() {
            let block = i + 1;
            match opts.dpam_from {
                Some(from) if block >= from => {
                    let vv_in = x_vv.take().unwrap_or_else(|| x.clone());
                    let (vv, ori) = layer.forward_dual(&vv_in, &x)?;
                    x = ori;
                    x_vv = Some(vv);
                }
                _ => x = layer.forward(&x, None, Grad::Frozen)?,
            }
            if opts.layers.contains(&block) {
                let state = x_vv.as_ref().unwrap_or(&x);
                collected.insert(block, state.clone());
            }
        }
        Ok(BlockRun {
            collected,
            state: x,
            grid,
        })
    }

    /// Per requested block, its raw state and `proj(ln_post(..))` of every token.
    fn layer_outputs(
        &self,
        run: &mut BlockRun,
        layers: &[usize],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut hidden = Vec::with_capacity(layers.len());
        let mut patch = Vec::with_capacity(layers.len());
        for l in layers {
            let h = run.collected[l].clone();
            patch.push(self.project_tokens(&h)?);
            hidden.push(h);
        }
        Ok((hidden, patch))
    }

    /// Multiply-add work of one image through [`Self::forward`] (`global`) or
    /// [`Self::forward_layers`] at a `grid` of patches, in FLOPs (two per multiply-add): the
    /// patch embedding, the projections and MLPs of every block that runs, attention's two
    /// products, AnomalyCLIP's second attention on dual-path blocks, and the projection of the
    /// requested blocks' tokens. Norms, softmax and activations are left out, as FLOP counters
    /// (PyTorch's, fvcore's) leave them out.
    pub fn flops(&self, grid: (usize, usize), opts: &VisionOptions, global: bool) -> f64 {
        let cfg = &self.config;
        let (d, h) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
        let patches = (grid.0 * grid.1) as f64;
        let n = patches + 1.0;
        let embed_dim = self.embed_dim() as f64;
        let depth = self.layers.len();
        let through = if global {
            depth
        } else {
            opts.layers.iter().copied().max().unwrap_or(0).min(depth)
        };
        let pixels_per_patch = (cfg.num_channels * cfg.patch_size * cfg.patch_size) as f64;
        let mut flops = 2.0 * patches * pixels_per_patch * d;
        for block in 1..=through {
            flops += 2.0 * n * (4.0 * d * d + 2.0 * d * h) + 4.0 * n * n * d;
            if opts.dpam_from.is_some_and(|from| block >= from) {
                flops += 2.0 * n * d * d + 4.0 * n * n * d;
            }
        }
        if self.has_projection() {
            flops += opts.layers.len() as f64 * 2.0 * n * d * embed_dim;
            if global {
                flops += 2.0 * d * embed_dim;
            }
        }
        flops
    }

    /// Only the image embedding (`[batch, embed]`), at the native or any other grid.
    pub fn image_embeds(&self, pixels: &Tensor, pos_interp: PosInterp) -> Result<Tensor> {
        let opts = VisionOptions {
            pos_interp,
            ..Default::default()
        };
        Ok(self.forward(pixels, &opts)?.image_embed)
    }
}

/// L2-normalises along the last dimension.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resample_rows_sum_to_one_and_identity_at_same_size() {
        for interp in [PosInterp::Bicubic, PosInterp::Bilinear] {
            for (i, o) in [(4, 7), (7, 4), (24, 37), (5, 5)] {
                let m = resample_matrix(i, o, interp);
                for r in 0..o {
                    let s: f32 = m[r * i..(r + 1) * i].iter().sum();
                    assert!((s - 1.0).abs() < 1e-6, "{interp:?} {i}->{o} row {r}: {s}");
                }
            }
            let id = resample_matrix(5, 5, interp);
            for r in 0..5 {
                for c in 0..5 {
                    assert_eq!(id[r * 5 + c], if r == c { 1.0 } else { 0.0 });
                }
            }
        }
    }
}
