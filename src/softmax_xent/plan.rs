//! The loss's one planning step: a pure function from the shape, the label
//! type and what the device offers to the kernels, workgroup sizes,
//! dispatches and row chunks of a run. The only place a layout is chosen;
//! unit-tested without a GPU.

use super::cpu;
use crate::error::{Error, Result};

/// Values each thread of `xent_rows` and `xent_split_partial` holds at most
/// (`VPT_MAX` in softmax_xent.wgsl).
pub(crate) const VPT_MAX: usize = 64;
/// Values per thread the row-resident layout aims for on GPUs: few enough
/// registers that a compute unit keeps many waves in flight.
const GPU_VPT: usize = 16;
/// Classes per chunk of the split layout.
pub(crate) const SPLIT_SPAN: usize = 4096;
/// Threads of the reduction passes.
pub(crate) const REDUCE_WG: u32 = 256;
/// Rows one reduction workgroup sums at least (each workgroup ends in a
/// tree; fewer, longer workgroups keep the trees' share small).
const REDUCE_MIN_SPAN: usize = 4096;
/// Reduction workgroups a batch is cut into at most, for large batches.
const REDUCE_GROUPS: usize = 128;
/// Elements each thread of `xent_backward` takes on GPUs (nothing is held
/// across them: a few per thread amortise the row's label and LSE).
const BACKWARD_GPU_VPT: usize = 4;
/// Row chunks start at multiples of this many rows, so that every per-row
/// binding (4 or 8 bytes a row) and every f32 logits binding (a multiple
/// of 4 bytes a row) of a chunk starts on a 256-byte boundary, the largest
/// storage offset alignment WebGPU allows; twice as many for half logits
/// with an odd stride (see [`Shape::row_align`]).
pub(crate) const CHUNK_ROW_ALIGN: usize = 64;
/// Words at the head of the op's work buffer: denom, bad labels, loss, pad.
pub(crate) const WORK_HEADER: usize = 4;

pub use crate::layouts::Variant;

/// What the device offers that the plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Threads per workgroup at most (a power of two).
    pub max_workgroup: u32,
    /// Bytes of one storage binding at most.
    pub max_binding: u64,
    /// Workgroups per dispatch dimension at most.
    pub max_groups: u32,
    /// A CPU adapter (lavapipe, llvmpipe): threads are SIMD lanes, and a
    /// thread prefers a contiguous stretch of its row.
    pub cpu: bool,
}

impl Caps {
    pub(crate) fn of(limits: &wgpu::Limits, device_type: wgpu::DeviceType) -> Self {
        let invocations = limits
            .max_compute_invocations_per_workgroup
            .min(limits.max_compute_workgroup_size_x)
            .clamp(1, 1024);
        Self {
            max_workgroup: 1 << invocations.ilog2(),
            max_binding: limits.max_storage_buffer_binding_size,
            max_groups: limits.max_compute_workgroups_per_dimension.max(1),
            cpu: device_type == wgpu::DeviceType::Cpu,
        }
    }
}

/// A batch as the plan sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub rows: usize,
    pub classes: usize,
    /// Elements between row starts (`>= classes`).
    pub stride: usize,
    /// Bytes per label: 4 (i32, u32) or 8 (i64).
    pub label_bytes: u64,
    /// The logits and gradient regions allow vec4 views (4 elements: 16
    /// bytes of f32, 8 of halves): aligned to a vec4, with room in their
    /// buffers to round the last vec4 up.
    pub vec4: bool,
    /// Elements per kernel unit: 1 for f32 logits, 2 for the halves (a
    /// u32 word).
    pub lanes: u32,
    /// Bytes per element of the logits or the gradient, the larger.
    pub elem_bytes: u64,
}

impl Shape {
    /// Units a row's `classes` elements touch at most: with two lanes a
    /// row may start in the middle of a word.
    pub(crate) fn units(&self) -> usize {
        units(self.classes, self.lanes)
    }

