//! The installation store: per-e-shop installations (OAuth token, status, the current API access
//! token, the webhook signature key) and the durable outbox of deliveries to the addon.
//!
//! This module is the narrow interface the rest of the proxy uses. It owns encryption: every
//! secret is sealed here (see `crypto.rs`) before it reaches a backend, and opened here after it
//! comes back, so the backends (`sqlite.rs` for one process, `postgres.rs` for several replicas)
//! only ever move sealed bytes and cannot leak a token by construction. Dispatch is a plain enum
//! (no trait objects) so a `Store` is a cheap `Clone` of two `Arc`s.

mod crypto;
mod listing;
mod migrations;
mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

pub use crypto::{generate_key_base64, Keyring};
pub use listing::{render_list_json, render_list_table};

/// Errors of the store. None of them carries a secret value: sealed-value failures name the
/// e-shop and column, key-file failures name the path.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("PostgreSQL connection pool setup: {0}")]
    PoolBuild(#[from] deadpool_postgres::BuildError),
    #[error("cannot open sealed value for eshop {eshop_id} column {column}")]
    Crypto { eshop_id: u64, column: &'static str },
    #[error("bad key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    /// Carries only the scheme: the rest of a PostgreSQL URL may hold a password.
    #[error("unsupported store URL scheme {0:?} (expected sqlite://PATH or postgres://...)")]
    UnsupportedUrl(String),
    #[error("e-shop id {0} is outside the store's range")]
    EshopIdOutOfRange(u64),
    #[error("the store's schema version {found} is newer than this build supports ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("corrupt store data: {0}")]
    Corrupt(String),
    #[error("store worker task failed")]
    Task,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Suspended,
    Uninstalled,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Active, Status::Suspended, Status::Uninstalled];

    /// The lowercase name, as stored and as shown in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Suspended => "suspended",
            Status::Uninstalled => "uninstalled",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Clone, Debug)]
pub struct AccessToken {
    pub token: Secret,
    pub expires_at: SystemTime,
}

#[derive(Clone, Debug)]
pub struct Installation {
    pub eshop_id: u64,
    pub eshop_url: Option<String>,
    pub contact_email: Option<String>,
    pub oauth_token: Secret,
    pub status: Status,
    pub installed_at: SystemTime,
    pub updated_at: SystemTime,
    pub access_token: Option<AccessToken>,
    pub signature_key: Option<Secret>,
}

#[derive(Clone, Debug)]
pub struct NewInstallation {
    pub eshop_id: u64,
    pub eshop_url: Option<String>,
    pub contact_email: Option<String>,
    pub oauth_token: Secret,
}

/// What `GET /admin/eshops` and `eshops list` show: no secrets.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstallationSummary {
    pub eshop_id: u64,
    pub eshop_url: Option<String>,
    pub contact_email: Option<String>,
    pub status: Status,
    /// RFC 3339.
    pub installed_at: String,
    /// RFC 3339; `None` when no API access token is stored.
    pub token_expires_at: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum OutboxKind {
    /// An event the proxy raises itself (e.g. "installed"), for `[addon] events_url`.
    Event,
    /// A verified webhook from Shoptet, for `[addon] webhooks_url`.
    Webhook,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Event => "event",
            OutboxKind::Webhook => "webhook",
        }
    }

    fn parse(s: &str) -> Option<OutboxKind> {
        [OutboxKind::Event, OutboxKind::Webhook]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Clone, Debug)]
pub struct OutboxItem {
    pub id: i64,
    pub kind: OutboxKind,
    pub eshop_id: Option<u64>,
    pub body: Vec<u8>,
    pub attempts: u32,
}

/// How long an item handed out by [`Store::outbox_due`] stays claimed: until then no other caller
/// (another task or replica) gets it, unless `outbox_delivered`/`outbox_retry_at` settles it first.
/// A worker that dies mid-delivery thus delays the item by this much instead of losing it. A
/// delivery takes at most 4 s (Shoptet's receiver timeout, which the outbox applies to the addon),
/// so 6 s covers the delivery and recording its outcome, and a proxy killed mid-delivery delays
/// the item by seconds, not a minute. Should a lease still run out first, the item is delivered
/// twice: at least once, never lost.
pub const OUTBOX_LEASE: Duration = Duration::from_secs(6);

/// Rows per round trip when `rekey` walks the table, so memory stays flat at any size.
const REKEY_BATCH: usize = 500;

