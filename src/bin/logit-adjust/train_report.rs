//! What `train` reports once the model is chosen: the test metrics of the
//! chosen run only, the validation figures of every run, the learning
//! curve, and the files asked for (written together or not at all).

use logit_adjust::{
    ClassPrior, Context, FitReport, LinearTrainer, Report, Select, ShotGroups, TrainConfig,
};
use serde_json::{json, Value};

use crate::plot::{LearningCurve, Picture};
use crate::train::{read_test, Data, TrainArgs};
use crate::{npy, posthoc_report};

/// One trained model.
pub struct Run {
    pub tau: f64,
    pub trainer: LinearTrainer,
    pub report: FitReport,
}

/// Every run and the one chosen on validation.
pub struct Selection {
    pub runs: Vec<Run>,
    pub chosen: usize,
    /// Training counts per class (of the rows trained on).
    pub counts: Vec<f64>,
    pub config: TrainConfig,
}

fn err(e: logit_adjust::Error) -> String {
    e.to_string()
}

/// The kept epoch of a run: the best evaluation's, or the last.
fn kept_epoch(r: &FitReport) -> usize {
    r.best.map_or(r.epochs_run(), |b| b.0)
}

/// The training loss of the kept epoch.
fn kept_loss(r: &FitReport) -> f32 {
    r.curve
        .get(kept_epoch(r).saturating_sub(1))
        .map_or(f32::NAN, |e| e.loss)
}

fn curve_json(r: &FitReport) -> Value {
    Value::Array(
        r.curve
            .iter()
            .map(|e| {
                json!({
                    "epoch": e.epoch,
                    "loss": e.loss,
                    "validation_balanced_error": e.validation_balanced_error,
                })
            })
            .collect(),
    )
}

/// Test metrics of the chosen run, the files, and the printout.
pub fn finish(a: &TrainArgs, ctx: &Context, data: &Data, s: &Selection) -> Result<(), String> {
    let run = &s.runs[s.chosen];
    let (xt, yt) = read_test(a, data)?;
    let c = data.c;
    let m = yt.len();
    let logits = run.trainer.logits(&xt).map_err(err)?;
    let uniform = ClassPrior::from_probabilities(&vec![1.0; c]).map_err(err)?;
    let predictions = ctx
        .posthoc(&uniform, &[0.0])
        .map_err(err)?
        .predict(&logits)
        .map_err(err)?;
    let report = ctx
        .class_counts(&yt, c, &predictions)
        .map_err(err)?
        .report(0, Some(&s.counts))
        .map_err(err)?;

    let mut files = npy::Outputs::default();
    if let Some(path) = &a.out_logits {
        files.stage(path, &[m as u64, c as u64], &logits)?;
    }
    if let (Some(path), Some(split)) = (&a.out_split, &data.split) {
        let rows: Vec<i64> = split.validation.iter().map(|&i| i as i64).collect();
        files.stage(path, &[rows.len() as u64], &rows)?;
    }
    if let Some(path) = &a.plot {
        files.stage_bytes(path, &plot(a, s, path)?)?;
    }
    if let (Some(path), Some((vx, _))) = (&a.out_val_logits, &data.validation) {
        let val = run.trainer.logits(vx).map_err(err)?;
        files.stage(path, &[(val.len() / c) as u64, c as u64], &val)?;
    }
    if let Some(dir) = &a.plot_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("--plot-dir {}: {e}", dir.display()))?;
        plot_dir(a, ctx, data, s, dir, (&logits, &yt), &mut files)?;
    }
    files.commit()?;
    if a.json {
        println!("{}", summary_json(a, ctx, data, s, &report, m));
    } else {
        print_text(a, ctx, data, s, &report, m);
    }
    Ok(())
}

/// The pictures `--plot-dir` writes.
pub const PICTURES: [&str; 3] = ["learning-curve.svg", "sweep.svg", "classes.svg"];

