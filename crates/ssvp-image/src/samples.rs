//! Hand-built encoded files that ordinary encoders do not write, for the tests of every crate
//! that reads images and for fuzz corpora: a PNG whose header claims any size (a decompression
//! bomb), a CMYK JPEG as Photoshop writes it, and a JPEG with an EXIF orientation tag.

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend(kind);
    out.extend(data);
    let crc = crc32(&out[start..]);
    out.extend(crc.to_be_bytes());
}

/// A PNG that is only a signature and an IHDR claiming `w` x `h` RGB8.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    out
}

/// A one-MCU (8x8) baseline JPEG with four components of uniform stored values, as Photoshop
/// writes CMYK: an Adobe APP14 marker (transform 0) and inverted samples (255 = no ink).
pub fn cmyk_jpeg(stored: [u8; 4]) -> Vec<u8> {
    fn segment(out: &mut Vec<u8>, marker: u8, body: &[u8]) {
        out.extend([0xFF, marker]);
        out.extend(((body.len() + 2) as u16).to_be_bytes());
        out.extend(body);
    }
    let mut out = vec![0xFF, 0xD8];
    let mut adobe = b"Adobe".to_vec();
    adobe.extend([0, 100, 0, 0, 0, 0, 0]);
    segment(&mut out, 0xEE, &adobe);
    // Quantiser 8 everywhere: a flat block's DC coefficient is then exactly `v - 128`.
    let mut dqt = vec![0u8];
    dqt.extend([8u8; 64]);
    segment(&mut out, 0xDB, &dqt);
    let mut sof = vec![8, 0, 8, 0, 8, 4];
    for id in 1..=4 {
        sof.extend([id, 0x11, 0]);
    }
    segment(&mut out, 0xC0, &sof);
    // DC table: categories 0..=11, all with 4-bit codes (code = category).
    let mut dht = vec![0x00, 0, 0, 0, 12];
    dht.extend([0; 12]);
    dht.extend(0..12u8);
    segment(&mut out, 0xC4, &dht);
    // AC table: only end-of-block, code `0`.
    let mut dht = vec![0x10, 1];
    dht.extend([0; 15]);
    dht.push(0x00);
    segment(&mut out, 0xC4, &dht);
    let mut sos = vec![4];
    for id in 1..=4 {
        sos.extend([id, 0x00]);
    }
    sos.extend([0, 63, 0]);
    segment(&mut out, 0xDA, &sos);
    let mut bits: Vec<bool> = Vec::new();
    let mut put = |value: u32, n: u32| bits.extend((0..n).rev().map(|i| value >> i & 1 == 1));
    for v in stored {
        let diff = v as i32 - 128;
        let size = 32 - diff.unsigned_abs().leading_zeros();
        put(size, 4);
        let extra = if diff >= 0 {
            diff
        } else {
            diff + (1 << size) - 1
        };
        put(extra as u32, size);
        put(0, 1); // EOB
    }
    // Pad the last byte with 1 bits (`is_multiple_of` is newer than the workspace's MSRV).
    let pad = (8 - bits.len() % 8) % 8;
    bits.extend(std::iter::repeat_n(true, pad));
    for byte in bits.chunks(8) {
        let b = byte.iter().fold(0u8, |acc, &bit| acc << 1 | bit as u8);
        out.push(b);
        if b == 0xFF {
            out.push(0);
        }
    }
    out.extend([0xFF, 0xD9]);
    out
}

/// Inserts an APP1 Exif segment with only an orientation tag right after SOI.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\x00\x2a".to_vec();
    tiff.extend(8u32.to_be_bytes());
    tiff.extend(1u16.to_be_bytes()); // one entry
    tiff.extend(0x0112u16.to_be_bytes()); // Orientation
    tiff.extend(3u16.to_be_bytes()); // SHORT
    tiff.extend(1u32.to_be_bytes()); // count
    tiff.extend(orientation.to_be_bytes());
    tiff.extend([0, 0]);
    tiff.extend(0u32.to_be_bytes()); // no next IFD
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}
