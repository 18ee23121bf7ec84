//! Model input preprocessing: resize (and optionally centre-crop) an RGB8 image, scale to [0, 1]
//! and normalise with the checkpoint's mean/std, giving a CHW `f32` buffer.

use crate::decode::RgbImage8;
use crate::error::{Error, Result};
use crate::resize::{resize_f32_bilinear_antialias, resize_u8, Filter};

/// OpenAI CLIP per-channel means (RGB, after scaling to [0, 1]), written as published; they
/// round to the same `f32` values torch uses (so does [`CLIP_STD`]).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP per-channel standard deviations (RGB), the divisor paired with [`CLIP_MEAN`].
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];
/// ImageNet per-channel means (RGB, after scaling to [0, 1]), used by the DINOv3 LVD-1689M
/// checkpoints.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviations (RGB), paired with [`IMAGENET_MEAN`].
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Per-channel means (RGB, after scaling to [0, 1]) of the DINOv3 SAT-493M (satellite)
/// checkpoints.
pub const SAT493M_MEAN: [f32; 3] = [0.430, 0.411, 0.296];
/// Per-channel standard deviations (RGB) of the SAT-493M checkpoints, paired with
/// [`SAT493M_MEAN`].
pub const SAT493M_STD: [f32; 3] = [0.213, 0.156, 0.143];

/// How the image is brought to the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    /// Resize straight to `width` x `height`, ignoring the aspect ratio (the AD convention of
    /// AnomalyCLIP / AdaCLIP / APRIL-GAN, and DINOv3's square resize).
    Squash,
    /// CLIP's standard: shortest side to the (square) target size, the other side to
    /// `floor(size * long / short)`, then a centre crop whose offsets are
    /// `round((resized - size) / 2)` with round-half-to-even, as torchvision's `CenterCrop` does
    /// (HF's `CLIPImageProcessor` floors instead, which can shift the crop by one pixel).
    ShortestSideCenterCrop,
}

/// Resampling used by the resize step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// Pillow bicubic on the 8-bit image (CLIP pipelines resize PIL images).
    PillowBicubic,
    /// Pillow bilinear on the 8-bit image.
    PillowBilinear,
    /// Bilinear with antialiasing on the float image after scaling to [0, 1], like torchvision's
    /// `ToTensor` then `Resize(antialias=True)` and HF's `DINOv3ViTImageProcessor`.
    TorchBilinearAntialias,
}

/// A normalised image in channel-major order: `data[(c * height + y) * width + x]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Chw {
    /// Number of channels (3 for the model inputs built here).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// `channels * height * width` values, channel-major.
    pub data: Vec<f32>,
}

/// Where the model input comes from in the original image: resized size and crop offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Width of the image after the resize step, before any crop.
    pub resized_width: usize,
    /// Height of the image after the resize step, before any crop.
    pub resized_height: usize,
    /// Columns cut from the left of the resized image (0 without a crop).
    pub crop_left: usize,
    /// Rows cut from the top of the resized image (0 without a crop).
    pub crop_top: usize,
}

/// A full preprocessing recipe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    /// Width of the model input in pixels.
    pub width: usize,
    /// Height of the model input in pixels.
    pub height: usize,
    /// How the image is brought to `width` x `height`.
    pub mode: ResizeMode,
    /// The resampling filter of the resize step.
    pub resample: Resample,
    /// Per-channel means (RGB) subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviations (RGB) the centred values are divided by.
    pub std: [f32; 3],
}

impl Preprocess {
    /// CLIP at `size` x `size` with the AD convention (squash, Pillow bicubic, OpenAI mean/std).
    pub fn clip(size: usize) -> Self {
        Self {
            width: size,
            height: size,
            mode: ResizeMode::Squash,
            resample: Resample::PillowBicubic,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// CLIP's original recipe: shortest side to `size`, centre crop (see [`ResizeMode`]).
    pub fn clip_center_crop(size: usize) -> Self {
        Self {
            mode: ResizeMode::ShortestSideCenterCrop,
            ..Self::clip(size)
        }
    }

    /// DINOv3 (LVD-1689M weights) at `size` x `size`: float bilinear antialiased resize,
    /// ImageNet mean/std. Use [`Preprocess::with_size`] for non-square inputs.
    pub fn dinov3(size: usize) -> Self {
        Self {
            width: size,
            height: size,
            mode: ResizeMode::Squash,
            resample: Resample::TorchBilinearAntialias,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// DINOv2 as AnomalyDINO feeds it, at `size` x `size`: torchvision's `Resize` on a PIL
    /// image (Pillow bicubic on the 8-bit image), then ImageNet mean/std. AnomalyDINO resizes
    /// the smaller edge and keeps the aspect ratio; a square input is the same.
    pub fn dinov2(size: usize) -> Self {
        Self {
            resample: Resample::PillowBicubic,
            ..Self::dinov3(size)
        }
    }

    /// DINOv3 with the SAT-493M checkpoint constants.
    pub fn dinov3_sat(size: usize) -> Self {
        Self {
            mean: SAT493M_MEAN,
            std: SAT493M_STD,
            ..Self::dinov3(size)
        }
    }

    /// The same recipe at another output size (e.g. a non-square DINOv3 input; multiples of the
    /// patch size are the caller's concern).
    pub fn with_size(self, width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            ..self
        }
    }

    fn validate(&self) -> Result<()> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::Size(format!(
                "preprocess output size must be positive, got {}x{}",
                self.width, self.height
            )));
        }
        if self.mode == ResizeMode::ShortestSideCenterCrop && self.width != self.height {
            return Err(Error::Size(format!(
                "shortest-side + centre-crop needs a square output, got {}x{}",
                self.width, self.height
            )));
        }
        if self.std.iter().any(|&s| !(s.is_finite() && s != 0.0)) {
            return Err(Error::Size(format!("invalid std {:?}", self.std)));
        }
        Ok(())
    }

