//! Evaluation results: serde types shared by `ssvp metrics`, `ssvp eval` and the server, and
//! their renderings (terminal table, Markdown, CSV, JSON).
//!
//! JSON schema: `{"categories": {"<name>": {...}}, "mean": {...}, "definitions": {...}}`. Every
//! metric is a fraction in [0, 1]. A metric that is undefined for a category is `null` and
//! listed under `"skipped"` with the reason — never 0. Pixel metrics appear only when maps were
//! evaluated. The mean is the unweighted mean over the categories where the metric is defined;
//! categories left out are listed under `"excluded"`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::{BinaryMetrics, PixelCounts, PixelMetrics, Undefined};

/// Pixel metric values (present as a block when maps were evaluated).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PixelValues {
    /// Pixel AUROC.
    pub pixel_auroc: Option<f64>,
    /// Pixel average precision.
    pub pixel_ap: Option<f64>,
    /// Pixel F1-max.
    pub pixel_f1_max: Option<f64>,
    /// Exact AUPRO to FPR 0.3 (anomalib's sort-based algorithm).
    pub pixel_aupro: Option<f64>,
    /// cflow-style AUPRO of AnomalyCLIP / APRIL-GAN (200 thresholds, rescaled FPR).
    pub pixel_aupro_cflow: Option<f64>,
}

/// A metric without a value and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The metric's JSON name (`"pixel_aupro"`, ...).
    pub metric: String,
    /// Why it is undefined (an [`Undefined`] message).
    pub reason: String,
}

/// The metric values of one category or of the mean.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSet {
    /// Image AUROC.
    pub image_auroc: Option<f64>,
    /// Image average precision.
    pub image_ap: Option<f64>,
    /// Image F1-max.
    pub image_f1_max: Option<f64>,
    /// The pixel metrics, when maps were evaluated.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub pixel: Option<PixelValues>,
    /// The metrics without a value, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

/// Names of the image metrics in report order (the JSON keys).
pub const IMAGE_METRICS: [&str; 3] = ["image_auroc", "image_ap", "image_f1_max"];
/// Names of the pixel metrics in report order (the JSON keys), after [`IMAGE_METRICS`].
pub const PIXEL_METRICS: [&str; 5] = [
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "pixel_aupro",
    "pixel_aupro_cflow",
];

impl MetricSet {
    /// The value of a metric by its JSON name; `None` when absent or skipped.
    pub fn get(&self, name: &str) -> Option<f64> {
        let p = self.pixel.as_ref();
        match name {
            "image_auroc" => self.image_auroc,
            "image_ap" => self.image_ap,
            "image_f1_max" => self.image_f1_max,
            "pixel_auroc" => p?.pixel_auroc,
            "pixel_ap" => p?.pixel_ap,
            "pixel_f1_max" => p?.pixel_f1_max,
            "pixel_aupro" => p?.pixel_aupro,
            "pixel_aupro_cflow" => p?.pixel_aupro_cflow,
            _ => None,
        }
    }

    fn slot(&mut self, name: &str) -> &mut Option<f64> {
        if name.starts_with("pixel_") {
            let p = self.pixel.get_or_insert_with(PixelValues::default);
            match name {
                "pixel_auroc" => &mut p.pixel_auroc,
                "pixel_ap" => &mut p.pixel_ap,
                "pixel_f1_max" => &mut p.pixel_f1_max,
                "pixel_aupro" => &mut p.pixel_aupro,
                _ => &mut p.pixel_aupro_cflow,
            }
        } else {
            match name {
                "image_auroc" => &mut self.image_auroc,
                "image_ap" => &mut self.image_ap,
                _ => &mut self.image_f1_max,
            }
        }
    }

    fn record(&mut self, name: &str, value: &Result<f64, Undefined>) {
        match value {
            Ok(v) => *self.slot(name) = Some(*v),
            Err(reason) => {
                *self.slot(name) = None;
                self.skipped.push(Skipped {
                    metric: name.to_string(),
                    reason: reason.to_string(),
                });
            }
        }
    }

    /// Metric names present in this set, in report order.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = IMAGE_METRICS.to_vec();
        if self.pixel.is_some() {
            names.extend(PIXEL_METRICS);
        }
        names
    }
}

/// Sample counts of one category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryCounts {
    /// Images scored.
    pub images: u64,
    /// Of which anomalous.
    pub anomalous_images: u64,
    /// What the pixel metrics were computed over, when maps were evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pixels: Option<PixelCounts>,
}

/// Results of one category.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CategoryResult {
    /// The category's metric values.
    #[serde(flatten)]
    pub metrics: MetricSet,
    /// What they were computed over.
    pub counts: CategoryCounts,
}

