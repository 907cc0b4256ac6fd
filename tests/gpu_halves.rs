//! f16 and bf16 logits against the f64 reference on the same rounded
//! inputs, on every adapter: the loss within 1e-5 max(1, |ref|), each
//! gradient element the reference's rounded to the output format give or
//! take one unit in the last place; native and packed f16 bit for bit; the
//! target-class gradient formed in f32.

mod common;

use common::{contexts, name, Rng};
use half::{bf16, f16};
use logit_adjust::{
    reference, BackwardBuffers, ClassPrior, Context, Dtype, Element, GradOutput, HalfPath,
    LabelType, LossBuffers, LossOutput, LossSpec, Reduction, Region, SoftmaxXent, Upstream,
    UpstreamBuffer, Variant,
};

/// Bits of a half as an integer that orders like the value, so that
/// neighbouring values differ by one (+0 and -0 both 0).
fn order(bits: u16) -> i64 {
    let magnitude = i64::from(bits & 0x7fff);
    if bits & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

fn is_nan<T: Element>(x: T) -> bool {
    x.to_f32().is_nan()
}

fn bits<T: Element>(x: T) -> u16 {
    bytemuck::cast_slice::<T, u16>(&[x])[0]
}

/// Units in the last place between `got` and `want` rounded to `T`.
fn ulps<T: Element>(got: T, want: f64) -> Option<i64> {
    let want = T::from_f32(want as f32);
    if is_nan(got) || is_nan(want) {
        return None;
    }
    Some((order(bits(got)) - order(bits(want))).abs())
}

/// A case: rows, classes, row stride.
#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    c: usize,
    stride: usize,
}

const CASES: [Case; 9] = [
    Case {
        n: 5,
        c: 1,
        stride: 1,
    },
    Case {
        n: 9,
        c: 7,
        stride: 7,
    },
    Case {
        n: 9,
        c: 7,
        stride: 10,
    },
    Case {
        n: 33,
        c: 1000,
        stride: 1003,
    },
    Case {
        n: 40,
        c: 8142,
        stride: 8142,
    },
    Case {
        n: 6,
        c: 16_385,
        stride: 16_387,
    },
    Case {
        n: 3,
        c: 100_003,
        stride: 100_003,
    },
    Case {
        n: 2,
        c: 262_144,
        stride: 262_145,
    },
    Case {
        n: 70_001,
        c: 3,
        stride: 3,
    },
];

/// Poison for half elements: a NaN in both formats' views.
const POISON: u16 = 0x7fff;

/// One buffer holding every region of a run at 256-byte boundaries,
/// poisoned before the run.
struct Pool {
    buffer: wgpu::Buffer,
    at: Vec<u64>,
}

impl Pool {
    fn new(ctx: &Context, sizes: &[u64]) -> Self {
        let mut end = 256;
        let at = sizes
            .iter()
            .map(|&bytes| {
                let here = end;
                end = (here + bytes.max(4)).next_multiple_of(256);
                here
            })
            .collect();
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("pool"),
            size: end,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let poison = vec![POISON; (end / 2) as usize];
        ctx.queue()
            .write_buffer(&buffer, 0, bytemuck::cast_slice(&poison));
        Self { buffer, at }
    }

    fn region(&self, k: usize, bytes: u64) -> Region<'_> {
        Region::new(&self.buffer, self.at[k], bytes)
    }

    fn write(&self, ctx: &Context, k: usize, bytes: &[u8]) {
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().next_multiple_of(4), 0);
        ctx.queue().write_buffer(&self.buffer, self.at[k], &padded);
    }

    fn read<T: bytemuck::Pod>(&self, ctx: &Context, k: usize, len: usize) -> Vec<T> {
        let bytes = (len * std::mem::size_of::<T>()).next_multiple_of(4);
        let words = ctx
            .read_f32(&self.buffer, self.at[k], bytes / 4)
            .expect("read back");
        let raw: &[u8] = bytemuck::cast_slice(&words);
        bytemuck::pod_collect_to_vec(&raw[..len * std::mem::size_of::<T>()])
    }
}

