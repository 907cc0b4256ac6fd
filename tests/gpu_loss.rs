//! The GPU loss against the f64 CPU reference, on every adapter and every
//! row-pass variant, on fresh random inputs per case. Output buffers are
//! poisoned with NaN before each run, so an element the kernel fails to
//! write fails the comparison.

mod common;

use common::{contexts, max_abs, name, worst, Rng};
use logit_adjust::{
    reference, ClassPrior, Context, GradOutput, LossBuffers, LossOutput, LossSpec, Reduction,
    SoftmaxXent, Upstream, UpstreamBuffer, Variant, ROW_CACHED_MAX_CLASSES,
    ROW_PER_THREAD_MAX_CLASSES, ROW_UNROLLED_MAX_CLASSES,
};
use wgpu::util::DeviceExt;

const VARIANTS: [Variant; 8] = [
    Variant::RowPerThread,
    Variant::RowUnrolled,
    Variant::RowPerGroup,
    Variant::RowCached,
    Variant::RowCachedSubgroup,
    Variant::RowSegments,
    Variant::SplitRow,
    Variant::SplitRowWindowed,
];
const REDUCTIONS: [Reduction; 4] = [
    Reduction::None,
    Reduction::Sum,
    Reduction::Mean,
    Reduction::WeightedMean,
];

/// The variants that accept `c` classes: every one is forced in turn.
fn variants_for(c: usize) -> impl Iterator<Item = Variant> {
    VARIANTS
        .into_iter()
        .filter(move |&v| v != Variant::RowPerThread || c <= ROW_PER_THREAD_MAX_CLASSES)
        .filter(move |&v| v != Variant::RowUnrolled || c <= ROW_UNROLLED_MAX_CLASSES)
        .filter(move |&v| {
            !matches!(v, Variant::RowCached | Variant::RowCachedSubgroup)
                || c <= ROW_CACHED_MAX_CLASSES
        })
}

/// Whether `ctx` runs `v` (the subgroup layout needs subgroups; where they
/// are missing, `subgroup_layout_is_refused_without_subgroups` checks the
/// error instead).
fn runs(ctx: &Context, v: Variant) -> bool {
    v != Variant::RowCachedSubgroup || ctx.capabilities().subgroups
}

fn poisoned(ctx: &Context, label: &str, len: usize) -> wgpu::Buffer {
    let nan = vec![f32::NAN; len.max(1)];
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(&nan),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        })
}

fn init(ctx: &Context, label: &str, data: &[u8]) -> wgpu::Buffer {
    let data = if data.is_empty() { &[0u8; 4][..] } else { data };
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: data,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        })
}

/// Run the device-resident path on poisoned buffers; read everything back.
fn run_device(
    op: &SoftmaxXent,
    ctx: &Context,
    logits: &[f32],
    labels: &[i64],
    upstream: Upstream,
    in_place: bool,
) -> LossOutput<f32> {
    let n = labels.len();
    let logits_buf = init(ctx, "logits", bytemuck::cast_slice(logits));
    let labels32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
    let labels_buf = init(ctx, "labels", bytemuck::cast_slice(&labels32));
    let grad_buf = poisoned(ctx, "grad", logits.len());
    let row_loss = poisoned(ctx, "row_loss", n);
    let upstream_buf = match upstream {
        Upstream::Scalar(g) => init(ctx, "g", bytemuck::bytes_of(&g)),
        Upstream::PerRow(g) => init(ctx, "g", bytemuck::cast_slice(g)),
    };
    let bound = op
        .bind(&LossBuffers {
            logits: &logits_buf,
            labels: &labels_buf,
            rows: n,
            grad: if in_place {
                GradOutput::InPlace
            } else {
                GradOutput::Separate(&grad_buf)
            },
            upstream: match upstream {
                Upstream::Scalar(_) => UpstreamBuffer::Scalar(&upstream_buf),
                Upstream::PerRow(_) => UpstreamBuffer::PerRow(&upstream_buf),
            },
            row_loss: Some(&row_loss),
        })
        .expect("bind");
    ctx.queue()
        .write_buffer(bound.status(), 0, bytemuck::cast_slice(&[f32::NAN; 3]));
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    op.record(&mut encoder, &bound);
    ctx.queue().submit([encoder.finish()]);
    let status = ctx.read_f32(bound.status(), 0, 3).unwrap();
    let per_row = ctx.read_f32(&row_loss, 0, n).unwrap();
    let grad_src = if in_place { &logits_buf } else { &grad_buf };
    let grad = ctx.read_f32(grad_src, 0, logits.len()).unwrap();
    LossOutput {
        loss: (op.spec().reduction_kind() != Reduction::None).then_some(status[2]),
        per_row,
        grad: Some(grad),
    }
}

