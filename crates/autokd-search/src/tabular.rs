//! A tabular benchmark (NAS-Bench style): every candidate of a small space scored in advance at
//! several proxy seeds, so that strategies can be replayed against the table offline, hundreds
//! of times, in seconds.
//!
//! - **Observed and held-out rewards.** A replay observes one seed's rewards; the candidate it
//!   picks (the best observed; ties to the lower lexicographic index) is valued by the mean of the
//!   *other* seeds' rewards, an independent re-evaluation that does not reward the winner's
//!   curse. A rejected reward is valued at the table's worst accepted value of those seeds.
//! - **Regret** at budget `k`: the best held-out value in the table minus the held-out value of
//!   the pick among the first `k` distinct candidates.
//! - **Random search in closed form.** Its first `k` distinct candidates are a uniform `k`-subset,
//!   so the pick is the candidate at position `i` of the observed order with probability
//!   `C(N − i, k − 1) / C(N, k)`; [`Table::random_regret`] sums that exactly, and a replayed
//!   random search must agree with it.

use crate::driver::{DriverError, run};
use crate::grid::GridSearch;
use crate::{Choices, Strategy};

/// Rewards of every candidate of a space at several seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    levels: Vec<usize>,
    /// `[candidate][seed]`, candidates in lexicographic order; `None`: rejected.
    rewards: Vec<Vec<Option<f64>>>,
}

/// Why a table cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The rewards do not fit the space.
    #[error("tabular benchmark: {0}")]
    Invalid(String),
}

impl Table {
    /// A table over `levels` with `rewards[candidate][seed]` (lexicographic order, at least two
    /// seeds, every candidate scored at every seed, at least one accepted reward per seed).
    pub fn new(levels: &[usize], rewards: Vec<Vec<Option<f64>>>) -> Result<Self, TableError> {
        let size = GridSearch::size(levels)
            .ok_or_else(|| TableError::Invalid("the space is too large".into()))?;
        if rewards.len() as u128 != size {
            return Err(TableError::Invalid(format!(
                "{} candidates scored, the space has {size}",
                rewards.len()
            )));
        }
        let seeds = rewards.first().map_or(0, Vec::len);
        if seeds < 2 || rewards.iter().any(|r| r.len() != seeds) {
            return Err(TableError::Invalid(
                "every candidate needs rewards at the same two or more seeds".into(),
            ));
        }
        let table = Self {
            levels: levels.to_vec(),
            rewards,
        };
        if (0..seeds).any(|s| table.accepted(s).next().is_none()) {
            return Err(TableError::Invalid("a seed has no accepted reward".into()));
        }
        Ok(table)
    }

    /// Options per level.
    pub fn levels(&self) -> &[usize] {
        &self.levels
    }

    /// Candidates.
    pub fn len(&self) -> usize {
        self.rewards.len()
    }

    /// Whether the table has no candidate.
    pub fn is_empty(&self) -> bool {
        self.rewards.is_empty()
    }

    /// Seeds.
    pub fn seeds(&self) -> usize {
        self.rewards.first().map_or(0, Vec::len)
    }

