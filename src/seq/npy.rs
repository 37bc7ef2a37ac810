//! Sequences as NumPy files: `.npy` (an (N, T, F) or (N, T) float array, unlabelled) or `.npz`
//! as `np.savez` writes it — arrays `X` (N, T, F) or (N, T) float32/float64, optional `y` (N)
//! integer, float or unicode labels, optional `lengths` (N) integers. Without `lengths`, steps
//! that are all NaN at the end of a sequence are padding (NaN anywhere else is an error). Every
//! problem is an error naming the array and what is wrong, never a panic; nothing is allocated
//! from a declared size before it is checked against the file's.

use crate::error::Result;
use crate::seq::{Dataset, Labels};
use std::path::Path;

/// Largest NumPy file read (4 GiB).
const LIMIT: u64 = 1 << 32;

/// Reads a `.npy` or `.npz` file (see the module docs); `values` says whether labels are
/// targets (regression) rather than classes.
pub fn read(path: &Path, values: bool) -> Result<Dataset> {
    let bytes = crate::files::fsio::read_bounded(path, LIMIT)?;
    let npz = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    parse(&bytes, npz, values).map_err(|e| e.in_file(path))
}

/// Parses the bytes of a `.npz` (`npz`) or `.npy` file; the error is a message (the caller adds
/// the path).
pub fn parse(bytes: &[u8], npz: bool, values: bool) -> crate::Result<Dataset> {
    if npz { parse_npz(bytes, values) } else { parse_npy_dataset(bytes) }.map_err(crate::Error::Malformed)
}

/// The element types read.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dtype {
    F4,
    F8,
    /// Signed or unsigned integer of this many bytes.
    Int {
        bytes: usize,
        signed: bool,
    },
    /// Fixed-width unicode of this many characters (UCS-4).
    Unicode(usize),
}

impl Dtype {
    /// NumPy's name for it.
    fn name(self) -> String {
        match self {
            Dtype::F4 => "float32".into(),
            Dtype::F8 => "float64".into(),
            Dtype::Int { bytes, signed } => format!("{}int{}", if signed { "" } else { "u" }, 8 * bytes),
            Dtype::Unicode(n) => format!("<U{n} (strings)"),
        }
    }

    fn size(self) -> usize {
        match self {
            Dtype::F4 => 4,
            Dtype::F8 => 8,
            Dtype::Int { bytes, .. } => bytes,
            Dtype::Unicode(n) => 4 * n,
        }
    }
}

/// One parsed array: its type, shape and raw little-endian data (C order).
struct Array<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: &'a [u8],
}

/// Parses a `.npy` array (format versions 1–3, little-endian, C order).
fn parse_npy(b: &[u8]) -> std::result::Result<Array<'_>, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a NumPy .npy array (no \\x93NUMPY magic)".into());
    }
    let (len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("NumPy format version {v} is not supported (1–3 are)")),
    };
    let header = b.get(start..start + len).ok_or("the .npy header is cut short")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let field = |key: &str| -> std::result::Result<&str, String> {
        let at = header.find(&format!("'{key}'")).ok_or_else(|| format!("the .npy header has no '{key}'"))?;
        let rest = header[at + key.len() + 2..].trim_start().trim_start_matches(':').trim_start();
        Ok(rest)
    };
    let descr = field("descr")?;
    let descr = descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or("unreadable 'descr'")?;
    let dtype = match descr {
        "<f4" => Dtype::F4,
        "<f8" => Dtype::F8,
        d if (d.starts_with("<i") || d.starts_with("<u") || d.starts_with("|i") || d.starts_with("|u"))
            && matches!(&d[2..], "1" | "2" | "4" | "8") =>
        {
            Dtype::Int { bytes: d[2..].parse().unwrap_or(8), signed: d.as_bytes()[1] == b'i' }
        }
        d if d.starts_with("<U") => Dtype::Unicode(d[2..].parse().map_err(|_| format!("unreadable dtype {d:?}"))?),
        d => {
            return Err(format!(
                "dtype {d:?} is not supported: use float32 or float64 values (little-endian), integer or string labels"
            ));
        }
    };
    if field("fortran_order")?.starts_with("True") {
        return Err("the array is in Fortran order: save np.ascontiguousarray(a) instead".into());
    }
    let shape = field("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("unreadable 'shape'")?;
    let shape: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("unreadable shape entry {s:?}")))
        .collect::<std::result::Result<_, _>>()?;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("the declared shape is too large")?;
    let need = count.checked_mul(dtype.size()).ok_or("the declared shape is too large")?;
    let data = &b[start + len..];
    if data.len() != need {
        return Err(format!(
            "the header declares shape {shape:?} ({need} bytes) but {} bytes follow: the file is cut short or corrupt",
            data.len()
        ));
    }
    Ok(Array { dtype, shape, data })
}

