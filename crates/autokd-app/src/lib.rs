//! The autokd application as a library: what `autokd search` does, callable from the command
//! line, the coming `autokd worker`, and tests. [`run_search`] takes a [`SearchRequest`] (the
//! config, the run folder, the devices) and returns a typed [`SearchReport`]; it tells its caller
//! what happens as [`SearchEvent`]s and never prints. See `docs/ARCHITECTURE.md`.

pub mod config;
pub mod error;
pub mod experiment;
pub mod plots;
pub mod rescore;
pub mod search;
pub mod table;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use config::{SearchConfig, StoreKind, StrategyName};
pub use error::{AppError, Result};
pub use experiment::{
    ExperimentConfig, ExperimentEvent, ExperimentFile, ExperimentReport, ExperimentRequest,
    run_experiment, score_name,
};
pub use search::{
    NamedBaseline, Observer, SearchEvent, SearchReport, SearchRequest, TeacherOrigin, TrialRecord,
    best_so_far, report_markdown, run_search,
};
pub use table::{GridMap, load_table};

/// The spec of `name` sized for a dataset: its channels, classes and image side.
pub fn model_spec(
    name: autokd_models::ModelName,
    info: &autokd_data::DatasetInfo,
) -> autokd_models::ModelSpec {
    autokd_models::ModelSpec {
        name,
        in_channels: info.channels,
        num_classes: info.num_classes,
        image_size: info.height,
    }
}

/// The folder of trained teachers shared by searches: `$XDG_CACHE_HOME/autokd`, else
/// `~/.cache/autokd`, else `.autokd-cache`.
pub fn default_cache_dir() -> PathBuf {
    match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(x), _) => PathBuf::from(x).join("autokd"),
        (None, Some(h)) => PathBuf::from(h).join(".cache").join("autokd"),
        _ => PathBuf::from(".autokd-cache"),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so that a
/// crash never leaves a half-written file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    // Readable by others like any file the user writes (a temporary file is created 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(|e| AppError::io(dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| AppError::io(tmp.path(), e))?;
    // On disk before the rename, so that a crash leaves the old file or the new one.
    tmp.as_file()
        .sync_all()
        .map_err(|e| AppError::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| AppError::io(path, e.error))?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// An atomic write replaces the file whole and leaves it readable by others (0644), as a
    /// plain write would; nothing else is left in the folder.
    #[test]
    fn atomic_writes_replace_the_file_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.md");
        super::write_atomic(&path, b"old").unwrap();
        super::write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
