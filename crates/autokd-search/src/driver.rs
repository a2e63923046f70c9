//! Runs a strategy for a budget of evaluations, one at a time, reusing the reward of a candidate
//! seen before instead of evaluating it again (a repeat is told to the strategy but costs no
//! budget).

use std::collections::HashMap;

use crate::{Choices, Strategy};

/// One evaluated candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Index of the trial (0-based, in evaluation order).
    pub index: usize,
    /// The candidate.
    pub choices: Choices,
    /// Its reward; `None` if rejected.
    pub reward: Option<f64>,
}

/// Evaluates up to `budget` distinct candidates proposed by `strategy`. Stops early when
/// `max_repeats` proposals in a row were all seen before (the space is exhausted or the strategy
/// has converged).
pub fn run<S: Strategy, E: FnMut(&Choices) -> Option<f64>>(
    strategy: &mut S,
    budget: usize,
    max_repeats: usize,
    evaluate: E,
) -> Vec<Trial> {
    run_until(strategy, budget, max_repeats, || false, evaluate)
}

/// [`run`], also stopping before a new evaluation once `stop()` says so (a wall-time budget).
pub fn run_until<S: Strategy, E: FnMut(&Choices) -> Option<f64>>(
    strategy: &mut S,
    budget: usize,
    max_repeats: usize,
    mut stop: impl FnMut() -> bool,
    mut evaluate: E,
) -> Vec<Trial> {
    let mut seen: HashMap<Choices, Option<f64>> = HashMap::new();
    let mut trials = Vec::new();
    let mut repeats = 0;
    while trials.len() < budget && repeats < max_repeats {
        let ticket = strategy.ask();
        if let Some(&reward) = seen.get(&ticket.choices) {
            strategy.tell(&ticket, reward);
            repeats += 1;
            continue;
        }
        repeats = 0;
        if stop() {
            break;
        }
        let reward = evaluate(&ticket.choices);
        seen.insert(ticket.choices.clone(), reward);
        strategy.tell(&ticket, reward);
        trials.push(Trial {
            index: trials.len(),
            choices: ticket.choices,
            reward,
        });
    }
    trials
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mcts, MctsConfig, RandomSearch};

    /// The paper's space: global 5, intra 4, relation 7, distance 6, T 4, weight 4, logits
    /// distance 3, logits T 4, logits weight 4 (645,120 candidates).
    const LEVELS: [usize; 9] = [5, 4, 7, 6, 4, 4, 3, 4, 4];

    /// A synthetic reward with a known optimum: each level has a preferred option, levels matter
    /// unequally, and one interaction (relation × distance) matters too.
    fn reward(c: &Choices) -> f64 {
        let opt = [3, 1, 4, 5, 1, 2, 0, 1, 2];
        let w = [3.0, 1.0, 4.0, 3.0, 1.0, 1.5, 2.0, 0.5, 0.5];
        let mut r = 0.0;
        for l in 0..9 {
            if c[l] != opt[l] {
                r -= w[l] * (1.0 + (c[l] as f64 - opt[l] as f64).abs() / 4.0);
            }
        }
        if c[2] == opt[2] && c[3] == opt[3] {
            r += 2.0;
        }
        r
    }

    fn best_after(trials: &[Trial], n: usize) -> f64 {
        trials
            .iter()
            .take(n)
            .filter_map(|t| t.reward)
            .fold(f64::NEG_INFINITY, f64::max)
    }

    #[test]
    fn mcts_finds_the_optimum() {
        let optimum = reward(&vec![3, 1, 4, 5, 1, 2, 0, 1, 2]);
        // 2,000 evaluations are 0.31% of the space: random search finds the optimum with
        // probability 1 − (1 − 1/645,120)^2000 ≈ 0.31% per run.
        let (mut found, mut found_random) = (0, 0);
        for seed in 0..10 {
            let mut m = Mcts::new(
                &LEVELS,
                MctsConfig {
                    seed,
                    ..MctsConfig::default()
                },
            );
            if best_after(&run(&mut m, 2000, 1000, |c| Some(reward(c))), 2000) == optimum {
                found += 1;
            }
            let mut r = RandomSearch::new(&LEVELS, seed);
            if best_after(&run(&mut r, 2000, 1000, |c| Some(reward(c))), 2000) == optimum {
                found_random += 1;
            }
        }
        eprintln!("optimum found: MCTS {found}/10, random {found_random}/10");
        assert!(
            found >= 8 && found > found_random,
            "MCTS {found}/10, random {found_random}/10"
        );
    }

    #[test]
    fn mcts_beats_random_search_over_seeds() {
        // Evaluations needed to reach a reward within 3 of the optimum (4.0 + 2 bonus = 2.0 →
        // threshold -1.0), capped at the budget; mean over 30 seeds.
        let threshold = -1.0;
        let budget = 400;
        let evals_to = |trials: &[Trial]| {
            trials
                .iter()
                .position(|t| t.reward.is_some_and(|r| r >= threshold))
                .map_or(budget, |i| i + 1)
        };
        let (mut mcts_sum, mut rand_sum) = (0usize, 0usize);
        for seed in 0..30 {
            let mut m = Mcts::new(
                &LEVELS,
                MctsConfig {
                    seed,
                    ..MctsConfig::default()
                },
            );
            mcts_sum += evals_to(&run(&mut m, budget, 1000, |c| Some(reward(c))));
            let mut r = RandomSearch::new(&LEVELS, seed);
            rand_sum += evals_to(&run(&mut r, budget, 1000, |c| Some(reward(c))));
        }
        let (m, r) = (mcts_sum as f64 / 30.0, rand_sum as f64 / 30.0);
        eprintln!("mean evaluations to reach reward >= {threshold}: MCTS {m:.1}, random {r:.1}");
        assert!(m < r, "MCTS {m} vs random {r}");
    }

    #[test]
    fn same_seed_same_trials_and_rejections_are_worst() {
        let go = |seed| {
            let mut m = Mcts::new(
                &LEVELS,
                MctsConfig {
                    seed,
                    ..MctsConfig::default()
                },
            );
            run(&mut m, 50, 100, |c| {
                if c[0] == 0 { None } else { Some(reward(c)) }
            })
        };
        assert_eq!(go(3), go(3));
        assert_ne!(go(3), go(4));
        let trials = go(5);
        assert!(trials.iter().any(|t| t.reward.is_none()));
        // Distinct candidates only.
        let mut seen = std::collections::HashSet::new();
        assert!(trials.iter().all(|t| seen.insert(t.choices.clone())));
    }

    #[test]
    fn wu_uct_spreads_concurrent_asks() {
        // With every root option tried once, asking again while earlier asks are in flight must
        // not send every worker down the same branch.
        let mut m = Mcts::new(&[4, 3], MctsConfig::default());
        for _ in 0..4 {
            let t = m.ask();
            m.tell(&t, Some(1.0));
        }
        let tickets: Vec<_> = (0..4).map(|_| m.ask()).collect();
        let firsts: std::collections::HashSet<usize> =
            tickets.iter().map(|t| t.choices[0]).collect();
        assert!(firsts.len() >= 3, "{tickets:?}");
    }

    #[test]
    fn stop_ends_the_search() {
        let mut m = Mcts::new(&LEVELS, MctsConfig::default());
        let mut calls = 0;
        let trials = run_until(
            &mut m,
            100,
            100,
            || {
                calls += 1;
                calls > 5
            },
            |c| Some(reward(c)),
        );
        assert_eq!(trials.len(), 5);
    }

    #[test]
    fn tiny_space_is_exhausted() {
        let mut m = Mcts::new(&[2, 2], MctsConfig::default());
        let trials = run(&mut m, 100, 50, |c| Some(c[0] as f64 + c[1] as f64));
        assert_eq!(trials.len(), 4);
    }
}
