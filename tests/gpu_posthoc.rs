//! Post-hoc correction and the metrics on the GPU against the CPU
//! reference: predictions and counts must be identical, not merely close.
//! Fresh random inputs per case, with ties and +-inf logits; every layout
//! forced in turn; prediction buffers poisoned before each device run.

mod common;

use common::{contexts, name, Rng};
use logit_adjust::{
    reference, report, ClassPrior, Context, CountsBuffers, PostHoc, PostHocBuffers, PostHocVariant,
    Predictions, Region,
};
use wgpu::util::DeviceExt;

const VARIANTS: [PostHocVariant; 3] = [
    PostHocVariant::RowPerThread,
    PostHocVariant::RowPerGroup,
    PostHocVariant::Windows,
];

/// Logits with many ties (values on a coarse grid), +-inf entries in every
/// third row, whole rows of -inf and of +inf.
fn nasty_logits(rng: &mut Rng, n: usize, c: usize) -> Vec<f32> {
    // Infinities in every third row only: with one element in 50 infinite,
    // a row of 1000 classes almost surely holds a +inf, which wins whatever
    // the adjustment, and a wrong a_tc would go unseen.
    let mut f: Vec<f32> = (0..n * c)
        .map(|i| {
            let specials = (i / c.max(1)).is_multiple_of(3);
            match rng.below(50) {
                0 if specials => f32::INFINITY,
                1 if specials => f32::NEG_INFINITY,
                2 => -0.0, // ties +0 under IEEE compares
                k if k < 25 => (rng.below(7) as f32 - 3.0) * 0.5, // ties
                _ => rng.range(-10.0, 10.0) as f32,
            }
        })
        .collect();
    if n >= 3 {
        f[..c].fill(f32::NEG_INFINITY);
        f[c..2 * c].fill(f32::INFINITY);
        f[2 * c..3 * c].fill(1.5);
    }
    f
}

fn taus(t: usize) -> Vec<f64> {
    (0..t)
        .map(|k| k as f64 * 2.5 / t.max(2) as f64 - 0.25)
        .collect()
}

fn run_device(ph: &PostHoc, ctx: &Context, logits: &[f32], n: usize) -> Predictions {
    let t = ph.taus().len();
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let logits_buf = ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(if logits.is_empty() {
                &[0.0f32][..]
            } else {
                logits
            }),
            usage,
        });
    let poison = vec![u32::MAX; (n * t).max(1)];
    let pred = ctx
        .device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(&poison),
            usage,
        });
    let bound = ph
        .bind(&PostHocBuffers {
            logits: Region::whole(&logits_buf),
            dtype: logit_adjust::Dtype::F32,
            rows: n,
            predictions: Region::whole(&pred),
        })
        .unwrap();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    ph.record(&mut encoder, &bound);
    ctx.queue().submit([encoder.finish()]);
    let raw: Vec<u32> = ctx
        .read_f32(&pred, 0, n * t)
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    Predictions {
        taus: ph.taus().to_vec(),
        by_tau: (0..t)
            .map(|k| (0..n).map(|i| raw[i * t + k]).collect())
            .collect(),
    }
}

fn first_difference(got: &Predictions, want: &Predictions) -> Option<(usize, usize, u32, u32)> {
    for (t, (g, w)) in got.by_tau.iter().zip(&want.by_tau).enumerate() {
        assert_eq!(g.len(), w.len());
        if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
            return Some((t, i, g[i], w[i]));
        }
    }
    None
}

fn check(n: usize, c: usize, t: usize, variants: &[PostHocVariant]) {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
    let taus = taus(t);
    let logits = nasty_logits(&mut rng, n, c);
    let labels: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let want = reference::predict(&prior, &taus, &logits).unwrap();
    let want_counts = reference::class_counts(&labels, c, &want).unwrap();
    for ctx in contexts() {
        for &variant in variants {
            let ph = ctx.posthoc(&prior, &taus).unwrap().with_variant(variant);
            let got = run_device(&ph, ctx, &logits, n);
            if let Some((tt, i, g, w)) = first_difference(&got, &want) {
                let row = &logits[i * c..(i + 1) * c.min(8) + i * c - i * c.min(8)];
                panic!(
                    "{} {variant:?} N={n} C={c} T={t} seed={seed}: tau #{tt} row {i}: GPU {g}, reference {w}; row starts {row:?}",
                    name(ctx)
                );
            }
        }
        // Host path (auto layout) and the GPU counts.
        let ph = ctx.posthoc(&prior, &taus).unwrap();
        let got = ph.predict(&logits).unwrap();
        assert!(
            first_difference(&got, &want).is_none(),
            "{} host N={n} C={c} T={t} seed={seed}",
            name(ctx)
        );
        let counts = ctx.class_counts(&labels, c, &got).unwrap();
        assert_eq!(
            counts,
            want_counts,
            "{} counts N={n} C={c} T={t} seed={seed}",
            name(ctx)
        );
        assert_eq!(
            ctx.label_histogram(&labels, c).unwrap(),
            reference::label_histogram(&labels, c).unwrap(),
            "{} histogram seed={seed}",
            name(ctx)
        );
    }
}

