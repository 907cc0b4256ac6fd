//! What the command-line tests share: a scratch folder, a minimal `.npy`
//! writer and reader independent of the tool's own, and running the tool.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_logit-adjust");

/// A minimal .npy writer, independent of the tool's own (npyz).
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], bytes: &[u8]) {
    let shape = match shape {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(bytes);
    std::fs::write(path, out).unwrap();
}

/// Read the data of a little-endian f4 .npy file.
pub fn read_f32_npy(path: &Path) -> (String, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let (len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        )
    };
    let header = String::from_utf8_lossy(&bytes[start..start + len]).into_owned();
    assert!(header.contains("'<f4'"), "{header}");
    let data = bytemuck::pod_collect_to_vec::<u8, f32>(&bytes[start + len..]);
    (header, data)
}

/// A scratch folder, removed on drop.
pub struct Files {
    pub dir: PathBuf,
}

impl Files {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("logit-adjust-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `run(args)` fails with exactly one line, `error: ...` containing `expect`.
pub fn assert_one_line_error(args: &[&str], expect: &str, what: &str) {
    let (code, stdout, stderr) = run(args);
    assert_ne!(code, 0, "{what}: succeeded: {stdout}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
        .collect();
    assert_eq!(lines.len(), 1, "{what}: want one line, got {stderr:?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(expect),
        "{what}: {stderr}"
    );
    assert!(!lines[0].contains("panicked"), "{what}");
}

pub fn f32s(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

pub fn i32s(v: &[i32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

pub fn i64s(v: &[i64]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// Write `.npy` files into the test folder: (name, dtype, shape, bytes).
pub fn write_files(f: &Files, files: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
    for (name, descr, shape, bytes) in files {
        write_npy(&f.path(name), descr, shape, bytes);
    }
}

pub fn f64s(v: &[f64]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}