fn spec(c: usize, rng: &mut Rng) -> LossSpec {
    let counts = rng.counts(c, 100.0);
    let prior = ClassPrior::from_counts(&counts).expect("prior");
    LossSpec::logit_adjusted(&prior, 1.0)
        .expect("spec")
        .with_reduction(Reduction::Mean)
}

/// What a device run gave: the fused run's losses, LSE and gradient (the
/// gradient's rows packed), the backward-from-LSE gradient, and the fused
/// gradient's whole strided region (padding included).
struct Halves<T> {
    out: LossOutput<f32>,
    fused: Vec<T>,
    backward: Vec<T>,
    strided: Vec<u16>,
}

/// `logits` (packed rows) laid out `case.stride` apart, zeros between
/// rows, and the labels as the i32 the runs bind.
fn layout<T: Element>(case: Case, logits: &[T], labels: &[i64]) -> (Vec<T>, Vec<i32>) {
    let Case { n, c, stride } = case;
    let mut strided = vec![T::from_f32(0.0); (n - 1) * stride + c];
    for row in 0..n {
        strided[row * stride..][..c].copy_from_slice(&logits[row * c..][..c]);
    }
    (strided, labels.iter().map(|&y| y as i32).collect())
}

/// Run `$check::<T>(ctx, path, rng)` on every format and path the adapter
/// has: native f16 (where SHADER_F16), packed f16, bf16.
macro_rules! on_every_path {
    ($check:ident, $ctx:expr, $rng:expr) => {{
        if $ctx.capabilities().shader_f16 {
            $check::<f16>($ctx, HalfPath::Auto, $rng);
        }
        $check::<f16>($ctx, HalfPath::Packed, $rng);
        $check::<bf16>($ctx, HalfPath::Auto, $rng);
    }};
}

/// The fused run and the backward from its LSE on `logits` laid out
/// `case.stride` apart in one pooled buffer; the gradient in `T`.
fn run<T: Element>(
    op: &SoftmaxXent,
    ctx: &Context,
    case: Case,
    logits: &[T],
    labels: &[i64],
) -> Halves<T> {
    let Case { n, c, stride } = case;
    let elems = (n - 1) * stride + c;
    let half_bytes = 2 * elems as u64;
    let (strided, labels_i32) = layout(case, logits, labels);
    let rows = 4 * n as u64;
    let pool = Pool::new(
        ctx,
        &[half_bytes, rows, half_bytes, rows, rows, 4, half_bytes],
    );
    pool.write(ctx, 0, bytemuck::cast_slice(&strided));
    pool.write(ctx, 1, bytemuck::cast_slice(&labels_i32));
    let fused = op
        .bind(&LossBuffers {
            dtype: T::DTYPE,
            row_stride: stride,
            grad: GradOutput::Separate(pool.region(2, half_bytes)),
            row_loss: Some(pool.region(3, rows)),
            lse: Some(pool.region(4, rows)),
            loss: Some(pool.region(5, 4)),
            ..LossBuffers::new(pool.region(0, half_bytes), pool.region(1, rows), n)
        })
        .expect("bind");
    let backward = op
        .bind_backward(&BackwardBuffers {
            logits: pool.region(0, half_bytes),
            dtype: T::DTYPE,
            grad_f32: false,
            row_stride: stride,
            labels: pool.region(1, rows),
            label_type: LabelType::I32,
            rows: n,
            lse: pool.region(4, rows),
            grad: GradOutput::Separate(pool.region(6, half_bytes)),
            upstream: UpstreamBuffer::One,
        })
        .expect("bind backward");
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    op.record(&mut encoder, &fused);
    op.record(&mut encoder, &backward);
    ctx.queue().submit([encoder.finish()]);
    let rows_of = |flat: Vec<T>| -> Vec<T> {
        (0..n)
            .flat_map(|row| flat[row * stride..][..c].to_vec())
            .collect()
    };
    let strided: Vec<u16> = pool.read(ctx, 2, elems);
    Halves {
        out: LossOutput {
            loss: Some(pool.read::<f32>(ctx, 5, 1)[0]),
            per_row: pool.read(ctx, 3, n),
            lse: pool.read(ctx, 4, n),
            grad: None,
        },
        fused: rows_of(bytemuck::cast_slice(&strided).to_vec()),
        backward: rows_of(pool.read(ctx, 6, elems)),
        strided,
    }
}

