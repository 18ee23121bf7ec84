//! Checked decoding of user images: every fixture is generated here, in memory or in a
//! temporary directory.

use std::path::Path;
use std::time::{Duration, Instant};

use image::{ExtendedColorType, ImageEncoder};
use ssvp_image::samples::{cmyk_jpeg, png_header_only, with_exif_orientation};
use ssvp_image::{
    decode_rgb8, decode_rgb8_checked, load_rgb8_checked, DecodeOptions, Decoded, Error,
    ExifOrientation, DEFAULT_MAX_PIXELS,
};

fn opts() -> DecodeOptions {
    DecodeOptions::default()
}

fn decode(bytes: &[u8], name: &str) -> Decoded {
    decode_rgb8_checked(bytes, Path::new(name), &opts()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn decode_err(bytes: &[u8], name: &str) -> Error {
    match decode_rgb8_checked(bytes, Path::new(name), &opts()) {
        Ok(d) => panic!("{name} decoded to {:?}", d.info),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(name), "message does not name the file: {msg}");
            e
        }
    }
}

fn encode(buf: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(buf, w, h, color)
        .unwrap();
    out
}

fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (s >> 24) as u8
        })
        .collect()
}

fn jpeg(buf: &[u8], w: u32, h: u32, color: ExtendedColorType, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(buf, w, h, color)
        .unwrap();
    out
}

#[test]
fn empty_and_foreign_files_are_refused() {
    let err = decode_err(b"", "empty.png");
    assert!(matches!(err, Error::Decode { .. }), "{err}");
    assert!(err.to_string().contains("empty file (0 bytes)"), "{err}");

    let err = decode_err(b"id,label\n1,good\n", "notes.png");
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("not a PNG, JPEG, BMP or TIFF file"),
        "{err}"
    );

    // A format `image` recognises but we do not decode.
    let err = decode_err(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "anim.gif");
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");

    // From disk, the path is named too; a missing file is an I/O error.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zero.jpg");
    std::fs::write(&path, b"").unwrap();
    let err = load_rgb8_checked(&path, &opts()).unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "{err}");
    assert!(err.to_string().contains("zero.jpg"), "{err}");
    let err = load_rgb8_checked(dir.path().join("missing.png"), &opts()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.png"), "{err}");
}

#[test]
fn truncated_png_is_a_decode_error() {
    let png = encode(&noise(64 * 64 * 3, 1), 64, 64, ExtendedColorType::Rgb8);
    for cut in [png.len() / 2, 40, 12] {
        let err = decode_err(&png[..cut], "cut.png");
        assert!(matches!(err, Error::Decode { .. }), "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}

#[test]
fn truncated_jpeg_decodes_leniently_or_fails_cleanly() {
    let (w, h) = (64usize, 64usize);
    let full = jpeg(
        &noise(w * h * 3, 2),
        w as u32,
        h as u32,
        ExtendedColorType::Rgb8,
        90,
    );
    let whole = decode(&full, "whole.jpg");

    // Cut in the middle of the entropy-coded data: zune-jpeg (like libjpeg) keeps what it has
    // and fills the rest; the top rows are intact, the bottom is uniform grey.
    let half = decode(&full[..full.len() / 2], "half.jpg");
    assert_eq!((half.image.width, half.image.height), (w, h));
    let row = w * 3;
    assert_eq!(half.image.data[..8 * row], whole.image.data[..8 * row]);
    let last_row = &half.image.data[(h - 1) * row..];
    assert!(
        last_row.iter().all(|&v| v == last_row[0]),
        "missing rows are not uniform: {:?}",
        &last_row[..24]
    );
    assert!(last_row[0].abs_diff(128) <= 2, "fill is {}", last_row[0]);

    // Cut inside the headers: no image can be made, an error (not a panic).
    let err = decode_err(&full[..100], "head.jpg");
    assert!(matches!(err, Error::Decode { .. }), "{err}");
    let err = decode_err(&full[..3], "soi.jpg");
    assert!(
        matches!(err, Error::Decode { .. } | Error::Unsupported { .. }),
        "{err}"
    );
}

#[test]
fn one_pixel_png() {
    let d = decode(
        &encode(&[10, 20, 30], 1, 1, ExtendedColorType::Rgb8),
        "one.png",
    );
    assert_eq!((d.image.width, d.image.height), (1, 1));
    assert_eq!(d.image.data, [10, 20, 30]);
    assert_eq!(d.info.format, "png");
    assert_eq!(d.info.color, "rgb8");
    assert_eq!(
        (d.info.exif_orientation, d.info.orientation_applied),
        (1, false)
    );
}

#[test]
fn pixel_bombs_are_refused_from_the_header() {
    assert_eq!(opts().max_pixels, DEFAULT_MAX_PIXELS);
    assert_eq!(DEFAULT_MAX_PIXELS, 100_000_000);
    let bomb = png_header_only(60000, 60000);
    let start = Instant::now();
    let err = decode_err(&bomb, "bomb.png");
    assert!(start.elapsed() < Duration::from_secs(1));
    match &err {
        Error::TooLarge {
            width,
            height,
            max_pixels,
            ..
        } => assert_eq!((*width, *height, *max_pixels), (60000, 60000, 100_000_000)),
        other => panic!("expected TooLarge, got {other}"),
    }
    assert_eq!(
        err.to_string(),
        "image bomb.png is 60000x60000 (3600.0 Mpx), over the pixel budget of 100.0 Mpx; \
         raise it with --max-pixels if this is intended"
    );

    // A BMP header claiming 60000x60000 (24-bit, no pixel data): the budget is checked on the
    // decoder's dimensions before anything is read.
    let mut bmp = b"BM".to_vec();
    bmp.extend(u32::MAX.to_le_bytes()); // file size field, not checked by readers
    bmp.extend([0; 4]);
    bmp.extend(54u32.to_le_bytes());
    bmp.extend(40u32.to_le_bytes());
    bmp.extend(60000i32.to_le_bytes());
    bmp.extend(60000i32.to_le_bytes());
    bmp.extend(1u16.to_le_bytes());
    bmp.extend(24u16.to_le_bytes());
    bmp.extend([0; 24]);
    let start = Instant::now();
    let err = decode_err(&bmp, "bomb.bmp");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");

    // Real images over a small budget, through both checks (PNG header, decoder dimensions).
    let small = DecodeOptions {
        max_pixels: 1000,
        ..opts()
    };
    let png = encode(&noise(40 * 30 * 3, 3), 40, 30, ExtendedColorType::Rgb8);
    let err = decode_rgb8_checked(&png, Path::new("p.png"), &small).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                width: 40,
                height: 30,
                ..
            }
        ),
        "{err}"
    );
    let jpg = jpeg(&noise(40 * 30 * 3, 3), 40, 30, ExtendedColorType::Rgb8, 90);
    let err = decode_rgb8_checked(&jpg, Path::new("p.jpg"), &small).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                width: 40,
                height: 30,
                ..
            }
        ),
        "{err}"
    );
    // Exactly at the budget is fine.
    let at = DecodeOptions {
        max_pixels: 1200,
        ..opts()
    };
    assert!(decode_rgb8_checked(&png, Path::new("p.png"), &at).is_ok());
}