#[test]
fn small_vocabularies_a_million_rows_and_64_taus() {
    check(1_000_000, 10, 16, &[PostHocVariant::RowPerThread]);
    check(
        70_000,
        10,
        64,
        &[PostHocVariant::RowPerGroup, PostHocVariant::Windows],
    );
    check(20_000, 2, 64, &VARIANTS);
    check(7, 2, 1, &VARIANTS);
}

#[test]
fn a_thousand_classes() {
    check(
        3000,
        1000,
        64,
        &[PostHocVariant::RowPerGroup, PostHocVariant::Windows],
    );
    check(3000, 1000, 4, &VARIANTS);
    check(1, 1000, 17, &VARIANTS);
}

#[test]
fn a_hundred_thousand_classes() {
    // Windows: 391 windows of 256 classes (T = 64), 49 of 2048 (T = 5).
    check(
        40,
        100_000,
        64,
        &[PostHocVariant::RowPerGroup, PostHocVariant::Windows],
    );
    check(
        9,
        100_000,
        5,
        &[PostHocVariant::RowPerGroup, PostHocVariant::Windows],
    );
}

#[test]
fn windows_one_and_two_rows_per_thread() {
    // argmax_windows16 (T <= 16, C > 32): windows of 16384 classes, four
    // per loop trip and the last 1 to 3 after it (C % 4 = 1, 2, 3); a row
    // per thread below 2048 rows, two from 2048 (an odd N leaves the last
    // thread one).
    let windows = [PostHocVariant::Windows];
    check(5000, 12, 16, &windows);
    check(60, 4100, 12, &windows);
    check(60, 4101, 9, &windows);
    check(70, 1002, 16, &windows);
    check(60, 4103, 1, &windows);
    check(60, 16385, 16, &windows);
    check(2049, 16387, 5, &windows);
    check(2050, 4100, 16, &windows);
    check(2047, 1000, 16, &windows);
    // argmax_windows (T > 16): windows of a_tc, 4096 / 5 rounded down to a
    // multiple of 4 (816 classes) at T = 17..20, so C = 2000 takes three.
    check(40, 2000, 17, &windows);
    // argmax_unrolled16 (C <= 32 and T <= 16, C and T4 pipeline constants),
    // and C = 33 just past it.
    check(333, 10, 16, &windows);
    check(100, 3, 5, &windows);
    check(64, 32, 13, &windows);
    check(50, 33, 16, &windows);
}

