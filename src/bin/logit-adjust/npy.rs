//! `.npy` reading and writing for the command-line tool, on `npyz`, with
//! errors that name the file, the dtype and the shape found.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use npyz::{DType, NpyFile, Order, TypeChar, WriterBuilder};

type Npy = NpyFile<BufReader<File>>;

/// numpy's own cap on a header's length (`max_header_size` of
/// `numpy.load`): a longer header is refused before it is read.
const MAX_HEADER_BYTES: u64 = 10_000;

/// An opened file and the bytes of data after its header.
struct Opened {
    npy: Npy,
    payload: u64,
}

fn open(path: &Path, what: &str) -> Result<Opened, String> {
    use std::io::Read;
    let io = |e: std::io::Error| format!("{what} {}: {e}", path.display());
    let bad = |why: String| format!("{what} {}: not a valid .npy file: {why}", path.display());
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    // The preamble: magic, version, header length (2 bytes in version 1, 4
    // after), read by hand so that the header's size is checked before
    // anything allocates for it.
    let mut pre = Vec::with_capacity(12);
    (&mut file).take(12).read_to_end(&mut pre).map_err(io)?;
    let got = pre.len();
    pre.resize(12, 0);
    if got < 10 || &pre[..6] != b"\x93NUMPY" {
        return Err(bad("no .npy magic".into()));
    }
    let (header, start) = match pre[6] {
        1 => (u64::from(u16::from_le_bytes([pre[8], pre[9]])), 10),
        2 | 3 if got >= 12 => (
            u64::from(u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]])),
            12,
        ),
        v => return Err(bad(format!("unsupported format version {v}"))),
    };
    if header > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "a {header}-byte header (numpy allows at most {MAX_HEADER_BYTES})"
        )));
    }
    let payload = len
        .checked_sub(start + header)
        .ok_or_else(|| bad(format!("{len} bytes, shorter than its header")))?;
    // The shape's element count, checked here: npyz multiplies it out
    // unchecked (a panic in debug builds, a wrapped count in release).
    let mut text = vec![0u8; header as usize];
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(start)).map_err(io)?;
    file.read_exact(&mut text).map_err(io)?;
    if shape_overflows(&String::from_utf8_lossy(&text)) {
        return Err(bad("the shape's element count overflows".into()));
    }
    let file = File::open(path).map_err(io)?;
    let npy = NpyFile::new(BufReader::new(file)).map_err(|e| bad(e.to_string()))?;
    Ok(Opened { npy, payload })
}

/// Whether the header's `'shape': (a, b, ...)` (its nonzero dimensions)
/// multiplies out past `u64`.
/// A shape it cannot read is left to npyz, which refuses it.
fn shape_overflows(header: &str) -> bool {
    let Some(at) = header.find("'shape'").or_else(|| header.find("\"shape\"")) else {
        return false;
    };
    let rest = &header[at..];
    let (Some(open), Some(close)) = (rest.find('('), rest.find(')')) else {
        return false;
    };
    if close < open {
        return false;
    }
    let mut count = Some(1u64);
    for d in rest[open + 1..close].split(',') {
        let d = d.trim().trim_end_matches('L');
        if d.is_empty() {
            continue;
        }
        let Ok(d) = d.parse::<u64>() else {
            return false;
        };
        // Zeros skipped: npyz's strides multiply the other dimensions out
        // even when the count is 0.
        count = count.and_then(|c| c.checked_mul(d.max(1)));
    }
    count.is_none()
}

