//! `logit-adjust train`: a linear classifier trained on the GPU on saved
//! features, with any loss of the family, chosen on held-out data (the
//! stopping epoch and tau by validation balanced error), then the long-tail
//! metrics on the test set, which is read only after the choice is made.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use logit_adjust::{
    stratified_split, ClassPrior, Context, FitReport, LinearTrainer, LossSpec, Split, Standardizer,
    TrainConfig,
};

use crate::npy;
use crate::train_report::{self, Run, Selection};

/// Arguments of `train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Training features, float32 (N, D).
    #[arg(long)]
    pub train_features: PathBuf,
    /// Training labels, int32 or int64 (N,).
    #[arg(long)]
    pub train_labels: PathBuf,
    /// Test features, float32 (M, D); read only after training.
    #[arg(long)]
    pub test_features: PathBuf,
    /// Test labels, int32 or int64 (M,); read only after training.
    #[arg(long)]
    pub test_labels: PathBuf,
    /// Validation features, float32 (V, D), with --val-labels.
    #[arg(long, requires = "val_labels", conflicts_with = "val_fraction")]
    pub val_features: Option<PathBuf>,
    /// Validation labels, int32 or int64 (V,), with --val-features.
    #[arg(long, requires = "val_features")]
    pub val_labels: Option<PathBuf>,
    /// Hold out this fraction of each class of the training set for
    /// validation (stratified by --seed; a class with one row stays in
    /// training).
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Evaluate the validation balanced error every K epochs (and after the last).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub eval_every: usize,
    /// Stop when the validation balanced error has not improved for this
    /// many evaluations. With a validation set the weights of the best
    /// evaluation are the ones kept, with or without this.
    #[arg(long, value_parser = at_least_one)]
    pub early_stop: Option<usize>,
    /// Evaluations before this epoch are shown but neither kept nor counted
    /// toward --early-stop (default: a tenth of --epochs).
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Deferred re-weighting (LDAM-DRW): from this epoch on, weight each
    /// class by its effective number of samples (Cui et al. 2019).
    #[arg(long)]
    pub drw_epoch: Option<usize>,
    /// beta of the effective number, (1 - beta^n_c) / (1 - beta).
    #[arg(long, default_value_t = 0.9999)]
    pub drw_beta: f64,
    /// ce, logit-adjusted, balanced, ldam, equalised or la-ldam.
    #[arg(long, default_value = "logit-adjusted")]
    pub loss: String,
    /// tau of logit-adjusted, equalised and la-ldam.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub tau: f64,
    /// Train one model per tau (comma-separated) and keep the one with the
    /// lowest validation balanced error (logit-adjusted, equalised, la-ldam).
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        conflicts_with = "tau"
    )]
    pub taus: Option<Vec<f64>>,
    /// Passes over the training set at most (default: enough for about 3000
    /// SGD steps, between 30 and 1000 epochs).
    #[arg(long, value_parser = epochs)]
    pub epochs: Option<usize>,
    /// Rows per mini-batch.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// L2 weight decay (not on the bias).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f32,
    /// Seed of the shuffling and of the validation split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The format of the batch logits and their gradient in training:
    /// f32, f16 or bf16 (features, weights and the loss stay f32).
    #[arg(long, default_value = "f32", value_parser = logits_format)]
    pub logits: logit_adjust::Dtype,
    /// Train on the features as given (by default each feature is
    /// standardised with the training rows' mean and standard deviation).
    #[arg(long)]
    pub no_standardize: bool,
    /// Write the test logits (M, C) float32 here.
    #[arg(long)]
    pub out_logits: Option<PathBuf>,
    /// Write the validation rows of --val-fraction's split (int64 row
    /// indices into the training files) here.
    #[arg(long, requires = "val_fraction")]
    pub out_split: Option<PathBuf>,
    /// Write the validation logits (V, C) float32 of the kept model here.
    #[arg(long)]
    pub out_val_logits: Option<PathBuf>,
    /// Draw the learning curve (training loss, validation balanced error,
    /// the kept epoch): SVG, or PNG for a .png name.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write learning-curve.svg, sweep.svg (the kept model's post-hoc tau
    /// sweep, on validation when there is one) and classes.svg (test recall
    /// per class, head to tail) into this folder.
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `--logits`: a format's name.
fn logits_format(text: &str) -> Result<logit_adjust::Dtype, String> {
    logit_adjust::Dtype::ALL
        .into_iter()
        .find(|d| d.name() == text)
        .ok_or_else(|| format!("{text:?} is not a logits format (f32, f16, bf16)"))
}

