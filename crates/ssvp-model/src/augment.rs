//! The training-time augmentation policy: which of the baseline's transforms an image gets, with
//! which parameters (drawn from the run's seeded generator), and applying them to the image and
//! its mask together.
//!
//! The operations themselves live in `ssvp_image::augment`. A plan is drawn per image from the
//! generator of its step (`(seed, AUGMENT, step)`, then the images of the batch in order), so a
//! resumed run augments exactly as an uninterrupted one would.

use std::collections::HashMap;
use std::path::Path;

use ssvp_eval::postprocess::{resize_mask, GtMask};
use ssvp_image::augment::{self as ops, ColorJitter, JitterOp};
use ssvp_image::{GrayImage8, RgbImage8};

use crate::config::{AugmentConfig, MosaicWhen};
use crate::error::{Error, Result};
use crate::rng::{Rng, STREAM_AUGMENT};
use crate::samples::TrainSample;
use ssvp_eval::datasets::load_gt_mask;

/// The choice of the baseline's `OneOf` step.
#[derive(Debug, Clone, PartialEq)]
pub enum BlurChoice {
    /// `cv2.blur` with a `ksize x ksize` box.
    Box {
        /// Side of the box.
        ksize: usize,
    },
    /// torchvision's `ColorJitter` with drawn factors and order.
    ColorJitter(ColorJitter),
    /// `cv2.GaussianBlur` with OpenCV's sigma for the kernel size.
    Gaussian {
        /// Side of the kernel.
        ksize: usize,
    },
}

/// The transforms one training image gets, in the order they are applied.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AugmentPlan {
    /// Replace the image by a mosaic of these four samples (indices into the training set).
    pub mosaic: Option<[usize; 4]>,
    /// Rotate by this many degrees (counter-clockwise), the mask with it.
    pub rotate_degrees: Option<f64>,
    /// Turn by this many quarter turns, the mask with it.
    pub quarter_turns: Option<u32>,
    /// `(alpha, beta)` of `v * alpha + beta * 255`.
    pub brightness_contrast: Option<(f64, f64)>,
    /// `(sigma, seed)`: the noise values come from a generator of their own.
    pub noise: Option<(f64, u64)>,
    /// The `OneOf` blur / colour-jitter step.
    pub blur: Option<BlurChoice>,
}

impl AugmentPlan {
    /// True when the plan leaves the image as it is (its cached features can be used).
    pub fn is_identity(&self) -> bool {
        self.mosaic.is_none()
            && self.rotate_degrees.is_none()
            && self.quarter_turns.is_none_or(|k| k % 4 == 0)
            && self.brightness_contrast.is_none()
            && self.noise.is_none()
            && self.blur.is_none()
    }

    /// Draws the plan of one image. `mosaic_pool` holds the anomalous samples of the image's
    /// category when the mosaic may apply (`None` or empty: never).
    pub(crate) fn draw(cfg: &AugmentConfig, rng: &mut Rng, mosaic_pool: Option<&[usize]>) -> Self {
        // Every decision consumes its draw whatever the probability, so changing one
        // probability does not reshuffle the others.
        let mut plan = Self::default();
        if rng.unit() < cfg.mosaic_p {
            if let Some(pool) = mosaic_pool.filter(|p| !p.is_empty()) {
                plan.mosaic = Some(std::array::from_fn(|_| pool[rng.below(pool.len())]));
            }
        }
        let symmetric = |rng: &mut Rng, limit: f64| (2.0 * rng.unit() - 1.0) * limit;
        if rng.unit() < cfg.rotate_p {
            plan.rotate_degrees = Some(symmetric(rng, cfg.rotate_limit));
        }
        if rng.unit() < cfg.rot90_p {
            plan.quarter_turns = Some(rng.below(4) as u32);
        }
        if rng.unit() < cfg.brightness_contrast_p {
            let beta = symmetric(rng, cfg.brightness_limit);
            let alpha = 1.0 + symmetric(rng, cfg.contrast_limit);
            plan.brightness_contrast = Some((alpha, beta));
        }
        if rng.unit() < cfg.noise_p {
            let [lo, hi] = cfg.noise_var;
            let var = lo + (hi - lo) * rng.unit();
            plan.noise = Some((var.sqrt(), rng.next_u64()));
        }
        if rng.unit() < cfg.blur_p {
            plan.blur = Some(match rng.below(3) {
                0 => BlurChoice::Box { ksize: 3 },
                1 => {
                    let factor = |r: &mut Rng| 1.0 + symmetric(r, 0.2);
                    let brightness = factor(rng);
                    let contrast = factor(rng);
                    let saturation = factor(rng);
                    let hue = symmetric(rng, 0.2);
                    let mut order = [
                        JitterOp::Brightness,
                        JitterOp::Contrast,
                        JitterOp::Saturation,
                        JitterOp::Hue,
                    ];
                    for i in (1..4).rev() {
                        order.swap(i, rng.below(i + 1));
                    }
                    BlurChoice::ColorJitter(ColorJitter {
                        brightness,
                        contrast,
                        saturation,
                        hue,
                        order,
                    })
                }
                _ => BlurChoice::Gaussian {
                    ksize: 3 + 2 * rng.below(3),
                },
            });
        }
        plan
    }

