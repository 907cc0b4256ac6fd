//! A cell's inputs, from its shape class and a seed, and what the f64
//! reference says its outputs must be, with the tolerance of each.

use super::{Dtype, Op, ShapeClass};
use crate::error::Result;
use crate::synthetic::Rng;
use crate::{reference, ClassPrior, LossSpec, Predictions, Reduction};

/// The ignore index of every case.
pub const IGNORE_INDEX: i64 = -100;

/// The taus of the post-hoc cells.
pub const TAUS: [f64; 3] = [0.0, 1.0, 2.0];

/// The `k` of the top-k cells.
pub const TOP_K: usize = 5;

/// A cell's inputs.
#[derive(Debug, Clone)]
pub struct Case {
    /// `N`.
    pub rows: usize,
    /// `C`.
    pub classes: usize,
    /// The training prior (long-tailed; one class at 1e-30 in the extreme class).
    pub prior: ClassPrior,
    /// The loss: logit-adjusted at tau = 1, mean reduction, ignore index -100.
    pub spec: LossSpec,
    /// `N x C` logits: values of `dtype`, widened (exactly) to f32, so
    /// that the reference sees what the kernels read.
    pub logits: Vec<f32>,
    /// The logits' format on the device.
    pub dtype: Dtype,
    /// `N` labels (the ignore index among them in the ignored class).
    pub labels: Vec<i64>,
    /// The largest |adjusted logit| of an extreme case, which bounds the
    /// f32 rounding the tolerances allow for.
    pub max_z: Option<f64>,
}

impl Case {
    /// The inputs of `shape` for `seed`, the logits rounded to `dtype`.
    pub fn new(shape: ShapeClass, quick: bool, seed: u64, dtype: Dtype) -> Result<Self> {
        let (n, c) = shape.dims(quick);
        let mut rng = Rng::new(seed ^ (n as u64) << 20 ^ c as u64);
        let extreme = shape == ShapeClass::Extreme;
        let prior = if extreme {
            let mut p: Vec<f64> = (0..c).map(|_| 0.5 + 0.5 * rng.uniform()).collect();
            p[(rng.next_u64() % c as u64) as usize] = 1e-30;
            ClassPrior::from_probabilities(&p)?
        } else {
            let counts: Vec<f64> = (0..c)
                .map(|k| (1000.0 * 100f64.powf(-(k as f64) / c as f64)).max(1.0))
                .collect();
            ClassPrior::from_counts(&counts)?
        };
        let spec = LossSpec::logit_adjusted(&prior, 1.0)?
            .with_reduction(Reduction::Mean)
            .with_ignore_index(IGNORE_INDEX);
        let scale = if extreme { 1e4 } else { 8.0 };
        let mut logits: Vec<f32> = (0..n * c)
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * scale) as f32)
            .collect();
        if extreme && n >= 2 {
            logits[..c].fill(1e4);
            logits[c..2 * c].fill(-1e4);
        }
        for x in &mut logits {
            *x = match dtype {
                Dtype::F32 => *x,
                Dtype::F16 => half::f16::from_f32(*x).to_f32(),
                Dtype::Bf16 => half::bf16::from_f32(*x).to_f32(),
            };
        }
        let labels = (0..n)
            .map(|i| {
                let ignored = shape == ShapeClass::Ignored && (i == 0 || rng.uniform() < 1.0 / 3.0);
                if ignored {
                    IGNORE_INDEX
                } else {
                    (rng.next_u64() % c as u64) as i64
                }
            })
            .collect();
        Ok(Self {
            rows: n,
            classes: c,
            prior,
            spec,
            logits,
            dtype,
            labels,
            max_z: extreme.then(|| 1e4 + 1e-30f64.ln().abs() + 1.0),
        })
    }

    /// The logits as the device holds them, in `dtype`.
    pub fn logits_bytes(&self) -> Vec<u8> {
        let halves = |bits: &dyn Fn(f32) -> u16| -> Vec<u8> {
            let v: Vec<u16> = self.logits.iter().map(|&x| bits(x)).collect();
            bytemuck::cast_slice(&v).to_vec()
        };
        match self.dtype {
            Dtype::F32 => bytemuck::cast_slice(&self.logits).to_vec(),
            Dtype::F16 => halves(&|x| half::f16::from_f32(x).to_bits()),
            Dtype::Bf16 => halves(&|x| half::bf16::from_f32(x).to_bits()),
        }
    }

    /// The labels the counts take: in `[0, C)` (an ignored label becomes
    /// its row's index modulo C).
    pub fn count_labels(&self) -> Vec<i64> {
        self.labels
            .iter()
            .enumerate()
            .map(|(i, &y)| if y < 0 { (i % self.classes) as i64 } else { y })
            .collect()
    }

    /// The reference predictions for [`TAUS`] (the counts' input).
    pub fn predictions(&self) -> Result<Predictions> {
        reference::predict(&self.prior, &TAUS, &self.logits)
    }

    /// Rows whose label is the ignore index.
    fn ignored_rows(&self) -> Vec<usize> {
        (0..self.rows)
            .filter(|&i| self.labels[i] == IGNORE_INDEX)
            .collect()
    }
}

/// Reference values of one output.
#[derive(Debug, Clone)]
pub enum Expected {
    /// f32 outputs, compared within the tolerance.
    F32(Vec<f64>),
    /// u32 outputs, compared for equality.
    U32(Vec<u32>),
}

