//! Where `posthoc` computes: the GPU, or the CPU reference (`--cpu`), behind
//! the same calls, so the command has one flow for both.

use logit_adjust::{
    reference, ClassCounts, ClassPrior, Context, EmOptions, PostHoc, Predictions, PriorEstimate,
};

pub enum Engine {
    Gpu(Context),
    Cpu,
}

fn err(e: logit_adjust::Error) -> String {
    e.to_string()
}

/// A correction: the training prior, the test prior (`None`: balanced).
#[derive(Clone, Copy)]
pub struct Correction<'a> {
    pub train: &'a ClassPrior,
    pub test: Option<&'a ClassPrior>,
}

impl Engine {
    pub fn new(cpu: bool) -> Result<Self, String> {
        if cpu {
            Ok(Engine::Cpu)
        } else {
            Context::new().map(Engine::Gpu).map_err(err)
        }
    }

    /// `(adapter, backend)` for the report.
    pub fn device(&self) -> (String, String) {
        match self {
            Engine::Gpu(ctx) => (ctx.info().name.clone(), format!("{:?}", ctx.info().backend)),
            Engine::Cpu => ("cpu-reference".into(), "cpu".into()),
        }
    }

    fn posthoc(ctx: &Context, k: Correction, taus: &[f64]) -> Result<PostHoc, String> {
        PostHoc::for_test_prior(ctx, k.train, k.test, taus).map_err(err)
    }

    pub fn predict(
        &self,
        k: Correction,
        taus: &[f64],
        logits: &[f32],
    ) -> Result<Predictions, String> {
        match self {
            Engine::Gpu(ctx) => Self::posthoc(ctx, k, taus)?.predict(logits).map_err(err),
            Engine::Cpu => {
                reference::predict_for_test_prior(k.train, k.test, taus, logits).map_err(err)
            }
        }
    }

    pub fn counts(&self, labels: &[i64], c: usize, p: &Predictions) -> Result<ClassCounts, String> {
        match self {
            Engine::Gpu(ctx) => ctx.class_counts(labels, c, p),
            Engine::Cpu => reference::class_counts(labels, c, p),
        }
        .map_err(err)
    }

    pub fn histogram(&self, labels: &[i64], c: usize) -> Result<Vec<u64>, String> {
        match self {
            Engine::Gpu(ctx) => ctx.label_histogram(labels, c),
            Engine::Cpu => reference::label_histogram(labels, c),
        }
        .map_err(err)
    }

    /// `N x k` best classes at `tau`, best first.
    pub fn top_k(
        &self,
        k: Correction,
        tau: f64,
        logits: &[f32],
        top: usize,
    ) -> Result<Vec<u32>, String> {
        match self {
            Engine::Gpu(ctx) => Self::posthoc(ctx, k, &[tau])?.top_k(logits, 0, top),
            Engine::Cpu => reference::top_k_for_test_prior(k.train, k.test, tau, logits, top),
        }
        .map_err(err)
    }

    /// The corrected logits at `tau`.
    pub fn corrected(&self, k: Correction, tau: f64, logits: &[f32]) -> Result<Vec<f32>, String> {
        match self {
            Engine::Gpu(ctx) => Self::posthoc(ctx, k, &[tau])?.corrected(logits, 0),
            Engine::Cpu => reference::corrected_for_test_prior(k.train, k.test, tau, logits),
        }
        .map_err(err)
    }

    pub fn estimate_test_prior(
        &self,
        logits: &[f32],
        train: &ClassPrior,
    ) -> Result<PriorEstimate, String> {
        match self {
            Engine::Gpu(ctx) => ctx.estimate_test_prior(logits, train, EmOptions::default()),
            Engine::Cpu => reference::estimate_test_prior(logits, train, EmOptions::default()),
        }
        .map_err(err)
    }
}
