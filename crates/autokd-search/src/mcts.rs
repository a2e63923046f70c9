//! Monte Carlo Tree Search over a space of levels (ARCHITECTURE §5).
//!
//! - **Tree.** One level per decision; a node is a partial candidate; children are created when
//!   first chosen, and unvisited children are tried first (in a seeded random order).
//! - **Selection.** UCT, `Q/n + c·√(ln N / n)`, on rewards made values in [0, 1]
//!   ([`RewardScale`]). By default a trial's value is its mid-rank among the accepted trials so
//!   far, `(r − ½)/n` (ties share their mean rank), as ordinal MCTS and optuna's TPE use ranks:
//!   one outlier (a diverged trial's reward of −6,562 beside sane ones in −0.4…−2) cannot squash
//!   every other difference below the exploration bonus, as min–max scaling lets it. Min–max
//!   (`(R − min)/(max − min)`) remains for run folders written before ranks. Rejected trials
//!   count as value 0 (below every accepted one).
//! - **Parallel trials (WU-UCT, Liu et al. 2020).** A candidate handed out and not yet rewarded
//!   counts as an unobserved visit of every node on its path, in `n` and `N`, so concurrent asks
//!   spread out.
//! - **Rollout.** Below the newly expanded node the candidate is completed at random (seeded).
//! - **Backpropagation.** The reward is added to every node of the path.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Choices, Strategy};

/// How rewards become the values in [0, 1] that UCT averages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardScale {
    /// Mid-rank among the accepted trials so far, `(r − ½)/n` (default).
    #[default]
    Rank,
    /// `(R − min)/(max − min)` over the accepted trials so far (searches before ranks).
    MinMax,
}

/// MCTS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MctsConfig {
    /// Exploration constant `c` of UCT.
    pub exploration: f64,
    /// Seed of the child order and the rollouts.
    pub seed: u64,
    /// How rewards are scaled for UCT.
    pub reward_scale: RewardScale,
    /// Statistics shared across the tree (RAVE, Gelly & Silver 2011): the equivalence parameter
    /// `k` of `β = √(k / (3n + k))`, the weight of an option's mean value over every trial that
    /// chose it (AMAF, rollout parts included) against the node's own mean; it also orders
    /// untried options, best AMAF value first. 0 disables both.
    pub rave: f64,
    /// Rollouts draw each remaining level's option with probability ∝ `exp(A / τ)`, `A` the
    /// option's AMAF value (½ before any trial chose it), at this temperature `τ`; 0 draws
    /// uniformly.
    pub rollout_temperature: f64,
}

impl Default for MctsConfig {
    fn default() -> Self {
        Self {
            exploration: std::f64::consts::FRAC_1_SQRT_2,
            seed: 0,
            reward_scale: RewardScale::Rank,
            rave: 10.0,
            rollout_temperature: 0.2,
        }
    }
}

/// The value of each trial in [0, 1]: a rejected one (`None` or not finite) 0, an accepted one
/// its mid-rank among the accepted ones, `(r − ½)/n` with `r` from 1 (worst) to `n` (best) and
/// tied rewards sharing the mean of their ranks.
pub fn mid_rank_values(rewards: &[Option<f64>]) -> Vec<f64> {
    let mut accepted: Vec<(f64, usize)> = rewards
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.filter(|r| r.is_finite()).map(|r| (r, i)))
        .collect();
    accepted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = accepted.len() as f64;
    let mut values = vec![0.0; rewards.len()];
    let mut start = 0;
    while start < accepted.len() {
        let mut end = start + 1;
        while end < accepted.len() && accepted[end].0 == accepted[start].0 {
            end += 1;
        }
        // Ranks start + 1 ..= end share their mean, (start + 1 + end) / 2.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &(_, i) in &accepted[start..end] {
            values[i] = (rank - 0.5) / n;
        }
        start = end;
    }
    values
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Child node per option of the next level (`None`: never chosen).
    children: Vec<Option<usize>>,
    /// Options of the next level in the seeded order in which unvisited ones are tried.
    order: Vec<usize>,
    visits: u32,
    accepted: u32,
    reward_sum: f64,
    in_flight: u32,
}

/// A candidate handed out by a strategy, with what the strategy needs to learn from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The candidate.
    pub choices: Choices,
    /// Tree nodes from the root to the expanded node (empty for random search).
    path: Vec<usize>,
}

impl Ticket {
    pub(crate) fn new(choices: Choices, path: Vec<usize>) -> Self {
        Self { choices, path }
    }
}