/// Rows where forming `g = f - tau * log pi` with one rounding (a compiler
/// fusing the product into the subtraction) instead of the host's two
/// (`a_tc = f32(tau) * f32(log pi_c)`, then `f - a_tc`) changes the argmax.
/// In each row two classes x (whose product is exact in f32) and y (whose
/// product is not) reach the same `g = d`: a tie, which goes to the smaller
/// index. Fused, y's `g` moves by the product's rounding error, and the
/// order of x and y is chosen so that it then wins or loses to x the other
/// way. `argmax_windows16` (C = 1000, 40) and `argmax_unrolled16` (C = 20)
/// form the products in the shader.
#[test]
fn products_are_rounded_before_the_subtraction() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    for (n, c) in [(300, 1000), (2100, 40), (50, 20)] {
        // tau = 0.75 has two significant bits: its product with an f32 is
        // exact about one time in four.
        let taus = [0.75, 0.3, 1.1];
        let t32 = taus[0] as f32;
        let (prior, l) = loop {
            let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
            let l: Vec<f32> = prior.log_prior().iter().map(|&x| x as f32).collect();
            let exact = l
                .iter()
                .filter(|&&x| (t32 * x) as f64 == t32 as f64 * x as f64);
            if (1..c).contains(&exact.count()) {
                break (prior, l);
            }
        };
        // The product's rounding error, exact in f64 (24 + 2 bits).
        let err = |k: usize| t32 as f64 * l[k] as f64 - (t32 * l[k]) as f64;
        let d = 2f32.powi(-10);
        let mut logits = vec![-1e4f32; n * c];
        for row in logits.chunks_mut(c) {
            let (x, y) = loop {
                let (x, y) = (rng.below(c), rng.below(c));
                // err(y) < 0: fused, y's g exceeds d, so x must come first
                // for the tie to pick x; err(y) > 0: the other way round.
                if err(x) == 0.0 && err(y) != 0.0 && (x < y) == (err(y) < 0.0) {
                    break (x, y);
                }
            };
            for k in [x, y] {
                row[k] = t32 * l[k] + d;
                assert_eq!(row[k] - t32 * l[k], d, "seed={seed}: d not exact");
            }
        }
        let want = reference::predict(&prior, &taus, &logits).unwrap();
        // The test can fail: with one rounding, every row's tau_0 answer
        // differs from the reference's.
        for (i, row) in logits.chunks(c).enumerate() {
            let fused = (0..c).map(|k| (k, (-t32).mul_add(l[k], row[k]))).fold(
                (0, f32::NEG_INFINITY),
                |b, (k, g)| if g > b.1 { (k, g) } else { b },
            );
            assert_ne!(
                fused.0 as u32, want.by_tau[0][i],
                "seed={seed}: row {i} is not sensitive"
            );
        }
        for ctx in contexts() {
            for variant in VARIANTS {
                let ph = ctx.posthoc(&prior, &taus).unwrap().with_variant(variant);
                let got = run_device(&ph, ctx, &logits, n);
                if let Some((t, i, g, w)) = first_difference(&got, &want) {
                    panic!(
                        "{} {variant:?} N={n} C={c} seed={seed}: tau #{t} row {i}: GPU {g}, reference {w}",
                        name(ctx)
                    );
                }
            }
        }
    }
}

#[test]
fn empty_batch_and_one_class() {
    check(0, 10, 3, &VARIANTS);
    check(100, 1, 8, &VARIANTS);
}

#[test]
fn corrected_logits_are_the_same_floats() {
    let mut rng = Rng::fresh();
    let (n, c) = (333, 257);
    let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
    let logits = nasty_logits(&mut rng, n, c);
    for ctx in contexts() {
        let taus = [0.0, 1.0, 1.7];
        let ph = ctx.posthoc(&prior, &taus).unwrap();
        for (k, &tau) in taus.iter().enumerate() {
            let got = ph.corrected(&logits, k).unwrap();
            let want = reference::corrected(&prior, tau, &logits).unwrap();
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} tau={tau}",
                name(ctx)
            );
        }
    }
}

#[test]
fn device_counts_clear_and_recount() {
    let mut rng = Rng::fresh();
    let (n, c, t) = (5000, 30, 3);
    let labels: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let preds: Vec<Vec<u32>> = (0..t)
        .map(|_| (0..n).map(|_| rng.below(c) as u32).collect())
        .collect();
    let p = Predictions {
        taus: vec![0.0; t],
        by_tau: preds,
    };
    let want = reference::class_counts(&labels, c, &p).unwrap();
    for ctx in contexts() {
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let l32: Vec<i32> = labels.iter().map(|&y| y as i32).collect();
        let inter: Vec<u32> = (0..n)
            .flat_map(|i| p.by_tau.iter().map(move |v| v[i]))
            .collect();
        let mk = |data: &[u8]| {
            ctx.device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: data,
                    usage,
                })
        };
        let (lb, pb) = (
            mk(bytemuck::cast_slice(&l32)),
            mk(bytemuck::cast_slice(&inter)),
        );
        let counts = mk(bytemuck::cast_slice(&vec![7u32; c * (t + 1) + 1]));
        let bound = ctx
            .bind_counts(&CountsBuffers {
                labels: Region::whole(&lb),
                predictions: Some(Region::whole(&pb)),
                rows: n,
                classes: c,
                taus: t,
                counts: Region::whole(&counts),
            })
            .unwrap();
        for _ in 0..2 {
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            bound.record(&mut encoder);
            ctx.queue().submit([encoder.finish()]);
        }
        let raw: Vec<u64> = ctx
            .read_f32(&counts, 0, c * (t + 1) + 1)
            .unwrap()
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect();
        assert_eq!(raw[..c], want.total[..], "{}", name(ctx));
        for k in 0..t {
            assert_eq!(
                raw[(k + 1) * c..(k + 2) * c],
                want.correct[k][..],
                "{}",
                name(ctx)
            );
        }
        assert_eq!(raw[c * (t + 1)], 0);
    }
}

