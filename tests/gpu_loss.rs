//! The GPU loss against the f64 CPU reference, on every adapter and every
//! row-pass variant, on fresh random inputs per case. Output buffers are
//! poisoned with NaN before each run, so an element the kernel fails to
//! write fails the comparison.

mod common;

use common::{contexts, max_abs, name, worst, Rng};
use logit_adjust::{
    reference, BackwardBuffers, ClassPrior, Context, GradOutput, LabelType, LossBuffers,
    LossOutput, LossSpec, Reduction, Region, SoftmaxXent, Upstream, UpstreamBuffer, Variant,
};
use wgpu::util::DeviceExt;

const REDUCTIONS: [Reduction; 4] = [
    Reduction::None,
    Reduction::Sum,
    Reduction::Mean,
    Reduction::WeightedMean,
];

/// The layouts that take `n` rows of `c` classes on `ctx`: every one is
/// forced in turn (the CPU adapters' layouts on CPU adapters only).
fn variants_for(ctx: &Context, n: usize, c: usize) -> Vec<Variant> {
    let spec = LossSpec::cross_entropy(c);
    [
        Variant::Rows,
        Variant::Split,
        Variant::Segments,
        Variant::RowGroups,
    ]
    .into_iter()
    .filter(|&v| {
        ctx.softmax_xent(&spec)
            .unwrap()
            .with_variant(v)
            .resolved_variant(n)
            .is_ok()
    })
    .collect()
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

/// Regions of one pooled buffer, as an engine keeps its tensors: each at a
/// 256-byte boundary after the previous one, the whole pool poisoned with
/// NaN (inputs are written over it), so an element a kernel fails to write
/// fails the comparison.
struct Pool {
    regions: Vec<(u64, u64)>,
    buffer: wgpu::Buffer,
}

impl Pool {
    fn new(ctx: &Context, sizes: &[u64]) -> Self {
        let mut end = 256;
        let regions: Vec<(u64, u64)> = sizes
            .iter()
            .map(|&bytes| {
                let at = end;
                end = (at + bytes.max(4)).next_multiple_of(256);
                (at, bytes)
            })
            .collect();
        let nan = vec![f32::NAN; (end / 4) as usize];
        Self {
            regions,
            buffer: init(ctx, "pool", bytemuck::cast_slice(&nan)),
        }
    }

    fn region(&self, k: usize) -> Region<'_> {
        let (at, bytes) = self.regions[k];
        Region::new(&self.buffer, at, bytes)
    }

    fn write(&self, ctx: &Context, k: usize, data: &[u8]) {
        if !data.is_empty() {
            ctx.queue()
                .write_buffer(&self.buffer, self.regions[k].0, data);
        }
    }

    fn read(&self, ctx: &Context, k: usize, len: usize) -> Vec<f32> {
        ctx.read_f32(&self.buffer, self.regions[k].0, len).unwrap()
    }
}

/// What the device-resident path gave: the fused (or in-place) run, and the
/// gradient formed again from its saved LSE by the backward run.
struct DeviceRun {
    fused: LossOutput<f32>,
    from_lse: Vec<f32>,
}

/// Run the device-resident path on regions of one pooled buffer: logits
/// with padded rows (`stride = C + pad`), labels as `label_type`; the fused
/// forward+backward (separate or in place), then the backward from the
/// saved LSE into a second gradient region; read everything back (row by
/// row, without the padding).
fn run_device(
    op: &SoftmaxXent,
    ctx: &Context,
    logits: &[f32],
    labels: &[i64],
    upstream: Upstream,
    in_place: bool,
) -> DeviceRun {
    run_device_as(op, ctx, logits, labels, upstream, in_place, LabelType::I32)
}

