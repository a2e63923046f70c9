//! The search config: what a search runs, as a config file gives it (every field has a default:
//! the embedded-digits search). A run folder records it as `config.toml`.

use std::path::{Path, PathBuf};

use autokd_data::DatasetSpec;
use autokd_distill::SearchSpaceConfig;
use autokd_models::ModelName;
use autokd_search::{EvolutionConfig, MctsConfig, RewardScale, TpeConfig};
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
    /// Every candidate once, in lexicographic order (small spaces only: the tabular benchmark).
    Grid,
    /// The Tree-structured Parzen Estimator (optuna's semantics).
    Tpe,
    /// Regularized evolution (population 10, tournament 3, one-level mutations).
    Evolution,
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
    /// MCTS settings; its `seed` seeds every strategy.
    pub mcts: MctsConfig,
    /// TPE settings.
    pub tpe: TpeConfig,
    /// Regularized evolution settings.
    pub evolution: EvolutionConfig,
    /// Distinct candidates to evaluate.
    pub trials: usize,
    /// Wall-time budget of the search in minutes (no new trial starts after it).
    pub max_minutes: Option<f64>,
    /// After an MCTS, TPE or evolution search, run random search with the same budget and plot
    /// both.
    pub baseline: bool,
    /// Named baselines (`vanilla`, `kd`, `dist`, …) scored by the proxy after the search,
    /// outside its budget and its strategy, so that the report shows where they stand.
    pub named_baselines: Vec<String>,
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
            named_baselines: Vec::new(),
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
            tpe: TpeConfig::default(),
            evolution: EvolutionConfig::default(),
            trials: 60,
            max_minutes: None,
            baseline: false,
            named_baselines: vec!["vanilla".into(), "kd".into(), "dist".into()],
            workers: 1,
            store: StoreKind::Journal,
            store_path: None,
        }
    }
}

impl SearchConfig {
    /// Reads a config file; errors name the file and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_text(
            path,
            &std::fs::read_to_string(path).map_err(|e| AppError::io(path, e))?,
        )
    }

    fn from_text(path: &Path, text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| AppError::File {
            path: path.to_path_buf(),
            message: format!("invalid search config: {e}"),
        })
    }

    /// Reads a run folder's recorded `config.toml`. A key that an earlier release did not write
    /// takes the behaviour of that release, so that the run resumes as it ran: no
    /// `mcts.reward_scale`, min–max scaling; no `mcts.rave`, 0; no `mcts.rollout_temperature`,
    /// 0 (uniform rollouts); no `proxy.val_per_class` or `proxy.val_max`, 0 (the whole held-out
    /// part). The second value says whether any was missing.
    pub fn from_recorded(path: &Path) -> Result<(Self, bool)> {
        let text = std::fs::read_to_string(path).map_err(|e| AppError::io(path, e))?;
        let mut cfg = Self::from_text(path, &text)?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| AppError::File {
            path: path.to_path_buf(),
            message: format!("invalid search config: {e}"),
        })?;
        let missing = |key: &str| table.get("mcts").and_then(|m| m.get(key)).is_none();
        let mut legacy = false;
        if missing("reward_scale") {
            cfg.mcts.reward_scale = RewardScale::MinMax;
            legacy = true;
        }
        if missing("rave") {
            cfg.mcts.rave = 0.0;
            legacy = true;
        }
        if missing("rollout_temperature") {
            cfg.mcts.rollout_temperature = 0.0;
            legacy = true;
        }
        // Before the validation sample, trials validated on the whole held-out part.
        let proxy_missing = |key: &str| table.get("proxy").and_then(|m| m.get(key)).is_none();
        if proxy_missing("val_per_class") {
            cfg.proxy.val_per_class = 0;
            legacy = true;
        }
        if proxy_missing("val_max") {
            cfg.proxy.val_max = 0;
            legacy = true;
        }
        Ok((cfg, legacy))
    }

    /// The strategy settings a recorded run resumes with (see [`SearchConfig::from_recorded`]):
    /// those of `recorded` where the folder predates them.
    pub fn resume_as(&mut self, recorded: &Self) {
        self.mcts.reward_scale = recorded.mcts.reward_scale;
        self.mcts.rave = recorded.mcts.rave;
        self.mcts.rollout_temperature = recorded.mcts.rollout_temperature;
        self.proxy.val_per_class = recorded.proxy.val_per_class;
        self.proxy.val_max = recorded.proxy.val_max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded config names its reward scale; one written before ranks reads as min–max.
    #[test]
    fn recorded_configs_keep_their_reward_scale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = toml::to_string(&SearchConfig::default()).unwrap();
        assert!(text.contains("reward_scale = \"rank\""), "{text}");
        std::fs::write(&path, &text).unwrap();
        let (cfg, legacy) = SearchConfig::from_recorded(&path).unwrap();
        assert_eq!((cfg.mcts.reward_scale, legacy), (RewardScale::Rank, false));
        let old: String = text
            .lines()
            .filter(|l| !l.starts_with("reward_scale"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, old).unwrap();
        let (cfg, legacy) = SearchConfig::from_recorded(&path).unwrap();
        assert_eq!((cfg.mcts.reward_scale, legacy), (RewardScale::MinMax, true));
        assert_eq!(cfg.mcts.rave, 10.0);
        // A folder from before shared statistics: no rave, uniform rollouts.
        let older: String = text
            .lines()
            .filter(|l| {
                !l.starts_with("reward_scale")
                    && !l.starts_with("rave")
                    && !l.starts_with("rollout")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, older).unwrap();
        let (cfg, legacy) = SearchConfig::from_recorded(&path).unwrap();
        assert!(legacy);
        assert_eq!(
            (
                cfg.mcts.reward_scale,
                cfg.mcts.rave,
                cfg.mcts.rollout_temperature
            ),
            (RewardScale::MinMax, 0.0, 0.0)
        );
        assert_eq!((cfg.proxy.val_per_class, cfg.proxy.val_max), (50, 10_000));
        // A folder from before the validation sample: the whole held-out part; a search
        // resumed over it takes the recorded settings and is the same search.
        let oldest: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("val_per_class") && !l.starts_with("val_max"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, oldest).unwrap();
        let (cfg, _) = SearchConfig::from_recorded(&path).unwrap();
        assert_eq!((cfg.proxy.val_per_class, cfg.proxy.val_max), (0, 0));
        let mut resumed = SearchConfig::default();
        assert!(!resumed.same_search(&cfg));
        resumed.resume_as(&cfg);
        assert!(resumed.same_search(&cfg));
        // A user's config without the key takes the default, ranks.
        assert_eq!(
            SearchConfig::from_file(&path).unwrap().mcts.reward_scale,
            RewardScale::Rank
        );
    }
}
