//! The tuning cache: its text round-trips, belongs to one adapter and
//! driver, and the choices it holds are the layouts `Auto` then uses, with
//! the same results as the reference.

mod common;

use common::{contexts, name, worst, Rng};
use logit_adjust::tuning::{LossChoice, PostHocChoice};
use logit_adjust::{reference, ClassPrior, LossSpec, PostHocVariant, Tuning, Variant};

fn sample() -> Tuning {
    Tuning {
        loss: vec![
            LossChoice {
                max_classes: 2000,
                variant: Variant::Split,
            },
            LossChoice {
                max_classes: usize::MAX,
                variant: Variant::Rows,
            },
        ],
        posthoc: vec![PostHocChoice {
            max_classes: usize::MAX,
            variant: PostHocVariant::RowPerGroup,
        }],
    }
}

#[test]
fn the_cache_text_round_trips_and_names_its_adapter() {
    for ctx in contexts() {
        let info = ctx.info();
        let text = sample().to_text(info);
        assert_eq!(Tuning::from_text(&text, info), Some(sample()));
        let mut other = info.clone();
        other.driver_info += " (another build)";
        assert_eq!(
            Tuning::from_text(&text, &other),
            None,
            "another driver's cache is not used"
        );
        let broken = text.replace("loss 2000 Split", "loss 2000 Split 64");
        assert_eq!(
            Tuning::from_text(&broken, info),
            None,
            "a bad line is refused"
        );
        let unknown = text.replace("Rows", "Warp");
        assert_eq!(Tuning::from_text(&unknown, info), None);
    }
}

#[test]
fn auto_follows_the_tuning_and_still_matches_the_reference() {
    for ctx in contexts() {
        let mut rng = Rng::fresh();
        let seed = rng.seed();
        let (n, c) = (37, 1000);
        let prior = ClassPrior::from_counts(&rng.counts(c, 100.0)).unwrap();
        let spec = LossSpec::logit_adjusted(&prior, 1.0).unwrap();
        let logits = rng.logits(n * c, 20.0);
        let labels = rng.labels(n, c, 0.1, -100);
        let want = reference::forward_backward(&spec, &logits, &labels).unwrap();

        ctx.set_tuning(Some(sample()));
        let op = ctx.softmax_xent(&spec).unwrap();
        assert_eq!(
            op.resolved_variant(n).unwrap(),
            Variant::Split,
            "{}",
            name(ctx)
        );
        let got = op.forward_backward(&logits, &labels).unwrap();
        let ph = ctx.posthoc(&prior, &[0.0, 1.0]).unwrap();
        assert_eq!(ph.resolved_variant(), PostHocVariant::RowPerGroup);
        let pred = ph.predict(&logits).unwrap();
        ctx.set_tuning(None);

        let bad = worst(
            got.grad.as_ref().unwrap(),
            want.grad.as_ref().unwrap(),
            |w| 1e-6 + 1e-4 * w.abs(),
        );
        assert!(bad.is_none(), "{} seed={seed}: gradient {bad:?}", name(ctx));
        assert_eq!(
            pred,
            reference::predict(&prior, &[0.0, 1.0], &logits).unwrap(),
            "{} seed={seed}",
            name(ctx)
        );
    }
}