    fn accepted(&self, seed: usize) -> impl Iterator<Item = f64> + '_ {
        self.rewards
            .iter()
            .filter_map(move |r| r[seed].filter(|v| v.is_finite()))
    }

    /// The reward of `choices` at `seed` (`None`: rejected).
    pub fn observed(&self, choices: &[usize], seed: usize) -> Option<f64> {
        let i = GridSearch::index(&self.levels, choices) as usize;
        self.rewards
            .get(i)
            .and_then(|r| r.get(seed).copied().flatten())
            .filter(|v| v.is_finite())
    }

    /// Held-out values of every candidate when `seed` is observed: the mean over the other
    /// seeds, a rejection counting as that seed's worst accepted reward.
    pub fn held_out(&self, seed: usize) -> Vec<f64> {
        let others: Vec<usize> = (0..self.seeds()).filter(|&s| s != seed).collect();
        let floor: Vec<f64> = (0..self.seeds())
            .map(|s| self.accepted(s).fold(f64::INFINITY, f64::min))
            .collect();
        self.rewards
            .iter()
            .map(|r| {
                others
                    .iter()
                    .map(|&s| r[s].filter(|v| v.is_finite()).unwrap_or(floor[s]))
                    .sum::<f64>()
                    / others.len() as f64
            })
            .collect()
    }

    /// Candidates by observed reward at `seed`, best first (rejected last; ties by index): the
    /// order in which a strategy's pick is made.
    fn observed_order(&self, seed: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        let key = |i: usize| {
            self.rewards[i][seed]
                .filter(|v| v.is_finite())
                .unwrap_or(f64::NEG_INFINITY)
        };
        order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        order
    }

    /// The expected regret of random search at budget `k` observing `seed`, exactly.
    pub fn random_regret(&self, seed: usize, k: usize) -> f64 {
        let values = self.held_out(seed);
        let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let n = self.len();
        let k = k.clamp(1, n);
        // P(pick = position i, 1-based) = C(n − i, k − 1) / C(n, k): k/n at i = 1, then the ratio
        // (n − i − k + 1) / (n − i) from i to i + 1.
        let mut p = k as f64 / n as f64;
        let mut expected = 0.0;
        for (i, &c) in self.observed_order(seed).iter().enumerate() {
            let pos = i + 1;
            expected += p * (best - values[c]);
            if pos + k > n {
                break;
            }
            p *= (n - pos - k + 1) as f64 / (n - pos) as f64;
        }
        expected
    }

    /// Replays `strategy` against the table observing `seed`, and returns its regret at each of
    /// `budgets` (distinct candidates; all of them when the space runs out first).
    pub fn replay(
        &self,
        strategy: &mut dyn Strategy,
        seed: usize,
        budgets: &[usize],
    ) -> Result<Vec<f64>, DriverError> {
        let max = budgets.iter().copied().max().unwrap_or(0);
        let trials = run(strategy, max, 10 * max.max(100), |c: &Choices| {
            self.observed(c, seed)
        })?;
        let values = self.held_out(seed);
        let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let rank: Vec<usize> = {
            let mut rank = vec![0; self.len()];
            for (r, &c) in self.observed_order(seed).iter().enumerate() {
                rank[c] = r;
            }
            rank
        };
        Ok(budgets
            .iter()
            .map(|&k| {
                trials
                    .iter()
                    .take(k)
                    .map(|t| GridSearch::index(&self.levels, &t.choices) as usize)
                    .min_by_key(|&c| rank[c])
                    .map_or(f64::NAN, |c| best - values[c])
            })
            .collect())
    }
}

/// How well two seeds of a table agree: the proxy's own reliability, the ceiling of any
/// strategy's ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeedAgreement {
    /// Spearman's ρ between the two seeds' rewards over candidates accepted at both.
    pub spearman: f64,
    /// Candidates accepted at both seeds.
    pub accepted_both: usize,
    /// Candidates rejected at exactly one of the two seeds.
    pub rejected_one: usize,
}

