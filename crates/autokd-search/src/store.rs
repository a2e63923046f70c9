//! Trial stores: an append-only log of search events, from which a search killed at any point is
//! rebuilt exactly (see [`crate::driver`]).
//!
//! A search is a sequence of two events: a trial *started* (its candidate) and a trial *finished*
//! (its reward and a payload the caller chooses, e.g. the proxy outcome). Replaying the log through
//! the same seeded strategy reproduces the strategy's state; a trial started and never finished is
//! run again. Three stores:
//! - [`MemoryStore`]: in-process only (nothing survives the process);
//! - [`JournalStore`]: JSON lines in a file, each event written and flushed to disk before the
//!   search goes on (the default of `autokd search`, in the run folder);
//! - `SqliteStore` (feature `sqlite`, through sqlx, which also serves PostgreSQL).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Choices;

/// One entry of a search log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// Trial `trial` (0-based, in the order trials were started) was handed to an evaluator.
    Started {
        /// Trial index.
        trial: usize,
        /// Its candidate.
        choices: Choices,
    },
    /// Trial `trial` finished.
    Finished {
        /// Trial index.
        trial: usize,
        /// Reward; `None` for a rejected trial.
        reward: Option<f64>,
        /// What the evaluator reported besides the reward.
        #[serde(default)]
        payload: serde_json::Value,
    },
}

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the store's file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A line of a journal is not an event.
    #[error("{path}:{line}: not a search event ({message})")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The database failed.
    #[error("{location}: {message}")]
    Database {
        /// Database file or URL.
        location: String,
        /// What went wrong.
        message: String,
    },
}

/// Where a search keeps its events.
pub trait TrialStore: Send {
    /// Every event written so far, oldest first.
    fn events(&mut self) -> Result<Vec<Event>, StoreError>;
    /// Appends an event; it is durable when this returns.
    fn append(&mut self, event: &Event) -> Result<(), StoreError>;
}

/// Events kept in memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    events: Vec<Event>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TrialStore for MemoryStore {
    fn events(&mut self) -> Result<Vec<Event>, StoreError> {
        Ok(self.events.clone())
    }
    fn append(&mut self, event: &Event) -> Result<(), StoreError> {
        self.events.push(event.clone());
        Ok(())
    }
}

/// Events as JSON lines in a file, appended and synced one by one.
///
/// A process killed while writing can leave a last line without its newline; that torn line is
/// ignored on reading (and cut off before the next append): the event it held is simply redone.
#[derive(Debug)]
pub struct JournalStore {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl JournalStore {
    /// A journal at `path` (created on the first append).
    pub fn open(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            file: None,
        }
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Bytes of the file up to the end of its last complete line.
    fn complete_len(&self) -> Result<u64, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(bytes
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i as u64 + 1)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(self.io(e)),
        }
    }
}

impl TrialStore for JournalStore {
    fn events(&mut self) -> Result<Vec<Event>, StoreError> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let mut events = Vec::new();
        let mut reader = std::io::BufReader::new(file);
        let mut line = String::new();
        let mut number = 0;
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| self.io(e))?;
            if n == 0 || !line.ends_with('\n') {
                break; // end, or a torn last line
            }
            number += 1;
            if line.trim().is_empty() {
                continue;
            }
            let event = serde_json::from_str(&line).map_err(|e| StoreError::Parse {
                path: self.path.clone(),
                line: number,
                message: e.to_string(),
            })?;
            events.push(event);
        }
        Ok(events)
    }

    fn append(&mut self, event: &Event) -> Result<(), StoreError> {
        if self.file.is_none() {
            let keep = self.complete_len()?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| self.io(e))?;
            file.set_len(keep).map_err(|e| self.io(e))?;
            self.file = Some(file);
        }
        let mut line = serde_json::to_string(event).map_err(|e| StoreError::Parse {
            path: self.path.clone(),
            line: 0,
            message: e.to_string(),
        })?;
        line.push('\n');
        let path = self.path.clone();
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        if let Some(file) = self.file.as_mut() {
            file.write_all(line.as_bytes()).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Event> {
        vec![
            Event::Started {
                trial: 0,
                choices: vec![1, 2, 3],
            },
            Event::Started {
                trial: 1,
                choices: vec![0, 0, 1],
            },
            Event::Finished {
                trial: 1,
                reward: Some(-0.1 - 0.2), // not exactly representable: round trip must be exact
                payload: serde_json::json!({"accuracy": 0.5}),
            },
            Event::Finished {
                trial: 0,
                reward: None,
                payload: serde_json::Value::Null,
            },
        ]
    }

    #[test]
    fn journal_round_trips_events_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/journal.jsonl");
        let mut store = JournalStore::open(&path);
        assert!(store.events().unwrap().is_empty());
        for e in sample() {
            store.append(&e).unwrap();
        }
        assert_eq!(JournalStore::open(&path).events().unwrap(), sample());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("{\"event\":\"started\",\"trial\":0,\"choices\":[1,2,3]}\n"),
            "{text}"
        );
    }

    #[test]
    fn journal_ignores_and_cuts_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut store = JournalStore::open(&path);
        for e in &sample()[..2] {
            store.append(e).unwrap();
        }
        drop(store);
        // A kill in the middle of a write.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"event\":\"finished\",\"tri").unwrap();
        drop(f);
        let mut store = JournalStore::open(&path);
        assert_eq!(store.events().unwrap(), sample()[..2].to_vec());
        store.append(&sample()[2]).unwrap();
        assert_eq!(
            JournalStore::open(&path).events().unwrap(),
            sample()[..3].to_vec()
        );
    }

    #[test]
    fn journal_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        std::fs::write(
            &path,
            "{\"event\":\"started\",\"trial\":0,\"choices\":[1]}\n{\"event\":\"paused\"}\n",
        )
        .unwrap();
        let err = JournalStore::open(&path).events().unwrap_err().to_string();
        assert!(err.contains("journal.jsonl:2: not a search event"), "{err}");
    }

    #[test]
    fn memory_store_keeps_order() {
        let mut s = MemoryStore::new();
        for e in sample() {
            s.append(&e).unwrap();
        }
        assert_eq!(s.events().unwrap(), sample());
    }
}