impl CategoryResult {
    /// Collects the image metrics and, when maps were evaluated, the pixel metrics.
    pub fn new(
        image: &BinaryMetrics,
        pixel: Option<&PixelMetrics>,
        images: u64,
        anomalous_images: u64,
    ) -> Self {
        let mut metrics = MetricSet::default();
        metrics.record("image_auroc", &image.auroc);
        metrics.record("image_ap", &image.average_precision);
        metrics.record("image_f1_max", &image.f1_max);
        if let Some(p) = pixel {
            metrics.record("pixel_auroc", &p.auroc);
            metrics.record("pixel_ap", &p.average_precision);
            metrics.record("pixel_f1_max", &p.f1_max);
            metrics.record("pixel_aupro", &p.aupro);
            metrics.record("pixel_aupro_cflow", &p.aupro_cflow);
        }
        Self {
            metrics,
            counts: CategoryCounts {
                images,
                anomalous_images,
                pixels: pixel.map(|p| p.counts),
            },
        }
    }
}

/// Unweighted mean over categories.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanResult {
    /// Each metric's mean over the categories where it is defined.
    #[serde(flatten)]
    pub metrics: MetricSet,
    /// For each metric, the categories left out of its mean because it is undefined there.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub excluded: BTreeMap<String, Vec<String>>,
}

/// A whole evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    /// Results per category, by name.
    pub categories: BTreeMap<String, CategoryResult>,
    /// The unweighted mean over categories.
    pub mean: MeanResult,
    /// What each metric name means (protocol, AUPRO variant), for readers of the file.
    #[serde(default)]
    pub definitions: BTreeMap<String, String>,
}

/// One-line definitions written into every report.
pub fn metric_definitions(with_pixels: bool) -> BTreeMap<String, String> {
    let mut d = BTreeMap::new();
    let mut put = |k: &str, v: &str| d.insert(k.to_string(), v.to_string());
    put(
        "image_auroc",
        "sklearn roc_auc_score on the image scores, per category",
    );
    put(
        "image_ap",
        "sklearn average_precision_score on the image scores",
    );
    put(
        "image_f1_max",
        "max F1 over sklearn precision_recall_curve on the image scores",
    );
    put(
        "mean",
        "unweighted mean over the categories where the metric is defined",
    );
    if with_pixels {
        put(
            "pixel_auroc",
            "roc_auc_score over all pixels of all test images of the category",
        );
        put(
            "pixel_ap",
            "average_precision_score over all pixels of the category",
        );
        put("pixel_f1_max", "max F1 over all pixels of the category");
        put(
            "pixel_aupro",
            "exact AUPRO to FPR 0.3 (anomalib sort-based: tie groups, 8-connected regions weighted \
             equally, PRO interpolated at FPR 0.3, area / 0.3)",
        );
        put(
            "pixel_aupro_cflow",
            "cflow-style AUPRO (AnomalyCLIP/APRIL-GAN cal_pro_score: 200 thresholds \
             arange(min, max, (max-min)/200), score > t, FPR < 0.3 kept and min-max rescaled, \
             sklearn auc); not comparable to pixel_aupro",
        );
    }
    d
}

impl EvaluationReport {
    /// Builds the report and its mean from per-category results.
    pub fn from_categories(categories: BTreeMap<String, CategoryResult>) -> Self {
        let with_pixels = categories.values().any(|c| c.metrics.pixel.is_some());
        let mut names = IMAGE_METRICS.to_vec();
        if with_pixels {
            names.extend(PIXEL_METRICS);
        }
        let mut mean = MeanResult::default();
        for name in names {
            let mut values = Vec::new();
            let mut excluded = Vec::new();
            for (category, result) in &categories {
                match result.metrics.get(name) {
                    Some(v) => values.push(v),
                    None => excluded.push(category.clone()),
                }
            }
            let value = if values.is_empty() {
                Err(if categories.is_empty() {
                    "no categories".to_string()
                } else {
                    "undefined in every category".to_string()
                })
            } else {
                Ok(values.iter().sum::<f64>() / values.len() as f64)
            };
            match value {
                Ok(v) => *mean.metrics.slot(name) = Some(v),
                Err(reason) => {
                    *mean.metrics.slot(name) = None;
                    mean.metrics.skipped.push(Skipped {
                        metric: name.to_string(),
                        reason,
                    });
                }
            }
            if !excluded.is_empty() && !values.is_empty() {
                mean.excluded.insert(name.to_string(), excluded);
            }
        }
        Self {
            categories,
            mean,
            definitions: metric_definitions(with_pixels),
        }
    }

