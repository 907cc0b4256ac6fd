//! Running a cell on a context: inputs uploaded, outputs poisoned, the op
//! bound and recorded, the outputs read back and judged; or, on a tracing
//! context, the same bound run exported as data.

use super::cases::{self, Case, Expect, Expected, TAUS, TOP_K};
use super::{Cell, Dtype, Op};
use crate::buffers;
use crate::diagnostics::Timer;
use crate::error::{Error, Result};
use crate::trace::{Traced, TracedStep};
use crate::{
    BackwardBuffers, BoundCounts, BoundLoss, BoundPostHoc, Context, CountsBuffers, GradOutput,
    LabelType, LossBuffers, PostHoc, PostHocBuffers, Region, SoftmaxXent, UpstreamBuffer,
};

/// A cell's result on one context.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Whether the adapter runs the cell at all.
    pub supported: bool,
    /// Every output within its tolerance (false when unsupported).
    pub passed: bool,
    /// Why it failed or is unsupported; empty when it passed.
    pub message: String,
    /// The largest `|got - ref|` over the outputs.
    pub max_abs_err: f64,
    /// The largest `|got - ref| / |ref|` over elements whose reference is
    /// nonzero and above the absolute tolerance.
    pub max_rel_err: f64,
    /// The tolerances, in words.
    pub tolerance: String,
    /// Median device time of one run, microseconds (bound ops only).
    pub time_us: Option<f64>,
    /// Timed runs.
    pub runs: usize,
    /// Bytes one run must move (the floor the time is measured against).
    pub bytes: u64,
    /// `N`.
    pub rows: usize,
    /// `C`.
    pub classes: usize,
}

impl Outcome {
    /// A cell the adapter does not run, and why.
    pub fn unsupported(cell: &Cell, quick: bool, why: &str) -> Self {
        let (rows, classes) = cell.shape.dims(quick);
        Self {
            supported: false,
            passed: false,
            message: why.into(),
            max_abs_err: 0.0,
            max_rel_err: 0.0,
            tolerance: String::new(),
            time_us: None,
            runs: 0,
            bytes: 0,
            rows,
            classes,
        }
    }

    /// Effective bandwidth: `bytes / time`, GB/s.
    pub fn bandwidth_gb_s(&self) -> Option<f64> {
        self.time_us
            .filter(|&t| t > 0.0)
            .map(|t| self.bytes as f64 / (t * 1e3))
    }
}

/// Whether a tensor is read or written by the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Filled before the run.
    Input,
    /// Written by the run (poisoned before it).
    Output,
}

/// A caller buffer of a cell.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// The name its expectation uses (`logits`, `grad`, `pred`, ...).
    pub name: &'static str,
    /// The device buffer.
    pub buffer: wgpu::Buffer,
    /// Read or written.
    pub role: Role,
    /// Its contents before the run: the input, or the poison.
    pub init: Vec<u8>,
}

/// A cell's bound run as data, for another host to replay and judge.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The cell.
    pub cell: Cell,
    /// `N`.
    pub rows: usize,
    /// `C`.
    pub classes: usize,
    /// The caller buffers.
    pub tensors: Vec<Tensor>,
    /// The steps, in order.
    pub steps: Vec<TracedStep>,
    /// What the outputs must be.
    pub expects: Vec<Expect>,
}

enum Bound {
    Loss(Box<(SoftmaxXent, BoundLoss)>),
    PostHoc(Box<(PostHoc, BoundPostHoc)>),
    Counts(BoundCounts),
}

impl Bound {
    fn record(&self, encoder: &mut wgpu::CommandEncoder) {
        match self {
            Bound::Loss(l) => l.0.record(encoder, &l.1),
            Bound::PostHoc(p) => p.0.record(encoder, &p.1),
            Bound::Counts(b) => b.record(encoder),
        }
    }

    fn steps(&self, ctx: &Context) -> Result<Vec<TracedStep>> {
        match self {
            Bound::Loss(l) => l.1.steps(ctx),
            Bound::PostHoc(p) => p.1.steps(ctx),
            Bound::Counts(b) => b.steps(ctx),
        }
    }
}

struct Prepared {
    tensors: Vec<Tensor>,
    bound: Bound,
}

const POISON: u8 = 0xff;

fn tensor(ctx: &Context, name: &'static str, role: Role, init: Vec<u8>) -> Result<Tensor> {
    use wgpu::BufferUsages as U;
    let buffer = buffers::upload(ctx, name, &init, U::STORAGE | U::COPY_SRC | U::COPY_DST)?;
    Ok(Tensor {
        name,
        buffer,
        role,
        init,
    })
}

