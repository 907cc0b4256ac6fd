//! `logit-adjust demo` (and `cargo run --release` with no arguments): the
//! paper end to end on built-in synthetic long-tailed data, trained on the GPU.

use std::time::Instant;

use logit_adjust::synthetic::{exponential_profile, normal_cdf, GaussianMixture, Rng, Sample};
use logit_adjust::{
    ClassPrior, Context, FitReport, LinearTrainer, LossSpec, Report, Select, ShotGroups,
    Standardizer, TrainConfig,
};

use crate::plot::{LearningCurve, Picture};
use crate::{npy, posthoc_report};

/// Arguments of `demo`.
#[derive(Debug, Default, clap::Args)]
pub struct DemoArgs {
    /// Also write pictures of the first problem into this folder:
    /// sweep.svg (ERM's post-hoc tau sweep on validation), classes.svg
    /// (test recall per class, head to tail) and learning-curve.svg.
    #[arg(long)]
    pub plot_dir: Option<std::path::PathBuf>,
}

/// One method's row of the table.
struct Row {
    method: String,
    report: Report,
    /// The epoch kept (chosen on the validation set).
    epoch: usize,
}

fn err(e: logit_adjust::Error) -> String {
    e.to_string()
}

/// Reports for each tau's post-hoc predictions of `logits` on `labels`.
fn evaluate(
    ctx: &Context,
    prior: &ClassPrior,
    taus: &[f64],
    logits: &[f32],
    labels: &[i64],
) -> Result<Vec<Report>, String> {
    let c = prior.classes();
    let predictions = ctx
        .posthoc(prior, taus)
        .map_err(err)?
        .predict(logits)
        .map_err(err)?;
    let counts = ctx.class_counts(labels, c, &predictions).map_err(err)?;
    (0..taus.len())
        .map(|t| counts.report(t, prior.counts()).map_err(err))
        .collect()
}

/// Train with early stopping on the validation set's balanced error;
/// returns the trainer holding the best evaluation's weights, and its run.
fn train(
    ctx: &Context,
    spec: &LossSpec,
    train: &Sample,
    val: &Sample,
    config: &TrainConfig,
) -> Result<(LinearTrainer, FitReport), String> {
    let mut trainer = LinearTrainer::new(
        ctx,
        spec,
        &train.features,
        &train.labels,
        train.dim,
        config.clone(),
    )
    .and_then(|t| t.with_validation(&val.features, &val.labels))
    .map_err(err)?;
    let report = trainer.fit(|_| {}).map_err(err)?;
    Ok((trainer, report))
}

fn kept(r: &FitReport) -> usize {
    r.best.map_or(r.epochs_run(), |b| b.0)
}

/// What the pictures of a problem need besides the table.
struct Extras {
    taus: Vec<f64>,
    /// ERM's post-hoc sweep on the validation set, and the tau it chose.
    val_reports: Vec<Report>,
    best: usize,
    /// The logit-adjusted loss's run.
    la_run: FitReport,
    counts: Vec<f64>,
}

/// Standardise all three sets by the training set's statistics.
fn standardise(sets: [&mut Sample; 3]) -> Result<(), String> {
    let s = Standardizer::fit(&sets[0].features, sets[0].dim).map_err(err)?;
    for set in sets {
        set.features = s.apply(&set.features).map_err(err)?;
    }
    Ok(())
}

