//! Tiny image trees for the dataset reader tests.

use std::path::{Path, PathBuf};

use image::{GrayImage, ImageFormat, Luma, Rgb, RgbImage};

/// Write a small RGB image; the format follows the extension (png, bmp, jpg).
pub fn image(path: impl AsRef<Path>, w: u32, h: u32) -> PathBuf {
    let path = path.as_ref();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 30) as u8, (y * 30) as u8, 90]));
    let fmt = ImageFormat::from_path(path).unwrap();
    img.save_with_format(path, fmt).unwrap();
    path.to_path_buf()
}

/// Write an 8-bit gray mask whose pixel (x, y) is `value` where `on(x, y)`.
pub fn mask_with(
    path: impl AsRef<Path>,
    w: u32,
    h: u32,
    value: u8,
    on: impl Fn(u32, u32) -> bool,
) -> PathBuf {
    let path = path.as_ref();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let m = GrayImage::from_fn(w, h, |x, y| Luma([if on(x, y) { value } else { 0 }]));
    let fmt = ImageFormat::from_path(path).unwrap();
    m.save_with_format(path, fmt).unwrap();
    path.to_path_buf()
}

/// A 0/255 mask with a single foreground pixel at (x, y).
pub fn mask_at(path: impl AsRef<Path>, w: u32, h: u32, x: u32, y: u32) -> PathBuf {
    mask_with(path, w, h, 255, move |a, b| a == x && b == y)
}

/// Write bytes that are not an image.
pub fn garbage(path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"this is not an image").unwrap();
    path.to_path_buf()
}

pub fn write(path: impl AsRef<Path>, text: &str) {
    let path = path.as_ref();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A complete two-category MVTec tree; masks are written in reverse order and each marks a
/// different pixel, so pairing by position instead of stem would be caught.
pub fn mvtec_tree(root: &Path) {
    for cls in ["bottle", "metal_nut"] {
        image(root.join(cls).join("train/good/000.png"), 8, 8);
        image(root.join(cls).join("train/good/001.png"), 8, 8);
        image(root.join(cls).join("test/good/000.png"), 8, 8);
        for (i, stem) in ["002", "001", "000"].iter().enumerate() {
            image(root.join(cls).join(format!("test/broken/{stem}.png")), 8, 8);
            let x: u32 = stem.parse().unwrap();
            let _ = i;
            mask_at(
                root.join(cls)
                    .join(format!("ground_truth/broken/{stem}_mask.png")),
                8,
                8,
                x,
                0,
            );
        }
    }
}