// Secret column names: also the associated-data tag of their sealed values.
pub(crate) const OAUTH_TOKEN: &str = "oauth_token";
pub(crate) const ACCESS_TOKEN: &str = "access_token";
pub(crate) const SIGNATURE_KEY: &str = "signature_key";
pub(crate) const SECRET_COLUMNS: [&str; 3] = [OAUTH_TOKEN, ACCESS_TOKEN, SIGNATURE_KEY];

/// An installation row as a backend stores it: secrets sealed, times in Unix milliseconds.
pub(crate) struct RawInstallation {
    pub eshop_url: Option<String>,
    pub contact_email: Option<String>,
    pub oauth_token: Vec<u8>,
    pub status: String,
    pub installed_at: i64,
    pub updated_at: i64,
    pub access_token: Option<RawAccessToken>,
    pub signature_key: Option<Vec<u8>>,
}

pub(crate) struct RawAccessToken {
    pub sealed: Vec<u8>,
    pub expires_at: i64,
}

impl RawAccessToken {
    /// From the two nullable columns; a token is stored only with its expiry.
    pub(crate) fn from_columns(sealed: Option<Vec<u8>>, expires_at: Option<i64>) -> Option<Self> {
        Some(RawAccessToken {
            sealed: sealed?,
            expires_at: expires_at?,
        })
    }
}

pub(crate) struct RawUpsert {
    pub eshop_id: i64,
    pub eshop_url: Option<String>,
    pub contact_email: Option<String>,
    pub oauth_token: Vec<u8>,
    pub now: i64,
    pub access_token: Option<RawAccessToken>,
}

pub(crate) struct RawSummary {
    pub eshop_id: i64,
    pub eshop_url: Option<String>,
    pub contact_email: Option<String>,
    pub status: String,
    pub installed_at: i64,
    pub token_expires_at: Option<i64>,
}

pub(crate) struct RawOutbox {
    pub id: i64,
    pub kind: String,
    pub eshop_id: Option<i64>,
    pub body: Vec<u8>,
    pub attempts: i64,
}

/// The sealed values of one row, in [`SECRET_COLUMNS`] order.
pub(crate) struct RawSecrets {
    pub eshop_id: i64,
    pub values: [Option<Vec<u8>>; 3],
}

/// A compare-and-swap of one sealed value during `rekey`: `old` is replaced by `new` only if it
/// is still stored, so a value written meanwhile wins.
pub(crate) struct Reseal {
    pub eshop_id: i64,
    /// One of [`SECRET_COLUMNS`]; never input-derived, so it can be spliced into SQL.
    pub column: &'static str,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

/// The statement applying a [`Reseal`], with the dialect's placeholders for id, old and new.
pub(crate) fn reseal_sql(column: &'static str, id: &str, old: &str, new: &str) -> String {
    format!("UPDATE installations SET {column} = {new} WHERE eshop_id = {id} AND {column} = {old}")
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Calls the same-named method on whichever backend this store uses.
macro_rules! dispatch {
    ($self:ident, $b:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($b) => $call,
            Backend::Postgres($b) => $call,
        }
    };
}

/// E-shop ids per status query (SQLite allows 32,766 parameters per statement).
const STATUS_BATCH: usize = 1000;

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    keys: Arc<Keyring>,
}

impl Store {
    /// Opens `sqlite://PATH` (relative, or absolute as `sqlite:///abs`; the file is created) or
    /// `postgres://...`/`postgresql://...` (a pool), and applies pending migrations.
    pub async fn open(url: &str, keys: Keyring) -> Result<Store, StoreError> {
        let backend = if let Some(path) = url.strip_prefix("sqlite://") {
            Backend::Sqlite(sqlite::SqliteStore::open(PathBuf::from(path)).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(postgres::PgStore::open(url).await?)
        } else {
            let scheme = url.split(':').next().unwrap_or_default();
            return Err(StoreError::UnsupportedUrl(scheme.to_string()));
        };
        Ok(Store {
            backend,
            keys: Arc::new(keys),
        })
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, b => b.ping().await)
    }

    pub async fn get(&self, eshop_id: u64) -> Result<Option<Installation>, StoreError> {
        let Ok(id) = i64::try_from(eshop_id) else {
            return Ok(None);
        };
        let raw = dispatch!(self, b => b.get(id).await)?;
        raw.map(|r| self.decode(eshop_id, r)).transpose()
    }

