//! A memory bank of normal patch features (AnomalyDINO's few-shot bank, PatchCore's memory):
//! the patch vectors of a few good images, L2-normalised, one matrix per feature tap. A test
//! patch scores its cosine distance `1 - cos` to the nearest bank vector (averaged over the
//! taps when there are several), computed exactly by [`crate::knn::nearest`].
//!
//! A bank is saved as safetensors (`keys.<tap>` matrices `[M, D]` f32, and its [`BankMeta`]
//! as JSON under the metadata key `ssvp_bank`), so that a line loads it in milliseconds
//! instead of running its references through the backbones again.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::coreset::{greedy_coreset, CoresetOptions};
use crate::error::{Error, ErrorKind, Result};
use crate::knn::{l2_normalize_rows, nearest, DEFAULT_TILE_ROWS};
use crate::score::quantile;

/// Version of the bank file layout.
pub const BANK_FORMAT: u32 = 1;
/// Metadata key of the bank's JSON description inside the safetensors header.
pub const META_KEY: &str = "ssvp_bank";
/// Reference images whose leave-one-out distances give [`BankMeta::normal_scale`] (each costs
/// a search of the rest of the bank, so the cost is bounded for banks of hundreds of images).
pub const SCALE_IMAGES: usize = 8;

/// What a bank holds and what made it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BankMeta {
    /// [`BANK_FORMAT`] at writing.
    pub format: u32,
    /// Content digest of the backbones the features came from: a bank only serves the same
    /// backbones.
    pub backbones: String,
    /// The backbones as named, for messages.
    pub backbone_names: String,
    /// The feature taps, in order (e.g. `dino.4` for the fourth DINOv3 tap).
    pub taps: Vec<String>,
    /// Patch grid of every reference image.
    pub grid: (usize, usize),
    /// The reference images, as named by the caller (file names).
    pub references: Vec<String>,
    /// Copies of each reference in the bank (1 = no rotations; 8 = AnomalyDINO's 45° steps).
    pub rotations: usize,
    /// The coreset the bank was reduced with, if any.
    pub coreset: Option<CoresetOptions>,
    /// The 99th percentile of the references' own leave-one-image-out patch distances (up to
    /// [`SCALE_IMAGES`] of them against all others): the distance a normal patch reaches, by
    /// which fused scoring normalises. `None` for a bank of one image.
    pub normal_scale: Option<f32>,
    /// The backbone settings the bank was made with (preset, weights, sizes, taps), as JSON,
    /// so that `detect --bank` rebuilds the same towers without flags; absent in banks written
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_with: Option<serde_json::Value>,
}

/// Normal patch vectors, one unit-row matrix per tap.
#[derive(Clone, Debug)]
pub struct PatchBank {
    meta: BankMeta,
    keys: Vec<Tensor>,
}

/// Stacks rows `[N, D]` of several images into one `[sum N, D]` matrix.
fn stack_rows(items: &[&Tensor]) -> Result<Tensor> {
    Ok(Tensor::cat(items, 0)?)
}

impl PatchBank {
    /// Builds a bank from `images[i][t]`: the patch tokens `[N, D_t]` of reference image (or
    /// rotated copy) `i` at tap `t`. `meta.taps` names the taps; `meta.normal_scale` and
    /// `meta.coreset` are filled here. `copies_per_reference` images in a row are one
    /// reference (its rotations), which the leave-one-out scale leaves out together.
    pub fn build(
        images: &[Vec<Tensor>],
        mut meta: BankMeta,
        coreset: Option<&CoresetOptions>,
    ) -> Result<Self> {
        if images.is_empty() {
            return Err(Error::new(
                ErrorKind::NotEnoughData,
                "a bank needs at least one reference image",
            ));
        }
        let taps = meta.taps.len();
        if taps == 0 || images.iter().any(|f| f.len() != taps) {
            return Err(Error::invalid(format!(
                "every reference must have features at the bank's {taps} taps"
            )));
        }
        let copies = meta.rotations.max(1);
        if images.len() % copies != 0 {
            return Err(Error::invalid(format!(
                "{} images are not whole references of {copies} copies each",
                images.len()
            )));
        }
        let normalised: Vec<Vec<Tensor>> = images
            .iter()
            .map(|f| f.iter().map(l2_normalize_rows).collect::<Result<_>>())
            .collect::<Result<_>>()?;
        let mut keys = Vec::with_capacity(taps);
        for t in 0..taps {
            let rows: Vec<&Tensor> = normalised.iter().map(|f| &f[t]).collect();
            keys.push(stack_rows(&rows)?);
        }
        let rows_per_image: Vec<usize> = normalised
            .iter()
            .map(|f| f[0].dim(0))
            .collect::<candle_core::Result<_>>()?;
        meta.normal_scale = leave_one_out_scale(&keys, &rows_per_image, copies)?;
        if let Some(opts) = coreset {
            for k in keys.iter_mut() {
                let idx = greedy_coreset(k, opts)?;
                let idx = Tensor::from_vec(
                    idx.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                    idx.len(),
                    k.device(),
                )?;
                *k = k.index_select(&idx, 0)?;
            }
        }
        meta.coreset = coreset.cloned();
        meta.format = BANK_FORMAT;
        Ok(Self { meta, keys })
    }

