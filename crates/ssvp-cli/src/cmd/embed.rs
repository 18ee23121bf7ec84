//! `ssvp embed`: backbone features of one image (and optional prompts) into a safetensors file.
//! The work is done by `ssvp_image` (decoding, preprocessing) and `ssvp_backbones` (models); this
//! file only wires arguments to them and writes the result.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Tensor};
use ssvp_backbones::clip::tokenizer::ClipTokenizer;
use ssvp_backbones::clip::{
    Activation, ClipModel, ConfigChoice, LoadOptions, PosInterp, VisionOptions,
};
use ssvp_backbones::dinov3::{self, Dinov3Config, Dinov3Model};
use ssvp_image::Preprocess;

const EMBED_HELP: &str = "\
Written tensors (all f32 except text_ids; one image, batch dimension dropped; tokens = 1 CLS +
rows*cols patches, row-major):
  hidden.<block>  [tokens, width]      raw output of block <block> (1-based, as HF
                                       hidden_states[block]); the V-V state for blocks >=
                                       --dpam-from; after ln_post with --norm-layers
  patch.<block>   [tokens, embed_dim]  proj(ln_post(token)) of every token of that block
  image_embed     [embed_dim]          proj(ln_post(CLS)) of the last block
  text_embed      [n, embed_dim]       with --text: projected EOT features of the prompts
  text_ids        [n, 77] (i64)        with --text: their token ids
The file's metadata records the backbone, weights, input size, patch grid and options.

Example (AnomalyCLIP's setting):
  ssvp embed --backbone clip --weights openai/clip-vit-large-patch14-336 \\
    --image bottle.png --size 518 --layers 6,12,18,24 --dpam-from 6 --pos-interp bilinear \\
    --text \"a photo of a flawless bottle.\" --text \"a photo of a damaged bottle.\" \\
    --out feats.safetensors";

/// Extract backbone features of one image into a safetensors file (see the list after the
/// options for what is written).
#[derive(clap::Args)]
#[command(after_help = EMBED_HELP)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub device: super::detector_args::DeviceArgs,
    /// Backbone family: clip or dinov3.
    #[arg(long, default_value = "clip")]
    pub backbone: String,
    /// Weights: a checkpoint file, a directory (model.safetensors, open_clip_model.safetensors,
    /// open_clip_pytorch_model.bin, pytorch_model.bin, ...; config.json if present), or a hub
    /// id org/name[@revision] (HF cache; HF_TOKEN, HF_HUB_OFFLINE honoured).
    #[arg(long)]
    pub weights: String,
    /// Input image (PNG, JPEG, BMP, TIFF; gray images are replicated to RGB).
    #[arg(long)]
    pub image: PathBuf,
    /// Square input size in pixels, a multiple of the patch size. Default: 518 for CLIP
    /// (37x37 patches of 14), 592 for DINOv3 (37x37 patches of 16).
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
    /// convention); crop: shortest side to --size, then centre crop (CLIP's original recipe).
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
    /// Apply the final LayerNorm (CLIP ln_post, DINOv3 norm as Meta's
    /// get_intermediate_layers(norm=True)) to the written hidden.<block> tensors.
    #[arg(long)]
    pub norm_layers: bool,
    /// DINOv3 only: normalise with the SAT-493M (satellite) mean/std instead of ImageNet's.
    #[arg(long)]
    pub sat: bool,
    /// A prompt to encode with the text tower (repeatable). CLIP only.
    #[arg(long)]
    pub text: Vec<String>,
    /// CLIP architecture preset (ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14-336) for checkpoints
    /// without config.json whose heads are not 64 wide; default: config.json or inferred.
    #[arg(long)]
    pub preset: Option<String>,
    /// Override the MLP activation: quick_gelu (OpenAI weights) or gelu (open_clip non-quickgelu).
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
    match args.backbone.to_ascii_lowercase().as_str() {
        "clip" => run_clip(&args),
        "dinov3" => run_dinov3(&args),
        other => anyhow::bail!("unknown backbone `{other}` (expected clip or dinov3)"),
    }
}

fn parse_dtype(s: &str) -> anyhow::Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => anyhow::bail!("unknown dtype `{other}` (expected f32, f16 or bf16)"),
    }
}