#[test]
fn predictions_feed_the_counts_on_the_device_in_one_pooled_buffer() {
    // Logits, labels, predictions (N x T, as the argmax writes them) and
    // the counters as regions of one buffer at non-zero offsets: one
    // encoder, no host round trip between the argmax and the counts.
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let (n, c) = (3000, 40);
    let taus = [0.0, 0.5, 1.0];
    let t = taus.len();
    let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
    let logits = rng.logits(n * c, 4.0);
    let labels: Vec<i32> = (0..n).map(|_| rng.below(c) as i32).collect();
    let labels64: Vec<i64> = labels.iter().map(|&y| i64::from(y)).collect();
    let want_pred = reference::predict(&prior, &taus, &logits).unwrap();
    let want = reference::class_counts(&labels64, c, &want_pred).unwrap();
    let at = |bytes: usize, end: &mut u64| {
        let start = (*end).next_multiple_of(256);
        *end = start + bytes as u64;
        (start, bytes as u64)
    };
    let mut end = 256;
    let (logits_at, logits_len) = at(n * c * 4, &mut end);
    let (labels_at, labels_len) = at(n * 4, &mut end);
    let (pred_at, pred_len) = at(n * t * 4, &mut end);
    let (counts_at, counts_len) = at((c * (t + 1) + 1) * 4, &mut end);
    for ctx in contexts() {
        let pool = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("pool"),
            size: end.next_multiple_of(256),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue()
            .write_buffer(&pool, logits_at, bytemuck::cast_slice(&logits));
        ctx.queue()
            .write_buffer(&pool, labels_at, bytemuck::cast_slice(&labels));
        let region = |offset, size| Region::new(&pool, offset, size);
        let ph = ctx.posthoc(&prior, &taus).unwrap();
        let argmax = ph
            .bind(&PostHocBuffers {
                logits: region(logits_at, logits_len),
                dtype: logit_adjust::Dtype::F32,
                rows: n,
                predictions: region(pred_at, pred_len),
            })
            .unwrap();
        let counts = ctx
            .bind_counts(&CountsBuffers {
                labels: region(labels_at, labels_len),
                predictions: Some(region(pred_at, pred_len)),
                rows: n,
                classes: c,
                taus: t,
                counts: region(counts_at, counts_len),
            })
            .unwrap();
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        ph.record(&mut encoder, &argmax);
        counts.record(&mut encoder);
        ctx.queue().submit([encoder.finish()]);
        let raw: Vec<u64> = ctx
            .read_f32(&pool, counts_at, c * (t + 1) + 1)
            .unwrap()
            .iter()
            .map(|x| u64::from(x.to_bits()))
            .collect();
        let what = format!("{} seed={seed}", name(ctx));
        assert_eq!(raw[..c], want.total[..], "{what}");
        for k in 0..t {
            assert_eq!(raw[(k + 1) * c..(k + 2) * c], want.correct[k][..], "{what}");
        }
        // Overlapping regions and a counts buffer that cannot be cleared
        // are refused at bind, naming the problem.
        let e = ctx
            .bind_counts(&CountsBuffers {
                labels: region(labels_at, labels_len),
                predictions: Some(region(labels_at, pred_len)),
                rows: n,
                classes: c,
                taus: t,
                counts: region(counts_at, counts_len),
            })
            .unwrap_err();
        assert!(matches!(e, logit_adjust::Error::Overlap { .. }), "{e}");
        let no_copy = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: counts_len,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let e = ctx
            .bind_counts(&CountsBuffers {
                labels: region(labels_at, labels_len),
                predictions: None,
                rows: n,
                classes: c,
                taus: 0,
                counts: Region::whole(&no_copy),
            })
            .unwrap_err();
        assert!(e.to_string().contains("COPY_DST"), "{e}");
    }
}