/// Tolerances of the core issue: ordinary logits, or extreme ones where the
/// bound is the f32 rounding of the adjusted logits (`max_z`).
#[derive(Clone, Copy)]
enum Tolerance {
    Ordinary,
    Extreme { max_z: f64 },
}

fn compare(what: &str, got: &LossOutput<f32>, want: &LossOutput<f64>, tol: Tolerance) {
    let loss_tol = |r: f64| match tol {
        Tolerance::Ordinary => 1e-5 * r.abs().max(1.0),
        Tolerance::Extreme { max_z } => 1e-5 * r.abs().max(1.0) + 1e-6 * max_z,
    };
    match (got.loss, want.loss) {
        (Some(g), Some(w)) => assert!(
            g.is_finite() && (g as f64 - w).abs() <= loss_tol(w),
            "{what}: loss {g} vs reference {w}"
        ),
        (None, None) => {}
        other => panic!("{what}: loss presence differs: {other:?}"),
    }
    if let Some((i, g, w)) = worst(&got.per_row, &want.per_row, loss_tol) {
        panic!("{what}: per-row loss [{i}] = {g}, reference {w}");
    }
    if let (Some(g), Some(w)) = (&got.grad, &want.grad) {
        let scale = max_abs(w);
        let grad_tol = |_r: f64| match tol {
            Tolerance::Ordinary => 1e-6 + 1e-5 * scale,
            Tolerance::Extreme { max_z } => 1e-6 + 1e-5 * scale + 1e-6 * max_z * scale,
        };
        if let Some((i, gv, wv)) = worst(g, w, grad_tol) {
            panic!(
                "{what}: grad [{i}] (row {}) = {gv}, reference {wv}",
                i / (g.len() / got.per_row.len().max(1)).max(1)
            );
        }
    } else {
        assert_eq!(
            got.grad.is_some(),
            want.grad.is_some(),
            "{what}: grad presence"
        );
    }
}

struct Case {
    n: usize,
    c: usize,
    tau: f64,
    reduction: Reduction,
    smoothing: f32,
    ignored: f64,
}

/// One case on every adapter and variant, device-resident with poisoned
/// buffers, and through the host convenience path.
fn check(case: Case) {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let Case {
        n,
        c,
        tau,
        reduction,
        smoothing,
        ignored,
    } = case;
    let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, tau)
        .unwrap()
        .reduction(reduction)
        .label_smoothing(smoothing);
    let logits = rng.logits(n * c, 50.0);
    let labels = rng.labels(n, c, ignored, -100);
    let per_row_g: Vec<f32> = (0..n).map(|_| rng.range(-2.0, 2.0) as f32).collect();
    let upstream = if reduction == Reduction::None {
        Upstream::PerRow(&per_row_g)
    } else {
        Upstream::Scalar(rng.range(0.5, 2.0) as f32)
    };
    let want = reference::forward_backward_scaled(&spec, &logits, &labels, upstream).unwrap();
    for ctx in contexts() {
        for variant in variants_for(c).filter(|&v| runs(ctx, v)) {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let what = format!(
                "{} {variant:?} N={n} C={c} tau={tau} {reduction:?} eps={smoothing} seed={seed}",
                name(ctx)
            );
            let got = run_device(&op, ctx, &logits, &labels, upstream, false);
            compare(&what, &got, &want, Tolerance::Ordinary);
        }
        // The host path (auto variant) is a wrapper over the same recording.
        let op = ctx.softmax_xent(&spec).unwrap();
        let got = op
            .forward_backward_scaled(&logits, &labels, upstream)
            .unwrap();
        compare(
            &format!("{} host N={n} C={c} seed={seed}", name(ctx)),
            &got,
            &want,
            Tolerance::Ordinary,
        );
    }
}

