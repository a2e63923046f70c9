//! Seeded, stratified splits: the validation split that search and early stopping use, and the
//! fixed proxy subsets of the training data.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::dataset::Split;
use crate::error::{DataError, Result};

fn by_class(split: &Split, num_classes: usize) -> Result<Vec<Vec<usize>>> {
    let mut groups = vec![Vec::new(); num_classes];
    for (pos, label) in split.labels().into_iter().enumerate() {
        groups
            .get_mut(label)
            .ok_or_else(|| {
                DataError::Config(format!(
                    "label {label} out of range for {num_classes} classes"
                ))
            })?
            .push(pos);
    }
    Ok(groups)
}

/// Splits `split` into `(rest, held_out)` with `round(fraction · n_c)` images of every class
/// `c` held out, chosen at random with `seed`. Both parts keep the original order.
pub fn stratified_split(
    split: &Split,
    num_classes: usize,
    fraction: f64,
    seed: u64,
) -> Result<(Split, Split)> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(DataError::Config(format!(
            "held-out fraction {fraction} must be in [0, 1)"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rest = Vec::new();
    let mut held = Vec::new();
    for mut group in by_class(split, num_classes)? {
        group.shuffle(&mut rng);
        let k = (group.len() as f64 * fraction).round() as usize;
        held.extend_from_slice(&group[..k]);
        rest.extend_from_slice(&group[k..]);
    }
    rest.sort_unstable();
    held.sort_unstable();
    Ok((split.subset(&rest)?, split.subset(&held)?))
}

/// A stratified subset of `split` with at most `per_class` images of every class, chosen at
/// random with `seed`, in the original order (the proxy training set of a search).
pub fn stratified_subset(
    split: &Split,
    num_classes: usize,
    per_class: usize,
    seed: u64,
) -> Result<Split> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut keep = Vec::new();
    for mut group in by_class(split, num_classes)? {
        group.shuffle(&mut rng);
        keep.extend_from_slice(&group[..per_class.min(group.len())]);
    }
    keep.sort_unstable();
    split.subset(&keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::InMemory;

    fn toy(counts: &[usize]) -> Split {
        let labels: Vec<u16> = counts
            .iter()
            .enumerate()
            .flat_map(|(c, &n)| std::iter::repeat_n(c as u16, n))
            .collect();
        let n = labels.len();
        Split::all(
            InMemory::new(1, 1, 1, (0..n).map(|i| i as u8).collect(), labels)
                .unwrap()
                .shared(),
        )
    }

    #[test]
    fn split_is_stratified_disjoint_and_seeded() {
        let all = toy(&[10, 20, 5]);
        let (rest, val) = stratified_split(&all, 3, 0.2, 7).unwrap();
        // round(0.2 * 10) = 2, round(0.2 * 20) = 4, round(0.2 * 5) = 1.
        assert_eq!(val.class_counts(3), vec![2, 4, 1]);
        assert_eq!(rest.class_counts(3), vec![8, 16, 4]);
        let mut both: Vec<usize> = rest
            .source_indices()
            .iter()
            .chain(val.source_indices())
            .copied()
            .collect();
        both.sort_unstable();
        assert_eq!(both, (0..35).collect::<Vec<_>>());
        let (_, again) = stratified_split(&all, 3, 0.2, 7).unwrap();
        assert_eq!(val.source_indices(), again.source_indices());
        let (_, other) = stratified_split(&all, 3, 0.2, 8).unwrap();
        assert_ne!(val.source_indices(), other.source_indices());
        assert!(stratified_split(&all, 3, 1.0, 0).is_err());
        assert!(
            stratified_split(&all, 2, 0.2, 0)
                .unwrap_err()
                .to_string()
                .contains("label 2")
        );
    }

    #[test]
    fn subset_caps_each_class() {
        let all = toy(&[10, 20, 5]);
        let sub = stratified_subset(&all, 3, 6, 1).unwrap();
        assert_eq!(sub.class_counts(3), vec![6, 6, 5]);
        // Subsets of subsets index the source correctly.
        let (rest, _) = stratified_split(&sub, 3, 0.5, 0).unwrap();
        for (pos, &src) in rest.source_indices().iter().enumerate() {
            assert_eq!(rest.image(pos).unwrap().data, vec![src as u8]);
        }
    }
}