fn loss_tol(r: f64) -> f64 {
    1e-5 * r.abs().max(1.0)
}

fn check_losses(what: &str, got: &LossOutput<f32>, want: &LossOutput<f64>) {
    let (g, w) = (got.loss.unwrap(), want.loss.unwrap());
    assert!(
        (f64::from(g) - w).abs() <= loss_tol(w),
        "{what}: loss {g} against {w}"
    );
    for (name, got, want) in [
        ("l_i", &got.per_row, &want.per_row),
        ("LSE", &got.lse, &want.lse),
    ] {
        if let Some((i, g, w)) = common::worst(got, want, loss_tol) {
            panic!("{what}: {name} of row {i}: {g} against {w}");
        }
    }
}

fn check_grad<T: Element>(what: &str, got: &[T], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: gradient length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        match ulps(g, w) {
            Some(d) if d <= 1 => {}
            d => panic!(
                "{what}: gradient element {i}: {} against {w} (rounded {}), {d:?} ulps",
                g.to_f32(),
                T::from_f32(w as f32).to_f32()
            ),
        }
    }
}

/// The backward from a saved f32 LSE: as `check_grad`, except at each
/// row's label, where p_y - 1 can only be formed as a difference from the
/// LSE, and so is known to about the LSE's f32 rounding (a few 2^-24
/// |LSE| of it) times the row's scale: there the element may instead be
/// within that of the reference.
fn check_backward_grad<T: Element>(
    what: &str,
    got: &[T],
    want: &LossOutput<f64>,
    labels: &[i64],
    c: usize,
) {
    let want_grad = want.grad.as_ref().unwrap();
    let scale = common::max_abs(want_grad);
    for (i, (&g, &w)) in got.iter().zip(want_grad).enumerate() {
        let row = i / c;
        if labels[row] == (i % c) as i64 {
            let lse_rounding = 4.0 * f64::from(f32::EPSILON) * want.lse[row].abs().max(1.0) * scale;
            if (f64::from(g.to_f32()) - w).abs() <= lse_rounding {
                continue;
            }
        }
        check_grad(&format!("{what}, element {i}"), &[g], &[w]);
    }
}

fn check_padding(what: &str, strided: &[u16], case: Case) {
    for row in 0..case.n - 1 {
        let pad = &strided[row * case.stride + case.c..(row + 1) * case.stride];
        assert!(
            pad.iter().all(|&b| b == POISON),
            "{what}: row {row}'s padding was written: {pad:x?}"
        );
    }
}

/// One case's inputs: its name for messages, the loss, the op (on
/// `path`), logits rounded to `T`, and labels with about one in eight
/// ignored.
struct Inputs<T> {
    what: String,
    spec: LossSpec,
    op: SoftmaxXent,
    logits: Vec<T>,
    labels: Vec<i64>,
}

impl<T: Element> Inputs<T> {
    fn new(ctx: &Context, path: HalfPath, case: Case, rng: &mut Rng) -> Self {
        let what = format!(
            "{} {path:?} {case:?} on {} (seed {})",
            T::DTYPE.name(),
            name(ctx),
            rng.seed()
        );
        let spec = spec(case.c, rng);
        let op = ctx.softmax_xent(&spec).expect("op").with_half_path(path);
        let logits: Vec<T> = rng
            .logits(case.n * case.c, 8.0)
            .into_iter()
            .map(T::from_f32)
            .collect();
        let labels = rng.labels(case.n, case.c, 0.125, spec.ignore_index());
        Self {
            what,
            spec,
            op,
            logits,
            labels,
        }
    }

