//! The `tiny` backbones: the real CLIP and DINOv3 architectures at width 64 and 4 blocks with
//! seeded random weights, so that the whole pipeline runs in seconds with no weights files.

use ssvp_backbones::clip::{
    Activation as ClipActivation, ClipConfig, ClipTextConfig, ClipVisionConfig,
};
use ssvp_backbones::dinov3::{Activation as DinoActivation, Dinov3Config};

/// The `tiny` CLIP: the real architecture (pre-LN ViT with QuickGELU, patch 14, causal text
/// tower with the real 49,408-token vocabulary) at width 64 and 4 blocks per tower. Its trained
/// grid is 4 x 4 (56 px), so any other grid goes through the same positional resampling as
/// ViT-L/14@336 at 518 px. About 0.2M parameters per tower's blocks; the token embedding adds
/// 3.2M because the tokenizer is the real one.
pub fn tiny_clip_config() -> ClipConfig {
    ClipConfig {
        vision: Some(ClipVisionConfig {
            hidden_size: 64,
            intermediate_size: 256,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            num_channels: 3,
            image_size: 56,
            patch_size: 14,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
        }),
        text: Some(ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 64,
            intermediate_size: 256,
            num_hidden_layers: 4,
            num_attention_heads: 4,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
            pad_token_id: 1,
        }),
        projection_dim: 64,
    }
}

/// The `tiny` DINOv3: the released ViT layout (CLS + 4 registers, 2D RoPE, LayerScale, GELU MLP,
/// no key bias, patch 16) at width 64, 4 heads of 16, 4 blocks; about 0.2M parameters.
pub fn tiny_dino_config() -> Dinov3Config {
    Dinov3Config {
        hidden_size: 64,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        intermediate_size: 256,
        patch_size: 16,
        num_channels: 3,
        num_register_tokens: 4,
        layer_norm_eps: 1e-5,
        rope_theta: 100.0,
        use_gated_mlp: false,
        hidden_act: DinoActivation::GeluErf,
        query_bias: true,
        key_bias: false,
        value_bias: true,
        proj_bias: true,
        mlp_bias: true,
    }
}

/// Seeds of the two tiny towers (different, so that no tensor of one mirrors the other).
pub(crate) fn tiny_seeds(seed: u64) -> (u64, u64) {
    (seed, seed ^ 0xD1_70_D1_70)
}
