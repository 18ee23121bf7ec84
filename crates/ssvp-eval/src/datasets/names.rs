//! Category folder names -> names for text prompts (`"a photo of a damaged <name>"`).
//!
//! The table follows Bayes-PFL's `class_mapping` (SSVP's baseline) and extends it to the other
//! benchmarks (docs/method.md §4, "Class names in prompts", states the rule):
//!
//! | folder name | prompt name | why |
//! |---|---|---|
//! | `metal_nut` | metal nut | Bayes-PFL |
//! | `pcb1`..`pcb4` | printed circuit board | Bayes-PFL |
//! | `macaroni1`, `macaroni2` | macaroni | Bayes-PFL |
//! | `pipe_fryum` | pipe fryum | Bayes-PFL |
//! | `chewinggum` | chewing gum | Bayes-PFL |
//! | BTAD `01`, `02`, `03` | metal, wood, metal | Bayes-PFL renames them metal1, wood, metal2 (`dataset/datasets/BTAD.py`); digits dropped |
//! | DAGM: `Class1`..`Class10` anywhere, any name under the DAGM layouts (Bayes-PFL's `Fabric1`…) | texture | synthetic textured surfaces; a class number says nothing to CLIP |
//! | SDD / KSDD (`SDD`, `electrical commutators`), KSDD2 raw | electrical commutator | AnomalyCLIP's SDD class name |
//! | DTD-Synthetic `Woven_001` etc. | woven, blotchy, … | the texture family without its number |
//!
//! Any other name: lower-cased, `_`/`-` become spaces, a trailing number is dropped
//! (`Metal15` -> "metal", `Fabric1` -> "fabric", `bracket_black` -> "bracket black"); a name
//! that would become empty (a bare number) is kept as it is.

use super::Layout;

/// The prompt-friendly name of category `name` as read from `layout`.
pub fn prompt_name(name: &str, layout: Layout) -> String {
    let lower = name.to_ascii_lowercase();
    let fixed = match lower.as_str() {
        "metal_nut" => Some("metal nut"),
        "pcb1" | "pcb2" | "pcb3" | "pcb4" => Some("printed circuit board"),
        "macaroni1" | "macaroni2" => Some("macaroni"),
        "pipe_fryum" => Some("pipe fryum"),
        "chewinggum" => Some("chewing gum"),
        "sdd" | "ksdd" | "ksdd2" | "electrical commutators" | "electrical_commutators" => {
            Some("electrical commutator")
        }
        _ => None,
    };
    if let Some(f) = fixed {
        return f.to_string();
    }
    if layout == Layout::Btad || matches!(lower.as_str(), "01" | "02" | "03") {
        match lower.as_str() {
            "01" | "03" => return "metal".to_string(),
            "02" => return "wood".to_string(),
            _ => {}
        }
    }
    if matches!(layout, Layout::DagmRaw | Layout::Dagm)
        || (lower.starts_with("class")
            && lower[5..].chars().all(|c| c.is_ascii_digit())
            && lower.len() > 5)
    {
        return "texture".to_string();
    }
    if layout == Layout::Ksdd2 {
        return "electrical commutator".to_string();
    }
    let spaced: String = lower
        .chars()
        .map(|c| if c == '_' || c == '-' { ' ' } else { c })
        .collect();
    let trimmed = spaced.trim_end_matches(|c: char| c.is_ascii_digit() || c == ' ');
    if trimmed.is_empty() {
        name.to_string()
    } else {
        trimmed.to_string()
    }
}
