//! The PostgreSQL backend, for several proxy replicas sharing one database.
//!
//! Replicas share access tokens through the table and serialise refreshes with a session-level
//! advisory lock per e-shop (`pg_advisory_lock(eshop_id)`), held on one pooled connection for
//! the life of a [`PgTokenLock`]; the re-read and the save run on that same connection. Migrations
//! run under a transaction-level advisory lock in the two-key space (which never overlaps the
//! one-key space of e-shop ids), so replicas starting together apply each migration once.
//!
//! Connections are plain TCP (`NoTls`): run the database on a trusted network or a local socket.

use std::time::Duration;

use deadpool_postgres::{
    ClientWrapper, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;

use super::migrations;
use super::{reseal_sql, Reseal, StoreError, SECRET_COLUMNS};
use super::{RawAccessToken, RawInstallation, RawOutbox, RawSecrets, RawSummary, RawUpsert};

const POOL_SIZE: usize = 16;
/// Bounds waiting for a free connection: a token fetch holds one for its getAccessToken call, so
/// a burst of cold e-shops may keep all of them busy for a while.
const WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds opening a connection and checking a pooled one, so an unreachable database fails
/// requests within seconds (503 `proxy-store-unavailable`) instead of hanging them.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(2);
/// `pg_advisory_xact_lock(int, int)` key of the migration lock: "SP", 1.
const MIGRATION_LOCK: (i32, i32) = (0x5350, 1);

const SELECT_ACCESS_TOKEN: &str =
    "SELECT access_token, access_token_expires_at FROM installations WHERE eshop_id = $1";
const SAVE_ACCESS_TOKEN: &str = "UPDATE installations SET access_token = $2, \
     access_token_expires_at = $3, updated_at = $4 WHERE eshop_id = $1";
const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

#[derive(Clone)]
pub(crate) struct PgStore {
    pool: Pool,
}

impl PgStore {
    pub(crate) async fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse()?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A pooled connection is checked with an empty query before it is handed out:
                // after a database restart or a network cut, `is_closed` alone can still report
                // a dead connection as open, and its first query would fail a request.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            .build()?;
        let mut client = pool.get().await?;
        migrate(&mut client).await?;
        Ok(PgStore { pool })
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.pool.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    pub(crate) async fn get(&self, id: i64) -> Result<Option<RawInstallation>, StoreError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(
                "SELECT eshop_url, contact_email, oauth_token, status, installed_at, updated_at, \
                 access_token, access_token_expires_at, signature_key \
                 FROM installations WHERE eshop_id = $1",
            )
            .await?;
        let Some(r) = c.query_opt(&stmt, &[&id]).await? else {
            return Ok(None);
        };
        Ok(Some(RawInstallation {
            eshop_url: r.try_get(0)?,
            contact_email: r.try_get(1)?,
            oauth_token: r.try_get(2)?,
            status: r.try_get(3)?,
            installed_at: r.try_get(4)?,
            updated_at: r.try_get(5)?,
            access_token: RawAccessToken::from_columns(r.try_get(6)?, r.try_get(7)?),
            signature_key: r.try_get(8)?,
        }))
    }

    pub(crate) async fn upsert(&self, row: RawUpsert) -> Result<(), StoreError> {
        let (token, expires) = match row.access_token {
            Some(t) => (Some(t.sealed), Some(t.expires_at)),
            None => (None, None),
        };
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO installations (eshop_id, eshop_url, contact_email, oauth_token, \
                 status, installed_at, updated_at, access_token, access_token_expires_at) \
                 VALUES ($1, $2, $3, $4, 'active', $5, $5, $6, $7) \
                 ON CONFLICT (eshop_id) DO UPDATE SET \
                 eshop_url = COALESCE(excluded.eshop_url, installations.eshop_url), \
                 contact_email = COALESCE(excluded.contact_email, installations.contact_email), \
                 oauth_token = excluded.oauth_token, status = 'active', \
                 installed_at = excluded.installed_at, updated_at = excluded.updated_at, \
                 access_token = excluded.access_token, \
                 access_token_expires_at = excluded.access_token_expires_at, \
                 signature_key = NULL",
            )
            .await?;
        c.execute(
            &stmt,
            &[
                &row.eshop_id,
                &row.eshop_url,
                &row.contact_email,
                &row.oauth_token,
                &row.now,
                &token,
                &expires,
            ],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn set_status(
        &self,
        id: i64,
        status: &'static str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .exec(
                "UPDATE installations SET status = $2, updated_at = $3 WHERE eshop_id = $1",
                &[&id, &status, &now],
            )
            .await?;
        Ok(n > 0)
    }

    pub(crate) async fn save_access_token(
        &self,
        id: i64,
        token: RawAccessToken,
        now: i64,
    ) -> Result<(), StoreError> {
        let c = self.pool.get().await?;
        save_access_token_on(&c, id, token, now).await
    }

    pub(crate) async fn set_signature_key(
        &self,
        id: i64,
        sealed: Vec<u8>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE installations SET signature_key = $2, updated_at = $3 WHERE eshop_id = $1",
            &[&id, &sealed, &now],
        )
        .await
        .map(drop)
    }

    pub(crate) async fn list(&self) -> Result<Vec<RawSummary>, StoreError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(
                "SELECT eshop_id, eshop_url, contact_email, status, installed_at, \
                 access_token_expires_at FROM installations ORDER BY eshop_id",
            )
            .await?;
        c.query(&stmt, &[])
            .await?
            .into_iter()
            .map(|r| {
                Ok(RawSummary {
                    eshop_id: r.try_get(0)?,
                    eshop_url: r.try_get(1)?,
                    contact_email: r.try_get(2)?,
                    status: r.try_get(3)?,
                    installed_at: r.try_get(4)?,
                    token_expires_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub(crate) async fn remove(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .exec("DELETE FROM installations WHERE eshop_id = $1", &[&id])
            .await?;
        Ok(n > 0)
    }

    pub(crate) async fn count_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached("SELECT status, COUNT(*) FROM installations GROUP BY status")
            .await?;
        c.query(&stmt, &[])
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub(crate) async fn statuses(&self, ids: Vec<i64>) -> Result<Vec<(i64, String)>, StoreError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached("SELECT eshop_id, status FROM installations WHERE eshop_id = ANY($1)")
            .await?;
        c.query(&stmt, &[&ids])
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub(crate) async fn lock_token(&self, id: i64) -> Result<PgTokenLock, StoreError> {
        let lock = PgTokenLock {
            client: Some(self.pool.get().await?),
            key: id,
        };
        // Built before the lock call so that, if this future is dropped while waiting, the
        // guard's unlock is queued behind the pending lock call on the same connection and a
        // lock granted late is released all the same.
        let c = lock.client()?;
        let stmt = c.prepare_cached("SELECT pg_advisory_lock($1)").await?;
        c.execute(&stmt, &[&id]).await?;
        Ok(lock)
    }

    pub(crate) async fn outbox_push(
        &self,
        kind: &'static str,
        eshop_id: Option<i64>,
        body: Vec<u8>,
        now: i64,
    ) -> Result<i64, StoreError> {
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO outbox (kind, eshop_id, body, attempts, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, 0, $4, $4) RETURNING id",
            )
            .await?;
        Ok(c.query_one(&stmt, &[&kind, &eshop_id, &body, &now])
            .await?
            .try_get(0)?)
    }

    pub(crate) async fn outbox_due(
        &self,
        now: i64,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<RawOutbox>, StoreError> {
        let c = self.pool.get().await?;
        // SKIP LOCKED: replicas polling at once each claim different items.
        let stmt = c
            .prepare_cached(
                "UPDATE outbox SET next_attempt_at = $2 WHERE id IN (SELECT id FROM outbox \
                 WHERE next_attempt_at <= $1 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, kind, eshop_id, body, attempts",
            )
            .await?;
        let mut items = c
            .query(&stmt, &[&now, &lease_until, &limit])
            .await?
            .into_iter()
            .map(|r| {
                Ok(RawOutbox {
                    id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    eshop_id: r.try_get(2)?,
                    body: r.try_get(3)?,
                    attempts: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING has no order.
        items.sort_by_key(|i| i.id);
        Ok(items)
    }

    pub(crate) async fn outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.exec("DELETE FROM outbox WHERE id = $1", &[&id])
            .await
            .map(drop)
    }

    pub(crate) async fn outbox_retry_at(
        &self,
        id: i64,
        attempts: i64,
        at: i64,
    ) -> Result<(), StoreError> {
        self.exec(
            "UPDATE outbox SET attempts = $2, next_attempt_at = $3 WHERE id = $1",
            &[&id, &attempts, &at],
        )
        .await
        .map(drop)
    }

    pub(crate) async fn use_nonce(
        &self,
        nonce: String,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.exec("DELETE FROM settings_nonces WHERE expires_at < $1", &[&now])
            .await?;
        let inserted = self
            .exec(
                "INSERT INTO settings_nonces (nonce, expires_at) VALUES ($1, $2) \
                 ON CONFLICT (nonce) DO NOTHING",
                &[&nonce, &expires_at],
            )
            .await?;
        Ok(inserted == 1)
    }

    pub(crate) async fn outbox_depth(&self) -> Result<i64, StoreError> {
        let c = self.pool.get().await?;
        let stmt = c.prepare_cached("SELECT COUNT(*) FROM outbox").await?;
        Ok(c.query_one(&stmt, &[]).await?.try_get(0)?)
    }

    pub(crate) async fn secrets_batch(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<RawSecrets>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.pool.get().await?;
        let stmt = c
            .prepare_cached(&format!(
                "SELECT eshop_id, {}, {}, {} FROM installations WHERE eshop_id > $1 \
                 ORDER BY eshop_id LIMIT $2",
                SECRET_COLUMNS[0], SECRET_COLUMNS[1], SECRET_COLUMNS[2]
            ))
            .await?;
        c.query(&stmt, &[&after, &limit])
            .await?
            .into_iter()
            .map(|r| {
                Ok(RawSecrets {
                    eshop_id: r.try_get(0)?,
                    values: [r.try_get(1)?, r.try_get(2)?, r.try_get(3)?],
                })
            })
            .collect()
    }

    /// Applies a batch of re-sealed values in one transaction; returns the ids of the rows changed.
    pub(crate) async fn reseal(&self, batch: Vec<Reseal>) -> Result<Vec<i64>, StoreError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let mut changed = Vec::new();
        for r in batch {
            let stmt = tx
                .prepare_cached(&reseal_sql(r.column, "$1", "$2", "$3"))
                .await?;
            if tx.execute(&stmt, &[&r.eshop_id, &r.old, &r.new]).await? > 0 {
                changed.push(r.eshop_id);
            }
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let c = self.pool.get().await?;
        let stmt = c.prepare_cached(sql).await?;
        Ok(c.execute(&stmt, params).await?)
    }
}

/// A held `pg_advisory_lock(eshop_id)` and the connection that holds it. Dropping it unlocks on a
/// background task; a connection that cannot unlock is closed, which ends the session and so
/// releases the lock too. Either way no lock outlives its holder.
pub(crate) struct PgTokenLock {
    client: Option<Object>,
    key: i64,
}

impl PgTokenLock {
    fn client(&self) -> Result<&ClientWrapper, StoreError> {
        // Only `release` and `drop` empty it, and both consume the lock.
        self.client.as_deref().ok_or(StoreError::Task)
    }

    pub(crate) async fn access_token(&self, id: i64) -> Result<Option<RawAccessToken>, StoreError> {
        let c = self.client()?;
        let stmt = c.prepare_cached(SELECT_ACCESS_TOKEN).await?;
        match c.query_opt(&stmt, &[&id]).await? {
            Some(r) => Ok(RawAccessToken::from_columns(r.try_get(0)?, r.try_get(1)?)),
            None => Ok(None),
        }
    }

    pub(crate) async fn save_access_token(
        &self,
        id: i64,
        token: RawAccessToken,
        now: i64,
    ) -> Result<(), StoreError> {
        save_access_token_on(self.client()?, id, token, now).await
    }

    pub(crate) async fn release(mut self) {
        if let Some(client) = self.client.take() {
            unlock(client, self.key).await;
        }
    }
}

impl Drop for PgTokenLock {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(unlock(client, self.key));
            }
            Err(_) => discard(client),
        }
    }
}

async fn unlock(client: Object, key: i64) {
    let unlocked = match client.prepare_cached(UNLOCK).await {
        Ok(stmt) => client.execute(&stmt, &[&key]).await.is_ok(),
        Err(_) => false,
    };
    if !unlocked {
        discard(client);
    }
}

/// Closes the connection instead of returning it to the pool; the server then drops its locks.
fn discard(client: Object) {
    drop(Object::take(client));
}

async fn save_access_token_on(
    c: &ClientWrapper,
    id: i64,
    token: RawAccessToken,
    now: i64,
) -> Result<(), StoreError> {
    let stmt = c.prepare_cached(SAVE_ACCESS_TOKEN).await?;
    c.execute(&stmt, &[&id, &token.sealed, &token.expires_at, &now])
        .await?;
    Ok(())
}

async fn migrate(client: &mut Object) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1],
    )
    .await?;
    tx.batch_execute(migrations::SCHEMA_VERSION_TABLE).await?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_version",
            &[],
        )
        .await?
        .try_get(0)?;
    let known = i64::try_from(migrations::POSTGRES.len()).unwrap_or(i64::MAX);
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    for (version, sql) in (1i64..)
        .zip(migrations::POSTGRES)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
