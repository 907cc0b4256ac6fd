//! The loss layouts for CPU adapters only (lavapipe, llvmpipe):
//! `shaders/cpu_xent.wgsl`'s row segments and row groups on vec4 views of
//! the logits and the gradient. A CPU adapter runs a workgroup's threads as
//! SIMD lanes and pays a loop over the lanes for every storage access, so
//! whole-vec4 accesses, `b` from a uniform table and a contiguous stretch
//! per thread matter there and nowhere else. The plan offers these layouts
//! only when the adapter is a CPU; their limits never refuse input, since
//! the generic layouts take what they cannot (docs/PERFORMANCE.md has the
//! measurements that keep them).

use std::sync::OnceLock;

use super::bind::{Builder, Mode, SlotFn, Step};
use super::plan::{Caps, Layout, Shape};
use super::SoftmaxXent;
use crate::buffers;
use crate::context::Context;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::pipelines::{Binding, Shader};

const CPU_XENT_WGSL: &str = include_str!("../../shaders/cpu_xent.wgsl");
const BLOCKS_WGSL: &str = include_str!("../../shaders/blocks/cpu_xent_formats.wgsl");

/// A half-format module of cpu_xent.wgsl: the logits' format, the
/// gradient's (the same, or f32) and, for a half gradient, whether a u32
/// word of it may hold halves of two rows (an odd row stride): its
/// gradient block then writes a row's halves of such a word alone, by
/// atomics, where with an even stride every word is one row's and whole
/// vec4s are stored as plain `vec2<u32>`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HalfModule {
    pub logits: Dtype,
    pub grad: Dtype,
    pub shared_words: bool,
}

impl HalfModule {
    const fn new(logits: Dtype, grad: Dtype, shared_words: bool) -> Self {
        Self {
            logits,
            grad,
            shared_words,
        }
    }

    /// The module for a run: words are shared only by a half gradient of
    /// odd stride.
    pub(crate) fn of(logits: Dtype, grad: Dtype, stride: usize) -> Self {
        let half_grad = grad != Dtype::F32;
        Self::new(logits, grad, half_grad && stride % 2 == 1)
    }

    /// The module's label, for error messages and gpu-stats.
    pub(crate) fn label(self) -> &'static str {
        match (self.logits, self.grad, self.shared_words) {
            (Dtype::F16, Dtype::F32, _) => "cpu_xent.wgsl (f16 packed, f32 gradient)",
            (Dtype::F16, _, true) => "cpu_xent.wgsl (f16 packed, words shared by rows)",
            (Dtype::F16, _, false) => "cpu_xent.wgsl (f16 packed)",
            (_, Dtype::F32, _) => "cpu_xent.wgsl (bf16 packed, f32 gradient)",
            (_, _, true) => "cpu_xent.wgsl (bf16 packed, words shared by rows)",
            _ => "cpu_xent.wgsl (bf16 packed)",
        }
    }

    /// cpu_xent.wgsl with packed half logits, and the gradient in their
    /// format too (whole words, or words shared by rows) or as it is.
    pub(crate) fn source(self) -> Result<String> {
        let text = crate::splice::halves(
            CPU_XENT_WGSL,
            BLOCKS_WGSL,
            "cpu_xent_formats.wgsl",
            self.logits,
            false,
            false,
        )?;
        if self.grad == Dtype::F32 {
            return Ok(text);
        }
        let name = if self.shared_words {
            "grad packed, words shared"
        } else {
            "grad packed"
        };
        let block = crate::splice::block(BLOCKS_WGSL, "cpu_xent_formats.wgsl", name)?;
        crate::splice::swap(&text, "grad", block)
    }
}

/// Every half-format module of cpu_xent.wgsl.
pub(crate) const HALF_MODULES: [HalfModule; 6] = [
    HalfModule::new(Dtype::F16, Dtype::F16, false),
    HalfModule::new(Dtype::F16, Dtype::F16, true),
    HalfModule::new(Dtype::F16, Dtype::F32, false),
    HalfModule::new(Dtype::Bf16, Dtype::Bf16, false),
    HalfModule::new(Dtype::Bf16, Dtype::Bf16, true),
    HalfModule::new(Dtype::Bf16, Dtype::F32, false),
];

