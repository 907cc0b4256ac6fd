//! `.npy` reading and writing for the command-line tool, on `npyz`, with
//! errors that name the file, the dtype and the shape found.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use npyz::{DType, NpyFile, Order, TypeChar, WriterBuilder};

type Npy = NpyFile<BufReader<File>>;

fn open(path: &Path, what: &str) -> Result<Npy, String> {
    let file = File::open(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    NpyFile::new(BufReader::new(file))
        .map_err(|e| format!("{what} {}: not a valid .npy file: {e}", path.display()))
}

/// `(type char, bytes)` of a plain dtype, or a one-line error.
fn plain(npy: &Npy, path: &Path, what: &str) -> Result<(TypeChar, u64), String> {
    match npy.dtype() {
        DType::Plain(t) => Ok((t.type_char(), t.size_field())),
        other => Err(format!(
            "{what} {}: unsupported dtype {other:?} (structured or nested arrays are not accepted)",
            path.display()
        )),
    }
}

fn describe(npy: &Npy) -> String {
    let dtype = match npy.dtype() {
        DType::Plain(t) => t.to_string(),
        other => format!("{other:?}"),
    };
    format!("dtype {dtype}, shape {:?}", npy.shape())
}

fn read_err(path: &Path, what: &str, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

/// A float32 `(N, C)` C-order matrix: `(n, c, data)`.
pub fn read_logits(path: &Path, what: &str) -> Result<(usize, usize, Vec<f32>), String> {
    let npy = open(path, what)?;
    let (kind, size) = plain(&npy, path, what)?;
    let shape = npy.shape().to_vec();
    if kind != TypeChar::Float || size != 4 || shape.len() != 2 {
        return Err(format!(
            "{what} {}: expected float32 of shape (N, C), got {}",
            path.display(),
            describe(&npy)
        ));
    }
    if npy.order() == Order::Fortran && shape[0] > 1 && shape[1] > 1 {
        return Err(format!(
            "{what} {}: Fortran-ordered arrays are not accepted; save with np.ascontiguousarray",
            path.display()
        ));
    }
    let (n, c) = (shape[0] as usize, shape[1] as usize);
    let data = npy.into_vec::<f32>().map_err(|e| read_err(path, what, e))?;
    Ok((n, c, data))
}

/// Integer labels `(N,)`, int32 or int64.
pub fn read_labels(path: &Path, what: &str) -> Result<Vec<i64>, String> {
    let npy = open(path, what)?;
    let (kind, size) = plain(&npy, path, what)?;
    if npy.shape().len() != 1 || kind != TypeChar::Int || !(size == 4 || size == 8) {
        return Err(format!(
            "{what} {}: expected int32 or int64 of shape (N,), got {}",
            path.display(),
            describe(&npy)
        ));
    }
    if size == 4 {
        let v = npy.into_vec::<i32>().map_err(|e| read_err(path, what, e))?;
        Ok(v.into_iter().map(i64::from).collect())
    } else {
        npy.into_vec::<i64>().map_err(|e| read_err(path, what, e))
    }
}

/// A 1-D vector `(C,)` of integers (when `integers_ok`) or floats, as f64.
pub fn read_vector(path: &Path, what: &str, integers_ok: bool) -> Result<Vec<f64>, String> {
    let npy = open(path, what)?;
    let (kind, size) = plain(&npy, path, what)?;
    let wrong = || {
        let accepted = if integers_ok {
            "an integer or float"
        } else {
            "a float"
        };
        format!(
            "{what} {}: expected {accepted} vector of shape (C,), got {}",
            path.display(),
            describe(&npy)
        )
    };
    if npy.shape().len() != 1 {
        return Err(wrong());
    }
    let e = |e| read_err(path, what, e);
    match (kind, size) {
        (TypeChar::Float, 4) => Ok(npy
            .into_vec::<f32>()
            .map_err(e)?
            .into_iter()
            .map(f64::from)
            .collect()),
        (TypeChar::Float, 8) => npy.into_vec::<f64>().map_err(e),
        (TypeChar::Int, 4) if integers_ok => Ok(npy
            .into_vec::<i32>()
            .map_err(e)?
            .into_iter()
            .map(f64::from)
            .collect()),
        (TypeChar::Int, 8) if integers_ok => Ok(npy
            .into_vec::<i64>()
            .map_err(e)?
            .into_iter()
            .map(|x| x as f64)
            .collect()),
        (TypeChar::Uint, 4) if integers_ok => Ok(npy
            .into_vec::<u32>()
            .map_err(e)?
            .into_iter()
            .map(f64::from)
            .collect()),
        (TypeChar::Uint, 8) if integers_ok => Ok(npy
            .into_vec::<u64>()
            .map_err(e)?
            .into_iter()
            .map(|x| x as f64)
            .collect()),
        _ => Err(wrong()),
    }
}

/// Write `data` with `shape` to `path` atomically: a temporary file renamed
/// into place, so a failed run leaves no partial output.
pub fn write<T: npyz::AutoSerialize + Copy>(
    path: &Path,
    shape: &[u64],
    data: &[T],
) -> Result<(), String> {
    let tmp = path.with_extension("npy.partial");
    let result = (|| -> std::io::Result<()> {
        let file = std::io::BufWriter::new(File::create(&tmp)?);
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(file)
            .begin_nd()?;
        writer.extend(data.iter().copied())?;
        writer.finish()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}