    /// Install, re-install or import: replaces the OAuth token, makes the e-shop active and sets
    /// `installed_at` to now. Every other secret belonged to the old installation, so none
    /// survives (SPEC B5): the API access token is replaced by `access_token` (the one minted
    /// during installation) or cleared, the signature key is cleared until a new one is saved.
    /// A `None` URL or e-mail keeps the stored one. Runs under the e-shop's token lock, so a
    /// token fetch of the old installation still in flight saves its token before, not after.
    pub async fn upsert_installation(
        &self,
        new: &NewInstallation,
        access_token: Option<&AccessToken>,
    ) -> Result<(), StoreError> {
        let eshop_id = new.eshop_id;
        let row = RawUpsert {
            eshop_id: db_id(eshop_id)?,
            eshop_url: new.eshop_url.clone(),
            contact_email: new.contact_email.clone(),
            oauth_token: self.seal(eshop_id, OAUTH_TOKEN, &new.oauth_token)?,
            now: millis(SystemTime::now()),
            access_token: access_token
                .map(|t| self.seal_access_token(eshop_id, t))
                .transpose()?,
        };
        let lock = self.lock_token(eshop_id).await?;
        let upserted = dispatch!(self, b => b.upsert(row).await);
        lock.release().await;
        upserted
    }

    /// Returns `false` when the e-shop is unknown.
    pub async fn set_status(&self, eshop_id: u64, status: Status) -> Result<bool, StoreError> {
        let Ok(id) = i64::try_from(eshop_id) else {
            return Ok(false);
        };
        let now = millis(SystemTime::now());
        dispatch!(self, b => b.set_status(id, status.as_str(), now).await)
    }

    /// Stores the e-shop's current API access token (a no-op for an unknown e-shop). Prefer
    /// [`TokenLock::save`] when refreshing, so replicas do not mint twice.
    pub async fn save_access_token(
        &self,
        eshop_id: u64,
        token: &AccessToken,
    ) -> Result<(), StoreError> {
        let id = db_id(eshop_id)?;
        let sealed = self.seal_access_token(eshop_id, token)?;
        let now = millis(SystemTime::now());
        dispatch!(self, b => b.save_access_token(id, sealed, now).await)
    }

    /// Stores the webhook signature key (a no-op for an unknown e-shop).
    pub async fn set_signature_key(&self, eshop_id: u64, key: &Secret) -> Result<(), StoreError> {
        let id = db_id(eshop_id)?;
        let sealed = self.seal(eshop_id, SIGNATURE_KEY, key)?;
        let now = millis(SystemTime::now());
        dispatch!(self, b => b.set_signature_key(id, sealed, now).await)
    }

    /// All installations, ordered by e-shop id, without secrets.
    pub async fn list(&self) -> Result<Vec<InstallationSummary>, StoreError> {
        let rows = dispatch!(self, b => b.list().await)?;
        rows.into_iter().map(summary).collect()
    }

    /// One installation as [`Store::list`] shows it; `None` when it is not in the store.
    pub async fn summary(&self, eshop_id: u64) -> Result<Option<InstallationSummary>, StoreError> {
        let Some(inst) = self.get(eshop_id).await? else {
            return Ok(None);
        };
        Ok(Some(InstallationSummary {
            eshop_id,
            eshop_url: inst.eshop_url,
            contact_email: inst.contact_email,
            status: inst.status,
            installed_at: rfc3339(millis(inst.installed_at))?,
            token_expires_at: inst
                .access_token
                .map(|t| rfc3339(millis(t.expires_at)))
                .transpose()?,
        }))
    }

    /// Deletes the installation; `false` when it was unknown.
    pub async fn remove(&self, eshop_id: u64) -> Result<bool, StoreError> {
        let Ok(id) = i64::try_from(eshop_id) else {
            return Ok(false);
        };
        dispatch!(self, b => b.remove(id).await)
    }

    /// The status of each of `eshop_ids` that is installed; ids missing from the answer are
    /// unknown (removed). Reads no secret, so a replica can ask about thousands cheaply.
    pub async fn statuses(
        &self,
        eshop_ids: &[u64],
    ) -> Result<std::collections::HashMap<u64, Status>, StoreError> {
        let mut out = std::collections::HashMap::with_capacity(eshop_ids.len());
        let ids: Vec<i64> = eshop_ids
            .iter()
            .filter_map(|&id| i64::try_from(id).ok())
            .collect();
        // Bounded batches keep each query well under SQLite's parameter limit.
        for batch in ids.chunks(STATUS_BATCH) {
            let rows = dispatch!(self, b => b.statuses(batch.to_vec()).await)?;
            for (id, status) in rows {
                let status = Status::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?;
                out.insert(id as u64, status);
            }
        }
        Ok(out)
    }

