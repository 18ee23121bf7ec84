//! Overlays and encoders: colour mapping, blending, outlines, and encoder round trips.

use ssvp_image::{
    blend, color_bar, colorize, decode_rgb8, draw_outlines, encode_jpeg_rgb8, encode_png_gray16,
    encode_png_rgb8, encode_tiff_gray32f, jet, resize_rgb8, ColorScale, Error, RgbImage8,
};

fn image(width: usize, height: usize, seed: u8) -> RgbImage8 {
    let data = (0..width * height * 3)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
        .collect();
    RgbImage8::from_raw(width, height, data).unwrap()
}

#[test]
fn jet_endpoints_and_midpoint() {
    assert_eq!(jet(0.0), [0, 0, 128]);
    assert_eq!(jet(1.0), [128, 0, 0]);
    let mid = jet(0.5);
    assert!((124..=125).contains(&mid[0]), "{mid:?}");
    assert_eq!(mid[1], 255);
    assert_eq!(mid[2], 122);
}

#[test]
fn colorize_uses_a_fixed_clamped_scale() {
    let scale = ColorScale::new(0.25, 0.75).unwrap();
    let values = [-5.0, 0.25, 0.5, 0.75, 9.0, f32::NAN];
    let img = colorize(&values, 3, 2, scale).unwrap();
    let px: Vec<[u8; 3]> = img.data.chunks(3).map(|p| [p[0], p[1], p[2]]).collect();
    assert_eq!(px[0], jet(0.0));
    assert_eq!(px[1], jet(0.0));
    assert_eq!(px[2], jet(0.5));
    assert_eq!(px[3], jet(1.0));
    assert_eq!(px[4], jet(1.0));
    assert_eq!(px[5], jet(0.0), "NaN is drawn as lo");

    assert!(matches!(
        colorize(&values, 4, 2, scale),
        Err(Error::Buffer(_))
    ));
    let flat = ColorScale { lo: 1.0, hi: 1.0 };
    assert!(colorize(&values, 3, 2, flat).is_err());
}

#[test]
fn blend_weights() {
    let base = image(4, 3, 1);
    let heat = image(4, 3, 99);
    assert_eq!(blend(&base, &heat, 0.0).unwrap(), base);
    assert_eq!(blend(&base, &heat, 1.0).unwrap(), heat);
    let half = blend(&base, &heat, 0.5).unwrap();
    for ((&o, &b), &h) in half.data.iter().zip(&base.data).zip(&heat.data) {
        assert_eq!(o, ((b as f32 + h as f32) / 2.0).round() as u8);
    }
    assert!(matches!(
        blend(&base, &image(3, 4, 0), 0.5),
        Err(Error::Size(_))
    ));
    assert!(blend(&base, &heat, 1.5).is_err());
    assert!(blend(&base, &heat, f32::NAN).is_err());
}

fn square_mask(w: usize, h: usize, x0: usize, y0: usize, side: usize) -> Vec<bool> {
    (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y)
        })
        .collect()
}

fn painted(before: &RgbImage8, after: &RgbImage8) -> Vec<bool> {
    before
        .data
        .chunks(3)
        .zip(after.data.chunks(3))
        .map(|(a, b)| a != b)
        .collect()
}

#[test]
fn outlines_paint_exactly_the_region_border() {
    let base = RgbImage8::from_raw(10, 10, vec![0; 300]).unwrap();
    let mask = square_mask(10, 10, 3, 3, 4);
    let mut img = base.clone();
    draw_outlines(&mut img, &mask, [255, 0, 0], 1).unwrap();
    let p = painted(&base, &img);
    assert_eq!(p.iter().filter(|&&b| b).count(), 12);
    for y in 0..10 {
        for x in 0..10 {
            let border = (3..7).contains(&x)
                && (3..7).contains(&y)
                && (x == 3 || x == 6 || y == 3 || y == 6);
            assert_eq!(p[y * 10 + x], border, "({x}, {y})");
            if border {
                assert_eq!(img.data[(y * 10 + x) * 3..][..3], [255, 0, 0]);
            }
        }
    }

    // Thickness 3: the ring dilated by one pixel each way covers the 6x6 square around it
    // (the 2x2 interior is within one pixel of the ring).
    let mut thick = base.clone();
    draw_outlines(&mut thick, &mask, [0, 255, 0], 3).unwrap();
    let p = painted(&base, &thick);
    for y in 0..10 {
        for x in 0..10 {
            let expect = (2..8).contains(&x) && (2..8).contains(&y);
            assert_eq!(p[y * 10 + x], expect, "({x}, {y})");
        }
    }

    // A region touching the image border is closed by the border; thickness is clipped there.
    let mut edge = base.clone();
    let full = vec![true; 100];
    draw_outlines(&mut edge, &full, [1, 2, 3], 2).unwrap();
    let p = painted(&base, &edge);
    for y in 0..10 {
        for x in 0..10 {
            let expect = x <= 1 || y <= 1 || x == 9 || y == 9;
            assert_eq!(p[y * 10 + x], expect, "({x}, {y})");
        }
    }

    let mut none = base.clone();
    draw_outlines(&mut none, &mask, [1, 2, 3], 0).unwrap();
    assert_eq!(none, base);
    assert!(draw_outlines(&mut none, &mask[..99], [1, 2, 3], 1).is_err());
}