/// The padding between rows is the caller's: never written (still NaN).
fn assert_padding_untouched(flat: &[f32], n: usize, c: usize, stride: usize) {
    for row in 0..n.saturating_sub(1) {
        let pad = &flat[row * stride + c..(row + 1) * stride];
        assert!(
            pad.iter().all(|x| x.is_nan()),
            "row {row}'s padding was written: {pad:?}"
        );
    }
}

/// Labels as the device holds them in `label_type`.
fn label_bytes(labels: &[i64], label_type: LabelType) -> Vec<u8> {
    match label_type {
        LabelType::I64 => bytemuck::cast_slice(labels).to_vec(),
        _ => labels
            .iter()
            .flat_map(|&y| (y as i32).to_le_bytes())
            .collect(),
    }
}

fn run_device_as(
    op: &SoftmaxXent,
    ctx: &Context,
    logits: &[f32],
    labels: &[i64],
    upstream: Upstream,
    in_place: bool,
    label_type: LabelType,
) -> DeviceRun {
    let n = labels.len();
    let c = op.spec().classes();
    // Padded rows, except for the row-groups layout, which takes packed ones.
    let stride = if op.variant() == Variant::RowGroups {
        c
    } else {
        c + [0, 1, 3][c % 3]
    };
    let padded_len = if n == 0 { 0 } else { (n - 1) * stride + c };
    let mut padded = vec![f32::NAN; padded_len];
    for (row, values) in logits.chunks(c.max(1)).enumerate() {
        padded[row * stride..][..c].copy_from_slice(values);
    }
    let label_bytes = label_bytes(labels, label_type);
    let upstream_data: Vec<f32> = match upstream {
        Upstream::Scalar(g) => vec![g],
        Upstream::PerRow(g) => g.to_vec(),
    };
    let (lb, rb) = (4 * padded_len as u64, 4 * n as u64);
    // logits, labels, grad, row_loss, lse, upstream, loss + bad, grad from LSE
    let pool = Pool::new(
        ctx,
        &[
            lb,
            label_bytes.len() as u64,
            lb,
            rb,
            rb,
            4 * upstream_data.len() as u64,
            8,
            lb,
        ],
    );
    pool.write(ctx, 0, bytemuck::cast_slice(&padded));
    pool.write(ctx, 1, &label_bytes);
    pool.write(ctx, 5, bytemuck::cast_slice(&upstream_data));
    let upstream_region = match upstream {
        Upstream::Scalar(_) => UpstreamBuffer::Scalar(pool.region(5)),
        Upstream::PerRow(_) => UpstreamBuffer::PerRow(pool.region(5)),
    };
    let (loss_at, _) = pool.regions[6];
    let reduced = op.spec().reduction() != Reduction::None;
    let fused = op
        .bind(&LossBuffers {
            row_stride: stride,
            label_type,
            grad: if in_place {
                GradOutput::InPlace
            } else {
                GradOutput::Separate(pool.region(2))
            },
            upstream: upstream_region,
            row_loss: Some(pool.region(3)),
            lse: Some(pool.region(4)),
            loss: reduced.then(|| Region::new(&pool.buffer, loss_at, 4)),
            ..LossBuffers::new(pool.region(0), pool.region(1), n)
        })
        .expect("bind");
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    op.record(&mut encoder, &fused);
    ctx.queue().submit([encoder.finish()]);
    let rows_of = |flat: Vec<f32>| -> Vec<f32> {
        (0..n)
            .flat_map(|row| flat[row * stride..][..c].to_vec())
            .collect()
    };
    let flat = pool.read(ctx, if in_place { 0 } else { 2 }, padded_len);
    assert_padding_untouched(&flat, n, c, stride);
    let grad = rows_of(flat);
    // The backward from the saved LSE, on the original logits.
    pool.write(ctx, 0, bytemuck::cast_slice(&padded));
    let backward = op
        .bind_backward(&BackwardBuffers {
            row_stride: stride,
            label_type,
            upstream: upstream_region,
            ..BackwardBuffers::new(
                pool.region(0),
                pool.region(1),
                n,
                pool.region(4),
                GradOutput::Separate(pool.region(7)),
            )
        })
        .expect("bind backward");
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    op.record(&mut encoder, &backward);
    ctx.queue().submit([encoder.finish()]);
    let loss = pool.read(ctx, 6, 1)[0];
    DeviceRun {
        fused: LossOutput {
            loss: reduced.then_some(loss),
            per_row: pool.read(ctx, 3, n),
            lse: pool.read(ctx, 4, n),
            grad: Some(grad),
        },
        from_lse: rows_of(pool.read(ctx, 7, padded_len)),
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
    if !got.lse.is_empty() {
        if let Some((i, g, w)) = worst(&got.lse, &want.lse, loss_tol) {
            panic!("{what}: LSE [{i}] = {g}, reference {w}");
        }
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

/// The largest row multiplier `s g_i alpha_y / denom` of a case's gradient
/// (`p - q` times it is row `i`), over the rows with a class for label:
/// the bound on what the LSE's rounding moves in a row.
fn row_multiplier(spec: &LossSpec, labels: &[i64], upstream: Upstream) -> f64 {
    let alpha = spec.weight();
    let valid: Vec<f64> = labels
        .iter()
        .filter(|&&y| y != spec.ignore_index() && y >= 0 && (y as usize) < alpha.len())
        .map(|&y| f64::from(alpha[y as usize]))
        .collect();
    let denom = match spec.reduction() {
        Reduction::Mean => valid.len() as f64,
        Reduction::WeightedMean => valid.iter().sum(),
        Reduction::Sum | Reduction::None => 1.0,
    };
    let g = match upstream {
        Upstream::Scalar(g) => f64::from(g.abs()),
        Upstream::PerRow(g) => g.iter().fold(0.0f64, |m, &x| m.max(f64::from(x.abs()))),
    };
    let alpha_max = valid.iter().fold(0.0f64, |m, &a| m.max(a.abs()));
    if denom > 0.0 {
        f64::from(spec.logit_scale()) * g * alpha_max / denom
    } else {
        0.0
    }
}

/// The fused run, and the gradient from the saved LSE: besides the
/// fused tolerance, the latter carries the f32 rounding of LSE into every
/// `p_c = exp(z_c - LSE)` (a few ulp of |LSE|, relative), times the row's
/// multiplier (from the spec, the labels and the default upstream).
fn compare_device(
    what: &str,
    got: &DeviceRun,
    want: &LossOutput<f64>,
    tol: Tolerance,
    (spec, labels): (&LossSpec, &[i64]),
) {
    let row_scale = row_multiplier(spec, labels, Upstream::default());
    compare_device_scaled(what, got, want, tol, row_scale);
}

/// `compare_device` where `row_scale` bounds every row's multiplier
/// `scale_i alpha_y` of `p - q`: the LSE's rounding moves the element by
/// that times `p_c` times the rounding, and at the label `p_y` may be
/// near 1 while `p_y - 1`, and so the whole row's gradient, is tiny (the
/// largest gradient element alone then understates it).
fn compare_device_scaled(
    what: &str,
    got: &DeviceRun,
    want: &LossOutput<f64>,
    tol: Tolerance,
    row_scale: f64,
) {
    compare(what, &got.fused, want, tol);
    let w = want.grad.as_ref().expect("reference gradient");
    let scale = max_abs(w);
    let lse_ulps = 4e-7 * max_abs(&want.lse) * scale.max(row_scale);
    let base = match tol {
        Tolerance::Ordinary => 1e-6 + 1e-5 * scale,
        Tolerance::Extreme { max_z } => 1e-6 + 1e-5 * scale + 1e-6 * max_z * scale,
    };
    if let Some((i, g, r)) = worst(&got.from_lse, w, |_| base + lse_ulps) {
        panic!("{what}: gradient from the saved LSE [{i}] = {g}, reference {r}");
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
        .with_reduction(reduction)
        .with_label_smoothing(smoothing);
    let logits = rng.logits(n * c, 50.0);
    let labels = rng.labels(n, c, ignored, -100);
    let per_row_g: Vec<f32> = (0..n).map(|_| rng.range(-2.0, 2.0) as f32).collect();
    let upstream = if reduction == Reduction::None {
        Upstream::PerRow(&per_row_g)
    } else {
        Upstream::Scalar(rng.range(0.5, 2.0) as f32)
    };
    let want = reference::forward_backward_scaled(&spec, &logits, &labels, upstream).unwrap();
    let row_scale = row_multiplier(&spec, &labels, upstream);
    for ctx in contexts() {
        for variant in variants_for(ctx, labels.len(), c) {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let what = format!(
                "{} {variant:?} N={n} C={c} tau={tau} {reduction:?} eps={smoothing} seed={seed}",
                name(ctx)
            );
            let got = run_device(&op, ctx, &logits, &labels, upstream, false);
            compare_device_scaled(&what, &got, &want, Tolerance::Ordinary, row_scale);
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
    // Short rows: on CPU adapters the row-groups layout with 1, 2 and 4 rows
    // per thread (C = 16; 2, 10; 3, 5, 7) where N is a multiple of them,
    // the segments layout with rows starting inside vec4s, and the generic
    // layouts everywhere.
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
fn every_reduction_smoothing_and_layout() {
    // The full product: 4 reductions x 2 smoothings x both layouts (check()
    // forces each layout that takes C), at a row-resident C and past a
    // workgroup; tau cycles through 0, 1 and 2.5.
    for (i, c) in [10, 1000].into_iter().enumerate() {
        for (r, reduction) in REDUCTIONS.into_iter().enumerate() {
            for (e, smoothing) in [0.0, 0.1].into_iter().enumerate() {
                check(Case {
                    n: [7, 65][(r + e) % 2],
                    c,
                    tau: [0.0, 1.0, 2.5][(i + r + e) % 3],
                    reduction,
                    smoothing,
                    ignored: 0.15,
                });
            }
        }
    }
}

#[test]
fn rows_past_the_dispatch_and_binding_limits() {
    // 70000 x 1000 f32 is 280 MB: over lavapipe's 128 MiB storage binding
    // and over 65,535 workgroups, so the rows are split into chunks.
    check(case(70_000, 1000, 2));
}

#[test]
fn the_row_resident_layout_refuses_a_row_it_cannot_hold() {
    let spec = LossSpec::cross_entropy(262_144);
    for ctx in contexts() {
        let op = ctx.softmax_xent(&spec).unwrap().with_variant(Variant::Rows);
        let err = op.forward_backward(&vec![0.0; 262_144], &[1]).unwrap_err();
        assert!(
            matches!(err, logit_adjust::Error::TooLarge(_)),
            "{}: {err}",
            name(ctx)
        );
    }
}

#[test]
fn layout_boundaries() {
    // Around the row-resident layout's cuts (threads per row a power of
    // two, up to 64 values each), C not a multiple of 4, N not a multiple
    // of the rows per workgroup, and the switch to split rows.
    for (k, (n, c)) in [
        (67, 3),
        (9, 17),
        (9, 63),
        (9, 65),
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
fn unsigned_and_64_bit_labels() {
    // u32 and i64 labels with an ignore index in range (u32 cannot hold
    // -100) and out of range; i64 labels whose high word is set are bad.
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let (n, c) = (70, 37);
    for (label_type, ignore) in [
        (LabelType::U32, 5),
        (LabelType::I64, -100),
        (LabelType::I64, 7),
    ] {
        let spec = LossSpec::cross_entropy(c)
            .with_reduction(Reduction::Mean)
            .with_ignore_index(ignore);
        let logits = rng.logits(n * c, 10.0);
        let labels = rng.labels(n, c, 0.2, ignore);
        let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
        for ctx in contexts() {
            for variant in variants_for(ctx, labels.len(), c) {
                let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
                let got = run_device_as(
                    &op,
                    ctx,
                    &logits,
                    &labels,
                    Upstream::default(),
                    false,
                    label_type,
                );
                let what = format!("{} {variant:?} {label_type:?} seed={seed}", name(ctx));
                compare_device(&what, &got, &want, Tolerance::Ordinary, (&spec, &labels));
            }
        }
    }
}

#[test]
fn padded_rows_across_chunks() {
    // 8256 rows of 4094 classes, padded (135 MB) are two chunks on lavapipe
    // (its storage bindings hold 128 MiB): the second chunk's regions start
    // at row 8192.
    let (n, c) = (8256, 4094);
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
    let spec = LossSpec::logit_adjusted(&prior, 1.0).unwrap();
    let logits = rng.logits(n * c, 30.0);
    let labels = rng.labels(n, c, 0.1, -100);
    let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
    for ctx in contexts() {
        for variant in [Variant::Rows, Variant::Segments, Variant::Auto] {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let what = format!("{} {variant:?} N={n} C={c} seed={seed}", name(ctx));
            let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
            compare_device(&what, &got, &want, Tolerance::Ordinary, (&spec, &labels));
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
        .with_reduction(Reduction::Sum);
    let logits = [1.3236051, 21.86657, 34.969307, 16.33, 44.25, 47.93];
    let labels = [2, -100];
    let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
    for ctx in contexts() {
        for variant in variants_for(ctx, labels.len(), 3) {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
            let what = format!("{} {variant:?} confident row", name(ctx));
            compare(&what, &got.fused, &want, Tolerance::Ordinary);
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
                .with_reduction(REDUCTIONS[k + 1])
                .with_label_smoothing([0.0, 0.1][k % 2]);
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
                for variant in variants_for(ctx, labels.len(), c) {
                    let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
                    let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
                    let what = format!(
                        "{} {variant:?} extreme N={n} C={c} tau={tau} seed={seed}",
                        name(ctx)
                    );
                    assert!(
                        got.fused.per_row.iter().all(|x| x.is_finite()),
                        "{what}: non-finite loss"
                    );
                    assert!(
                        got.fused
                            .grad
                            .as_ref()
                            .unwrap()
                            .iter()
                            .all(|x| x.is_finite()),
                        "{what}: non-finite grad"
                    );
                    compare_device(
                        &what,
                        &got,
                        &want,
                        Tolerance::Extreme { max_z },
                        (&spec, &labels),
                    );
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
        .with_label_smoothing(0.05);
    let logits = rng.logits(n * c, 20.0);
    let labels = rng.labels(n, c, 0.2, -100);
    let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
    let want_fwd = reference::forward(&spec, &logits, &labels).unwrap();
    for ctx in contexts() {
        for variant in variants_for(ctx, labels.len(), c) {
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
            compare_device(
                &format!("{what} device in-place"),
                &got,
                &want,
                Tolerance::Ordinary,
                (&spec, &labels),
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
                .with_reduction(reduction)
                .with_label_smoothing(0.1 * k as f32 / 2.0)
                .with_ignore_index(3); // a real class, ignored
            let logits = rng.logits(n * c, 10.0);
            let labels = rng.labels(n, c, 0.0, 3);
            let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
            for ctx in contexts() {
                for variant in variants_for(ctx, labels.len(), c) {
                    let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
                    let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
                    compare_device(
                        &format!("{} {variant:?} custom {reduction:?} seed={seed}", name(ctx)),
                        &got,
                        &want,
                        Tolerance::Ordinary,
                        (&spec, &labels),
                    );
                }
            }
        }
    }
}

#[test]
fn mean_over_no_valid_rows_is_zero_with_zero_gradient() {
    let spec = LossSpec::cross_entropy(5).with_reduction(Reduction::Mean);
    let logits = Rng::fresh().logits(15, 3.0);
    let labels = [-100i64; 3];
    for ctx in contexts() {
        for variant in variants_for(ctx, labels.len(), 5) {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
            assert_eq!(got.fused.loss, Some(0.0), "{}", name(ctx));
            assert!(got.fused.per_row.iter().all(|&x| x == 0.0));
            assert!(got.fused.grad.unwrap().iter().all(|&x| x == 0.0));
            assert!(got.from_lse.iter().all(|&x| x == 0.0));
        }
    }
}

#[test]
fn same_input_same_bits() {
    let mut rng = Rng::fresh();
    let spec = LossSpec::cross_entropy(777).with_reduction(Reduction::Mean);
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
    let mut rng = Rng::fresh();
    let (n, c) = (50, 300);
    let spec = LossSpec::cross_entropy(c).with_reduction(Reduction::Mean);
    let logits = rng.logits(n * c, 5.0);
    let labels = rng.labels(n, c, 0.1, -100);
    let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
    for ctx in contexts() {
        for variant in variants_for(ctx, labels.len(), c) {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let l32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
            let labels_buf = init(ctx, "labels", bytemuck::cast_slice(&l32));
            let loss_buf = init(ctx, "loss", &[0xff; 4]);
            for in_place in [false, true] {
                let logits_buf = init(ctx, "logits", bytemuck::cast_slice(&logits));
                let bound = op
                    .bind(&LossBuffers {
                        grad: if in_place {
                            GradOutput::InPlace
                        } else {
                            GradOutput::None
                        },
                        loss: Some(Region::whole(&loss_buf)),
                        ..LossBuffers::new(
                            Region::whole(&logits_buf),
                            Region::whole(&labels_buf),
                            n,
                        )
                    })
                    .unwrap();
                let mut encoder = ctx.device().create_command_encoder(&Default::default());
                op.record(&mut encoder, &bound);
                ctx.queue().submit([encoder.finish()]);
                let loss = ctx.read_f32(&loss_buf, 0, 1).unwrap()[0] as f64;
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
    let spec = LossSpec::cross_entropy(c).with_reduction(Reduction::Sum);
    let logits = rng.logits(n * c, 5.0);
    let labels = rng.labels(n, c, 0.0, -100);
    let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
    for ctx in contexts() {
        let op = ctx.softmax_xent(&spec).unwrap();
        let logits_buf = init(ctx, "logits", bytemuck::cast_slice(&logits));
        let l32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
        let labels_buf = init(ctx, "labels", bytemuck::cast_slice(&l32));
        let grad = init(ctx, "grad", bytemuck::cast_slice(&vec![f32::NAN; n * c]));
        let out = init(ctx, "loss and bad labels", &[0xff; 8]);
        let bound = op
            .bind(&LossBuffers {
                grad: GradOutput::Separate(Region::whole(&grad)),
                loss: Some(Region::new(&out, 0, 4)),
                ..LossBuffers::new(Region::whole(&logits_buf), Region::whole(&labels_buf), n)
            })
            .unwrap();
        for _ in 0..3 {
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            op.record(&mut encoder, &bound);
            op.record(&mut encoder, &bound);
            ctx.queue().submit([encoder.finish()]);
            let loss = ctx.read_f32(&out, 0, 1).unwrap()[0];
            assert!((loss as f64 - want.loss.unwrap()).abs() < 1e-5 * want.loss.unwrap().abs());
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
        let e = op
            .backward(&[0.5; 8], &[0, 1], &[1.0], Upstream::default())
            .unwrap_err();
        assert!(
            matches!(e, logit_adjust::Error::ShapeMismatch { .. }),
            "{e}"
        );
    }
}

#[test]
fn bad_regions_are_refused_at_bind() {
    // A region too small, a buffer without STORAGE, a misaligned offset, a
    // stride below C, regions sharing bytes (in place only by asking), and
    // a backward with nowhere to write.
    let spec = LossSpec::cross_entropy(4);
    for ctx in contexts() {
        let op = ctx.softmax_xent(&spec).unwrap();
        let small = init(ctx, "logits", &[0u8; 16]);
        let labels = init(ctx, "labels", bytemuck::cast_slice(&[0i32, 1]));
        let pool = init(ctx, "pool", &[0u8; 4096]);
        let bind = |b: LossBuffers| op.bind(&b).unwrap_err();
        let at = |offset: u64, size: u64| Region::new(&pool, offset, size);
        let e = bind(LossBuffers::new(
            Region::whole(&small),
            Region::whole(&labels),
            2,
        ));
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
        let e = bind(LossBuffers::new(
            Region::whole(&unusable),
            Region::whole(&labels),
            2,
        ));
        assert!(e.to_string().contains("STORAGE"), "{e}");
        let e = bind(LossBuffers::new(at(4, 32), at(256, 8), 2));
        assert!(e.to_string().contains("alignment"), "{e}");
        let e = bind(LossBuffers {
            row_stride: 3,
            ..LossBuffers::new(at(0, 32), at(256, 8), 2)
        });
        assert!(e.to_string().contains("stride"), "{e}");
        let e = bind(LossBuffers::new(at(0, 32), at(0, 8), 2));
        assert_eq!(
            e,
            logit_adjust::Error::Overlap {
                first: "logits".into(),
                second: "labels".into()
            }
        );
        let e = bind(LossBuffers {
            grad: GradOutput::Separate(at(512, 32)),
            row_loss: Some(at(512, 8)),
            ..LossBuffers::new(at(0, 32), at(256, 8), 2)
        });
        assert_eq!(
            e,
            logit_adjust::Error::Overlap {
                first: "grad".into(),
                second: "row_loss".into()
            }
        );
        let e = bind(LossBuffers {
            grad: GradOutput::Separate(at(0, 32)),
            ..LossBuffers::new(at(0, 32), at(256, 8), 2)
        });
        assert!(
            matches!(e, logit_adjust::Error::Overlap { .. }),
            "in place only by asking: {e}"
        );
        let e = op
            .bind_backward(&BackwardBuffers {
                logits: at(0, 32),
                dtype: logit_adjust::Dtype::F32,
                grad_f32: false,
                row_stride: 0,
                labels: at(256, 8),
                label_type: LabelType::I32,
                rows: 2,
                lse: at(512, 8),
                grad: GradOutput::None,
                upstream: UpstreamBuffer::One,
            })
            .unwrap_err();
        assert!(e.to_string().contains("gradient"), "{e}");
    }
}

#[test]
fn labels_out_of_range_on_the_device_are_reported_and_loud() {
    let spec = LossSpec::cross_entropy(10).with_reduction(Reduction::Sum);
    // 32 floats, 3 rows of 10 and whole vec4s (the CPU adapters' vec4 layout).
    let mut logits = Rng::fresh().logits(30, 2.0);
    logits.extend([0.0; 2]);
    for ctx in contexts() {
        for variant in variants_for(ctx, 3, 10) {
            let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
            let logits_buf = init(ctx, "logits", bytemuck::cast_slice(&logits));
            let labels_buf = init(ctx, "labels", bytemuck::cast_slice(&[1i32, 10, -100]));
            let grad = init(ctx, "grad", bytemuck::cast_slice(&[f32::NAN; 32]));
            let rows = init(ctx, "rows", bytemuck::cast_slice(&[f32::NAN; 3]));
            let bad = init(ctx, "bad", &[0xff; 4]);
            let bound = op
                .bind(&LossBuffers {
                    grad: GradOutput::Separate(Region::whole(&grad)),
                    row_loss: Some(Region::whole(&rows)),
                    bad_labels: Some(Region::whole(&bad)),
                    ..LossBuffers::new(Region::whole(&logits_buf), Region::whole(&labels_buf), 3)
                })
                .unwrap();
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            op.record(&mut encoder, &bound);
            ctx.queue().submit([encoder.finish()]);
            let e = op.check_labels(Region::whole(&bad)).unwrap_err();
            assert_eq!(
                e,
                logit_adjust::Error::BadLabelsOnDevice { count: 1 },
                "{}",
                name(ctx)
            );
            let rows = ctx.read_f32(&rows, 0, 3).unwrap();
            assert!(
                rows[0].is_finite() && rows[1].is_nan() && rows[2] == 0.0,
                "{rows:?}"
            );
            let g = ctx.read_f32(&grad, 0, 32).unwrap();
            assert!(g[..10].iter().all(|x| x.is_finite()));
            assert!(g[10..20].iter().all(|x| x.is_nan()));
            assert!(g[20..30].iter().all(|&x| x == 0.0));
            // Past the last row: never written (still the poison).
            assert!(g[30..].iter().all(|x| x.is_nan()), "{variant:?}: {g:?}");
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
            let spec = spec.clone().with_reduction(reduction);
            let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
            for ctx in contexts() {
                for variant in variants_for(ctx, labels.len(), c) {
                    let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
                    let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
                    compare_device(
                        &format!(
                            "{} {variant:?} {name_} {reduction:?} seed={seed}",
                            name(ctx)
                        ),
                        &got,
                        &want,
                        Tolerance::Ordinary,
                        (&spec, &labels),
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

#[test]
fn more_rows_than_one_binding_of_per_row_values_holds() {
    // 2^25 + 100 rows: their i32 labels, losses and LSEs are each past a
    // 128 MiB storage binding, so every per-row buffer is bound in chunks
    // like the logits.
    let (n, c) = ((1usize << 25) + 100, 2);
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let spec = LossSpec::cross_entropy(c).with_reduction(Reduction::Mean);
    let logits = rng.logits(n * c, 4.0);
    let labels = rng.labels(n, c, 0.01, -100);
    let want = reference::forward(&spec, &logits, &labels).unwrap();
    for ctx in contexts() {
        let got = ctx
            .softmax_xent(&spec)
            .unwrap()
            .forward(&logits, &labels)
            .unwrap();
        let what = format!("{} N={n} seed={seed}", name(ctx));
        compare(&what, &got, &want, Tolerance::Ordinary);
    }
}

#[test]
fn random_shapes_in_every_layout() {
    // Short and odd rows, padded or not, in every layout that takes them:
    // on CPU adapters, the vec4 layouts' rows that start inside a vec4 and
    // their shared first and last vec4s.
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    // Few cases per run (each new shape compiles its pipelines); CI draws
    // fresh ones every run.
    for case in 0..8 {
        let (n, c) = (1 + rng.below(150), 1 + rng.below(700));
        let prior = ClassPrior::from_counts(&rng.counts(c, 50.0)).unwrap();
        let spec = LossSpec::logit_adjusted(&prior, 1.0)
            .unwrap()
            .with_reduction(Reduction::Mean)
            .with_label_smoothing(0.1);
        let logits = rng.logits(n * c, 8.0);
        let labels = rng.labels(n, c, 0.1, -100);
        let want = reference::forward_backward(&spec, &logits, &labels).unwrap();
        for ctx in contexts() {
            for variant in variants_for(ctx, n, c) {
                let op = ctx.softmax_xent(&spec).unwrap().with_variant(variant);
                let what = format!(
                    "{} {variant:?} case {case} N={n} C={c} seed={seed}",
                    name(ctx)
                );
                let got = run_device(&op, ctx, &logits, &labels, Upstream::default(), false);
                compare_device(&what, &got, &want, Tolerance::Ordinary, (&spec, &labels));
            }
        }
    }
}
