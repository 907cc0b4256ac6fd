//! Format variants of a shader file: the file's f32 blocks (between its
//! `// >>> name` and `// <<< name` lines) swapped for blocks of a file
//! under `shaders/blocks/` (each from its `//! block name` line to the
//! next). The f32 file stays a whole module on its own, as WebGPU and the
//! shader tests read it.

use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// `shaders/blocks/halves.wgsl`: the half formats' codecs.
const HALVES_WGSL: &str = include_str!("../shaders/blocks/halves.wgsl");

/// Block `name` of `blocks` (the file `file`, for messages).
pub(crate) fn block(blocks: &'static str, file: &str, name: &str) -> Result<&'static str> {
    let head = format!("//! block {name}\n");
    let start = blocks
        .find(&head)
        .ok_or_else(|| Error::Gpu(format!("{file} has no block {name}")))?
        + head.len();
    let rest = &blocks[start..];
    Ok(&rest[..rest.find("//! block ").unwrap_or(rest.len())])
}

/// `text` with the lines from `// >>> what` to `// <<< what` replaced by
/// `with`.
pub(crate) fn swap(text: &str, what: &str, with: &str) -> Result<String> {
    let open = format!("// >>> {what}");
    let close = format!("// <<< {what}\n");
    let missing = || Error::Gpu(format!("no {what} block to swap"));
    let start = text.find(&open).ok_or_else(missing)?;
    let end = text[start..].find(&close).ok_or_else(missing)? + start + close.len();
    Ok([&text[..start], with, &text[end..]].concat())
}

/// The codec (`half_value`, `half_bits`) of a half format.
pub(crate) fn codec(dtype: Dtype) -> Result<&'static str> {
    block(
        HALVES_WGSL,
        "halves.wgsl",
        &format!("codec {}", dtype.name()),
    )
}

/// `text` with its `logits` block (and, given, its `grad` block) swapped
/// for `kind` ("packed" or "native") blocks of `blocks`, after `dtype`'s
/// codec; native f16 gets `enable f16;` first.
pub(crate) fn halves(
    text: &str,
    blocks: &'static str,
    file: &str,
    dtype: Dtype,
    native: bool,
    grad: bool,
) -> Result<String> {
    let kind = if native { "native" } else { "packed" };
    let logits = [
        codec(dtype)?,
        block(blocks, file, &format!("logits {kind}"))?,
    ]
    .concat();
    let mut out = swap(text, "logits", &logits)?;
    if grad {
        out = swap(&out, "grad", block(blocks, file, &format!("grad {kind}"))?)?;
    }
    if native {
        out.insert_str(0, "enable f16;\n\n");
    }
    Ok(out)
}