fn run_clip(args: &EmbedArgs) -> anyhow::Result<()> {
    let device = args.device.open()?;
    let opts = LoadOptions {
        config: match &args.preset {
            Some(p) => ConfigChoice::Preset(p.clone()),
            None => ConfigChoice::Auto,
        },
        activation: args
            .activation
            .as_deref()
            .map(Activation::parse)
            .transpose()?,
        dtype: parse_dtype(&args.dtype)?,
        device: device.clone(),
    };
    let model = ClipModel::load(&args.weights, &opts)
        .with_context(|| format!("loading CLIP weights `{}`", args.weights))?;
    let vision = model.vision()?;
    let depth = vision.config().num_hidden_layers;
    let layers = if args.layers.is_empty() {
        let mut q: Vec<usize> = (1..=4).map(|i| (depth * i / 4).max(1)).collect();
        q.dedup();
        q
    } else {
        args.layers.clone()
    };

    let (height, width) = input_size(args, 518);
    let patch = vision.config().patch_size;
    if height % patch != 0 || width % patch != 0 {
        anyhow::bail!(
            "input {height}x{width} is not a multiple of the patch size {patch} (try --size {})",
            (height / patch).max(1) * patch
        );
    }
    let recipe = match args.resize.as_str() {
        "crop" if height != width => {
            anyhow::bail!("--resize crop needs a square input; use --size, not --height/--width")
        }
        "crop" => Preprocess::clip_center_crop(height),
        _ => Preprocess::clip(width).with_size(width, height),
    };
    let img = ssvp_image::load_rgb8(&args.image)
        .with_context(|| format!("reading image {}", args.image.display()))?;
    let chw = recipe.apply(&img)?;
    let pixels = Tensor::from_vec(chw.data, (1, chw.channels, chw.height, chw.width), &device)?;

    let out = vision.forward(
        &pixels,
        &VisionOptions {
            layers: layers.clone(),
            dpam_from: args.dpam_from,
            pos_interp: args.pos_interp,
        },
    )?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (i, block) in layers.iter().enumerate() {
        let hidden = if args.norm_layers {
            vision.post_layernorm(&out.hidden[i])?
        } else {
            out.hidden[i].clone()
        };
        tensors.push((format!("hidden.{block}"), hidden.squeeze(0)?));
        tensors.push((format!("patch.{block}"), out.patch[i].squeeze(0)?));
    }
    tensors.push(("image_embed".into(), out.image_embed.squeeze(0)?));

    if !args.text.is_empty() {
        let text = model.text()?;
        let context = text.config().max_position_embeddings;
        let tokenizer = ClipTokenizer::openai()?;
        let mut rows = Vec::with_capacity(args.text.len() * context);
        for prompt in &args.text {
            rows.extend(tokenizer.tokenize(prompt, context, false)?);
        }
        let ids = Tensor::from_vec(rows, (args.text.len(), context), &device)?;
        tensors.push(("text_embed".into(), text.text_embeds(&ids)?));
        tensors.push(("text_ids".into(), ids.to_dtype(DType::I64)?));
    }

    let metadata = HashMap::from([
        ("backbone".to_string(), "clip".to_string()),
        ("weights".to_string(), model.origin().to_string()),
        ("image".to_string(), args.image.display().to_string()),
        ("input_height".to_string(), height.to_string()),
        ("input_width".to_string(), width.to_string()),
        ("grid".to_string(), format!("{}x{}", out.grid.0, out.grid.1)),
        ("resize".to_string(), args.resize.clone()),
        (
            "pos_interp".to_string(),
            format!("{:?}", args.pos_interp).to_lowercase(),
        ),
        (
            "dpam_from".to_string(),
            args.dpam_from.map_or("none".into(), |d| d.to_string()),
        ),
        ("norm_layers".to_string(), args.norm_layers.to_string()),
        ("dtype".to_string(), args.dtype.to_ascii_lowercase()),
    ]);
    write_atomically(&args.out, tensors, metadata)?;
    eprintln!(
        "wrote {} ({} blocks, grid {}x{}{})",
        args.out.display(),
        layers.len(),
        out.grid.0,
        out.grid.1,
        if args.text.is_empty() {
            String::new()
        } else {
            format!(", {} prompts", args.text.len())
        }
    );
    Ok(())
}