    /// Installations per status, every status listed (zero included), in [`Status::ALL`] order.
    pub async fn count_by_status(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let rows = dispatch!(self, b => b.count_by_status().await)?;
        let mut counts = Status::ALL.map(|s| (s, 0u64));
        for (status, n) in rows {
            let status = Status::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == status) {
                slot.1 = u64::try_from(n).unwrap_or(0);
            }
        }
        Ok(counts.to_vec())
    }

    /// Takes the e-shop's token-refresh lock: in-process for SQLite, a PostgreSQL advisory lock
    /// (shared by all replicas) for PostgreSQL. Re-read the token with [`TokenLock::current`]
    /// before minting: another holder may have refreshed it meanwhile.
    pub async fn lock_token(&self, eshop_id: u64) -> Result<TokenLock, StoreError> {
        let id = db_id(eshop_id)?;
        let inner = match &self.backend {
            Backend::Sqlite(s) => LockInner::Sqlite {
                _guard: s.lock_token(eshop_id).await,
                store: s.clone(),
            },
            Backend::Postgres(p) => LockInner::Postgres(Box::new(p.lock_token(id).await?)),
        };
        Ok(TokenLock {
            eshop_id,
            id,
            keys: self.keys.clone(),
            inner,
        })
    }

    /// Queues a delivery to the addon; it is due at once. Returns its id.
    pub async fn outbox_push(
        &self,
        kind: OutboxKind,
        eshop_id: Option<u64>,
        body: &[u8],
    ) -> Result<i64, StoreError> {
        let eshop_id = eshop_id.map(db_id).transpose()?;
        let now = millis(SystemTime::now());
        let body = body.to_vec();
        dispatch!(self, b => b.outbox_push(kind.as_str(), eshop_id, body, now).await)
    }

    /// Up to `limit` items due at `now`, oldest first, each claimed for [`OUTBOX_LEASE`].
    pub async fn outbox_due(
        &self,
        now: SystemTime,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let lease_until = millis(now.checked_add(OUTBOX_LEASE).unwrap_or(now));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let now = millis(now);
        let rows = dispatch!(self, b => b.outbox_due(now, lease_until, limit).await)?;
        rows.into_iter().map(outbox_item).collect()
    }

    /// Deletes a delivered item.
    pub async fn outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        dispatch!(self, b => b.outbox_delivered(id).await)
    }

    /// Records a failed attempt and when to try again.
    pub async fn outbox_retry_at(
        &self,
        id: i64,
        attempts: u32,
        next_attempt_at: SystemTime,
    ) -> Result<(), StoreError> {
        let at = millis(next_attempt_at);
        dispatch!(self, b => b.outbox_retry_at(id, i64::from(attempts), at).await)
    }

    /// Records that the one-time `nonce` (a settings-page `state`, SPEC B9) was used: true the
    /// first time, false when any replica sharing the store used it before. Kept until
    /// `expires_at` (after which the state carrying it is refused anyway); expired ones are
    /// pruned on the way.
    pub async fn use_nonce(&self, nonce: &str, expires_at: SystemTime) -> Result<bool, StoreError> {
        let now = millis(SystemTime::now());
        let (nonce, expires_at) = (nonce.to_owned(), millis(expires_at));
        dispatch!(self, b => b.use_nonce(nonce, expires_at, now).await)
    }

    /// Keys for `label`, derived from the store keys (current first, then previous ones): values
    /// sealed outside the store (settings sessions) stay readable by every replica that holds
    /// the same key file, and never reuse the key that seals the columns.
    pub fn derived_keys(&self, label: &str) -> Vec<[u8; 32]> {
        self.keys.derive(label)
    }

    /// Items waiting, due or not.
    pub async fn outbox_depth(&self) -> Result<u64, StoreError> {
        let n = dispatch!(self, b => b.outbox_depth().await)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Re-seals every secret not yet under the current key; returns the number of rows rewritten.
    /// Safe while the proxy runs: each value is replaced only if it is still the one read, so a
    /// token saved meanwhile (already under the current key) is never overwritten.
    pub async fn rekey(&self) -> Result<u64, StoreError> {
        let mut after = i64::MIN;
        let mut rewritten = 0u64;
        loop {
            let batch = dispatch!(self, b => b.secrets_batch(after, REKEY_BATCH).await)?;
            let Some(last) = batch.last() else {
                return Ok(rewritten);
            };
            after = last.eshop_id;
            let mut reseals = Vec::new();
            for row in batch {
                let eshop_id = app_id(row.eshop_id)?;
                for (column, value) in SECRET_COLUMNS.into_iter().zip(row.values) {
                    let Some(old) = value else { continue };
                    if self.keys.is_current(&old) {
                        continue;
                    }
                    let plain = self.keys.open(eshop_id, column, &old)?;
                    let new = self.keys.seal(eshop_id, column, &plain)?;
                    reseals.push(Reseal {
                        eshop_id: row.eshop_id,
                        column,
                        old,
                        new,
                    });
                }
            }
            if reseals.is_empty() {
                continue;
            }
            let mut changed = dispatch!(self, b => b.reseal(reseals).await)?;
            // Ids come in table order, a row's columns together.
            changed.dedup();
            rewritten += u64::try_from(changed.len()).unwrap_or(u64::MAX);
        }
    }

    /// The ids of the keys this store was opened with, the current one first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.key_ids()
    }

    /// The ids of keys that sealed stored values but are not among this store's keys, sorted:
    /// empty when every value can be opened by key id. Reads every secret column once (as
    /// `rekey` does), so `serve` can refuse a store whose key is wrong before serving anything.
    pub async fn foreign_key_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut after = i64::MIN;
        let mut foreign = std::collections::BTreeSet::new();
        loop {
            let batch = dispatch!(self, b => b.secrets_batch(after, REKEY_BATCH).await)?;
            let Some(last) = batch.last() else {
                return Ok(foreign.into_iter().collect());
            };
            after = last.eshop_id;
            for row in batch {
                let ids = row.values.iter().flatten();
                foreign.extend(ids.filter_map(|v| self.keys.foreign_key_id(v)));
            }
        }
    }

    fn seal(
        &self,
        eshop_id: u64,
        column: &'static str,
        value: &Secret,
    ) -> Result<Vec<u8>, StoreError> {
        self.keys.seal(eshop_id, column, value.expose().as_bytes())
    }

    fn seal_access_token(
        &self,
        eshop_id: u64,
        token: &AccessToken,
    ) -> Result<RawAccessToken, StoreError> {
        Ok(RawAccessToken {
            sealed: self.seal(eshop_id, ACCESS_TOKEN, &token.token)?,
            expires_at: millis(token.expires_at),
        })
    }

    fn decode(&self, eshop_id: u64, r: RawInstallation) -> Result<Installation, StoreError> {
        Ok(Installation {
            eshop_id,
            eshop_url: r.eshop_url,
            contact_email: r.contact_email,
            oauth_token: open_secret(&self.keys, eshop_id, OAUTH_TOKEN, &r.oauth_token)?,
            status: parse_status(eshop_id, &r.status)?,
            installed_at: system_time(r.installed_at),
            updated_at: system_time(r.updated_at),
            access_token: r
                .access_token
                .map(|t| open_access_token(&self.keys, eshop_id, t))
                .transpose()?,
            signature_key: r
                .signature_key
                .map(|k| open_secret(&self.keys, eshop_id, SIGNATURE_KEY, &k))
                .transpose()?,
        })
    }
}

