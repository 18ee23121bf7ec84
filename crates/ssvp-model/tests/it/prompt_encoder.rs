//! `ClipPromptEncoder` against transformers' `CLIPTextModelWithProjection` with the learnable
//! vectors spliced into the token embeddings (reference/gen_prompt_encoder.py): the projected EOT
//! features and the gradient of `sum(T * R)` w.r.t. the prompt tokens, both within 1e-4 relative
//! error; plus the tokenisation, its cache, and input errors.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use ssvp_backbones::clip::tokenizer::ClipTokenizer;
use ssvp_backbones::clip::{Activation, ClipConfig, ClipModel, ClipTextConfig};
use ssvp_model::ClipPromptEncoder;
use ssvp_model::PromptTextEncoder;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prompt_encoder")
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    assert!(scale > 0.0, "all-zero reference proves nothing");
    diff / scale
}

struct Fixture {
    model: ClipModel,
    cases: serde_json::Value,
    tensors: HashMap<String, Tensor>,
}

fn fixture() -> Fixture {
    let dev = Device::Cpu;
    let dir = fixture_dir();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let c = &meta["config"];
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    let text = ClipTextConfig {
        vocab_size: u("vocab_size"),
        hidden_size: u("hidden_size"),
        intermediate_size: u("intermediate_size"),
        num_hidden_layers: u("num_hidden_layers"),
        num_attention_heads: u("num_attention_heads"),
        max_position_embeddings: u("max_position_embeddings"),
        hidden_act: Activation::QuickGelu,
        layer_norm_eps: c["layer_norm_eps"].as_f64().unwrap(),
        bos_token_id: 49406,
        eos_token_id: 49407,
        pad_token_id: 1,
    };
    let mut weights =
        candle_core::safetensors::load(dir.join("weights.safetensors"), &dev).unwrap();
    // Rebuild the full token table: the fixture holds only the rows the prompts use.
    let ids = weights
        .remove("token_ids")
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    let rows = weights.remove("token_rows").unwrap();
    let width = text.hidden_size;
    let mut table = vec![0f32; text.vocab_size * width];
    for (k, &id) in ids.iter().enumerate() {
        let row = rows.get(k).unwrap().to_vec1::<f32>().unwrap();
        table[id as usize * width..(id as usize + 1) * width].copy_from_slice(&row);
    }
    weights.insert(
        "text_model.embeddings.token_embedding.weight".into(),
        Tensor::from_vec(table, (text.vocab_size, width), &dev).unwrap(),
    );
    let config = ClipConfig {
        vision: None,
        text: Some(text),
        projection_dim: u("projection_dim"),
    };
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    let model = ClipModel::new(&config, vb, "prompt_encoder fixture").unwrap();
    let tensors = candle_core::safetensors::load(dir.join("cases.safetensors"), &dev).unwrap();
    Fixture {
        model,
        cases: meta["cases"].clone(),
        tensors,
    }
}

#[test]
fn matches_transformers_outputs_and_gradients() {
    let fx = fixture();
    let tokenizer = ClipTokenizer::openai().unwrap();
    let encoder = ClipPromptEncoder::new(fx.model.text().unwrap(), &tokenizer);
    let cases = fx.cases.as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for (i, case) in cases.iter().enumerate() {
        let name = case["class_name"].as_str().unwrap();
        let slots = case["slots"].as_u64().unwrap() as usize;
        let t = |k: &str| fx.tensors[&format!("{i}.{k}")].clone();

        // Tokenisation: the reference's padded ids, cut after EOT.
        let want_ids: Vec<u32> = t("ids")
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&x| x as u32)
            .collect();
        let eot = case["eot"].as_u64().unwrap() as usize;
        assert_eq!(
            encoder.token_ids(name, slots).unwrap(),
            want_ids[..=eot],
            "{name}"
        );

        let prompt = Var::from_tensor(&t("prompt")).unwrap();
        let out = encoder.encode(name, prompt.as_tensor()).unwrap();
        let e_out = rel_err(&out, &t("text_embed"));
        assert!(e_out < 1e-4, "{name}: text_embed relative error {e_out:e}");

        let loss = (&out * &t("r")).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let grad = grads
            .get(prompt.as_tensor())
            .expect("gradient reaches the prompt tokens");
        let e_grad = rel_err(grad, &t("grad"));
        assert!(e_grad < 1e-4, "{name}: gradient relative error {e_grad:e}");
        eprintln!("{name:>22}: output {e_out:.2e}, gradient {e_grad:.2e}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let fx = fixture();
    let tokenizer = ClipTokenizer::openai().unwrap();
    let encoder = ClipPromptEncoder::new(fx.model.text().unwrap(), &tokenizer);
    let dev = Device::Cpu;
    let ok = Tensor::zeros((2, 3, 32), DType::F32, &dev).unwrap();
    // Wrong width.
    let wide = Tensor::zeros((2, 3, 33), DType::F32, &dev).unwrap();
    let err = encoder.encode("bottle", &wide).unwrap_err().to_string();
    assert!(err.contains("33") && err.contains("32"), "{err}");
    // Wrong rank.
    let flat = Tensor::zeros((3, 32), DType::F32, &dev).unwrap();
    assert!(encoder.encode("bottle", &flat).is_err());
    // Empty class name.
    let err = encoder.encode("  ", &ok).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    // A class name that does not fit the 77-token context.
    let long = "very ".repeat(80);
    let err = encoder.encode(&long, &ok).unwrap_err().to_string();
    assert!(err.contains("prompt for class"), "{err}");
    // The encoder still works after errors, and the tokenisation is cached per (class, slots).
    encoder.encode("bottle", &ok).unwrap();
    let a = encoder.token_ids("bottle", 3).unwrap();
    let b = encoder.token_ids("bottle", 5).unwrap();
    assert_eq!(b.len(), a.len() + 2);
}