/// Spearman's ρ: Pearson's correlation of the mid-ranks.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let rank = |x: &[f64]| -> Vec<f64> {
        crate::mcts::mid_rank_values(&x.iter().map(|v| Some(*v)).collect::<Vec<_>>())
    };
    let (ra, rb) = (rank(a), rank(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

impl Table {
    /// The agreement of seeds `a` and `b` over the table's candidates.
    pub fn seed_agreement(&self, a: usize, b: usize) -> SeedAgreement {
        let ok = |v: Option<f64>| v.filter(|v| v.is_finite());
        let pairs: Vec<(f64, f64)> = self
            .rewards
            .iter()
            .filter_map(|r| ok(r[a]).zip(ok(r[b])))
            .collect();
        let (x, y): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
        SeedAgreement {
            spearman: spearman(&x, &y),
            accepted_both: pairs.len(),
            rejected_one: self
                .rewards
                .iter()
                .filter(|r| ok(r[a]).is_some() != ok(r[b]).is_some())
                .count(),
        }
    }
}

/// Kendall's τ-b: concordant minus discordant pairs over `√((n₀ − n₁)(n₀ − n₂))`, `n₀` the
/// pairs, `n₁` and `n₂` those tied in `a` and in `b` (scipy's `kendalltau` default). NaN when
/// either side is constant or there are fewer than two points.
pub fn kendall_tau_b(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (mut concordant, mut discordant, mut ties_a, mut ties_b, mut pairs) =
        (0i64, 0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            pairs += 1;
            let (da, db) = (a[i] - a[j], b[i] - b[j]);
            if da == 0.0 {
                ties_a += 1;
            }
            if db == 0.0 {
                ties_b += 1;
            }
            let s = da * db;
            if s > 0.0 {
                concordant += 1;
            } else if s < 0.0 {
                discordant += 1;
            }
        }
    }
    let denominator = (((pairs - ties_a) * (pairs - ties_b)) as f64).sqrt();
    if denominator == 0.0 {
        return f64::NAN;
    }
    (concordant - discordant) as f64 / denominator
}

/// The percentile bootstrap's 95% interval of `statistic` over paired samples: `reps` resamples
/// of the `n` pairs with replacement (ChaCha8 seeded with `seed`), the 2.5th and 97.5th
/// percentiles of the finite values. `(NaN, NaN)` when no resample gives a finite value.
pub fn bootstrap_ci(
    a: &[f64],
    b: &[f64],
    reps: usize,
    seed: u64,
    statistic: impl Fn(&[f64], &[f64]) -> f64,
) -> (f64, f64) {
    use rand::{Rng, SeedableRng};
    let n = a.len().min(b.len());
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(reps);
    let (mut ra, mut rb) = (vec![0.0; n], vec![0.0; n]);
    for _ in 0..reps {
        for k in 0..n {
            let i = rng.random_range(0..n);
            (ra[k], rb[k]) = (a[i], b[i]);
        }
        let v = statistic(&ra, &rb);
        if v.is_finite() {
            values.push(v);
        }
    }
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((q * values.len() as f64) as usize).min(values.len() - 1)];
    (at(0.025), at(0.975))
}

/// Mean and the half-width of its 95% interval (normal approximation, `1.96·sd/√n`).
pub fn mean_ci(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, 1.96 * (var / n).sqrt())
}

/// The Wilcoxon signed-rank test of paired differences against a zero median, two-sided, by
/// the normal approximation with the tie correction: zero differences are dropped, the others
/// ranked by magnitude (ties share their mean rank), `W⁺` the sum of the positive ones' ranks,
/// `z = (W⁺ − n(n+1)/4) / √(n(n+1)(2n+1)/24 − Σ(t³ − t)/48)`. Returns `(z, p)`; `(0, 1)` when
/// no difference is non-zero.
pub fn wilcoxon_signed_rank(diffs: &[f64]) -> (f64, f64) {
    let nonzero: Vec<f64> = diffs.iter().copied().filter(|d| *d != 0.0).collect();
    let n = nonzero.len() as f64;
    if nonzero.is_empty() {
        return (0.0, 1.0);
    }
    let magnitudes: Vec<Option<f64>> = nonzero.iter().map(|d| Some(d.abs())).collect();
    // Mid-ranks from 1: the values (r − ½)/n back to r.
    let ranks: Vec<f64> = crate::mcts::mid_rank_values(&magnitudes)
        .iter()
        .map(|v| v * n + 0.5)
        .collect();
    let w_plus: f64 = nonzero
        .iter()
        .zip(&ranks)
        .filter(|(d, _)| **d > 0.0)
        .map(|(_, r)| r)
        .sum();
    let mut sorted: Vec<f64> = nonzero.iter().map(|d| d.abs()).collect();
    sorted.sort_by(f64::total_cmp);
    let mut ties = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let j = sorted[i..].iter().take_while(|&&x| x == sorted[i]).count();
        let t = j as f64;
        ties += t * t * t - t;
        i += j;
    }
    let var = n * (n + 1.0) * (2.0 * n + 1.0) / 24.0 - ties / 48.0;
    if var <= 0.0 {
        return (0.0, 1.0);
    }
    let z = (w_plus - n * (n + 1.0) / 4.0) / var.sqrt();
    (z, erfc(z.abs() / std::f64::consts::SQRT_2))
}