#[test]
fn png_layouts_convert_like_the_evaluation_loader() {
    let (w, h) = (5u32, 3u32);
    let n = (w * h) as usize;

    // 16-bit gray: round(v / 257), replicated.
    let vals: Vec<u16> = (0..n as u16)
        .map(|i| {
            [0u16, 128, 129, 257 * 100, 65535, 32767, 32896][i as usize % 7].saturating_sub(i / 7)
        })
        .collect();
    let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let png = encode(&bytes, w, h, ExtendedColorType::L16);
    let d = decode(&png, "l16.png");
    assert_eq!(d.info.color, "l16");
    let expect: Vec<u8> = vals
        .iter()
        .flat_map(|&v| {
            let g = (v as f64 / 257.0).round() as u8;
            [g, g, g]
        })
        .collect();
    assert_eq!(d.image.data, expect);
    assert_eq!(d.image, decode_rgb8(&png).unwrap());

    // 8-bit gray.
    let g = noise(n, 4);
    let d = decode(&encode(&g, w, h, ExtendedColorType::L8), "l8.png");
    assert_eq!(d.info.color, "l8");
    assert_eq!(
        d.image.data,
        g.iter().flat_map(|&v| [v, v, v]).collect::<Vec<_>>()
    );

    // Gray + alpha: alpha dropped, not composited.
    let la = noise(n * 2, 5);
    let d = decode(&encode(&la, w, h, ExtendedColorType::La8), "la8.png");
    assert_eq!(d.info.color, "la8");
    let expect: Vec<u8> = la.chunks(2).flat_map(|p| [p[0]; 3]).collect();
    assert_eq!(d.image.data, expect);

    // RGBA, including fully transparent pixels: the stored colour is kept.
    let mut rgba = noise(n * 4, 6);
    rgba[3] = 0;
    let d = decode(&encode(&rgba, w, h, ExtendedColorType::Rgba8), "rgba.png");
    assert_eq!(d.info.color, "rgba8");
    let expect: Vec<u8> = rgba.chunks(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
    assert_eq!(d.image.data, expect);

    // Palette (4-bit indices, with a tRNS entry making index 1 transparent).
    let palette = [0u8, 0, 0, 255, 0, 0, 0, 255, 0, 10, 20, 30];
    let indices: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
    let mut png = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png, w, h);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Four);
        enc.set_palette(palette.to_vec());
        enc.set_trns(vec![255u8, 0]);
        let mut writer = enc.write_header().unwrap();
        let packed: Vec<u8> = indices
            .chunks(w as usize)
            .flat_map(|row| {
                row.chunks(2)
                    .map(|p| p[0] << 4 | p.get(1).copied().unwrap_or(0))
                    .collect::<Vec<_>>()
            })
            .collect();
        writer.write_image_data(&packed).unwrap();
    }
    let d = decode(&png, "palette.png");
    assert_eq!(d.info.color, "p4");
    let expect: Vec<u8> = indices
        .iter()
        .flat_map(|&i| palette[i as usize * 3..i as usize * 3 + 3].to_vec())
        .collect();
    assert_eq!(d.image.data, expect);
}

