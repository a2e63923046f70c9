//! Runs a strategy for a budget of distinct candidates, one at a time or several in parallel,
//! logging every trial to a [`TrialStore`] so that a killed search resumes where it stopped.
//!
//! - A candidate seen before is not evaluated again: its reward is told to the strategy and no
//!   budget is spent (a candidate still in flight is told when its trial finishes). "Seen" is up
//!   to the caller's `canonical` map: candidates with the same representative (the same loss,
//!   see `autokd_distill::Effective`) are one candidate.
//! - **Resume.** The store's events are replayed through the same seeded strategy, in their logged
//!   order: each `started` event must be what the strategy proposes (else the store belongs to a
//!   different search), each `finished` event is told to it. The strategy ends in the state it had
//!   when the search stopped; trials started and never finished are run again first.
//! - **Parallel trials.** `workers` threads evaluate; the calling thread asks, tells and writes the
//!   store. With one worker the sequence of trials is a function of the seed and the rewards.
//! - **Panics.** An evaluation that panics (burn panics on shape errors and on device
//!   out-of-memory) is caught in its worker and recorded as a rejected trial whose payload is
//!   `{"rejected": "the trial panicked: …"}`; the search goes on.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::mpsc;

use crate::store::{Event, MemoryStore, StoreError, TrialStore};
use crate::{Choices, Strategy, Ticket};

/// One evaluated candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Index of the trial (0-based, in the order trials were started).
    pub index: usize,
    /// The candidate.
    pub choices: Choices,
    /// Its reward; `None` if rejected.
    pub reward: Option<f64>,
}

/// A finished trial with what its evaluator reported.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialResult {
    /// The trial.
    pub trial: Trial,
    /// The evaluator's report besides the reward.
    pub payload: serde_json::Value,
    /// Whether it came from the store rather than from an evaluation in this process.
    pub replayed: bool,
}

/// What an evaluation gives: the reward (`None`: rejected) and a payload to store, or an error
/// that stops the search.
pub type Evaluation = Result<(Option<f64>, serde_json::Value), String>;

/// The payload of a trial whose evaluation panicked: `{"rejected": "the trial panicked: <message>"}`.
pub fn panic_payload(panic: &(dyn std::any::Any + Send)) -> serde_json::Value {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    serde_json::json!({ "rejected": format!("the trial panicked: {message}") })
}

/// Runs one evaluation, turning a panic into a rejected trial.
fn evaluate_caught<E>(evaluate: &E, trial: usize, choices: &Choices) -> Evaluation
where
    E: Fn(usize, &Choices) -> Evaluation + Sync,
{
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evaluate(trial, choices)))
        .unwrap_or_else(|panic| Ok((None, panic_payload(panic.as_ref()))))
}

/// Budget and parallelism of a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// Distinct candidates to evaluate (counting those replayed from the store).
    pub budget: usize,
    /// Evaluations running at once (at least 1).
    pub workers: usize,
    /// Stop when this many proposals in a row were all seen before (the space is exhausted or the
    /// strategy has converged).
    pub max_repeats: usize,
}

/// Why a search stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store's events are not what this search would have done.
    #[error(
        "the store does not belong to this search: {0} (resume with the config and seed that wrote it, or start a new run)"
    )]
    Diverged(String),
    /// An evaluation failed.
    #[error("trial {trial} failed: {message}")]
    Evaluation {
        /// Trial index.
        trial: usize,
        /// The evaluator's error.
        message: String,
    },
}

/// The coordinator's bookkeeping.
struct State<'s, S: Strategy + ?Sized> {
    strategy: &'s mut S,
    /// Representative of a candidate.
    canonical: &'s dyn Fn(&Choices) -> Choices,
    /// Rewards by representative.
    seen: HashMap<Choices, Option<f64>>,
    /// Trials started and not finished: their tickets.
    in_flight: HashMap<usize, Ticket>,
    /// Tickets of candidates asked again while their trial (or one with the same
    /// representative) was in flight, by representative.
    waiting: HashMap<Choices, Vec<Ticket>>,
    started: usize,
    repeats: usize,
    results: Vec<TrialResult>,
    max_repeats: usize,
}