    /// Rows a chunk starts at a multiple of: `CHUNK_ROW_ALIGN`, doubled
    /// where a row of halves is an odd number of 2-byte elements.
    pub(crate) fn row_align(&self) -> usize {
        if self.lanes == 2 && !self.stride.is_multiple_of(2) {
            2 * CHUNK_ROW_ALIGN
        } else {
            CHUNK_ROW_ALIGN
        }
    }
}

/// Units `n` consecutive elements touch at most.
fn units(n: usize, lanes: u32) -> usize {
    if lanes == 1 {
        n
    } else {
        n / 2 + 1
    }
}

/// The row pass's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `xent_rows`: `tpr` threads per row, `wg / tpr` rows per workgroup,
    /// `vpt` values per thread; `segmented`: contiguous values per thread.
    Rows {
        wg: u32,
        tpr: u32,
        vpt: u32,
        segmented: bool,
    },
    /// `xent_split_*`: `chunks` chunks of `span` classes per row, a
    /// workgroup of `wg` threads per chunk, `vpt = span / wg`.
    Split {
        wg: u32,
        span: u32,
        vpt: u32,
        chunks: u32,
    },
    /// CPU adapters only (`cpu_xent.wgsl`'s `xent_segments`, see
    /// [`super::cpu`]): `p` threads per row, `wg / p` rows per workgroup,
    /// at most `l4` vec4s per thread; `shifted`: rows start inside vec4s.
    Segments {
        wg: u32,
        p: u32,
        l4: u32,
        shifted: bool,
    },
    /// CPU adapters only (`cpu_xent.wgsl`'s `xent_row_groups`): `r` packed
    /// rows per thread, `wg` threads per workgroup.
    RowGroups { wg: u32, r: u32 },
}

/// The layout of `xent_backward`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backward {
    pub wg: u32,
    pub tpr: u32,
    pub vpt: u32,
    pub segmented: bool,
    pub blocks: u32,
}

fn backward_layout(classes: usize, caps: &Caps) -> Backward {
    // `classes`: the row's units.
    let max_wg = caps.max_workgroup as usize;
    let per_thread = if caps.cpu { VPT_MAX } else { BACKWARD_GPU_VPT };
    let tpr = classes.div_ceil(per_thread).next_power_of_two().min(max_wg);
    let vpt = classes.div_ceil(tpr).clamp(1, per_thread);
    Backward {
        wg: tpr.max(64).min(max_wg) as u32,
        tpr: tpr as u32,
        vpt: vpt as u32,
        segmented: caps.cpu,
        blocks: classes.div_ceil(tpr * vpt).max(1) as u32,
    }
}

/// Rows `[first, first + rows)`, bound and dispatched together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub first: usize,
    pub rows: usize,
    /// Its first reduction slot.
    pub slot: usize,
    /// Its reduction workgroups.
    pub groups: usize,
}

/// Everything a run needs to know to bind and dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub layout: Layout,
    pub chunks: Vec<Chunk>,
    /// Rows per reduction workgroup.
    pub reduce_span: usize,
    /// Reduction slots in all.
    pub slots: usize,
    /// `xent_backward`: threads per row and values per thread as in
    /// [`Layout::Rows`], over `blocks` blocks of `tpr * vpt` classes.
    pub backward: Backward,
    /// Words of the op's work buffer the run uses.
    pub work_words: usize,
    /// Word offsets of the split partials and the per-row (M, 1/S, p_y - 1).
    pub split_base: usize,
    pub norm_base: usize,
    pub max_groups: u32,
}

