//! The `meta.json` index shared by AnomalyCLIP, AdaCLIP and APRIL-GAN (docs/formats.md §4.1).
//!
//! `{"train": {cls: [item…]}, "test": {cls: [item…]}}`, each item
//! `{"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}` with paths relative to the
//! dataset root (`""` mask for normal images).
//!
//! Reading ([`super::load`] with [`super::Layout::MetaJson`]): the root is the folder holding
//! `meta.json`, or the folder of a meta file given directly (Bayes-PFL's `meta_RSDD.json` sits
//! next to the dataset folders and its paths start with the dataset name). Top-level keys are
//! matched case-insensitively, so AnomalyCLIP's DAGM `"Train"`/`"Test"` work. Category and
//! item order are kept. Extra item fields (`dataset_name`) are ignored; `anomaly` may be a
//! number or a boolean; items with an empty `img_path` (Bayes-PFL's placeholders for empty
//! train folders) are not images and are left out, so a category made only of them is
//! reported empty.
//!
//! Writing ([`write_meta_json`]): byte-for-byte what Python's `json.dumps(info, indent=4)` plus
//! a trailing newline writes, ASCII-escaped like `ensure_ascii=True`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::{
    new_category, Category, Dataset, DatasetError, Label, Layout, Listing, Problem, ProblemKind,
    Result, Sample, Split,
};

/// File name of the index inside a dataset root.
pub const META_JSON: &str = "meta.json";

/// A JSON object with its key order kept (serde_json's own map sorts keys unless a
/// crate-wide feature is switched on).
struct Ordered<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V2<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V2<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V2(std::marker::PhantomData))
    }
}

type MetaFile = Ordered<Ordered<Vec<serde_json::Value>>>;

/// Where the index of `root` is and which folder its paths are relative to.
pub fn locate(root: &Path) -> (PathBuf, PathBuf) {
    if root.is_file() {
        let dir = root
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        (root.to_path_buf(), dir)
    } else {
        (root.join(META_JSON), root.to_path_buf())
    }
}

pub(crate) fn list(root: &Path, split: Split) -> Result<Listing> {
    let (meta_path, data_root) = locate(root);
    let text = std::fs::read_to_string(&meta_path).map_err(|error| DatasetError::Io {
        path: meta_path.clone(),
        error,
    })?;
    let meta: MetaFile = serde_json::from_str(&text).map_err(|e| DatasetError::Format {
        path: meta_path.clone(),
        message: format!(
            "not a meta.json index ({{\"train\": {{cls: [item…]}}, \"test\": …}}): {e}"
        ),
    })?;
    let Some((_, classes)) = meta
        .0
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(split.as_str()))
    else {
        return Err(DatasetError::Format {
            path: meta_path,
            message: format!("no `{}` split in the index", split.as_str()),
        });
    };
    let mut categories = Vec::new();
    let mut problems = Vec::new();
    for (cls, items) in classes.0 {
        let mut samples = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match parse_item(&item, &cls, &data_root) {
                Ok(Some(s)) => samples.push(s),
                Ok(None) => {}
                Err(reason) => problems.push(Problem {
                    category: cls.clone(),
                    path: meta_path.clone(),
                    kind: ProblemKind::BadEntry {
                        reason: format!("{}[{cls}][{i}]: {reason}", split.as_str()),
                    },
                }),
            }
        }
        categories.push(new_category(&cls, Layout::MetaJson, samples));
    }
    Ok(Listing {
        root: data_root,
        categories,
        problems,
    })
}