/// `(type char, bytes)` of a plain dtype whose shape's element count matches
/// the bytes present (checked arithmetic: a shape whose count overflows is
/// refused, not wrapped), or a one-line error.
fn plain(opened: &Opened, path: &Path, what: &str) -> Result<(TypeChar, u64), String> {
    let npy = &opened.npy;
    let (kind, size) = match npy.dtype() {
        DType::Plain(t) => (t.type_char(), t.size_field()),
        other => {
            return Err(format!(
            "{what} {}: unsupported dtype {other:?} (structured or nested arrays are not accepted)",
            path.display()
        ))
        }
    };
    let bytes = npy
        .shape()
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d));
    match bytes {
        Some(b) if b == opened.payload => Ok((kind, size)),
        Some(b) => Err(format!(
            "{what} {}: {} needs {b} bytes of data, the file holds {}",
            path.display(),
            describe(npy),
            opened.payload
        )),
        None => Err(format!(
            "{what} {}: {}: the element count overflows",
            path.display(),
            describe(npy)
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

/// Logits as a file held them.
pub enum Logits {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl Logits {
    /// As f32: float16 widens exactly.
    pub fn widened(self) -> Vec<f32> {
        match self {
            Logits::F32(v) => v,
            Logits::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

/// A float32 or float16 `(N, C)` C-order matrix: `(n, c, data)`.
pub fn read_logits_any(path: &Path, what: &str) -> Result<(usize, usize, Logits), String> {
    let (npy, n, c) = open_matrix_of(path, what, "(N, C)", &[4, 2])?;
    let data = if npy.dtype().num_bytes() == Some(2) {
        Logits::F16(
            npy.into_vec::<half::f16>()
                .map_err(|e| read_err(path, what, e))?,
        )
    } else {
        Logits::F32(npy.into_vec::<f32>().map_err(|e| read_err(path, what, e))?)
    };
    Ok((n, c, data))
}

/// A float32 C-order matrix whose shape the messages call `shape` (e.g.
/// `(N, D)` for features): `(rows, columns, data)`.
pub fn read_matrix(
    path: &Path,
    what: &str,
    shape_name: &str,
) -> Result<(usize, usize, Vec<f32>), String> {
    let (npy, n, c) = open_matrix(path, what, shape_name)?;
    let data = npy.into_vec::<f32>().map_err(|e| read_err(path, what, e))?;
    Ok((n, c, data))
}

/// The shape of a float32 matrix as [`read_matrix`] checks it, from its
/// header alone: the data are not read.
pub fn matrix_shape(path: &Path, what: &str, shape_name: &str) -> Result<(usize, usize), String> {
    open_matrix(path, what, shape_name).map(|(_, n, c)| (n, c))
}

fn open_matrix(path: &Path, what: &str, shape_name: &str) -> Result<(Npy, usize, usize), String> {
    open_matrix_of(path, what, shape_name, &[4])
}

/// A float matrix of one of the element `sizes` (4: float32, 2: float16).
fn open_matrix_of(
    path: &Path,
    what: &str,
    shape_name: &str,
    sizes: &[u64],
) -> Result<(Npy, usize, usize), String> {
    let opened = open(path, what)?;
    let (kind, size) = plain(&opened, path, what)?;
    let npy = opened.npy;
    let shape = npy.shape().to_vec();
    if kind != TypeChar::Float || !sizes.contains(&size) || shape.len() != 2 {
        let formats = if sizes.len() > 1 {
            "float32 or float16"
        } else {
            "float32"
        };
        return Err(format!(
            "{what} {}: expected {formats} of shape {shape_name}, got {}",
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
    Ok((npy, n, c))
}

/// Integer labels `(N,)`, int32 or int64.
pub fn read_labels(path: &Path, what: &str) -> Result<Vec<i64>, String> {
    let (npy, size) = open_labels(path, what)?;
    if size == 4 {
        let v = npy.into_vec::<i32>().map_err(|e| read_err(path, what, e))?;
        Ok(v.into_iter().map(i64::from).collect())
    } else {
        npy.into_vec::<i64>().map_err(|e| read_err(path, what, e))
    }
}

/// The length of a labels file as [`read_labels`] checks it, from its
/// header alone.
pub fn labels_len(path: &Path, what: &str) -> Result<usize, String> {
    open_labels(path, what).map(|(npy, _)| npy.shape()[0] as usize)
}

fn open_labels(path: &Path, what: &str) -> Result<(Npy, u64), String> {
    let opened = open(path, what)?;
    let (kind, size) = plain(&opened, path, what)?;
    let npy = opened.npy;
    if npy.shape().len() != 1 || kind != TypeChar::Int || !(size == 4 || size == 8) {
        return Err(format!(
            "{what} {}: expected int32 or int64 of shape (N,), got {}",
            path.display(),
            describe(&npy)
        ));
    }
    Ok((npy, size))
}

/// A 1-D vector `(C,)` of integers (when `integers_ok`) or floats, as f64.
pub fn read_vector(path: &Path, what: &str, integers_ok: bool) -> Result<Vec<f64>, String> {
    let opened = open(path, what)?;
    let (kind, size) = plain(&opened, path, what)?;
    let npy = opened.npy;
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

/// Refuse, before any work, an output that names an input or another
/// output (the same file, whatever the spelling of its path).
pub fn check_outputs(inputs: &[&Path], outputs: &[(&str, &Path)]) -> Result<(), String> {
    let ident = |p: &Path| -> std::path::PathBuf {
        // An existing file by its canonical path; a new one by its
        // directory's canonical path and its name.
        if let Ok(c) = p.canonicalize() {
            return c;
        }
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match (dir.canonicalize(), p.file_name()) {
            (Ok(d), Some(name)) => d.join(name),
            _ => p.to_path_buf(),
        }
    };
    for (k, (what, out)) in outputs.iter().enumerate() {
        let id = ident(out);
        if let Some(input) = inputs.iter().find(|i| ident(i) == id) {
            return Err(format!(
                "{what} {} is also an input ({}): refusing to overwrite an input",
                out.display(),
                input.display()
            ));
        }
        if let Some((other, _)) = outputs[..k].iter().find(|(_, o)| ident(o) == id) {
            return Err(format!(
                "{what} and {other} name the same file {}",
                out.display()
            ));
        }
    }
    Ok(())
}

/// The outputs of one run, written as a transaction: each goes to a
/// temporary file of its own (a unique name beside its target, created
/// new, so no file of the user's is touched) and all are renamed into place
/// only by [`Outputs::commit`], after every one was written. Dropped
/// without a commit (an error on the way), it deletes its temporary files:
/// a failed run leaves no output, and parallel runs writing one path each
/// rename a complete file of their own (the last rename wins).
#[derive(Default)]
pub struct Outputs {
    staged: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Outputs {
    /// Write `data` with `shape` to a temporary file for `path`.
    pub fn stage<T: npyz::AutoSerialize + Copy>(
        &mut self,
        path: &Path,
        shape: &[u64],
        data: &[T],
    ) -> Result<(), String> {
        let err = |e: std::io::Error| format!("writing {}: {e}", path.display());
        let (tmp, file) = unique_temp(path).map_err(err)?;
        // Registered first, so that a failed write is cleaned up on drop.
        self.staged.push((tmp, path.to_path_buf()));
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(std::io::BufWriter::new(file))
            .begin_nd()
            .map_err(err)?;
        writer.extend(data.iter().copied()).map_err(err)?;
        writer.finish().map_err(err)
    }

    /// Write `bytes` (a picture, say) to a temporary file for `path`.
    pub fn stage_bytes(&mut self, path: &Path, bytes: &[u8]) -> Result<(), String> {
        use std::io::Write;
        let err = |e: std::io::Error| format!("writing {}: {e}", path.display());
        let (tmp, mut file) = unique_temp(path).map_err(err)?;
        self.staged.push((tmp, path.to_path_buf()));
        file.write_all(bytes).map_err(err)
    }

    /// Rename every staged file into place.
    pub fn commit(mut self) -> Result<(), String> {
        for k in 0..self.staged.len() {
            let (tmp, path) = &self.staged[k];
            std::fs::rename(tmp, path).map_err(|e| format!("writing {}: {e}", path.display()))?;
            self.staged[k].0 = std::path::PathBuf::new();
        }
        self.staged.clear();
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for (tmp, _) in &self.staged {
            if !tmp.as_os_str().is_empty() {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

/// A new file beside `path`, named `.<name>.<pid>.<n>.tmp`, created with
/// `create_new` so that it is this run's alone.
fn unique_temp(path: &Path) -> std::io::Result<(std::path::PathBuf, File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let dir = path.parent().unwrap_or(Path::new(""));
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logits as f32, whichever float format the file holds.
    fn read_logits(path: &Path, what: &str) -> Result<(usize, usize, Vec<f32>), String> {
        read_logits_any(path, what).map(|(n, c, l)| (n, c, l.widened()))
    }

    /// A small deterministic generator (the test prints its seed).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn npy_bytes(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// One mutation of a valid file: a byte of the header changed, the file
    /// cut short, a shape entry made huge, the header length field set large,
    /// or bytes appended.
    fn mutate(g: &mut Gen, valid: &[u8]) -> Vec<u8> {
        let mut b = valid.to_vec();
        match g.below(6) {
            0 => {
                let at = g.below(b.len().min(128));
                b[at] = g.next() as u8;
            }
            1 => b.truncate(g.below(b.len())),
            2 => {
                let huge = [
                    "(64, 288230376151711744)",
                    "(18446744073709551615,)",
                    "(4294967296, 4294967296)",
                    "(3, -1)",
                    "(0, 9223372036854775808, 4)",
                    "()",
                ][g.below(6)];
                let text = String::from_utf8_lossy(&b).into_owned();
                if let (Some(s), Some(e)) = (text.find("'shape': "), text.find(", }")) {
                    let mut t = text.clone();
                    t.replace_range(s + 9..e, huge);
                    b = t.into_bytes();
                }
            }
            3 => {
                b[6] = 2;
                b.splice(8..10, (g.next() as u32).to_le_bytes());
            }
            4 => b[8..10].copy_from_slice(&(g.next() as u16).to_le_bytes()),
            _ => b.extend((0..g.below(9)).map(|_| g.next() as u8)),
        }
        b
    }

    #[test]
    fn mutated_files_are_errors_never_panics() {
        let seed = if std::env::var_os("LOGIT_ADJUST_FRESH_SEEDS").is_some() {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        } else {
            0x5eed
        };
        let mut g = Gen(seed);
        let dir =
            std::env::temp_dir().join(format!("logit-adjust-npy-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let valid = [
            npy_bytes("<f4", "(3, 5)", &[0u8; 60]),
            npy_bytes("<i8", "(6,)", &[0u8; 48]),
            npy_bytes("<f8", "(4,)", &[0u8; 32]),
            npy_bytes("<f2", "(3, 5)", &[0u8; 30]),
        ];
        let path = dir.join("case.npy");
        for case in 0..3000 {
            let bytes = mutate(&mut g, &valid[case % valid.len()]);
            std::fs::write(&path, &bytes).unwrap();
            let len = bytes.len();
            // Whatever the reader accepts fits in the file's own bytes.
            if let Ok((n, c, data)) = read_logits_any(&path, "logits") {
                let (count, size) = match &data {
                    Logits::F32(v) => (v.len(), 4),
                    Logits::F16(v) => (v.len(), 2),
                };
                assert!(
                    count == n * c && size * count <= len,
                    "seed {seed:#x} case {case}"
                );
            }
            if let Ok(v) = read_labels(&path, "labels") {
                assert!(4 * v.len() <= len, "seed {seed:#x} case {case}");
            }
            if let Ok(v) = read_vector(&path, "prior", true) {
                assert!(v.len() <= len, "seed {seed:#x} case {case}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_overflowing_shape_and_a_huge_header_are_refused() {
        let dir = std::env::temp_dir().join(format!("logit-adjust-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("overflow.npy");
        // (64, 2^58) f4: 2^64 * 4 bytes wraps to 0 in unchecked arithmetic.
        std::fs::write(&path, npy_bytes("<f4", "(64, 288230376151711744)", &[])).unwrap();
        let e = read_logits(&path, "logits").unwrap_err();
        assert!(e.contains("overflows"), "{e}");
        let mut big = b"\x93NUMPY\x02\x00".to_vec();
        big.extend_from_slice(&50_000_000u32.to_le_bytes());
        big.extend_from_slice(b"{'descr': '<f4'");
        std::fs::write(&path, &big).unwrap();
        let e = read_logits(&path, "logits").unwrap_err();
        assert!(e.contains("header"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
