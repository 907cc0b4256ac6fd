//! A record of what the library asks of the device, for harnesses that
//! replay the same work on another host: which shader file and entry point,
//! which override constants, which buffer ranges at which bindings, which
//! grid. The browser harness under `tests/webgpu/` runs the dispatches a
//! bound op makes here through Chromium's WebGPU (Dawn, Tint), so the two
//! hosts cannot drift apart: the plan is never written twice.
//!
//! Off by default and free when off (one lock per pipeline, layout, bind
//! group and upload, which are cached or made once per bind). Turn it on
//! with [`Context::enable_trace`] before creating the ops to be traced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::context::Context;
use crate::error::{Error, Result};

/// How a binding is declared in the shader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>`.
    ReadOnlyStorage,
    /// `var<storage, read_write>`.
    Storage,
}

impl BindingKind {
    pub(crate) fn of(ty: wgpu::BufferBindingType) -> Self {
        match ty {
            wgpu::BufferBindingType::Uniform => BindingKind::Uniform,
            wgpu::BufferBindingType::Storage { read_only: true } => BindingKind::ReadOnlyStorage,
            wgpu::BufferBindingType::Storage { read_only: false } => BindingKind::Storage,
        }
    }

    /// WebGPU's name for it (`GPUBufferBindingType`).
    pub fn webgpu_name(self) -> &'static str {
        match self {
            BindingKind::Uniform => "uniform",
            BindingKind::ReadOnlyStorage => "read-only-storage",
            BindingKind::Storage => "storage",
        }
    }
}

/// One binding of a traced dispatch: a range of a buffer.
#[derive(Debug, Clone)]
pub struct TracedBinding {
    /// The `@binding` number in group 0.
    pub binding: u32,
    /// How the shader declares it.
    pub kind: BindingKind,
    /// The buffer bound.
    pub buffer: wgpu::Buffer,
    /// Byte offset of the range.
    pub offset: u64,
    /// Bytes bound.
    pub size: u64,
}

/// One dispatch, as data.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The shader file under `shaders/` (e.g. `softmax_xent.wgsl`).
    pub shader: &'static str,
    /// The entry point.
    pub entry: String,
    /// Override constants, by name.
    pub constants: Vec<(String, f64)>,
    /// Every binding of group 0, in binding order.
    pub bindings: Vec<TracedBinding>,
    /// Workgroups along x, y, z.
    pub grid: [u32; 3],
}

/// One step of a recorded run, in order.
#[derive(Debug, Clone)]
pub enum TracedStep {
    /// `clear_buffer` of a byte range.
    Clear {
        /// The buffer.
        buffer: wgpu::Buffer,
        /// First byte.
        offset: u64,
        /// Bytes.
        size: u64,
    },
    /// A compute dispatch.
    Dispatch(Dispatch),
}

/// A bound run whose steps can be read as data (on a tracing context).
pub trait Traced {
    /// The run's steps in recording order, the same ones `record` replays.
    /// Fails unless `ctx` traced the op's creation and this bind.
    fn steps(&self, ctx: &Context) -> Result<Vec<TracedStep>> {
        ctx.tracer().describe(&self.raw_steps())
    }

    #[doc(hidden)]
    fn raw_steps(&self) -> Vec<RawStep>;
}

/// A step as wgpu handles (crate plumbing behind [`Traced`]).
#[doc(hidden)]
#[derive(Debug, Clone)]
pub enum RawStep {
    Clear(wgpu::Buffer, u64, u64),
    Dispatch(wgpu::ComputePipeline, wgpu::BindGroup, [u32; 3]),
}

/// A pipeline's shader file, entry point and override constants.
type PipelineInfo = (&'static str, String, Vec<(String, f64)>);

/// A bind group's layout and its (binding, buffer, offset, size) ranges.
type GroupInfo = (wgpu::BindGroupLayout, Vec<(u32, wgpu::Buffer, u64, u64)>);

#[derive(Default)]
struct Book {
    layouts: HashMap<wgpu::BindGroupLayout, (&'static str, Vec<BindingKind>)>,
    pipelines: HashMap<wgpu::ComputePipeline, PipelineInfo>,
    groups: HashMap<wgpu::BindGroup, GroupInfo>,
    uploads: HashMap<wgpu::Buffer, Vec<u8>>,
}

/// The context's recorder: `None` until tracing is turned on.
#[derive(Default, Clone)]
pub(crate) struct Tracer(Arc<Mutex<Option<Book>>>);

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracer")
    }
}

