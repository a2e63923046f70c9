//! Random search over the same space: every level chosen uniformly at random (seeded). The
//! baseline every claim about MCTS is measured against.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Strategy;
use crate::mcts::Ticket;

/// Uniform random candidates.
#[derive(Debug, Clone)]
pub struct RandomSearch {
    levels: Vec<usize>,
    rng: ChaCha8Rng,
}

impl RandomSearch {
    /// Random search over `levels`, seeded.
    pub fn new(levels: &[usize], seed: u64) -> Self {
        Self {
            levels: levels.to_vec(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }
}

impl Strategy for RandomSearch {
    fn ask(&mut self) -> Ticket {
        let choices = self
            .levels
            .iter()
            .map(|&n| self.rng.random_range(0..n))
            .collect();
        Ticket::new(choices, Vec::new())
    }

    fn tell(&mut self, _ticket: &Ticket, _reward: Option<f64>) {}
}