    /// The f64 reference on the logits' values.
    fn reference(&self) -> LossOutput<f64> {
        let widened: Vec<f32> = self.logits.iter().map(|x| x.to_f32()).collect();
        reference::forward_backward(&self.spec, &widened, &self.labels).expect("reference")
    }
}

/// The bar for one format and path on every case.
fn bar<T: Element>(ctx: &Context, path: HalfPath, rng: &mut Rng) {
    for case in CASES {
        let inputs = Inputs::<T>::new(ctx, path, case, rng);
        let want = inputs.reference();
        let Inputs {
            what,
            op,
            logits,
            labels,
            ..
        } = inputs;
        let got = run(&op, ctx, case, &logits, &labels);
        check_losses(&what, &got.out, &want);
        let want_grad = want.grad.as_ref().unwrap();
        check_grad(&format!("{what}, fused"), &got.fused, want_grad);
        check_backward_grad(
            &format!("{what}, backward"),
            &got.backward,
            &want,
            &labels,
            case.c,
        );
        check_padding(&what, &got.strided, case);
    }
}

#[test]
fn half_logits_match_the_f64_reference_on_their_rounded_values() {
    for ctx in contexts() {
        on_every_path!(bar, ctx, &mut Rng::fresh());
    }
}

/// The fused run's loss and f32 gradient (`grad_f32`) on half logits laid
/// out `case.stride` apart.
fn run_f32_grad<T: Element>(
    op: &SoftmaxXent,
    ctx: &Context,
    case: Case,
    logits: &[T],
    labels: &[i64],
) -> (f32, Vec<f32>) {
    let Case { n, c, stride } = case;
    let elems = (n - 1) * stride + c;
    let (strided, labels_i32) = layout(case, logits, labels);
    let pool = Pool::new(ctx, &[2 * elems as u64, 4 * n as u64, 4 * elems as u64, 4]);
    pool.write(ctx, 0, bytemuck::cast_slice(&strided));
    pool.write(ctx, 1, bytemuck::cast_slice(&labels_i32));
    let bound = op
        .bind(&LossBuffers {
            dtype: T::DTYPE,
            grad_f32: true,
            row_stride: stride,
            grad: GradOutput::Separate(pool.region(2, 4 * elems as u64)),
            loss: Some(pool.region(3, 4)),
            ..LossBuffers::new(
                pool.region(0, 2 * elems as u64),
                pool.region(1, 4 * n as u64),
                n,
            )
        })
        .expect("bind");
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    op.record(&mut encoder, &bound);
    ctx.queue().submit([encoder.finish()]);
    let flat: Vec<f32> = pool.read(ctx, 2, elems);
    let grad = (0..n)
        .flat_map(|row| flat[row * stride..][..c].to_vec())
        .collect();
    (pool.read::<f32>(ctx, 3, 1)[0], grad)
}

fn f32_grad_case<T: Element>(ctx: &Context, case: Case, rng: &mut Rng) {
    let inputs = Inputs::<T>::new(ctx, HalfPath::Auto, case, rng);
    let want = inputs.reference();
    let what = &inputs.what;
    let (loss, grad) = run_f32_grad(&inputs.op, ctx, case, &inputs.logits, &inputs.labels);
    let w = want.loss.unwrap();
    assert!(
        (f64::from(loss) - w).abs() <= loss_tol(w),
        "{what}: loss {loss} against {w}"
    );
    let want_grad = want.grad.as_ref().unwrap();
    let scale = common::max_abs(want_grad);
    if let Some((i, g, w)) = common::worst(&grad, want_grad, |_| 1e-6 * scale + 1e-5 * scale) {
        panic!("{what}: f32 gradient element {i}: {g} against {w}");
    }
}

