//! Per-adapter tuning: which layout (and workgroup size) is fastest for a
//! given `C`, measured on the adapter by `diagnostics::measure_tuning` (the CLI's
//! `tune` command) and cached per adapter and driver in a small text file.
//! [`Context`](crate::Context) loads the cache when it opens a device; without one, the
//! built-in defaults apply (see [`crate::Variant::Auto`]).
//!
//! The cache file holds one choice per line, for the largest `C` it covers:
//!
//! ```text
//! # logit-adjust tuning v2: llvmpipe (LLVM 15.0.6, 256 bits) | Vulkan | Mesa 22.3.6
//! loss 31 Rows
//! posthoc 31 Windows
//! ```

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::layouts::{PostHocVariant, Variant};

const HEADER: &str = "# logit-adjust tuning v2: ";

/// The class counts `diagnostics::measure_tuning` times; each choice covers the `C`s up
/// to the geometric midpoint to the next.
pub const TUNED_CLASSES: [usize; 6] = [10, 100, 1000, 8142, 32_768, 262_144];

/// The fused loss's layout for `C` up to `max_classes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossChoice {
    /// The largest `C` this choice covers.
    pub max_classes: usize,
    /// The layout.
    pub variant: Variant,
}

/// The post-hoc argmax's layout for `C` up to `max_classes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostHocChoice {
    /// The largest `C` this choice covers.
    pub max_classes: usize,
    /// The layout.
    pub variant: PostHocVariant,
}

/// Measured layout choices for one adapter and driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tuning {
    /// Loss choices, by increasing `max_classes`.
    pub loss: Vec<LossChoice>,
    /// Post-hoc choices, by increasing `max_classes`.
    pub posthoc: Vec<PostHocChoice>,
}

fn variant_name(v: Variant) -> &'static str {
    match v {
        Variant::Auto => "Auto",
        Variant::Rows => "Rows",
        Variant::Split => "Split",
        Variant::Segments => "Segments",
        Variant::RowGroups => "RowGroups",
    }
}

/// The loss layouts `diagnostics::measure_tuning` times.
pub(crate) const LOSS_VARIANTS: [Variant; 4] = [
    Variant::Rows,
    Variant::Split,
    Variant::Segments,
    Variant::RowGroups,
];

fn variant_from(s: &str) -> Option<Variant> {
    LOSS_VARIANTS.into_iter().find(|&v| variant_name(v) == s)
}

fn posthoc_name(v: PostHocVariant) -> &'static str {
    match v {
        PostHocVariant::Auto => "Auto",
        PostHocVariant::RowPerThread => "RowPerThread",
        PostHocVariant::RowPerGroup => "RowPerGroup",
        PostHocVariant::Windows => "Windows",
    }
}

fn posthoc_from(s: &str) -> Option<PostHocVariant> {
    [
        PostHocVariant::RowPerThread,
        PostHocVariant::RowPerGroup,
        PostHocVariant::Windows,
    ]
    .into_iter()
    .find(|&v| posthoc_name(v) == s)
}

/// The adapter and driver a cache file belongs to.
pub fn adapter_key(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} | {:?} | {} {}",
        info.name, info.backend, info.driver, info.driver_info
    )
}

/// Where the cache for `info` lives: `$LOGIT_ADJUST_TUNING_DIR`, else
/// `$XDG_CACHE_HOME/logit-adjust`, else `~/.cache/logit-adjust`; the file
/// name is a hash of [`adapter_key`]. `None` when no directory is known.
pub fn cache_path(info: &wgpu::AdapterInfo) -> Option<PathBuf> {
    let dir = std::env::var_os("LOGIT_ADJUST_TUNING_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("logit-adjust"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/logit-adjust"))
        })?;
    // FNV-1a: stable across runs and Rust versions (unlike DefaultHasher).
    let hash = adapter_key(info)
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
    Some(dir.join(format!("tuning-{hash:016x}.txt")))
}

impl Tuning {
    /// The loss choice covering `classes`, if any.
    pub fn loss_for(&self, classes: usize) -> Option<LossChoice> {
        self.loss.iter().copied().find(|c| classes <= c.max_classes)
    }

    /// The post-hoc choice covering `classes`, if any.
    pub fn posthoc_for(&self, classes: usize) -> Option<PostHocChoice> {
        self.posthoc
            .iter()
            .copied()
            .find(|c| classes <= c.max_classes)
    }

    /// The cache file's text for the adapter `info`.
    pub fn to_text(&self, info: &wgpu::AdapterInfo) -> String {
        let mut s = format!("{HEADER}{}\n", adapter_key(info));
        for c in &self.loss {
            s += &format!("loss {} {}\n", c.max_classes, variant_name(c.variant));
        }
        for c in &self.posthoc {
            s += &format!("posthoc {} {}\n", c.max_classes, posthoc_name(c.variant));
        }
        s
    }

    /// Parse a cache file written for `info`; `None` if it was written for
    /// another adapter or driver, or does not parse.
    pub fn from_text(text: &str, info: &wgpu::AdapterInfo) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != format!("{HEADER}{}", adapter_key(info)) {
            return None;
        }
        let mut t = Tuning::default();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                ["loss", c, v] => t.loss.push(LossChoice {
                    max_classes: c.parse().ok()?,
                    variant: variant_from(v)?,
                }),
                ["posthoc", c, v] => t.posthoc.push(PostHocChoice {
                    max_classes: c.parse().ok()?,
                    variant: posthoc_from(v)?,
                }),
                _ => return None,
            }
        }
        Some(t)
    }

    /// The cached tuning for `info`, unless `LOGIT_ADJUST_TUNING=off`.
    pub fn load_cached(info: &wgpu::AdapterInfo) -> Option<Self> {
        if std::env::var("LOGIT_ADJUST_TUNING").is_ok_and(|v| v == "off") {
            return None;
        }
        let text = std::fs::read_to_string(cache_path(info)?).ok()?;
        Self::from_text(&text, info)
    }

    /// Write the cache file for the adapter `info`; returns its path.
    pub fn save(&self, info: &wgpu::AdapterInfo) -> Result<PathBuf> {
        let path = cache_path(info).ok_or_else(|| {
            Error::InvalidArgument("no cache directory (set LOGIT_ADJUST_TUNING_DIR)".into())
        })?;
        let io = |e: std::io::Error| Error::InvalidArgument(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.to_text(info)).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(path)
    }
}