    /// Resize and crop geometry for an input of `width` x `height`.
    pub fn geometry(&self, width: usize, height: usize) -> Result<Geometry> {
        self.validate()?;
        if width == 0 || height == 0 {
            return Err(Error::Size(format!("empty input image {width}x{height}")));
        }
        Ok(match self.mode {
            ResizeMode::Squash => Geometry {
                resized_width: self.width,
                resized_height: self.height,
                crop_left: 0,
                crop_top: 0,
            },
            ResizeMode::ShortestSideCenterCrop => {
                let size = self.width;
                let (short, long) = (width.min(height), width.max(height));
                // torchvision: int(size * long / short), evaluated in double precision.
                let new_long = (size as f64 * long as f64 / short as f64) as usize;
                let (rw, rh) = if width <= height {
                    (size, new_long)
                } else {
                    (new_long, size)
                };
                Geometry {
                    resized_width: rw,
                    resized_height: rh,
                    crop_left: round_half_even_half(rw - size),
                    crop_top: round_half_even_half(rh - size),
                }
            }
        })
    }

    /// Runs the recipe on an RGB8 image.
    pub fn apply(&self, img: &RgbImage8) -> Result<Chw> {
        let g = self.geometry(img.width, img.height)?;
        if img.data.len() != img.width * img.height * 3 {
            return Err(Error::Buffer(format!(
                "RGB image {}x{} has {} bytes",
                img.width,
                img.height,
                img.data.len()
            )));
        }
        let (rw, rh) = (g.resized_width, g.resized_height);
        // Interleaved values in [0, 1] after the resize, as f32.
        let resized: Vec<f32> = match self.resample {
            Resample::PillowBicubic | Resample::PillowBilinear => {
                let filter = if self.resample == Resample::PillowBicubic {
                    Filter::PillowBicubic
                } else {
                    Filter::PillowBilinear
                };
                resize_u8(&img.data, img.width, img.height, 3, rw, rh, filter)?
                    .into_iter()
                    .map(|v| v as f32 / 255.0)
                    .collect()
            }
            Resample::TorchBilinearAntialias => {
                let unit: Vec<f32> = img.data.iter().map(|&v| v as f32 / 255.0).collect();
                resize_f32_bilinear_antialias(&unit, img.width, img.height, 3, rw, rh)?
            }
        };
        let (w, h) = (self.width, self.height);
        let mut data = vec![0f32; 3 * h * w];
        for c in 0..3 {
            let (mean, std) = (self.mean[c], self.std[c]);
            let plane = &mut data[c * h * w..(c + 1) * h * w];
            for y in 0..h {
                let row = (y + g.crop_top) * rw;
                for x in 0..w {
                    let v = resized[(row + x + g.crop_left) * 3 + c];
                    plane[y * w + x] = (v - mean) / std;
                }
            }
        }
        Ok(Chw {
            channels: 3,
            height: h,
            width: w,
            data,
        })
    }
}

/// `round(d / 2)` with Python's round-half-to-even, as torchvision's centre crop computes it.
fn round_half_even_half(d: usize) -> usize {
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_offsets_round_half_to_even() {
        // round(0.5)=0, round(1.5)=2, round(2.5)=2, round(3.5)=4
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 6, 7].map(round_half_even_half),
            [0, 0, 1, 2, 2, 2, 3, 4]
        );
    }

    #[test]
    fn geometry_of_clip_crop() {
        let p = Preprocess::clip_center_crop(336);
        let g = p.geometry(1024, 768).unwrap();
        assert_eq!((g.resized_width, g.resized_height), (448, 336));
        assert_eq!((g.crop_left, g.crop_top), (56, 0));
        assert!(Preprocess::clip(0).geometry(10, 10).is_err());
        assert!(Preprocess::clip_center_crop(10)
            .with_size(10, 12)
            .geometry(10, 10)
            .is_err());
    }
}