/// `--eval-every`, `--early-stop`: a count of at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(k) => Ok(k),
        Err(e) => Err(e.to_string()),
    }
}

/// `--epochs`: at least 1 (0 epochs train nothing and have no loss to report).
fn epochs(text: &str) -> Result<usize, String> {
    at_least_one(text).map_err(|e| match text.parse::<usize>() {
        Ok(0) => "at least 1 epoch is needed".into(),
        _ => e,
    })
}

/// The losses with a tau.
const TAU_LOSSES: [&str; 3] = ["logit-adjusted", "equalised", "la-ldam"];

impl TrainArgs {
    fn validating(&self) -> bool {
        self.val_fraction.is_some() || self.val_features.is_some()
    }

    /// The taus to train, one model each.
    pub fn taus(&self) -> Vec<f64> {
        self.taus.clone().unwrap_or_else(|| vec![self.tau])
    }
}

/// Flags that only make sense together, and no output over an input, before any work.
fn check_args(a: &TrainArgs) -> Result<(), String> {
    let need_validation =
        "needs a validation set: --val-fraction, or --val-features with --val-labels";
    if a.out_val_logits.is_some() && !a.validating() {
        return Err(format!("--out-val-logits {need_validation}"));
    }
    if a.early_stop.is_some() && !a.validating() {
        return Err(format!("--early-stop {need_validation}"));
    }
    if let Some(taus) = &a.taus {
        if !a.validating() {
            return Err(format!("--taus {need_validation} to choose among them"));
        }
        if !TAU_LOSSES.contains(&a.loss.as_str()) {
            return Err(format!(
                "--taus needs a loss with a tau ({}), not --loss {}",
                TAU_LOSSES.join(", "),
                a.loss
            ));
        }
        if taus.is_empty() || taus.len() > 64 {
            return Err(format!("--taus takes 1 to 64 values, got {}", taus.len()));
        }
        if let Some(t) = taus.iter().find(|t| !t.is_finite()) {
            return Err(format!("non-finite value: --taus holds {t}"));
        }
    }
    if let Some(f) = a.val_fraction {
        if !(f > 0.0 && f < 1.0) {
            return Err(format!("--val-fraction must be in (0, 1), got {f}"));
        }
    }
    let mut inputs = vec![
        a.train_features.as_path(),
        a.train_labels.as_path(),
        a.test_features.as_path(),
        a.test_labels.as_path(),
    ];
    inputs.extend(a.val_features.as_deref());
    inputs.extend(a.val_labels.as_deref());
    let in_dir = |name: &str| a.plot_dir.as_ref().map(|d| d.join(name));
    let pictures = crate::train_report::PICTURES.map(in_dir);
    let mut outputs: Vec<(&str, &std::path::Path)> = [
        ("--out-logits", &a.out_logits),
        ("--out-val-logits", &a.out_val_logits),
        ("--out-split", &a.out_split),
        ("--plot", &a.plot),
    ]
    .into_iter()
    .filter_map(|(what, p)| p.as_deref().map(|p| (what, p)))
    .collect();
    outputs.extend(
        pictures
            .iter()
            .flatten()
            .map(|p| ("--plot-dir", p.as_path())),
    );
    npy::check_outputs(&inputs, &outputs)
}

/// The training rows the model learns from, and the held-out rows it is
/// chosen on, standardised by the training rows.
pub struct Data {
    pub d: usize,
    pub c: usize,
    pub x: Vec<f32>,
    pub y: Vec<i64>,
    pub validation: Option<(Vec<f32>, Vec<i64>)>,
    /// The split, where --val-fraction made one.
    pub split: Option<Split>,
    pub standardizer: Option<Standardizer>,
}

fn err(e: logit_adjust::Error) -> String {
    e.to_string()
}