/// Classes of the uniform `b` table (`TABLE_VEC4S * 4` in cpu_xent.wgsl:
/// 64 KiB, WebGPU's default uniform binding limit).
const TABLE_CLASSES: usize = 16384;

/// The CPU adapters' shader file and the op's uniform `b` table.
#[derive(Debug)]
pub(crate) struct Kernels {
    pub(super) shader: Shader,
    /// The first 16,384 floats of `[b, m, alpha]`, zero-padded: all of `b`
    /// when `C <= 16,384`, all three when `3C <= 16,384`.
    pub(super) table: wgpu::Buffer,
    /// The half-format modules, in [`HALF_MODULES`]' order, each compiled
    /// on first use.
    halves: [OnceLock<Shader>; HALF_MODULES.len()],
}

/// Whether `spec` uses an option these layouts do not implement (a logit
/// scale, the z-loss, smoothing weighted per class): such a spec takes the
/// GPU path's layouts on a CPU adapter too.
pub(super) fn takes_options(spec: &crate::LossSpec) -> bool {
    spec.logit_scale() != 1.0 || spec.z_loss() != 0.0 || spec.per_class_smoothing()
}

/// The table's contents: the first 16,384 floats of `[b, m, alpha]`.
fn table_of(class_vecs: &[f32]) -> Vec<f32> {
    let mut table = vec![0f32; TABLE_CLASSES];
    let n = class_vecs.len().min(TABLE_CLASSES);
    table[..n].copy_from_slice(&class_vecs[..n]);
    table
}

impl Kernels {
    /// Rewrite the table for new class vectors (queued like any write).
    pub(super) fn write_table(&self, queue: &wgpu::Queue, class_vecs: &[f32]) {
        queue.write_buffer(&self.table, 0, bytemuck::cast_slice(&table_of(class_vecs)));
    }

    pub(super) fn new(ctx: &Context, class_vecs: &[f32]) -> Result<Self> {
        let table = table_of(class_vecs);
        Ok(Self {
            shader: Shader::new(ctx, "cpu_xent.wgsl", CPU_XENT_WGSL, &bindings()),
            table: buffers::upload(
                ctx,
                "cpu_xent bias table",
                bytemuck::cast_slice(&table),
                wgpu::BufferUsages::UNIFORM,
            )?,
            halves: Default::default(),
        })
    }

    /// The module for logits of `dtype`, a gradient of `grad` and rows
    /// `stride` elements apart.
    fn shader_for(&self, ctx: &Context, dtype: Dtype, grad: Dtype, stride: usize) -> &Shader {
        let module = HalfModule::of(dtype, grad, stride);
        let Some(k) = HALF_MODULES.iter().position(|&m| m == module) else {
            return &self.shader;
        };
        self.halves[k].get_or_init(|| {
            // A missing block makes a module wgpu refuses: an error value
            // from the op's scope, never a panic.
            let text = module.source().unwrap_or_else(|e| format!("// {e}\n"));
            Shader::new(ctx, module.label(), text, &bindings())
        })
    }
}

/// softmax_xent.wgsl's bindings, then the `b` table.
fn bindings() -> Vec<Binding> {
    [&super::XENT_BINDINGS[..], &[Binding::Uniform]].concat()
}

/// Vec4s each thread holds at most (`L4_MAX` in cpu_xent.wgsl): 512 classes.
const L4_MAX: usize = 128;
/// Threads per workgroup at least: several rows per workgroup when rows are
/// short, so that a workgroup fills the SIMD lanes.
const MIN_WG: usize = 64;

/// Classes below which the plan keeps the generic row-resident layout on
/// CPU adapters: with a few vec4s per row, the per-row work of the vec4
/// views (the shifted b, the shared first and last vec4s) costs more than
/// they save (docs/PERFORMANCE.md, the lavapipe section).
const AUTO_MIN_CLASSES: usize = 64;