fn parse_item(
    item: &serde_json::Value,
    cls: &str,
    root: &Path,
) -> std::result::Result<Option<Sample>, String> {
    let obj = item.as_object().ok_or("item is not an object")?;
    let text = |key: &str| -> std::result::Result<String, String> {
        match obj.get(key) {
            None | Some(serde_json::Value::Null) => Ok(String::new()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("`{key}` is not a string: {other}")),
        }
    };
    let img = text("img_path")?;
    if img.is_empty() {
        return Ok(None);
    }
    let mask = text("mask_path")?;
    let label = match obj.get("anomaly") {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(0.0) => false,
            Some(1.0) => true,
            _ => return Err(format!("`anomaly` must be 0 or 1, found {n}")),
        },
        Some(other) => return Err(format!("`anomaly` must be 0 or 1, found {other}")),
        None => return Err("no `anomaly` field".into()),
    };
    Ok(Some(Sample {
        category: cls.to_string(),
        image_path: root.join(&img),
        mask_path: (label && !mask.is_empty()).then(|| root.join(&mask)),
        label: if label {
            Label::Anomalous
        } else {
            Label::Normal
        },
        defect_type: text("specie_name")?,
        rel_path: img,
    }))
}

/// The index text for a dataset's splits, exactly as Python's `json.dumps(indent=4)` + `"\n"`.
///
/// Paths are written relative to the datasets' root (both splits must share it). A missing
/// split is written as `{}`.
pub fn meta_json_string(train: Option<&Dataset>, test: Option<&Dataset>) -> Result<String> {
    if let (Some(a), Some(b)) = (train, test) {
        if a.root != b.root {
            return Err(DatasetError::Layout(format!(
                "train and test come from different roots ({} and {})",
                a.root.display(),
                b.root.display()
            )));
        }
    }
    let mut out = String::from("{\n");
    for (i, (key, ds)) in [("train", train), ("test", test)].into_iter().enumerate() {
        out.push_str(&format!("    \"{key}\": "));
        write_split(&mut out, ds);
        out.push_str(if i == 0 { ",\n" } else { "\n" });
    }
    out.push_str("}\n");
    Ok(out)
}

fn write_split(out: &mut String, ds: Option<&Dataset>) {
    let cats: &[Category] = ds.map(|d| d.categories.as_slice()).unwrap_or(&[]);
    if cats.is_empty() {
        out.push_str("{}");
        return;
    }
    let root = &ds.expect("non-empty").root;
    out.push_str("{\n");
    for (ci, cat) in cats.iter().enumerate() {
        out.push_str(&format!("        {}: ", py_string(&cat.name)));
        if cat.samples.is_empty() {
            out.push_str("[]");
        } else {
            out.push_str("[\n");
            for (si, s) in cat.samples.iter().enumerate() {
                let fields = [
                    ("img_path", py_string(&s.rel_path)),
                    ("mask_path", py_string(&s.mask_rel_path(root))),
                    ("cls_name", py_string(&s.category)),
                    ("specie_name", py_string(&s.defect_type)),
                    ("anomaly", u8::from(s.label.is_anomalous()).to_string()),
                ];
                out.push_str("            {\n");
                for (fi, (k, v)) in fields.iter().enumerate() {
                    out.push_str(&format!("                \"{k}\": {v}"));
                    out.push_str(if fi + 1 < fields.len() { ",\n" } else { "\n" });
                }
                out.push_str("            }");
                out.push_str(if si + 1 < cat.samples.len() {
                    ",\n"
                } else {
                    "\n"
                });
            }
            out.push_str("        ]");
        }
        out.push_str(if ci + 1 < cats.len() { ",\n" } else { "\n" });
    }
    out.push_str("    }");
}

/// A JSON string literal as Python's `json.dumps` (ensure_ascii) writes it.
fn py_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // Python escapes everything outside ' '..='~'.
            c if !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Write the index file (see [`meta_json_string`]).
pub fn write_meta_json(
    path: impl AsRef<Path>,
    train: Option<&Dataset>,
    test: Option<&Dataset>,
) -> Result<()> {
    let path = path.as_ref();
    let text = meta_json_string(train, test)?;
    std::fs::write(path, text).map_err(|error| DatasetError::Io {
        path: path.to_path_buf(),
        error,
    })
}