fn case(n: usize, c: usize, k: usize) -> Case {
    Case {
        n,
        c,
        tau: [0.0, 1.0, 2.5][k % 3],
        reduction: REDUCTIONS[k % 4],
        smoothing: [0.0, 0.1][(k / 2) % 2],
        ignored: 0.15,
    }
}

#[test]
fn empty_batches() {
    for c in [1, 1000] {
        for k in 0..4 {
            check(case(0, c, k));
        }
    }
}

#[test]
fn one_class() {
    for (k, n) in [1, 7, 70_000].into_iter().enumerate() {
        check(case(n, 1, k));
    }
    // Past 256 x 1024 rows the reduce passes' 256 workgroups take more than
    // 1024 rows each; weighted-mean (k = 3) sums alpha_y over the valid rows.
    check(case(300_000, 1, 3));
}

#[test]
fn few_classes() {
    // The row-unrolled layout (C <= 32) in its scalar form (N * C % 4 != 0,
    // or R * C > 20: C = 7, 31) and its vec4 form with 1, 2 and 4 rows per
    // thread (C = 16; 2, 10; 3, 5).
    for (k, (n, c)) in [
        (1, 2),
        (7, 2),
        (1, 10),
        (7, 10),
        (70_000, 10),
        (70_000, 2),
        (4, 3),
        (68, 5),
        (65, 5),
        (8, 31),
        (5, 16),
        (70_004, 7),
    ]
    .into_iter()
    .enumerate()
    {
        check(case(n, c, k));
    }
}

#[test]
fn every_reduction_tau_and_smoothing_at_c_1000() {
    for k in 0..8 {
        check(case([1, 7][k % 2], 1000, k));
    }
}

#[test]
fn rows_past_the_dispatch_and_binding_limits() {
    // 70000 x 1000 f32 is 280 MB: over lavapipe's 128 MiB storage binding
    // and over 65,535 workgroups, so the rows are split into chunks.
    check(case(70_000, 1000, 2));
}

#[test]
fn subgroup_layout_is_refused_without_subgroups() {
    let prior = ClassPrior::from_counts(&[100.0, 10.0, 1.0]).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, 1.0).unwrap();
    for ctx in contexts() {
        let op = ctx
            .softmax_xent(&spec)
            .unwrap()
            .with_variant(Variant::RowCachedSubgroup);
        let got = op.forward_backward(&[0.5, 0.25, -1.0], &[1]);
        if ctx.capabilities().subgroups {
            assert!(got.is_ok(), "{}: {got:?}", name(ctx));
        } else {
            let err = got.unwrap_err().to_string();
            assert!(err.contains("subgroups"), "{}: {err}", name(ctx));
        }
    }
}

#[test]
fn segment_and_table_boundaries() {
    // Around the row-segments layout's splits (512 classes per thread, P a
    // power of two), a C that is not a multiple of 4, and the switch from
    // the uniform b table to the storage one above 16384 classes; N not a
    // multiple of the rows per workgroup.
    for (k, (n, c)) in [
        (67, 3),
        (9, 513),
        (9, 1023),
        (9, 1025),
        (5, 4097),
        (3, 16_384),
        (3, 16_385),
        (2, 20_001),
        (2, 32_769),
    ]
    .into_iter()
    .enumerate()
    {
        check(case(n, c, k));
    }
}

#[test]
fn segments_of_rows_that_start_inside_a_vec4() {
    // C % 4 != 0 with N * C % 4 == 0: the row-segments layout reads and
    // writes whole vec4s of the buffer (rows start at offsets 0-3 in a
    // vec4), with b shifted to match and the shared end vec4s stored
    // component by component. C % 4 = 1, 2, 3; one thread per row (C = 3,
    // 509) and several (P = 2 to 64); both b tables (C > 16384) and the
    // last table vec4 (16383, 32767).
    for (k, (n, c)) in [
        (4, 3),
        (68, 509),
        (12, 513),
        (8, 1022),
        (4, 8191),
        (2, 8142),
        (4, 16_383),
        (4, 20_001),
        (4, 32_767),
    ]
    .into_iter()
    .enumerate()
    {
        check(case(n, c, k));
    }
}

