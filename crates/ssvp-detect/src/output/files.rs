//! The per-image files of a batch run: the anomaly map, the overlay and the report thumbnails.

use std::path::{Path, PathBuf};

use ssvp_eval::maps::io::MapFormat;
use ssvp_image::{resize_rgb8, ColorScale, RgbImage8};

use super::encode::{map_bytes, overlay};
use super::records::OutputFiles;
use crate::detection::Detection;
use crate::error::{Error, Result};

/// Which files to write per image.
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// Anomaly maps in this format (`None`: no maps).
    pub map_format: Option<MapFormat>,
    /// Overlays (and the report's thumbnails).
    pub overlays: bool,
    /// Longest side of the report's thumbnails, in pixels.
    pub thumbnail_size: usize,
    /// JPEG quality of overlays and thumbnails.
    pub jpeg_quality: u8,
    /// Weight of the heat map in the overlay blend.
    pub overlay_alpha: f32,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            map_format: Some(MapFormat::Png16),
            overlays: true,
            thumbnail_size: 320,
            jpeg_quality: 90,
            overlay_alpha: 0.5,
        }
    }
}

/// Where the files of an input go: `<dir>/<stem path><suffix>` relative to the output dir.
#[derive(Clone, Debug)]
pub struct FileNames {
    /// The input's mirrored path without its extension (or with it, when two inputs of one
    /// folder share a stem).
    pub stem: PathBuf,
}

impl FileNames {
    fn under(&self, dir: &str, suffix: &str) -> PathBuf {
        let mut name = self.stem.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        Path::new(dir).join(self.stem.with_file_name(name))
    }
}

/// Output stems for mirrored input paths: the path without its extension, except when two
/// inputs would then collide (`a.png` and `a.jpg`), which keep their full names.
pub fn stems(rels: &[PathBuf]) -> Vec<FileNames> {
    let plain: Vec<PathBuf> = rels.iter().map(|r| r.with_extension("")).collect();
    let mut counts = std::collections::HashMap::new();
    for p in &plain {
        *counts.entry(p.clone()).or_insert(0usize) += 1;
    }
    rels.iter()
        .zip(plain)
        .map(|(rel, p)| FileNames {
            stem: if counts[&p] > 1 { rel.clone() } else { p },
        })
        .collect()
}

fn rel_string(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn write(out_dir: &Path, rel: &Path, bytes: &[u8]) -> Result<String> {
    let path = out_dir.join(rel);
    ssvp_util::fs::write_atomic_with(&path, |tmp| std::fs::write(tmp, bytes))
        .map_err(|e| Error::io(&path, e))?;
    Ok(rel_string(rel))
}

fn thumbnail(image: &RgbImage8, size: usize) -> Result<RgbImage8> {
    let longest = image.width.max(image.height);
    if longest <= size {
        return Ok(image.clone());
    }
    let scale = size as f64 / longest as f64;
    let w = ((image.width as f64 * scale).round() as usize).max(1);
    let h = ((image.height as f64 * scale).round() as usize).max(1);
    Ok(resize_rgb8(image, w, h)?)
}

/// Writes the files of one detected image and says where they went.
pub fn write_image_files(
    out_dir: &Path,
    names: &FileNames,
    image: &RgbImage8,
    detection: &Detection,
    scale: ColorScale,
    min_region_area: usize,
    opts: &FileOptions,
) -> Result<OutputFiles> {
    let mut files = OutputFiles::default();
    if let Some(format) = opts.map_format {
        let bytes = map_bytes(detection, format, scale)?;
        files.map = Some(write(
            out_dir,
            &names.under("maps", &format!(".{}", format.extension())),
            &bytes,
        )?);
    }
    if opts.overlays {
        let over = overlay(image, detection, scale, opts.overlay_alpha, min_region_area)?;
        let jpeg = |img: &RgbImage8| ssvp_image::encode_jpeg_rgb8(img, opts.jpeg_quality);
        files.overlay = Some(write(
            out_dir,
            &names.under("overlays", ".jpg"),
            &jpeg(&over)?,
        )?);
        files.thumbnail = Some(write(
            out_dir,
            &names.under("thumbs", ".jpg"),
            &jpeg(&thumbnail(image, opts.thumbnail_size)?)?,
        )?);
        files.overlay_thumbnail = Some(write(
            out_dir,
            &names.under("thumbs", ".overlay.jpg"),
            &jpeg(&thumbnail(&over, opts.thumbnail_size)?)?,
        )?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_mirror_and_disambiguate() {
        let rels: Vec<PathBuf> = ["a/x.png", "a/x.jpg", "b/y.tif"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let s = stems(&rels);
        assert_eq!(
            s[0].under("maps", ".png"),
            PathBuf::from("maps/a/x.png.png")
        );
        assert_eq!(
            s[1].under("maps", ".png"),
            PathBuf::from("maps/a/x.jpg.png")
        );
        assert_eq!(
            s[2].under("thumbs", ".overlay.jpg"),
            PathBuf::from("thumbs/b/y.overlay.jpg")
        );
    }
}