/// `--plot-dir`: the learning curve, the kept model's post-hoc sweep (on
/// validation when there is one) and the test recall per class at tau = 0
/// and at the sweep's tau.
fn plot_dir(
    a: &TrainArgs,
    ctx: &Context,
    data: &Data,
    s: &Selection,
    dir: &std::path::Path,
    test: (&[f32], &[i64]),
    files: &mut npy::Outputs,
) -> Result<(), String> {
    let run = &s.runs[s.chosen];
    let c = data.c;
    let path = dir.join(PICTURES[0]);
    files.stage_bytes(&path, &plot(a, s, &path)?)?;
    let smoothing = if s.counts.contains(&0.0) { 1.0 } else { 0.0 };
    let prior = ClassPrior::from_counts_smoothed(&s.counts, smoothing).map_err(err)?;
    let taus: Vec<f64> = (0..=8).map(|k| k as f64 * 0.25).collect();
    let reports = |logits: &[f32], labels: &[i64], taus: &[f64]| -> Result<Vec<Report>, String> {
        let p = ctx
            .posthoc(&prior, taus)
            .map_err(err)?
            .predict(logits)
            .map_err(err)?;
        let counts = ctx.class_counts(labels, c, &p).map_err(err)?;
        (0..taus.len())
            .map(|t| counts.report(t, Some(&s.counts)).map_err(err))
            .collect()
    };
    let (on, sweep) = match &data.validation {
        Some((vx, vy)) => {
            let logits = run.trainer.logits(vx).map_err(err)?;
            ("validation", reports(&logits, vy, &taus)?)
        }
        None => ("test", reports(test.0, test.1, &taus)?),
    };
    let chosen = Select::BalancedError.best(&sweep);
    let path = dir.join(PICTURES[1]);
    let how = format!("lowest balanced error on {on}");
    let bytes = posthoc_report::sweep_picture(
        &path,
        on,
        &taus,
        &sweep,
        chosen,
        &how,
        ShotGroups::default(),
    )?;
    files.stage_bytes(&path, &bytes)?;
    let at = reports(test.0, test.1, &[0.0, taus[chosen]])?;
    let mut series = vec![(format!("trained with --loss {}", a.loss), &at[0])];
    if chosen != 0 {
        series.push((format!("+ post-hoc tau = {}", taus[chosen]), &at[1]));
    }
    let path = dir.join(PICTURES[2]);
    let bytes = posthoc_report::classes_picture(&path, "the test set", &s.counts, &series)?;
    files.stage_bytes(&path, &bytes)
}

fn plot(a: &TrainArgs, s: &Selection, path: &std::path::Path) -> Result<Vec<u8>, String> {
    let run = &s.runs[s.chosen];
    let loss: Vec<(f64, f64)> = run
        .report
        .curve
        .iter()
        .map(|e| (e.epoch as f64, e.loss as f64))
        .collect();
    let several = s.runs.len() > 1;
    let validation: Vec<(String, Vec<(f64, f64)>)> = s
        .runs
        .iter()
        .filter(|r| r.report.best.is_some())
        .map(|r| {
            let name = if several {
                format!("validation balanced error, tau {}", r.tau)
            } else {
                "validation balanced error".to_string()
            };
            let points = r
                .report
                .curve
                .iter()
                .filter_map(|e| {
                    e.validation_balanced_error
                        .map(|v| (e.epoch as f64, 100.0 * v))
                })
                .collect();
            (name, points)
        })
        .collect();
    let chosen = run.report.best.map(|(epoch, e)| {
        let tau = if several {
            format!(", tau {}", run.tau)
        } else {
            String::new()
        };
        (
            epoch,
            format!("kept: epoch {epoch}{tau} ({:.2}%)", 100.0 * e),
        )
    });
    let title = format!("train --loss {}: learning curve", a.loss);
    let warmup = (!validation.is_empty()).then(|| s.config.warmup_epochs());
    LearningCurve {
        title: &title,
        loss: &loss,
        validation: &validation,
        chosen,
        warmup,
    }
    .render(path)
}

fn validation_json(a: &TrainArgs, data: &Data) -> Value {
    let Some((_, vy)) = &data.validation else {
        return Value::Null;
    };
    let source = if a.val_fraction.is_some() {
        "stratified split of the training files"
    } else {
        "validation files"
    };
    json!({
        "source": source,
        "fraction": a.val_fraction,
        "rows": vy.len(),
        "training_rows": data.y.len(),
        "unsplit_classes": data.split.as_ref().map(|s| s.unsplit_classes.clone()),
    })
}