impl<S: Strategy + ?Sized> State<'_, S> {
    /// The next candidate never seen nor in flight, or `None` once `max_repeats` proposals in a
    /// row were repeats.
    fn ask_fresh(&mut self) -> Option<Ticket> {
        while self.repeats < self.max_repeats {
            let ticket = self.strategy.ask();
            let key = (self.canonical)(&ticket.choices);
            if let Some(&reward) = self.seen.get(&key) {
                self.strategy.tell(&ticket, reward);
                self.repeats += 1;
            } else if self
                .in_flight
                .values()
                .any(|t| (self.canonical)(&t.choices) == key)
            {
                self.waiting.entry(key).or_default().push(ticket);
                self.repeats += 1;
            } else {
                self.repeats = 0;
                return Some(ticket);
            }
        }
        None
    }

    fn finish(
        &mut self,
        trial: usize,
        reward: Option<f64>,
        payload: serde_json::Value,
        replayed: bool,
    ) -> Result<&TrialResult, DriverError> {
        let ticket = self.in_flight.remove(&trial).ok_or_else(|| {
            DriverError::Diverged(format!("trial {trial} finished but was never started"))
        })?;
        self.strategy.tell(&ticket, reward);
        let key = (self.canonical)(&ticket.choices);
        for t in self.waiting.remove(&key).unwrap_or_default() {
            self.strategy.tell(&t, reward);
        }
        self.seen.insert(key, reward);
        self.results.push(TrialResult {
            trial: Trial {
                index: trial,
                choices: ticket.choices,
                reward,
            },
            payload,
            replayed,
        });
        self.results
            .last()
            .ok_or_else(|| DriverError::Diverged("no result".into()))
    }
}

