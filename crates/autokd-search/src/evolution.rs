//! Regularized evolution (Real et al., AAAI 2019; NAS-Bench-201's REA settings): a population of
//! the `population` most recent trials; after a random start, each proposal takes the best of
//! `tournament` members drawn without replacement and changes one level to another option. The
//! oldest member leaves when a new one arrives (aging). Rejected trials rank below every accepted
//! one; only comparisons of rewards enter, so their scale does not matter.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::mcts::Ticket;
use crate::{Choices, Strategy};

/// Settings of regularized evolution (NAS-Bench-201's REA: population 10, tournament 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvolutionConfig {
    /// Members kept (the most recent trials); also the random start.
    pub population: usize,
    /// Members drawn per tournament.
    pub tournament: usize,
}

impl Default for EvolutionConfig {
    fn default() -> Self {
        Self {
            population: 10,
            tournament: 3,
        }
    }
}

/// Regularized evolution over levels of options.
#[derive(Debug, Clone)]
pub struct Evolution {
    levels: Vec<usize>,
    config: EvolutionConfig,
    rng: ChaCha8Rng,
    asked: usize,
    population: VecDeque<(Choices, f64)>,
}

impl Evolution {
    /// Regularized evolution over `levels`, seeded.
    pub fn new(levels: &[usize], config: EvolutionConfig, seed: u64) -> Self {
        Self {
            levels: levels.to_vec(),
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            asked: 0,
            population: VecDeque::new(),
        }
    }

    fn mutate(&mut self, parent: &[usize]) -> Choices {
        let mut child = parent.to_vec();
        let mutable: Vec<usize> = (0..self.levels.len())
            .filter(|&j| self.levels[j] > 1)
            .collect();
        if mutable.is_empty() {
            return child;
        }
        let j = mutable[self.rng.random_range(0..mutable.len())];
        // Another option of level j, uniformly.
        let other = self.rng.random_range(0..self.levels[j] - 1);
        child[j] = if other >= child[j] { other + 1 } else { other };
        child
    }
}

impl Strategy for Evolution {
    fn ask(&mut self) -> Ticket {
        self.asked += 1;
        let start = self.config.population.max(1);
        if self.asked <= start || self.population.is_empty() {
            let choices = self
                .levels
                .iter()
                .map(|&n| self.rng.random_range(0..n.max(1)))
                .collect();
            return Ticket::new(choices, Vec::new());
        }
        // Tournament: `tournament` distinct members, the best (the earliest among equals).
        let n = self.population.len();
        let size = self.config.tournament.clamp(1, n);
        let mut drawn: Vec<usize> = (0..n).collect();
        for i in 0..size {
            let j = self.rng.random_range(i..n);
            drawn.swap(i, j);
        }
        let mut contestants = drawn[..size].to_vec();
        contestants.sort_unstable();
        let winner = contestants
            .iter()
            .copied()
            .max_by(|&a, &b| {
                self.population[a]
                    .1
                    .total_cmp(&self.population[b].1)
                    .then(b.cmp(&a))
            })
            .unwrap_or(0);
        let parent = self.population[winner].0.clone();
        Ticket::new(self.mutate(&parent), Vec::new())
    }

    fn tell(&mut self, ticket: &Ticket, reward: Option<f64>) {
        let value = reward
            .filter(|r| r.is_finite())
            .unwrap_or(f64::NEG_INFINITY);
        self.population.push_back((ticket.choices.clone(), value));
        while self.population.len() > self.config.population.max(1) {
            self.population.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mutation changes exactly one level to another option.
    #[test]
    fn a_mutation_changes_one_level() {
        let mut e = Evolution::new(&[3, 1, 4], EvolutionConfig::default(), 0);
        for _ in 0..200 {
            let child = e.mutate(&[1, 0, 2]);
            let changed: Vec<usize> = (0..3).filter(|&j| child[j] != [1, 0, 2][j]).collect();
            assert_eq!(changed.len(), 1, "{child:?}");
            assert_ne!(changed[0], 1);
        }
    }

    /// On a separable objective with one −4000 outlier (the first trial), evolution's best
    /// after 40 trials beats random search's on average over 20 seeds, and repeats per seed;
    /// the population never exceeds its size.
    #[test]
    fn evolution_beats_random_on_a_separable_objective() {
        let levels = [4, 4, 4, 4];
        let best_after_40 = crate::testing::best_after_40_with_an_outlier;
        let evolution = |seed| Evolution::new(&levels, EvolutionConfig::default(), seed);
        assert_eq!(
            best_after_40(&mut evolution(2)),
            best_after_40(&mut evolution(2))
        );
        let (mut e, mut r) = (0.0, 0.0);
        for seed in 0..20 {
            let mut ev = evolution(seed);
            e += best_after_40(&mut ev);
            assert!(ev.population.len() <= 10);
            r += best_after_40(&mut crate::RandomSearch::new(&levels, seed));
        }
        eprintln!(
            "mean best after 40: evolution {}, random {}",
            e / 20.0,
            r / 20.0
        );
        assert!(
            e > r,
            "mean best: evolution {} vs random {}",
            e / 20.0,
            r / 20.0
        );
    }
}