/// Classes of a row-groups row at most, and floats of a thread's rows at
/// most: the `C_MAX` floats of the thread's array in cpu_xent.wgsl.
const GROUP_MAX_CLASSES: usize = 32;
const GROUP_MAX_FLOATS: usize = 32;

/// The plan's choice on its own (`Variant::Auto`): row groups for short
/// packed rows, else the segments layout where it applies and rows are long
/// enough to gain from it.
pub(crate) fn auto_layout(shape: &Shape, caps: &Caps) -> Option<Layout> {
    row_groups_layout(shape, caps).or_else(|| {
        (shape.classes >= AUTO_MIN_CLASSES)
            .then(|| segments_layout(shape, caps))
            .flatten()
    })
}

/// The row-groups layout for `shape`: a CPU adapter, packed rows of at most
/// 32 classes, `R = 4 / gcd(C, 4)` rows per thread filling whole vec4s (at
/// most 32 floats), and a row count that is a multiple of `R`.
pub(crate) fn row_groups_layout(shape: &Shape, caps: &Caps) -> Option<Layout> {
    let c = shape.classes;
    if !caps.cpu || !shape.vec4 || shape.stride != c || c == 0 || c > GROUP_MAX_CLASSES {
        return None;
    }
    let r = 4 >> c.trailing_zeros().min(2);
    if r * c > GROUP_MAX_FLOATS || !shape.rows.is_multiple_of(r) {
        return None;
    }
    Some(Layout::RowGroups {
        wg: caps.max_workgroup.min(MIN_WG as u32),
        r: r as u32,
    })
}

/// The segments layout for `shape`, when the adapter is a CPU, the regions
/// allow vec4 views, and a workgroup can hold the row.
pub(crate) fn segments_layout(shape: &Shape, caps: &Caps) -> Option<Layout> {
    if !caps.cpu || !shape.vec4 || shape.classes == 0 {
        return None;
    }
    let shifted = !shape.stride.is_multiple_of(4);
    // A row starting inside a vec4 touches up to (C + 3) / 4 rounded up.
    let vec4s = if shifted {
        (shape.classes + 3).div_ceil(4)
    } else {
        shape.classes.div_ceil(4)
    };
    let p = vec4s.div_ceil(L4_MAX).next_power_of_two();
    let max_wg = caps.max_workgroup as usize;
    if p > max_wg {
        return None;
    }
    Some(Layout::Segments {
        wg: p.max(MIN_WG).min(max_wg) as u32,
        p: p as u32,
        l4: vec4s.div_ceil(p) as u32,
        shifted,
    })
}