/// Read the training (and validation) files, check the test files' shapes
/// from their headers, split, standardise.
fn read_data(a: &TrainArgs) -> Result<Data, String> {
    let (n, d, x) = npy::read_matrix(&a.train_features, "training features", "(N, D)")?;
    let y = npy::read_labels(&a.train_labels, "training labels")?;
    if y.len() != n {
        return Err(format!(
            "shape mismatch: {n} training feature rows but {} training labels",
            y.len()
        ));
    }
    if n == 0 {
        return Err("the training set must not be empty".into());
    }
    check_test_shapes(a, d)?;
    if let Some(i) = y.iter().position(|&v| v < 0) {
        return Err(format!(
            "label out of range: training label {} at row {i} is negative",
            y[i]
        ));
    }
    // The classes are the training set's: a later label past them is a
    // class the model never saw, not a class with a zero prior.
    let c = y.iter().max().map_or(0, |&v| v as usize + 1);
    if let Some(i) = x.iter().position(|f| !f.is_finite()) {
        return Err(format!(
            "non-finite value: training features[{i}] = {}",
            x[i]
        ));
    }
    let (x, y, mut validation, split) = match (&a.val_features, a.val_fraction) {
        (Some(vx), _) => {
            let v = read_validation(a, vx, d, c)?;
            (x, y, Some(v), None)
        }
        (None, Some(f)) => {
            let s = stratified_split(&y, c, f, a.seed).map_err(err)?;
            let v = (
                Split::gather(&x, d, &s.validation),
                Split::gather(&y, 1, &s.validation),
            );
            (
                Split::gather(&x, d, &s.train),
                Split::gather(&y, 1, &s.train),
                Some(v),
                Some(s),
            )
        }
        (None, None) => (x, y, None, None),
    };
    let (x, standardizer) = if a.no_standardize {
        (x, None)
    } else {
        let s = Standardizer::fit(&x, d).map_err(err)?;
        if let Some((vx, _)) = &mut validation {
            *vx = s.apply(vx).map_err(err)?;
        }
        (s.apply(&x).map_err(err)?, Some(s))
    };
    Ok(Data {
        d,
        c,
        x,
        y,
        validation,
        split,
        standardizer,
    })
}

/// The test files' dtypes and shapes, from their headers: a mismatch is
/// found before training, while the data stay unread until after it.
fn check_test_shapes(a: &TrainArgs, d: usize) -> Result<(), String> {
    let (m, dt) = npy::matrix_shape(&a.test_features, "test features", "(N, D)")?;
    let mt = npy::labels_len(&a.test_labels, "test labels")?;
    if mt != m {
        return Err(format!(
            "shape mismatch: {m} test feature rows but {mt} test labels"
        ));
    }
    if dt != d {
        return Err(format!(
            "shape mismatch: training features have {d} columns, test features {dt}"
        ));
    }
    if m == 0 {
        return Err("the test set must not be empty".into());
    }
    Ok(())
}

fn read_validation(
    a: &TrainArgs,
    path: &std::path::Path,
    d: usize,
    c: usize,
) -> Result<(Vec<f32>, Vec<i64>), String> {
    let (v, dv, x) = npy::read_matrix(path, "validation features", "(N, D)")?;
    let labels = a.val_labels.as_deref().unwrap_or(path);
    let y = npy::read_labels(labels, "validation labels")?;
    if y.len() != v {
        return Err(format!(
            "shape mismatch: {v} validation feature rows but {} validation labels",
            y.len()
        ));
    }
    if dv != d {
        return Err(format!(
            "shape mismatch: training features have {d} columns, validation features {dv}"
        ));
    }
    if v == 0 {
        return Err("the validation set must not be empty".into());
    }
    if let Some(i) = y.iter().position(|&l| l < 0 || l as usize >= c) {
        return Err(format!(
            "label out of range: validation label {} at row {i} is not one of the training \
             labels' {c} classes (0..{c})",
            y[i]
        ));
    }
    if let Some(i) = x.iter().position(|f| !f.is_finite()) {
        return Err(format!(
            "non-finite value: validation features[{i}] = {}",
            x[i]
        ));
    }
    Ok((x, y))
}

/// The trainer's settings from the flags, for `n` training rows.
fn config_for(a: &TrainArgs, n: usize, counts: &[f64]) -> Result<TrainConfig, String> {
    let drw = match a.drw_epoch {
        Some(epoch) => Some(logit_adjust::Drw {
            epoch,
            weights: logit_adjust::effective_number_weights(counts, a.drw_beta)
                .map_err(|e| format!("--drw-epoch: {e}"))?,
        }),
        None => None,
    };
    Ok(TrainConfig {
        epochs: a
            .epochs
            .unwrap_or_else(|| TrainConfig::epochs_for(n, a.batch_size)),
        batch_size: a.batch_size,
        lr: a.lr,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        seed: a.seed,
        eval_every: a.eval_every,
        patience: a.early_stop,
        warmup: a.warmup,
        drw,
        logits: a.logits,
    })
}