/// The row-resident layout for `shape`, if a workgroup holds the row.
/// Threads hold units (`lanes` values each), so the values per thread stay
/// within `VPT_MAX` and `GPU_VPT` whatever the format.
fn rows_layout(shape: &Shape, caps: &Caps) -> Option<Layout> {
    let max_wg = caps.max_workgroup as usize;
    let units = shape.units();
    let lanes = shape.lanes as usize;
    let (tpr, vpt) = if caps.cpu {
        // Few threads per row, each a contiguous stretch: a CPU adapter's
        // threads are SIMD lanes, so neighbouring rows fill the lanes.
        let tpr = units
            .div_ceil(VPT_MAX / lanes)
            .next_power_of_two()
            .min(max_wg);
        (tpr, units.div_ceil(tpr).max(1))
    } else {
        let tpr = units
            .div_ceil(GPU_VPT / lanes)
            .next_power_of_two()
            .min(max_wg);
        (tpr, units.div_ceil(tpr).max(1))
    };
    if vpt * lanes > VPT_MAX {
        return None;
    }
    let wg = tpr.max(64).min(max_wg);
    Some(Layout::Rows {
        wg: wg as u32,
        tpr: tpr as u32,
        vpt: vpt as u32,
        segmented: caps.cpu,
    })
}

fn split_layout(shape: &Shape, caps: &Caps) -> Layout {
    let classes = shape.classes;
    let wg = (caps.max_workgroup as usize).min(256);
    let span = SPLIT_SPAN.min(classes.next_power_of_two()).max(wg);
    Layout::Split {
        wg: wg as u32,
        span: span as u32,
        // The units a chunk of `span` elements touches, over `wg` threads.
        vpt: units(span, shape.lanes).div_ceil(wg) as u32,
        chunks: classes.div_ceil(span).max(1) as u32,
    }
}

/// The most rows one chunk may hold: every binding of the chunk within the
/// storage-binding limit (and, for the split layout, a dispatch dimension).
fn rows_per_chunk(shape: &Shape, caps: &Caps, layout: &Layout) -> Result<usize> {
    let split = matches!(layout, Layout::Split { .. });
    // Vec4 views round a binding up by at most 12 bytes.
    let slack = if matches!(layout, Layout::Segments { .. }) {
        16
    } else {
        0
    };
    let words = caps.max_binding.saturating_sub(slack) / shape.elem_bytes.max(1);
    let (c, stride) = (shape.classes as u64, shape.stride.max(1) as u64);
    if c > words {
        return Err(Error::TooLarge(format!(
            "a row of {c} classes exceeds the storage binding limit of {} bytes",
            caps.max_binding
        )));
    }
    let by_logits = (words - c) / stride + 1;
    let by_labels = caps.max_binding / shape.label_bytes;
    let mut most = by_logits.min(by_labels) as usize;
    if split {
        most = most.min(caps.max_groups as usize);
    }
    if shape.rows <= most {
        return Ok(shape.rows.max(1));
    }
    let align = shape.row_align();
    let aligned = most / align * align;
    if aligned == 0 {
        return Err(Error::TooLarge(format!(
            "{} rows of stride {}: fewer than {align} rows fit one storage binding of {} bytes",
            shape.rows, shape.stride, caps.max_binding
        )));
    }
    Ok(aligned)
}