#[test]
fn segments_of_shifted_rows_across_chunks() {
    // 8256 rows of 4094 classes (135 MB) are two chunks on lavapipe (its
    // storage bindings hold 128 MiB): the second chunk's view starts at row
    // 8192, and its rows again start inside vec4s. The row-segments layout
    // only, forced, and the automatic choice, both against the reference.
    let (n, c) = (8256, 4094);
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, 1.0).unwrap();
    let logits = rng.logits(n * c, 30.0);
    let labels = rng.labels(n, c, 0.1, -100);
    let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
    for ctx in contexts() {
        for variant in [Variant::RowSegments, Variant::Auto] {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let what = format!("{} {variant:?} N={n} C={c} seed={seed}", name(ctx));
            let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
            compare(&what, &got, &want, Tolerance::Ordinary);
        }
    }
}

#[test]
fn split_row_chunk_and_window_boundaries() {
    // Around the split-row layout's cuts: chunks of 4096 classes (fewer, a
    // power of two, below that), windows of b of 16384 classes, C not a
    // multiple of 4 (scalar loads, a ragged last chunk), a last window with
    // a single chunk.
    for (k, (n, c)) in [
        (5, 5),
        (3, 4095),
        (3, 4100),
        (2, 16_388),
        (2, 49_157),
        (2, 65_540),
    ]
    .into_iter()
    .enumerate()
    {
        check(case(n, c, k));
    }
}

#[test]
fn large_vocabularies() {
    for (k, (n, c)) in [(1, 32_768), (7, 32_768), (1, 262_144), (64, 262_144)]
        .into_iter()
        .enumerate()
    {
        check(case(n, c, k + 1));
    }
}

#[test]
fn a_confident_row_keeps_its_small_gradient() {
    // Row 0 puts almost all its mass on its label (logit 35 against 21.9),
    // so its gradient is about 4e-6 at most, and row 1 is ignored: the
    // tolerance is then about 1e-6. A layout that formed p_c as
    // exp(z_c - LSE) lost about 2e-6 to LSE's rounding at 35 (the split-row
    // layout did, found by a random case); exp(z_c - M) / S does not.
    let prior = ClassPrior::from_counts(&[1.0, 1.0, 1.0]).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, 0.0)
        .unwrap()
        .reduction(Reduction::Sum);
    let logits = [1.3236051, 21.86657, 34.969307, 16.33, 44.25, 47.93];
    let labels = [2, -100];
    let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
    for ctx in contexts() {
        for variant in variants_for(3).filter(|&v| runs(ctx, v)) {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
            let what = format!("{} {variant:?} confident row", name(ctx));
            compare(&what, &got, &want, Tolerance::Ordinary);
        }
    }
}

#[test]
fn extreme_logits_and_a_tiny_prior() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    for (n, c) in [(7, 10), (64, 1000), (3, 32_768)] {
        for (k, tau) in [0.0, 1.0, 2.5].into_iter().enumerate() {
            let mut p: Vec<f64> = (0..c).map(|_| rng.range(0.5, 1.0)).collect();
            p[rng.below(c)] = 1e-30;
            let prior = ClassPrior::from_probabilities(&p).unwrap();
            let spec = LossSpec::logit_adjusted(&prior, tau)
                .unwrap()
                .reduction(REDUCTIONS[k + 1])
                .label_smoothing([0.0, 0.1][k % 2]);
            // +-1e4, and whole rows pinned at the extremes.
            let mut logits = rng.logits(n * c, 1e4);
            for x in logits[..c].iter_mut() {
                *x = 1e4;
            }
            for x in logits[c..2 * c].iter_mut() {
                *x = -1e4;
            }
            let labels = rng.labels(n, c, 0.1, -100);
            let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
            let max_z = 1e4 + tau * 1e-30f64.ln().abs() + 1.0;
            for ctx in contexts() {
                for variant in variants_for(c).filter(|&v| runs(ctx, v)) {
                    let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
                    let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
                    let what = format!(
                        "{} {variant:?} extreme N={n} C={c} tau={tau} seed={seed}",
                        name(ctx)
                    );
                    assert!(
                        got.per_row.iter().all(|x| x.is_finite()),
                        "{what}: non-finite loss"
                    );
                    assert!(
                        got.grad.as_ref().unwrap().iter().all(|x| x.is_finite()),
                        "{what}: non-finite grad"
                    );
                    compare(&what, &got, &want, Tolerance::Extreme { max_z });
                }
            }
        }
    }
}

