//! What the DINO towers share around their blocks: the input checks, the loop that runs blocks
//! `1..=through` and keeps the requested states (raw or final-normed) in request order, the
//! FLOP count, and the tensors `ssvp embed` writes. Each model keeps its own embeddings and
//! blocks (DINOv3 rotates with RoPE, DINOv2 adds resampled position embeddings).

use candle_core::{bail, DType, Result, Tensor};

/// Requested hidden states as `(block, state)`, in request order.
pub type HiddenStates = Vec<(usize, Tensor)>;

/// Checks `pixels` is `[B, channels, H, W]` and every requested block exists; returns `(H, W)`.
pub(crate) fn check_input(
    model: &str,
    pixels: &Tensor,
    channels: usize,
    layers: usize,
    blocks: &[usize],
) -> Result<(usize, usize)> {
    let (_, c, h, w) = pixels.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "{model} expects pixels shaped [batch, channels, height, width], got {:?}",
            pixels.dims()
        ))
    })?;
    if c != channels {
        bail!("{model} expects {channels} input channels, got {c}");
    }
    if let Some(bad) = blocks.iter().find(|&&b| b > layers) {
        bail!("block {bad} requested, but the model has blocks 1..={layers}");
    }
    Ok((h, w))
}

/// Runs `block(i, x)` for blocks `0..through` from the embeddings `x`, keeping the state after
/// each requested 1-based block (0 = the embeddings) through `keep` (the final norm, or a
/// clone). Returns the kept states in request order and the state after block `through`.
pub(crate) fn run_tapped(
    mut x: Tensor,
    blocks: &[usize],
    through: usize,
    mut block: impl FnMut(usize, &Tensor) -> Result<Tensor>,
    keep: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<(HiddenStates, Tensor)> {
    let mut hidden = Vec::with_capacity(blocks.len());
    let keep_at = |index: usize, x: &Tensor, hidden: &mut HiddenStates| -> Result<()> {
        for &b in blocks.iter().filter(|&&b| b == index) {
            hidden.push((b, keep(x)?));
        }
        Ok(())
    };
    keep_at(0, &x, &mut hidden)?;
    for i in 0..through {
        x = block(i, &x)?;
        keep_at(i + 1, &x, &mut hidden)?;
    }
    // Request order, not block order.
    hidden.sort_by_key(|(b, _)| blocks.iter().position(|r| r == b).unwrap_or(usize::MAX));
    Ok((hidden, x))
}

/// The shape of a ViT tower, for its FLOP count.
pub(crate) struct VitShape {
    /// Token width.
    pub width: usize,
    /// MLP hidden width (of each half for a gated MLP).
    pub mlp: usize,
    /// Whether the MLP is gated (three matrices instead of two).
    pub gated: bool,
    /// CLS plus registers.
    pub prefix: usize,
    /// Input channels.
    pub channels: usize,
    /// Patch side in pixels.
    pub patch: usize,
    /// Number of blocks.
    pub depth: usize,
}

impl VitShape {
    /// Multiply-add work of one image at a `grid` of patches through `through` blocks, in FLOPs
    /// (two per multiply-add): the patch embedding, the projections and MLP of each block and
    /// attention's two products over prefix and patch tokens. Norms, position encodings,
    /// softmax and activations are left out, as FLOP counters leave them out.
    pub fn flops(&self, grid: (usize, usize), through: usize) -> f64 {
        let (d, h) = (self.width as f64, self.mlp as f64);
        let patches = (grid.0 * grid.1) as f64;
        let n = patches + self.prefix as f64;
        let mlp_matrices = if self.gated { 3.0 } else { 2.0 };
        let pixels_per_patch = (self.channels * self.patch * self.patch) as f64;
        let block = 2.0 * n * (4.0 * d * d + mlp_matrices * d * h) + 4.0 * n * n * d;
        2.0 * patches * pixels_per_patch * d + through.min(self.depth) as f64 * block
    }
}

/// The tensors `ssvp embed` writes for image `item` of a batch, as f32: `hidden.<block>`
/// `[tokens, width]` (CLS, registers, patches), `cls` `[width]` and `patch` `[patches, width]`.
pub(crate) fn embed_tensors(
    hidden: &HiddenStates,
    cls: &Tensor,
    patch: &Tensor,
    item: usize,
) -> Result<Vec<(String, Tensor)>> {
    let pick = |t: &Tensor| t.get(item)?.to_dtype(DType::F32)?.contiguous();
    let mut out = Vec::with_capacity(hidden.len() + 2);
    for (block, state) in hidden {
        out.push((format!("hidden.{block}"), pick(state)?));
    }
    out.push(("cls".to_string(), pick(cls)?));
    out.push(("patch".to_string(), pick(patch)?));
    Ok(out)
}
