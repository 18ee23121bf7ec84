//! Which files a batch run reads: image files, directories (walked recursively, sorted, filtered
//! by extension or by `--glob` patterns), or lists of paths; and the deterministic shard of them
//! one machine of many takes.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::error::{Error, ErrorKind, Result};

/// Extensions of the image files a directory walk picks up when no `--glob` is given.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// One file to score.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct InputFile {
    /// The path to open (as given, or joined under the directory it was found in).
    pub path: PathBuf,
    /// The path's mirror under an output folder: `path` without its root and with `..` made
    /// harmless, so `maps/` and `overlays/` reproduce the input tree inside the output
    /// directory and never write outside it.
    pub rel: PathBuf,
}

impl InputFile {
    /// The key of this input in `detections.jsonl` (the path as given).
    pub fn key(&self) -> String {
        self.path.display().to_string()
    }
}

/// `path` as a relative path that stays inside any folder it is joined to.
pub fn mirror_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => out.push("__"),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    if out.as_os_str().is_empty() {
        out.push("image");
    }
    out
}

/// Compiles `--glob` patterns (matched against the path below the directory argument).
pub fn glob_set(patterns: &[String]) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p)
            .map_err(|e| Error::invalid(format!("invalid --glob pattern `{p}`: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| Error::invalid(format!("invalid --glob patterns: {e}")))
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Collects the inputs of `args`: a file is taken as is (whatever its extension, so that a bad
/// file is reported rather than silently skipped); a directory is walked recursively (symbolic
/// links to directories are not followed, to avoid cycles) and its files kept when they match
/// `globs` (or, without globs, have an image extension); a path that does not exist is kept, to
/// be reported as unreadable. The result is sorted by path and free of duplicates; each
/// input's `rel` is its path below the deepest folder that holds all inputs, so
/// `ssvp detect --out o parts/` writes `o/maps/<path below parts>`.
pub fn collect(args: &[PathBuf], globs: Option<&GlobSet>) -> Result<Vec<InputFile>> {
    let mut found = BTreeSet::new();
    for arg in args {
        if arg.is_dir() {
            walk(arg, arg, globs, &mut found)?;
        } else {
            found.insert(arg.clone());
        }
    }
    let absolute: Vec<PathBuf> = found
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let base = common_folder(&absolute);
    Ok(found
        .into_iter()
        .zip(absolute)
        .map(|(path, abs)| InputFile {
            rel: mirror_path(abs.strip_prefix(&base).unwrap_or(&abs)),
            path,
        })
        .collect())
}

/// The deepest folder that contains every path (the paths' parents' common prefix).
fn common_folder(paths: &[PathBuf]) -> PathBuf {
    let mut iter = paths.iter();
    let Some(first) = iter.next() else {
        return PathBuf::new();
    };
    let mut common: Vec<Component<'_>> = first
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for p in iter {
        let parent: Vec<Component<'_>> = p
            .parent()
            .map(|p| p.components().collect())
            .unwrap_or_default();
        let n = common
            .iter()
            .zip(&parent)
            .take_while(|(a, b)| a == b)
            .count();
        common.truncate(n);
    }
    common.iter().collect()
}

fn walk(
    root: &Path,
    dir: &Path,
    globs: Option<&GlobSet>,
    found: &mut BTreeSet<PathBuf>,
) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        paths.push((
            entry.path(),
            entry.file_type().map_err(|e| Error::io(dir, e))?,
        ));
    }
    for (path, kind) in paths {
        if kind.is_dir() {
            walk(root, &path, globs, found)?;
        } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
            let keep = match globs {
                Some(set) => set.is_match(path.strip_prefix(root).unwrap_or(&path)),
                None => has_image_extension(&path),
            };
            if keep {
                found.insert(path);
            }
        }
    }
    Ok(())
}

/// The inputs that do not lie inside `out_dir`: an output folder placed inside the input tree
/// must not have its overlays and maps scored by the next run.
pub fn outside(inputs: Vec<InputFile>, out_dir: &Path) -> Vec<InputFile> {
    let Ok(out) = std::path::absolute(out_dir) else {
        return inputs;
    };
    inputs
        .into_iter()
        .filter(|f| std::path::absolute(&f.path).map_or(true, |p| !p.starts_with(&out)))
        .collect()
}

/// Paths listed one per line (the `-` input): blank lines and surrounding whitespace ignored.
pub fn parse_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// The `index`-th of `count` contiguous slices of a sorted input list (0-based, like a
/// Kubernetes indexed Job's `JOB_COMPLETION_INDEX`): slice `k` is
/// `[floor(k·n/count), floor((k+1)·n/count))`, so the slices partition the inputs and differ in
/// size by at most one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index of this shard.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::invalid(format!(
                "--shard `{s}`: expected K/N with 0 <= K < N (0-based, e.g. 0/4 .. 3/4)"
            ))
        };
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = k.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// This shard's slice of `inputs` (which must be sorted, as [`collect`] returns them).
    pub fn select<T: Clone>(&self, inputs: &[T]) -> Vec<T> {
        let n = inputs.len();
        let lo = self.index * n / self.count;
        let hi = (self.index + 1) * n / self.count;
        inputs[lo..hi].to_vec()
    }
}

