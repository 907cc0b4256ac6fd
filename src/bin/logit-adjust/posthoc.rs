//! `logit-adjust posthoc`: post-hoc logit adjustment of saved logits, a tau
//! sweep in one GPU pass, and the long-tail metrics for every tau.

use std::path::PathBuf;

use logit_adjust::{check_labels, check_logits, reference, Context, Report, MAX_TAUS};
use serde_json::json;

use crate::{inputs, npy};

/// Arguments of `posthoc`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("prior_source").required(true).args(["class_counts", "train_labels", "prior"])))]
#[command(group(clap::ArgGroup::new("tau_choice").args(["tau", "taus", "tau_range"])))]
pub struct PostHocArgs {
    /// Logits of a trained model, float32 (N, C), C-order.
    #[arg(long)]
    logits: PathBuf,
    /// Evaluation labels, int32 or int64 (N,), in [0, C).
    #[arg(long)]
    labels: PathBuf,
    /// Training counts per class, integer or float (C,).
    #[arg(long)]
    class_counts: Option<PathBuf>,
    /// Training labels, int32 or int64; counted per class on the GPU.
    #[arg(long)]
    train_labels: Option<PathBuf>,
    /// Additive smoothing of the training counts (a zero count is an error
    /// without it).
    #[arg(long, default_value_t = 0.0)]
    count_smoothing: f64,
    /// Class prior, float (C,). Without training counts the shot groups are absent.
    #[arg(long)]
    prior: Option<PathBuf>,
    /// One tau (default 1.0).
    #[arg(long, allow_negative_numbers = true)]
    tau: Option<f64>,
    /// A comma-separated list of taus, e.g. 0,0.5,1.
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    taus: Option<Vec<f64>>,
    /// start:stop:step, stop included, e.g. 0:2:0.25.
    #[arg(long, allow_negative_numbers = true)]
    tau_range: Option<String>,
    /// Write the int64 predictions (N,) for the best tau here.
    #[arg(long)]
    out_pred: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Use the CPU reference instead of the GPU.
    #[arg(long)]
    cpu: bool,
}

fn parse_range(text: &str) -> Result<Vec<f64>, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad =
        || format!("--tau-range {text:?}: expected start:stop:step with step > 0, e.g. 0:2:0.25");
    let [a, b, s] = parts.as_slice() else {
        return Err(bad());
    };
    let (a, b, s): (f64, f64, f64) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
        s.trim().parse().map_err(|_| bad())?,
    );
    if !(a.is_finite() && b.is_finite() && s.is_finite() && s > 0.0 && b >= a) {
        return Err(bad());
    }
    // Counted in f64: a tiny step gives more taus than any integer type holds.
    let steps = ((b - a) / s + 1e-9).floor();
    if steps >= MAX_TAUS as f64 {
        let count = steps + 1.0;
        let count = if count < 1e15 {
            format!("{count:.0}")
        } else {
            format!("{count:.3e}")
        };
        return Err(format!(
            "--tau-range {text:?} gives {count} taus; at most {MAX_TAUS}"
        ));
    }
    let steps = steps as usize;
    // Rounded to 12 decimals, so 0:3:0.05 lists 2.55, not 2.5500000000000003.
    Ok((0..=steps)
        .map(|k| ((a + k as f64 * s) * 1e12).round() / 1e12)
        .collect())
}

fn opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.4}"))
}

