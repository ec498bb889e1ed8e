//! The API access token cache: one current token per e-shop, fetched single-flight (SPEC B2).
//!
//! Shoptet allows only 5 valid tokens per installation, so minting one per request, per replica or
//! per 401 is a bug. Invariants kept here:
//! - at most one fetch per e-shop runs at a time in this process (the slot's `fetch` mutex), and
//!   the store's token lock extends that across replicas; whoever waited re-checks and adopts the
//!   token the fetch produced;
//! - a fetch, once started, runs to the end in a task of its own and caches its result, so a
//!   client giving up (hyper dropping its request) never throws away a token Shoptet minted;
//! - a token with less than `refresh_margin` left keeps serving while one background task renews it;
//! - a 401 invalidates a token only if it is still the current one, so 20 requests rejected
//!   together cause one refresh, not 20; a rejected request is replayed only with a token minted
//!   for a rejection, because a token obtained before it (a background refresh) may have been
//!   revoked together with the rejected one;
//! - a failed fetch is remembered with exponential backoff, and requests fail fast meanwhile.
//!
//! A token's state lives in its e-shop's [`Eshop`] record ([`TokenSlot`]); no map guard is ever held
//! across an `.await` (records are `Arc`s cloned out of the map), and the state sits behind a std
//! mutex held only for a few field reads.
//!
//! Other replicas and the CLI change installations in the store behind this process's back (an
//! `addon:suspend` received by another replica, `eshops remove`). One background task
//! ([`TokenCache::watch_statuses`]) re-reads, every `STATUS_RECHECK`, the status of the e-shops used
//! since its last pass — one batched query of ids and statuses, not a read per request — and
//! applies what changed.

use crate::error::ProxyError;
use crate::shoptet::oauth::{FetchError, OAuthClient};
use crate::state::eshops::{Eshop, Eshops};
use crate::store::{AccessToken, Status, Store};
use crate::telemetry::metrics::Metrics;
use http::HeaderValue;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// How often, by default, the e-shops in use have their installation status re-read from the
/// store, so a change made elsewhere (another replica's `addon:suspend`, `eshops remove`, an
/// uninstall) reaches this process's cache within this bound rather than at the next token
/// refresh. Not a configuration key: tests shorten it through [`TokenConfig::status_recheck`].
pub const STATUS_RECHECK: Duration = Duration::from_secs(10);

/// First backoff after a failed fetch; doubles up to `token_backoff_max` (SPEC B2).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// A token ready to be sent: the header value is built once, not per request, and is the only
/// copy of the secret kept (marked sensitive, so hyper and `Debug` never show it).
#[derive(Debug)]
pub struct Token {
    pub header: HeaderValue,
    expires_at: Instant,
    /// Unique per minted or adopted token in this process; identifies "the current one".
    generation: u64,
    /// Obtained to replace a token Shoptet rejected, so newer than whatever revoked that one.
    after_rejection: bool,
    /// For traces (SPEC B7 `shoptet.token`): when this process got it, how (`minted` or
    /// `adopted`), and the getAccessToken call's start and duration when it was minted.
    pub obtained: Instant,
    pub origin: &'static str,
    pub fetch: Option<(Instant, Duration)>,
}

impl Token {
    /// How a wait for a token that began at `since` was served: `cached` unless this token was
    /// obtained during the wait.
    pub fn source_since(&self, since: Instant) -> &'static str {
        if self.obtained >= since {
            self.origin
        } else {
            "cached"
        }
    }

    fn remaining_at(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }

    /// Time until Shoptet considers this token expired.
    pub fn remaining(&self) -> Duration {
        self.remaining_at(Instant::now())
    }
}

#[derive(Clone, Copy)]
pub struct TokenConfig {
    pub refresh_margin: Duration,
    pub backoff_max: Duration,
    /// Interval of [`TokenCache::watch_statuses`]; [`STATUS_RECHECK`] in production.
    pub status_recheck: Duration,
}