#[test]
fn an_f32_gradient_on_request_matches_the_reference() {
    for ctx in contexts() {
        let mut rng = Rng::fresh();
        f32_grad_case::<f16>(
            ctx,
            Case {
                n: 17,
                c: 1001,
                stride: 1001,
            },
            &mut rng,
        );
        f32_grad_case::<bf16>(
            ctx,
            Case {
                n: 3,
                c: 20_001,
                stride: 20_003,
            },
            &mut rng,
        );
    }
}

/// The same kernel's f32 gradient, rounded to nearest even on the host,
/// is its half gradient bit for bit: the encoders round as they should
/// (one ulp of slack in the reference check would let truncation pass).
fn rounds_to_nearest_even<T: Element>(ctx: &Context, path: HalfPath, rng: &mut Rng) {
    for case in [CASES[1], CASES[3], CASES[6]] {
        let Inputs {
            what,
            op,
            logits,
            labels,
            ..
        } = Inputs::<T>::new(ctx, path, case, rng);
        let (_, wide) = run_f32_grad(&op, ctx, case, &logits, &labels);
        let halves = run(&op, ctx, case, &logits, &labels);
        for (i, (&h, &f)) in halves.fused.iter().zip(&wide).enumerate() {
            assert_eq!(
                bits(h),
                bits(T::from_f32(f)),
                "{what}: element {i}: f32 {f} stored as {}",
                h.to_f32()
            );
        }
    }
}

#[test]
fn half_gradients_are_the_f32_gradient_rounded_to_nearest_even() {
    for ctx in contexts() {
        on_every_path!(rounds_to_nearest_even, ctx, &mut Rng::fresh());
    }
}

#[test]
fn native_and_packed_f16_give_the_same_bits() {
    let mut native_seen = false;
    for ctx in contexts() {
        if !ctx.capabilities().shader_f16 {
            continue;
        }
        native_seen = true;
        let mut rng = Rng::fresh();
        for case in [CASES[2], CASES[3], CASES[6]] {
            let spec = spec(case.c, &mut rng);
            let logits: Vec<f16> = rng
                .logits(case.n * case.c, 8.0)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let labels = rng.labels(case.n, case.c, 0.125, spec.ignore_index());
            // On each layout both paths run (the CPU adapters' own layouts
            // take native f16 only, and round their own f32 sums).
            for variant in [Variant::Rows, Variant::Split] {
                let native = ctx.softmax_xent(&spec).expect("op").with_variant(variant);
                if native.resolved_variant(case.n).is_err() {
                    continue;
                }
                let packed = ctx
                    .softmax_xent(&spec)
                    .expect("op")
                    .with_variant(variant)
                    .with_half_path(HalfPath::Packed);
                let a = run(&native, ctx, case, &logits, &labels);
                let b = run(&packed, ctx, case, &logits, &labels);
                let what = format!(
                    "{case:?}, {variant:?}, on {} (seed {})",
                    name(ctx),
                    rng.seed()
                );
                assert_eq!(a.strided, b.strided, "{what}: fused gradients differ");
                let bits = |v: &[f16]| v.iter().map(|h| h.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&a.backward),
                    bits(&b.backward),
                    "{what}: backward gradients differ"
                );
                assert_eq!(
                    a.out.loss.map(f32::to_bits),
                    b.out.loss.map(f32::to_bits),
                    "{what}: losses differ"
                );
            }
        }
    }
    // On Vulkan (lavapipe) SHADER_F16 is there; a run that saw no native
    // adapter must be GL-only, which offers none.
    if std::env::var("WGPU_BACKEND").is_ok_and(|b| b == "vulkan") {
        assert!(native_seen, "no Vulkan adapter offered SHADER_F16");
    }
}