/// Runs `strategy` against `store` (replaying what it holds first) until the budget is spent,
/// `stop()` says so before a new trial, or the space is exhausted. Candidates with the same
/// `canonical` representative are evaluated once (pass `&|c| c.clone()` to compare choices as
/// they are). `on_result` sees every finished trial, replayed ones first. Returns the finished
/// trials in the order they finished.
#[allow(clippy::too_many_arguments)]
pub fn drive<S, E>(
    strategy: &mut S,
    store: &mut dyn TrialStore,
    config: DriverConfig,
    canonical: &dyn Fn(&Choices) -> Choices,
    mut stop: impl FnMut() -> bool,
    evaluate: E,
    mut on_result: impl FnMut(&TrialResult),
) -> Result<Vec<TrialResult>, DriverError>
where
    S: Strategy + ?Sized,
    E: Fn(usize, &Choices) -> Evaluation + Sync,
{
    let mut st = State {
        strategy,
        canonical,
        seen: HashMap::new(),
        in_flight: HashMap::new(),
        waiting: HashMap::new(),
        started: 0,
        repeats: 0,
        results: Vec::new(),
        max_repeats: config.max_repeats.max(1),
    };
    // Replay.
    for event in store.events()? {
        match event {
            Event::Started { trial, choices } => {
                let ticket = st.ask_fresh().ok_or_else(|| {
                    DriverError::Diverged(format!(
                        "trial {trial} was started but this search proposes nothing more"
                    ))
                })?;
                if trial != st.started || ticket.choices != choices {
                    return Err(DriverError::Diverged(format!(
                        "trial {trial} evaluated {choices:?}, this search proposes {:?} as trial {}",
                        ticket.choices, st.started
                    )));
                }
                st.in_flight.insert(trial, ticket);
                st.started += 1;
            }
            Event::Finished {
                trial,
                reward,
                payload,
            } => {
                let r = st.finish(trial, reward, payload, true)?;
                on_result(r);
            }
        }
    }
    // Trials that were running when the search stopped run again first.
    let mut rerun: Vec<(usize, Choices)> = st
        .in_flight
        .iter()
        .map(|(&i, t)| (i, t.choices.clone()))
        .collect();
    rerun.sort();
    let mut queue: VecDeque<(usize, Choices)> = rerun.into();
    let workers = config.workers.max(1);
    let (job_tx, job_rx) = mpsc::channel::<(usize, Choices)>();
    let (done_tx, done_rx) = mpsc::channel::<(usize, Evaluation)>();
    let job_rx = Mutex::new(job_rx);
    let mut failure: Option<DriverError> = None;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (job_rx, done_tx, evaluate) = (&job_rx, done_tx.clone(), &evaluate);
            scope.spawn(move || {
                loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((trial, choices)) = job else {
                        return;
                    };
                    let evaluation = evaluate_caught(evaluate, trial, &choices);
                    if done_tx.send((trial, evaluation)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut running = 0usize;
        let mut exhausted = false;
        loop {
            while running < workers && failure.is_none() {
                let job = if let Some(job) = queue.pop_front() {
                    job
                } else if exhausted || st.started >= config.budget || stop() {
                    exhausted = true;
                    break;
                } else if let Some(ticket) = st.ask_fresh() {
                    let trial = st.started;
                    let choices = ticket.choices.clone();
                    if let Err(e) = store.append(&Event::Started {
                        trial,
                        choices: choices.clone(),
                    }) {
                        failure = Some(e.into());
                        break;
                    }
                    st.in_flight.insert(trial, ticket);
                    st.started += 1;
                    (trial, choices)
                } else {
                    exhausted = true;
                    break;
                };
                if job_tx.send(job).is_err() {
                    break;
                }
                running += 1;
            }
            if running == 0 {
                break;
            }
            let Ok((trial, evaluation)) = done_rx.recv() else {
                break;
            };
            running -= 1;
            match evaluation {
                Ok((reward, payload)) if failure.is_none() => {
                    let event = Event::Finished {
                        trial,
                        reward,
                        payload,
                    };
                    if let Err(e) = store.append(&event) {
                        failure = Some(e.into());
                        continue;
                    }
                    let Event::Finished { payload, .. } = event else {
                        continue;
                    };
                    match st.finish(trial, reward, payload, false) {
                        Ok(r) => on_result(r),
                        Err(e) => failure = Some(e),
                    }
                }
                Ok(_) => {}
                Err(message) => {
                    if failure.is_none() {
                        failure = Some(DriverError::Evaluation { trial, message });
                    }
                }
            }
        }
        drop(job_tx);
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(st.results),
    }
}

/// Evaluates up to `budget` distinct candidates proposed by `strategy`, one at a time, without a
/// store. Stops early when `max_repeats` proposals in a row were all seen before.
pub fn run<S: Strategy + ?Sized, E: FnMut(&Choices) -> Option<f64> + Send>(
    strategy: &mut S,
    budget: usize,
    max_repeats: usize,
    evaluate: E,
) -> Result<Vec<Trial>, DriverError> {
    run_until(strategy, budget, max_repeats, || false, evaluate)
}

/// [`run`], also stopping before a new evaluation once `stop()` says so (a wall-time budget).
pub fn run_until<S: Strategy + ?Sized, E: FnMut(&Choices) -> Option<f64> + Send>(
    strategy: &mut S,
    budget: usize,
    max_repeats: usize,
    stop: impl FnMut() -> bool,
    evaluate: E,
) -> Result<Vec<Trial>, DriverError> {
    // One worker: evaluations happen one at a time, so the FnMut can sit behind a lock.
    let evaluate = Mutex::new(evaluate);
    let config = DriverConfig {
        budget,
        workers: 1,
        max_repeats,
    };
    let results = drive(
        strategy,
        &mut MemoryStore::new(),
        config,
        &|c| c.clone(),
        stop,
        |_, c| {
            // A panic inside `evaluate` is a rejected trial; the lock it poisoned stays usable.
            let mut f = evaluate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(((*f)(c), serde_json::Value::Null))
        },
        |_| {},
    );
    Ok(results?.into_iter().map(|r| r.trial).collect())
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
            if best_after(&run(&mut m, 2000, 1000, |c| Some(reward(c))).unwrap(), 2000) == optimum {
                found += 1;
            }
            let mut r = RandomSearch::new(&LEVELS, seed);
            if best_after(&run(&mut r, 2000, 1000, |c| Some(reward(c))).unwrap(), 2000) == optimum {
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
            mcts_sum += evals_to(&run(&mut m, budget, 1000, |c| Some(reward(c))).unwrap());
            let mut r = RandomSearch::new(&LEVELS, seed);
            rand_sum += evals_to(&run(&mut r, budget, 1000, |c| Some(reward(c))).unwrap());
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
            .unwrap()
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
        )
        .unwrap();
        assert_eq!(trials.len(), 5);
    }

    fn mcts(seed: u64) -> Mcts {
        Mcts::new(
            &LEVELS,
            MctsConfig {
                seed,
                ..MctsConfig::default()
            },
        )
    }

    fn eval(_: usize, c: &Choices) -> Evaluation {
        // Reject some candidates so that rejections are replayed too.
        let r = if c[1] == 3 { None } else { Some(reward(c)) };
        Ok((r, serde_json::json!({ "first": c[0] })))
    }

    fn config(budget: usize, workers: usize) -> DriverConfig {
        DriverConfig {
            budget,
            workers,
            max_repeats: 1000,
        }
    }

    #[test]
    fn resume_after_a_kill_at_any_event_loses_nothing() {
        let mut full_store = MemoryStore::new();
        let full = drive(
            &mut mcts(7),
            &mut full_store,
            config(40, 1),
            &|c| c.clone(),
            || false,
            eval,
            |_| {},
        )
        .unwrap();
        let events = full_store.events().unwrap();
        assert_eq!(events.len(), 80);
        // Killed after every possible event: the finished trials are kept (not evaluated again),
        // an in-flight trial is run again, and the search ends exactly as the uninterrupted one.
        for cut in 0..events.len() {
            let mut store = MemoryStore::new();
            for e in &events[..cut] {
                store.append(e).unwrap();
            }
            let evaluated = Mutex::new(Vec::new());
            let resumed = drive(
                &mut mcts(7),
                &mut store,
                config(40, 1),
                &|c| c.clone(),
                || false,
                |i, c| {
                    evaluated.lock().unwrap().push(i);
                    eval(i, c)
                },
                |_| {},
            )
            .unwrap();
            let strip = |r: &[TrialResult]| {
                r.iter()
                    .map(|r| (r.trial.clone(), r.payload.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&resumed), strip(&full), "cut at event {cut}");
            assert_eq!(store.events().unwrap(), events, "cut at event {cut}");
            let finished = cut / 2;
            assert_eq!(
                evaluated.into_inner().unwrap(),
                (finished..40).collect::<Vec<_>>()
            );
            assert!(resumed[..finished].iter().all(|r| r.replayed));
            assert!(resumed[finished..].iter().all(|r| !r.replayed));
        }
    }

    #[test]
    fn parallel_trials_resume_with_any_number_of_workers() {
        let mut store = MemoryStore::new();
        let stops = std::cell::Cell::new(0);
        // Four workers; stopped after 23 trials were started (some still running).
        let first = drive(
            &mut mcts(3),
            &mut store,
            config(60, 4),
            &|c| c.clone(),
            || {
                stops.set(stops.get() + 1);
                stops.get() > 23
            },
            |i, c| {
                std::thread::sleep(std::time::Duration::from_millis((i as u64 * 7) % 5));
                eval(i, c)
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(first.len(), 23);
        // Drop the last two finished events, as if killed with two trials in flight.
        let mut events = store.events().unwrap();
        let mut dropped = 0;
        while dropped < 2 {
            if let Some(pos) = events
                .iter()
                .rposition(|e| matches!(e, Event::Finished { .. }))
            {
                events.remove(pos);
                dropped += 1;
            }
        }
        let mut store = MemoryStore::new();
        for e in &events {
            store.append(e).unwrap();
        }
        let evaluated = Mutex::new(0usize);
        let resumed = drive(
            &mut mcts(3),
            &mut store,
            config(60, 2),
            &|c| c.clone(),
            || false,
            |i, c| {
                *evaluated.lock().unwrap() += 1;
                eval(i, c)
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(resumed.len(), 60);
        assert_eq!(*evaluated.lock().unwrap(), 60 - 21);
        let mut seen = std::collections::HashSet::new();
        assert!(resumed.iter().all(|r| seen.insert(r.trial.choices.clone())));
        let mut indices: Vec<usize> = resumed.iter().map(|r| r.trial.index).collect();
        indices.sort();
        assert_eq!(indices, (0..60).collect::<Vec<_>>());
    }

    #[test]
    fn parallel_workers_run_at_once() {
        let active = std::sync::atomic::AtomicUsize::new(0);
        let peak = std::sync::atomic::AtomicUsize::new(0);
        use std::sync::atomic::Ordering::SeqCst;
        let results = drive(
            &mut mcts(1),
            &mut MemoryStore::new(),
            config(24, 3),
            &|c| c.clone(),
            || false,
            |i, c| {
                let now = active.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                active.fetch_sub(1, SeqCst);
                eval(i, c)
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(results.len(), 24);
        assert_eq!(peak.load(SeqCst), 3);
    }

    #[test]
    fn a_store_from_another_search_is_refused() {
        let mut store = MemoryStore::new();
        drive(
            &mut mcts(1),
            &mut store,
            config(5, 1),
            &|c| c.clone(),
            || false,
            eval,
            |_| {},
        )
        .unwrap();
        let err = drive(
            &mut mcts(2),
            &mut store,
            config(5, 1),
            &|c| c.clone(),
            || false,
            eval,
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("does not belong to this search"), "{err}");
    }

    #[test]
    fn a_failed_evaluation_stops_the_search_with_its_trial() {
        let err = drive(
            &mut mcts(1),
            &mut MemoryStore::new(),
            config(10, 2),
            &|c| c.clone(),
            || false,
            |i, c| {
                if i == 4 {
                    Err("out of memory".into())
                } else {
                    eval(i, c)
                }
            },
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "trial 4 failed: out of memory");
    }

    /// Issue 12 item 2: a trial that panics is a rejected trial with the reason, with one worker
    /// and with three (before, a panicking worker left the driver waiting forever).
    #[test]
    fn a_panicking_trial_is_rejected_and_the_search_goes_on() {
        for workers in [1, 3] {
            let mut store = MemoryStore::new();
            let results = drive(
                &mut mcts(3),
                &mut store,
                config(12, workers),
                &|c| c.clone(),
                || false,
                |trial, c| {
                    if trial == 4 {
                        panic!("shape mismatch in candidate {c:?}");
                    }
                    eval(trial, c)
                },
                |_| {},
            )
            .unwrap();
            assert_eq!(results.len(), 12, "workers {workers}");
            let bad = results.iter().find(|r| r.trial.index == 4).unwrap();
            assert_eq!(bad.trial.reward, None);
            let why = bad.payload["rejected"].as_str().unwrap();
            assert!(
                why.starts_with("the trial panicked: shape mismatch in candidate"),
                "{why}"
            );
            // The store holds it like any other finished trial.
            let events = store.events().unwrap();
            assert!(events.iter().any(|e| matches!(
                e,
                Event::Finished {
                    trial: 4,
                    reward: None,
                    ..
                }
            )));
        }
        // The convenience runner too: the panicking candidate is rejected, the rest evaluated.
        let mut calls = 0;
        let trials = run(&mut RandomSearch::new(&[3, 3], 0), 9, 10_000, |c| {
            calls += 1;
            if calls == 2 {
                panic!("boom");
            }
            Some(c[0] as f64)
        })
        .unwrap();
        assert_eq!(trials.len(), 9);
        assert_eq!(trials.iter().filter(|t| t.reward.is_none()).count(), 1);
    }

    /// Candidates with the same representative are one candidate: evaluated once, the others
    /// told its reward without spending budget.
    #[test]
    fn candidates_with_one_representative_are_evaluated_once() {
        // The second level does not matter: its options are all one candidate.
        let canonical = |c: &Choices| vec![c[0], 0];
        let mut store = MemoryStore::new();
        let evaluated = std::sync::Mutex::new(Vec::new());
        let results = drive(
            &mut Mcts::new(&[3, 4], MctsConfig::default()),
            &mut store,
            config(12, 2),
            &canonical,
            || false,
            |_, c| {
                evaluated.lock().unwrap().push(c.clone());
                Ok((Some(c[0] as f64), serde_json::Value::Null))
            },
            |_| {},
        )
        .unwrap();
        // 3 distinct losses in a space of 12 candidates: 3 trials, then the space is exhausted.
        assert_eq!(results.len(), 3);
        let mut firsts: Vec<usize> = evaluated.lock().unwrap().iter().map(|c| c[0]).collect();
        firsts.sort();
        assert_eq!(firsts, vec![0, 1, 2]);
    }

    #[test]
    fn tiny_space_is_exhausted() {
        let mut m = Mcts::new(&[2, 2], MctsConfig::default());
        let trials = run(&mut m, 100, 50, |c| Some(c[0] as f64 + c[1] as f64)).unwrap();
        assert_eq!(trials.len(), 4);
    }
}
