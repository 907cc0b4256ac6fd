//! A stratified hold-out split: a validation set carved out of a training
//! set class by class, so that a long tail's rare classes are on both sides.
//!
//! Class `c` with `n_c` rows gives `clamp(round(fraction * n_c), 1, n_c - 1)`
//! rows to validation: every class with at least 2 rows is on both sides,
//! and a class with a single row stays in training (the split lists it).
//! Which rows go is a seeded shuffle within each class; both index lists are
//! in the original row order, so the split is a pure function of the labels,
//! the fraction and the seed.

use crate::error::{Error, Result};
use crate::metrics::check_labels;
use crate::synthetic::Rng;

/// A stratified split of a labelled set's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Rows that stay in training, ascending.
    pub train: Vec<usize>,
    /// Rows held out for validation, ascending.
    pub validation: Vec<usize>,
    /// Classes with a single row, kept in training and absent from validation.
    pub unsplit_classes: Vec<usize>,
}

impl Split {
    /// Take the rows of `data` (`len / rows` values per row) listed in `rows`.
    pub fn gather<T: Copy>(data: &[T], per_row: usize, rows: &[usize]) -> Vec<T> {
        rows.iter()
            .flat_map(|&i| data[i * per_row..(i + 1) * per_row].iter().copied())
            .collect()
    }
}

/// Split `labels` (each in `[0, C)`) with `fraction` of each class held out,
/// `0 < fraction < 1`, the rows chosen by `seed`.
pub fn stratified_split(labels: &[i64], classes: usize, fraction: f64, seed: u64) -> Result<Split> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::InvalidArgument(format!(
            "the validation fraction must be in (0, 1), got {fraction}"
        )));
    }
    check_labels(labels, classes)?;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (row, &y) in labels.iter().enumerate() {
        by_class[y as usize].push(row);
    }
    let mut rng = Rng::new(seed);
    let mut held = vec![false; labels.len()];
    let mut unsplit_classes = Vec::new();
    for (class, rows) in by_class.iter_mut().enumerate() {
        let n = rows.len();
        if n == 1 {
            unsplit_classes.push(class);
        }
        if n < 2 {
            continue;
        }
        // Fisher-Yates within the class; the first `k` rows are held out.
        for i in (1..n).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            rows.swap(i, j);
        }
        let k = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
        for &row in &rows[..k] {
            held[row] = true;
        }
    }
    let (validation, train): (Vec<usize>, Vec<usize>) = (0..labels.len()).partition(|&i| held[i]);
    Ok(Split {
        train,
        validation,
        unsplit_classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_with_two_rows_is_on_both_sides() {
        // Class sizes 1, 2, 3, 10 and 200, shuffled together.
        let mut labels: Vec<i64> = [(0, 1), (1, 2), (2, 3), (3, 10), (4, 200)]
            .iter()
            .flat_map(|&(c, n)| std::iter::repeat_n(c, n))
            .collect();
        let mut rng = Rng::new(7);
        for i in (1..labels.len()).rev() {
            labels.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for seed in 0..20 {
            let s = stratified_split(&labels, 6, 0.2, seed).unwrap();
            let count = |rows: &[usize], c: i64| rows.iter().filter(|&&i| labels[i] == c).count();
            assert_eq!(s.unsplit_classes, vec![0], "seed {seed}");
            assert_eq!((count(&s.train, 0), count(&s.validation, 0)), (1, 0));
            for (c, held) in [(1, 1), (2, 1), (3, 2), (4, 40)] {
                assert_eq!(count(&s.validation, c), held, "class {c}, seed {seed}");
                assert_eq!(
                    count(&s.train, c),
                    labels.iter().filter(|&&y| y == c).count() - held
                );
            }
            let mut all: Vec<usize> = s.train.iter().chain(&s.validation).copied().collect();
            all.sort();
            assert_eq!(all, (0..labels.len()).collect::<Vec<_>>());
            assert!(s.train.windows(2).all(|w| w[0] < w[1]));
            assert!(s.validation.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(s, stratified_split(&labels, 6, 0.2, seed).unwrap());
        }
        let a = stratified_split(&labels, 6, 0.2, 1).unwrap();
        let b = stratified_split(&labels, 6, 0.2, 2).unwrap();
        assert_ne!(a.validation, b.validation, "the seed chooses the rows");
    }

    #[test]
    fn bad_fractions_and_labels_are_refused() {
        for f in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(matches!(
                stratified_split(&[0, 1], 2, f, 0),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert!(matches!(
            stratified_split(&[0, 2], 2, 0.5, 0),
            Err(Error::LabelOutOfRange { row: 1, .. })
        ));
    }

    #[test]
    fn gather_takes_whole_rows() {
        let data = [0, 1, 2, 3, 4, 5];
        assert_eq!(Split::gather(&data, 2, &[2, 0]), vec![4, 5, 0, 1]);
    }
}