/// At p_y = 0.999 the target-class gradient is -0.001; formed in bf16 (p_y
/// rounds to 1) it would be 0.
#[test]
fn the_target_gradient_is_formed_in_f32_before_rounding() {
    for ctx in contexts() {
        // Two classes, z_y - z_other = L with L exact in bf16 and
        // p_y = 1 / (1 + e^-L) ~ 0.999.
        let l = 6.90625f32;
        assert_eq!(bf16::from_f32(l).to_f32(), l);
        let spec = LossSpec::cross_entropy(2).with_reduction(Reduction::Sum);
        let p_y = 1.0 / (1.0 + (-f64::from(l)).exp());
        assert!((p_y - 0.999).abs() < 1e-4, "p_y = {p_y}");
        let truth = p_y - 1.0;
        for path in [HalfPath::Auto, HalfPath::Packed] {
            let op = ctx.softmax_xent(&spec).expect("op").with_half_path(path);
            let logits = [bf16::from_f32(l), bf16::from_f32(0.0)];
            let (_, grad) = op
                .forward_backward_as(&logits, &[0], Upstream::default())
                .expect("run");
            let g = f64::from(grad[0].to_f32());
            assert!(
                ((g - truth) / truth).abs() < 0.01,
                "{}: target gradient {g}, true {truth}",
                name(ctx)
            );
            let f16_op = ctx.softmax_xent(&spec).expect("op").with_half_path(path);
            let (_, grad) = f16_op
                .forward_backward_as(
                    &[f16::from_f32(l), f16::from_f32(0.0)],
                    &[0],
                    Upstream::default(),
                )
                .expect("run");
            let g = f64::from(grad[0].to_f32());
            assert!(
                ((g - truth) / truth).abs() < 0.001,
                "{}: f16 target gradient {g}, true {truth}",
                name(ctx)
            );
        }
    }
}

/// Half logits with ties (a half has few values near each other) and
/// infinities.
fn posthoc_logits<T: Element>(rng: &mut Rng, len: usize) -> Vec<T> {
    rng.logits(len, 6.0)
        .into_iter()
        .enumerate()
        .map(|(i, x)| match i % 97 {
            13 => f32::INFINITY,
            41 => f32::NEG_INFINITY,
            // Few distinct values: ties the argmax must break to the
            // smaller index, as numpy does.
            k if k % 5 == 0 => (x * 2.0).round() / 2.0,
            _ => x,
        })
        .map(T::from_f32)
        .collect()
}

fn posthoc_case<T: Element>(ctx: &Context, n: usize, c: usize, rng: &mut Rng) {
    let what = format!(
        "{} {n} x {c} on {} (seed {})",
        T::DTYPE.name(),
        name(ctx),
        rng.seed()
    );
    let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).expect("prior");
    let taus = [0.0, 0.5, 1.0, 1.5, 2.0];
    let op = ctx.posthoc(&prior, &taus).expect("posthoc");
    let logits: Vec<T> = posthoc_logits(rng, n * c);
    let widened: Vec<f32> = logits.iter().map(|x| x.to_f32()).collect();
    let device = op.upload_as(&logits).expect("upload");
    assert_eq!(device.dtype(), T::DTYPE);
    let got = op.predict_on(&device).expect("predict");
    let want = reference::predict(&prior, &taus, &widened).expect("reference");
    assert_eq!(got.by_tau, want.by_tau, "{what}: predictions");
    let tau_index = 2;
    let corrected = op.corrected_on(&device, tau_index).expect("corrected");
    let want_corrected =
        reference::corrected(&prior, taus[tau_index], &widened).expect("reference");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&corrected),
        bits(&want_corrected),
        "{what}: corrected logits"
    );
    let k = c.min(5);
    let top = op.top_k_on(&device, tau_index, k).expect("top-k");
    let want_top = reference::top_k(&prior, taus[tau_index], &widened, k).expect("reference");
    assert_eq!(top, want_top, "{what}: top-{k}");
    // The counts read the predictions as they are, whatever the logits' format.
    let labels = rng.labels(n, c, 0.0, -100);
    let counts = ctx.class_counts(&labels, c, &got).expect("counts");
    let want_counts = reference::class_counts(&labels, c, &want).expect("reference");
    assert_eq!(counts, want_counts, "{what}: counts");
}

