//! Monte Carlo Tree Search over a space of levels (ARCHITECTURE §5).
//!
//! - **Tree.** One level per decision; a node is a partial candidate; children are created when
//!   first chosen, and unvisited children are tried first (in a seeded random order).
//! - **Selection.** UCT, `Q/n + c·√(ln N / n)`, on rewards normalized to [0, 1] by the minimum and
//!   maximum seen so far (normalization is affine, so node sums of raw rewards suffice). Rejected
//!   trials count as reward 0 after normalization (the worst).
//! - **Parallel trials (WU-UCT, Liu et al. 2020).** A candidate handed out and not yet rewarded
//!   counts as an unobserved visit of every node on its path, in `n` and `N`, so concurrent asks
//!   spread out.
//! - **Rollout.** Below the newly expanded node the candidate is completed at random (seeded).
//! - **Backpropagation.** The reward is added to every node of the path.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Choices, Strategy};

/// MCTS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MctsConfig {
    /// Exploration constant `c` of UCT.
    pub exploration: f64,
    /// Seed of the child order and the rollouts.
    pub seed: u64,
}

impl Default for MctsConfig {
    fn default() -> Self {
        Self {
            exploration: std::f64::consts::FRAC_1_SQRT_2,
            seed: 0,
        }
    }
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

    /// Normalized mean reward of a node, counting in-flight visits as unobserved (0 added).
    fn q(&self, n: &Node) -> f64 {
        if n.visits == 0 {
            return 0.0;
        }
        let span = self.max - self.min;
        let normalized_sum = if span > 0.0 && n.accepted > 0 {
            (n.reward_sum - f64::from(n.accepted) * self.min) / span
        } else {
            // One distinct reward so far: every accepted trial is as good as the best.
            f64::from(n.accepted) * f64::from(u8::from(self.max.is_finite()))
        };
        normalized_sum / f64::from(n.visits)
    }

    /// Descends by UCT to the first node with an untried option, creates that child, and
    /// completes the candidate at random.
    fn select(&mut self) -> Ticket {
        let mut path = vec![0usize];
        let mut choices = Vec::with_capacity(self.levels.len());
        let mut node = 0usize;
        for depth in 0..self.levels.len() {
            // An option never chosen (or chosen but still unvisited and not in flight) first.
            let untried = {
                let n = &self.nodes[node];
                n.order.iter().copied().find(|&o| match n.children[o] {
                    None => true,
                    Some(c) => self.nodes[c].visits == 0 && self.nodes[c].in_flight == 0,
                })
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
                for &options in &self.levels[depth + 1..] {
                    choices.push(self.rng.random_range(0..options));
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
                let score = self.q(child) + self.config.exploration * (total.ln() / n).sqrt();
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