/// No output over an input, before any work.
fn check_paths(a: &PostHocArgs) -> Result<(), String> {
    if let Some(out) = &a.out_pred {
        let inputs: Vec<&std::path::Path> = [
            Some(&a.logits),
            Some(&a.labels),
            a.class_counts.as_ref(),
            a.train_labels.as_ref(),
            a.prior.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect();
        npy::check_outputs(&inputs, &[("--out-pred", out.as_path())])?;
    }
    Ok(())
}

pub fn run(a: &PostHocArgs) -> Result<(), String> {
    check_paths(a)?;
    let taus = match (&a.tau, &a.taus, &a.tau_range) {
        (Some(t), _, _) => vec![*t],
        (_, Some(ts), _) => ts.clone(),
        (_, _, Some(r)) => parse_range(r)?,
        _ => vec![1.0],
    };
    let (n, c, logits, labels) = inputs::read_batch(&a.logits, &a.labels)?;
    if n == 0 {
        return Err("no evaluation rows: the logits are empty".into());
    }
    check_labels(&labels, c).map_err(|e| e.to_string())?;
    check_logits(&logits, c).map_err(|e| e.to_string())?;
    let train_labels = match &a.train_labels {
        Some(path) => {
            let t = npy::read_labels(path, "training labels")?;
            check_labels(&t, c).map_err(|e| format!("training {e}"))?;
            Some(t)
        }
        None => None,
    };
    let ctx = if a.cpu {
        None
    } else {
        Some(Context::new().map_err(|e| e.to_string())?)
    };

    let train_counts: Option<Vec<f64>> = match (&a.class_counts, &train_labels) {
        (Some(path), _) => Some(npy::read_vector(path, "class counts", true)?),
        (None, Some(t)) => {
            let hist = match &ctx {
                Some(ctx) => ctx.label_histogram(t, c),
                None => reference::label_histogram(t, c),
            }
            .map_err(|e| e.to_string())?;
            Some(hist.into_iter().map(|x| x as f64).collect())
        }
        (None, None) => None,
    };
    let prior = inputs::prior(
        train_counts.as_deref(),
        a.count_smoothing,
        a.prior.as_deref(),
        c,
    )?;

    let (predictions, counts, adapter, backend) = match &ctx {
        Some(ctx) => {
            let ph = ctx.posthoc(&prior, &taus).map_err(|e| e.to_string())?;
            let p = ph.predict(&logits).map_err(|e| e.to_string())?;
            let counts = ctx
                .class_counts(&labels, c, &p)
                .map_err(|e| e.to_string())?;
            (
                p,
                counts,
                ctx.info().name.clone(),
                format!("{:?}", ctx.info().backend),
            )
        }
        None => {
            let p = reference::predict(&prior, &taus, &logits).map_err(|e| e.to_string())?;
            let counts = reference::class_counts(&labels, c, &p).map_err(|e| e.to_string())?;
            (p, counts, "cpu-reference".into(), "cpu".into())
        }
    };
    let reports = (0..taus.len())
        .map(|t| counts.report(t, train_counts.as_deref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    // Lowest balanced error; the first tau listed wins a tie.
    let best = (0..taus.len())
        .min_by(|&x, &y| {
            reports[x]
                .balanced_error
                .total_cmp(&reports[y].balanced_error)
        })
        .unwrap_or(0);

    if let Some(path) = &a.out_pred {
        let pred: Vec<i64> = predictions.by_tau[best].iter().map(|&p| p as i64).collect();
        npy::write_one(path, &[n as u64], &pred)?;
    }

    let device = (adapter.as_str(), backend.as_str());
    print_results(
        a.json,
        &taus,
        &reports,
        best,
        (n, c),
        device,
        train_counts.is_some(),
    );
    Ok(())
}

/// The sweep's reports, as JSON or as a table.
fn print_results(
    json: bool,
    taus: &[f64],
    reports: &[Report],
    best: usize,
    (n, c): (usize, usize),
    (adapter, backend): (&str, &str),
    has_counts: bool,
) {
    if json {
        let results: Vec<_> = taus
            .iter()
            .zip(reports)
            .map(|(tau, r)| {
                json!({
                    "tau": tau,
                    "accuracy": r.accuracy,
                    "balanced_error": r.balanced_error,
                    "worst_class_recall": r.worst_class_recall,
                    "many": r.many,
                    "medium": r.medium,
                    "few": r.few,
                    "per_class_recall": r.per_class_recall,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "adapter": adapter,
                "backend": backend,
                "n": n,
                "c": c,
                "results": results,
                "best_tau": taus[best],
            })
        );
        return;
    }
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "tau", "accuracy", "bal.err", "worst", "many", "medium", "few"
    );
    for (tau, r) in taus.iter().zip(reports) {
        println!(
            "{tau:>8.4} {:>9.4} {:>9.4} {:>9.4} {:>8} {:>8} {:>8}",
            r.accuracy,
            r.balanced_error,
            r.worst_class_recall,
            opt(r.many),
            opt(r.medium),
            opt(r.few)
        );
    }
    println!(
        "best tau: {} (balanced error {:.4}); N = {n}, C = {c}, on {adapter} ({backend})",
        taus[best], reports[best].balanced_error
    );
    if !has_counts {
        println!("(many/medium/few need training counts: pass --class-counts or --train-labels)");
    }
}