#[test]
fn posthoc_argmax_top_k_and_corrected_logits_read_halves() {
    for ctx in contexts() {
        let mut rng = Rng::fresh();
        // C = 1; odd C (rows share words, chunk starts at odd halves);
        // row-per-thread and row-per-group sizes; rows past 65,535.
        for (n, c) in [(7, 1), (301, 7), (65, 1001), (9, 20_001), (70_001, 3)] {
            posthoc_case::<f16>(ctx, n, c, &mut rng);
            posthoc_case::<bf16>(ctx, n, c, &mut rng);
        }
    }
}

/// The fused run in place (the gradient over the logits): its rows.
fn run_in_place<T: Element>(
    op: &SoftmaxXent,
    ctx: &Context,
    case: Case,
    logits: &[T],
    labels: &[i64],
) -> Vec<T> {
    let Case { n, c, stride } = case;
    let elems = (n - 1) * stride + c;
    let (strided, labels_i32) = layout(case, logits, labels);
    let pool = Pool::new(ctx, &[2 * elems as u64, 4 * n as u64]);
    pool.write(ctx, 0, bytemuck::cast_slice(&strided));
    pool.write(ctx, 1, bytemuck::cast_slice(&labels_i32));
    let bound = op
        .bind(&LossBuffers {
            dtype: T::DTYPE,
            row_stride: stride,
            grad: GradOutput::InPlace,
            ..LossBuffers::new(
                pool.region(0, 2 * elems as u64),
                pool.region(1, 4 * n as u64),
                n,
            )
        })
        .expect("bind in place");
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    op.record(&mut encoder, &bound);
    ctx.queue().submit([encoder.finish()]);
    let flat: Vec<T> = pool.read(ctx, 0, elems);
    (0..n)
        .flat_map(|row| flat[row * stride..][..c].to_vec())
        .collect()
}

fn in_place_is_separate<T: Element>(ctx: &Context, path: HalfPath, rng: &mut Rng) {
    // Rows sharing words (odd C, odd stride), and the split layout.
    for case in [CASES[1], CASES[3], CASES[6]] {
        let Inputs {
            what,
            op,
            logits,
            labels,
            ..
        } = Inputs::<T>::new(ctx, path, case, rng);
        let separate = run(&op, ctx, case, &logits, &labels).fused;
        let in_place = run_in_place(&op, ctx, case, &logits, &labels);
        for (i, (a, b)) in in_place.iter().zip(&separate).enumerate() {
            assert_eq!(bits(*a), bits(*b), "{what}: in-place element {i}");
        }
    }
}

#[test]
fn an_in_place_gradient_is_the_separate_one_bit_for_bit() {
    for ctx in contexts() {
        on_every_path!(in_place_is_separate, ctx, &mut Rng::fresh());
    }
}