    fn names(&self) -> Vec<&'static str> {
        self.mean.metrics.names()
    }

    fn rows(&self) -> Vec<(&str, &MetricSet)> {
        let mut rows: Vec<(&str, &MetricSet)> = self
            .categories
            .iter()
            .map(|(k, v)| (k.as_str(), &v.metrics))
            .collect();
        rows.push(("mean", &self.mean.metrics));
        rows
    }

    /// Pretty JSON (fractions, full precision).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report types always serialise") + "\n"
    }

    /// CSV: one row per category plus `mean`, fractions at full precision, empty = skipped.
    pub fn to_csv(&self) -> String {
        let names = self.names();
        let mut out = format!("category,{}\n", names.join(","));
        for (category, m) in self.rows() {
            let cells: Vec<String> = names
                .iter()
                .map(|n| m.get(n).map(|v| format!("{v}")).unwrap_or_default())
                .collect();
            out += &format!("{},{}\n", csv_field(category), cells.join(","));
        }
        out
    }

    /// Markdown table in the field's convention (×100, one decimal; "–" = skipped), followed by
    /// the skipped metrics with reasons.
    pub fn to_markdown(&self) -> String {
        let names = self.names();
        let mut out = format!("| category | {} |\n", names.join(" | "));
        out += &format!("|---|{}\n", "---:|".repeat(names.len()));
        for (category, m) in self.rows() {
            let cells: Vec<String> = names.iter().map(|n| percent(m.get(n))).collect();
            let category = if category == "mean" {
                "**mean**".to_string()
            } else {
                category.to_string()
            };
            out += &format!("| {category} | {} |\n", cells.join(" | "));
        }
        let notes = self.skip_notes();
        if !notes.is_empty() {
            out += "\nSkipped (undefined, not counted as 0):\n\n";
            for n in notes {
                out += &format!("- {n}\n");
            }
        }
        out
    }

    /// Aligned plain-text table for the terminal (×100, one decimal).
    pub fn to_table(&self) -> String {
        let names = self.names();
        let rows = self.rows();
        let first = rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0)
            .max("category".len());
        let widths: Vec<usize> = names.iter().map(|n| n.len().max(5)).collect();
        let mut out = format!("{:<first$}", "category");
        for (n, w) in names.iter().zip(&widths) {
            out += &format!("  {n:>w$}");
        }
        out += "\n";
        for (category, m) in rows {
            if category == "mean" {
                out += &format!("{}\n", "-".repeat(out.lines().next().unwrap_or("").len()));
            }
            out += &format!("{category:<first$}");
            for (n, w) in names.iter().zip(&widths) {
                out += &format!("  {:>w$}", percent(m.get(n)));
            }
            out += "\n";
        }
        for n in self.skip_notes() {
            out += &format!("skipped: {n}\n");
        }
        out
    }

    fn skip_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for (category, result) in &self.categories {
            for s in &result.metrics.skipped {
                notes.push(format!("{category} {}: {}", s.metric, s.reason));
            }
        }
        for s in &self.mean.metrics.skipped {
            notes.push(format!("mean {}: {}", s.metric, s.reason));
        }
        for (metric, cats) in &self.mean.excluded {
            notes.push(format!(
                "mean {metric} leaves out {} (undefined there)",
                cats.join(", ")
            ));
        }
        notes
    }
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{:.1}", v * 100.0))
}

/// One CSV field, quoted (RFC 4180) when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(auroc: Result<f64, Undefined>) -> BinaryMetrics {
        BinaryMetrics {
            auroc: auroc.clone(),
            average_precision: auroc.clone(),
            f1_max: auroc,
        }
    }

    #[test]
    fn skipped_category_is_null_and_left_out_of_the_mean() {
        let mut cats = BTreeMap::new();
        cats.insert(
            "a".to_string(),
            CategoryResult::new(&image(Ok(0.8)), None, 4, 2),
        );
        cats.insert(
            "b".to_string(),
            CategoryResult::new(&image(Ok(0.6)), None, 4, 2),
        );
        cats.insert(
            "c".to_string(),
            CategoryResult::new(&image(Err(Undefined::NoPositives)), None, 4, 0),
        );
        let report = EvaluationReport::from_categories(cats);
        assert!((report.mean.metrics.image_auroc.unwrap() - 0.7).abs() < 1e-15);
        assert_eq!(report.mean.excluded["image_auroc"], vec!["c".to_string()]);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert!(json["categories"]["c"]["image_auroc"].is_null());
        assert_eq!(
            json["categories"]["c"]["skipped"][0]["metric"],
            "image_auroc"
        );
        assert!(json["categories"]["a"].get("pixel_auroc").is_none());
        let back: EvaluationReport = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            back.mean.metrics.image_auroc,
            report.mean.metrics.image_auroc
        );
        assert!(report.to_markdown().contains("| c | – | – | – |"));
        assert!(report.to_csv().contains("\nc,,,\n"));
        assert!(report.to_table().contains("skipped: c image_auroc"));
    }
}
