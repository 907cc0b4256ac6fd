//! What `posthoc` prints and draws: the sweep on the set that chose tau,
//! the evaluation set at the chosen tau (top-k, calibration, accuracy under
//! the test prior), and the pictures.

use logit_adjust::{prior_weighted_accuracy, Report, Select, ShotGroups, ECE_BINS};
use serde_json::{json, Value};

use crate::npy;
use crate::plot::{Classes, Picture, Sweep};
use crate::posthoc::{Outcome, PostHocArgs, TestPrior};

fn opt(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.4}"))
}

fn select_name(s: Select) -> &'static str {
    match s {
        Select::BalancedError => "balanced-error",
        Select::WorstClass => "worst-class",
        Select::Accuracy => "accuracy",
    }
}

fn row(tau: f64, r: &Report) -> Value {
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
}

fn test_prior_json(t: &Option<TestPrior>) -> Value {
    let Some(t) = t else { return Value::Null };
    let (source, em) = match t {
        TestPrior::File(_) => ("--test-prior", None),
        TestPrior::Counts(_) => ("--test-class-counts", None),
        TestPrior::Estimated(_, e) => ("EM on the evaluation logits", Some(e)),
    };
    json!({
        "source": source,
        "prior": t.prior().probabilities(),
        "iterations": em.map(|e| e.iterations),
        "converged": em.map(|e| e.converged),
    })
}

/// The weighted accuracy under the test prior, where there is one.
fn weighted(o: &Outcome) -> Option<f64> {
    o.test_prior
        .as_ref()
        .and_then(|t| prior_weighted_accuracy(&o.test, t.prior().probabilities()))
}

fn to_json(o: &Outcome) -> Value {
    let tau = o.taus[o.chosen];
    let sweep: Vec<Value> = o
        .taus
        .iter()
        .zip(&o.sweep)
        .map(|(&t, r)| row(t, r))
        .collect();
    let mut test = row(tau, &o.test);
    test["top_k_accuracy"] = json!(o.top_k);
    test["ece"] = json!(o.ece);
    test["ece_bins"] = json!(ECE_BINS);
    test["prior_weighted_accuracy"] = json!(weighted(o));
    let (results, validation, chosen_on) = match o.validation_rows {
        Some(v) => (
            vec![row(tau, &o.test)],
            json!({ "n": v, "results": sweep }),
            "validation",
        ),
        None => (
            sweep,
            Value::Null,
            "evaluation set (no validation set: tau is tuned on the set it is reported on)",
        ),
    };
    let (adapter, backend) = &o.device;
    json!({
        "adapter": adapter,
        "backend": backend,
        "n": o.n,
        "c": o.c,
        "results": results,
        "best_tau": tau,
        "chosen_tau": tau,
        "chosen_on": chosen_on,
        "select": select_name(o.select),
        "validation": validation,
        "test": test,
        "test_prior": test_prior_json(&o.test_prior),
        "weighted_to_test_prior": if weighted(o).is_some() { json!(["prior_weighted_accuracy"]) } else { json!([]) },
        "shot_groups": { "many_above": o.groups.many, "few_below": o.groups.few },
    })
}

pub fn print(a: &PostHocArgs, o: &Outcome) {
    if a.json {
        println!("{}", to_json(o));
        return;
    }
    let tau = o.taus[o.chosen];
    let on = match o.validation_rows {
        Some(v) => format!("validation set ({v} rows)"),
        None => format!("evaluation set ({} rows)", o.n),
    };
    println!("sweep on the {on}:");
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "tau", "accuracy", "bal.err", "worst", "many", "medium", "few"
    );
    for (t, r) in o.taus.iter().zip(&o.sweep) {
        println!(
            "{t:>8.4} {:>9.4} {:>9.4} {:>9.4} {:>8} {:>8} {:>8}",
            r.accuracy,
            r.balanced_error,
            r.worst_class_recall,
            opt(r.many),
            opt(r.medium),
            opt(r.few)
        );
    }
    println!(
        "chosen tau: {tau} (by --select {} on the {on})",
        select_name(o.select)
    );
    if o.validation_rows.is_none() {
        println!("(no validation set: this tau is tuned on the set it is reported on; pass --val-logits and --val-labels)");
    }
    if let Some(t) = &o.test_prior {
        let what = match t {
            TestPrior::File(_) => "from --test-prior".to_string(),
            TestPrior::Counts(_) => "from --test-class-counts".to_string(),
            TestPrior::Estimated(_, e) => format!(
                "estimated by EM from the evaluation logits in {} iterations{}",
                e.iterations,
                if e.converged { "" } else { " (not converged)" }
            ),
        };
        let p: Vec<String> = t
            .prior()
            .probabilities()
            .iter()
            .map(|p| format!("{p:.4}"))
            .collect();
        println!("test prior {what}: [{}]", p.join(", "));
    }
    let r = &o.test;
    println!(
        "evaluation set ({} rows) at tau {tau}: accuracy {:.4}  balanced error {:.4}  worst-class recall {:.4}  many {}  medium {}  few {}",
        o.n, r.accuracy, r.balanced_error, r.worst_class_recall, opt(r.many), opt(r.medium), opt(r.few)
    );
    let top: Vec<String> = o
        .top_k
        .iter()
        .enumerate()
        .map(|(k, v)| format!("top-{} {v:.4}", k + 1))
        .collect();
    println!("  {}  ECE ({ECE_BINS} bins) {:.4}", top.join("  "), o.ece);
    if let Some(w) = weighted(o) {
        println!("  accuracy weighted to the test prior: {w:.4}");
    }
    let (adapter, backend) = &o.device;
    println!("N = {}, C = {}, on {adapter} ({backend})", o.n, o.c);
    if o.train_counts.is_none() {
        println!("(many/medium/few need training counts: pass --class-counts or --train-labels)");
    }
}

