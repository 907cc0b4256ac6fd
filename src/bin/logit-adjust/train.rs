//! `logit-adjust train`: a linear classifier trained on the GPU on saved
//! features, with any loss of the family, then the long-tail metrics.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use logit_adjust::{
    check_labels, ClassPrior, Context, LinearTrainer, LossSpec, Standardizer, TrainConfig,
};
use serde_json::json;

use crate::npy;

/// Arguments of `train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Training features, float32 (N, D).
    #[arg(long)]
    train_features: PathBuf,
    /// Training labels, int32 or int64 (N,).
    #[arg(long)]
    train_labels: PathBuf,
    /// Test features, float32 (M, D).
    #[arg(long)]
    test_features: PathBuf,
    /// Test labels, int32 or int64 (M,).
    #[arg(long)]
    test_labels: PathBuf,
    /// ce, logit-adjusted, balanced, ldam, equalised or la-ldam.
    #[arg(long, default_value = "logit-adjusted")]
    loss: String,
    /// tau of logit-adjusted, equalised and la-ldam.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    tau: f64,
    /// Passes over the training set (default: enough for about 3000 SGD
    /// steps, between 30 and 1000 epochs).
    #[arg(long, value_parser = at_least_one)]
    epochs: Option<usize>,
    /// Rows per mini-batch.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// L2 weight decay (not on the bias).
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f32,
    /// Seed of the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the features as given (by default each feature is
    /// standardised with the training set's mean and standard deviation).
    #[arg(long)]
    no_standardize: bool,
    /// Write the test logits (M, C) float32 here.
    #[arg(long)]
    out_logits: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The trainer's settings from the flags, for `n` training rows.
fn config_for(a: &TrainArgs, n: usize) -> TrainConfig {
    TrainConfig {
        epochs: a
            .epochs
            .unwrap_or_else(|| TrainConfig::epochs_for(n, a.batch_size)),
        batch_size: a.batch_size,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        seed: a.seed,
    }
}

/// No output over an input, before any work.
fn check_paths(a: &TrainArgs) -> Result<(), String> {
    if let Some(out) = &a.out_logits {
        let inputs = [
            a.train_features.as_path(),
            a.train_labels.as_path(),
            a.test_features.as_path(),
            a.test_labels.as_path(),
        ];
        npy::check_outputs(&inputs, &[("--out-logits", out.as_path())])?;
    }
    Ok(())
}

pub fn run(a: &TrainArgs) -> Result<(), String> {
    check_paths(a)?;
    let e = |e: logit_adjust::Error| e.to_string();
    let Sets {
        n,
        d,
        mut x,
        y,
        m,
        mut xt,
        yt,
        c,
    } = read_sets(a)?;
    let counts = logit_adjust::count_labels(&y, c).map_err(e)?;
    let spec = spec_for(a, c, &counts)?;
    if !a.no_standardize {
        let s = Standardizer::fit(&x, d).map_err(e)?;
        x = s.apply(&x).map_err(e)?;
        xt = s.apply(&xt).map_err(e)?;
    }
    let config = config_for(a, n);
    let epochs = config.epochs;

    let ctx = Context::new().map_err(e)?;
    let mut trainer = LinearTrainer::new(&ctx, &spec, &x, &y, d, config).map_err(e)?;
    let bar = ProgressBar::new(epochs as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] epoch {pos}/{len} {msg} ({elapsed})")
            .map_err(|err| err.to_string())?
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("training ({}) on {}", a.loss, ctx.info().name));
    let mut last_loss = f32::NAN;
    trainer
        .fit(|_, loss| {
            last_loss = loss;
            bar.set_message(format!("loss {loss:.4}"));
            bar.inc(1);
        })
        .map_err(e)?;
    bar.finish_and_clear();

    let logits = trainer.logits(&xt).map_err(e)?;
    let uniform = ClassPrior::from_probabilities(&vec![1.0; c]).map_err(e)?;
    let predictions = ctx
        .posthoc(&uniform, &[0.0])
        .map_err(e)?
        .predict(&logits)
        .map_err(e)?;
    let report = ctx
        .class_counts(&yt, c, &predictions)
        .map_err(e)?
        .report(0, Some(&counts))
        .map_err(e)?;

    if let Some(path) = &a.out_logits {
        npy::write_one(path, &[m as u64, c as u64], &logits)?;
    }
    if a.json {
        println!(
            "{}",
            json!({
                "loss": last_loss,
                "loss_name": a.loss,
                "tau": a.tau,
                "epochs": epochs,
                "accuracy": report.accuracy,
                "balanced_error": report.balanced_error,
                "worst_class_recall": report.worst_class_recall,
                "many": report.many,
                "medium": report.medium,
                "few": report.few,
                "per_class_recall": report.per_class_recall,
                "n_train": n,
                "n_test": m,
                "c": c,
                "d": d,
                "adapter": ctx.info().name,
                "backend": format!("{:?}", ctx.info().backend),
            })
        );
        return Ok(());
    }
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    println!("trained {epochs} epochs with --loss {} (final training loss {last_loss:.4}) on {n} x {d}, {c} classes", a.loss);
    println!(
        "test ({m} rows): accuracy {:.4}  balanced error {:.4}  worst-class recall {:.4}  many {}  medium {}  few {}",
        report.accuracy,
        report.balanced_error,
        report.worst_class_recall,
        opt(report.many),
        opt(report.medium),
        opt(report.few)
    );
    println!("adapter: {} ({:?})", ctx.info().name, ctx.info().backend);
    Ok(())
}