fn summary_json(
    a: &TrainArgs,
    ctx: &Context,
    data: &Data,
    s: &Selection,
    report: &Report,
    m: usize,
) -> Value {
    let run = &s.runs[s.chosen];
    let taus: Vec<Value> = s
        .runs
        .iter()
        .map(|r| {
            json!({
                "tau": r.tau,
                "validation_balanced_error": r.report.best.map(|b| b.1),
                "chosen_epoch": kept_epoch(&r.report),
                "epochs_run": r.report.epochs_run(),
                "stopped_early": r.report.stopped_early,
                "curve": curve_json(&r.report),
            })
        })
        .collect();
    json!({
        "loss": kept_loss(&run.report),
        "loss_name": a.loss,
        "tau": run.tau,
        "chosen_tau": run.tau,
        "chosen_epoch": kept_epoch(&run.report),
        "chosen_on": if data.validation.is_some() { "validation balanced error" } else { "last epoch" },
        "epochs": s.config.epochs,
        "logits": s.config.logits.name(),
        "epochs_run": run.report.epochs_run(),
        "stopped_early": run.report.stopped_early,
        "early_stop": a.early_stop,
        "eval_every": a.eval_every,
        "validation": validation_json(a, data),
        "validation_balanced_error": run.report.best.map(|b| b.1),
        "curve": curve_json(&run.report),
        "taus": taus,
        "accuracy": report.accuracy,
        "balanced_error": report.balanced_error,
        "worst_class_recall": report.worst_class_recall,
        "many": report.many,
        "medium": report.medium,
        "few": report.few,
        "per_class_recall": report.per_class_recall,
        "n_train": data.y.len(),
        "n_test": m,
        "c": data.c,
        "d": data.d,
        "adapter": ctx.info().name,
        "backend": format!("{:?}", ctx.info().backend),
    })
}

fn print_text(a: &TrainArgs, ctx: &Context, data: &Data, s: &Selection, report: &Report, m: usize) {
    let run = &s.runs[s.chosen];
    let (n, d, c) = (data.y.len(), data.d, data.c);
    if let Some((_, vy)) = &data.validation {
        match (&data.split, a.val_fraction) {
            (Some(split), Some(f)) => {
                print!("validation: {f} of each class held out (stratified, seed {}): {n} training rows, {} validation rows", a.seed, vy.len());
                match split.unsplit_classes.as_slice() {
                    [] => println!(),
                    classes => println!(
                        "; class{} {classes:?} {} a single row and stay{} in training only",
                        if classes.len() > 1 { "es" } else { "" },
                        if classes.len() > 1 { "have" } else { "has" },
                        if classes.len() > 1 { "" } else { "s" },
                    ),
                }
            }
            _ => println!("validation: {} rows from --val-features", vy.len()),
        }
    }
    if s.runs.len() > 1 {
        println!("  tau   val. bal. err   kept epoch   epochs run");
        for (k, r) in s.runs.iter().enumerate() {
            println!(
                "  {:<5} {:>13.4}   {:>10}   {:>10}{}",
                r.tau,
                r.report.best.map_or(f64::NAN, |b| b.1),
                kept_epoch(&r.report),
                r.report.epochs_run(),
                if k == s.chosen { "   <- chosen" } else { "" }
            );
        }
    }
    let r = &run.report;
    let how = match r.best {
        Some((epoch, e)) => format!(
            "; kept epoch {epoch}, the lowest validation balanced error ({e:.4}){}",
            if r.stopped_early {
                format!(
                    ", stopped early after {} evaluations without improvement",
                    a.early_stop.unwrap_or(0)
                )
            } else {
                String::new()
            }
        ),
        None => String::new(),
    };
    let tau = if s.runs.len() > 1 || a.taus.is_some() {
        format!(" (tau {} chosen on validation)", run.tau)
    } else {
        String::new()
    };
    println!(
        "trained {} of {} epochs with --loss {}{tau} on {n} x {d}, {c} classes{how}; training loss {:.4} at the kept epoch",
        r.epochs_run(),
        s.config.epochs,
        a.loss,
        kept_loss(r)
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
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
}
