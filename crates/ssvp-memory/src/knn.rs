//! Exact nearest neighbours of unit vectors by blocked matrix products.
//!
//! A query of `N` vectors against `M` keys is one `N x D` by `D x M` product, far too large to
//! hold whole for a bank of many images (1369 x 21904 floats for 16 references at 37 x 37).
//! The keys are taken `tile` rows at a time; each tile's product `N x tile` goes through the
//! same candle matmul as the backbones and is folded into a running per-row maximum at once,
//! so memory stays at one tile. The maximum is replaced on strict improvement only, so the
//! earliest key wins a tie (what faiss's `k = 1` result handler does).

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// Key rows per product: `N x 2048` floats (11 MB at N = 1369) keeps the tile in the last-level
/// cache's neighbourhood while the product stays large enough to run at the matmul's speed.
pub const DEFAULT_TILE_ROWS: usize = 2048;

/// The nearest key of every query row.
#[derive(Clone, Debug, PartialEq)]
pub struct Nearest {
    /// Per query row: the largest inner product with any key (the cosine similarity for unit
    /// vectors).
    pub similarity: Vec<f32>,
    /// Per query row: the index of that key (the lowest one among equals).
    pub index: Vec<u32>,
}

impl Nearest {
    /// Cosine distances `1 - similarity` (AnomalyDINO's patch score; faiss-L2 / 2 for unit
    /// vectors).
    pub fn cosine_distances(&self) -> Vec<f32> {
        self.similarity.iter().map(|s| 1.0 - s).collect()
    }
}

/// Rows scaled to unit Euclidean length (`x / max(|x|, 1e-12)`, as torch's `F.normalize`),
/// in f32.
pub fn l2_normalize_rows(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
    Ok(x.broadcast_div(&norm)?)
}

fn check_pair(query: &Tensor, keys: &Tensor) -> Result<(usize, usize, usize)> {
    let (n, d) = query.dims2()?;
    let (m, dk) = keys.dims2()?;
    if d != dk {
        return Err(Error::invalid(format!(
            "query vectors have {d} dimensions but the keys have {dk}"
        )));
    }
    if m == 0 {
        return Err(Error::invalid("there are no keys to search"));
    }
    Ok((n, m, d))
}

/// The inner products of `query` (`[N, D]`) with `keys` rows `start..start + rows`, row-major
/// `N x rows`.
fn tile_products(query: &Tensor, keys: &Tensor, start: usize, rows: usize) -> Result<Vec<f32>> {
    let tile = keys.narrow(0, start, rows)?;
    let s = query.matmul(&tile.t()?)?;
    Ok(s.flatten_all()?.to_vec1::<f32>()?)
}

/// For every row of `query` (`[N, D]`), the key row of `keys` (`[M, D]`) with the largest inner
/// product, over tiles of `tile_rows` keys. Both are expected L2-normalised (then the inner
/// product is the cosine similarity) and of dtype f32.
pub fn nearest(query: &Tensor, keys: &Tensor, tile_rows: usize) -> Result<Nearest> {
    let (n, m, _) = check_pair(query, keys)?;
    let tile_rows = tile_rows.max(1);
    let mut best = vec![f32::NEG_INFINITY; n];
    let mut index = vec![0u32; n];
    let mut start = 0;
    while start < m {
        let rows = tile_rows.min(m - start);
        let s = tile_products(query, keys, start, rows)?;
        for (r, row) in s.chunks_exact(rows).enumerate() {
            let (mut b, mut bi) = (best[r], index[r]);
            for (c, &v) in row.iter().enumerate() {
                if v > b {
                    b = v;
                    bi = (start + c) as u32;
                }
            }
            best[r] = b;
            index[r] = bi;
        }
        start += rows;
    }
    Ok(Nearest {
        similarity: best,
        index,
    })
}

/// Both directions of one pair of images: per row of `a`, the largest inner product with any row
/// of `b`, and per row of `b`, the largest with any row of `a`, from one product. Mutual scoring
/// needs every ordered pair; this halves its work.
pub fn mutual_max(a: &Tensor, b: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    let (n, m, _) = check_pair(a, b)?;
    let s = tile_products(a, b, 0, m)?;
    let mut rows = vec![f32::NEG_INFINITY; n];
    let mut cols = vec![f32::NEG_INFINITY; m];
    for (r, row) in s.chunks_exact(m).enumerate() {
        let mut best = f32::NEG_INFINITY;
        for (c, &v) in row.iter().enumerate() {
            best = best.max(v);
            if v > cols[c] {
                cols[c] = v;
            }
        }
        rows[r] = best;
    }
    Ok((rows, cols))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn matrix(rows: &[[f32; 3]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), 3), &Device::Cpu).unwrap()
    }

    #[test]
    fn nearest_is_exact_across_tiles_and_ties_take_the_first_key() {
        let keys = l2_normalize_rows(&matrix(&[
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 1.0, 0.0],
            [1.0, 1.0, 0.0],
        ]))
        .unwrap();
        let query = l2_normalize_rows(&matrix(&[[0.0, 2.0, 0.0], [1.0, 0.9, 0.0]])).unwrap();
        for tile in [1, 2, 3, 5, 100] {
            let nn = nearest(&query, &keys, tile).unwrap();
            assert_eq!(nn.index, vec![1, 4], "tile {tile}");
            assert!((nn.similarity[0] - 1.0).abs() < 1e-6);
            assert!(nn.cosine_distances()[0].abs() < 1e-6);
        }
    }

    #[test]
    fn both_directions_of_a_pair() {
        let a = matrix(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]);
        let b = matrix(&[[0.5, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.25, 0.0]]);
        let (rows, cols) = mutual_max(&a, &b).unwrap();
        assert_eq!(rows, vec![0.5, 0.25]);
        assert_eq!(cols, vec![0.5, 0.0, 0.25]);
    }

    #[test]
    fn shapes_are_checked() {
        let a = matrix(&[[1.0, 0.0, 0.0]]);
        let b = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(nearest(&a, &b, 8).is_err());
        let empty = Tensor::zeros((0, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(nearest(&a, &empty, 8).is_err());
    }
}