/// Train every method on one problem; rows of the table.
fn run_problem(
    ctx: &Context,
    counts: &[usize],
    sets: (Sample, Sample, Sample),
    config: &TrainConfig,
    full: bool,
) -> Result<(Vec<Row>, Extras), String> {
    let (mut tr, mut val, mut test) = sets;
    standardise([&mut tr, &mut val, &mut test])?;
    let c = counts.len();
    let prior = ClassPrior::from_counts(&counts.iter().map(|&n| n as f64).collect::<Vec<_>>())
        .map_err(err)?;
    let mut rows = Vec::new();

    let (erm, erm_run) = train(ctx, &LossSpec::cross_entropy(c), &tr, &val, config)?;
    let erm_epoch = kept(&erm_run);
    let test_logits = erm.logits(&test.features).map_err(err)?;
    let val_logits = erm.logits(&val.features).map_err(err)?;
    let taus: Vec<f64> = (0..=12).map(|k| k as f64 * 0.25).collect();
    // tau chosen on a balanced validation set, reported on the test set.
    let val_reports = evaluate(ctx, &prior, &taus, &val_logits, &val.labels)?;
    let best = Select::BalancedError.best(&val_reports);
    let mut test_reports = evaluate(ctx, &prior, &taus, &test_logits, &test.labels)?;
    rows.push(Row {
        method: "ERM (cross-entropy)".into(),
        report: test_reports[0].clone(),
        epoch: erm_epoch,
    });
    rows.push(Row {
        method: "ERM + post-hoc, tau = 1".into(),
        report: test_reports[4].clone(),
        epoch: erm_epoch,
    });
    rows.push(Row {
        method: format!("ERM + post-hoc, tau = {} (val.)", taus[best]),
        report: test_reports.swap_remove(best),
        epoch: erm_epoch,
    });
    let mut la_run = None;

    let mut methods = vec![(
        "logit-adjusted loss, tau = 1",
        LossSpec::logit_adjusted(&prior, 1.0).map_err(err)?,
    )];
    if full {
        methods.push(("balanced loss", LossSpec::balanced(&prior)));
        methods.push(("LDAM", LossSpec::ldam(&prior)));
    }
    for (name, spec) in methods {
        let (model, run) = train(ctx, &spec, &tr, &val, config)?;
        let epoch = kept(&run);
        la_run.get_or_insert(run);
        let logits = model.logits(&test.features).map_err(err)?;
        let report = evaluate(ctx, &prior, &[0.0], &logits, &test.labels)?.remove(0);
        rows.push(Row {
            method: name.into(),
            report,
            epoch,
        });
    }
    let extras = Extras {
        taus,
        val_reports,
        best,
        la_run: la_run.unwrap_or(erm_run),
        counts: counts.iter().map(|&n| n as f64).collect(),
    };
    Ok((rows, extras))
}

/// `--plot-dir`: for the first problem, ERM's post-hoc sweep on the
/// validation set, the test recall per class of ERM, ERM + post-hoc and the
/// logit-adjusted loss, and the logit-adjusted loss's learning curve.
fn pictures(dir: &std::path::Path, rows: &[Row], x: &Extras, warmup: usize) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--plot-dir {}: {e}", dir.display()))?;
    let mut files = npy::Outputs::default();
    let path = dir.join("sweep.svg");
    let bytes = posthoc_report::sweep_picture(
        &path,
        "validation",
        &x.taus,
        &x.val_reports,
        x.best,
        "lowest balanced error on validation",
        ShotGroups::default(),
    )?;
    files.stage_bytes(&path, &bytes)?;
    let path = dir.join("classes.svg");
    let series: Vec<(String, &Report)> = [0, 2, 3]
        .iter()
        .map(|&k| (rows[k].method.clone(), &rows[k].report))
        .collect();
    let bytes = posthoc_report::classes_picture(&path, "the test set", &x.counts, &series)?;
    files.stage_bytes(&path, &bytes)?;
    let path = dir.join("learning-curve.svg");
    let curve = &x.la_run.curve;
    let loss: Vec<(f64, f64)> = curve
        .iter()
        .map(|e| (e.epoch as f64, e.loss as f64))
        .collect();
    let val = vec![(
        "validation balanced error".to_string(),
        curve
            .iter()
            .filter_map(|e| {
                e.validation_balanced_error
                    .map(|v| (e.epoch as f64, 100.0 * v))
            })
            .collect(),
    )];
    let bytes = LearningCurve {
        title: "the logit-adjusted loss (tau = 1): learning curve",
        loss: &loss,
        validation: &val,
        chosen: x
            .la_run
            .best
            .map(|(e, v)| (e, format!("kept: epoch {e} ({:.2}%)", 100.0 * v))),
        warmup: Some(warmup),
    }
    .render(&path)?;
    files.stage_bytes(&path, &bytes)?;
    files.commit()
}

fn print_rows(rows: &[Row], bayes: (&str, f64)) {
    let opt = |x: Option<f64>| x.map_or("     -".into(), |v| format!("{:>6.1}", 100.0 * v));
    println!(
        "  {:<42} {:>8} {:>7} {:>6} {:>6} {:>6} {:>6}",
        "method", "bal.err%", "worst%", "many%", "med.%", "few%", "epoch"
    );
    for r in rows {
        println!(
            "  {:<42} {:>8.2} {:>7.1} {} {} {} {:>6}",
            r.method,
            100.0 * r.report.balanced_error,
            100.0 * r.report.worst_class_recall,
            opt(r.report.many),
            opt(r.report.medium),
            opt(r.report.few),
            r.epoch
        );
    }
    println!("  {:<42} {:>8.2}", bayes.0, 100.0 * bayes.1);
}

