//! Buffer plumbing: uploads, read-back through staging buffers, and the
//! row chunking that keeps every binding under the adapter's limit.

use std::num::NonZeroU64;
use std::sync::mpsc;

use crate::context::Context;
use crate::error::{Error, Result};

/// A storage buffer initialised from `contents`. A zero-length upload gets a
/// 4-byte buffer, since wgpu cannot bind an empty one.
pub(crate) fn upload(
    ctx: &Context,
    label: &str,
    contents: &[u8],
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer> {
    check_buffer_size(ctx, label, contents.len() as u64)?;
    // Not `create_buffer_init`: its mapping at creation panics on a lost
    // device, where a queue write is an error the scope catches.
    let size = padded_size(ctx, contents.len() as u64);
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: usage | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    if !contents.is_empty() {
        if contents.len().is_multiple_of(4) {
            ctx.queue().write_buffer(&buffer, 0, contents);
        } else {
            let mut padded = contents.to_vec();
            padded.resize(contents.len().next_multiple_of(4), 0);
            ctx.queue().write_buffer(&buffer, 0, &padded);
        }
    }
    ctx.tracer().upload(&buffer, contents);
    Ok(buffer)
}

/// An uninitialised storage buffer of `bytes` (at least 4).
pub(crate) fn storage(
    ctx: &Context,
    label: &str,
    bytes: u64,
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer> {
    check_buffer_size(ctx, label, bytes)?;
    Ok(ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: padded_size(ctx, bytes),
        usage,
        mapped_at_creation: false,
    }))
}

/// `bytes` rounded up to whole vec4s (16 bytes), which the CPU adapters'
/// vec4 layouts bind, where the device allows a buffer that large.
fn padded_size(ctx: &Context, bytes: u64) -> u64 {
    let padded = bytes.max(4).next_multiple_of(16);
    if padded <= ctx.limits().max_buffer_size {
        padded
    } else {
        bytes.max(4).next_multiple_of(4)
    }
}

fn check_buffer_size(ctx: &Context, label: &str, bytes: u64) -> Result<()> {
    let max = ctx.limits().max_buffer_size;
    if bytes > max {
        return Err(Error::TooLarge(format!(
            "{label} needs a {bytes}-byte buffer; the adapter allows {max} (split the batch)"
        )));
    }
    Ok(())
}

/// Uniform parameter blocks, one per slot, each at a multiple of the
/// uniform offset alignment; bind slot `k` with [`param_slot`].
pub(crate) fn param_slots<P: bytemuck::Pod>(ctx: &Context, slots: &[P]) -> Result<ParamSlots> {
    let size = std::mem::size_of::<P>();
    // Each slot starts on the device's uniform offset alignment (a power of
    // two): the size rounded up to it, not merely the larger of the two.
    let align = ctx.limits().min_uniform_buffer_offset_alignment.max(1) as usize;
    let stride = size.next_multiple_of(align);
    let mut bytes = vec![0u8; stride * slots.len().max(1)];
    for (k, p) in slots.iter().enumerate() {
        bytes[stride * k..][..size].copy_from_slice(bytemuck::bytes_of(p));
    }
    Ok(ParamSlots {
        buffer: upload(ctx, "params", &bytes, wgpu::BufferUsages::UNIFORM)?,
        stride: stride as u64,
        size: size as u64,
    })
}

/// A uniform buffer of parameter slots.
#[derive(Debug)]
pub(crate) struct ParamSlots {
    buffer: wgpu::Buffer,
    stride: u64,
    size: u64,
}

impl ParamSlots {
    /// The binding of slot `k`.
    pub(crate) fn slot(&self, k: usize) -> wgpu::BindingResource<'_> {
        range(&self.buffer, self.stride * k as u64, self.size)
    }
}

/// A bind group of `resources` at bindings 0, 1, 2, ...
pub(crate) fn bind_group(
    ctx: &Context,
    label: &str,
    layout: &wgpu::BindGroupLayout,
    resources: Vec<wgpu::BindingResource<'_>>,
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = resources
        .into_iter()
        .enumerate()
        .map(|(i, resource)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource,
        })
        .collect();
    let group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &entries,
    });
    ctx.tracer().group(&group, layout, &entries);
    group
}

/// A binding of `size` bytes of `buffer` from `offset`.
pub(crate) fn range(buffer: &wgpu::Buffer, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset,
        size: NonZeroU64::new(size.max(4)),
    })
}

/// Read back `(buffer, byte offset, element count)` regions as f32, with one
/// submission and one wait for all of them.
pub(crate) fn read_f32(
    ctx: &Context,
    regions: &[(&wgpu::Buffer, u64, usize)],
) -> Result<Vec<Vec<f32>>> {
    read(ctx, regions)
}

