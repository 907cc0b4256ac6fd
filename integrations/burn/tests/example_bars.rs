//! The example's first bar as a test: 100 steps of burn's SGD with our loss
//! at tau = 0 give the weights burn's own cross-entropy gives, within 1e-4
//! (relative), from one initialisation and one batch order.

mod common;
#[path = "../examples/shared/mlp.rs"]
mod mlp;

use logit_adjust::LossSpec;
use logit_adjust_burn::LogitAdjustedLoss;
use mlp::{relative_difference, train, Mlp, Objective, Problem, Schedule};

#[test]
fn a_hundred_steps_at_tau_0_give_burns_cross_entropy_weights() {
    let seed = common::seed("a_hundred_steps_at_tau_0_give_burns_cross_entropy_weights");
    let problem = Problem::long_tailed(2021);
    for (backend, device) in common::devices() {
        let device = device.autodiff();
        let model = Mlp::new(problem.dim, 64, problem.classes, &device, seed);
        let schedule = Schedule {
            steps: 100,
            batch: 256,
            lr: 0.05,
            weight_decay: 0.0,
            seed,
        };
        let ours = Objective::Ours(
            LogitAdjustedLoss::new(&device, &LossSpec::cross_entropy(problem.classes)).unwrap(),
        );
        let a = train(model.clone(), &problem, &ours, schedule, &device).unwrap();
        let b = train(
            model.clone(),
            &problem,
            &Objective::BurnCrossEntropy,
            schedule,
            &device,
        )
        .unwrap();
        let start = relative_difference(&model.parameters(), &b.parameters());
        let diff = relative_difference(&a.parameters(), &b.parameters());
        assert!(
            start > 1e-2,
            "{backend} (seed {seed}): training moved the weights by only {start:.2e}"
        );
        assert!(
            diff <= 1e-4,
            "{backend} (seed {seed}): weights differ by {diff:.2e} after 100 steps"
        );
    }
}