/// `--height/--width` when given, else the square `--size`, else the backbone's default.
fn input_size(args: &EmbedArgs, default: usize) -> (usize, usize) {
    match (args.height, args.width) {
        (Some(h), Some(w)) => (h, w),
        _ => {
            let size = args.size.unwrap_or(default);
            (size, size)
        }
    }
}

fn run_dinov3(args: &EmbedArgs) -> anyhow::Result<()> {
    for (set, flag) in [
        (args.dpam_from.is_some(), "--dpam-from"),
        (!args.text.is_empty(), "--text"),
        (args.activation.is_some(), "--activation"),
        (args.resize != "squash", "--resize crop"),
    ] {
        if set {
            anyhow::bail!("{flag} applies to CLIP only, not to --backbone dinov3");
        }
    }
    let device = args.device.open()?;
    let config = args
        .preset
        .as_deref()
        .map(|p| {
            Dinov3Config::preset(p).ok_or_else(|| {
                anyhow::anyhow!("unknown DINOv3 preset `{p}`; known: {:?}", dinov3::PRESETS)
            })
        })
        .transpose()?;
    let files = dinov3::resolve(&args.weights)
        .with_context(|| format!("resolving DINOv3 weights `{}`", args.weights))?;
    let model = Dinov3Model::load_files(&files, config, parse_dtype(&args.dtype)?, &device)
        .with_context(|| format!("loading DINOv3 weights `{}`", args.weights))?;
    let (height, width) = input_size(args, 592);
    let grid = model.grid_for(height, width)?;
    let depth = model.config().num_hidden_layers;
    let blocks = if args.layers.is_empty() {
        let mut q: Vec<usize> = (1..=4).map(|i| (depth * i / 4).max(1)).collect();
        q.dedup();
        q
    } else {
        args.layers.clone()
    };

    let recipe = if args.sat {
        Preprocess::dinov3_sat(width)
    } else {
        Preprocess::dinov3(width)
    }
    .with_size(width, height);
    let img = ssvp_image::load_rgb8(&args.image)
        .with_context(|| format!("reading image {}", args.image.display()))?;
    let chw = recipe.apply(&img)?;
    let pixels = Tensor::from_vec(chw.data, (1, chw.channels, chw.height, chw.width), &device)?;
    let out = model.forward(&pixels, &blocks, args.norm_layers)?;
    let tensors = out.embed_tensors(0)?;

    let metadata = HashMap::from([
        ("backbone".to_string(), "dinov3".to_string()),
        ("weights".to_string(), files.origin.clone()),
        ("image".to_string(), args.image.display().to_string()),
        ("input_height".to_string(), height.to_string()),
        ("input_width".to_string(), width.to_string()),
        ("grid".to_string(), format!("{}x{}", grid.0, grid.1)),
        ("norm_layers".to_string(), args.norm_layers.to_string()),
        (
            "normalisation".to_string(),
            if args.sat { "sat493m" } else { "imagenet" }.to_string(),
        ),
        ("dtype".to_string(), args.dtype.to_ascii_lowercase()),
    ]);
    write_atomically(&args.out, tensors, metadata)?;
    eprintln!(
        "wrote {} ({} blocks, grid {}x{})",
        args.out.display(),
        blocks.len(),
        grid.0,
        grid.1
    );
    Ok(())
}

/// Writes f32 (and i64) tensors to `path` through a temporary file in the same directory and a
/// rename, so that a reader never sees a half-written file.
fn write_atomically(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    metadata: HashMap<String, String>,
) -> anyhow::Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = if t.dtype() == DType::I64 {
            t
        } else {
            t.to_dtype(DType::F32)?
        };
        let shape = t.dims().to_vec();
        let (dtype, bytes) = match t.dtype() {
            DType::I64 => (
                safetensors::Dtype::I64,
                t.flatten_all()?
                    .to_vec1::<i64>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
            _ => (
                safetensors::Dtype::F32,
                t.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ),
        };
        views.push((name, shape, dtype, bytes));
    }
    let data = views
        .iter()
        .map(|(name, shape, dtype, bytes)| {
            Ok((
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let result = ssvp_util::fs::write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(data, Some(metadata), tmp).map_err(anyhow::Error::from)
    });
    result.with_context(|| format!("writing {}", path.display()))
}
