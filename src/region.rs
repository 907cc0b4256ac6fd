//! Caller buffer regions (buffer, byte offset, byte size), and the checks
//! every binding of a caller's memory passes before anything is recorded:
//! usage, alignment, size, and no two regions sharing bytes.

use crate::error::{Error, Result};

/// `size` bytes of `buffer` from byte `offset`: where a tensor lives in an
/// engine's (possibly pooled, shared) buffer.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    /// The buffer (needs `BufferUsages::STORAGE`).
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset, a multiple of the device's
    /// `min_storage_buffer_offset_alignment` (256 on most devices).
    pub offset: u64,
    /// Bytes from `offset`; at least what the shape needs.
    pub size: u64,
}

impl<'a> Region<'a> {
    /// `size` bytes of `buffer` from `offset`.
    pub fn new(buffer: &'a wgpu::Buffer, offset: u64, size: u64) -> Self {
        Self {
            buffer,
            offset,
            size,
        }
    }

    /// The whole of `buffer`.
    pub fn whole(buffer: &'a wgpu::Buffer) -> Self {
        Self::new(buffer, 0, buffer.size())
    }

    /// `bytes` of this region from byte `at` within it, as a binding.
    pub(crate) fn binding(&self, at: u64, bytes: u64) -> wgpu::BindingResource<'a> {
        crate::buffers::range(self.buffer, self.offset + at, bytes)
    }
}

impl<'a> From<&'a wgpu::Buffer> for Region<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Self::whole(buffer)
    }
}

impl<'a> From<wgpu::BufferSlice<'a>> for Region<'a> {
    fn from(slice: wgpu::BufferSlice<'a>) -> Self {
        Self::new(slice.buffer(), slice.offset(), slice.size())
    }
}

/// A caller region a run binds: its name (for errors), the region, and the
/// bytes of it the run touches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Use<'a> {
    pub what: &'static str,
    pub region: Region<'a>,
    pub bytes: u64,
}

/// Check each use (storage usage, aligned offset, the bytes inside both the
/// region and its buffer) and every pair for shared bytes of one buffer.
pub(crate) fn check_uses(limits: &wgpu::Limits, uses: &[Use]) -> Result<()> {
    let align = u64::from(limits.min_storage_buffer_offset_alignment.max(4));
    for u in uses {
        let r = u.region;
        if !r.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidArgument(format!(
                "the {} buffer lacks BufferUsages::STORAGE",
                u.what
            )));
        }
        if !r.offset.is_multiple_of(align) {
            return Err(Error::InvalidArgument(format!(
                "the {} region starts at byte {}, not a multiple of the device's storage \
                 offset alignment ({align})",
                u.what, r.offset
            )));
        }
        let room = r.size.min(r.buffer.size().saturating_sub(r.offset));
        if room < u.bytes {
            return Err(Error::BufferTooSmall {
                what: u.what.into(),
                needed: u.bytes,
                got: room,
            });
        }
    }
    for (i, a) in uses.iter().enumerate() {
        for b in &uses[i + 1..] {
            let (ra, rb) = (a.region, b.region);
            let disjoint = ra.offset + a.bytes <= rb.offset || rb.offset + b.bytes <= ra.offset;
            if ra.buffer == rb.buffer && a.bytes > 0 && b.bytes > 0 && !disjoint {
                return Err(Error::Overlap {
                    first: a.what.into(),
                    second: b.what.into(),
                });
            }
        }
    }
    Ok(())
}
