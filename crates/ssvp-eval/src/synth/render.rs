//! Procedural normal images (textures and simple objects) and the defects painted onto them.
//!
//! A normal image varies within its kind (phase, position, small rotation, brightness, noise);
//! defects are hard-edged and strongly coloured so they stand out from that variation. Each
//! defect paints whole pixels; the mask is then computed as "pixel differs from the normal
//! image", so it is exact by construction.

use image::{Rgb, RgbImage};

use super::rng::{cos, fbm, pixel_noise, sin, value_noise, SplitMix64, PI};
use super::{Defect, Kind};

/// A rendered normal image plus what defects need to know about it.
pub(crate) struct Base {
    pub image: RgbImage,
    /// What lies behind the object (objects only): a `missing` defect reveals it.
    pub background: Option<RgbImage>,
    /// Pixels that belong to the object (all `true` for textures).
    pub object: Vec<bool>,
}

fn to_u8(v: f64) -> u8 {
    (v.clamp(0.0, 255.0) + 0.5).floor() as u8
}

fn rgb(c: [f64; 3]) -> Rgb<u8> {
    Rgb([to_u8(c[0]), to_u8(c[1]), to_u8(c[2])])
}

fn scale(c: [f64; 3], s: f64) -> [f64; 3] {
    [c[0] * s, c[1] * s, c[2] * s]
}

fn textured(size: u32, f: impl Fn(f64, f64, u32, u32) -> [f64; 3]) -> Base {
    let image = RgbImage::from_fn(size, size, |x, y| rgb(f(x as f64, y as f64, x, y)));
    Base {
        image,
        background: None,
        object: vec![true; (size * size) as usize],
    }
}