pub struct TokenCache {
    eshops: Arc<Eshops>,
    store: Store,
    oauth: Arc<OAuthClient>,
    metrics: Arc<Metrics>,
    /// Replaced by a reload ([`TokenCache::reconfigure`]); read on every token lookup, hence
    /// lock-free.
    cfg: arc_swap::ArcSwap<TokenConfig>,
    generations: AtomicU64,
}

/// One e-shop's token state, kept in its [`Eshop`] record.
#[derive(Default)]
pub struct TokenSlot {
    state: Mutex<State>,
    fetch: tokio::sync::Mutex<()>,
    refreshing: AtomicBool,
    /// Asked for since the last status re-check: only such e-shops are re-read.
    used: AtomicBool,
}

#[derive(Default)]
struct State {
    token: Option<Arc<Token>>,
    failure: Option<Failure>,
    /// Set by a signed `addon:suspend` webhook: refuse without asking Shoptet.
    suspended: bool,
    backoff: Option<Duration>,
    /// Bumped when the installation is replaced or removed: a fetch that started before keeps
    /// its result to itself instead of caching a token of the old installation.
    incarnation: u32,
}

#[derive(Clone)]
struct Failure {
    error: ProxyError,
    until: Instant,
}

impl State {
    fn usable(
        &self,
        now: Instant,
        min_left: Duration,
        rejected: Option<u64>,
    ) -> Option<Arc<Token>> {
        self.token
            .as_ref()
            .filter(|t| Some(t.generation) != rejected && t.remaining_at(now) > min_left)
            .cloned()
    }

    fn blocked(&self, now: Instant) -> Option<ProxyError> {
        if self.suspended {
            return Some(ProxyError::EshopSuspended);
        }
        let f = self.failure.as_ref().filter(|f| f.until > now)?;
        Some(with_retry_after(&f.error, f.until - now))
    }
}