pub fn run(a: &TrainArgs) -> Result<(), String> {
    check_args(a)?;
    let data = read_data(a)?;
    let counts = logit_adjust::count_labels(&data.y, data.c).map_err(err)?;
    let config = config_for(a, data.y.len(), &counts)?;
    let ctx = Context::new().map_err(err)?;
    let mut runs = Vec::new();
    for tau in a.taus() {
        let spec = spec_for(&a.loss, tau, data.c, &counts)?;
        let (trainer, report) = train_one(&ctx, a, &data, &spec, tau, &config)?;
        runs.push(Run {
            tau,
            trainer,
            report,
        });
    }
    // The lowest validation balanced error, the first of equals; without a
    // validation set there is one run.
    let errors: Vec<f64> = runs
        .iter()
        .map(|r| r.report.best.map_or(0.0, |b| b.1))
        .collect();
    let chosen = logit_adjust::first_best(&errors);
    let selection = Selection {
        runs,
        chosen,
        counts,
        config,
    };
    train_report::finish(a, &ctx, &data, &selection)
}

/// One model: train it (with validation, stopping rule and progress bar).
fn train_one(
    ctx: &Context,
    a: &TrainArgs,
    data: &Data,
    spec: &LossSpec,
    tau: f64,
    config: &TrainConfig,
) -> Result<(LinearTrainer, FitReport), String> {
    let mut trainer =
        LinearTrainer::new(ctx, spec, &data.x, &data.y, data.d, config.clone()).map_err(err)?;
    if let Some((vx, vy)) = &data.validation {
        trainer = trainer.with_validation(vx, vy).map_err(err)?;
    }
    let bar = ProgressBar::new(config.epochs as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] epoch {pos}/{len} {msg} ({elapsed})")
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
    );
    let tau_text = if TAU_LOSSES.contains(&a.loss.as_str()) {
        format!(", tau {tau}")
    } else {
        String::new()
    };
    bar.set_prefix(format!(
        "training ({}{tau_text}) on {}",
        a.loss,
        ctx.info().name
    ));
    let mut last_validation = None;
    let report = trainer
        .fit(|p| {
            last_validation = p.validation_balanced_error.or(last_validation);
            let validation = match (last_validation, p.best) {
                (Some(v), Some((epoch, best))) => {
                    format!("  val. bal. err {v:.4} (best {best:.4} at epoch {epoch})")
                }
                _ => String::new(),
            };
            bar.set_message(format!("loss {:.4}{validation}", p.loss));
            bar.inc(1);
        })
        .map_err(err)?;
    bar.finish_and_clear();
    Ok((trainer, report))
}

/// The test set, read now that the model is chosen, and checked.
pub fn read_test(a: &TrainArgs, data: &Data) -> Result<(Vec<f32>, Vec<i64>), String> {
    let (_, _, x) = npy::read_matrix(&a.test_features, "test features", "(N, D)")?;
    let y = npy::read_labels(&a.test_labels, "test labels")?;
    if let Some(i) = y.iter().position(|&v| v < 0) {
        return Err(format!(
            "label out of range: test label {} at row {i} is negative",
            y[i]
        ));
    }
    let c = data.c;
    if let Some(i) = y.iter().position(|&v| v as usize >= c) {
        return Err(format!(
            "label out of range: test label {} at row {i} is a class the training labels never \
             show (they have {c} classes, 0..{c})",
            y[i]
        ));
    }
    if let Some(i) = x.iter().position(|f| !f.is_finite()) {
        return Err(format!("non-finite value: test features[{i}] = {}", x[i]));
    }
    let x = match &data.standardizer {
        Some(s) => s.apply(&x).map_err(err)?,
        None => x,
    };
    Ok((x, y))
}

/// The loss `name` with `tau`, over `c` classes with these training counts.
fn spec_for(name: &str, tau: f64, c: usize, counts: &[f64]) -> Result<LossSpec, String> {
    let prior = || {
        ClassPrior::from_counts(counts).map_err(|e| {
            format!("{e} (the --loss {name} needs every class in the training labels)")
        })
    };
    Ok(match name {
        "ce" => LossSpec::cross_entropy(c),
        "logit-adjusted" => LossSpec::logit_adjusted(&prior()?, tau).map_err(err)?,
        "balanced" => LossSpec::balanced(&prior()?),
        "ldam" => LossSpec::ldam(&prior()?),
        "equalised" => LossSpec::equalised(&prior()?, tau).map_err(err)?,
        "la-ldam" => LossSpec::logit_adjusted_adaptive(&prior()?, tau).map_err(err)?,
        other => {
            return Err(format!(
                "unknown loss {other:?}: expected ce, logit-adjusted, balanced, ldam, equalised or la-ldam"
            ))
        }
    })
}