fn output(ctx: &Context, name: &'static str, elements: usize) -> Result<Tensor> {
    tensor(ctx, name, Role::Output, vec![POISON; 4 * elements.max(1)])
}

/// An output of `elements` values of `dtype`, poisoned (whole words).
fn output_of(ctx: &Context, name: &'static str, elements: usize, dtype: Dtype) -> Result<Tensor> {
    let bytes = (elements.max(1) as u64 * dtype.bytes()).next_multiple_of(4);
    tensor(ctx, name, Role::Output, vec![POISON; bytes as usize])
}

fn region(t: &Tensor) -> Region<'_> {
    Region::whole(&t.buffer)
}

fn bytes_of<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

/// The labels as i32, the type the runs bind.
fn labels_tensor(ctx: &Context, labels: &[i64]) -> Result<Tensor> {
    let labels: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
    tensor(ctx, "labels", Role::Input, bytes_of(&labels))
}

/// Upload the case's inputs, poison the outputs, bind `op`.
fn prepare(ctx: &Context, op: Op, case: &Case) -> Result<Prepared> {
    let (n, c) = (case.rows, case.classes);
    let logits = tensor(ctx, "logits", Role::Input, case.logits_bytes())?;
    match op {
        Op::Forward | Op::Fused => prepare_forward(ctx, op, case, logits),
        Op::Backward => {
            let labels = labels_tensor(ctx, &case.labels)?;
            let want = crate::reference::forward(&case.spec, &case.logits, &case.labels)?;
            let lse32: Vec<f32> = want.lse.iter().map(|&x| x as f32).collect();
            let lse = tensor(ctx, "lse", Role::Input, bytes_of(&lse32))?;
            let grad = output_of(ctx, "grad", n * c, case.dtype)?;
            let xent = ctx.softmax_xent(&case.spec)?;
            let bound = xent.bind_backward(&BackwardBuffers {
                logits: region(&logits),
                dtype: case.dtype,
                grad_f32: false,
                row_stride: 0,
                labels: region(&labels),
                label_type: LabelType::I32,
                rows: n,
                lse: region(&lse),
                grad: GradOutput::Separate(region(&grad)),
                upstream: UpstreamBuffer::One,
            })?;
            Ok(Prepared {
                tensors: vec![logits, labels, lse, grad],
                bound: Bound::Loss(Box::new((xent, bound))),
            })
        }
        Op::Argmax => {
            let pred = output(ctx, "pred", n * TAUS.len())?;
            let ph = ctx.posthoc(&case.prior, &TAUS)?;
            let bound = ph.bind(&PostHocBuffers {
                logits: region(&logits),
                dtype: case.dtype,
                rows: n,
                predictions: region(&pred),
            })?;
            Ok(Prepared {
                tensors: vec![logits, pred],
                bound: Bound::PostHoc(Box::new((ph, bound))),
            })
        }
        Op::Counts => {
            let t = TAUS.len();
            let p = case.predictions()?;
            let rows: Vec<u32> = (0..n * t).map(|e| p.by_tau[e % t][e / t]).collect();
            let labels = labels_tensor(ctx, &case.count_labels())?;
            let pred = tensor(ctx, "pred", Role::Input, bytes_of(&rows))?;
            let counts = output(ctx, "counts", c * (t + 1) + 1)?;
            let bound = ctx.bind_counts(&CountsBuffers {
                labels: region(&labels),
                predictions: Some(region(&pred)),
                rows: n,
                classes: c,
                taus: t,
                counts: region(&counts),
            })?;
            Ok(Prepared {
                tensors: vec![labels, pred, counts],
                bound: Bound::Counts(bound),
            })
        }
        Op::Corrected | Op::TopK => Err(Error::InvalidArgument(format!(
            "{} runs through the host path only",
            op.name()
        ))),
    }
}

/// The forward (or, `Op::Fused`, the fused run) on `logits`.
fn prepare_forward(ctx: &Context, op: Op, case: &Case, logits: Tensor) -> Result<Prepared> {
    let n = case.rows;
    let c = case.classes;

    let labels = labels_tensor(ctx, &case.labels)?;
    let loss = output(ctx, "loss", 1)?;
    let row_loss = output(ctx, "row_loss", n)?;
    let lse = output(ctx, "lse", n)?;
    let grad = (op == Op::Fused)
        .then(|| output_of(ctx, "grad", n * c, case.dtype))
        .transpose()?;
    let xent = ctx.softmax_xent(&case.spec)?;
    let bound = xent.bind(&LossBuffers {
        grad: grad
            .as_ref()
            .map_or(GradOutput::None, |g| GradOutput::Separate(region(g))),
        row_loss: Some(region(&row_loss)),
        lse: Some(region(&lse)),
        loss: Some(region(&loss)),
        label_type: LabelType::I32,
        dtype: case.dtype,
        ..LossBuffers::new(region(&logits), region(&labels), n)
    })?;
    let mut tensors = vec![logits, labels, loss, row_loss, lse];
    tensors.extend(grad);
    Ok(Prepared {
        tensors,
        bound: Bound::Loss(Box::new((xent, bound))),
    })
}