/// The training and test sets, checked against each other.
struct Sets {
    n: usize,
    d: usize,
    x: Vec<f32>,
    y: Vec<i64>,
    m: usize,
    xt: Vec<f32>,
    yt: Vec<i64>,
    c: usize,
}

/// `--epochs`: a count of at least 1 (0 epochs train nothing and have no
/// loss to report).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("at least 1 epoch is needed".into()),
        Ok(k) => Ok(k),
        Err(e) => Err(e.to_string()),
    }
}

fn read_sets(a: &TrainArgs) -> Result<Sets, String> {
    let e = |e: logit_adjust::Error| e.to_string();
    let (n, d, x) = npy::read_matrix(&a.train_features, "training features", "(N, D)")?;
    let y = npy::read_labels(&a.train_labels, "training labels")?;
    let (m, dt, xt) = npy::read_matrix(&a.test_features, "test features", "(N, D)")?;
    let yt = npy::read_labels(&a.test_labels, "test labels")?;
    if y.len() != n {
        return Err(format!(
            "shape mismatch: {n} training feature rows but {} training labels",
            y.len()
        ));
    }
    if yt.len() != m {
        return Err(format!(
            "shape mismatch: {m} test feature rows but {} test labels",
            yt.len()
        ));
    }
    if dt != d {
        return Err(format!(
            "shape mismatch: training features have {d} columns, test features {dt}"
        ));
    }
    if n == 0 || m == 0 {
        return Err("the training and test sets must not be empty".into());
    }
    if let Some(i) = y.iter().chain(&yt).position(|&v| v < 0) {
        return Err(format!(
            "label out of range: label {} at position {i} is negative",
            y.iter().chain(&yt).nth(i).unwrap_or(&0)
        ));
    }
    // The classes are the training set's: a test label past them is a class
    // the model never saw, not a class with a zero prior.
    let c = y.iter().max().map_or(0, |&v| v as usize + 1);
    if let Some(i) = yt.iter().position(|&v| v as usize >= c) {
        return Err(format!(
            "label out of range: test label {} at row {i} is a class the training labels never \
             show (they have {c} classes, 0..{c})",
            yt[i]
        ));
    }
    check_labels(&yt, c).map_err(e)?;
    for (what, v) in [("training features", &x), ("test features", &xt)] {
        if let Some(i) = v.iter().position(|f| !f.is_finite()) {
            return Err(format!("non-finite value: {what}[{i}] = {}", v[i]));
        }
    }
    Ok(Sets {
        n,
        d,
        x,
        y,
        m,
        xt,
        yt,
        c,
    })
}

/// The loss `--loss` names, over `c` classes with these training counts.
fn spec_for(a: &TrainArgs, c: usize, counts: &[f64]) -> Result<LossSpec, String> {
    let e = |e: logit_adjust::Error| e.to_string();
    let prior = || {
        ClassPrior::from_counts(counts).map_err(|err| {
            format!(
                "{err} (the --loss {} needs every class in the training labels)",
                a.loss
            )
        })
    };
    Ok(match a.loss.as_str() {
        "ce" => LossSpec::cross_entropy(c),
        "logit-adjusted" => LossSpec::logit_adjusted(&prior()?, a.tau).map_err(e)?,
        "balanced" => LossSpec::balanced(&prior()?),
        "ldam" => LossSpec::ldam(&prior()?),
        "equalised" => LossSpec::equalised(&prior()?, a.tau).map_err(e)?,
        "la-ldam" => LossSpec::logit_adjusted_adaptive(&prior()?, a.tau).map_err(e)?,
        other => {
            return Err(format!(
                "unknown loss {other:?}: expected ce, logit-adjusted, balanced, ldam, equalised or la-ldam"
            ))
        }
    })
}