/// Plan a run of the loss on `shape` (`variant`: the caller's forced
/// layout, or `Auto`).
pub(crate) fn plan(shape: &Shape, caps: &Caps, variant: Variant) -> Result<Plan> {
    let layout = match variant {
        Variant::Auto => cpu::auto_layout(shape, caps)
            .or_else(|| rows_layout(shape, caps))
            .unwrap_or_else(|| split_layout(shape, caps)),
        Variant::RowGroups => cpu::row_groups_layout(shape, caps).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} classes: the row-groups layout runs only on CPU adapters, on packed \
                 16-byte aligned rows of at most 32 classes, 4 / gcd(C, 4) rows per thread",
                shape.classes
            ))
        })?,
        Variant::Segments => cpu::segments_layout(shape, caps).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} classes: the segments layout runs only on CPU adapters, on 16-byte aligned \
                 regions, for rows a workgroup holds",
                shape.classes
            ))
        })?,
        Variant::Rows => rows_layout(shape, caps).ok_or_else(|| {
            Error::TooLarge(format!(
                "{} classes: the row-resident layout holds at most {} on this device",
                shape.classes,
                caps.max_workgroup as usize * VPT_MAX
            ))
        })?,
        Variant::Split => split_layout(shape, caps),
    };
    let per_chunk = rows_per_chunk(shape, caps, &layout)?;
    let reduce_span = shape
        .rows
        .div_ceil(REDUCE_GROUPS)
        .max(REDUCE_MIN_SPAN)
        .next_multiple_of(REDUCE_WG as usize);
    let mut chunks = Vec::new();
    let mut slots = 0;
    let mut first = 0;
    while first < shape.rows {
        let rows = per_chunk.min(shape.rows - first);
        let groups = rows.div_ceil(reduce_span);
        chunks.push(Chunk {
            first,
            rows,
            slot: slots,
            groups,
        });
        slots += groups;
        first += rows;
    }
    let split_base = WORK_HEADER + 4 * slots;
    let max_rows = chunks.iter().map(|c| c.rows).max().unwrap_or(0);
    let (split_words, norm_base) = match layout {
        Layout::Split { chunks: k, .. } => {
            let partials = 4 * max_rows * k as usize;
            (partials + 3 * max_rows, split_base + partials)
        }
        Layout::Rows { .. } | Layout::Segments { .. } | Layout::RowGroups { .. } => (0, split_base),
    };
    Ok(Plan {
        layout,
        chunks,
        reduce_span,
        slots,
        backward: backward_layout(shape.units(), caps),
        work_words: split_base + split_words,
        split_base,
        norm_base,
        max_groups: caps.max_groups,
    })
}

impl Plan {
    /// A grid of `x` by at least `groups` workgroups, the second count
    /// folded into y and z within the per-dimension limit (the kernels skip
    /// the few past the end).
    pub(crate) fn grid(&self, x: u32, groups: usize) -> [u32; 3] {
        let most = self.max_groups as usize;
        if groups <= most {
            [x, groups as u32, 1]
        } else {
            [x, most as u32, groups.div_ceil(most) as u32]
        }
    }

    /// Workgroups of the row pass over `rows` rows.
    pub(crate) fn row_groups(&self, rows: usize) -> usize {
        match self.layout {
            Layout::Rows { wg, tpr, .. } => rows.div_ceil((wg / tpr) as usize),
            Layout::Segments { wg, p, .. } => rows.div_ceil((wg / p) as usize),
            Layout::RowGroups { wg, r } => rows.div_ceil((wg * r) as usize),
            Layout::Split { .. } => rows,
        }
    }

