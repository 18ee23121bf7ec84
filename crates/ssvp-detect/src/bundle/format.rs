//! The container: a fixed header, the JSON manifest, then the members' bytes, each aligned.
//!
//! ```text
//! offset 0    header (HEADER_LEN = 128 bytes, little-endian integers)
//!             0..8    magic  89 53 53 56 50 0D 0A 1A  ("\x89SSVP\r\n\x1a")
//!             8..12   container version (u32, CONTAINER_VERSION)
//!             12..16  header length (u32, 128)
//!             16..24  manifest length in bytes (u64)
//!             24..32  data offset: where the first member starts (u64)
//!             32..40  data length: from the data offset to the end of the file (u64)
//!             40..72  SHA-256 of the manifest bytes
//!             72..128 reserved, zero
//! offset 128  the manifest (UTF-8 JSON, `manifest length` bytes), zero padding up to
//! data offset = align(128 + manifest length): the first member
//!             each member at the offset the manifest gives, `align(end of the previous)`,
//!             zero padding between; the file ends where the last member ends.
//! ```
//!
//! The layout is canonical (every offset follows from the lengths), so a reader checks each
//! field against the others: a flipped byte anywhere is caught by the magic, a length check,
//! the manifest's digest or a member's digest.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};

/// The first eight bytes of every bundle. The high first byte catches 7-bit transfers, the
/// CR LF pair line-ending conversions, as PNG's signature does.
pub const MAGIC: [u8; 8] = *b"\x89SSVP\r\n\x1a";
/// Version of the byte layout described in this module. A reader refuses other versions.
pub const CONTAINER_VERSION: u32 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: u64 = 128;
/// Alignment of the data offset and of every member (a safetensors member can be mapped).
pub const ALIGN: u64 = 64;
/// The largest manifest a reader accepts (a manifest is a few kilobytes).
pub const MAX_MANIFEST_LEN: u64 = 64 << 20;

/// The fixed header of a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// [`CONTAINER_VERSION`] of the writer.
    pub version: u32,
    /// Length of the JSON manifest in bytes (it starts at [`HEADER_LEN`]).
    pub manifest_len: u64,
    /// Where the first member starts: `align(HEADER_LEN + manifest_len)`.
    pub data_offset: u64,
    /// Bytes from the data offset to the end of the file.
    pub data_len: u64,
    /// SHA-256 of the manifest bytes: the bundle's identity (the manifest holds every
    /// member's digest).
    pub manifest_sha256: [u8; 32],
}

impl Header {
    /// The file's expected length.
    pub fn file_len(&self) -> u64 {
        self.data_offset + self.data_len
    }

    /// The manifest digest as lowercase hex: the bundle's id (and its cache folder's name).
    pub fn id(&self) -> String {
        hex(&self.manifest_sha256)
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.manifest_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.data_offset.to_le_bytes());
        out[32..40].copy_from_slice(&self.data_len.to_le_bytes());
        out[40..72].copy_from_slice(&self.manifest_sha256);
        out
    }

    /// Parses and checks a header (`file_len` only for messages about truncation).
    pub fn decode(bytes: &[u8], file_len: u64, path: &Path) -> Result<Self> {
        let name = path.display();
        let magic_len = MAGIC.len().min(bytes.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(Error::invalid(format!(
                "{name} is not an ssvp bundle: bad magic bytes (found {}, expected {})",
                hex(&bytes[..magic_len]),
                hex(&MAGIC)
            )));
        }
        if (bytes.len() as u64) < HEADER_LEN {
            return Err(truncated(
                path,
                format!("the {HEADER_LEN}-byte header"),
                HEADER_LEN,
                file_len,
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != CONTAINER_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{name}: bundle container version {version}, this build reads version \
                     {CONTAINER_VERSION} (a newer ssvp wrote it?)"
                ),
            ));
        }
        let corrupt =
            |what: String| Error::invalid(format!("{name}: corrupt bundle header: {what}"));
        let header_len = u32_at(12);
        if u64::from(header_len) != HEADER_LEN {
            return Err(corrupt(format!(
                "header length {header_len}, version {CONTAINER_VERSION} has {HEADER_LEN}"
            )));
        }
        if bytes[72..HEADER_LEN as usize].iter().any(|&b| b != 0) {
            return Err(corrupt("its reserved bytes 72..128 are not zero".into()));
        }
        let manifest_len = u64_at(16);
        if manifest_len == 0 || manifest_len > MAX_MANIFEST_LEN {
            return Err(corrupt(format!(
                "manifest length {manifest_len} (at most {MAX_MANIFEST_LEN})"
            )));
        }
        let data_offset = u64_at(24);
        if data_offset != align(HEADER_LEN + manifest_len) {
            return Err(corrupt(format!(
                "data offset {data_offset}, the manifest of {manifest_len} bytes puts it at {}",
                align(HEADER_LEN + manifest_len)
            )));
        }
        let data_len = u64_at(32);
        if data_offset.checked_add(data_len).is_none() {
            return Err(corrupt(format!("data length {data_len}")));
        }
        let mut manifest_sha256 = [0u8; 32];
        manifest_sha256.copy_from_slice(&bytes[40..72]);
        Ok(Self {
            version,
            manifest_len,
            data_offset,
            data_len,
            manifest_sha256,
        })
    }
}