impl Tracer {
    fn with(&self, f: impl FnOnce(&mut Book)) {
        if let Some(book) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            f(book);
        }
    }

    pub(crate) fn enable(&self) {
        let mut book = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if book.is_none() {
            *book = Some(Book::default());
        }
    }

    pub(crate) fn layout(
        &self,
        layout: &wgpu::BindGroupLayout,
        shader: &'static str,
        entries: &[wgpu::BindGroupLayoutEntry],
    ) {
        self.with(|b| {
            let mut kinds: Vec<(u32, BindingKind)> = entries
                .iter()
                .map(|e| match e.ty {
                    wgpu::BindingType::Buffer { ty, .. } => (e.binding, BindingKind::of(ty)),
                    _ => unreachable!("the kernels bind buffers only"),
                })
                .collect();
            kinds.sort_by_key(|k| k.0);
            let kinds = kinds.into_iter().map(|k| k.1).collect();
            b.layouts.insert(layout.clone(), (shader, kinds));
        });
    }

    pub(crate) fn pipeline(
        &self,
        pipeline: &wgpu::ComputePipeline,
        shader: &'static str,
        entry: &str,
        constants: &[(&str, f64)],
    ) {
        self.with(|b| {
            let constants = constants.iter().map(|&(k, v)| (k.to_string(), v)).collect();
            b.pipelines
                .insert(pipeline.clone(), (shader, entry.to_string(), constants));
        });
    }

    pub(crate) fn group(
        &self,
        group: &wgpu::BindGroup,
        layout: &wgpu::BindGroupLayout,
        entries: &[wgpu::BindGroupEntry],
    ) {
        self.with(|b| {
            let ranges = entries
                .iter()
                .map(|e| match &e.resource {
                    wgpu::BindingResource::Buffer(r) => {
                        let size = r
                            .size
                            .map_or(r.buffer.size() - r.offset, std::num::NonZeroU64::get);
                        (e.binding, r.buffer.clone(), r.offset, size)
                    }
                    _ => unreachable!("the kernels bind buffers only"),
                })
                .collect();
            b.groups.insert(group.clone(), (layout.clone(), ranges));
        });
    }

    pub(crate) fn upload(&self, buffer: &wgpu::Buffer, contents: &[u8]) {
        self.with(|b| {
            b.uploads.insert(buffer.clone(), contents.to_vec());
        });
    }

    pub(crate) fn contents(&self, buffer: &wgpu::Buffer) -> Option<Vec<u8>> {
        let book = self.0.lock().unwrap_or_else(|p| p.into_inner());
        book.as_ref()?.uploads.get(buffer).cloned()
    }

    fn describe(&self, steps: &[RawStep]) -> Result<Vec<TracedStep>> {
        let book = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let untraced = || {
            Error::InvalidArgument(
                "the context did not trace this op (Context::enable_trace before creating it)"
                    .into(),
            )
        };
        let book = book.as_ref().ok_or_else(untraced)?;
        steps
            .iter()
            .map(|step| match step {
                RawStep::Clear(buffer, offset, size) => Ok(TracedStep::Clear {
                    buffer: buffer.clone(),
                    offset: *offset,
                    size: *size,
                }),
                RawStep::Dispatch(pipeline, group, grid) => {
                    let (shader, entry, constants) =
                        book.pipelines.get(pipeline).ok_or_else(untraced)?;
                    let (layout, ranges) = book.groups.get(group).ok_or_else(untraced)?;
                    let (_, kinds) = book.layouts.get(layout).ok_or_else(untraced)?;
                    let bindings = ranges
                        .iter()
                        .map(|(binding, buffer, offset, size)| TracedBinding {
                            binding: *binding,
                            kind: kinds[*binding as usize],
                            buffer: buffer.clone(),
                            offset: *offset,
                            size: *size,
                        })
                        .collect();
                    Ok(TracedStep::Dispatch(Dispatch {
                        shader,
                        entry: entry.clone(),
                        constants: constants.clone(),
                        bindings,
                        grid: *grid,
                    }))
                }
            })
            .collect()
    }
}
