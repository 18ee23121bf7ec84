//! `ssvp embed`: backbone features of one image (and optional prompts) into a safetensors file.
//! The work is `ssvp_features::embed`'s; this file maps the arguments and prints.

use std::path::PathBuf;

use ssvp_backbones::clip::PosInterp;
use ssvp_features::embed::{EmbedRequest, EmbedTower, Resize};

const EMBED_HELP: &str = "\
Written tensors (all f32 except text_ids; one image, batch dimension dropped).
--backbone clip (tokens = 1 CLS + rows*cols patches, row-major):
  hidden.<block>  [tokens, width]      raw output of block <block> (1-based, as HF
                                       hidden_states[block]); the V-V state for blocks >=
                                       --dpam-from; after ln_post with --norm-layers
  patch.<block>   [tokens, embed_dim]  proj(ln_post(token)) of every token of that block
  image_embed     [embed_dim]          proj(ln_post(CLS)) of the last block
  text_embed      [n, embed_dim]       with --text: projected EOT features of the prompts
  text_ids        [n, 77] (i64)        with --text: their token ids
--backbone dinov3 / dinov2 (tokens = 1 CLS + registers + rows*cols patches, row-major; DINOv3
has 4 registers, DINOv2 none or 4):
  hidden.<block>  [tokens, width]      output of block <block> (1-based, as HF
                                       hidden_states[block]); final-normed with --norm-layers
  cls             [width]              final-normed CLS of the last block
  patch           [patches, width]     final-normed patch tokens of the last block
The file's metadata records the backbone, weights, input size, patch grid and options.

Examples (AnomalyCLIP's setting; then AnomalyDINO's DINOv2 ViT-S/14 at 448 px):
  ssvp embed --backbone clip --weights openai/clip-vit-large-patch14-336 \\
    --image bottle.png --size 518 --layers 6,12,18,24 --dpam-from 6 --pos-interp bilinear \\
    --text \"a photo of a flawless bottle.\" --text \"a photo of a damaged bottle.\" \\
    --out feats.safetensors
  ssvp embed --backbone dinov2 --weights facebook/dinov2-small --image bottle.png \\
    --size 448 --layers 3,6,9,12 --out dino.safetensors";

/// Extract backbone features of one image into a safetensors file (see the list after the
/// options for what is written).
#[derive(clap::Args)]
#[command(after_help = EMBED_HELP)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub device: super::detector_args::DeviceArgs,
    /// Backbone family: clip, dinov3 or dinov2.
    #[arg(long, default_value = "clip")]
    pub backbone: String,
    /// Weights: a checkpoint file, a directory (model.safetensors, open_clip_model.safetensors,
    /// open_clip_pytorch_model.bin, pytorch_model.bin, ...; config.json if present), or a hub
    /// id org/name[@revision] (HF cache; HF_TOKEN, HF_HUB_OFFLINE honoured), e.g.
    /// openai/clip-vit-large-patch14-336, facebook/dinov3-vitl16-pretrain-lvd1689m (gated),
    /// facebook/dinov2-small (ungated); a DINO directory may hold a single Meta .pth instead.
    #[arg(long)]
    pub weights: String,
    /// Input image (PNG, JPEG, BMP, TIFF; gray images are replicated to RGB).
    #[arg(long)]
    pub image: PathBuf,
    /// Square input size in pixels, a multiple of the patch size. Default: 518 for CLIP
    /// (37x37 patches of 14), 592 for DINOv3 (37x37 patches of 16), 448 for DINOv2 (32x32
    /// patches of 14).
    #[arg(long)]
    pub size: Option<usize>,
    /// Input height, for a non-square input (with --width; squash resize only).
    #[arg(long, requires = "width")]
    pub height: Option<usize>,
    /// Input width, for a non-square input (with --height).
    #[arg(long, requires = "height")]
    pub width: Option<usize>,
    /// Blocks to write, 1-based, comma-separated. Default: the quarter points of the depth
    /// (6,12,18,24 for a 24-block model).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
    /// squash: resize straight to the input size, Pillow bicubic (the anomaly-detection
    /// convention; DINOv3 resizes bilinear antialiased, DINOv2 Pillow bicubic); crop: shortest
    /// side to --size, then centre crop (CLIP's original recipe; CLIP only).
    #[arg(long, default_value = "squash", value_parser = ["squash", "crop"])]
    pub resize: String,
    /// First block (1-based) to run AnomalyCLIP's V-V dual-path attention (CLIP only;
    /// AnomalyCLIP uses 6 on ViT-L/14).
    #[arg(long)]
    pub dpam_from: Option<usize>,
    /// Positional-embedding resampling to a non-native grid: bicubic (HF, open_clip) or
    /// bilinear (AnomalyCLIP). CLIP only.
    #[arg(long, default_value = "bicubic")]
    pub pos_interp: PosInterp,
    /// Apply the final LayerNorm (CLIP ln_post, DINOv3/DINOv2 norm as Meta's
    /// get_intermediate_layers(norm=True)) to the written hidden.<block> tensors.
    #[arg(long)]
    pub norm_layers: bool,
    /// DINOv3 only: normalise with the SAT-493M (satellite) mean/std instead of ImageNet's.
    #[arg(long)]
    pub sat: bool,
    /// A prompt to encode with the text tower (repeatable). CLIP only.
    #[arg(long)]
    pub text: Vec<String>,
    /// Architecture preset for checkpoints without config.json whose heads are not 64 wide:
    /// CLIP ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14-336; DINOv3 dinov3_vits16, ...; DINOv2
    /// dinov2_vits14, dinov2_vitl14_reg, ... Default: config.json or inferred.
    #[arg(long)]
    pub preset: Option<String>,
    /// Override the MLP activation: quick_gelu (OpenAI weights) or gelu (open_clip
    /// non-quickgelu). CLIP only.
    #[arg(long)]
    pub activation: Option<String>,
    /// Compute dtype: f32, f16 or bf16 (outputs are always written as f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Output safetensors file (written atomically).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let request = EmbedRequest {
        tower: EmbedTower::parse(&args.backbone)?,
        weights: args.weights.clone(),
        image: args.image.clone(),
        size: match (args.height, args.width, args.size) {
            (Some(h), Some(w), _) => Some((h, w)),
            (_, _, Some(s)) => Some((s, s)),
            _ => None,
        },
        layers: args.layers.clone(),
        resize: if args.resize == "crop" {
            Resize::Crop
        } else {
            Resize::Squash
        },
        dpam_from: args.dpam_from,
        pos_interp: args.pos_interp,
        norm_layers: args.norm_layers,
        sat: args.sat,
        text: args.text.clone(),
        preset: args.preset.clone(),
        activation: args.activation.clone(),
        dtype: args.dtype.clone(),
        device: args.device.open()?,
    };
    let embedding = request.run()?;
    embedding.write(&args.out)?;
    eprintln!(
        "wrote {} ({} blocks, grid {}x{}{})",
        args.out.display(),
        embedding.blocks.len(),
        embedding.grid.0,
        embedding.grid.1,
        if args.text.is_empty() {
            String::new()
        } else {
            format!(", {} prompts", args.text.len())
        }
    );
    Ok(())
}