impl Builder<'_, '_> {
    /// The row pass of a CPU layout (segments or row groups), one dispatch
    /// per row chunk.
    pub(super) fn cpu_steps(&self, slot: &SlotFn<'_>) -> Result<Vec<Step>> {
        let Some(cpu) = self.op.cpu_xent.as_ref() else {
            // The plan picks a CPU layout only where cpu_xent.wgsl is built.
            return Err(Error::InvalidArgument(
                "a CPU adapter layout on an op without its kernels".into(),
            ));
        };
        let c = self.op.spec.classes();
        let (entry, mut constants) = match self.plan.layout {
            Layout::Segments { wg, p, l4, shifted } => (
                "xent_segments",
                vec![
                    ("WG", f64::from(wg)),
                    ("P", f64::from(p)),
                    ("L4", f64::from(l4)),
                    ("SHIFTED", f64::from(u8::from(shifted))),
                    ("TABLE", f64::from(u8::from(c <= TABLE_CLASSES))),
                    ("TABLE_ALL", f64::from(u8::from(3 * c <= TABLE_CLASSES))),
                ],
            ),
            Layout::RowGroups { wg, r } => (
                "xent_row_groups",
                vec![
                    ("WG", f64::from(wg)),
                    ("ROW_C", c as f64),
                    ("ROW_R", f64::from(r)),
                    ("TABLE", 1.0),
                    ("TABLE_ALL", 1.0),
                ],
            ),
            _ => return Ok(Vec::new()),
        };
        constants.push((
            "WRITE_GRAD",
            f64::from(u8::from(self.run.mode == Mode::Fused)),
        ));
        constants.push(SoftmaxXent::label_constant(self.run.label_type));
        let pipeline = cpu
            .shader_for(
                &self.op.ctx,
                self.run.dtype,
                self.run.grad_dtype(),
                self.run.stride,
            )
            .pipeline(self.op.ctx.device(), entry, &constants);
        Ok(self.chunk_steps_on(Some(cpu), &pipeline, slot, |rows| {
            self.plan.grid(1, self.plan.row_groups(rows))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> Caps {
        Caps {
            max_workgroup: 256,
            max_binding: 128 << 20,
            max_groups: 65535,
            cpu: true,
        }
    }

    fn shape(classes: usize, stride: usize) -> Shape {
        Shape {
            rows: 100,
            classes,
            stride,
            label_bytes: 4,
            vec4: true,
            lanes: 1,
            elem_bytes: 4,
        }
    }

    #[test]
    fn segments_cover_the_row_and_only_on_cpu_adapters() {
        for (c, stride) in [
            (1, 1),
            (3, 3),
            (10, 10),
            (10, 12),
            (1000, 1000),
            (8142, 8142),
        ] {
            let Some(Layout::Segments { wg, p, l4, shifted }) =
                segments_layout(&shape(c, stride), &cpu())
            else {
                panic!("C = {c}")
            };
            let need = if shifted {
                (c + 3).div_ceil(4)
            } else {
                c.div_ceil(4)
            };
            assert!(
                (p * l4) as usize >= need && l4 as usize <= L4_MAX,
                "C = {c}"
            );
            assert!(wg % p == 0 && wg >= 64, "C = {c}");
            assert_eq!(shifted, stride % 4 != 0);
        }
        let gpu = Caps {
            cpu: false,
            ..cpu()
        };
        assert!(segments_layout(&shape(10, 10), &gpu).is_none());
        let unaligned = Shape {
            vec4: false,
            ..shape(10, 10)
        };
        assert!(segments_layout(&unaligned, &cpu()).is_none());
        // Row groups: packed rows of at most 32 classes, whole vec4s.
        for (c, r) in [
            (1, 4),
            (2, 2),
            (3, 4),
            (4, 1),
            (8, 1),
            (10, 2),
            (16, 1),
            (32, 1),
        ] {
            assert_eq!(
                row_groups_layout(&shape(c, c), &cpu()),
                Some(Layout::RowGroups { wg: 64, r }),
                "C = {c}"
            );
        }
        for (c, stride) in [(10, 12), (33, 33), (31, 31)] {
            assert_eq!(
                row_groups_layout(&shape(c, stride), &cpu()),
                None,
                "C = {c}"
            );
        }
        let odd_rows = Shape {
            rows: 101,
            ..shape(10, 10)
        };
        assert_eq!(row_groups_layout(&odd_rows, &cpu()), None);
        assert!(row_groups_layout(&shape(10, 10), &gpu).is_none());
        // 256 threads of 512 classes at most.
        assert!(segments_layout(&shape(256 * 512, 256 * 512), &cpu()).is_some());
        assert!(segments_layout(&shape(256 * 512 + 4, 256 * 512 + 4), &cpu()).is_none());
    }

    #[test]
    fn words_are_shared_only_by_a_half_gradient_of_odd_stride() {
        for dtype in [Dtype::F16, Dtype::Bf16] {
            assert!(HalfModule::of(dtype, dtype, 1001).shared_words);
            assert!(!HalfModule::of(dtype, dtype, 1000).shared_words);
            assert!(!HalfModule::of(dtype, Dtype::F32, 1001).shared_words);
            for stride in [1000, 1001] {
                for grad in [dtype, Dtype::F32] {
                    let module = HalfModule::of(dtype, grad, stride);
                    assert!(HALF_MODULES.contains(&module), "{module:?}");
                    let text = module.source().unwrap();
                    let atomic = text.contains("array<atomic<u32>>");
                    assert_eq!(atomic, module.shared_words, "{}", module.label());
                }
            }
        }
    }
}