#[test]
fn forward_only_and_in_place() {
    // C = 500 takes the wide layouts; C <= 32 the row-unrolled one, in its
    // vec4 form (64 x 10, 12 x 3, 9 x 16) and its scalar form (33 x 10,
    // 13 x 3: N * C % 4 != 0; 20 x 31, 9 x 32: R * C > 20); 8 x 1022 and
    // 4 x 8191 the row-segments layout's shifted vec4 form.
    for (n, c) in [
        (300, 500),
        (8, 1022),
        (4, 8191),
        (64, 10),
        (33, 10),
        (12, 3),
        (13, 3),
        (9, 16),
        (20, 31),
        (9, 32),
    ] {
        forward_only_and_in_place_at(n, c);
    }
}

fn forward_only_and_in_place_at(n: usize, c: usize) {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let prior = ClassPrior::from_counts(&rng.counts(c, 50.0)).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, 1.0)
        .unwrap()
        .label_smoothing(0.05);
    let logits = rng.logits(n * c, 20.0);
    let labels = rng.labels(n, c, 0.2, -100);
    let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
    let want_fwd = reference::forward(&spec, &logits, &labels).unwrap();
    for ctx in contexts() {
        for variant in variants_for(c).filter(|&v| runs(ctx, v)) {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let what = format!("{} {variant:?} N={n} C={c} seed={seed}", name(ctx));
            let fwd = op.forward(&logits, &labels).unwrap();
            assert!(fwd.grad.is_none());
            compare(
                &format!("{what} forward"),
                &fwd,
                &want_fwd,
                Tolerance::Ordinary,
            );
            let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), true);
            compare(
                &format!("{what} device in-place"),
                &got,
                &want,
                Tolerance::Ordinary,
            );
            let mut buf = logits.clone();
            let out = op.forward_backward_in_place(&mut buf, &labels).unwrap();
            assert!(out.grad.is_none());
            let host = LossOutput {
                grad: Some(buf),
                ..out
            };
            compare(
                &format!("{what} host in-place"),
                &host,
                &want,
                Tolerance::Ordinary,
            );
        }
    }
}

#[test]
fn general_form_margins_weights_and_ignore_index_inside_the_range() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    for (n, c) in [(50, 7), (20, 300)] {
        let b: Vec<f32> = (0..c).map(|_| rng.range(-3.0, 1.0) as f32).collect();
        let m: Vec<f32> = (0..c).map(|_| rng.range(0.0, 0.5) as f32).collect();
        let a: Vec<f32> = (0..c).map(|_| rng.range(0.1, 5.0) as f32).collect();
        for (k, reduction) in REDUCTIONS.into_iter().enumerate() {
            let spec = LossSpec::custom(b.clone(), m.clone(), a.clone())
                .unwrap()
                .reduction(reduction)
                .label_smoothing(0.1 * k as f32 / 2.0)
                .ignore_index(3); // a real class, ignored
            let logits = rng.logits(n * c, 10.0);
            let labels = rng.labels(n, c, 0.0, 3);
            let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
            for ctx in contexts() {
                for variant in variants_for(c).filter(|&v| runs(ctx, v)) {
                    let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
                    let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
                    compare(
                        &format!("{} {variant:?} custom {reduction:?} seed={seed}", name(ctx)),
                        &got,
                        &want,
                        Tolerance::Ordinary,
                    );
                }
            }
        }
    }
}