    /// Applies the plan to `image` and `mask` (same size). `tile` loads the image and mask of a
    /// training sample for the mosaic.
    pub fn apply(
        &self,
        image: RgbImage8,
        mask: GrayImage8,
        tile: &dyn Fn(usize) -> Result<(RgbImage8, GrayImage8)>,
    ) -> Result<(RgbImage8, GrayImage8)> {
        let op = |what: &str| {
            let what = what.to_string();
            move |source| Error::Image {
                context: what,
                source,
            }
        };
        let (mut image, mut mask) = match self.mosaic {
            Some(ids) => {
                let tiles = ids.iter().map(|&i| tile(i)).collect::<Result<Vec<_>>>()?;
                ops::mosaic_2x2(std::array::from_fn(|i| (&tiles[i].0, &tiles[i].1)))
                    .map_err(op("mosaic"))?
            }
            None => (image, mask),
        };
        if let Some(deg) = self.rotate_degrees {
            image = ops::rotate(&image, deg);
            mask = ops::rotate_mask(&mask, deg);
        }
        if let Some(k) = self.quarter_turns {
            image = ops::rot90(&image, k);
            mask = ops::rot90_mask(&mask, k);
        }
        if let Some((alpha, beta)) = self.brightness_contrast {
            image = ops::brightness_contrast(&image, alpha, beta);
        }
        if let Some((sigma, seed)) = self.noise {
            let mut rng = Rng::new(seed, 0, 0);
            image = ops::add_gaussian_noise(&image, sigma, || rng.normal());
        }
        match &self.blur {
            Some(BlurChoice::Box { ksize }) => {
                image = ops::box_blur(&image, *ksize).map_err(op("box blur"))?
            }
            Some(BlurChoice::Gaussian { ksize }) => {
                image = ops::gaussian_blur(&image, *ksize, 0.0).map_err(op("Gaussian blur"))?
            }
            Some(BlurChoice::ColorJitter(j)) => image = ops::color_jitter(&image, j),
            None => {}
        }
        Ok((image, mask))
    }
}

/// Draws the plans of training batches: the configuration plus, per category, the anomalous
/// samples a mosaic may be built from.
pub(crate) struct Augmenter<'a> {
    cfg: &'a AugmentConfig,
    /// Anomalous samples with masks, per category; empty when the mosaic is off for this data.
    mosaic_pools: HashMap<&'a str, Vec<usize>>,
}

impl<'a> Augmenter<'a> {
    /// `layout` is the training data's layout name (the mosaic's `mvtec-only` rule reads it).
    pub(crate) fn new(cfg: &'a AugmentConfig, samples: &'a [TrainSample], layout: &str) -> Self {
        let mosaic = match cfg.mosaic {
            MosaicWhen::Always => true,
            MosaicWhen::MvtecOnly => layout == "mvtec",
            MosaicWhen::Never => false,
        };
        let mut mosaic_pools: HashMap<&str, Vec<usize>> = HashMap::new();
        if mosaic && cfg.mosaic_p > 0.0 {
            for (i, s) in samples.iter().enumerate() {
                if s.anomalous && s.mask_path.is_some() {
                    mosaic_pools.entry(s.category.as_str()).or_default().push(i);
                }
            }
        }
        Self { cfg, mosaic_pools }
    }

