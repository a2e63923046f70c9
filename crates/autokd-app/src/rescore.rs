//! Proxy-scoring given distillers, outside any search: what a proxy variant (other images per
//! class, epochs, β, seed) says about distillers whose trained accuracy is known. `autokd bench
//! fidelity` compares variants by how well their rewards rank an experiment's trainings.

use std::path::Path;

use autokd_distill::DistillerSpec;
use autokd_models::Backbone;
use autokd_train::{ProxyEvaluator, TrialOutcome};
use burn::prelude::*;

use crate::error::{AppError, Result};
use crate::{SearchConfig, model_spec};

/// Scores `specs` with the proxy of `config` (its dataset, pair, space's taps, teacher recipe and
/// `[proxy]`), one trial each in order, on `device`; the teacher comes from the config's weights
/// or the cache in `cache_dir` (trained and cached when missing).
pub fn score_distillers(
    config: &SearchConfig,
    specs: &[DistillerSpec],
    device: &Device,
    cache_dir: &Path,
) -> Result<Vec<TrialOutcome>> {
    let space = config.space.validate()?;
    let dataset = config.dataset.load()?;
    let info = &dataset.info;
    let (t_spec, s_spec) = (
        model_spec(config.teacher, info),
        model_spec(config.student, info),
    );
    let t_model = t_spec.init(device)?;
    let s_info = s_spec.init(device)?.feature_info();
    let terms = space
        .resolve_taps(
            config.student.as_str(),
            &s_info,
            config.teacher.as_str(),
            &t_model.feature_info(),
        )
        .map_err(|e| AppError::Invalid(format!("the search space does not fit the models: {e}")))?;
    let taps = autokd_distill::space::teacher_indices(&terms);
    let (teacher, _) = crate::search::teacher(
        config,
        &t_spec,
        t_model,
        &dataset,
        cache_dir,
        device,
        &mut |_| Ok(()),
    )?;
    let evaluator = ProxyEvaluator::new(
        &dataset,
        &teacher,
        config.teacher.as_str(),
        s_spec,
        &taps,
        config.proxy.clone(),
        device,
    )?;
    specs
        .iter()
        .map(|s| evaluator.evaluate(s).map_err(AppError::from))
        .collect()
}