/// Reads a little-endian u16 / u32 / u64 at `at`.
fn le(b: &[u8], at: usize, n: usize) -> std::result::Result<u64, String> {
    let s = b.get(at..at + n).ok_or("the .npz file is cut short")?;
    Ok(s.iter().rev().fold(0u64, |v, &x| (v << 8) | x as u64))
}

/// The stored (uncompressed) members of a zip archive, by name.
fn zip_members(b: &[u8]) -> std::result::Result<Vec<(String, &[u8])>, String> {
    // The end-of-central-directory record: its signature within the last 64 KiB + 22 bytes.
    let from = b.len().saturating_sub(65_557);
    let eocd = (from..b.len().saturating_sub(21))
        .rev()
        .find(|&i| b[i..i + 4] == [0x50, 0x4b, 0x05, 0x06])
        .ok_or("not a .npz file (no zip directory): save it with np.savez")?;
    let (mut entries, mut cd) = (le(b, eocd + 10, 2)?, le(b, eocd + 16, 4)?);
    if entries == 0xffff || cd == 0xffff_ffff {
        // Zip64: the locator just before the record points at the zip64 record.
        let loc = eocd.checked_sub(20).ok_or("a broken zip64 directory")?;
        if b[loc..loc + 4] != [0x50, 0x4b, 0x06, 0x07] {
            return Err("a broken zip64 directory".into());
        }
        let rec = le(b, loc + 8, 8)? as usize;
        (entries, cd) = (le(b, rec + 32, 8)?, le(b, rec + 48, 8)?);
    }
    let mut out = Vec::new();
    let mut at = cd as usize;
    for _ in 0..entries.min(1 << 16) {
        if le(b, at, 4)? != 0x0201_4b50 {
            return Err("a broken zip directory entry".into());
        }
        let method = le(b, at + 10, 2)?;
        let (mut csize, mut usize_, mut offset) = (le(b, at + 20, 4)?, le(b, at + 24, 4)?, le(b, at + 42, 4)?);
        let (n, e, c) = (le(b, at + 28, 2)? as usize, le(b, at + 30, 2)? as usize, le(b, at + 32, 2)? as usize);
        let name = String::from_utf8_lossy(b.get(at + 46..at + 46 + n).ok_or("cut short")?).into_owned();
        // Zip64 sizes and offset live in extra field 0x0001, in this order, where the record says 0xffffffff.
        let mut x = at + 46 + n;
        while x + 4 <= at + 46 + n + e {
            let (id, len) = (le(b, x, 2)?, le(b, x + 2, 2)? as usize);
            if id == 1 {
                let mut p = x + 4;
                for v in [&mut usize_, &mut csize, &mut offset] {
                    if *v == 0xffff_ffff {
                        *v = le(b, p, 8)?;
                        p += 8;
                    }
                }
            }
            x += 4 + len;
        }
        if method != 0 {
            return Err(format!(
                "member {name:?} is compressed: save the arrays with np.savez (not np.savez_compressed)"
            ));
        }
        let local = offset as usize;
        if le(b, local, 4)? != 0x0403_4b50 {
            return Err(format!("member {name:?}: a broken zip entry"));
        }
        let start = local + 30 + le(b, local + 26, 2)? as usize + le(b, local + 28, 2)? as usize;
        let data = b.get(start..start + csize as usize).ok_or_else(|| format!("member {name:?} is cut short"))?;
        out.push((name, data));
        at += 46 + n + e + c;
    }
    Ok(out)
}