    /// The plans of the images of step `step`'s batch (`batch` indexes `samples`).
    pub(crate) fn plans(
        &self,
        seed: u64,
        step: usize,
        batch: &[usize],
        samples: &[TrainSample],
    ) -> Vec<AugmentPlan> {
        let mut rng = Rng::new(seed, STREAM_AUGMENT, step as u64);
        batch
            .iter()
            .map(|&i| {
                let pool = self.mosaic_pools.get(samples[i].category.as_str());
                AugmentPlan::draw(self.cfg, &mut rng, pool.map(Vec::as_slice))
            })
            .collect()
    }
}

/// Reads a training image and its mask at the image's size (255 = defect; all zero when there
/// is no mask file). A mask of another size is brought to the image's by the evaluation
/// protocol (PIL bilinear on 0/255, then `>= 128`).
pub fn load_image_and_mask(
    image_path: &Path,
    mask_path: Option<&Path>,
) -> Result<(RgbImage8, GrayImage8)> {
    let image = ssvp_image::load_rgb8(image_path).map_err(|source| Error::Image {
        context: format!("cannot read image {}", image_path.display()),
        source,
    })?;
    let (w, h) = (image.width, image.height);
    let mask_buffer = |source| Error::Image {
        context: format!("the mask of {}", image_path.display()),
        source,
    };
    let Some(mask_path) = mask_path else {
        return Ok((
            image,
            GrayImage8::from_raw(w, h, vec![0; w * h]).map_err(mask_buffer)?,
        ));
    };
    let mut grid = load_gt_mask(mask_path).map_err(|source| Error::Dataset {
        context: format!("the mask of {}", image_path.display()),
        source,
    })?;
    if grid.size() != (w, h) {
        grid = resize_mask(&grid, w, h)?;
    }
    let data = grid.data.iter().map(|&m| if m { 255 } else { 0 }).collect();
    Ok((
        image,
        GrayImage8::from_raw(w, h, data).map_err(mask_buffer)?,
    ))
}

/// Refuses a zero training mask size (the one place this is checked).
pub(crate) fn check_mask_size(size: usize) -> Result<()> {
    if size == 0 {
        return Err(Error::Config(
            "the training mask size must be positive".into(),
        ));
    }
    Ok(())
}

/// A `size x size` training mask (1 = defect) from a 0/255 mask, by the evaluation protocol.
pub fn mask_to_training(mask: &GrayImage8, size: usize) -> Result<Vec<f32>> {
    check_mask_size(size)?;
    let grid = GtMask::new(
        mask.width,
        mask.height,
        mask.data.iter().map(|&v| v != 0).collect(),
    )?;
    Ok(grid_values(&resize_mask(&grid, size, size)?))
}