/// The search tree.
#[derive(Debug, Clone)]
pub struct Mcts {
    levels: Vec<usize>,
    nodes: Vec<Node>,
    config: MctsConfig,
    rng: ChaCha8Rng,
    min: f64,
    max: f64,
    /// Every told trial: its path, its choices and its reward (`None`: rejected).
    told: Vec<(Vec<usize>, Choices, Option<f64>)>,
}

impl Mcts {
    /// A tree over `levels` (options per level; each at least 1).
    pub fn new(levels: &[usize], config: MctsConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let root = Self::fresh(levels.first().copied().unwrap_or(0), &mut rng);
        Self {
            levels: levels.to_vec(),
            nodes: vec![root],
            config,
            rng,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            told: Vec::new(),
        }
    }

    fn fresh(options: usize, rng: &mut ChaCha8Rng) -> Node {
        let mut order: Vec<usize> = (0..options).collect();
        // Fisher–Yates with the tree's RNG: unvisited children are tried in this order.
        for i in (1..order.len()).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        Node {
            children: vec![None; options],
            order,
            ..Node::default()
        }
    }

    /// Nodes in the tree.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// The sum of the values of each node's trials ([`RewardScale`]); `values` are the told
    /// trials' ([`Mcts::trial_values`]).
    fn value_sums(&self, values: &[f64]) -> Vec<f64> {
        match self.config.reward_scale {
            RewardScale::MinMax => {
                let span = self.max - self.min;
                self.nodes
                    .iter()
                    .map(|n| {
                        if span > 0.0 && n.accepted > 0 {
                            (n.reward_sum - f64::from(n.accepted) * self.min) / span
                        } else {
                            // One distinct reward so far: every accepted trial is as good as
                            // the best.
                            f64::from(n.accepted) * f64::from(u8::from(self.max.is_finite()))
                        }
                    })
                    .collect()
            }
            RewardScale::Rank => {
                let mut sums = vec![0.0; self.nodes.len()];
                for ((path, _, _), v) in self.told.iter().zip(values) {
                    for &n in path {
                        sums[n] += v;
                    }
                }
                sums
            }
        }
    }

    /// The value of every told trial in [0, 1] under the reward scale.
    fn trial_values(&self) -> Vec<f64> {
        let rewards: Vec<Option<f64>> = self.told.iter().map(|(_, _, r)| *r).collect();
        match self.config.reward_scale {
            RewardScale::Rank => mid_rank_values(&rewards),
            RewardScale::MinMax => rewards
                .iter()
                .map(|r| match r {
                    Some(r) if self.max > self.min => (r - self.min) / (self.max - self.min),
                    Some(_) => 1.0,
                    None => 0.0,
                })
                .collect(),
        }
    }

    /// AMAF mean value of every (level, option) over all told trials, ½ for an option no trial
    /// chose (one pseudo-visit at ½ keeps early means from extremes).
    fn amaf(&self, values: &[f64]) -> Vec<Vec<f64>> {
        let mut sum: Vec<Vec<f64>> = self.levels.iter().map(|&n| vec![0.5; n]).collect();
        let mut count: Vec<Vec<f64>> = self.levels.iter().map(|&n| vec![1.0; n]).collect();
        for ((_, choices, _), v) in self.told.iter().zip(values) {
            for (j, &o) in choices.iter().enumerate() {
                if let (Some(s), Some(c)) = (
                    sum.get_mut(j).and_then(|l| l.get_mut(o)),
                    count.get_mut(j).and_then(|l| l.get_mut(o)),
                ) {
                    *s += v;
                    *c += 1.0;
                }
            }
        }
        sum.iter()
            .zip(&count)
            .map(|(s, c)| s.iter().zip(c).map(|(s, c)| s / c).collect())
            .collect()
    }

    /// An option of a level with `amaf` values: ∝ `exp(A / τ)`, or uniform at τ = 0.
    fn rollout_option(&mut self, amaf: &[f64]) -> usize {
        let tau = self.config.rollout_temperature;
        if tau <= 0.0 || amaf.is_empty() {
            return self.rng.random_range(0..amaf.len().max(1));
        }
        let top = amaf.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = amaf.iter().map(|a| ((a - top) / tau).exp()).collect();
        let mut u = self.rng.random::<f64>() * weights.iter().sum::<f64>();
        for (o, w) in weights.iter().enumerate() {
            if u < *w {
                return o;
            }
            u -= w;
        }
        amaf.len() - 1
    }

