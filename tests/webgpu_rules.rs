//! What browsers' WebGPU (Dawn) enforces and wgpu does not, checked on the
//! traced plans of the GPU path, on every adapter: no dispatch binds two
//! writable storage ranges that overlap (Dawn refuses the dispatch, even
//! when the shader touches neither), in place or not, in every layout; and
//! every traced step names a shader file under `shaders/`. The browser
//! harness (tests/webgpu/) runs the same plans through Chromium in CI.

mod common;

use common::adapters;
use logit_adjust::conformance::{self, Devices, Dtype, KernelSet};
use logit_adjust::trace::{BindingKind, Traced, TracedStep};
use logit_adjust::{
    BackwardBuffers, ClassPrior, Context, GradOutput, LabelType, LossBuffers, LossSpec, Reduction,
    Region, UpstreamBuffer,
};

/// The GL backend shares one EGL context: the tests here take turns.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Fails naming the first pair of writable bindings of one dispatch whose
/// ranges overlap.
fn assert_no_writable_aliasing(what: &str, steps: &[TracedStep]) {
    for (k, step) in steps.iter().enumerate() {
        let TracedStep::Dispatch(d) = step else {
            continue;
        };
        let writable: Vec<_> = d
            .bindings
            .iter()
            .filter(|b| b.kind == BindingKind::Storage)
            .collect();
        for (i, a) in writable.iter().enumerate() {
            for b in &writable[i + 1..] {
                let overlap = a.buffer == b.buffer
                    && a.offset < b.offset + b.size
                    && b.offset < a.offset + a.size;
                assert!(
                    !overlap,
                    "{what}: step {k} ({} {}) binds one range writable twice: binding {} \
                     [{}, +{}) and binding {} [{}, +{})",
                    d.shader, d.entry, a.binding, a.offset, a.size, b.binding, b.offset, b.size
                );
            }
        }
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("shaders")
            .join(d.shader);
        assert!(file.is_file(), "{what}: step {k} names {}", d.shader);
    }
}

#[test]
fn every_exported_cell_keeps_writable_bindings_apart() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    for adapter in adapters() {
        let name = adapter.get_info().name;
        let mut devices = Devices::traced_with_limits(adapter, wgpu::Limits::default());
        let mut exported = 0;
        for cell in conformance::matrix() {
            if cell.kernels != KernelSet::Gpu || cell.dtype != Dtype::F32 || !cell.op.bound() {
                continue;
            }
            let ctx = devices
                .context(KernelSet::Gpu, cell.shape.small_binding())
                .unwrap();
            let e = conformance::export(&ctx, &cell, true, 1)
                .unwrap_or_else(|e| panic!("{name} {}: {e}", cell.label()));
            assert!(!e.steps.is_empty(), "{name} {}: no steps", cell.label());
            assert_no_writable_aliasing(&format!("{name} {}", cell.label()), &e.steps);
            exported += 1;
        }
        assert_eq!(exported, 40, "{name}: 5 bound ops x 8 shape classes");
    }
}

/// A run in place (the gradient over the logits), forward only, and
/// backward in place, in the row-resident and the split layouts.
#[test]
fn in_place_and_forward_only_runs_keep_writable_bindings_apart() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    for adapter in adapters() {
        let name = adapter.get_info().name;
        let mut devices = Devices::traced_with_limits(adapter, wgpu::Limits::default());
        let ctx: Context = devices.context(KernelSet::Gpu, false).unwrap();
        for (n, c) in [(33, 10), (3, 40_000)] {
            let prior = ClassPrior::from_counts(&vec![1.0; c]).unwrap();
            for reduction in [Reduction::Mean, Reduction::None] {
                let spec = LossSpec::logit_adjusted(&prior, 1.0)
                    .unwrap()
                    .with_reduction(reduction);
                let op = ctx.softmax_xent(&spec).unwrap();
                let storage = |bytes: usize| {
                    ctx.device().create_buffer(&wgpu::BufferDescriptor {
                        label: None,
                        size: (bytes as u64).next_multiple_of(16),
                        usage: wgpu::BufferUsages::STORAGE,
                        mapped_at_creation: false,
                    })
                };
                let (logits, labels, lse) = (storage(4 * n * c), storage(4 * n), storage(4 * n));
                let base = LossBuffers::new(Region::whole(&logits), Region::whole(&labels), n);
                let runs = [
                    ("forward", LossBuffers { ..base }),
                    (
                        "fused in place",
                        LossBuffers {
                            grad: GradOutput::InPlace,
                            lse: Some(Region::whole(&lse)),
                            ..base
                        },
                    ),
                ];
                for (what, buffers) in runs {
                    let bound = op.bind(&buffers).unwrap();
                    let what = format!("{name} {n}x{c} {reduction:?} {what}");
                    assert_no_writable_aliasing(&what, &bound.steps(&ctx).unwrap());
                }
                let backward = op
                    .bind_backward(&BackwardBuffers {
                        logits: Region::whole(&logits),
                        dtype: logit_adjust::Dtype::F32,
                        grad_f32: false,
                        row_stride: 0,
                        labels: Region::whole(&labels),
                        label_type: LabelType::I32,
                        rows: n,
                        lse: Region::whole(&lse),
                        grad: GradOutput::InPlace,
                        upstream: UpstreamBuffer::One,
                    })
                    .unwrap();
                let what = format!("{name} {n}x{c} {reduction:?} backward in place");
                assert_no_writable_aliasing(&what, &backward.steps(&ctx).unwrap());
            }
        }
    }
}

#[test]
fn an_untraced_context_says_so() {
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let adapter = adapters().remove(0);
    let ctx = Context::from_adapter(&adapter).unwrap();
    let prior = ClassPrior::from_counts(&[3.0, 1.0]).unwrap();
    let op = ctx
        .softmax_xent(&LossSpec::logit_adjusted(&prior, 1.0).unwrap())
        .unwrap();
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let bound = op
        .bind(&LossBuffers::new(
            Region::new(&buffer, 0, 16),
            Region::new(&buffer, 32, 8),
            2,
        ))
        .unwrap();
    let err = bound.steps(&ctx).unwrap_err().to_string();
    assert!(err.contains("enable_trace"), "{err}");
}