/// `n` rounded up to [`ALIGN`].
pub fn align(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The error of a file shorter than what it must hold.
pub(crate) fn truncated(path: &Path, what: String, needed: u64, have: u64) -> Error {
    Error::invalid(format!(
        "{} is truncated: {what} needs the file to be at least {needed} bytes, it has {have}",
        path.display()
    ))
}

/// Reads the header and the manifest bytes of the bundle at `path`, checking the manifest
/// against the header's digest. Returns the header, the manifest bytes and the file's length.
pub(crate) fn read_head(path: &Path) -> Result<(Header, Vec<u8>, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = Vec::with_capacity(HEADER_LEN as usize);
    (&mut file)
        .take(HEADER_LEN)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    if head.is_empty() {
        return Err(Error::invalid(format!(
            "{} is empty, not an ssvp bundle",
            path.display()
        )));
    }
    let header = Header::decode(&head, file_len, path)?;
    let manifest_end = HEADER_LEN + header.manifest_len;
    if file_len < manifest_end {
        return Err(truncated(
            path,
            format!("the manifest of {} bytes", header.manifest_len),
            manifest_end,
            file_len,
        ));
    }
    let mut manifest = vec![0u8; header.manifest_len as usize];
    file.read_exact(&mut manifest)
        .map_err(|e| Error::io(path, e))?;
    let actual: [u8; 32] = Sha256::digest(&manifest).into();
    if actual != header.manifest_sha256 {
        return Err(Error::invalid(format!(
            "{}: the manifest is corrupt (its sha256 is {}, the header records {})",
            path.display(),
            hex(&actual),
            hex(&header.manifest_sha256)
        )));
    }
    Ok((header, manifest, file_len))
}

/// Copies `len` bytes of `from` (at its current position) into `to` (when given) while hashing
/// them; returns the SHA-256 and how many bytes could be read (fewer than `len` at the end of
/// `from`).
pub(crate) fn copy_hashing(
    from: &mut impl Read,
    mut to: Option<&mut dyn Write>,
    len: u64,
) -> std::io::Result<([u8; 32], u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; (1 << 20).min(len.max(1) as usize)];
    let mut left = len;
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = match from.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        if let Some(to) = to.as_mut() {
            to.write_all(&buf[..n])?;
        }
        left -= n as u64;
    }
    Ok((hasher.finalize().into(), len - left))
}

/// The first non-zero byte among the `len` bytes of `file` at `offset`, if any.
pub(crate) fn first_nonzero(
    file: &mut File,
    offset: u64,
    len: u64,
) -> std::io::Result<Option<u64>> {
    if len == 0 {
        return Ok(None);
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len as usize];
    let n = read_up_to(file, &mut buf)?;
    Ok(buf[..n]
        .iter()
        .position(|&b| b != 0)
        .map(|i| offset + i as u64))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Checks a member's path: relative, `/`-separated, no empty, `.` or `..` component, no
/// backslash, colon or control character (it is joined onto the extraction folder).
pub fn check_member_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "bundle member path `{path}`: {why}"
        )))
    };
    if path.is_empty() || path.len() > 1024 {
        return bad("empty or longer than 1024 bytes");
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("empty, `.` or `..` components are not allowed");
        }
        if part
            .chars()
            .any(|c| c == '\\' || c == ':' || c.is_control())
        {
            return bad("backslashes, colons and control characters are not allowed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_alignment_is_canonical() {
        let header = Header {
            version: CONTAINER_VERSION,
            manifest_len: 1000,
            data_offset: align(HEADER_LEN + 1000),
            data_len: 77,
            manifest_sha256: [7; 32],
        };
        assert_eq!(header.data_offset, 1152);
        let bytes = header.encode();
        let back = Header::decode(&bytes, 2000, Path::new("x.ssvp")).unwrap();
        assert_eq!(back, header);
        let mut moved = bytes;
        moved[24] ^= 1;
        let err = Header::decode(&moved, 2000, Path::new("x.ssvp")).unwrap_err();
        assert!(err.to_string().contains("data offset"), "{err}");
    }

    #[test]
    fn member_paths_cannot_leave_the_folder() {
        for good in [
            "bank.safetensors",
            "run/state.json",
            "weights/dino/model.safetensors",
        ] {
            check_member_path(good).unwrap();
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a\\b",
            "c:x",
            "a/./b",
        ] {
            assert!(check_member_path(bad).is_err(), "{bad}");
        }
    }
}