/// One output of a cell and how it is judged.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The output's name (a tensor of the cell).
    pub output: &'static str,
    /// The reference values.
    pub values: Expected,
    /// `|got - ref| <= abs + rel * |ref|` (f32 outputs).
    pub abs: f64,
    /// See `abs`.
    pub rel: f64,
    /// Rows (of `row_len` elements) that must be exactly zero: the
    /// gradient of an ignored label.
    pub exact_rows: Vec<usize>,
    /// Elements per row of this output.
    pub row_len: usize,
    /// The element format of an `F32` output as the device writes it (a
    /// gradient of half logits is in their format).
    pub dtype: Dtype,
}

impl Expect {
    fn f32(output: &'static str, values: Vec<f64>, abs: f64, rel: f64) -> Self {
        Self {
            output,
            values: Expected::F32(values),
            abs,
            rel,
            exact_rows: Vec::new(),
            row_len: 1,
            dtype: Dtype::F32,
        }
    }

    fn u32(output: &'static str, values: Vec<u32>) -> Self {
        Self {
            output,
            values: Expected::U32(values),
            abs: 0.0,
            rel: 0.0,
            exact_rows: Vec::new(),
            row_len: 1,
            dtype: Dtype::F32,
        }
    }

    /// The tolerance in words, for reports.
    pub fn tolerance(&self) -> String {
        match self.values {
            Expected::U32(_) => "exact".into(),
            Expected::F32(_) if self.abs == 0.0 && self.rel == 0.0 => "exact".into(),
            Expected::F32(_) => format!("{:.1e}+{:.0e}|ref|", self.abs, self.rel),
        }
    }
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// What `op` must produce on `case`: the tolerances of the test suite
/// (loss values `1e-5 (1 + |ref|)`; the gradient `1e-6 + 1e-5 max|g|`, plus
/// the f32 rounding of an extreme case's adjusted logits, plus, from saved
/// log-sum-exps, a few ulps of the LSE carried into every `p_c`; a
/// gradient in a half format one unit in its last place more, `2^-10` of
/// the value for f16 and `2^-7` for bf16).
pub fn expectations(op: Op, case: &Case) -> Result<Vec<Expect>> {
    let extreme = case.max_z.unwrap_or(0.0);
    let loss_abs = 1e-5 + 1e-6 * extreme;
    let grad_tol = |g: &[f64]| {
        let scale = max_abs(g);
        1e-6 + 1e-5 * scale + 1e-6 * extreme * scale
    };
    let ulp = match case.dtype {
        Dtype::F32 => 0.0,
        Dtype::F16 => 2f64.powi(-10),
        Dtype::Bf16 => 2f64.powi(-7),
    };
    let grad_expect = |g: Vec<f64>, abs: f64| Expect {
        exact_rows: case.ignored_rows(),
        row_len: case.classes,
        dtype: case.dtype,
        ..Expect::f32("grad", g, abs, ulp)
    };
    Ok(match op {
        Op::Forward | Op::Fused => {
            let want = reference::forward_backward(&case.spec, &case.logits, &case.labels)?;
            let mut out = vec![
                Expect::f32("loss", vec![want.loss.unwrap_or(0.0)], loss_abs, 1e-5),
                Expect::f32("row_loss", want.per_row, loss_abs, 1e-5),
                Expect::f32("lse", want.lse, loss_abs, 1e-5),
            ];
            if op == Op::Fused {
                let g = want.grad.unwrap_or_default();
                let abs = grad_tol(&g);
                out.push(grad_expect(g, abs));
            }
            out
        }
        Op::Backward => {
            let want = reference::forward_backward(&case.spec, &case.logits, &case.labels)?;
            let g = want.grad.unwrap_or_default();
            let abs = grad_tol(&g) + 4e-7 * max_abs(&want.lse) * max_abs(&g);
            vec![grad_expect(g, abs)]
        }
        Op::Argmax => {
            let p = case.predictions()?;
            let t = TAUS.len();
            let rows = (0..case.rows * t).map(|e| p.by_tau[e % t][e / t]).collect();
            vec![Expect {
                row_len: t,
                ..Expect::u32("pred", rows)
            }]
        }
        Op::Corrected => {
            let c = reference::corrected(&case.prior, TAUS[1], &case.logits)?;
            vec![Expect {
                row_len: case.classes,
                ..Expect::f32(
                    "corrected",
                    c.iter().map(|&x| f64::from(x)).collect(),
                    0.0,
                    0.0,
                )
            }]
        }
        Op::TopK => {
            let k = TOP_K.min(case.classes);
            vec![Expect {
                row_len: k,
                ..Expect::u32(
                    "topk",
                    reference::top_k(&case.prior, TAUS[1], &case.logits, k)?,
                )
            }]
        }
        Op::Counts => {
            let labels = case.count_labels();
            let counts = reference::class_counts(&labels, case.classes, &case.predictions()?)?;
            let mut raw: Vec<u32> = counts.total.iter().map(|&x| x as u32).collect();
            for k in &counts.correct {
                raw.extend(k.iter().map(|&x| x as u32));
            }
            raw.push(0); // invalid labels
            vec![Expect::u32("counts", raw)]
        }
    })
}