/// Fails with [`ErrorKind::NotFound`] when there is nothing to score.
pub fn require_some(inputs: &[InputFile], args: &[PathBuf]) -> Result<()> {
    if inputs.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no input images found in {} (directories are searched for {} files, or for \
                 --glob patterns)",
                args.iter()
                    .map(|a| a.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                IMAGE_EXTENSIONS.join("/")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_paths_stay_inside() {
        assert_eq!(
            mirror_path(Path::new("/data/a/b.png")),
            PathBuf::from("data/a/b.png")
        );
        assert_eq!(
            mirror_path(Path::new("../x/./y.png")),
            PathBuf::from("__/x/y.png")
        );
        assert_eq!(mirror_path(Path::new("/")), PathBuf::from("image"));
    }

    #[test]
    fn shards_partition_the_inputs() {
        let items: Vec<usize> = (0..10).collect();
        let mut all = Vec::new();
        for k in 0..3 {
            let s: Shard = format!("{k}/3").parse().unwrap();
            all.extend(s.select(&items));
        }
        assert_eq!(all, items);
        assert_eq!(
            "1/3".parse::<Shard>().unwrap().select(&items),
            vec![3, 4, 5]
        );
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn walks_sorted_with_extensions_or_globs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in ["b/2.PNG", "b/1.jpg", "a.png", "notes.txt", "c/d/e.tif"] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let rel = |v: Vec<InputFile>| -> Vec<String> {
            v.iter()
                .map(|i| i.path.strip_prefix(root).unwrap().display().to_string())
                .collect()
        };
        let all = collect(&[root.to_path_buf()], None).unwrap();
        assert_eq!(all[1].rel, PathBuf::from("b/1.jpg"));
        assert_eq!(rel(all), vec!["a.png", "b/1.jpg", "b/2.PNG", "c/d/e.tif"]);
        let one = collect(&[root.join("b/1.jpg")], None).unwrap();
        assert_eq!(one[0].rel, PathBuf::from("1.jpg"));
        let globs = glob_set(&["b/*".to_string(), "**/*.txt".to_string()]).unwrap();
        let some = collect(&[root.to_path_buf()], globs.as_ref()).unwrap();
        assert_eq!(rel(some), vec!["b/1.jpg", "b/2.PNG", "notes.txt"]);
        // A named file is kept whatever its extension; duplicates collapse.
        let named = collect(&[root.join("notes.txt"), root.join("notes.txt")], None).unwrap();
        assert_eq!(named.len(), 1);
        assert!(glob_set(&["[".to_string()]).is_err());
        // An output folder inside the input tree is left out.
        let kept = outside(
            collect(&[root.to_path_buf()], None).unwrap(),
            &root.join("b"),
        );
        assert_eq!(rel(kept), vec!["a.png", "c/d/e.tif"]);
        assert_eq!(
            parse_list(" a.png\n\n b/c.png \n"),
            vec![PathBuf::from("a.png"), PathBuf::from("b/c.png")]
        );
    }
}