#[test]
fn bad_half_input_is_refused_with_a_clear_error() {
    for ctx in contexts() {
        let spec = LossSpec::cross_entropy(7).with_reduction(Reduction::Mean);
        let op = ctx.softmax_xent(&spec).expect("op");
        // A non-finite half on the host path.
        let mut logits = vec![f16::from_f32(0.5); 7];
        logits[3] = f16::NAN;
        let e = op
            .forward_backward_as(&logits, &[1], Upstream::default())
            .expect_err("NaN logits");
        assert!(
            matches!(e, logit_adjust::Error::NonFinite { index: 3, .. }),
            "{e:?}"
        );
        // An f32 gradient cannot go over half logits.
        let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 1024,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let e = op
            .bind(&LossBuffers {
                dtype: Dtype::F16,
                grad_f32: true,
                grad: GradOutput::InPlace,
                ..LossBuffers::new(Region::new(&buffer, 0, 14), Region::new(&buffer, 256, 4), 1)
            })
            .expect_err("f32 gradient in place");
        assert!(e.to_string().contains("in-place"), "{e}");
        // Seven halves end mid-word: the word must lie in the buffer.
        let tight = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 14,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let e = op
            .bind(&LossBuffers {
                dtype: Dtype::F16,
                ..LossBuffers::new(Region::whole(&tight), Region::new(&buffer, 256, 4), 1)
            })
            .expect_err("a word past the buffer");
        assert!(
            matches!(e, logit_adjust::Error::BufferTooSmall { needed: 16, .. }),
            "{e:?}"
        );
    }
}

/// Every one of the 65,536 halves as a row of one class: each finite
/// value's LSE is the value itself (M + log 1), so a widening wrong in any
/// bit pattern shows, on every layout and path the adapter runs.
fn every_half_as_a_row<T: Element>(ctx: &Context, path: HalfPath, _rng: &mut Rng) {
    let n = 1 << 16;
    let case = Case { n, c: 1, stride: 1 };
    let logits: Vec<T> = (0..n).map(|b| bytemuck::cast::<u16, T>(b as u16)).collect();
    let labels = vec![0i64; n];
    let spec = LossSpec::cross_entropy(1);
    for variant in [
        Variant::Auto,
        Variant::Rows,
        Variant::Split,
        Variant::Segments,
        Variant::RowGroups,
    ] {
        let op = ctx
            .softmax_xent(&spec)
            .expect("op")
            .with_variant(variant)
            .with_half_path(path);
        if op.resolved_variant(n).is_err() {
            continue;
        }
        let got = run(&op, ctx, case, &logits, &labels);
        let what = format!("{} {path:?} {variant:?} on {}", T::DTYPE.name(), name(ctx));
        for (b, (&x, &l)) in logits.iter().zip(&got.out.lse).enumerate() {
            let want = x.to_f32();
            if want.is_finite() {
                assert!(l == want, "{what}: half {b:#06x} is {want}, its LSE {l}");
            }
        }
    }
}

/// The post-hoc kernels' widening, on every half but the NaNs (which
/// upload refuses), infinities included: at tau = 0 the corrected logits
/// are the logits (as the reference forms them: -0 - 0 log pi is +0). Two
/// classes: both formats have an even number of NaNs.
fn every_half_corrected<T: Element>(ctx: &Context) {
    let prior = ClassPrior::from_counts(&[1.0, 3.0]).expect("prior");
    let op = ctx.posthoc(&prior, &[0.0]).expect("posthoc");
    let logits: Vec<T> = (0..1u32 << 16)
        .map(|b| bytemuck::cast::<u16, T>(b as u16))
        .filter(|x| !x.to_f32().is_nan())
        .collect();
    let device = op.upload_as(&logits).expect("upload");
    let got = op.corrected_on(&device, 0).expect("corrected");
    let widened: Vec<f32> = logits.iter().map(|x| x.to_f32()).collect();
    let want = reference::corrected(&prior, 0.0, &widened).expect("reference");
    assert_eq!(got.len(), want.len());
    for ((&x, &g), &want) in logits.iter().zip(&got).zip(&want) {
        assert!(
            g.to_bits() == want.to_bits(),
            "{} on {}: half {:#06x} is {want}, corrected at tau = 0 {g}",
            T::DTYPE.name(),
            name(ctx),
            bits(x)
        );
    }
}

#[test]
fn every_half_widens_exactly() {
    for ctx in contexts() {
        on_every_path!(every_half_as_a_row, ctx, &mut Rng::fresh());
        every_half_corrected::<f16>(ctx);
        every_half_corrected::<bf16>(ctx);
    }
}