    /// Descends by UCT to the first node with an untried option, creates that child, and
    /// completes the candidate at random.
    fn select(&mut self) -> Ticket {
        let values = self.trial_values();
        let sums = self.value_sums(&values);
        let shared = self.config.rave > 0.0 || self.config.rollout_temperature > 0.0;
        let amaf = if shared {
            self.amaf(&values)
        } else {
            Vec::new()
        };
        let a = |depth: usize, option: usize| {
            amaf.get(depth)
                .and_then(|l| l.get(option))
                .copied()
                .unwrap_or(0.5)
        };
        // Mean value of a node, counting in-flight visits as unobserved (0 added).
        let q = |id: usize, n: &Node| {
            if n.visits == 0 {
                0.0
            } else {
                sums[id] / f64::from(n.visits)
            }
        };
        let mut path = vec![0usize];
        let mut choices = Vec::with_capacity(self.levels.len());
        let mut node = 0usize;
        for depth in 0..self.levels.len() {
            // An option never chosen (or chosen but still unvisited and not in flight) first.
            let untried = {
                let n = &self.nodes[node];
                let open = |&o: &usize| match n.children[o] {
                    None => true,
                    Some(c) => self.nodes[c].visits == 0 && self.nodes[c].in_flight == 0,
                };
                if self.config.rave > 0.0 {
                    // The best AMAF value first (the seeded order among equals).
                    n.order
                        .iter()
                        .copied()
                        .filter(open)
                        .fold(None, |best: Option<usize>, o| match best {
                            Some(b) if a(depth, b) >= a(depth, o) => Some(b),
                            _ => Some(o),
                        })
                } else {
                    n.order.iter().copied().find(open)
                }
            };
            if let Some(option) = untried {
                let child = match self.nodes[node].children[option] {
                    Some(c) => c,
                    None => {
                        let next = self.levels.get(depth + 1).copied().unwrap_or(0);
                        let fresh = Self::fresh(next, &mut self.rng);
                        self.nodes.push(fresh);
                        let id = self.nodes.len() - 1;
                        self.nodes[node].children[option] = Some(id);
                        id
                    }
                };
                choices.push(option);
                path.push(child);
                // Rollout below the new node.
                for j in depth + 1..self.levels.len() {
                    let option = if self.config.rollout_temperature > 0.0 {
                        let values: Vec<f64> = (0..self.levels[j]).map(|o| a(j, o)).collect();
                        self.rollout_option(&values)
                    } else {
                        self.rng.random_range(0..self.levels[j])
                    };
                    choices.push(option);
                }
                return Ticket::new(choices, path);
            }
            // Every option tried: UCT with in-flight trials counted as visits (WU-UCT).
            let parent = &self.nodes[node];
            let total = f64::from(parent.visits + parent.in_flight).max(1.0);
            let mut best = (f64::NEG_INFINITY, 0usize);
            for &o in &parent.order {
                let Some(c) = parent.children[o] else {
                    continue;
                };
                let child = &self.nodes[c];
                let n = f64::from(child.visits + child.in_flight).max(1.0);
                let k = self.config.rave;
                let value = if k > 0.0 {
                    let beta = (k / (3.0 * n + k)).sqrt();
                    (1.0 - beta) * q(c, child) + beta * a(depth, o)
                } else {
                    q(c, child)
                };
                let score = value + self.config.exploration * (total.ln() / n).sqrt();
                if score > best.0 {
                    best = (score, o);
                }
            }
            let option = best.1;
            choices.push(option);
            node = self.nodes[node].children[option].unwrap_or(0);
            path.push(node);
        }
        // Every level decided along existing nodes: a full candidate seen before.
        Ticket::new(choices, path)
    }
}

impl Strategy for Mcts {
    fn ask(&mut self) -> Ticket {
        let ticket = self.select();
        for &n in &ticket.path {
            self.nodes[n].in_flight += 1;
        }
        ticket
    }

