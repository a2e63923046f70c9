//! Grid search: every candidate of the space once, in lexicographic order (the last level
//! fastest). For small spaces only: the tabular benchmark (`autokd bench search`) scores every
//! candidate of a reduced space this way. Once the space is exhausted it proposes the first
//! candidate again, a repeat, so the driver stops after `max_repeats` of them.

use crate::Strategy;
use crate::mcts::Ticket;

/// Every candidate in lexicographic order.
#[derive(Debug, Clone)]
pub struct GridSearch {
    levels: Vec<usize>,
    next: Option<Vec<usize>>,
}

impl GridSearch {
    /// Grid search over `levels` (options per level; each at least 1).
    pub fn new(levels: &[usize]) -> Self {
        Self {
            levels: levels.to_vec(),
            next: levels.iter().all(|&n| n > 0).then(|| vec![0; levels.len()]),
        }
    }

    /// Candidates in a space of `levels`, `None` past `u128`.
    pub fn size(levels: &[usize]) -> Option<u128> {
        levels
            .iter()
            .try_fold(1u128, |acc, &n| acc.checked_mul(n as u128))
    }

    /// The candidate at `index` of the lexicographic order (`index` below [`GridSearch::size`]).
    pub fn candidate(levels: &[usize], mut index: u128) -> Vec<usize> {
        let mut choices = vec![0; levels.len()];
        for (c, &n) in choices.iter_mut().zip(levels).rev() {
            let n = n.max(1) as u128;
            *c = (index % n) as usize;
            index /= n;
        }
        choices
    }

    /// The index of `choices` in the lexicographic order.
    pub fn index(levels: &[usize], choices: &[usize]) -> u128 {
        levels
            .iter()
            .zip(choices)
            .fold(0u128, |acc, (&n, &c)| acc * n as u128 + c as u128)
    }
}

impl Strategy for GridSearch {
    fn ask(&mut self) -> Ticket {
        let Some(current) = self.next.take() else {
            return Ticket::new(vec![0; self.levels.len()], Vec::new());
        };
        // Odometer increment, the last level fastest; past the last candidate: exhausted.
        let mut following = current.clone();
        let mut done = true;
        for (c, &n) in following.iter_mut().zip(&self.levels).rev() {
            *c += 1;
            if *c < n {
                done = false;
                break;
            }
            *c = 0;
        }
        self.next = (!done).then_some(following);
        Ticket::new(current, Vec::new())
    }

    fn tell(&mut self, _ticket: &Ticket, _reward: Option<f64>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::run;

    /// A 2×3×2 space: the 12 candidates once each in lexicographic order, then the driver stops;
    /// `candidate` and `index` invert each other.
    #[test]
    fn every_candidate_once_in_order() {
        let levels = [2, 3, 2];
        assert_eq!(GridSearch::size(&levels), Some(12));
        let trials = run(&mut GridSearch::new(&levels), 100, 5, |c| Some(c[0] as f64)).unwrap();
        let got: Vec<Vec<usize>> = trials.iter().map(|t| t.choices.clone()).collect();
        let expected: Vec<Vec<usize>> =
            (0..12).map(|i| GridSearch::candidate(&levels, i)).collect();
        assert_eq!(got, expected);
        assert_eq!(got[1], vec![0, 0, 1]);
        assert_eq!(got[11], vec![1, 2, 1]);
        for (i, c) in expected.iter().enumerate() {
            assert_eq!(GridSearch::index(&levels, c), i as u128);
        }
        assert_eq!(GridSearch::size(&[usize::MAX; 9]), None);
    }
}