#[test]
fn mean_over_no_valid_rows_is_zero_with_zero_gradient() {
    let spec = LossSpec::cross_entropy(5).reduction(Reduction::Mean);
    let logits = Rng::fresh().logits(15, 3.0);
    let labels = [-100i64; 3];
    for ctx in contexts() {
        for variant in variants_for(5).filter(|&v| runs(ctx, v)) {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
            assert_eq!(got.loss, Some(0.0), "{}", name(ctx));
            assert!(got.per_row.iter().all(|&x| x == 0.0));
            assert!(got.grad.unwrap().iter().all(|&x| x == 0.0));
        }
    }
}

#[test]
fn same_input_same_bits() {
    let mut rng = Rng::fresh();
    let spec = LossSpec::cross_entropy(777).reduction(Reduction::Mean);
    let logits = rng.logits(513 * 777, 30.0);
    let labels = rng.labels(513, 777, 0.1, -100);
    for ctx in contexts() {
        let op = ctx.softmax_xent(&spec).unwrap();
        let a = op.forward_backward(&logits, &labels).unwrap();
        let b = op.forward_backward(&logits, &labels).unwrap();
        assert_eq!(
            a.loss.unwrap().to_bits(),
            b.loss.unwrap().to_bits(),
            "{}",
            name(ctx)
        );
        assert!(a
            .grad
            .unwrap()
            .iter()
            .zip(b.grad.unwrap())
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn device_forward_and_in_place_with_the_default_upstream() {
    // GradOutput::None / InPlace with UpstreamBuffer::One must not bind one
    // buffer both writable and read-only.
    let mut rng = Rng::fresh();
    let (n, c) = (50, 300);
    let spec = LossSpec::cross_entropy(c).reduction(Reduction::Mean);
    let logits = rng.logits(n * c, 5.0);
    let labels = rng.labels(n, c, 0.1, -100);
    let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
    for ctx in contexts() {
        for variant in variants_for(c).filter(|&v| runs(ctx, v)) {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let l32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
            let labels_buf = init(ctx, "labels", bytemuck::cast_slice(&l32));
            for in_place in [false, true] {
                let logits_buf = init(ctx, "logits", bytemuck::cast_slice(&logits));
                let bound = op
                    .bind(&LossBuffers {
                        logits: &logits_buf,
                        labels: &labels_buf,
                        rows: n,
                        grad: if in_place {
                            GradOutput::InPlace
                        } else {
                            GradOutput::None
                        },
                        upstream: UpstreamBuffer::One,
                        row_loss: None,
                    })
                    .unwrap();
                let mut encoder = ctx.device().create_command_encoder(&Default::default());
                op.record(&mut encoder, &bound);
                ctx.queue().submit([encoder.finish()]);
                let loss = ctx.read_f32(bound.status(), 8, 1).unwrap()[0] as f64;
                assert!(
                    (loss - want.loss.unwrap()).abs() < 1e-5,
                    "{} {variant:?} in_place={in_place}",
                    name(ctx)
                );
                let after = ctx.read_f32(&logits_buf, 0, n * c).unwrap();
                if in_place {
                    assert!(worst(&after, want.grad.as_ref().unwrap(), |_| 1e-6).is_none());
                } else {
                    assert_eq!(after, logits, "forward must not touch the logits");
                }
            }
        }
    }
}

#[test]
fn bind_once_record_many() {
    let mut rng = Rng::fresh();
    let (n, c) = (100, 64);
    let spec = LossSpec::cross_entropy(c).reduction(Reduction::Sum);
    let logits = rng.logits(n * c, 5.0);
    let labels = rng.labels(n, c, 0.0, -100);
    let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
    for ctx in contexts() {
        let op = ctx.softmax_xent(&spec).unwrap();
        let logits_buf = init(ctx, "logits", bytemuck::cast_slice(&logits));
        let l32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
        let labels_buf = init(ctx, "labels", bytemuck::cast_slice(&l32));
        let grad = poisoned(ctx, "grad", n * c);
        let bound = op
            .bind(&LossBuffers {
                logits: &logits_buf,
                labels: &labels_buf,
                rows: n,
                grad: GradOutput::Separate(&grad),
                upstream: UpstreamBuffer::One,
                row_loss: None,
            })
            .unwrap();
        for _ in 0..3 {
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            op.record(&mut encoder, &bound);
            op.record(&mut encoder, &bound);
            ctx.queue().submit([encoder.finish()]);
            let loss = ctx.read_f32(bound.status(), 8, 1).unwrap()[0];
            assert!((loss as f64 - want.loss.unwrap()).abs() < 1e-5 * want.loss.unwrap().abs());
            op.check_labels(&bound).unwrap();
        }
        let g = ctx.read_f32(&grad, 0, n * c).unwrap();
        assert!(
            worst(&g, want.grad.as_ref().unwrap(), |_| 1e-6).is_none(),
            "{}",
            name(ctx)
        );
    }
}

#[test]
fn row_per_thread_refuses_a_vocabulary_it_cannot_loop_over() {
    let spec = LossSpec::cross_entropy(32_768);
    let logits = vec![0.0f32; 32_768];
    for ctx in contexts() {
        let op = ctx
            .softmax_xent(&spec)
            .unwrap()
            .with_variant(Variant::RowPerThread);
        let err = op.forward_backward(&logits, &[1]).unwrap_err();
        assert!(matches!(err, logit_adjust::Error::TooLarge(_)), "{err}");
    }
}

#[test]
fn bad_input_is_an_error_and_touches_nothing() {
    let spec = LossSpec::cross_entropy(4);
    for ctx in contexts() {
        let op = ctx.softmax_xent(&spec).unwrap();
        let mut logits = vec![0.5f32; 8];
        let e = op
            .forward_backward_in_place(&mut logits, &[0, 4])
            .unwrap_err();
        assert!(
            matches!(
                e,
                logit_adjust::Error::LabelOutOfRange {
                    row: 1,
                    label: 4,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            logits.iter().all(|&x| x == 0.5),
            "in-place logits changed on error"
        );
        let e = op.forward(&logits[..7], &[0, 1]).unwrap_err();
        assert!(
            matches!(e, logit_adjust::Error::ShapeMismatch { .. }),
            "{e}"
        );
        logits[3] = f32::INFINITY;
        let e = op.forward(&logits, &[0, 1]).unwrap_err();
        assert!(
            matches!(e, logit_adjust::Error::NonFinite { index: 3, .. }),
            "{e}"
        );

        // Device-resident: a buffer too small, a buffer without STORAGE.
        let small = init(ctx, "logits", &[0u8; 16]);
        let labels = init(ctx, "labels", bytemuck::cast_slice(&[0i32, 1]));
        let e = op
            .bind(&LossBuffers {
                logits: &small,
                labels: &labels,
                rows: 2,
                grad: GradOutput::None,
                upstream: UpstreamBuffer::One,
                row_loss: None,
            })
            .unwrap_err();
        assert!(
            matches!(
                e,
                logit_adjust::Error::BufferTooSmall {
                    needed: 32,
                    got: 16,
                    ..
                }
            ),
            "{e}"
        );
        let unusable = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 32,
            usage: wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let e = op
            .bind(&LossBuffers {
                logits: &unusable,
                labels: &labels,
                rows: 2,
                grad: GradOutput::None,
                upstream: UpstreamBuffer::One,
                row_loss: None,
            })
            .unwrap_err();
        assert!(e.to_string().contains("STORAGE"), "{e}");
    }
}

#[test]
fn labels_out_of_range_on_the_device_are_reported_and_loud() {
    let spec = LossSpec::cross_entropy(10).reduction(Reduction::Sum);
    let logits = Rng::fresh().logits(30, 2.0);
    for ctx in contexts() {
        for variant in variants_for(10).filter(|&v| runs(ctx, v)) {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let logits_buf = init(ctx, "logits", bytemuck::cast_slice(&logits));
            let labels_buf = init(ctx, "labels", bytemuck::cast_slice(&[1i32, 10, -100]));
            let grad = poisoned(ctx, "grad", 30);
            let bound = op
                .bind(&LossBuffers {
                    logits: &logits_buf,
                    labels: &labels_buf,
                    rows: 3,
                    grad: GradOutput::Separate(&grad),
                    upstream: UpstreamBuffer::One,
                    row_loss: None,
                })
                .unwrap();
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            op.record(&mut encoder, &bound);
            ctx.queue().submit([encoder.finish()]);
            let e = op.check_labels(&bound).unwrap_err();
            assert_eq!(
                e,
                logit_adjust::Error::BadLabelsOnDevice { count: 1 },
                "{}",
                name(ctx)
            );
            let rows = ctx.read_f32(bound.row_loss(), 0, 3).unwrap();
            assert!(
                rows[0].is_finite() && rows[1].is_nan() && rows[2] == 0.0,
                "{rows:?}"
            );
            let g = ctx.read_f32(&grad, 0, 30).unwrap();
            assert!(g[..10].iter().all(|x| x.is_finite()));
            assert!(g[10..20].iter().all(|x| x.is_nan()));
            assert!(g[20..].iter().all(|&x| x == 0.0));
        }
    }
}

#[test]
fn every_preset_of_the_family_matches_the_reference() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let (n, c) = (400, 37);
    let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
    let delta: Vec<f64> = (0..c).map(|_| rng.range(0.2, 2.0)).collect();
    let presets = [
        ("cross-entropy", LossSpec::cross_entropy(c)),
        (
            "logit-adjusted",
            LossSpec::logit_adjusted(&prior, 1.0).unwrap(),
        ),
        ("balanced", LossSpec::balanced(&prior)),
        ("ldam", LossSpec::ldam(&prior)),
        ("equalised", LossSpec::equalised(&prior, 1.0).unwrap()),
        ("theorem1", LossSpec::theorem1(&prior, &delta).unwrap()),
        (
            "la-ldam",
            LossSpec::logit_adjusted_adaptive(&prior, 1.0).unwrap(),
        ),
    ];
    let logits = rng.logits(n * c, 8.0);
    let labels = rng.labels(n, c, 0.05, -100);
    for (name_, spec) in presets {
        for reduction in [Reduction::Mean, Reduction::WeightedMean] {
            let spec = spec.clone().reduction(reduction);
            let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
            for ctx in contexts() {
                for variant in variants_for(c).filter(|&v| runs(ctx, v)) {
                    let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
                    let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
                    compare(
                        &format!(
                            "{} {variant:?} {name_} {reduction:?} seed={seed}",
                            name(ctx)
                        ),
                        &got,
                        &want,
                        Tolerance::Ordinary,
                    );
                }
            }
        }
    }
}

#[test]
fn presets_follow_the_paper() {
    let prior = ClassPrior::from_counts(&[800.0, 150.0, 40.0, 10.0]).unwrap();
    let pi: Vec<f64> = prior.probabilities().to_vec();
    // Theorem 1 with delta = pi is the logit-adjusted loss; delta = 1 the balanced loss.
    let t_pi = LossSpec::theorem1(&prior, &pi).unwrap();
    let la = LossSpec::logit_adjusted(&prior, 1.0).unwrap();
    for (a, b) in t_pi.bias().iter().zip(la.bias()) {
        assert!((a - b).abs() < 1e-6);
    }
    assert!(t_pi.weight().iter().all(|&w| (w - 1.0).abs() < 1e-6));
    let t_one = LossSpec::theorem1(&prior, &[1.0; 4]).unwrap();
    assert_eq!(t_one.weight(), LossSpec::balanced(&prior).weight());
    assert!(t_one.bias().iter().all(|&b| b == 0.0));
    // LDAM: largest margin 0.5 on the rarest class, m proportional to n^(-1/4).
    let ldam = LossSpec::ldam(&prior);
    assert!((ldam.margin()[3] - 0.5).abs() < 1e-6);
    assert!((ldam.margin()[0] - 0.5 * (10.0f32 / 800.0).powf(0.25)).abs() < 1e-6);
    // Equalised: b = m = tau log pi.
    let eq = LossSpec::equalised(&prior, 0.5).unwrap();
    assert_eq!(eq.bias(), eq.margin());
    assert!((eq.bias()[1] as f64 - 0.5 * pi[1].ln()).abs() < 1e-6);
    assert!(LossSpec::theorem1(&prior, &[1.0, 0.0, 1.0, 1.0]).is_err());
}
