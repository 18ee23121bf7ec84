//! VisA through its official split file `split_csv/1cls.csv`.
//!
//! Columns `object,split,label,image,mask` (found by header name), `label` in {normal, anomaly},
//! paths relative to the VisA root; normal rows have an empty mask. Categories keep the order
//! of their first row. Defect type is `""`, as the meta.json generators write it for VisA.

use std::path::Path;

use super::{
    new_category, DatasetError, Label, Layout, Listing, Problem, ProblemKind, Result, Sample, Split,
};

pub(crate) const SPLIT_CSV: &str = "split_csv/1cls.csv";

pub(crate) fn list(root: &Path, split: Split) -> Result<Listing> {
    let csv_path = root.join(SPLIT_CSV);
    let text = std::fs::read_to_string(&csv_path).map_err(|error| DatasetError::Io {
        path: csv_path.clone(),
        error,
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(DatasetError::Format {
            path: csv_path,
            message: "empty csv".into(),
        });
    };
    let header: Vec<String> = split_csv_line(header)
        .into_iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DatasetError::Format {
                path: csv_path.clone(),
                message: format!(
                    "missing column `{name}` (expected object,split,label,image,mask; found {})",
                    header.join(",")
                ),
            })
    };
    let (c_obj, c_split, c_label, c_image, c_mask) = (
        col("object")?,
        col("split")?,
        col("label")?,
        col("image")?,
        col("mask")?,
    );

    let mut categories: Vec<super::Category> = Vec::new();
    let mut problems = Vec::new();
    for (lineno, line) in lines {
        let fields = split_csv_line(line);
        let bad = |category: &str, reason: String| Problem {
            category: category.to_string(),
            path: csv_path.clone(),
            kind: ProblemKind::BadEntry {
                reason: format!("line {}: {reason}", lineno + 1),
            },
        };
        let get = |i: usize| fields.get(i).map(|s| s.trim()).unwrap_or("");
        let object = get(c_obj);
        if fields.len() < header.len() {
            problems.push(bad(
                object,
                format!("{} fields, expected {}", fields.len(), header.len()),
            ));
            continue;
        }
        let pos = match categories.iter().position(|c| c.name == object) {
            Some(p) => p,
            None => {
                categories.push(new_category(object, Layout::Visa, Vec::new()));
                categories.len() - 1
            }
        };
        if !get(c_split).eq_ignore_ascii_case(split.as_str()) {
            continue;
        }
        let label = match get(c_label).to_ascii_lowercase().as_str() {
            "normal" => Label::Normal,
            "anomaly" | "anomalous" | "abnormal" => Label::Anomalous,
            other => {
                problems.push(bad(object, format!("unknown label `{other}`")));
                continue;
            }
        };
        let image = get(c_image);
        if image.is_empty() {
            problems.push(bad(object, "empty image path".into()));
            continue;
        }
        let mask = get(c_mask);
        categories[pos].samples.push(Sample {
            category: object.to_string(),
            image_path: root.join(image),
            mask_path: if label.is_anomalous() && !mask.is_empty() {
                Some(root.join(mask))
            } else {
                None
            },
            label,
            defect_type: String::new(),
            rel_path: image.to_string(),
        });
    }
    Ok(Listing {
        root: root.to_path_buf(),
        categories,
        problems,
    })
}

/// Split one csv line: commas separate, double quotes protect commas, `""` is a quote.
fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}