#[test]
fn bmp_and_tiff() {
    let (w, h) = (7u32, 4u32);
    let n = (w * h) as usize;
    let rgb = noise(n * 3, 7);

    let mut bmp = Vec::new();
    image::codecs::bmp::BmpEncoder::new(&mut bmp)
        .write_image(&rgb, w, h, ExtendedColorType::Rgb8)
        .unwrap();
    let d = decode(&bmp, "x.bmp");
    assert_eq!((d.info.format, d.info.color.as_str()), ("bmp", "rgb8"));
    assert_eq!(d.image.data, rgb);

    let mut tif = std::io::Cursor::new(Vec::new());
    tiff::encoder::TiffEncoder::new(&mut tif)
        .unwrap()
        .write_image::<tiff::encoder::colortype::RGB8>(w, h, &rgb)
        .unwrap();
    let d = decode(tif.get_ref(), "x.tiff");
    assert_eq!((d.info.format, d.info.color.as_str()), ("tiff", "rgb8"));
    assert_eq!((d.info.width, d.info.height), (7, 4));
    assert_eq!(d.image.data, rgb);

    let rgb16: Vec<u16> = noise(n * 6, 8)
        .chunks(2)
        .map(|p| u16::from_le_bytes([p[0], p[1]]))
        .collect();
    let mut tif = std::io::Cursor::new(Vec::new());
    tiff::encoder::TiffEncoder::new(&mut tif)
        .unwrap()
        .write_image::<tiff::encoder::colortype::RGB16>(w, h, &rgb16)
        .unwrap();
    let d = decode(tif.get_ref(), "x16.tif");
    assert_eq!(d.info.color, "rgb16");
    let expect: Vec<u8> = rgb16
        .iter()
        .map(|&v| (v as f64 / 257.0).round() as u8)
        .collect();
    assert_eq!(d.image.data, expect);
}

#[test]
fn cmyk_jpeg_becomes_rgb() {
    // Pure cyan ink (C=100%, M=Y=K=0), stored inverted.
    let d = decode(&cmyk_jpeg([0, 255, 255, 255]), "cyan.jpg");
    assert_eq!((d.info.format, d.info.color.as_str()), ("jpeg", "cmyk8"));
    assert_eq!((d.image.width, d.image.height), (8, 8));
    for px in d.image.data.chunks(3) {
        assert!(px[0] <= 2 && px[1] >= 253 && px[2] >= 253, "{px:?}");
    }
    // 50% magenta with 50% black: R = G... ~128, G ~64, B ~128.
    let d = decode(&cmyk_jpeg([255, 128, 255, 128]), "mk.jpg");
    let px = &d.image.data[..3];
    assert!(
        px[0].abs_diff(128) <= 3 && px[1].abs_diff(64) <= 3 && px[2].abs_diff(128) <= 3,
        "{px:?}"
    );
}

#[test]
fn exif_orientation_is_applied_or_ignored() {
    // 4x2 gray, one bright pixel at the top-left.
    let mut g = vec![0u8; 8];
    g[0] = 255;
    let jpg = with_exif_orientation(&jpeg(&g, 4, 2, ExtendedColorType::L8, 100), 6);

    let applied = decode(&jpg, "rot.jpg");
    assert_eq!(applied.info.exif_orientation, 6);
    assert!(applied.info.orientation_applied);
    assert_eq!((applied.info.width, applied.info.height), (4, 2));
    assert_eq!((applied.image.width, applied.image.height), (2, 4));

    let ignore = DecodeOptions {
        orientation: ExifOrientation::Ignore,
        ..opts()
    };
    let stored = decode_rgb8_checked(&jpg, Path::new("rot.jpg"), &ignore).unwrap();
    assert_eq!(stored.info.exif_orientation, 6);
    assert!(!stored.info.orientation_applied);
    assert_eq!((stored.image.width, stored.image.height), (4, 2));
    // The evaluation loader ignores EXIF, like Pillow's Image.open.
    assert_eq!(stored.image, decode_rgb8(&jpg).unwrap());

    // Rotating 90 degrees clockwise: stored (x, y) lands at (h - 1 - y, x) of the 2x4 result.
    let px = |img: &ssvp_image::RgbImage8, x: usize, y: usize| {
        img.data[(y * img.width + x) * 3..(y * img.width + x) * 3 + 3].to_vec()
    };
    for y in 0..2 {
        for x in 0..4 {
            assert_eq!(px(&applied.image, 1 - y, x), px(&stored.image, x, y));
        }
    }
    let brightest = (0..8).max_by_key(|&i| applied.image.data[i * 3]).unwrap();
    assert_eq!(brightest, 1, "bright pixel should move to the top-right");
}