/// Labels: class names (decimal for numbers) or target values.
fn label_strings(a: &Array<'_>) -> std::result::Result<Vec<String>, String> {
    let n = a.shape.iter().product::<usize>();
    let d = a.data;
    Ok(match a.dtype {
        Dtype::F4 => d.chunks_exact(4).map(|c| format!("{:?}", f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
        Dtype::F8 => {
            d.chunks_exact(8).map(|c| format!("{:?}", f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))).collect()
        }
        Dtype::Int { bytes, signed } => d
            .chunks_exact(bytes)
            .map(|c| {
                let raw = c.iter().rev().fold(0u64, |v, &x| (v << 8) | x as u64);
                if signed {
                    let shift = 64 - 8 * bytes as u32;
                    (((raw << shift) as i64) >> shift).to_string()
                } else {
                    raw.to_string()
                }
            })
            .collect(),
        Dtype::Unicode(k) => {
            let mut out = Vec::with_capacity(n);
            for c in d.chunks_exact(4 * k.max(1)) {
                let s: String = c
                    .chunks_exact(4)
                    .map(|u| u32::from_le_bytes([u[0], u[1], u[2], u[3]]))
                    .take_while(|&u| u != 0)
                    .map(|u| char::from_u32(u).ok_or("a label holds an invalid character"))
                    .collect::<std::result::Result<_, _>>()?;
                out.push(s);
            }
            out
        }
    })
}

/// The float values of `a`, as f64.
fn floats(a: &Array<'_>, what: &str) -> std::result::Result<Vec<f64>, String> {
    match a.dtype {
        Dtype::F4 => Ok(a.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()),
        Dtype::F8 => Ok(a.data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()),
        d => Err(format!("{what} has dtype {}: save the values as float32 or float64", d.name())),
    }
}

/// A dataset from `X` (and `lengths`, labels `y`).
fn dataset(
    x: &Array<'_>,
    lengths: Option<&Array<'_>>,
    y: Option<&Array<'_>>,
    values: bool,
) -> std::result::Result<Dataset, String> {
    let (n, t, f) = match x.shape[..] {
        [n, t, f] => (n, t, f),
        [n, t] => (n, t, 1),
        _ => return Err(format!("X has shape {:?}: give (N, T, F) or (N, T)", x.shape)),
    };
    if n == 0 || t == 0 || f == 0 {
        return Err(format!("X has shape {:?}: it needs sequences, steps and features", x.shape));
    }
    let v = floats(x, "X")?;
    let lens: Vec<usize> = match lengths {
        Some(l) => {
            let s = label_strings(l)?;
            if !matches!(l.dtype, Dtype::Int { .. }) || s.len() != n {
                return Err(format!("lengths must be {n} integers, one per sequence"));
            }
            let mut out = Vec::with_capacity(n);
            for (i, s) in s.iter().enumerate() {
                match s.parse::<usize>() {
                    Ok(k) if (1..=t).contains(&k) => out.push(k),
                    _ => return Err(format!("lengths[{i}] = {s}: every length must be between 1 and T = {t}")),
                }
            }
            out
        }
        None => (0..n)
            .map(|i| {
                let step_nan = |s: usize| v[(i * t + s) * f..(i * t + s + 1) * f].iter().all(|x| x.is_nan());
                (0..t).rev().find(|&s| !step_nan(s)).map_or(0, |s| s + 1)
            })
            .collect(),
    };
    let mut out = Vec::with_capacity(lens.iter().sum::<usize>() * f);
    for (i, &len) in lens.iter().enumerate() {
        if len == 0 {
            return Err(format!("sequence {i} of X is all NaN: it has no steps"));
        }
        for s in 0..len {
            for j in 0..f {
                let x = v[(i * t + s) * f + j];
                if !x.is_finite() {
                    return Err(format!(
                        "X[{i}, {s}, {j}] is {x}: a missing value inside a sequence (fill or drop it first)"
                    ));
                }
                out.push(x as f32);
            }
        }
    }
    let labels = match y {
        None => Labels::None,
        Some(y) => {
            let s = label_strings(y)?;
            if y.shape.len() != 1 || s.len() != n {
                return Err(format!("y has shape {:?}: give one label per sequence ({n})", y.shape));
            }
            if values {
                let t = s
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v.parse::<f32>() {
                        Ok(x) if x.is_finite() => Ok(x),
                        _ => Err(format!("y[{i}] = {v} is not a finite number")),
                    })
                    .collect::<std::result::Result<_, _>>()?;
                Labels::Values(t)
            } else {
                crate::seq::csv::classes_of(&s)
            }
        }
    };
    Ok(Dataset { features: f, lengths: lens, values: out, labels })
}

fn parse_npy_dataset(b: &[u8]) -> std::result::Result<Dataset, String> {
    dataset(&parse_npy(b)?, None, None, false)
}

fn parse_npz(b: &[u8], values: bool) -> std::result::Result<Dataset, String> {
    let members = zip_members(b)?;
    let get = |name: &str| -> std::result::Result<Option<Array<'_>>, String> {
        match members.iter().find(|(n, _)| n == &format!("{name}.npy")) {
            Some((_, d)) => parse_npy(d).map(Some).map_err(|e| format!("array '{name}': {e}")),
            None => Ok(None),
        }
    };
    let x = get("X")?.ok_or_else(|| {
        let names: Vec<&str> = members.iter().map(|(n, _)| n.trim_end_matches(".npy")).collect();
        format!("no array 'X' (it holds {names:?}): save with np.savez(path, X=..., y=..., lengths=...)")
    })?;
    dataset(&x, get("lengths")?.as_ref(), get("y")?.as_ref(), values)
}