fn with_retry_after(e: &ProxyError, left: Duration) -> ProxyError {
    match e {
        ProxyError::TokenUnavailable { .. } => ProxyError::TokenUnavailable { retry_after: left },
        ProxyError::TokenLimitReached { .. } => ProxyError::TokenLimitReached { retry_after: left },
        other => other.clone(),
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // State is a handful of fields, each valid on its own; a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn to_instant(at: SystemTime) -> Instant {
    let now = Instant::now();
    match at.duration_since(SystemTime::now()) {
        Ok(left) => now + left,
        Err(_) => now,
    }
}

impl TokenCache {
    pub fn new(
        eshops: Arc<Eshops>,
        store: Store,
        oauth: Arc<OAuthClient>,
        metrics: Arc<Metrics>,
        cfg: TokenConfig,
    ) -> TokenCache {
        TokenCache {
            eshops,
            store,
            oauth,
            metrics,
            cfg: arc_swap::ArcSwap::from_pointee(cfg),
            generations: AtomicU64::new(1),
        }
    }

    /// A cache whose OAuth server is a closed loopback port: it serves only tokens adopted or
    /// already stored. What benchmarks and unit tests of the cache itself need.
    pub fn offline(
        eshops: Arc<Eshops>,
        store: Store,
        cfg: TokenConfig,
    ) -> Result<TokenCache, crate::http::client::TlsSetupError> {
        crate::http::client::install_crypto_provider();
        let client = crate::http::client::client(None, Duration::from_secs(1))?;
        let closed = url::Url::parse("http://127.0.0.1:9/").expect("a valid literal URL");
        let oauth = OAuthClient::new(
            client,
            &closed,
            "offline".into(),
            None,
            String::new(),
            Duration::from_secs(1),
        )
        .expect("URLs joined to a valid literal are valid");
        Ok(TokenCache::new(
            eshops,
            store,
            Arc::new(oauth),
            Arc::new(Metrics::new()),
            cfg,
        ))
    }

    /// Applies a reloaded `refresh_margin` and `token_backoff_max`.
    pub fn reconfigure(&self, cfg: TokenConfig) {
        self.cfg.store(Arc::new(cfg));
    }

    /// Below this a cached token is not sent: it could expire on the way. Above it but within
    /// the margin, it is sent while a background refresh runs.
    fn min_left(&self) -> Duration {
        (self.cfg.load().refresh_margin / 2).min(Duration::from_secs(10))
    }

    /// The token to send for `eshop` now.
    pub async fn get(self: &Arc<Self>, eshop: &Arc<Eshop>) -> Result<Arc<Token>, ProxyError> {
        let slot = &eshop.token;
        // Read first: a store to a flag already set would dirty the cache line on every request.
        if !slot.used.load(Ordering::Relaxed) {
            slot.used.store(true, Ordering::Relaxed);
        }
        let now = Instant::now();
        {
            let st = lock(&slot.state);
            if st.suspended {
                return Err(ProxyError::EshopSuspended);
            }
            if let Some(t) = st.usable(now, self.min_left(), None) {
                drop(st);
                if t.remaining_at(now) <= self.cfg.load().refresh_margin {
                    self.refresh_in_background(eshop);
                }
                return Ok(t);
            }
            if let Some(e) = st.blocked(now) {
                return Err(e);
            }
        }
        self.fetch_detached(eshop, self.min_left(), None).await
    }

    /// Shoptet rejected `rejected` with `expired-token`/`invalid-token`: get a token to replay
    /// with. Mints only if `rejected` is still the current token.
    pub async fn replace(
        self: &Arc<Self>,
        eshop: &Arc<Eshop>,
        rejected: &Arc<Token>,
    ) -> Result<Arc<Token>, ProxyError> {
        {
            let mut st = lock(&eshop.token.state);
            if st.token.as_ref().map(|t| t.generation) == Some(rejected.generation) {
                st.token = None;
            } else if let Some(t) = st
                .usable(Instant::now(), self.min_left(), Some(rejected.generation))
                .filter(|t| t.after_rejection)
            {
                return Ok(t);
            }
        }
        self.fetch_detached(eshop, self.min_left(), Some(rejected.clone()))
            .await
    }

    /// Runs [`TokenCache::fetch`] in a task of its own and waits for it. A client may give up
    /// at any moment (SPEC B2), and hyper then drops its request's future; a getAccessToken
    /// call dropped after Shoptet minted the token and before it was cached would burn one of
    /// the installation's 5 valid tokens. The task runs to the end and caches its result
    /// whoever still waits; the waiters queued behind it on the slot's fetch lock re-check and
    /// take that result rather than fetch again. (Also keeps the fetch's kilobytes-large state
    /// machine out of every request's future.)
    async fn fetch_detached(
        self: &Arc<Self>,
        eshop: &Arc<Eshop>,
        min_left: Duration,
        rejected: Option<Arc<Token>>,
    ) -> Result<Arc<Token>, ProxyError> {
        let this = self.clone();
        let eshop = eshop.clone();
        let task =
            tokio::spawn(async move { this.fetch(&eshop, min_left, rejected.as_deref()).await });
        task.await.unwrap_or_else(|e| {
            tracing::error!(error = %e, "token fetch task failed");
            Err(ProxyError::Internal("the token fetch task failed"))
        })
    }

    /// Re-reads, every `status_recheck`, the installation status of the e-shops used since the
    /// previous pass and applies changes made elsewhere. Runs until the task is dropped.
    pub async fn watch_statuses(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.cfg.load().status_recheck);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            self.recheck_statuses().await;
        }
    }

    /// One pass of [`TokenCache::watch_statuses`].
    pub async fn recheck_statuses(&self) {
        // A record with no token that saw no request since the last pass costs memory and saves
        // nothing: at worst its next request reads the store once more.
        let evicted = self.eshops.evict(|e| {
            !e.token.used.load(Ordering::Relaxed) && lock(&e.token.state).token.is_none()
        });
        if evicted > 0 {
            tracing::debug!(evicted, "dropped idle e-shop records");
        }
        let used = self
            .eshops
            // Read before writing: a swap would dirty every record's cache line.
            .picked(|e| {
                e.token.used.load(Ordering::Relaxed) && e.token.used.swap(false, Ordering::Relaxed)
            });
        if used.is_empty() {
            return;
        }
        let ids: Vec<u64> = used.iter().map(|e| e.id).collect();
        let statuses = match self.store.statuses(&ids).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "status re-check: store unavailable");
                // Check them again next time rather than forget they were in use.
                for e in &used {
                    e.token.used.store(true, Ordering::Relaxed);
                }
                return;
            }
        };
        for eshop in &used {
            match statuses.get(&eshop.id) {
                Some(Status::Active) => {
                    if lock(&eshop.token.state).suspended {
                        self.set_suspended(eshop.id, false);
                    }
                }
                Some(Status::Suspended) => self.set_suspended(eshop.id, true),
                // Removed or uninstalled: the next request fetches, meets "not installed" and
                // caches it with backoff.
                Some(Status::Uninstalled) | None => lock(&eshop.token.state).token = None,
            }
        }
    }

    fn refresh_in_background(self: &Arc<Self>, eshop: &Arc<Eshop>) {
        if eshop.token.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let eshop = eshop.clone();
        tokio::spawn(async move {
            // Errors are recorded in the slot (backoff) and counted; the old token serves on.
            let _ = this
                .fetch(&eshop, this.cfg.load().refresh_margin, None)
                .await;
            eshop.token.refreshing.store(false, Ordering::Release);
        });
    }

    /// Single-flight fetch: waits for any fetch in progress, then re-checks before minting.
    async fn fetch(
        &self,
        eshop: &Eshop,
        min_left: Duration,
        rejected: Option<&Token>,
    ) -> Result<Arc<Token>, ProxyError> {
        let slot = &eshop.token;
        let _flight = slot.fetch.lock().await;
        let (distrusted, incarnation) = {
            let st = lock(&slot.state);
            let now = Instant::now();
            if let Some(t) = st
                .usable(now, min_left, rejected.map(|t| t.generation))
                .filter(|t| rejected.is_none() || t.after_rejection)
            {
                return Ok(t);
            }
            if let Some(e) = st.blocked(now) {
                return Err(e);
            }
            // Replacing a rejected token: the current one, unless minted for a rejection, was
            // obtained before Shoptet's verdict and may have been revoked with the rejected one;
            // the store holds the same token, so it must not be adopted from there either.
            (rejected.and(st.token.clone()), st.incarnation)
        };
        let result = self
            .obtain(
                eshop.id,
                rejected.map(|r| distrusted.as_deref().unwrap_or(r).header.as_bytes()),
            )
            .await;
        let mut st = lock(&slot.state);
        if st.incarnation != incarnation {
            // Replaced or removed meanwhile: this answer belongs to the old installation.
            return result;
        }
        match result {
            Ok(t) => {
                st.failure = None;
                st.backoff = None;
                st.token = Some(t.clone());
                Ok(t)
            }
            Err(error) => {
                // A store outage is not this e-shop's fault and usually lasts seconds: fail
                // fast for a short while without escalating, so the e-shop is served as soon
                // as the store is back.
                let backoff = if error == ProxyError::StoreUnavailable {
                    FIRST_BACKOFF
                } else {
                    let b = st
                        .backoff
                        .map_or(FIRST_BACKOFF, |b| (b * 2).min(self.cfg.load().backoff_max));
                    st.backoff = Some(b);
                    b
                };
                st.failure = Some(Failure {
                    error: error.clone(),
                    until: Instant::now() + backoff,
                });
                Err(with_retry_after(&error, backoff))
            }
        }
    }

    /// Gets a token from the store (another replica or an earlier run minted it) or from Shoptet,
    /// under the store's per-e-shop lock.
    async fn obtain(
        &self,
        eshop_id: u64,
        rejected: Option<&[u8]>,
    ) -> Result<Arc<Token>, ProxyError> {
        // Without the store there is neither the OAuth token to mint with nor the lock that
        // keeps replicas from minting twice: answer `proxy-store-unavailable` (SPEC B10).
        let store_failed = |e: crate::store::StoreError| {
            tracing::warn!(eshop_id, error = %e, "token fetch: store unavailable");
            ProxyError::StoreUnavailable
        };
        let mut lock = self
            .store
            .lock_token(eshop_id)
            .await
            .map_err(store_failed)?;
        let inst = self
            .store
            .get(eshop_id)
            .await
            .map_err(store_failed)?
            .ok_or(ProxyError::EshopNotInstalled)?;
        match inst.status {
            Status::Active => {}
            Status::Suspended => return Err(ProxyError::EshopSuspended),
            Status::Uninstalled => return Err(ProxyError::EshopNotInstalled),
        }
        let stored = lock.current().await.map_err(store_failed)?;
        if let Some(stored) = stored {
            let left = stored
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            if left > self.cfg.load().refresh_margin
                && rejected.is_none_or(|r| r != stored.token.expose().as_bytes())
            {
                lock.release().await;
                return Ok(self.ready(stored, rejected.is_some(), None));
            }
        }
        let started = Instant::now();
        let fetched = self.oauth.access_token(&inst.oauth_token).await;
        let took = started.elapsed();
        self.metrics
            .token_fetch_duration
            .observe(took.as_secs_f64());
        let label = fetched.as_ref().map_or_else(FetchError::label, |_| "ok");
        self.metrics.token_fetches.with_label_values(&[label]).inc();
        let token = match fetched {
            Ok(t) => t,
            Err(e) => {
                lock.release().await;
                tracing::warn!(eshop_id, error = %e, "getAccessToken failed");
                return Err(match e {
                    FetchError::Unauthorized => ProxyError::OAuthTokenRejected,
                    FetchError::Suspended => ProxyError::EshopSuspended,
                    FetchError::NotInstalled => ProxyError::EshopNotInstalled,
                    FetchError::MaxTokens => ProxyError::TokenLimitReached {
                        retry_after: FIRST_BACKOFF,
                    },
                    FetchError::Other(_) => ProxyError::TokenUnavailable {
                        retry_after: FIRST_BACKOFF,
                    },
                });
            }
        };
        if let Err(e) = lock.save(&token).await {
            // The token works even if it could not be persisted; a restart would mint one more.
            tracing::warn!(eshop_id, error = %e, "could not persist the new API token");
        }
        lock.release().await;
        tracing::debug!(eshop_id, "minted a new API access token");
        Ok(self.ready(token, rejected.is_some(), Some((started, took))))
    }

    fn ready(
        &self,
        t: AccessToken,
        after_rejection: bool,
        fetch: Option<(Instant, Duration)>,
    ) -> Arc<Token> {
        let mut header = HeaderValue::from_str(t.token.expose())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"));
        header.set_sensitive(true);
        Arc::new(Token {
            header,
            expires_at: to_instant(t.expires_at),
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            after_rejection,
            obtained: Instant::now(),
            origin: if fetch.is_some() { "minted" } else { "adopted" },
            fetch,
        })
    }

    /// Caches `token` as `eshop_id`'s current token, exactly as a fetch would, without asking
    /// the store or Shoptet: benchmarks warm a cache of 100,000 e-shops with it.
    pub fn adopt(&self, eshop_id: u64, token: AccessToken) -> Arc<Token> {
        let token = self.ready(token, false, None);
        lock(&self.eshops.get(eshop_id).token.state).token = Some(token.clone());
        token
    }

    /// A signed `addon:suspend` / `addon:approve` arrived, or an admin changed the installation:
    /// forget what is cached so the next request re-reads the store.
    pub fn set_suspended(&self, eshop_id: u64, suspended: bool) {
        let eshop = self.eshops.get(eshop_id);
        let mut st = lock(&eshop.token.state);
        st.suspended = suspended;
        st.failure = None;
        st.backoff = None;
    }

    /// The installation was replaced or removed: drop its cached token and any cached failure.
    pub fn forget(&self, eshop_id: u64) {
        if let Some(eshop) = self.eshops.existing(eshop_id) {
            let mut st = lock(&eshop.token.state);
            *st = State {
                incarnation: st.incarnation.wrapping_add(1),
                ..State::default()
            };
        }
    }
}

