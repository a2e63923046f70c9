//! The search config: what a search runs, as a config file gives it (every field has a default:
//! the embedded-digits search). A run folder records it as `config.toml`.

use std::path::{Path, PathBuf};

use autokd_data::DatasetSpec;
use autokd_distill::SearchSpaceConfig;
use autokd_models::ModelName;
use autokd_search::MctsConfig;
use autokd_train::{ProxyConfig, Recipe};
use serde::{Deserialize, Serialize};

use crate::error::{AppError, Result};

/// Which search strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    /// Monte Carlo Tree Search.
    Mcts,
    /// Uniform random search (the baseline).
    Random,
}

/// Where the trials of a search are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// JSON lines in the run folder (`journal.jsonl`): a killed search resumes from it.
    Journal,
    /// A SQLite database (`store_path`, default `trials.sqlite` in the run folder).
    Sqlite,
    /// In memory only: nothing to resume from.
    Memory,
}

/// A search, as a config file gives it (every field has a default: the embedded-digits search).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// Dataset string.
    pub dataset: DatasetSpec,
    /// Teacher architecture.
    pub teacher: ModelName,
    /// Teacher weights (.bpk, .pth, .safetensors); without them the teacher is trained first
    /// (and cached for the next search).
    pub teacher_weights: Option<PathBuf>,
    /// Student architecture.
    pub student: ModelName,
    /// Recipe of the teacher when it must be trained (default: the `digits` preset).
    pub teacher_training: Recipe,
    /// Proxy training of each candidate.
    pub proxy: ProxyConfig,
    /// The search space (default: the paper's).
    pub space: SearchSpaceConfig,
    /// Strategy.
    pub strategy: StrategyName,
    /// MCTS settings.
    pub mcts: MctsConfig,
    /// Distinct candidates to evaluate.
    pub trials: usize,
    /// Wall-time budget of the search in minutes (no new trial starts after it).
    pub max_minutes: Option<f64>,
    /// After an MCTS search, run random search with the same budget and plot both.
    pub baseline: bool,
    /// Proxy trials evaluated at once (threads sharing the teacher cache).
    pub workers: usize,
    /// Where trials are kept.
    pub store: StoreKind,
    /// Database file of the SQLite store (default `trials.sqlite` in the run folder).
    pub store_path: Option<PathBuf>,
}

impl SearchConfig {
    /// The same search, whatever its budget and parallelism: what a run folder can be resumed
    /// with.
    pub fn same_search(&self, other: &Self) -> bool {
        let strip = |c: &Self| Self {
            trials: 0,
            max_minutes: None,
            workers: 1,
            baseline: false,
            ..c.clone()
        };
        strip(self) == strip(other)
    }
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetSpec::Digits,
            teacher: ModelName::Resnet20,
            teacher_weights: None,
            student: ModelName::Resnet8,
            teacher_training: Recipe::digits(),
            proxy: ProxyConfig::default(),
            space: SearchSpaceConfig::default(),
            strategy: StrategyName::Mcts,
            mcts: MctsConfig::default(),
            trials: 60,
            max_minutes: None,
            baseline: false,
            workers: 1,
            store: StoreKind::Journal,
            store_path: None,
        }
    }
}

impl SearchConfig {
    /// Reads a config file; errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| AppError::io(path, e))?;
        toml::from_str(&text).map_err(|e| AppError::File {
            path: path.to_path_buf(),
            message: format!("invalid search config: {e}"),
        })
    }
}
