//! The embedded SQLite backend, for a single proxy process.
//!
//! rusqlite is synchronous, so every call runs on the blocking thread pool with the one connection
//! behind a std mutex: the async runtime never waits on disk. WAL lets the file be read (e.g. by
//! `eshops list` from another process) while the proxy writes; `busy_timeout` makes such a
//! concurrent writer wait instead of failing. Token-refresh locking is in-process: one process
//! owns an SQLite store.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::migrations;
use super::{reseal_sql, Reseal, StoreError, SECRET_COLUMNS};
use super::{RawAccessToken, RawInstallation, RawOutbox, RawSecrets, RawSummary, RawUpsert};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// Refresh locks, striped by e-shop id: bounded memory however many e-shops there are. Two
    /// e-shops on one stripe only serialise their (rare, brief) refreshes.
    token_locks: Arc<[Arc<tokio::sync::Mutex<()>>]>,
}

/// Stripes of the refresh lock; a power of two well above the refreshes that run at once.
const TOKEN_LOCK_STRIPES: usize = 256;

const INSTALLATION_COLUMNS: &str = "eshop_url, contact_email, oauth_token, status, installed_at, \
     updated_at, access_token, access_token_expires_at, signature_key";

impl SqliteStore {
    pub(crate) async fn open(path: PathBuf) -> Result<SqliteStore, StoreError> {
        let conn = tokio::task::spawn_blocking(move || open_blocking(&path))
            .await
            .map_err(|_| StoreError::Task)??;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            token_locks: (0..TOKEN_LOCK_STRIPES).map(|_| Arc::default()).collect(),
        })
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside `f` cannot leave SQLite half-written (statements are atomic and
            // transactions roll back on drop), so a poisoned mutex is still usable.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|_| StoreError::Task)?
        .map_err(StoreError::Sqlite)
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.run(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await
    }

    pub(crate) async fn get(&self, id: i64) -> Result<Option<RawInstallation>, StoreError> {
        self.run(move |c| {
            c.prepare_cached(&format!(
                "SELECT {INSTALLATION_COLUMNS} FROM installations WHERE eshop_id = ?1"
            ))?
            .query_row([id], |r| {
                let access_token: Option<Vec<u8>> = r.get(6)?;
                let expires_at: Option<i64> = r.get(7)?;
                Ok(RawInstallation {
                    eshop_url: r.get(0)?,
                    contact_email: r.get(1)?,
                    oauth_token: r.get(2)?,
                    status: r.get(3)?,
                    installed_at: r.get(4)?,
                    updated_at: r.get(5)?,
                    access_token: RawAccessToken::from_columns(access_token, expires_at),
                    signature_key: r.get(8)?,
                })
            })
            .optional()
        })
        .await
    }

    pub(crate) async fn upsert(&self, row: RawUpsert) -> Result<(), StoreError> {
        self.run(move |c| {
            let (token, expires) = match row.access_token {
                Some(t) => (Some(t.sealed), Some(t.expires_at)),
                None => (None, None),
            };
            c.prepare_cached(
                "INSERT INTO installations (eshop_id, eshop_url, contact_email, oauth_token, \
                 status, installed_at, updated_at, access_token, access_token_expires_at) \
                 VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?5, ?6, ?7) \
                 ON CONFLICT (eshop_id) DO UPDATE SET \
                 eshop_url = COALESCE(excluded.eshop_url, installations.eshop_url), \
                 contact_email = COALESCE(excluded.contact_email, installations.contact_email), \
                 oauth_token = excluded.oauth_token, status = 'active', \
                 installed_at = excluded.installed_at, updated_at = excluded.updated_at, \
                 access_token = excluded.access_token, \
                 access_token_expires_at = excluded.access_token_expires_at, \
                 signature_key = NULL",
            )?
            .execute(params![
                row.eshop_id,
                row.eshop_url,
                row.contact_email,
                row.oauth_token,
                row.now,
                token,
                expires
            ])
            .map(drop)
        })
        .await
    }

    pub(crate) async fn set_status(
        &self,
        id: i64,
        status: &'static str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.run(move |c| {
            c.prepare_cached(
                "UPDATE installations SET status = ?2, updated_at = ?3 WHERE eshop_id = ?1",
            )?
            .execute(params![id, status, now])
            .map(|n| n > 0)
        })
        .await
    }

    pub(crate) async fn save_access_token(
        &self,
        id: i64,
        token: RawAccessToken,
        now: i64,
    ) -> Result<(), StoreError> {
        self.run(move |c| {
            c.prepare_cached(
                "UPDATE installations SET access_token = ?2, access_token_expires_at = ?3, \
                 updated_at = ?4 WHERE eshop_id = ?1",
            )?
            .execute(params![id, token.sealed, token.expires_at, now])
            .map(drop)
        })
        .await
    }

    pub(crate) async fn access_token(&self, id: i64) -> Result<Option<RawAccessToken>, StoreError> {
        self.run(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT access_token, access_token_expires_at FROM installations \
                     WHERE eshop_id = ?1",
                )?
                .query_row([id], |r| {
                    Ok(RawAccessToken::from_columns(r.get(0)?, r.get(1)?))
                })
                .optional()?;
            Ok(row.flatten())
        })
        .await
    }

    pub(crate) async fn set_signature_key(
        &self,
        id: i64,
        sealed: Vec<u8>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.run(move |c| {
            c.prepare_cached(
                "UPDATE installations SET signature_key = ?2, updated_at = ?3 WHERE eshop_id = ?1",
            )?
            .execute(params![id, sealed, now])
            .map(drop)
        })
        .await
    }

    pub(crate) async fn list(&self) -> Result<Vec<RawSummary>, StoreError> {
        self.run(|c| {
            c.prepare_cached(
                "SELECT eshop_id, eshop_url, contact_email, status, installed_at, \
                 access_token_expires_at FROM installations ORDER BY eshop_id",
            )?
            .query_map([], |r| {
                Ok(RawSummary {
                    eshop_id: r.get(0)?,
                    eshop_url: r.get(1)?,
                    contact_email: r.get(2)?,
                    status: r.get(3)?,
                    installed_at: r.get(4)?,
                    token_expires_at: r.get(5)?,
                })
            })?
            .collect()
        })
        .await
    }

    pub(crate) async fn remove(&self, id: i64) -> Result<bool, StoreError> {
        self.run(move |c| {
            c.prepare_cached("DELETE FROM installations WHERE eshop_id = ?1")?
                .execute([id])
                .map(|n| n > 0)
        })
        .await
    }

    pub(crate) async fn count_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.run(|c| {
            c.prepare_cached("SELECT status, COUNT(*) FROM installations GROUP BY status")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }

    pub(crate) async fn statuses(&self, ids: Vec<i64>) -> Result<Vec<(i64, String)>, StoreError> {
        self.run(move |c| {
            let marks = vec!["?"; ids.len()].join(",");
            c.prepare(&format!(
                "SELECT eshop_id, status FROM installations WHERE eshop_id IN ({marks})"
            ))?
            .query_map(rusqlite::params_from_iter(ids.iter()), |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect()
        })
        .await
    }

    /// The in-process refresh lock of one e-shop: the same stripe for every holder of that id.
    pub(crate) async fn lock_token(&self, eshop_id: u64) -> tokio::sync::OwnedMutexGuard<()> {
        let stripe = (eshop_id % TOKEN_LOCK_STRIPES as u64) as usize;
        self.token_locks[stripe].clone().lock_owned().await
    }

    pub(crate) async fn outbox_push(
        &self,
        kind: &'static str,
        eshop_id: Option<i64>,
        body: Vec<u8>,
        now: i64,
    ) -> Result<i64, StoreError> {
        self.run(move |c| {
            c.prepare_cached(
                "INSERT INTO outbox (kind, eshop_id, body, attempts, next_attempt_at, created_at) \
                 VALUES (?1, ?2, ?3, 0, ?4, ?4)",
            )?
            .execute(params![kind, eshop_id, body, now])?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    pub(crate) async fn outbox_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<RawOutbox>, StoreError> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let items = tx
                .prepare_cached(
                    "SELECT id, kind, eshop_id, body, attempts FROM outbox \
                     WHERE next_attempt_at <= ?1 ORDER BY id LIMIT ?2",
                )?
                .query_map(params![now, limit], |r| {
                    Ok(RawOutbox {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        eshop_id: r.get(2)?,
                        body: r.get(3)?,
                        attempts: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            {
                let mut claim =
                    tx.prepare_cached("UPDATE outbox SET next_attempt_at = ?2 WHERE id = ?1")?;
                for item in &items {
                    claim.execute(params![item.id, lease_until])?;
                }
            }
            tx.commit()?;
            Ok(items)
        })
        .await
    }

    pub(crate) async fn outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.run(move |c| {
            c.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                .execute([id])
                .map(drop)
        })
        .await
    }

    pub(crate) async fn outbox_retry_at(
        &self,
        id: i64,
        attempts: i64,
        at: i64,
    ) -> Result<(), StoreError> {
        self.run(move |c| {
            c.prepare_cached("UPDATE outbox SET attempts = ?2, next_attempt_at = ?3 WHERE id = ?1")?
                .execute(params![id, attempts, at])
                .map(drop)
        })
        .await
    }

    pub(crate) async fn use_nonce(
        &self,
        nonce: String,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.run(move |c| {
            c.prepare_cached("DELETE FROM settings_nonces WHERE expires_at < ?1")?
                .execute([now])?;
            c.prepare_cached(
                "INSERT INTO settings_nonces (nonce, expires_at) VALUES (?1, ?2) \
                 ON CONFLICT (nonce) DO NOTHING",
            )?
            .execute(params![nonce, expires_at])
            .map(|n| n == 1)
        })
        .await
    }

    pub(crate) async fn outbox_depth(&self) -> Result<i64, StoreError> {
        self.run(|c| c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0)))
            .await
    }

    pub(crate) async fn secrets_batch(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<RawSecrets>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            c.prepare_cached(&format!(
                "SELECT eshop_id, {}, {}, {} FROM installations WHERE eshop_id > ?1 \
                 ORDER BY eshop_id LIMIT ?2",
                SECRET_COLUMNS[0], SECRET_COLUMNS[1], SECRET_COLUMNS[2]
            ))?
            .query_map(params![after, limit], |r| {
                Ok(RawSecrets {
                    eshop_id: r.get(0)?,
                    values: [r.get(1)?, r.get(2)?, r.get(3)?],
                })
            })?
            .collect()
        })
        .await
    }

    /// Applies a batch of re-sealed values in one transaction (one sync to disk, not one per
    /// value); returns the ids of the rows changed.
    pub(crate) async fn reseal(&self, batch: Vec<Reseal>) -> Result<Vec<i64>, StoreError> {
        self.run(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut changed = Vec::new();
            for r in batch {
                let n = tx
                    .prepare_cached(&reseal_sql(r.column, "?1", "?2", "?3"))?
                    .execute(params![r.eshop_id, r.old, r.new])?;
                if n > 0 {
                    changed.push(r.eshop_id);
                }
            }
            tx.commit()?;
            Ok(changed)
        })
        .await
    }
}