    /// A copy of the bank with the patch vectors of more good images appended: what an
    /// operator's "this part is good" adds, without running the original references again.
    ///
    /// `rows[i][t]` are the patch tokens `[N, D_t]` of new image copy `i` at tap `t`, laid out
    /// as [`PatchBank::build`] takes them (each new image's [`BankMeta::rotations`] copies in a
    /// row); they are L2-normalised and appended to each tap's matrix, and `names` (one per new
    /// image) join [`BankMeta::references`]. Every patch distance is then a minimum over a
    /// superset of the old vectors, so no distance grows and the new images' own patches are
    /// at distance (nearly) 0.
    ///
    /// [`BankMeta::normal_scale`] is kept: it is the leave-one-out scale of the original
    /// references, read only by fusion to put distances on the head's scale, and recomputing
    /// it would move every fused score of the grown model. A bank reduced by a coreset keeps
    /// [`BankMeta::coreset`] as recorded; the added rows are not reduced.
    ///
    /// Refused ([`ErrorKind::InvalidInput`], or [`ErrorKind::NotEnoughData`] for no rows): a
    /// row without exactly one tensor per tap, a tensor that is not `[grid cells, D_t]` of the
    /// bank, a number of copies that is not a multiple of the rotations, or a number of names
    /// that does not match the images.
    pub fn with_references(&self, rows: &[Vec<Tensor>], names: Vec<String>) -> Result<PatchBank> {
        if rows.is_empty() {
            return Err(Error::new(
                ErrorKind::NotEnoughData,
                "no image was given to add to the bank",
            ));
        }
        let taps = self.keys.len();
        let copies = self.meta.rotations.max(1);
        if rows.len() % copies != 0 {
            return Err(Error::invalid(format!(
                "{} image copies are not whole images of the bank's {copies} rotations each",
                rows.len()
            )));
        }
        if names.len() * copies != rows.len() {
            return Err(Error::invalid(format!(
                "{} names given for {} added images",
                names.len(),
                rows.len() / copies
            )));
        }
        let cells = self.meta.grid.0 * self.meta.grid.1;
        for (i, row) in rows.iter().enumerate() {
            if row.len() != taps {
                return Err(Error::invalid(format!(
                    "added image copy {i} has features at {} taps, the bank has {taps}",
                    row.len()
                )));
            }
            for (t, (x, k)) in row.iter().zip(&self.keys).enumerate() {
                let want = (cells, k.dim(1)?);
                if x.dims() != [want.0, want.1] {
                    return Err(Error::invalid(format!(
                        "added image copy {i} has features of shape {:?} at tap `{}`, the bank \
                         holds {} patches of width {} per image",
                        x.dims(),
                        self.meta.taps[t],
                        want.0,
                        want.1
                    )));
                }
            }
        }
        let mut keys = Vec::with_capacity(taps);
        for (t, k) in self.keys.iter().enumerate() {
            let mut parts = Vec::with_capacity(rows.len() + 1);
            parts.push(k.clone());
            for row in rows {
                let x = row[t].to_device(k.device())?.to_dtype(k.dtype())?;
                parts.push(l2_normalize_rows(&x)?);
            }
            let refs: Vec<&Tensor> = parts.iter().collect();
            keys.push(stack_rows(&refs)?);
        }
        let mut meta = self.meta.clone();
        meta.references.extend(names);
        Ok(Self { meta, keys })
    }

    /// What the bank holds.
    pub fn meta(&self) -> &BankMeta {
        &self.meta
    }

    /// Records the backbone settings the bank was made with ([`BankMeta::made_with`]).
    pub fn set_made_with(&mut self, made_with: serde_json::Value) {
        self.meta.made_with = Some(made_with);
    }