    /// Row blocks of `xent_backward` over `rows` rows.
    pub(crate) fn backward_groups(&self, rows: usize) -> usize {
        let b = self.backward;
        rows.div_ceil((b.wg / b.tpr) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu() -> Caps {
        Caps {
            max_workgroup: 256,
            max_binding: 128 << 20,
            max_groups: 65535,
            cpu: false,
        }
    }

    fn shape(rows: usize, classes: usize) -> Shape {
        Shape {
            rows,
            classes,
            stride: classes,
            label_bytes: 4,
            vec4: true,
            lanes: 1,
            elem_bytes: 4,
        }
    }

    #[test]
    fn rows_layout_holds_the_row_and_split_takes_the_rest() {
        for c in [1, 2, 10, 31, 1000, 8142, 16384] {
            let p = plan(&shape(100, c), &gpu(), Variant::Auto).unwrap();
            let Layout::Rows { wg, tpr, vpt, .. } = p.layout else {
                panic!("C = {c}: {:?}", p.layout)
            };
            assert!((tpr * vpt) as usize >= c, "C = {c}");
            assert!(
                vpt as usize <= VPT_MAX && wg % tpr == 0 && wg <= 256,
                "C = {c}"
            );
        }
        let p = plan(&shape(100, 16385), &gpu(), Variant::Auto).unwrap();
        let Layout::Split {
            span,
            vpt,
            wg,
            chunks,
        } = p.layout
        else {
            panic!()
        };
        assert_eq!((span, wg * vpt, chunks), (4096, 4096, 5));
        assert!(plan(&shape(100, 16385), &gpu(), Variant::Rows).is_err());
    }

    #[test]
    fn chunks_cover_every_row_once_at_aligned_starts() {
        let caps = Caps {
            max_binding: 1 << 20,
            ..gpu()
        };
        for (n, c, stride) in [(1000, 1000, 1000), (70000, 3, 5), (130, 4000, 4096)] {
            let s = Shape {
                rows: n,
                classes: c,
                stride,
                label_bytes: 8,
                vec4: true,
                lanes: 1,
                elem_bytes: 4,
            };
            let p = plan(&s, &caps, Variant::Auto).unwrap();
            let mut next = 0;
            for ch in &p.chunks {
                assert_eq!(ch.first, next);
                assert!(ch.first % CHUNK_ROW_ALIGN == 0);
                assert!((((ch.rows - 1) * stride + c) * 4) as u64 <= caps.max_binding);
                assert!(ch.rows as u64 * 8 <= caps.max_binding);
                next += ch.rows;
            }
            assert_eq!(next, n);
            assert_eq!(p.chunks.iter().map(|c| c.groups).sum::<usize>(), p.slots);
        }
    }

    #[test]
    fn half_chunks_start_on_256_byte_boundaries_and_rows_fit_their_threads() {
        let caps = Caps {
            max_binding: 1 << 20,
            ..gpu()
        };
        for (n, c, stride) in [(70_000, 3, 5), (1000, 999, 1001), (300, 4000, 4000)] {
            let s = Shape {
                rows: n,
                classes: c,
                stride,
                label_bytes: 4,
                vec4: false,
                lanes: 2,
                elem_bytes: 2,
            };
            let p = plan(&s, &caps, Variant::Auto).unwrap();
            for ch in &p.chunks {
                assert!(
                    (ch.first * stride * 2).is_multiple_of(256),
                    "{n} x {c} / {stride}"
                );
                assert!((ch.first * 4).is_multiple_of(256));
            }
            if let Layout::Rows { tpr, vpt, .. } = p.layout {
                // A row of C halves touches up to C / 2 + 1 words.
                assert!((tpr * vpt) as usize > c / 2 && (vpt * 2) as usize <= VPT_MAX);
            }
        }
        let wide = Shape {
            rows: 4,
            classes: 100_001,
            stride: 100_001,
            label_bytes: 4,
            vec4: false,
            lanes: 2,
            elem_bytes: 2,
        };
        let Layout::Split { span, wg, vpt, .. } =
            plan(&wide, &gpu(), Variant::Auto).unwrap().layout
        else {
            panic!("expected the split layout")
        };
        assert!((wg * vpt) as usize > span as usize / 2);
    }

    #[test]
    fn a_row_past_the_binding_limit_is_an_error() {
        let caps = Caps {
            max_binding: 1024,
            ..gpu()
        };
        assert!(matches!(
            plan(&shape(2, 300), &caps, Variant::Auto),
            Err(Error::TooLarge(_))
        ));
    }

    #[test]
    fn grids_stay_within_the_dimension_limit() {
        let p = plan(&shape(10, 10), &gpu(), Variant::Auto).unwrap();
        assert_eq!(p.grid(1, 5), [1, 5, 1]);
        assert_eq!(p.grid(2, 65535 * 3 + 1), [2, 65535, 4]);
        for c in [1, 10, 1000, 100_000] {
            let b = plan(&shape(3, c), &gpu(), Variant::Auto).unwrap().backward;
            assert!(
                (b.blocks * b.tpr * b.vpt) as usize >= c && b.wg.is_multiple_of(b.tpr),
                "C = {c}"
            );
        }
    }
}
