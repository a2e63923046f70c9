//! The SQLite trial store, through sqlx (whose PostgreSQL driver will serve the store for many
//! machines with the same SQL).
//!
//! One table, `autokd_events`, holds the events of every search stream written to the database
//! (`stream` tells an MCTS search from its random baseline), and the view `autokd_trials` shows
//! one row per trial for people reading the file with `sqlite3`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};

use crate::store::{Event, StoreError, TrialStore};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS autokd_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('started', 'finished')),
    trial INTEGER NOT NULL,
    choices TEXT,
    reward DOUBLE PRECISION,
    payload TEXT,
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS autokd_events_stream ON autokd_events (stream, seq);
CREATE VIEW IF NOT EXISTS autokd_trials AS
    SELECT s.stream, s.trial, s.choices, f.reward, f.payload,
           s.at AS started_at, f.at AS finished_at
    FROM autokd_events s
    LEFT JOIN autokd_events f
        ON f.stream = s.stream AND f.trial = s.trial AND f.kind = 'finished'
    WHERE s.kind = 'started';
";

/// Events of one search stream in a SQLite file (WAL, synchronous = FULL: an event is on disk
/// when [`TrialStore::append`] returns).
pub struct SqliteStore {
    path: PathBuf,
    stream: String,
    runtime: tokio::runtime::Runtime,
    conn: SqliteConnection,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, for the events of `stream`.
    pub fn open(path: impl AsRef<Path>, stream: &str) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let err = |message: String| StoreError::Database {
            location: path.display().to_string(),
            message,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| err(format!("starting the database runtime: {e}")))?;
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let conn = runtime.block_on(async {
            let mut conn = options.connect().await?;
            sqlx::raw_sql(SCHEMA).execute(&mut conn).await?;
            Ok::<_, sqlx::Error>(conn)
        });
        let conn = conn.map_err(|e| err(e.to_string()))?;
        Ok(Self {
            path,
            stream: stream.to_string(),
            runtime,
            conn,
        })
    }

    fn err(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError::Database {
            location: self.path.display().to_string(),
            message: message.to_string(),
        }
    }

    /// Closes the connection (checkpointing the WAL into the database file).
    pub fn close(self) -> Result<(), StoreError> {
        let location = self.path.display().to_string();
        self.runtime
            .block_on(self.conn.close())
            .map_err(|e| StoreError::Database {
                location,
                message: e.to_string(),
            })
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl TrialStore for SqliteStore {
    fn events(&mut self) -> Result<Vec<Event>, StoreError> {
        let rows = self.runtime.block_on(
            sqlx::query(
                "SELECT kind, trial, choices, reward, payload FROM autokd_events \
                 WHERE stream = ? ORDER BY seq",
            )
            .bind(&self.stream)
            .fetch_all(&mut self.conn),
        );
        let rows = rows.map_err(|e| self.err(e))?;
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let get = |e: sqlx::Error| self.err(format!("reading autokd_events: {e}"));
            let kind: String = row.try_get("kind").map_err(get)?;
            let trial: i64 = row.try_get("trial").map_err(get)?;
            let trial = usize::try_from(trial)
                .map_err(|_| self.err(format!("autokd_events: trial {trial} is negative")))?;
            let event = match kind.as_str() {
                "started" => {
                    let choices: Option<String> = row.try_get("choices").map_err(get)?;
                    let choices = serde_json::from_str(choices.as_deref().unwrap_or("null"))
                        .map_err(|e| {
                            self.err(format!("autokd_events: choices of trial {trial}: {e}"))
                        })?;
                    Event::Started { trial, choices }
                }
                _ => {
                    let reward: Option<f64> = row.try_get("reward").map_err(get)?;
                    let payload: Option<String> = row.try_get("payload").map_err(get)?;
                    let payload = match payload {
                        Some(p) => serde_json::from_str(&p).map_err(|e| {
                            self.err(format!("autokd_events: payload of trial {trial}: {e}"))
                        })?,
                        None => serde_json::Value::Null,
                    };
                    Event::Finished {
                        trial,
                        reward,
                        payload,
                    }
                }
            };
            events.push(event);
        }
        Ok(events)
    }

    fn append(&mut self, event: &Event) -> Result<(), StoreError> {
        let (kind, trial, choices, reward, payload) = match event {
            Event::Started { trial, choices } => (
                "started",
                *trial,
                Some(serde_json::to_string(choices).map_err(|e| self.err(e))?),
                None,
                None,
            ),
            Event::Finished {
                trial,
                reward,
                payload,
            } => (
                "finished",
                *trial,
                None,
                *reward,
                Some(serde_json::to_string(payload).map_err(|e| self.err(e))?),
            ),
        };
        let trial = i64::try_from(trial).map_err(|e| self.err(e))?;
        let done = self.runtime.block_on(
            sqlx::query(
                "INSERT INTO autokd_events (stream, kind, trial, choices, reward, payload, at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&self.stream)
            .bind(kind)
            .bind(trial)
            .bind(choices)
            .bind(reward)
            .bind(payload)
            .bind(now())
            .execute(&mut self.conn),
        );
        done.map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_round_trips_streams_separately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trials.sqlite");
        let events = vec![
            Event::Started {
                trial: 0,
                choices: vec![4, 0, 2],
            },
            Event::Finished {
                trial: 0,
                reward: Some(-0.1 - 0.2),
                payload: serde_json::json!({"val_ce": 0.25, "note": "ok"}),
            },
            Event::Started {
                trial: 1,
                choices: vec![1, 1, 1],
            },
            Event::Finished {
                trial: 1,
                reward: None,
                payload: serde_json::Value::Null,
            },
        ];
        let mut a = SqliteStore::open(&path, "mcts").unwrap();
        let mut b = SqliteStore::open(&path, "random").unwrap();
        for e in &events {
            a.append(e).unwrap();
        }
        b.append(&events[2]).unwrap();
        a.close().unwrap();
        drop(b);
        assert_eq!(
            SqliteStore::open(&path, "mcts").unwrap().events().unwrap(),
            events
        );
        assert_eq!(
            SqliteStore::open(&path, "random")
                .unwrap()
                .events()
                .unwrap(),
            vec![events[2].clone()]
        );
    }

    #[test]
    fn sqlite_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-db.sqlite");
        std::fs::write(
            &path,
            "this is not a database, just text that is long enough",
        )
        .unwrap();
        let err = SqliteStore::open(&path, "mcts").unwrap_err().to_string();
        assert!(err.contains("not-a-db.sqlite"), "{err}");
    }
}
