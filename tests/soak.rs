//! A soak: 2,000 mixed calls (loss, post-hoc, counts) with random shapes
//! on one context from four threads at once, every result checked against
//! the CPU reference, and the process's resident memory flat after warm-up.
//! The ops are made once per class count and shared by the threads, as an
//! engine shares them.

mod common;

use std::collections::HashMap;

use common::{contexts, name, Rng};
use logit_adjust::{reference, ClassPrior, Context, LossSpec, PostHoc, Reduction, SoftmaxXent};

const THREADS: usize = 4;
const CALLS: usize = 2000;
const CLASSES: [usize; 5] = [1, 7, 10, 100, 1000];
const TAUS: [f64; 3] = [0.0, 1.0, 1.5];

/// The resident set size of this process in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

struct Ops {
    prior: ClassPrior,
    loss: SoftmaxXent,
    posthoc: PostHoc,
}

fn ops(ctx: &Context, rng: &mut Rng) -> HashMap<usize, Ops> {
    CLASSES
        .iter()
        .map(|&c| {
            let prior = ClassPrior::from_counts(&rng.counts(c, 50.0)).unwrap();
            let spec = LossSpec::logit_adjusted(&prior, 1.0)
                .unwrap()
                .with_reduction(Reduction::Mean);
            let ops = Ops {
                loss: ctx.softmax_xent(&spec).unwrap(),
                posthoc: ctx.posthoc(&prior, &TAUS).unwrap(),
                prior,
            };
            (c, ops)
        })
        .collect()
}

/// One call of kind `k % 3` on a random shape, checked against the reference.
fn one_call(ctx: &Context, ops: &HashMap<usize, Ops>, rng: &mut Rng, k: usize, what: &str) {
    let c = CLASSES[rng.below(CLASSES.len())];
    let n = 1 + rng.below(96);
    let o = &ops[&c];
    let logits = rng.logits(n * c, 6.0);
    let labels = rng.labels(n, c, 0.1, -100);
    let what = format!("{what} call {k} N={n} C={c}");
    match k % 3 {
        0 => {
            let got = o.loss.forward_backward(&logits, &labels).unwrap();
            let want = reference::forward_backward(o.loss.spec(), &logits, &labels).unwrap();
            let (g, w) = (f64::from(got.loss.unwrap()), want.loss.unwrap());
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{what}: loss {g} vs {w}"
            );
            let wg = want.grad.unwrap();
            let scale = common::max_abs(&wg);
            let worst = common::worst(got.grad.as_ref().unwrap(), &wg, |_| 1e-6 + 1e-5 * scale);
            assert!(worst.is_none(), "{what}: gradient {worst:?}");
        }
        1 => {
            let got = o.posthoc.predict(&logits).unwrap();
            let want = reference::predict(&o.prior, &TAUS, &logits).unwrap();
            assert_eq!(got, want, "{what}: predictions");
        }
        _ => {
            let kept: Vec<i64> = labels.iter().map(|&y| y.max(0)).collect();
            let pred = reference::predict(&o.prior, &TAUS, &logits).unwrap();
            let got = ctx.class_counts(&kept, c, &pred).unwrap();
            let want = reference::class_counts(&kept, c, &pred).unwrap();
            assert_eq!(got, want, "{what}: counts");
        }
    }
}

#[test]
fn two_thousand_mixed_calls_from_four_threads() {
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    for ctx in contexts() {
        let what = format!("{} seed={seed}", name(ctx));
        let ops = ops(ctx, &mut rng);
        let mut rngs: Vec<Rng> = (0..THREADS)
            .map(|_| Rng::with_seed(rng.next_u64()))
            .collect();
        // Two phases, each a scope the threads join (a panic in one ends the
        // test instead of leaving the others waiting): the warm-up, which
        // sees every pipeline and buffer size, then the calls measured.
        let per_thread = CALLS / THREADS;
        let mut before = 0;
        for calls in [0..per_thread / 4, per_thread / 4..per_thread] {
            std::thread::scope(|s| {
                for (t, rng) in rngs.iter_mut().enumerate() {
                    let (ops, what, calls) = (&ops, &what, calls.clone());
                    s.spawn(move || {
                        let what = format!("{what} thread {t}");
                        for k in calls {
                            one_call(ctx, ops, rng, k, &what);
                        }
                    });
                }
            });
            if before == 0 {
                before = resident_bytes();
            }
        }
        let after = resident_bytes();
        let growth = after.saturating_sub(before);
        assert!(
            growth <= 48 << 20,
            "{what}: resident memory grew by {} MiB after warm-up ({} -> {} MiB)",
            growth >> 20,
            before >> 20,
            after >> 20
        );
        println!(
            "{what}: {CALLS} calls, resident {} MiB after warm-up, {} MiB at the end",
            before >> 20,
            after >> 20
        );
    }
}

#[test]
fn a_large_op_beside_small_ones_from_other_threads() {
    // On GL one context serves every thread; a long op must make the others
    // wait their turn, not fail. 1024 x 16384 f32 (64 MiB) fused with its
    // gradient takes llvmpipe a good fraction of a second.
    let mut rng = Rng::fresh();
    let seed = rng.seed();
    for ctx in contexts() {
        let what = format!("{} seed={seed}", name(ctx));
        let ops = ops(ctx, &mut rng);
        let (n, c) = (1024, 16384);
        let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
        let spec = LossSpec::logit_adjusted(&prior, 1.0)
            .unwrap()
            .with_reduction(Reduction::Mean);
        let large = ctx.softmax_xent(&spec).unwrap();
        let logits = rng.logits(n * c, 8.0);
        let labels = rng.labels(n, c, 0.0, -100);
        let want = reference::forward(&spec, &logits, &labels)
            .unwrap()
            .loss
            .unwrap();
        let mut rngs: Vec<Rng> = (0..3).map(|_| Rng::with_seed(rng.next_u64())).collect();
        std::thread::scope(|s| {
            let (large, logits, labels, what) = (&large, &logits, &labels, &what);
            s.spawn(move || {
                for _ in 0..3 {
                    let got = large.forward_backward(logits, labels).unwrap();
                    let g = f64::from(got.loss.unwrap());
                    assert!(
                        (g - want).abs() <= 1e-5 * want.abs(),
                        "{what}: large loss {g} vs {want}"
                    );
                }
            });
            for (t, rng) in rngs.iter_mut().enumerate() {
                let (ops, what) = (&ops, what);
                s.spawn(move || {
                    for k in 0..60 {
                        one_call(ctx, ops, rng, k, &format!("{what} small thread {t}"));
                    }
                });
            }
        });
    }
}
