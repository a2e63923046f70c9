//! The tabular benchmark's data (ARCHITECTURE §5): a grid search (`strategy = "grid"`) scores
//! every candidate of a small space, each distinct loss once, and writes `grid.json` beside its
//! trials: for every candidate, in lexicographic order, the index of the candidate that
//! represents its loss. Grid runs of the same space at two or more proxy seeds make one
//! [`Table`] ([`load_table`]), against which `autokd bench search` replays strategies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use autokd_search::{GridSearch, Table};
use serde::{Deserialize, Serialize};

use crate::error::{AppError, Result};

/// The most candidates a grid search enumerates.
pub const GRID_MAX: u128 = 100_000;

/// `grid.json`: the space's levels and, per candidate, its representative's index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridMap {
    /// Options per level.
    pub levels: Vec<usize>,
    /// For each candidate in lexicographic order, the index of its loss's representative.
    pub representatives: Vec<u64>,
}

impl GridMap {
    /// The file name in a run folder.
    pub const FILE: &'static str = "grid.json";

    /// The map of a space of `levels` under `canonical` (the representative of a candidate);
    /// refused above [`GRID_MAX`] candidates.
    pub fn new(levels: &[usize], canonical: impl Fn(&[usize]) -> Vec<usize>) -> Result<Self> {
        let size = GridSearch::size(levels)
            .filter(|&n| n <= GRID_MAX)
            .ok_or_else(|| {
                AppError::Invalid(format!(
                    "grid search enumerates every candidate: this space has {} (levels {levels:?}), more than {GRID_MAX}; give [space] fewer options",
                    GridSearch::size(levels).map_or("too many".to_string(), |n| n.to_string())
                ))
            })?;
        let representatives = (0..size)
            .map(|i| {
                let rep = canonical(&GridSearch::candidate(levels, i));
                GridSearch::index(levels, &rep) as u64
            })
            .collect();
        Ok(Self {
            levels: levels.to_vec(),
            representatives,
        })
    }

    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            AppError::io(
                &path,
                std::io::Error::new(
                    e.kind(),
                    format!("{e} (a grid search's run folder has it: strategy = \"grid\")"),
                ),
            )
        })?;
        let map: Self = serde_json::from_str(&text).map_err(|e| AppError::File {
            path: path.clone(),
            message: format!("not a grid map: {e}"),
        })?;
        if GridSearch::size(&map.levels) != Some(map.representatives.len() as u128) {
            return Err(AppError::File {
                path,
                message: format!(
                    "{} representatives for a space of levels {:?}",
                    map.representatives.len(),
                    map.levels
                ),
            });
        }
        Ok(map)
    }
}

/// One line of `trials.jsonl`, the parts a table reads.
#[derive(Deserialize)]
struct Line {
    choices: Vec<usize>,
    outcome: Outcome,
}

#[derive(Deserialize)]
struct Outcome {
    reward: Option<f64>,
}

/// The rewards of a grid run by representative index.
fn grid_rewards(dir: &Path, levels: &[usize]) -> Result<HashMap<u64, Option<f64>>> {
    let path = dir.join("trials.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| AppError::io(&path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            let line: Line = serde_json::from_str(l).map_err(|e| AppError::File {
                path: path.clone(),
                message: format!("line {}: {e}", n + 1),
            })?;
            Ok((
                GridSearch::index(levels, &line.choices) as u64,
                line.outcome.reward,
            ))
        })
        .collect()
}

/// The table of grid runs `dirs` (one per proxy seed, the same space): every candidate's reward
/// at each run's seed, through its representative. Errors name the folder and what is missing.
pub fn load_table(dirs: &[PathBuf]) -> Result<Table> {
    let mut map: Option<(PathBuf, GridMap)> = None;
    let mut columns = Vec::new();
    for dir in dirs {
        let grid = GridMap::read(dir)?;
        if let Some((first, m)) = &map
            && *m != grid
        {
            return Err(AppError::Invalid(format!(
                "{} and {} hold grids of different spaces",
                first.display(),
                dir.display()
            )));
        }
        let rewards = grid_rewards(dir, &grid.levels)?;
        let column = grid
            .representatives
            .iter()
            .map(|r| {
                rewards.get(r).copied().ok_or_else(|| {
                    AppError::Invalid(format!(
                        "{}: candidate {r} was never scored (is the grid search finished? resume it with --out {})",
                        dir.display(),
                        dir.display()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        columns.push(column);
        if map.is_none() {
            map = Some((dir.clone(), grid));
        }
    }
    let Some((_, grid)) = map else {
        return Err(AppError::Invalid("no grid run folder given".into()));
    };
    let rewards = (0..grid.representatives.len())
        .map(|i| columns.iter().map(|c| c[i]).collect())
        .collect();
    Table::new(&grid.levels, rewards).map_err(|e| AppError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two grid folders written by hand over a 2×2 space whose candidates 1 and 3 share a loss
    /// with 0 and 2: the table gives every candidate its representative's reward per seed; a
    /// missing trial and a foreign grid are errors that name the folder.
    #[test]
    fn a_table_from_two_grid_runs() {
        let dir = tempfile::tempdir().unwrap();
        let levels = [2, 2];
        let grid = GridMap::new(&levels, |c| vec![c[0], 0]).unwrap();
        assert_eq!(grid.representatives, vec![0, 0, 2, 2]);
        let write = |name: &str, grid: &GridMap, lines: &[(&[usize], Option<f64>)]| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(GridMap::FILE), serde_json::to_string(grid).unwrap()).unwrap();
            let text: String = lines
                .iter()
                .map(|(c, r)| {
                    format!(
                        "{}\n",
                        serde_json::json!({"trial": 1, "choices": c, "outcome": {"reward": r}})
                    )
                })
                .collect();
            std::fs::write(d.join("trials.jsonl"), text).unwrap();
            d
        };
        let a = write("s0", &grid, &[(&[0, 0], Some(-1.0)), (&[1, 0], None)]);
        let b = write("s1", &grid, &[(&[0, 0], Some(-1.5)), (&[1, 0], Some(-2.0))]);
        let t = load_table(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t.observed(&[0, 1], 0), Some(-1.0));
        assert_eq!(t.observed(&[1, 1], 0), None);
        assert_eq!(t.observed(&[1, 1], 1), Some(-2.0));
        let c = write("s2", &grid, &[(&[0, 0], Some(-1.0))]);
        let err = load_table(&[a.clone(), c]).unwrap_err().to_string();
        assert!(err.contains("s2") && err.contains("never scored"), "{err}");
        let other = GridMap::new(&[2, 2], |c| c.to_vec()).unwrap();
        let d = write("other", &other, &[]);
        let err = load_table(&[a, d]).unwrap_err().to_string();
        assert!(err.contains("different spaces"), "{err}");
        let err = load_table(&[dir.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("grid.json"), "{err}");
        assert!(GridMap::new(&[1000, 1000], |c| c.to_vec()).is_err());
    }
}