pub(crate) fn render_normal(kind: Kind, size: u32, rng: &mut SplitMix64) -> Base {
    let s = size as f64;
    let noise_seed = rng.next_u64();
    let bright = rng.range(0.93, 1.07);
    match kind {
        Kind::Woven => {
            // Interlaced threads: the cell parity decides which direction is on top.
            let period = s / rng.range(14.0, 16.0);
            let (ox, oy) = (rng.range(0.0, period * 2.0), rng.range(0.0, period * 2.0));
            let base = scale([196.0, 176.0, 140.0], bright);
            textured(size, |x, y, px, py| {
                let (u, v) = ((x + ox) / period, (y + oy) / period);
                let (cu, cv) = (u.floor(), v.floor());
                let horizontal_on_top = ((cu + cv) as i64).rem_euclid(2) == 0;
                let across = if horizontal_on_top { v - cv } else { u - cu };
                let profile = sin(PI * across); // bright thread centre, dark gaps
                let shade = 0.62 + 0.38 * profile + 0.06 * (pixel_noise(px, py, noise_seed) - 0.5);
                let tint = if horizontal_on_top { 1.0 } else { 0.93 };
                scale(base, shade * tint)
            })
        }
        Kind::Grain => {
            // Wood: warped, nearly horizontal growth rings.
            let freq = rng.range(0.16, 0.2) * 256.0 / s;
            let phase = rng.range(0.0, 2.0 * PI);
            let warp = rng.range(10.0, 14.0) * s / 256.0;
            let base = scale([170.0, 112.0, 62.0], bright);
            textured(size, |x, y, px, py| {
                let w = fbm(x / (s / 4.0), y / (s / 8.0), 3, noise_seed) - 0.5;
                let ring = sin((y + warp * w * 4.0) * freq + phase);
                let fine = pixel_noise(px, py, noise_seed) - 0.5;
                let shade = 0.82 + 0.16 * ring * ring + 0.05 * fine;
                scale(base, shade)
            })
        }
        Kind::Speckle => {
            // Terrazzo-like gray with soft clouds and small dark/light grains.
            let base = 150.0 * bright;
            textured(size, |x, y, px, py| {
                let cloud = fbm(x / (s / 6.0), y / (s / 6.0), 4, noise_seed) - 0.5;
                let grain = pixel_noise(px, py, noise_seed);
                let g = if grain < 0.04 {
                    base * 0.55
                } else if grain > 0.96 {
                    base * 1.35
                } else {
                    base * (1.0 + 0.25 * cloud)
                };
                [g, g * 0.98, g * 0.95]
            })
        }
        Kind::Disc => {
            // A metal washer on a dark belt.
            let (cx, cy) = (s * rng.range(0.47, 0.53), s * rng.range(0.47, 0.53));
            let outer = s * rng.range(0.34, 0.36);
            let inner = outer * rng.range(0.34, 0.38);
            let background = RgbImage::from_fn(size, size, |x, y| {
                let n = pixel_noise(x, y, noise_seed) - 0.5;
                let g = 38.0 + 10.0 * n;
                rgb([g, g, g + 4.0])
            });
            let mut object = vec![false; (size * size) as usize];
            let mut image = background.clone();
            for y in 0..size {
                for x in 0..size {
                    let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                    let d2 = dx * dx + dy * dy;
                    if d2 <= outer * outer && d2 >= inner * inner {
                        object[(y * size + x) as usize] = true;
                        // Brushed metal: light from the top left, fine radial noise.
                        let light = 0.75 + 0.25 * (-(dx + dy) / (outer * 1.5));
                        let n = pixel_noise(x, y, noise_seed ^ 7) - 0.5;
                        let g = 185.0 * bright * (light + 0.05 * n);
                        image.put_pixel(x, y, rgb([g, g, g * 1.03]));
                    }
                }
            }
            Base {
                image,
                background: Some(background),
                object,
            }
        }
        Kind::Screw => {
            // A threaded bar with a round head, slightly rotated, on a light table.
            let angle = rng.range(-0.15, 0.15);
            let (sa, ca) = (sin(angle), cos(angle));
            let (cx, cy) = (s * rng.range(0.47, 0.53), s * rng.range(0.47, 0.53));
            let half_len = s * 0.33;
            let radius = s * 0.075;
            let head_r = s * 0.13;
            let pitch = s / 28.0;
            let background = RgbImage::from_fn(size, size, |x, y| {
                let n = pixel_noise(x, y, noise_seed) - 0.5;
                let g = 222.0 + 8.0 * n;
                rgb([g, g, g - 4.0])
            });
            let mut object = vec![false; (size * size) as usize];
            let mut image = background.clone();
            for y in 0..size {
                for x in 0..size {
                    let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                    // Into the screw's frame: u along the shaft, v across it.
                    let u = dx * ca + dy * sa;
                    let v = -dx * sa + dy * ca;
                    let head_u = u + half_len;
                    let in_head =
                        head_u * head_u + v * v <= head_r * head_r && u < -half_len + head_r * 0.4;
                    let tip = (half_len - u).min(radius) / radius; // taper at the tip
                    let in_shaft = u >= -half_len && u <= half_len && v.abs() <= radius * tip;
                    if !(in_head || in_shaft) {
                        continue;
                    }
                    object[(y * size + x) as usize] = true;
                    let n = pixel_noise(x, y, noise_seed ^ 11) - 0.5;
                    let round = 1.0 - 0.45 * (v / radius.max(1.0)).abs().min(1.0);
                    let g = if in_head {
                        120.0 * (0.8 + 0.2 * (1.0 - (v / head_r).abs()))
                    } else {
                        // Thread crests: slanted stripes along the shaft.
                        let t = (u + 0.3 * v) / pitch;
                        let crest = 0.75 + 0.25 * sin(2.0 * PI * t);
                        140.0 * round * crest
                    };
                    let g = g * bright + 6.0 * n;
                    image.put_pixel(x, y, rgb([g, g * 1.01, g * 1.05]));
                }
            }
            Base {
                image,
                background: Some(background),
                object,
            }
        }
        Kind::Board => {
            // A green circuit board with traces, pads and a black chip; the bare board shows
            // through where a part is missing.
            let (ox, oy) = (rng.range(-0.02, 0.02) * s, rng.range(-0.02, 0.02) * s);
            let board_col = scale([30.0, 110.0, 52.0], bright);
            let background = RgbImage::from_fn(size, size, |x, y| {
                let n = pixel_noise(x, y, noise_seed) - 0.5;
                rgb(scale(board_col, 1.0 + 0.06 * n))
            });
            let mut image = background.clone();
            let mut object = vec![false; (size * size) as usize];
            let grid = s / 8.0;
            let trace_w = (s / 110.0).max(1.0);
            let pad_r = s / 40.0;
            let chip = (s * 0.34 + ox, s * 0.38 + oy, s * 0.66 + ox, s * 0.62 + oy);
            for y in 0..size {
                for x in 0..size {
                    let (fx, fy) = (x as f64 + 0.5 - ox, y as f64 + 0.5 - oy);
                    let (gx, gy) = (fx / grid, fy / grid);
                    let (rx, ry) = (
                        (gx - gx.floor() - 0.5) * grid,
                        (gy - gy.floor() - 0.5) * grid,
                    );
                    let row_has_trace = (gy.floor() as i64).rem_euclid(2) == 0;
                    let on_trace = (row_has_trace && ry.abs() <= trace_w)
                        || ((gx.floor() as i64).rem_euclid(3) == 0 && rx.abs() <= trace_w);
                    let on_pad = rx * rx + ry * ry <= pad_r * pad_r;
                    let (xf, yf) = (x as f64 + 0.5, y as f64 + 0.5);
                    let on_chip = xf >= chip.0 && xf <= chip.2 && yf >= chip.1 && yf <= chip.3;
                    let n = pixel_noise(x, y, noise_seed ^ 3) - 0.5;
                    let col = if on_chip {
                        let g = 28.0 + 6.0 * n;
                        Some([g, g, g])
                    } else if on_pad {
                        Some(scale([214.0, 178.0, 84.0], bright + 0.05 * n))
                    } else if on_trace {
                        Some(scale([70.0, 160.0, 80.0], bright + 0.05 * n))
                    } else {
                        None
                    };
                    if let Some(c) = col {
                        object[(y * size + x) as usize] = true;
                        image.put_pixel(x, y, rgb(c));
                    }
                }
            }
            Base {
                image,
                background: Some(background),
                object,
            }
        }
    }
}

