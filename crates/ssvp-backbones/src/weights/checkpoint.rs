use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// Every tensor of one checkpoint, under the names it has in the file (until renamed).
pub struct Checkpoint {
    origin: String,
    tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads a checkpoint, choosing the reader from the file's content rather than its name:
    /// safetensors (`*.safetensors`), a sharded safetensors index (`*.safetensors.index.json`),
    /// or a `torch.save` zip archive (`.bin`, `.pth`, `.pt`).
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let origin = path.display().to_string();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut file = std::fs::File::open(path)
                .map_err(|e| Error::io(format!("cannot open checkpoint {origin}"), path, e))?;
            let read = file
                .read(&mut magic)
                .map_err(|e| Error::io(format!("cannot read checkpoint {origin}"), path, e))?;
            if read < 4 {
                return Err(Error::format(format!(
                    "checkpoint {origin} is too short to be a weights file"
                )));
            }
        }
        let tensors: HashMap<String, Tensor> = if name.ends_with(".index.json") {
            load_sharded_safetensors(path, device)?
        } else if magic == *b"PK\x03\x04" {
            // torch.save zip archive. candle's pickle reader only interprets the opcodes that
            // build tensors and dicts; it never imports or calls Python code.
            let entries = candle_core::pickle::read_all_with_key(path, None)
                .or_else(|_| candle_core::pickle::read_all_with_key(path, Some("state_dict")))
                .or_else(|_| candle_core::pickle::read_all_with_key(path, Some("model")))
                .map_err(|e| {
                    Error::checkpoint(format!("cannot read PyTorch checkpoint {origin}"), e)
                })?;
            entries.into_iter().collect()
        } else if name.ends_with(".pt") && &magic[..2] == b"\x80\x02" {
            return Err(Error::format(format!(
                "{origin} is a legacy (non-zip) torch pickle; re-save it with torch.save in the \
                 default zip format or convert it to safetensors"
            )));
        } else {
            candle_core::safetensors::load(path, device).map_err(|e| {
                Error::checkpoint(
                    format!("cannot read {origin} as safetensors or a PyTorch zip"),
                    e,
                )
            })?
        };
        if tensors.is_empty() {
            return Err(Error::format(format!(
                "checkpoint {origin} holds no tensors"
            )));
        }
        let tensors = tensors
            .into_iter()
            .map(|(k, t)| Ok((k, t.to_device(device)?)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { origin, tensors })
    }

    /// Builds a checkpoint from tensors already in memory (tests, converted weights).
    pub fn from_tensors(origin: impl Into<String>, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            origin: origin.into(),
            tensors,
        }
    }

    /// Where the tensors came from, for error messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether it holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether a tensor of that name is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor of that name, if present.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// Every tensor name, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Adds or replaces a tensor (renaming steps that split or reshape).
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Removes a tensor and returns it, if present.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }

    /// Takes a tensor that a renaming step requires, with an error naming it and the file.
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| {
            Error::format(format!("checkpoint {} has no tensor `{name}`", self.origin))
        })
    }

    /// Renames every tensor through `rename`; `None` drops the tensor (buffers such as
    /// `position_ids` or masks that the model does not read).
    pub fn rename(self, mut rename: impl FnMut(&str) -> Option<String>) -> Self {
        let tensors = self
            .tensors
            .into_iter()
            .filter_map(|(k, t)| rename(&k).map(|k| (k, t)))
            .collect();
        Self {
            origin: self.origin,
            tensors,
        }
    }

    /// The tensors by name, giving up the origin.
    pub fn into_tensors(self) -> HashMap<String, Tensor> {
        self.tensors
    }

    /// Hands the tensors to the model's modules. Errors name the tensor, its expected shape and
    /// the checkpoint file, which is what a user with a wrong or truncated file needs to see.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(NamedTensors {
            origin: self.origin,
            tensors: self.tensors,
        });
        VarBuilder::from_backend(backend, dtype, device.clone())
    }
}

fn load_sharded_safetensors(index: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let shards = shard_names(index)?.into_iter().map(|name| dir.join(name));
    let mut tensors = HashMap::new();
    for shard in shards {
        let part = candle_core::safetensors::load(&shard, device)
            .map_err(|e| Error::checkpoint(format!("cannot read shard {}", shard.display()), e))?;
        tensors.extend(part);
    }
    Ok(tensors)
}

struct NamedTensors {
    origin: String,
    tensors: HashMap<String, Tensor>,
}

impl NamedTensors {
    fn lookup(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("checkpoint {} has no tensor `{name}`", self.origin))
        })
    }
}

impl SimpleBackend for NamedTensors {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.lookup(name)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::Msg(format!(
                "tensor `{name}` in {} has shape {:?}, the model expects {:?}",
                self.origin,
                tensor.dims(),
                shape.dims()
            )));
        }
        tensor.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.lookup(name)?.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// A repository file name as a relative path without `..` or a root, or an error (names come
/// from the network: a sharded index lists them).
pub(crate) fn safe_relative(name: &str) -> Result<PathBuf> {
    let path = Path::new(name);
    if name.is_empty() || !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::format(format!(
            "refusing the repository file name `{name}`: not a plain relative path"
        )));
    }
    Ok(path.to_path_buf())
}

/// The distinct shard files a sharded safetensors index lists (each a plain relative name:
/// an index cannot point outside its folder).
pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| Error::io(format!("cannot read {}", index.display()), index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Format {
        message: format!("{} is not JSON", index.display()),
        source: Some(Box::new(e)),
    })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(format!("{} has no weight_map object", index.display())))?;
    let names: BTreeSet<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    for name in &names {
        safe_relative(name)?;
    }
    Ok(names.into_iter().collect())
}