    fn tell(&mut self, ticket: &Ticket, reward: Option<f64>) {
        if let Some(r) = reward.filter(|r| r.is_finite()) {
            self.min = self.min.min(r);
            self.max = self.max.max(r);
        }
        let accepted = reward.is_some_and(f64::is_finite);
        self.told.push((
            ticket.path.clone(),
            ticket.choices.clone(),
            reward.filter(|r| r.is_finite()),
        ));
        for &n in &ticket.path {
            let node = &mut self.nodes[n];
            node.in_flight = node.in_flight.saturating_sub(1);
            node.visits += 1;
            if accepted {
                node.accepted += 1;
                node.reward_sum += reward.unwrap_or(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::run;

    /// Mid-ranks by hand: accepted −3, −1, −1, −0.5 have ranks 1, 2.5, 2.5, 4 of n = 4, so
    /// values 0.5/4, 2/4, 2/4, 3.5/4; rejected and non-finite rewards are 0.
    #[test]
    fn mid_rank_values_by_hand() {
        let v = mid_rank_values(&[
            Some(-1.0),
            None,
            Some(-3.0),
            Some(-1.0),
            Some(f64::NAN),
            Some(-0.5),
        ]);
        assert_eq!(v, vec![0.5, 0.0, 0.125, 0.5, 0.0, 0.875]);
        assert_eq!(mid_rank_values(&[Some(2.0)]), vec![0.5]);
        assert!(mid_rank_values(&[]).is_empty());
    }

    /// Visits of each root child after `trials` trials of an objective whose root option 0 is
    /// best (rewards −0.4…−0.7), option 1 next (−1.4…−1.7), option 2 worst (−2.4…−2.7), the
    /// first trial under option 2 giving −4000 (a diverged trial, as the default search's first).
    fn root_visits(scale: RewardScale, seed: u64, trials: usize) -> Vec<u32> {
        let mut m = Mcts::new(
            &[3, 4, 4, 4],
            MctsConfig {
                seed,
                reward_scale: scale,
                rave: 0.0,
                rollout_temperature: 0.0,
                ..MctsConfig::default()
            },
        );
        let mut outlier = true;
        run(&mut m, trials, 1000, |c| {
            if c[0] == 2 && std::mem::take(&mut outlier) {
                return Some(-4000.0);
            }
            Some(-0.4 - c[0] as f64 - 0.1 * (c[1] + c[2] + c[3]) as f64 / 3.0)
        })
        .unwrap();
        m.nodes[0]
            .children
            .iter()
            .map(|c| c.map_or(0, |c| m.nodes[c].visits))
            .collect()
    }

    /// Shared statistics on a separable 4⁴ objective with a −4000 outlier first: the defaults
    /// (RAVE k = 10, AMAF rollouts at τ = 0.2) find a better best after 40 trials than plain UCT
    /// with uniform rollouts, on average over 20 seeds; AMAF values by hand.
    #[test]
    fn shared_statistics_help_on_a_separable_objective() {
        let levels = [4, 4, 4, 4];
        let best_after_40 = |config: MctsConfig| {
            crate::testing::best_after_40_with_an_outlier(&mut Mcts::new(&levels, config))
        };
        let (mut shared, mut plain) = (0.0, 0.0);
        for seed in 0..20 {
            shared += best_after_40(MctsConfig {
                seed,
                ..MctsConfig::default()
            });
            plain += best_after_40(MctsConfig {
                seed,
                rave: 0.0,
                rollout_temperature: 0.0,
                ..MctsConfig::default()
            });
        }
        eprintln!(
            "mean best after 40: shared {}, plain {}",
            shared / 20.0,
            plain / 20.0
        );
        assert!(shared > plain, "shared {shared} vs plain {plain}");
        // AMAF by hand: trials (0, 1) → −1 and (1, 1) → −3 have mid-rank values 0.75 and 0.25;
        // with the pseudo-visit at ½: level 0 option 0 (0.5 + 0.75)/2, option 1 (0.5 + 0.25)/2;
        // level 1 option 1 (0.5 + 1)/3, option 0 untouched ½.
        let mut m = Mcts::new(&[2, 2], MctsConfig::default());
        for (c, r) in [(vec![0, 1], -1.0), (vec![1, 1], -3.0)] {
            m.tell(&Ticket::new(c, vec![0]), Some(r));
        }
        let a = m.amaf(&m.trial_values());
        assert_eq!(a, vec![vec![0.625, 0.375], vec![0.5, 0.5]]);
    }

    /// With ranks, one −4000 outlier does not stop UCT from sending most visits to the best
    /// root child; with min–max scaling every sane reward lies within 1e-3 of the others and
    /// UCT cycles through the children by visit count.
    #[test]
    fn an_outlier_does_not_hide_the_best_child() {
        for seed in 0..5 {
            let rank = root_visits(RewardScale::Rank, seed, 60);
            let minmax = root_visits(RewardScale::MinMax, seed, 60);
            let share = |v: &[u32]| f64::from(v[0]) / f64::from(v.iter().sum::<u32>());
            eprintln!("seed {seed}: visits rank {rank:?}, min-max {minmax:?}");
            assert!(share(&rank) > 0.6, "seed {seed}: rank {rank:?}");
            assert!(share(&minmax) < 0.45, "seed {seed}: min-max {minmax:?}");
        }
    }
}