/// Read back `(buffer, byte offset, element count)` regions of `T`
/// elements, with one submission and one wait for all of them.
pub(crate) fn read<T: bytemuck::Pod>(
    ctx: &Context,
    regions: &[(&wgpu::Buffer, u64, usize)],
) -> Result<Vec<Vec<T>>> {
    let device = ctx.device();
    let mut encoder = device.create_command_encoder(&Default::default());
    let mut staging = Vec::with_capacity(regions.len());
    for &(buffer, offset, len) in regions {
        let bytes = (len * std::mem::size_of::<T>()) as u64;
        let stage = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("logit-adjust read-back"),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if bytes > 0 {
            encoder.copy_buffer_to_buffer(buffer, offset, &stage, 0, bytes);
        }
        staging.push((stage, len));
    }
    ctx.queue().submit([encoder.finish()]);
    let (sender, receiver) = mpsc::channel();
    for (i, (stage, _)) in staging.iter().enumerate() {
        let sender = sender.clone();
        stage
            .slice(..)
            .map_async(wgpu::MapMode::Read, move |r| drop(sender.send((i, r))));
    }
    drop(sender);
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
    for (i, result) in receiver.iter() {
        result.map_err(|e| Error::Gpu(format!("mapping read-back buffer {i}: {e}")))?;
    }
    let mut out = Vec::with_capacity(staging.len());
    for (stage, len) in &staging {
        let view = stage
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::Gpu(format!("reading back: {e}")))?;
        out.push(bytemuck::pod_collect_to_vec::<u8, T>(
            &view[..len * std::mem::size_of::<T>()],
        ));
        drop(view);
        stage.unmap();
    }
    Ok(out)
}

/// Rows `[start, start + rows)` handled by one dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub start: usize,
    pub rows: usize,
}

/// Split `n` rows of `row_bytes` each so that every chunk's binding fits
/// `max_storage_buffer_binding_size`, needs at most `max_rows_per_dispatch`
/// rows, and starts at a byte offset that is a multiple of the storage
/// offset alignment both for the logits (`logit_row` bytes a row: 2 C for
/// half logits, which may be no multiple of 4) and for the 4-byte per-row
/// buffers.
pub(crate) fn plan_chunks(
    limits: &wgpu::Limits,
    n: usize,
    row_bytes: u64,
    logit_row: u64,
    max_rows_per_dispatch: usize,
) -> Result<Vec<Chunk>> {
    // A start row that is a multiple of align/4 keeps `row * 4` aligned,
    // and one of align / gcd(align, logit_row) keeps `row * logit_row`
    // aligned; align is a power of two, so the larger is a multiple of both.
    let align = u64::from(limits.min_storage_buffer_offset_alignment.max(4));
    let by_logits = align
        >> logit_row
            .max(1)
            .trailing_zeros()
            .min(align.trailing_zeros());
    let align_rows = (align / 4).max(by_logits) as usize;
    let by_binding = (limits.max_storage_buffer_binding_size / row_bytes.max(1)) as usize;
    let rows = by_binding.min(max_rows_per_dispatch) / align_rows * align_rows;
    if rows == 0 {
        return Err(Error::TooLarge(format!(
            "{align_rows} rows of {row_bytes} bytes exceed the adapter's storage binding limit of {} bytes",
            limits.max_storage_buffer_binding_size
        )));
    }
    Ok((0..n)
        .step_by(rows)
        .map(|start| Chunk {
            start,
            rows: rows.min(n - start),
        })
        .collect())
}

impl Context {
    /// Read `len` f32 from `buffer` at byte `offset` (which needs
    /// `COPY_SRC`). Waits on the device: for checks and tools, not hot loops.
    pub fn read_f32(&self, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<f32>> {
        self.scoped(|| {
            let mut out = read_f32(self, &[(buffer, offset, len)])?;
            Ok(out.pop().unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> wgpu::Limits {
        wgpu::Limits {
            max_storage_buffer_binding_size: 128 << 20,
            min_storage_buffer_offset_alignment: 256,
            ..wgpu::Limits::default()
        }
    }

    #[test]
    fn chunks_cover_every_row_once_and_stay_aligned() {
        for (n, c) in [
            (0usize, 10u64),
            (1, 1),
            (70_000, 1000),
            (64, 262_144),
            (200_001, 3),
        ] {
            let chunks = plan_chunks(&limits(), n, c * 4, c * 4, 65_535).unwrap();
            let mut next = 0;
            for ch in &chunks {
                assert_eq!(ch.start, next);
                assert!(ch.rows > 0 && ch.rows <= 65_535);
                assert_eq!((ch.start as u64 * c * 4) % 256, 0);
                assert_eq!((ch.start as u64 * 4) % 256, 0);
                assert!(ch.rows as u64 * c * 4 <= 128 << 20);
                next += ch.rows;
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn a_row_too_large_for_a_binding_is_an_error() {
        let err = plan_chunks(&limits(), 10, 8 << 20, 8 << 20, 65_535).unwrap_err();
        assert!(matches!(err, Error::TooLarge(_)), "{err}");
    }
}
