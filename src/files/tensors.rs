//! safetensors files of f32 tensors with string metadata: written by hand so equal contents give
//! equal bytes, and read in two checked stages — the header (its size bounded, its metadata and
//! its format key) before anything depends on it, then the declared tensors against the shapes
//! the metadata implies and the file's total size, before the tensors are touched.

use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};

/// The largest header a model file may have (vocabularies and class names live there).
pub(crate) const MAX_HEADER: u64 = 16 << 20;

/// Serialises f32 tensors in the safetensors layout: an 8-byte little-endian header length, a
/// JSON header (keys sorted, padded with spaces to a multiple of 8), then the tensors' bytes in
/// key order.
pub(crate) fn to_bytes(
    tensors: &BTreeMap<String, (Vec<usize>, &[f32])>,
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(metadata));
    let mut offset = 0usize;
    for (name, (shape, values)) in tensors {
        let end = offset + 4 * values.len();
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, values) in tensors.values() {
        out.extend(values.iter().flat_map(|x| x.to_le_bytes()));
    }
    out
}

/// A file's header, read and checked before its tensors: the metadata strings and the declared
/// tensors.
pub(crate) struct Header {
    /// `__metadata__`, string values only.
    pub metadata: HashMap<String, String>,
    json: serde_json::Map<String, serde_json::Value>,
    len: u64,
}

impl Header {
    /// Reads the header of `bytes` and checks that metadata `bptt.format` is `format`.
    pub(crate) fn parse(bytes: &[u8], format: &str) -> Result<Self, String> {
        let too_short = "file is too short to be a safetensors model (truncated?)";
        let head: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or(too_short)?;
        let n = u64::from_le_bytes(head);
        if n > MAX_HEADER {
            return Err(format!("header declares {n} bytes, more than {MAX_HEADER}: not a bptt model file"));
        }
        let header = bytes.get(8..8 + n as usize).ok_or(too_short)?;
        let json: serde_json::Value = serde_json::from_slice(header)
            .map_err(|e| format!("header is not valid JSON ({e}): not a safetensors file"))?;
        let json = json.as_object().ok_or("header is not a JSON object")?.clone();
        let meta = json
            .get("__metadata__")
            .and_then(|m| m.as_object())
            .ok_or("no __metadata__ in the header: a model file needs the bptt metadata (see README)")?;
        let metadata: HashMap<String, String> =
            meta.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect();
        let header = Header { metadata, json, len: n };
        let found = header.get("bptt.format")?;
        if found != format {
            return Err(format!("metadata bptt.format is '{found}', expected '{format}'"));
        }
        Ok(header)
    }

    /// Metadata `key`, or an error naming it.
    pub(crate) fn get(&self, key: &str) -> Result<&str, String> {
        self.metadata.get(key).map(String::as_str).ok_or_else(|| format!("metadata '{key}' is missing"))
    }

    /// Metadata `key` as `true` or `false`, false where it is absent (a setting added later).
    pub(crate) fn flag(&self, key: &str) -> Result<bool, String> {
        match self.metadata.get(key).map(String::as_str) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(v) => Err(format!("metadata '{key}' = '{v}' is not true or false")),
        }
    }

    /// Metadata `key` as a rate in [0, 1), 0 where it is absent (a setting added later).
    pub(crate) fn rate(&self, key: &str) -> Result<f64, String> {
        match self.metadata.get(key) {
            None => Ok(0.0),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|z| (0.0..1.0).contains(z))
                .ok_or_else(|| format!("metadata '{key}' = '{v}' is not a number in [0, 1)")),
        }
    }

    /// Metadata `key` as a whole number.
    pub(crate) fn num(&self, key: &str) -> Result<usize, String> {
        let v = self.get(key)?;
        v.parse::<usize>().map_err(|_| format!("metadata '{key}' = '{v}' is not a whole number"))
    }

    /// Checks every declared tensor is F32, is one of `expected` (or a checkpoint's `optim.*`
    /// or `state.*`) with its shape, and none of `expected` is missing, and that the file is as long as its header says; then parses the
    /// tensors. Nothing is allocated from a declared size before these checks.
    pub(crate) fn tensors<'a>(
        &self,
        bytes: &'a [u8],
        expected: &[(&str, &[usize])],
    ) -> Result<SafeTensors<'a>, String> {
        let mut data_bytes: u128 = 0;
        for (name, info) in self.json.iter().filter(|(k, _)| *k != "__metadata__") {
            let dtype = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
            if dtype != "F32" {
                return Err(format!("tensor '{name}' is {dtype}; model files hold F32 tensors"));
            }
            let shape: Vec<u128> = info
                .get("shape")
                .and_then(|s| s.as_array())
                .map(|a| a.iter().filter_map(|d| d.as_u64().map(u128::from)).collect())
                .ok_or_else(|| format!("tensor '{name}' has no shape"))?;
            data_bytes += 4 * shape.iter().product::<u128>();
            if let Some((_, want)) = expected.iter().find(|(n, _)| n == name) {
                let want: Vec<u128> = want.iter().map(|&d| d as u128).collect();
                if shape != want {
                    return Err(format!("tensor '{name}' has shape {shape:?}, the metadata implies {want:?}"));
                }
            } else if !name.starts_with("optim.") && !name.starts_with("state.") {
                // A checkpoint's optimizer and state tensors aside, every tensor is one the
                // metadata implies: a 2-layer file labelled as 1 layer must not lose a layer.
                return Err(format!(
                    "tensor '{name}' is not one the metadata implies (it describes other sizes, e.g. fewer layers): \
                     the file is mislabelled or corrupt"
                ));
            }
        }
        for (name, _) in expected {
            if !self.json.contains_key(*name) {
                return Err(format!("tensor '{name}' is missing"));
            }
        }
        let total = 8 + self.len as u128 + data_bytes;
        if bytes.len() as u128 != total {
            return Err(format!(
                "file is {} bytes but its header describes {total}: the file is truncated or corrupt",
                bytes.len()
            ));
        }
        SafeTensors::deserialize(bytes).map_err(|e| format!("malformed safetensors data: {e}"))
    }
}

/// A parsed file's tensors and metadata (what a checkpoint keeps besides its model).
pub(crate) struct Parsed<'a> {
    pub tensors: SafeTensors<'a>,
    pub metadata: HashMap<String, String>,
}

/// The f32 values of tensor `name`, checked finite.
pub(crate) fn floats(tensors: &SafeTensors<'_>, name: &str) -> Result<Vec<f32>, String> {
    let t = tensors.tensor(name).map_err(|_| format!("tensor '{name}' is missing"))?;
    let v: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
        return Err(format!("tensor '{name}' contains {bad}: the model is corrupt (diverged training?)"));
    }
    Ok(v)
}