/// What one e-shop's token state is now, for the live state (SPEC B7 `runtime`): no secret.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSnapshot {
    /// Left on the cached token, if any.
    pub expires_in: Option<Duration>,
    pub refreshing: bool,
    /// Requests fail fast until then.
    pub backoff_until: Option<SystemTime>,
    /// The errorCode of the last failed fetch, until a fetch succeeds.
    pub last_error: Option<&'static str>,
}

impl TokenSlot {
    /// A copy of the slot's state; holds its lock for a few field reads.
    pub fn snapshot(&self) -> TokenSnapshot {
        let st = lock(&self.state);
        let now = Instant::now();
        TokenSnapshot {
            expires_in: st.token.as_ref().map(|t| t.remaining_at(now)),
            refreshing: self.refreshing.load(Ordering::Relaxed),
            backoff_until: st
                .failure
                .as_ref()
                .filter(|f| f.until > now)
                .map(|f| SystemTime::now() + (f.until - now)),
            last_error: st.failure.as_ref().map(|f| f.error.code()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::store::{Keyring, NewInstallation};

    /// A cache over a fresh SQLite store holding e-shop 1; the OAuth server is never reached.
    async fn cache() -> (Arc<TokenCache>, Arc<Eshops>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url, Keyring::generate()).await.expect("store");
        let installed = NewInstallation {
            eshop_id: 1,
            eshop_url: None,
            contact_email: None,
            oauth_token: Secret::new("oauth"),
        };
        store
            .upsert_installation(&installed, None)
            .await
            .expect("upsert");
        let eshops = Arc::new(Eshops::new(3));
        let cache = TokenCache::offline(
            eshops.clone(),
            store,
            TokenConfig {
                refresh_margin: Duration::from_secs(300),
                backoff_max: Duration::from_secs(10),
                status_recheck: STATUS_RECHECK,
            },
        )
        .expect("cache");
        let cache = Arc::new(cache);
        (cache, eshops, dir)
    }

    fn token(value: &str) -> AccessToken {
        AccessToken {
            token: Secret::new(value),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        }
    }

    #[tokio::test]
    async fn records_of_never_installed_ids_are_evicted_and_tokens_kept() {
        let (cache, eshops, _dir) = cache().await;
        cache.adopt(1, token("t1"));
        // Ids probed by a client and never installed: each left a record behind.
        for id in 2..=50 {
            eshops.get(id);
        }
        cache.recheck_statuses().await;
        assert_eq!(
            eshops.picked(|_| true).len(),
            1,
            "only the record holding a token stays"
        );
        let one = eshops.get(1);
        assert!(cache.get(&one).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_of_an_installation_removed_elsewhere_stops_serving() {
        let (cache, eshops, _dir) = cache().await;
        let stale = cache.adopt(1, token("t1"));
        // E-shop 3 is not in the store: another replica removed it.
        cache.adopt(3, token("t3"));
        let (one, three) = (eshops.get(1), eshops.get(3));
        assert!(cache.get(&one).await.is_ok());
        assert!(cache.get(&three).await.is_ok());
        cache.recheck_statuses().await;
        assert_eq!(
            cache.get(&one).await.expect("still installed").generation,
            stale.generation
        );
        assert!(lock(&three.token.state).token.is_none());
        // Once nobody holds it and it sees no request, its record goes too.
        drop(three);
        cache.recheck_statuses().await;
        assert!(eshops.existing(3).is_none());
        assert!(eshops.existing(1).is_some());
    }
}
