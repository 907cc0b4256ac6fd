//! Long-tailed data as the literature builds it (docs/MATH.md section 8), for
//! the demo, the tests and the examples: class-size profiles and Gaussian
//! mixtures whose Bayes-optimal rules are known.

/// `n_c = floor(n_max * rho^(-c/(C-1)))`: CIFAR-10-LT at `rho = 100` has
/// 12,406 images (5000 ... 50).
pub fn exponential_profile(classes: usize, n_max: usize, rho: f64) -> Vec<usize> {
    (0..classes)
        .map(|c| {
            let t = if classes > 1 {
                c as f64 / (classes - 1) as f64
            } else {
                0.0
            };
            (n_max as f64 * rho.powf(-t)).floor() as usize
        })
        .collect()
}

/// Half the classes `n_max`, half `n_max / rho`.
pub fn step_profile(classes: usize, n_max: usize, rho: f64) -> Vec<usize> {
    (0..classes)
        .map(|c| {
            if c < classes / 2 {
                n_max
            } else {
                (n_max as f64 / rho).floor() as usize
            }
        })
        .collect()
}

/// A seedable SplitMix64 generator with normal draws.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(f64::MIN_POSITIVE);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Classes `N(mu_c, I)` in `dim` dimensions. With a shared identity
/// covariance the Bayes-optimal balanced rule is linear:
/// `argmin_c |x - mu_c|^2`.
#[derive(Debug, Clone)]
pub struct GaussianMixture {
    /// `mu_c`, one per class.
    pub means: Vec<Vec<f64>>,
}

/// A labelled sample: `N x D` features, row-major, and `N` labels.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Features, `N x D`.
    pub features: Vec<f32>,
    /// Labels in `[0, C)`.
    pub labels: Vec<i64>,
    /// `D`.
    pub dim: usize,
}

impl GaussianMixture {
    /// `classes` means drawn `N(0, spread^2 I)` in `dim` dimensions.
    pub fn random(classes: usize, dim: usize, spread: f64, rng: &mut Rng) -> Self {
        Self {
            means: (0..classes)
                .map(|_| (0..dim).map(|_| spread * rng.normal()).collect())
                .collect(),
        }
    }

    /// `counts[c]` draws of each class, shuffled.
    pub fn sample(&self, counts: &[usize], rng: &mut Rng) -> Sample {
        let dim = self.means.first().map_or(0, Vec::len);
        let mut labels: Vec<i64> = counts
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c as i64, n))
            .collect();
        for i in (1..labels.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            labels.swap(i, j);
        }
        let features = labels
            .iter()
            .flat_map(|&y| {
                self.means[y as usize]
                    .iter()
                    .map(|m| (m + rng.normal()) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        Sample {
            features,
            labels,
            dim,
        }
    }

    /// The logits of the Bayes posterior under the class prior `prior`:
    /// `f_c(x) = log p(x | c) + log pi_c` up to a constant per row,
    /// `-|x - mu_c|^2 / 2 + log pi_c`, for `N x D` features (`N x C`). Their
    /// softmax is the true posterior, for checks that need one.
    pub fn bayes_logits(&self, features: &[f32], prior: &[f64]) -> Vec<f32> {
        let dim = self.means.first().map_or(1, Vec::len).max(1);
        features
            .chunks(dim)
            .flat_map(|x| {
                self.means.iter().zip(prior).map(move |(m, p)| {
                    let d2: f64 = m.iter().zip(x).map(|(a, &b)| (a - b as f64).powi(2)).sum();
                    (-0.5 * d2 + p.ln()) as f32
                })
            })
            .collect()
    }

    /// The Bayes-optimal balanced prediction, `argmin_c |x - mu_c|^2`.
    pub fn balanced_bayes(&self, x: &[f32]) -> usize {
        let dist = |m: &Vec<f64>| {
            m.iter()
                .zip(x)
                .map(|(a, &b)| (a - b as f64).powi(2))
                .sum::<f64>()
        };
        (0..self.means.len())
            .min_by(|&a, &b| dist(&self.means[a]).total_cmp(&dist(&self.means[b])))
            .unwrap_or(0)
    }
}

/// The standard normal CDF (Abramowitz-Stegun 7.1.26 on erf, |error| < 1.5e-7).
pub fn normal_cdf(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + erf)
    } else {
        0.5 * (1.0 - erf)
    }
}