    /// Sets the distance normal patches reach (a bank of one image has no leave-one-out
    /// scale; its maker measures one otherwise).
    pub fn set_normal_scale(&mut self, scale: f32) {
        self.meta.normal_scale = Some(scale);
    }

    /// The unit-row matrix of each tap (`[M_t, D_t]`).
    pub fn keys(&self) -> &[Tensor] {
        &self.keys
    }

    /// Vectors per tap.
    pub fn len(&self) -> usize {
        self.keys.first().map_or(0, |k| k.dim(0).unwrap_or(0))
    }

    /// Whether the bank holds no vectors (never true for a built or loaded bank).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fails with [`ErrorKind::Mismatch`] unless the bank was made with `backbones` (digest)
    /// at `taps`.
    pub fn check_compatible(&self, backbones: &str, names: &str, taps: &[String]) -> Result<()> {
        if self.meta.backbones != backbones {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "the bank was made with other backbones ({}, identity {}) than these \
                     ({names}, identity {}); rebuild it with `ssvp bank build`",
                    self.meta.backbone_names,
                    short(&self.meta.backbones),
                    short(backbones)
                ),
            ));
        }
        if self.meta.taps != taps {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "the bank holds the feature taps {:?}, not {:?}",
                    self.meta.taps, taps
                ),
            ));
        }
        Ok(())
    }

    /// Cosine distance of every patch of one image to its nearest bank vector, averaged over
    /// the taps: `query[t]` is the image's `[N, D_t]` tokens at tap `t`.
    pub fn distances(&self, query: &[Tensor]) -> Result<Vec<f32>> {
        if query.len() != self.keys.len() {
            return Err(Error::invalid(format!(
                "{} feature taps given, the bank has {}",
                query.len(),
                self.keys.len()
            )));
        }
        let mut sum: Vec<f32> = Vec::new();
        for (q, k) in query.iter().zip(&self.keys) {
            let q = l2_normalize_rows(&q.to_device(k.device())?)?;
            let d = nearest(&q, k, DEFAULT_TILE_ROWS)?.cosine_distances();
            if sum.is_empty() {
                sum = d;
            } else {
                sum.iter_mut().zip(d).for_each(|(s, v)| *s += v);
            }
        }
        let n = self.keys.len() as f32;
        Ok(sum.into_iter().map(|s| s / n).collect())
    }

    /// Writes the bank (atomically: a crash leaves no half-written file).
    pub fn save(&self, path: &Path) -> Result<()> {
        let meta = serde_json::to_string(&self.meta)
            .map_err(|e| Error::new(ErrorKind::Compute, e.to_string()))?;
        let mut blobs = Vec::with_capacity(self.keys.len());
        for (tap, k) in self.meta.taps.iter().zip(&self.keys) {
            let bytes: Vec<u8> = k
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            blobs.push((format!("keys.{tap}"), k.dims().to_vec(), bytes));
        }
        let views = blobs
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::new(ErrorKind::Compute, e.to_string()))?;
        let metadata = HashMap::from([(META_KEY.to_string(), meta)]);
        ssvp_util::fs::write_atomic_with(path, |tmp| {
            safetensors::serialize_to_file(views, Some(metadata), tmp).map_err(|e| match e {
                safetensors::SafeTensorError::IoError(io) => Error::io(tmp, io),
                other => Error::new(ErrorKind::Compute, other.to_string()),
            })
        })
        .map_err(|e: Error| e.context(format_args!("writing the bank {}", path.display())))
    }

    /// Reads only the metadata of a bank file (its safetensors header): what `detect --bank`
    /// needs to choose the backbones before the vectors are loaded.
    pub fn read_meta(path: &Path) -> Result<BankMeta> {
        use std::io::Read;
        let broken = |why: String| {
            Error::invalid(format!(
                "{} is not a bank of `ssvp bank build`: {why}",
                path.display()
            ))
        };
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|e| broken(format!("cannot read its header length: {e}")))?;
        let len = u64::from_le_bytes(len);
        // safetensors caps headers at 100 MB; a bank's is a few KB.
        if len > 100 << 20 {
            return Err(broken(format!("its header claims {len} bytes")));
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header)
            .map_err(|e| broken(format!("its header is cut short: {e}")))?;
        let value: serde_json::Value =
            serde_json::from_slice(&header).map_err(|e| broken(e.to_string()))?;
        let json = value
            .get("__metadata__")
            .and_then(|m| m.get(META_KEY))
            .and_then(|v| v.as_str())
            .ok_or_else(|| broken(format!("its header has no `{META_KEY}` entry")))?;
        serde_json::from_str(json).map_err(|e| broken(e.to_string()))
    }

    /// Reads a bank written by [`PatchBank::save`] onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let broken = |why: String| {
            Error::invalid(format!(
                "{} is not a bank of `ssvp bank build`: {why}",
                path.display()
            ))
        };
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| broken(e.to_string()))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| broken(format!("its header has no `{META_KEY}` entry")))?;
        let meta: BankMeta = serde_json::from_str(json).map_err(|e| broken(e.to_string()))?;
        if meta.format != BANK_FORMAT {
            return Err(broken(format!(
                "it has format {}, this build reads format {BANK_FORMAT}",
                meta.format
            )));
        }
        if meta.taps.is_empty() {
            return Err(broken("it holds no feature taps".into()));
        }
        let tensors =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| broken(e.to_string()))?;
        let mut keys = Vec::with_capacity(meta.taps.len());
        for tap in &meta.taps {
            let name = format!("keys.{tap}");
            let view = tensors
                .tensor(&name)
                .map_err(|_| broken(format!("the tensor `{name}` is missing")))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 2 {
                return Err(broken(format!("`{name}` is not a 2-D f32 matrix")));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let shape = (view.shape()[0], view.shape()[1]);
            if shape.0 == 0 {
                return Err(broken(format!("`{name}` is empty")));
            }
            keys.push(Tensor::from_vec(values, shape, device)?);
        }
        Ok(Self { meta, keys })
    }
}