fn pct(v: Option<f64>) -> Option<f64> {
    v.map(|x| 100.0 * x)
}

/// The pictures asked for, staged with the other outputs.
pub fn pictures(a: &PostHocArgs, o: &Outcome, files: &mut npy::Outputs) -> Result<(), String> {
    let tau = o.taus[o.chosen];
    let on = if o.validation_rows.is_some() {
        "validation"
    } else {
        "evaluation"
    };
    if let Some(path) = &a.plot {
        let how = format!("by {}", select_name(o.select));
        let bytes = sweep_picture(path, on, &o.taus, &o.sweep, o.chosen, &how, o.groups)?;
        files.stage_bytes(path, &bytes)?;
    }
    if let (Some(path), Some(counts)) = (&a.plot_classes, &o.train_counts) {
        let mut series = Vec::new();
        if let Some(zero) = &o.test_at_zero {
            series.push(("tau = 0 (uncorrected)".to_string(), zero));
        }
        if tau != 0.0 || o.test_at_zero.is_none() {
            series.push((format!("tau = {tau} (chosen)"), &o.test));
        }
        let bytes = classes_picture(path, "the evaluation set", counts, &series)?;
        files.stage_bytes(path, &bytes)?;
    }
    Ok(())
}

/// The sweep on the `on` set: balanced error, worst-class and shot-group
/// recall against tau, `chosen` marked (`how` it was chosen).
pub fn sweep_picture(
    path: &std::path::Path,
    on: &str,
    taus: &[f64],
    reports: &[Report],
    chosen: usize,
    how: &str,
    groups: ShotGroups,
) -> Result<Vec<u8>, String> {
    let curve = |name: &str, f: &dyn Fn(&Report) -> Option<f64>| {
        (
            name.to_string(),
            reports.iter().map(|r| pct(f(r))).collect::<Vec<_>>(),
        )
    };
    let curves = vec![
        curve("balanced error", &|r| Some(r.balanced_error)),
        curve("worst-class recall", &|r| Some(r.worst_class_recall)),
        curve(
            &format!("many-shot recall (> {} examples)", groups.many),
            &|r| r.many,
        ),
        curve("medium-shot recall", &|r| r.medium),
        curve(
            &format!("few-shot recall (< {} examples)", groups.few),
            &|r| r.few,
        ),
    ];
    let title = format!("post-hoc correction: the tau sweep on the {on} set");
    let tau = taus[chosen];
    Sweep {
        title: &title,
        curves: &curves,
        taus,
        chosen: (tau, format!("chosen tau = {tau} ({how})")),
    }
    .render(path)
}

/// Per-class recall on the `on` set from head to tail (classes sorted by
/// `counts`, most first), one line per `(name, report)`.
pub fn classes_picture(
    path: &std::path::Path,
    on: &str,
    counts: &[f64],
    series: &[(String, &Report)],
) -> Result<Vec<u8>, String> {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&x, &y| counts[y].total_cmp(&counts[x]));
    let recalls: Vec<(String, Vec<Option<f64>>)> = series
        .iter()
        .map(|(name, r)| {
            (
                name.clone(),
                order.iter().map(|&k| pct(r.per_class_recall[k])).collect(),
            )
        })
        .collect();
    let sorted: Vec<f64> = order.iter().map(|&k| counts[k]).collect();
    let title = format!("per-class recall on {on}, head to tail");
    Classes {
        title: &title,
        counts: &sorted,
        recalls: &recalls,
    }
    .render(path)
}
