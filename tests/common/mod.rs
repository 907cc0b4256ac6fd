//! Shared test plumbing: one context per adapter, fresh random inputs, and
//! the tolerance checks of the core issue.
#![allow(dead_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use logit_adjust::Context;

/// Every adapter wgpu sees under `WGPU_BACKEND`; panics when there is
/// none: a GPU test never passes by skipping.
pub fn adapters() -> Vec<wgpu::Adapter> {
    let adapters = logit_adjust::adapters_from_env();
    assert!(
        !adapters.is_empty(),
        "no GPU adapter found (WGPU_BACKEND={:?}); GPU tests must not pass without one. \
         Install a driver (apt-get install -y mesa-vulkan-drivers libvulkan1) or pick a backend.",
        std::env::var("WGPU_BACKEND").ok()
    );
    adapters
}

/// One context per adapter wgpu sees under `WGPU_BACKEND` (all backends when
/// unset). Panics when there is none: a GPU test never passes by skipping.
fn all_contexts() -> &'static [Context] {
    static CONTEXTS: OnceLock<Vec<Context>> = OnceLock::new();
    CONTEXTS.get_or_init(|| {
        let adapters = adapters();
        let contexts: Vec<Context> = adapters
            .iter()
            .map(|a| Context::from_adapter(a).unwrap_or_else(|e| panic!("{:?}: {e}", a.get_info())))
            .collect();
        for c in &contexts {
            eprintln!("adapter: {} ({:?})", c.info().name, c.info().backend);
        }
        contexts
    })
}

/// The GL backend shares one EGL context between threads and gives up
/// (panics) when another thread holds it for more than 6 s, which a long
/// dispatch on llvmpipe does; so the tests take turns on GL adapters.
static GL_TURN: Mutex<()> = Mutex::new(());

thread_local! {
    /// Turns this thread holds (nested `contexts()` loops do not wait on
    /// themselves).
    static GL_TURNS_HELD: Cell<usize> = const { Cell::new(0) };
}

/// Every context in turn. While the loop body runs on a GL context, this
/// thread holds the GL turn (released when the loop moves on or ends).
pub fn contexts() -> Contexts {
    Contexts {
        all: all_contexts(),
        next: 0,
        turn: None,
    }
}

pub struct Contexts {
    all: &'static [Context],
    next: usize,
    turn: Option<Turn>,
}

struct Turn(#[allow(dead_code)] Option<MutexGuard<'static, ()>>);

impl Drop for Turn {
    fn drop(&mut self) {
        GL_TURNS_HELD.with(|h| h.set(h.get() - 1));
    }
}

impl Iterator for Contexts {
    type Item = &'static Context;

    fn next(&mut self) -> Option<&'static Context> {
        self.turn = None;
        let ctx = self.all.get(self.next)?;
        self.next += 1;
        if ctx.info().backend == wgpu::Backend::Gl {
            let nested = GL_TURNS_HELD.with(|h| h.get()) > 0;
            let guard = (!nested).then(|| GL_TURN.lock().unwrap_or_else(|p| p.into_inner()));
            GL_TURNS_HELD.with(|h| h.set(h.get() + 1));
            self.turn = Some(Turn(guard));
        }
        Some(ctx)
    }
}

/// A label for messages: adapter and backend.
pub fn name(ctx: &Context) -> String {
    format!("{} / {:?}", ctx.info().name, ctx.info().backend)
}

/// Test data from the library's seedable generator, remembering its seed.
pub struct Rng(logit_adjust::synthetic::Rng, u64);

impl Rng {
    /// A seed per call: fixed by default (from the test's name and how many
    /// generators its thread made before), fresh per run (time and a
    /// counter) with `LOGIT_ADJUST_FRESH_SEEDS=1`, as CI runs, or
    /// `LOGIT_ADJUST_SEED`. Print `rng.seed()` in failure messages to
    /// reproduce.
    pub fn fresh() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static MADE: Cell<u64> = const { Cell::new(0) };
        }
        let fnv = |text: &str| {
            text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        };
        let seed = if let Ok(s) = std::env::var("LOGIT_ADJUST_SEED") {
            s.parse().expect("LOGIT_ADJUST_SEED must be a u64")
        } else if std::env::var("LOGIT_ADJUST_FRESH_SEEDS").is_ok_and(|v| v == "1") {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            t ^ COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        } else {
            let made = MADE.with(|m| m.replace(m.get() + 1));
            fnv(std::thread::current().name().unwrap_or("main"))
                ^ made.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        };
        Rng(logit_adjust::synthetic::Rng::new(seed), seed)
    }

    /// A generator for a given seed (a thread's share of a test's seed).
    pub fn with_seed(seed: u64) -> Self {
        Rng(logit_adjust::synthetic::Rng::new(seed), seed)
    }

    pub fn seed(&self) -> u64 {
        self.1
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0.uniform()
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn logits(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|_| self.range(-1.0, 1.0) as f32 * scale)
            .collect()
    }

    /// Labels in [0, c), with about `ignored` of them set to `ignore_index`.
    pub fn labels(&mut self, n: usize, c: usize, ignored: f64, ignore_index: i64) -> Vec<i64> {
        (0..n)
            .map(|_| {
                if self.uniform() < ignored {
                    ignore_index
                } else {
                    self.below(c) as i64
                }
            })
            .collect()
    }

    /// Long-tailed counts: exponential profile, imbalance `rho`.
    pub fn counts(&mut self, c: usize, rho: f64) -> Vec<f64> {
        (0..c)
            .map(|k| {
                let t = if c > 1 {
                    k as f64 / (c - 1) as f64
                } else {
                    0.0
                };
                (1000.0 * rho.powf(-t)).floor().max(1.0)
            })
            .collect()
    }
}

pub fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Index and size of the worst violation of `|got - want| <= tol(want)`, or None.
pub fn worst(got: &[f32], want: &[f64], tol: impl Fn(f64) -> f64) -> Option<(usize, f64, f64)> {
    assert_eq!(got.len(), want.len(), "length");
    let mut worst = None;
    let mut worst_excess = 0.0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let excess = if g.is_finite() {
            err - tol(w)
        } else {
            f64::INFINITY
        };
        if excess > worst_excess {
            worst_excess = excess;
            worst = Some((i, g as f64, w));
        }
    }
    worst
}

/// The balanced error of the predictions `argmax_c logits - tau log pi_c`
/// against `labels`, by the device's post-hoc argmax and class counts.
pub fn balanced_error(
    ctx: &Context,
    prior: &logit_adjust::ClassPrior,
    tau: f64,
    logits: &[f32],
    labels: &[i64],
) -> f64 {
    let predictions = ctx
        .posthoc(prior, &[tau])
        .expect("posthoc")
        .predict(logits)
        .expect("predict");
    ctx.class_counts(labels, prior.classes(), &predictions)
        .expect("counts")
        .report(0, None)
        .expect("report")
        .balanced_error
}
