//! Post-hoc logit adjustment of a model trained on long-tailed data.
//!
//! The "model" is the one plain cross-entropy converges to on the training
//! distribution: the class posterior of a Gaussian mixture whose class
//! sizes follow an exponential profile (rho = 100). Its logits are
//! `log p(x | y) + log pi_y`, biased toward the head classes. Subtracting
//! `tau log pi` (paper eq. 9) on the GPU, for a sweep of taus in one pass,
//! shows the balanced error falling to its minimum near tau = 1.
//!
//! Run: `cargo run --release --example posthoc_sweep`

use logit_adjust::synthetic::Rng;
use logit_adjust::{ClassPrior, Context};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (c, d, rho, per_class_test) = (10usize, 4usize, 100.0f64, 2000usize);
    let mut rng = Rng::new(7);
    let means: Vec<Vec<f64>> = (0..c)
        .map(|_| (0..d).map(|_| 1.2 * rng.normal()).collect())
        .collect();
    let counts: Vec<f64> = (0..c)
        .map(|k| (5000.0 * rho.powf(-(k as f64) / (c - 1) as f64)).floor())
        .collect();
    let prior = ClassPrior::from_counts(&counts)?;
    let log_prior = prior.log_prior();

    // A balanced test set, scored by the long-tailed Bayes posterior.
    let mut logits = Vec::with_capacity(c * per_class_test * c);
    let mut labels = Vec::with_capacity(c * per_class_test);
    for (y, mean) in means.iter().enumerate() {
        for _ in 0..per_class_test {
            let x: Vec<f64> = mean.iter().map(|m| m + rng.normal()).collect();
            for k in 0..c {
                let dist2: f64 = x.iter().zip(&means[k]).map(|(a, b)| (a - b).powi(2)).sum();
                logits.push((-0.5 * dist2 + log_prior[k]) as f32);
            }
            labels.push(y as i64);
        }
    }

    let ctx = Context::new()?;
    let taus: Vec<f64> = (0..=8).map(|k| k as f64 * 0.25).collect();
    let ph = ctx.posthoc(&prior, &taus)?;
    let predictions = ph.predict(&logits)?; // one read of the logits for all 9 taus
    let counts_eval = ctx.class_counts(&labels, c, &predictions)?;
    println!("training counts: {counts:?}");
    println!(
        "{:>6} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "tau", "accuracy", "bal.err", "worst", "many", "medium", "few"
    );
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    for (t, tau) in taus.iter().enumerate() {
        let r = counts_eval.report(t, Some(&counts))?;
        println!(
            "{tau:>6.2} {:>9.4} {:>9.4} {:>9.4} {:>8} {:>8} {:>8}",
            r.accuracy,
            r.balanced_error,
            r.worst_class_recall,
            fmt(r.many),
            fmt(r.medium),
            fmt(r.few)
        );
    }
    println!("adapter: {} ({:?})", ctx.info().name, ctx.info().backend);
    Ok(())
}