/// A binary grid as training targets: 1 = defect, 0 = normal.
pub fn grid_values(grid: &GtMask) -> Vec<f32> {
    grid.data
        .iter()
        .map(|&m| if m { 1.0 } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_on() -> AugmentConfig {
        AugmentConfig {
            enabled: true,
            rotate_p: 1.0,
            rot90_p: 1.0,
            brightness_contrast_p: 1.0,
            noise_p: 1.0,
            blur_p: 1.0,
            mosaic_p: 1.0,
            ..AugmentConfig::default()
        }
    }

    #[test]
    fn draws_respect_the_configured_ranges_and_probabilities() {
        let cfg = AugmentConfig::default();
        let mut counts = [0usize; 6];
        let n = 4000;
        for i in 0..n {
            let mut rng = Rng::new(5, 9, i);
            let plan = AugmentPlan::draw(&cfg, &mut rng, Some(&[3, 4]));
            if let Some(ids) = plan.mosaic {
                assert!(ids.iter().all(|i| [3, 4].contains(i)));
                counts[0] += 1;
            }
            if let Some(d) = plan.rotate_degrees {
                assert!(d.abs() <= 30.0);
                counts[1] += 1;
            }
            if let Some(k) = plan.quarter_turns {
                assert!(k < 4);
                counts[2] += 1;
            }
            if let Some((a, b)) = plan.brightness_contrast {
                assert!((a - 1.0).abs() <= 0.2 && b.abs() <= 0.2);
                counts[3] += 1;
            }
            if let Some((sigma, _)) = plan.noise {
                assert!((10f64.sqrt()..=50f64.sqrt()).contains(&sigma));
                counts[4] += 1;
            }
            match plan.blur {
                Some(BlurChoice::Gaussian { ksize }) => assert!([3, 5, 7].contains(&ksize)),
                Some(BlurChoice::ColorJitter(j)) => {
                    assert!((j.hue).abs() <= 0.2 && (j.saturation - 1.0).abs() <= 0.2);
                    let mut order = j.order.map(|o| o as usize);
                    order.sort();
                    assert_eq!(order, [0, 1, 2, 3]);
                }
                _ => {}
            }
            if plan.blur.is_some() {
                counts[5] += 1;
            }
        }
        let expect = [0.4, 0.5, 0.5, 0.5, 0.5, 0.5];
        for (c, p) in counts.iter().zip(expect) {
            let f = *c as f64 / n as f64;
            assert!((f - p).abs() < 0.04, "{counts:?}");
        }
        // No pool, no mosaic; all probabilities 0: the identity.
        let mut rng = Rng::new(1, 2, 3);
        assert!(AugmentPlan::draw(&all_on(), &mut rng, None)
            .mosaic
            .is_none());
        let off = AugmentConfig {
            rotate_p: 0.0,
            rot90_p: 0.0,
            brightness_contrast_p: 0.0,
            noise_p: 0.0,
            blur_p: 0.0,
            mosaic_p: 0.0,
            ..AugmentConfig::default()
        };
        assert!(AugmentPlan::draw(&off, &mut rng, Some(&[1])).is_identity());
    }

    #[test]
    fn applying_a_plan_moves_the_mask_with_the_image_and_is_deterministic() {
        let (w, h) = (24, 16);
        let inside = |x: usize, y: usize| (3..9).contains(&x) && (2..6).contains(&y);
        let image = RgbImage8::from_raw(
            w,
            h,
            (0..w * h)
                .flat_map(|i| [if inside(i % w, i / w) { 250 } else { 10 }; 3])
                .collect(),
        )
        .unwrap();
        let mask = GrayImage8::from_raw(
            w,
            h,
            (0..w * h)
                .map(|i| if inside(i % w, i / w) { 255 } else { 0 })
                .collect(),
        )
        .unwrap();
        let tile = |_: usize| Ok((image.clone(), mask.clone()));
        let mut rng = Rng::new(7, 1, 1);
        let plan = AugmentPlan::draw(&all_on(), &mut rng, Some(&[0, 1, 2]));
        assert!(plan.mosaic.is_some() && !plan.is_identity());
        let (a_img, a_mask) = plan.apply(image.clone(), mask.clone(), &tile).unwrap();
        let (b_img, b_mask) = plan.apply(image.clone(), mask.clone(), &tile).unwrap();
        assert_eq!((&a_img, &a_mask), (&b_img, &b_mask));
        // The mosaic doubles both sides (quarter turns may swap them); the mask stays binary
        // and its area is about four squares.
        assert_eq!(a_img.width * a_img.height, 4 * w * h);
        assert_eq!((a_mask.width, a_mask.height), (a_img.width, a_img.height));
        assert!(a_mask.data.iter().all(|&v| v == 0 || v == 255));
        let marked = a_mask.data.iter().filter(|&&v| v == 255).count();
        assert!((4 * 24 - 20..=4 * 24 + 20).contains(&marked), "{marked}");
        // Geometry only (photometric steps off): bright pixels and mask agree.
        let geo = AugmentPlan {
            rotate_degrees: Some(17.0),
            quarter_turns: Some(3),
            ..AugmentPlan::default()
        };
        let (g_img, g_mask) = geo.apply(image.clone(), mask.clone(), &tile).unwrap();
        let disagree = (0..w * h)
            .filter(|&i| (g_img.data[i * 3] >= 130) != (g_mask.data[i] == 255))
            .count();
        assert!(disagree <= 6, "{disagree}");
    }

    #[test]
    fn training_masks_follow_the_evaluation_protocol() {
        let mask = GrayImage8::from_raw(4, 4, [0, 0, 255, 255].repeat(4)).unwrap();
        assert_eq!(
            mask_to_training(&mask, 2).unwrap(),
            vec![0.0, 1.0, 0.0, 1.0]
        );
        assert!(mask_to_training(&mask, 0).is_err());
    }
}
