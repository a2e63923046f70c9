//! Search over distillers, without tensors: Monte Carlo Tree Search with UCT (and WU-UCT
//! counting of in-flight trials) and the random-search baseline, over a space given as levels of
//! options. A candidate is one choice per level; an [`Evaluator`] turns it into a reward.

pub mod driver;
pub mod mcts;
pub mod random;

pub use driver::{Trial, run, run_until};
pub use mcts::{Mcts, MctsConfig, Ticket};
pub use random::RandomSearch;

/// One option index per level.
pub type Choices = Vec<usize>;

/// A search strategy: propose candidates, learn from their rewards.
pub trait Strategy {
    /// The next candidate to evaluate.
    fn ask(&mut self) -> Ticket;
    /// The reward of a candidate; `None` for a rejected trial (scored as the worst).
    fn tell(&mut self, ticket: &Ticket, reward: Option<f64>);
}