/// The per-e-shop token-refresh lock from [`Store::lock_token`]. Dropping it releases it too
/// (for PostgreSQL, on a background task); `release` does so before returning.
pub struct TokenLock {
    eshop_id: u64,
    id: i64,
    keys: Arc<Keyring>,
    inner: LockInner,
}

enum LockInner {
    Sqlite {
        store: sqlite::SqliteStore,
        _guard: tokio::sync::OwnedMutexGuard<()>,
    },
    /// Reads and writes go over the connection that holds the advisory lock.
    Postgres(Box<postgres::PgTokenLock>),
}

impl TokenLock {
    /// The stored access token, re-read under the lock.
    pub async fn current(&mut self) -> Result<Option<AccessToken>, StoreError> {
        let raw = match &mut self.inner {
            LockInner::Sqlite { store, .. } => store.access_token(self.id).await?,
            LockInner::Postgres(lock) => lock.access_token(self.id).await?,
        };
        raw.map(|t| open_access_token(&self.keys, self.eshop_id, t))
            .transpose()
    }

    /// Stores a freshly minted token while still holding the lock.
    pub async fn save(&mut self, token: &AccessToken) -> Result<(), StoreError> {
        let sealed = RawAccessToken {
            sealed: self
                .keys
                .seal(self.eshop_id, ACCESS_TOKEN, token.token.expose().as_bytes())?,
            expires_at: millis(token.expires_at),
        };
        let now = millis(SystemTime::now());
        match &mut self.inner {
            LockInner::Sqlite { store, .. } => store.save_access_token(self.id, sealed, now).await,
            LockInner::Postgres(lock) => lock.save_access_token(self.id, sealed, now).await,
        }
    }

