//! Search over distillers, without tensors: Monte Carlo Tree Search with UCT (and WU-UCT
//! counting of in-flight trials) and the random-search baseline, over a space given as levels of
//! options. A candidate is one choice per level; the caller's evaluation turns it into a reward.
//! [`drive`] runs a search against a [`TrialStore`] (memory, a JSON-lines journal, SQLite), one or
//! several trials at a time, and resumes a killed search from its store.

pub mod driver;
pub mod evolution;
pub mod grid;
pub mod mcts;
pub mod random;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod store;
pub mod tabular;
pub mod tpe;

pub use driver::{
    DriverConfig, DriverError, Evaluation, Trial, TrialResult, drive, panic_payload, run, run_until,
};
pub use evolution::{Evolution, EvolutionConfig};
pub use grid::GridSearch;
pub use mcts::{Mcts, MctsConfig, RewardScale, Ticket, mid_rank_values};
pub use random::RandomSearch;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
pub use store::{Event, JournalStore, MemoryStore, StoreError, TrialStore};
pub use tabular::{
    SeedAgreement, Table, TableError, bootstrap_ci, kendall_tau_b, mean_ci, spearman,
    wilcoxon_signed_rank,
};
pub use tpe::{Tpe, TpeConfig};

/// One option index per level.
pub type Choices = Vec<usize>;

/// A search strategy: propose candidates, learn from their rewards.
pub trait Strategy {
    /// The next candidate to evaluate.
    fn ask(&mut self) -> Ticket;
    /// The reward of a candidate; `None` for a rejected trial (scored as the worst).
    fn tell(&mut self, ticket: &Ticket, reward: Option<f64>);
}

/// What the strategies' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{Strategy, driver::run};

    /// The best reward after 40 distinct trials of `strategy` on a separable objective over
    /// four levels of four options (reward `−Σ choices`, optimum 0) whose first trial returns
    /// −4000 (a diverged trial); it checks that 40 distinct candidates were proposed.
    pub(crate) fn best_after_40_with_an_outlier(strategy: &mut dyn Strategy) -> f64 {
        let mut first = true;
        let trials = run(strategy, 40, 1000, |c| {
            if std::mem::take(&mut first) {
                return Some(-4000.0);
            }
            Some(-(c.iter().map(|&x| x as f64).sum::<f64>()))
        })
        .unwrap_or_default();
        assert_eq!(trials.len(), 40);
        trials
            .iter()
            .filter_map(|t| t.reward)
            .fold(f64::NEG_INFINITY, f64::max)
    }
}