/// The complementary error function (Numerical Recipes' `erfcc`, Chebyshev fit, relative error
/// below 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Mcts, MctsConfig, RandomSearch};

    /// A 3×4×4 table at two seeds: seed 1 is seed 0 plus a small deterministic perturbation, one
    /// candidate is rejected at seed 0.
    fn table() -> Table {
        let levels = [3, 4, 4];
        let rewards = (0..48u128)
            .map(|i| {
                let c = GridSearch::candidate(&levels, i);
                let base = -(c[0] as f64) - 0.3 * c[1] as f64 - 0.1 * c[2] as f64;
                let noise = 0.05 * ((i * 7 % 5) as f64 - 2.0);
                vec![(i != 5).then_some(base), Some(base + noise)]
            })
            .collect();
        Table::new(&levels, rewards).unwrap()
    }

    /// Held-out values by hand: observing seed 0, candidate 0's held-out value is its seed-1
    /// reward, 0 + 0.05·(0 − 2) = −0.1; observing seed 1, candidate 5 (rejected at seed 0) is
    /// valued at seed 0's worst accepted reward, −2 − 0.9 − 0.3 = −3.2.
    #[test]
    fn held_out_values_by_hand() {
        let t = table();
        assert!((t.held_out(0)[0] + 0.1).abs() < 1e-12);
        assert!((t.held_out(1)[5] + 3.2).abs() < 1e-12);
        assert_eq!(t.observed(&[0, 1, 1], 0), None);
        assert_eq!(t.observed(&[0, 0, 0], 0), Some(0.0));
        // Budget = the whole space: random search always picks the observed best.
        let all = t.random_regret(0, 48);
        let values = t.held_out(0);
        let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!((all - (best - values[0])).abs() < 1e-12);
        assert!(Table::new(&[2], vec![vec![Some(1.0)]; 2]).is_err());
        assert!(Table::new(&[3], vec![vec![Some(1.0), Some(2.0)]; 2]).is_err());
    }

    /// Spearman by hand: ranks (1, 2, 3, 4) against (1, 3, 2, 4): Σd² = 2, ρ = 1 − 6·2/(4·15)
    /// = 0.8; a reversed order gives −1; the table's seeds agree on 47 accepted candidates and
    /// disagree on the one rejected at seed 0 only.
    #[test]
    fn spearman_and_seed_agreement_by_hand() {
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 30.0, 20.0, 40.0]) - 0.8).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        let a = table().seed_agreement(0, 1);
        assert_eq!((a.accepted_both, a.rejected_one), (47, 1));
        assert!(a.spearman > 0.9 && a.spearman < 1.0, "{a:?}");
    }

    /// Wilcoxon by hand: differences 1, −2, 3, 4, −5, 6 have W⁺ = 1 + 3 + 4 + 6 = 14, mean
    /// 10.5, variance 6·7·13/24 = 22.75, so z = 3.5/√22.75 = 0.73380 and p = erfc(z/√2) =
    /// 0.46307 (Python's `math.erfc`); a tie of |2| and |−2|
    /// shares rank 1.5 and lowers the variance by (8 − 2)/48 (by hand; the normal approximation
    /// without continuity correction).
    #[test]
    fn wilcoxon_by_hand() {
        let (z, p) = wilcoxon_signed_rank(&[1.0, -2.0, 3.0, 4.0, -5.0, 6.0]);
        assert!((z - 0.733_799).abs() < 1e-5, "{z}");
        assert!((p - 0.463_07).abs() < 1e-4, "{p}");
        let (z, _) = wilcoxon_signed_rank(&[2.0, -2.0, 0.0, 3.0]);
        // Ranks 1.5, 1.5, 3: W⁺ = 4.5, mean 3, variance 3.5 − 0.125.
        assert!((z - 1.5 / 3.375f64.sqrt()).abs() < 1e-12, "{z}");
        assert_eq!(wilcoxon_signed_rank(&[0.0, 0.0]), (0.0, 1.0));
        assert!((erfc(0.0) - 1.0).abs() < 1e-7 && (erfc(1.0) - 0.157_299_2).abs() < 1e-7);
    }

    /// The closed form of random search at budget 1 is the mean regret over all candidates, and
    /// 4,000 replays of the real random search agree with it at every budget within 4 standard
    /// errors.
    /// Kendall's τ-b by hand: `a = [1, 2, 3, 4]`, `b = [1, 3, 2, 2]`: of the 6 pairs, 3 are
    /// concordant (those with the first point), 2 discordant (the second point against the
    /// third and the fourth) and 1 tied in `b` only (the last two): τ-b = (3 − 2) / √(6 · 5) =
    /// 0.182574…; reversed order gives −1; a constant side NaN.
    /// The bootstrap interval of a perfect agreement is [1, 1]; it is reproducible per seed
    /// and brackets the point estimate of a noisy one.
    #[test]
    fn kendall_tau_b_and_the_bootstrap() {
        let t = kendall_tau_b(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 2.0]);
        assert!((t - 1.0 / 30f64.sqrt()).abs() < 1e-12, "{t}");
        assert_eq!(kendall_tau_b(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        assert!(kendall_tau_b(&[1.0, 2.0], &[5.0, 5.0]).is_nan());
        let x: Vec<f64> = (0..20).map(f64::from).collect();
        assert_eq!(bootstrap_ci(&x, &x, 200, 0, kendall_tau_b), (1.0, 1.0));
        let y: Vec<f64> = x.iter().map(|v| v + 8.0 * ((v * 2.3).sin())).collect();
        let tau = kendall_tau_b(&x, &y);
        let (lo, hi) = bootstrap_ci(&x, &y, 500, 7, kendall_tau_b);
        assert!(lo < tau && tau < hi && hi - lo > 0.05, "{lo} {tau} {hi}");
        assert_eq!(bootstrap_ci(&x, &y, 500, 7, kendall_tau_b), (lo, hi));
    }

    #[test]
    fn replayed_random_search_agrees_with_the_closed_form() {
        let t = table();
        let values = t.held_out(0);
        let best = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = values.iter().map(|v| best - v).sum::<f64>() / 48.0;
        assert!((t.random_regret(0, 1) - mean).abs() < 1e-12);
        let budgets = [1, 5, 10, 20];
        let runs: Vec<Vec<f64>> = (0..4000)
            .map(|s| {
                t.replay(&mut RandomSearch::new(t.levels(), s), 0, &budgets)
                    .unwrap()
            })
            .collect();
        for (j, &k) in budgets.iter().enumerate() {
            let xs: Vec<f64> = runs.iter().map(|r| r[j]).collect();
            let (m, half) = mean_ci(&xs);
            let se = half / 1.96;
            let exact = t.random_regret(0, k);
            assert!((m - exact).abs() < 4.0 * se + 1e-9, "k {k}: {m} vs {exact}");
        }
    }

    /// MCTS replays deterministically per seed, and on this smooth table beats random search at
    /// budget 20 on average.
    #[test]
    fn mcts_replays_and_beats_random_on_a_smooth_table() {
        let t = table();
        let mcts = |s| {
            Mcts::new(
                t.levels(),
                MctsConfig {
                    seed: s,
                    ..MctsConfig::default()
                },
            )
        };
        assert_eq!(
            t.replay(&mut mcts(3), 0, &[20]).unwrap(),
            t.replay(&mut mcts(3), 0, &[20]).unwrap()
        );
        let m: Vec<f64> = (0..100)
            .map(|s| t.replay(&mut mcts(s), 0, &[20]).unwrap()[0])
            .collect();
        let (m, _) = mean_ci(&m);
        assert!(
            m < t.random_regret(0, 20),
            "{m} vs {}",
            t.random_regret(0, 20)
        );
    }
}