/// The first 12 characters of a digest, for messages.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// [`BankMeta::normal_scale`]: each of the first [`SCALE_IMAGES`] references (all its copies
/// left out together) against the rest, distances averaged over taps as in
/// [`PatchBank::distances`], then the 99th percentile of all those patch distances. The rest
/// is searched as the rows of `keys` (the stacked bank) before and after the reference's own,
/// so no copy of the bank is made.
fn leave_one_out_scale(
    keys: &[Tensor],
    rows_per_image: &[usize],
    copies: usize,
) -> Result<Option<f32>> {
    let references = rows_per_image.len() / copies;
    if references < 2 {
        return Ok(None);
    }
    let offsets: Vec<usize> = std::iter::once(0)
        .chain(rows_per_image.iter().scan(0, |end, n| {
            *end += n;
            Some(*end)
        }))
        .collect();
    let mut all = Vec::new();
    for r in 0..references.min(SCALE_IMAGES) {
        let (start, end) = (offsets[r * copies], offsets[(r + 1) * copies]);
        // The reference itself, unrotated (its first copy), against every other reference.
        let mut sum: Vec<f32> = Vec::new();
        for k in keys {
            let query = k.narrow(0, start, rows_per_image[r * copies])?;
            let m = k.dim(0)?;
            let mut best = vec![f32::NEG_INFINITY; query.dim(0)?];
            for (from, len) in [(0, start), (end, m - end)] {
                if len > 0 {
                    let part = nearest(&query, &k.narrow(0, from, len)?, DEFAULT_TILE_ROWS)?;
                    best.iter_mut()
                        .zip(part.similarity)
                        .for_each(|(b, s)| *b = b.max(s));
                }
            }
            let d = best.into_iter().map(|s| 1.0 - s);
            if sum.is_empty() {
                sum = d.collect();
            } else {
                sum.iter_mut().zip(d).for_each(|(s, v)| *s += v);
            }
        }
        all.extend(sum.into_iter().map(|s| s / keys.len() as f32));
    }
    Ok(Some(quantile(&all, 0.99)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(taps: usize, rotations: usize) -> BankMeta {
        BankMeta {
            format: BANK_FORMAT,
            backbones: "digest".into(),
            backbone_names: "tiny / tiny".into(),
            taps: (0..taps).map(|t| format!("dino.{t}")).collect(),
            grid: (2, 2),
            references: vec![],
            rotations,
            coreset: None,
            normal_scale: None,
            made_with: None,
        }
    }

    fn image(seed: f32) -> Tensor {
        let v: Vec<f32> = (0..12).map(|i| ((i as f32 + seed) * 0.7).sin()).collect();
        Tensor::from_vec(v, (4, 3), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_reference_patch_is_at_distance_zero_and_the_file_round_trips() {
        let images = vec![vec![image(0.0)], vec![image(1.0)], vec![image(2.0)]];
        let bank = PatchBank::build(&images, meta(1, 1), None).unwrap();
        assert_eq!(bank.len(), 12);
        assert!(bank.meta().normal_scale.unwrap() > 0.0);
        let d = bank.distances(&[image(1.0)]).unwrap();
        assert!(d.iter().all(|v| v.abs() < 1e-6), "{d:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bank.safetensors");
        bank.save(&path).unwrap();
        let back = PatchBank::load(&path, &Device::Cpu).unwrap();
        assert_eq!(back.meta(), bank.meta());
        assert_eq!(
            back.keys()[0].to_vec2::<f32>().unwrap(),
            bank.keys()[0].to_vec2::<f32>().unwrap()
        );
        let other = bank.check_compatible("another", "vitl / vitl", &bank.meta().taps.clone());
        assert_eq!(other.unwrap_err().kind(), ErrorKind::Mismatch);
    }

    #[test]
    fn added_references_are_near_and_no_distance_grows() {
        let images = vec![vec![image(0.0)], vec![image(1.0)]];
        let mut m = meta(1, 1);
        m.references = vec!["a".into(), "b".into()];
        let bank = PatchBank::build(&images, m, None).unwrap();
        let queries: Vec<Tensor> = (3..9).map(|s| image(s as f32 * 0.9)).collect();
        let before: Vec<Vec<f32>> = queries
            .iter()
            .map(|q| bank.distances(std::slice::from_ref(q)).unwrap())
            .collect();
        let added = image(5.0 * 0.9);
        assert!(before[2].iter().any(|v| *v > 1e-3), "{:?}", before[2]);
        let grown = bank
            .with_references(&[vec![added.clone()]], vec!["c".into()])
            .unwrap();
        assert_eq!(grown.len(), 12);
        assert_eq!(grown.meta().references, ["a", "b", "c"]);
        assert_eq!(grown.meta().normal_scale, bank.meta().normal_scale);
        let own = grown.distances(&[added]).unwrap();
        assert!(own.iter().all(|v| v.abs() < 1e-6), "{own:?}");
        for (q, old) in queries.iter().zip(&before) {
            let new = grown.distances(std::slice::from_ref(q)).unwrap();
            for (n, o) in new.iter().zip(old) {
                assert!(*n <= *o + 1e-6, "{n} > {o}");
            }
        }
        // The original bank is untouched.
        assert_eq!(bank.len(), 8);
    }

    #[test]
    fn bad_additions_are_refused() {
        let bank = PatchBank::build(&[vec![image(0.0)]], meta(1, 2), None);
        assert!(bank.is_err(), "one copy is not a whole reference of two");
        let bank =
            PatchBank::build(&[vec![image(0.0)], vec![image(0.5)]], meta(1, 2), None).unwrap();
        let add = |rows: &[Vec<Tensor>], names: usize| {
            bank.with_references(rows, (0..names).map(|i| format!("n{i}")).collect())
                .unwrap_err()
        };
        assert_eq!(add(&[], 0).kind(), ErrorKind::NotEnoughData);
        let one = vec![image(2.0)];
        let err = add(std::slice::from_ref(&one), 1);
        assert!(err.to_string().contains("rotations"), "{err}");
        let err = add(&[one.clone(), one.clone()], 2);
        assert!(err.to_string().contains("names"), "{err}");
        let err = add(&[vec![image(1.0), image(2.0)], one.clone()], 1);
        assert!(err.to_string().contains("2 taps"), "{err}");
        let narrow = Tensor::zeros((4, 2), DType::F32, &Device::Cpu).unwrap();
        let err = add(&[vec![narrow], one.clone()], 1);
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("shape"), "{err}");
        let ok = bank
            .with_references(&[one.clone(), vec![image(3.0)]], vec!["x".into()])
            .unwrap();
        assert_eq!(ok.len(), 16);
    }

    #[test]
    fn broken_files_and_bad_builds_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.safetensors");
        std::fs::write(&path, b"not a bank").unwrap();
        let err = PatchBank::load(&path, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("not a bank"), "{err}");
        let missing = PatchBank::load(&dir.path().join("none"), &Device::Cpu).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        assert_eq!(
            PatchBank::build(&[], meta(1, 1), None).unwrap_err().kind(),
            ErrorKind::NotEnoughData
        );
        let three = vec![vec![image(0.0)], vec![image(1.0)], vec![image(2.0)]];
        assert!(PatchBank::build(&three, meta(1, 2), None).is_err());
        assert!(PatchBank::build(&three, meta(2, 1), None).is_err());
    }
}