#[test]
fn color_bar_spans_the_map() {
    let bar = color_bar(256, 4);
    assert_eq!((bar.width, bar.height), (256, 4));
    assert_eq!(bar.data[..3], jet(0.0));
    assert_eq!(bar.data[255 * 3..256 * 3], jet(1.0));
}

#[test]
fn png_rgb8_round_trip() {
    let img = image(13, 7, 5);
    let png = encode_png_rgb8(&img).unwrap();
    assert_eq!(decode_rgb8(&png).unwrap(), img);
    let bad = RgbImage8 {
        width: 2,
        height: 2,
        data: vec![0; 5],
    };
    assert!(matches!(encode_png_rgb8(&bad), Err(Error::Buffer(_))));
}

#[test]
fn png_gray16_round_trip_keeps_16_bits() {
    let data: Vec<u16> = (0..6 * 4).map(|i| (i * 2731) as u16 ^ 0x00FF).collect();
    let png = encode_png_gray16(6, 4, &data).unwrap();
    // Big endian on disk, as PNG wants: the first sample's high byte comes first in IDAT, which
    // only a decoder can check; decode with `image` and compare the values.
    let decoded = image::load_from_memory(&png).unwrap();
    match decoded {
        image::DynamicImage::ImageLuma16(b) => {
            assert_eq!((b.width(), b.height()), (6, 4));
            assert_eq!(b.into_raw(), data);
        }
        other => panic!("decoded as {:?}", other.color()),
    }
    // And with the png crate directly, which returns raw big-endian bytes.
    let mut reader = png::Decoder::new(std::io::Cursor::new(&png))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut buf).unwrap();
    let raw: Vec<u16> = buf
        .chunks(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]))
        .collect();
    assert_eq!(raw, data);
    assert!(encode_png_gray16(6, 4, &data[1..]).is_err());
}

#[test]
fn jpeg_round_trip_is_close() {
    // A smooth image, so that JPEG's loss is small.
    let (w, h) = (32, 24);
    let data = (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [(x * 8) as u8, (y * 10) as u8, 128]
        })
        .collect();
    let img = RgbImage8::from_raw(w, h, data).unwrap();
    let jpg = encode_jpeg_rgb8(&img, 95).unwrap();
    assert_eq!(&jpg[..2], [0xFF, 0xD8]);
    let back = decode_rgb8(&jpg).unwrap();
    assert_eq!((back.width, back.height), (w, h));
    let mean_err = back
        .data
        .iter()
        .zip(&img.data)
        .map(|(&a, &b)| a.abs_diff(b) as f64)
        .sum::<f64>()
        / img.data.len() as f64;
    assert!(mean_err < 3.0, "mean abs error {mean_err}");
    assert!(encode_jpeg_rgb8(&img, 0).is_err());
    assert!(encode_jpeg_rgb8(&img, 101).is_err());
}

#[test]
fn tiff_gray32f_round_trip_is_exact() {
    use tiff::decoder::{Decoder, DecodingResult};
    let data = [0.1f32, -2.5, 3.25, 1e-8, 0.0, 7.0, f32::MAX, -0.0];
    let bytes = encode_tiff_gray32f(4, 2, &data).unwrap();
    let mut dec = Decoder::new(std::io::Cursor::new(bytes)).unwrap();
    assert_eq!(dec.dimensions().unwrap(), (4, 2));
    assert_eq!(dec.colortype().unwrap(), tiff::ColorType::Gray(32));
    match dec.read_image().unwrap() {
        DecodingResult::F32(v) => {
            let bits = |s: &[f32]| s.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&v), bits(&data));
        }
        _ => panic!("not float32"),
    }
    assert!(encode_tiff_gray32f(3, 3, &data).is_err());
}

#[test]
fn resize_rgb8_is_pillow_bilinear() {
    let img = image(20, 10, 3);
    let small = resize_rgb8(&img, 7, 5).unwrap();
    assert_eq!((small.width, small.height), (7, 5));
    let direct = ssvp_image::resize_u8(
        &img.data,
        20,
        10,
        3,
        7,
        5,
        ssvp_image::Filter::PillowBilinear,
    )
    .unwrap();
    assert_eq!(small.data, direct);
    assert!(resize_rgb8(&img, 0, 5).is_err());
}