fn open_blocking(path: &Path) -> Result<Connection, StoreError> {
    if path.as_os_str().is_empty() {
        return Err(StoreError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty SQLite path"),
        });
    }
    create_private(path)?;
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!(
            "SQLite refused WAL mode (journal_mode is {mode})"
        )));
    }
    migrate(&mut conn)?;
    Ok(conn)
}

/// Creates a missing store file readable by its owner only: sealed secrets need not be public.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map(drop)
        .map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening a new file at once must not both apply migration 1.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(migrations::SCHEMA_VERSION_TABLE, [])?;
    let found: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    let known = i64::try_from(migrations::SQLITE.len()).unwrap_or(i64::MAX);
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for (version, sql) in (1..)
        .zip(migrations::SQLITE)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reopening_applies_no_migration_twice_and_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        SqliteStore::open(path.clone()).await.unwrap();
        let store = SqliteStore::open(path.clone()).await.unwrap();
        let versions: Vec<i64> = store
            .run(|c| {
                c.prepare("SELECT version FROM schema_version ORDER BY version")?
                    .query_map([], |r| r.get(0))?
                    .collect()
            })
            .await
            .unwrap();
        let all: Vec<i64> = (1..=migrations::SQLITE.len() as i64).collect();
        assert_eq!(versions, all);
        store
            .run(|c| c.execute("INSERT INTO schema_version (version) VALUES (99)", []))
            .await
            .unwrap();
        drop(store);
        let err = SqliteStore::open(path).await.err().unwrap();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn new_store_file_is_private_and_in_wal_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let store = SqliteStore::open(path.clone()).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let journal: String = store
            .run(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(journal, "wal");
    }

    #[tokio::test]
    async fn missing_directory_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("x.db");
        let err = SqliteStore::open(path).await.err().unwrap().to_string();
        assert!(err.contains("no-such-dir"), "{err}");
    }
}