/// Paint `defect` onto `img`, a copy of `base.image`.
pub(crate) fn apply_defect(
    img: &mut RgbImage,
    base: &Base,
    defect: Defect,
    size: u32,
    rng: &mut SplitMix64,
) {
    let s = size as f64;
    let (cx, cy) = pick_point(base, size, rng);
    let on_object = |x: u32, y: u32| base.object[(y * size + x) as usize];
    let is_texture = base.background.is_none();
    match defect {
        Defect::Scratch => {
            // A straight thin line, much brighter than its surroundings.
            let angle = rng.range(0.0, PI);
            let len = s * rng.range(0.18, 0.3);
            let (dx, dy) = (cos(angle) * len * 0.5, sin(angle) * len * 0.5);
            let hw = (s / 200.0).max(0.75);
            paint_segment(
                img,
                (cx - dx, cy - dy),
                (cx + dx, cy + dy),
                hw,
                |x, y, old| (is_texture || on_object(x, y)).then(|| brighten(old, 95.0)),
            );
        }
        Defect::Crack => {
            // A dark jagged random walk.
            let mut angle = rng.range(0.0, 2.0 * PI);
            let (mut x, mut y) = (cx, cy);
            let step = s / 40.0;
            let hw = (s / 256.0).max(0.75);
            for _ in 0..rng.range(8.0, 13.0) as usize {
                angle += rng.range(-0.7, 0.7);
                let (nx, ny) = (x + cos(angle) * step, y + sin(angle) * step);
                paint_segment(img, (x, y), (nx, ny), hw, |px, py, old| {
                    (is_texture || on_object(px, py)).then(|| darken(old, 0.25))
                });
                (x, y) = (nx, ny);
            }
        }
        Defect::Hole => {
            // A round hole: near-black inside, a lighter rim.
            let r = s * rng.range(0.035, 0.06);
            let rim = r + (s / 128.0).max(1.0);
            paint_region(img, size, cx, cy, rim, |x, y, old, d2| {
                if !(is_texture || on_object(x, y)) {
                    None
                } else if d2 <= r * r {
                    Some(Rgb([12, 10, 10]))
                } else if d2 <= rim * rim {
                    Some(brighten(old, 55.0))
                } else {
                    None
                }
            });
        }
        Defect::Stain => {
            // An irregular brownish blot that darkens what it covers.
            let r = s * rng.range(0.06, 0.1);
            let seed = rng.next_u64();
            paint_region(img, size, cx, cy, r * 1.4, |x, y, old, d2| {
                let n = value_noise(x as f64 / (r * 0.35), y as f64 / (r * 0.35), seed);
                let edge = r * (0.65 + 0.6 * n);
                ((is_texture || on_object(x, y)) && d2 <= edge * edge).then(|| {
                    let p = old.0;
                    Rgb([
                        to_u8(p[0] as f64 * 0.45 + 40.0),
                        to_u8(p[1] as f64 * 0.35 + 22.0),
                        to_u8(p[2] as f64 * 0.25 + 8.0),
                    ])
                })
            });
        }
        Defect::ColorSpot => {
            // A small saturated spot of a colour the kind never shows.
            let r = s * rng.range(0.025, 0.045);
            let colours = [[220u8, 30, 40], [40, 70, 230], [230, 40, 200]];
            let c = colours[rng.below(colours.len() as u64) as usize];
            paint_region(img, size, cx, cy, r, |x, y, _, d2| {
                ((is_texture || on_object(x, y)) && d2 <= r * r).then_some(Rgb(c))
            });
        }
        Defect::Missing => {
            // A chunk of the object is gone: the background shows through.
            let r = s * rng.range(0.08, 0.12);
            let bg = base
                .background
                .as_ref()
                .expect("missing-part defects are only defined for objects");
            paint_region(img, size, cx, cy, r, |x, y, _, d2| {
                (on_object(x, y) && d2 <= r * r).then(|| *bg.get_pixel(x, y))
            });
        }
    }
}