/// Bytes one run of `op` must move on an `n x c` case of `e`-byte logits.
fn traffic(op: Op, n: usize, c: usize, e: u64) -> u64 {
    let (n, c, t) = (n as u64, c as u64, TAUS.len() as u64);
    match op {
        Op::Forward => e * n * c + 12 * n,
        Op::Fused => 2 * e * n * c + 12 * n,
        Op::Backward => 2 * e * n * c + 8 * n,
        Op::Argmax => e * n * c + 4 * n * t,
        // The corrected logits are written as f32.
        Op::Corrected => (e + 4) * n * c,
        Op::TopK => e * n * c + 4 * n * TOP_K.min(c as usize) as u64,
        Op::Counts => 4 * n * (t + 1) + 4 * (c * (t + 1) + 1),
    }
}

/// Judge one output; `(passed, max abs, max rel, first failure)`.
fn judge(e: &Expect, got: &[u8]) -> (bool, f64, f64, Option<String>) {
    let (mut max_abs, mut max_rel) = (0.0f64, 0.0f64);
    let mut first = None;
    let mut fail = |i: usize, what: String| {
        if first.is_none() {
            first = Some(format!("{}[{i}]: {what}", e.output));
        }
    };
    match &e.values {
        Expected::U32(want) => {
            let got: Vec<u32> = bytemuck::pod_collect_to_vec(&got[..4 * want.len()]);
            for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                if g != w {
                    max_abs = max_abs.max((f64::from(g) - f64::from(w)).abs());
                    fail(i, format!("{g}, reference {w}"));
                }
            }
        }
        Expected::F32(want) => {
            let got: Vec<f32> = match e.dtype {
                Dtype::F32 => bytemuck::pod_collect_to_vec(&got[..4 * want.len()]),
                format => bytemuck::pod_collect_to_vec::<u8, u16>(&got[..2 * want.len()])
                    .into_iter()
                    .map(|h| match format {
                        Dtype::Bf16 => half::bf16::from_bits(h).to_f32(),
                        _ => half::f16::from_bits(h).to_f32(),
                    })
                    .collect(),
            };
            let exact: std::collections::HashSet<usize> = e.exact_rows.iter().copied().collect();
            for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                let g = f64::from(g);
                let err = (g - w).abs();
                if g.is_finite() {
                    max_abs = max_abs.max(err);
                    // Relative error only where the reference stands above
                    // the absolute tolerance: below it, any f32 rounding of
                    // a tiny value is a large ratio and means nothing.
                    if w != 0.0 && w.abs() > e.abs {
                        max_rel = max_rel.max(err / w.abs());
                    }
                }
                if exact.contains(&(i / e.row_len.max(1))) {
                    if g != 0.0 {
                        fail(i, format!("{g:e}, must be exactly 0 (ignored row)"));
                    }
                } else if !(g.is_finite() && err <= e.abs + e.rel * w.abs()) {
                    fail(i, format!("{g:e}, reference {w:e}"));
                }
            }
        }
    }
    (first.is_none(), max_abs, max_rel, first)
}

fn finish(cell: &Cell, case: &Case, expects: &[Expect], outputs: &[Vec<u8>]) -> Outcome {
    let mut out = Outcome {
        supported: true,
        passed: true,
        tolerance: expects
            .iter()
            .map(|e| format!("{}:{}", e.output, e.tolerance()))
            .collect::<Vec<_>>()
            .join(" "),
        bytes: traffic(cell.op, case.rows, case.classes, cell.dtype.bytes()),
        ..Outcome::unsupported(cell, false, "")
    };
    out.rows = case.rows;
    out.classes = case.classes;
    for (e, got) in expects.iter().zip(outputs) {
        let (passed, abs, rel, first) = judge(e, got);
        out.max_abs_err = out.max_abs_err.max(abs);
        out.max_rel_err = out.max_rel_err.max(rel);
        if !passed && out.passed {
            out.passed = false;
            out.message = first.unwrap_or_default();
        }
    }
    out
}