pub fn run(args: &DemoArgs) -> Result<(), String> {
    let start = Instant::now();
    println!("logit-adjust demo: long-tail learning by logit adjustment (Menon et al., ICLR 2021), trained on the GPU");
    let ctx = Context::new().map_err(err)?;
    println!(
        "adapter: {} ({:?}); training linear classifiers with SGD on the GPU ...",
        ctx.info().name,
        ctx.info().backend
    );
    // Up to 60 epochs; the stopping point is chosen on the validation set.
    let config = TrainConfig {
        epochs: 60,
        batch_size: 256,
        lr: 0.1,
        patience: Some(10),
        ..TrainConfig::default()
    };

    // 1. Ten Gaussian classes, CIFAR-10-LT's profile (5000 ... 50, rho = 100).
    let (c, dim) = (10, 16);
    let mut rng = Rng::new(2021);
    let mixture = GaussianMixture::random(c, dim, 0.75, &mut rng);
    let counts = exponential_profile(c, 5000, 100.0);
    let sets = (
        mixture.sample(&counts, &mut rng),
        mixture.sample(&vec![200; c], &mut rng),
        mixture.sample(&vec![2000; c], &mut rng),
    );
    let test = sets.2.clone();
    let bayes_pred: Vec<u32> = test
        .features
        .chunks(dim)
        .map(|x| mixture.balanced_bayes(x) as u32)
        .collect();
    let bayes_counts = logit_adjust::reference::class_counts(
        &test.labels,
        c,
        &logit_adjust::Predictions {
            taus: vec![0.0],
            by_tau: vec![bayes_pred],
        },
    )
    .map_err(err)?;
    let bayes = bayes_counts.report(0, None).map_err(err)?.balanced_error;
    println!(
        "\n[1/2] 10-class Gaussian mixture in {dim} dimensions, exponential long tail rho = 100 ({} training rows), balanced test set of {} rows:",
        counts.iter().sum::<usize>(),
        test.labels.len()
    );
    let (rows, extras) = run_problem(&ctx, &counts, sets, &config, true)?;
    if let Some(dir) = &args.plot_dir {
        pictures(dir, &rows, &extras, config.warmup_epochs())?;
    }
    print_rows(&rows, ("Bayes-optimal (balanced), on the test set", bayes));
    let erm = rows[0].report.balanced_error;
    let la = rows[3].report.balanced_error;
    println!(
        "  logit adjustment cuts ERM's balanced error by {:.0}% (loss) and {:.0}% (post-hoc, tau = 1)",
        100.0 * (1.0 - la / erm),
        100.0 * (1.0 - rows[1].report.balanced_error / erm)
    );

    // 2. The paper's section 6.1: two Gaussians at +-(1, 1), P(y = +1) = 5%.
    let two = GaussianMixture {
        means: vec![vec![-1.0, -1.0], vec![1.0, 1.0]],
    };
    let counts = vec![9500, 500];
    let sets = (
        two.sample(&counts, &mut rng),
        two.sample(&[2000, 2000], &mut rng),
        two.sample(&[20_000, 20_000], &mut rng),
    );
    // The balanced-optimal separator is x1 + x2 = 0: error Phi(-sqrt 2).
    let bayes = normal_cdf(-std::f64::consts::SQRT_2);
    println!("\n[2/2] two Gaussians at +-(1, 1), identity covariance, P(y = +1) = 5% (10,000 training rows), balanced test set of 40,000 rows:");
    let (rows, _) = run_problem(&ctx, &counts, sets, &config, false)?;
    print_rows(&rows, ("Bayes-optimal (balanced), Phi(-sqrt 2)", bayes));
    println!(
        "  logit-adjusted loss: {:.2} points from the Bayes-optimal balanced error; ERM: {:.2}",
        100.0 * (rows[3].report.balanced_error - bayes),
        100.0 * (rows[0].report.balanced_error - bayes)
    );
    println!(
        "\n(bal.err: balanced error; worst: worst-class recall; many/med./few: mean recall of classes with >100 / 20-100 / <20 training rows;\n \
         epoch: the weights kept, those of the lowest balanced error on the validation set, with training stopped after {} evaluations\n \
         without improvement (at most {} epochs); post-hoc tau (val.) is chosen on the same validation set.)\n\
         done in {:.1} s on {} ({:?}, {})",
        config.patience.unwrap_or(0),
        config.epochs,
        start.elapsed().as_secs_f64(),
        ctx.info().name,
        ctx.info().backend,
        ctx.info().driver_info
    );
    Ok(())
}