/// A random point on the object (anywhere for textures), away from the border.
fn pick_point(base: &Base, size: u32, rng: &mut SplitMix64) -> (f64, f64) {
    let s = size as f64;
    let mut last = (s * 0.5, s * 0.5);
    for _ in 0..200 {
        let (x, y) = (rng.range(0.15, 0.85) * s, rng.range(0.15, 0.85) * s);
        last = (x, y);
        if base.object[(y as u32 * size + x as u32) as usize] {
            return (x, y);
        }
    }
    last
}

fn brighten(p: &Rgb<u8>, by: f64) -> Rgb<u8> {
    Rgb(p.0.map(|v| to_u8(v as f64 + by)))
}

fn darken(p: &Rgb<u8>, factor: f64) -> Rgb<u8> {
    Rgb(p.0.map(|v| to_u8(v as f64 * factor)))
}

/// Apply `f(x, y, old, squared distance)` to the pixels whose centre lies within `r` of
/// (cx, cy); `None` leaves the pixel alone.
fn paint_region(
    img: &mut RgbImage,
    size: u32,
    cx: f64,
    cy: f64,
    r: f64,
    f: impl Fn(u32, u32, &Rgb<u8>, f64) -> Option<Rgb<u8>>,
) {
    let x0 = (cx - r).floor().max(0.0) as u32;
    let y0 = (cy - r).floor().max(0.0) as u32;
    let x1 = ((cx + r).ceil() as i64).clamp(0, size as i64 - 1) as u32;
    let y1 = ((cy + r).ceil() as i64).clamp(0, size as i64 - 1) as u32;
    for y in y0..=y1 {
        for x in x0..=x1 {
            let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
            let d2 = dx * dx + dy * dy;
            if d2 > r * r {
                continue;
            }
            if let Some(p) = f(x, y, img.get_pixel(x, y), d2) {
                img.put_pixel(x, y, p);
            }
        }
    }
}

/// Apply `f` to the pixels whose centre lies within `hw` of the segment a–b.
fn paint_segment(
    img: &mut RgbImage,
    a: (f64, f64),
    b: (f64, f64),
    hw: f64,
    f: impl Fn(u32, u32, &Rgb<u8>) -> Option<Rgb<u8>>,
) {
    let (w, h) = img.dimensions();
    let x0 = (a.0.min(b.0) - hw).floor().max(0.0) as u32;
    let y0 = (a.1.min(b.1) - hw).floor().max(0.0) as u32;
    let x1 = ((a.0.max(b.0) + hw).ceil() as i64).clamp(0, w as i64 - 1) as u32;
    let y1 = ((a.1.max(b.1) + hw).ceil() as i64).clamp(0, h as i64 - 1) as u32;
    let (vx, vy) = (b.0 - a.0, b.1 - a.1);
    let len2 = (vx * vx + vy * vy).max(1e-12);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let (px, py) = (x as f64 + 0.5 - a.0, y as f64 + 0.5 - a.1);
            let t = ((px * vx + py * vy) / len2).clamp(0.0, 1.0);
            let (ex, ey) = (px - t * vx, py - t * vy);
            if ex * ex + ey * ey <= hw * hw {
                if let Some(p) = f(x, y, img.get_pixel(x, y)) {
                    img.put_pixel(x, y, p);
                }
            }
        }
    }
}