/// Run `cell` on `ctx` (its kernels and binding limit already chosen) with
/// the inputs of `seed`, judge it, and time `runs` runs of it.
pub fn run(ctx: &Context, cell: &Cell, quick: bool, seed: u64, runs: usize) -> Outcome {
    let failed = |e: Error| Outcome {
        supported: true,
        message: format!("error: {e}"),
        ..Outcome::unsupported(cell, quick, "")
    };
    // The CPU adapters' own layouts take half logits in the loss's
    // forward and fused runs; elsewhere halves run the GPU kernels.
    let cpu_layouts_take =
        cell.dtype == Dtype::F32 || matches!(cell.op, super::Op::Forward | super::Op::Fused);
    if cell.kernels == super::KernelSet::Cpu && !cpu_layouts_take {
        return Outcome::unsupported(
            cell,
            quick,
            "the CPU adapters' own layouts take half logits in the loss's forward and fused \
             runs; these run the GPU kernels (the gpu cells)",
        );
    }
    let attempt = || -> Result<Outcome> {
        let case = Case::new(cell.shape, quick, seed, cell.dtype)?;
        let expects = cases::expectations(cell.op, &case)?;
        if !cell.op.bound() {
            let got = host_path(ctx, cell.op, &case)?;
            return Ok(finish(cell, &case, &expects, &[got]));
        }
        let prepared = prepare(ctx, cell.op, &case)?;
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        prepared.bound.record(&mut encoder);
        ctx.queue().submit([encoder.finish()]);
        let regions: Vec<(&wgpu::Buffer, u64, usize)> = expects
            .iter()
            .map(|e| {
                let t = prepared
                    .tensors
                    .iter()
                    .find(|t| t.name == e.output)
                    .expect("every expectation names a tensor");
                let bytes = match &e.values {
                    Expected::F32(v) => v.len() as u64 * e.dtype.bytes(),
                    Expected::U32(v) => 4 * v.len() as u64,
                };
                (&t.buffer, 0, bytes.next_multiple_of(4) as usize)
            })
            .collect();
        let got = buffers::read::<u8>(ctx, &regions)?;
        let mut outcome = finish(cell, &case, &expects, &got);
        if runs > 0 {
            let timer = Timer::new(ctx);
            let ms = timer.time_encoder(runs, &|enc| prepared.bound.record(enc))?;
            outcome.time_us = Some(ms * 1e3);
            outcome.runs = runs;
        }
        Ok(outcome)
    };
    match ctx.scoped(attempt) {
        Ok(o) => o,
        Err(e) => failed(e),
    }
}

/// The host-path ops: the corrected logits and the top-k, as bytes.
fn host_path(ctx: &Context, op: Op, case: &Case) -> Result<Vec<u8>> {
    let ph = ctx.posthoc(&case.prior, &TAUS)?;
    let on = match case.dtype {
        Dtype::F32 => ph.upload(&case.logits)?,
        Dtype::F16 => ph.upload_as(&widened_to::<half::f16>(&case.logits))?,
        Dtype::Bf16 => ph.upload_as(&widened_to::<half::bf16>(&case.logits))?,
    };
    Ok(match op {
        Op::Corrected => bytes_of(&ph.corrected_on(&on, 1)?),
        _ => bytes_of(&ph.top_k_on(&on, 1, TOP_K.min(case.classes))?),
    })
}

/// `logits` (values of `T`, widened) as `T` again.
fn widened_to<T: crate::Element>(logits: &[f32]) -> Vec<T> {
    logits.iter().map(|&x| T::from_f32(x)).collect()
}

/// The bound run of `cell` on `ctx` (which must trace: see
/// [`Context::enable_trace`]) as data: tensors with their initial
/// contents, the steps, and what the outputs must be. Nothing is run.
pub fn export(ctx: &Context, cell: &Cell, quick: bool, seed: u64) -> Result<Exported> {
    if !cell.op.bound() || cell.dtype != Dtype::F32 {
        return Err(Error::InvalidArgument(format!(
            "{} is not exportable",
            cell.label()
        )));
    }
    let case = Case::new(cell.shape, quick, seed, cell.dtype)?;
    let expects = cases::expectations(cell.op, &case)?;
    let prepared = ctx.scoped(|| prepare(ctx, cell.op, &case))?;
    let steps = prepared.bound.steps(ctx)?;
    Ok(Exported {
        cell: *cell,
        rows: case.rows,
        classes: case.classes,
        tensors: prepared.tensors,
        steps,
        expects,
    })
}