    pub async fn release(self) {
        match self.inner {
            LockInner::Sqlite { .. } => {}
            LockInner::Postgres(lock) => lock.release().await,
        }
    }
}

fn open_secret(
    keys: &Keyring,
    eshop_id: u64,
    column: &'static str,
    sealed: &[u8],
) -> Result<Secret, StoreError> {
    let plain = keys.open(eshop_id, column, sealed)?;
    String::from_utf8(plain)
        .map(Secret::new)
        .map_err(|_| StoreError::Crypto { eshop_id, column })
}

fn open_access_token(
    keys: &Keyring,
    eshop_id: u64,
    raw: RawAccessToken,
) -> Result<AccessToken, StoreError> {
    Ok(AccessToken {
        token: open_secret(keys, eshop_id, ACCESS_TOKEN, &raw.sealed)?,
        expires_at: system_time(raw.expires_at),
    })
}

fn parse_status(eshop_id: u64, s: &str) -> Result<Status, StoreError> {
    Status::parse(s)
        .ok_or_else(|| StoreError::Corrupt(format!("eshop {eshop_id}: unknown status {s:?}")))
}

fn summary(r: RawSummary) -> Result<InstallationSummary, StoreError> {
    let eshop_id = app_id(r.eshop_id)?;
    Ok(InstallationSummary {
        eshop_id,
        eshop_url: r.eshop_url,
        contact_email: r.contact_email,
        status: parse_status(eshop_id, &r.status)?,
        installed_at: rfc3339(r.installed_at)?,
        token_expires_at: r.token_expires_at.map(rfc3339).transpose()?,
    })
}

fn outbox_item(r: RawOutbox) -> Result<OutboxItem, StoreError> {
    let kind = OutboxKind::parse(&r.kind).ok_or_else(|| {
        StoreError::Corrupt(format!("outbox item {}: unknown kind {:?}", r.id, r.kind))
    })?;
    Ok(OutboxItem {
        id: r.id,
        kind,
        eshop_id: r.eshop_id.map(app_id).transpose()?,
        body: r.body,
        attempts: u32::try_from(r.attempts).unwrap_or(u32::MAX),
    })
}

/// The database form of an e-shop id (BIGINT is signed).
fn db_id(eshop_id: u64) -> Result<i64, StoreError> {
    i64::try_from(eshop_id).map_err(|_| StoreError::EshopIdOutOfRange(eshop_id))
}

fn app_id(id: i64) -> Result<u64, StoreError> {
    u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("negative e-shop id {id}")))
}

/// Unix milliseconds, saturating far outside any real timestamp.
fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn system_time(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    let t = if ms >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.unwrap_or(UNIX_EPOCH)
}

fn rfc3339(ms: i64) -> Result<String, StoreError> {
    let bad = || StoreError::Corrupt(format!("timestamp {ms} out of range"));
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| bad())?
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(system_time(millis(t)), t);
        let before = UNIX_EPOCH - Duration::from_millis(5);
        assert_eq!(millis(before), -5);
        assert_eq!(system_time(-5), before);
    }

    #[test]
    fn rfc3339_is_utc_with_milliseconds_when_present() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_700_000_000_123).unwrap(),
            "2023-11-14T22:13:20.123Z"
        );
        assert!(rfc3339(i64::MAX).is_err());
    }

    #[test]
    fn status_and_kind_names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(Status::parse("Active"), None);
        for k in [OutboxKind::Event, OutboxKind::Webhook] {
            assert_eq!(OutboxKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn huge_eshop_ids_are_refused_for_writes() {
        assert!(matches!(
            db_id(u64::MAX),
            Err(StoreError::EshopIdOutOfRange(u64::MAX))
        ));
        assert_eq!(db_id(222651).unwrap(), 222651);
    }

    #[tokio::test]
    async fn unknown_url_scheme_names_only_the_scheme() {
        let err = Store::open("mysql://user:pa55word@host/db", Keyring::generate())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("\"mysql\""), "{err}");
        assert!(!err.contains("pa55word"), "{err}");
    }
}