#[test]
fn bad_input_is_refused() {
    let prior = ClassPrior::from_counts(&[5.0, 3.0, 1.0]).unwrap();
    for ctx in contexts() {
        assert!(ctx.posthoc(&prior, &[]).is_err());
        assert!(ctx.posthoc(&prior, &vec![1.0; 65]).is_err());
        assert!(ctx.posthoc(&prior, &[f64::NAN]).is_err());
        let ph = ctx.posthoc(&prior, &[1.0]).unwrap();
        let e = ph.predict(&[0.0, f32::NAN, 1.0]).unwrap_err();
        assert!(
            matches!(e, logit_adjust::Error::NonFinite { index: 1, .. }),
            "{e}"
        );
        let e = ph.predict(&[0.0; 4]).unwrap_err();
        assert!(
            matches!(e, logit_adjust::Error::ShapeMismatch { .. }),
            "{e}"
        );
        let p = ph.predict(&[0.0; 6]).unwrap();
        let e = ctx.class_counts(&[0, 3], 3, &p).unwrap_err();
        assert!(
            matches!(
                e,
                logit_adjust::Error::LabelOutOfRange {
                    row: 1,
                    label: 3,
                    ignore_index: None,
                    ..
                }
            ),
            "{e}"
        );
        // Counts have no ignore index, and the message mentions none.
        assert!(!e.to_string().contains("ignore"), "{e}");
        let e = ctx.class_counts(&[0, 1, 2], 3, &p).unwrap_err();
        assert!(
            matches!(e, logit_adjust::Error::ShapeMismatch { .. }),
            "{e}"
        );
    }
}

#[test]
fn report_by_hand() {
    // 4 classes; class 3 has no evaluation examples.
    let total = [10u64, 4, 5, 0];
    let correct = [9u64, 2, 0, 0];
    let train = [500.0, 50.0, 5.0, 3.0];
    let r = report(&total, &correct, Some(&train)).unwrap();
    assert!((r.accuracy - 11.0 / 19.0).abs() < 1e-15);
    let mean = (0.9 + 0.5 + 0.0) / 3.0;
    assert!((r.balanced_error - (1.0 - mean)).abs() < 1e-15);
    assert_eq!(r.worst_class_recall, 0.0);
    assert_eq!(r.many, Some(0.9));
    assert_eq!(r.medium, Some(0.5));
    assert_eq!(r.few, Some(0.0)); // class 3 has no examples, so only class 2 counts
    assert_eq!(r.per_class_recall[3], None);
    let no_groups = report(&total, &correct, None).unwrap();
    assert_eq!(
        (no_groups.many, no_groups.medium, no_groups.few),
        (None, None, None)
    );
    let no_medium = report(&total, &correct, Some(&[500.0, 500.0, 5.0, 3.0])).unwrap();
    assert_eq!(no_medium.medium, None);
    assert!(report(&[0, 0], &[0, 0], None).is_err());
}

#[test]
fn top_k_with_ties_and_infinities() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    for (n, c, k) in [
        (200, 10, 5),
        (50, 1000, 3),
        (5, 100_000, 5),
        (30, 3, 3),
        (10, 1, 1),
    ] {
        let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
        let logits = nasty_logits(&mut rng, n, c);
        let taus = [0.0, 1.0];
        for ctx in contexts() {
            let ph = ctx.posthoc(&prior, &taus).unwrap();
            for (t, &tau) in taus.iter().enumerate() {
                let got = ph.top_k(&logits, t, k).unwrap();
                let want = reference::top_k(&prior, tau, &logits, k).unwrap();
                assert_eq!(
                    got,
                    want,
                    "{} N={n} C={c} k={k} tau={tau} seed={seed}",
                    name(ctx)
                );
            }
            assert!(ph.top_k(&logits, 0, c + 1).is_err());
        }
    }
}

#[test]
fn one_upload_serves_predict_top_k_and_corrected() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    let (n, c) = (300, 40);
    let logits = nasty_logits(&mut rng, n, c);
    let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
    let taus = taus(5);
    for ctx in contexts() {
        let what = format!("{} seed={seed}", name(ctx));
        let ph = ctx.posthoc(&prior, &taus).unwrap();
        let uploaded = ph.upload(&logits).unwrap();
        assert_eq!(uploaded.rows(), n, "{what}");
        assert_eq!(
            ph.predict_on(&uploaded).unwrap(),
            reference::predict(&prior, &taus, &logits).unwrap(),
            "{what}"
        );
        assert_eq!(
            ph.top_k_on(&uploaded, 2, 3).unwrap(),
            reference::top_k(&prior, taus[2], &logits, 3).unwrap(),
            "{what}"
        );
        let got = ph.corrected_on(&uploaded, 1).unwrap();
        let want = reference::corrected(&prior, taus[1], &logits).unwrap();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: corrected logits differ"
        );
        // Logits uploaded for another C are refused, naming the mismatch.
        let other = ctx
            .posthoc(
                &ClassPrior::from_counts(&rng.counts(c + 1, 100.0)).unwrap(),
                &taus,
            )
            .unwrap();
        let e = other.predict_on(&uploaded).unwrap_err();
        assert!(
            matches!(e, logit_adjust::Error::ShapeMismatch { .. }),
            "{what}: {e}"
        );
    }
}
