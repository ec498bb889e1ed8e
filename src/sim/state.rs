//! Everything the simulator remembers: installations, codes, OAuth and API tokens, per-e-shop data
//! (orders, webhooks, signature key, bucket), counters for `/sim/stats`, the request log, webhook
//! deliveries and async jobs.
//!
//! Hot-path lookups go through sharded `DashMap`s and atomics; the few `Mutex`es are per e-shop
//! (or per log slot) and held for a handful of instructions, so concurrent requests don't queue
//! on one global lock.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::bucket::Bucket;
use super::entities;
use super::eshop_oauth::SettingsAuth;
use super::util::{now_shoptet, random_lower_alnum};
use super::{SimConfig, SimInstallation};

pub(crate) const ACTIVE: u8 = 0;
pub(crate) const SUSPENDED: u8 = 1;
pub(crate) const UNINSTALLED: u8 = 2;

pub(crate) fn status_name(s: u8) -> &'static str {
    match s {
        ACTIVE => "active",
        SUSPENDED => "suspended",
        _ => "uninstalled",
    }
}

const TOKEN_OK: u8 = 0;
const TOKEN_EXPIRED: u8 = 1;
const TOKEN_REVOKED: u8 = 2;

/// One API access token from getAccessToken.
pub(crate) struct ApiToken {
    pub eshop_id: u64,
    /// The non-secret prefix `<eshopId>-a-<n>`, safe to log and to show in messages.
    pub label: String,
    pub expires_at: Instant,
    state: AtomicU8,
    pub in_flight: AtomicUsize,
}

pub(crate) enum TokenCheck {
    Valid,
    Expired,
    Revoked,
}

impl ApiToken {
    pub(crate) fn check(&self, now: Instant) -> TokenCheck {
        match self.state.load(Ordering::Relaxed) {
            TOKEN_REVOKED => TokenCheck::Revoked,
            TOKEN_EXPIRED => TokenCheck::Expired,
            _ if now >= self.expires_at => TokenCheck::Expired,
            _ => TokenCheck::Valid,
        }
    }
}

#[derive(Default)]
pub(crate) struct EshopCounters {
    pub tokens_minted: AtomicU64,
    pub api_calls: AtomicU64,
    pub status401: AtomicU64,
    pub status429: AtomicU64,
    pub peak_concurrency: AtomicU64,
    pub orders_created: AtomicU64,
    pub settings_token_calls: AtomicU64,
    pub settings_secrets_received: AtomicU64,
    pub settings_tokens_issued: AtomicU64,
}

pub(crate) struct Auth {
    pub oauth_token: String,
    /// API tokens minted under the current OAuth token (pruned of dead ones when minting).
    pub minted: Vec<Arc<ApiToken>>,
    pub token_seq: u64,
}

pub(crate) struct Webhook {
    pub id: u64,
    pub event: String,
    pub url: String,
    pub send_payload: Value,
    pub created: String,
}

impl Webhook {
    pub(crate) fn to_json(&self) -> Value {
        json!({"id": self.id, "event": self.event, "url": self.url, "created": self.created,
               "updated": null, "sendPayload": self.send_payload})
    }
}

pub(crate) struct EshopData {
    eshop_id: u64,
    /// `None` until first used: 25 seed orders for each of 100,000 bulk e-shops would take
    /// gigabytes, and load tests never look at them.
    orders: Option<BTreeMap<String, Value>>,
    pub next_order: u64,
    pub webhooks: Vec<Webhook>,
}

impl EshopData {
    /// The e-shop's orders, seeded with [`SEED_ORDERS`] orders on first use.
    pub(crate) fn orders(&mut self) -> &mut BTreeMap<String, Value> {
        let id = self.eshop_id;
        self.orders.get_or_insert_with(|| {
            let created = now_shoptet();
            (1..=SEED_ORDERS)
                .map(|seq| entities::order(id, seq, &created))
                .collect()
        })
    }
}

/// Orders every new e-shop starts with, so pagination has something to page through.
pub(crate) const SEED_ORDERS: u64 = 25;

pub(crate) struct Eshop {
    pub id: u64,
    pub status: AtomicU8,
    pub auth: Mutex<Auth>,
    pub bucket: Bucket,
    /// Path prefixes answered 403 `invalid-token-no-rights`.
    pub denied: RwLock<Vec<String>>,
    pub data: Mutex<EshopData>,
    /// None until the first renew-signature-key: deliveries then go unsigned.
    pub signature_key: Mutex<Option<String>>,
    /// The serialized `data` of `GET /api/eshop`, built on first use: 100,000 bulk e-shops
    /// would otherwise hold half a gigabyte of it.
    eshop_json: OnceLock<Bytes>,
    pub counters: EshopCounters,
    pub in_flight: AtomicUsize,
}

impl Eshop {
    fn new(id: u64) -> Self {
        Eshop {
            id,
            status: AtomicU8::new(ACTIVE),
            auth: Mutex::new(Auth {
                oauth_token: String::new(),
                minted: Vec::new(),
                token_seq: 0,
            }),
            bucket: Bucket::new(),
            denied: RwLock::new(Vec::new()),
            data: Mutex::new(EshopData {
                eshop_id: id,
                orders: None,
                next_order: SEED_ORDERS + 1,
                webhooks: Vec::new(),
            }),
            signature_key: Mutex::new(None),
            eshop_json: OnceLock::new(),
            counters: EshopCounters::default(),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// The serialized `data` of `GET /api/eshop`.
    pub(crate) fn eshop_json(&self, base_url: &str) -> Bytes {
        self.eshop_json
            .get_or_init(|| {
                let v = entities::eshop(self.id, base_url, &contact_email(self.id));
                Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
            })
            .clone()
    }

    pub(crate) fn status(&self) -> u8 {
        self.status.load(Ordering::Relaxed)
    }

    /// Marks every API token of this e-shop `state` (revoked ones also leave the lookup map).
    fn mark_tokens(&self, tokens: &DashMap<String, Arc<ApiToken>>, revoke: bool) -> usize {
        let Ok(mut auth) = self.auth.lock() else {
            return 0;
        };
        let n = auth.minted.len();
        for t in auth.minted.iter() {
            t.state.store(
                if revoke { TOKEN_REVOKED } else { TOKEN_EXPIRED },
                Ordering::Relaxed,
            );
        }
        if revoke {
            tokens.retain(|_, t| t.eshop_id != self.id);
            auth.minted.clear();
        }
        n
    }
}

pub(crate) fn contact_email(id: u64) -> String {
    format!("owner{id}@example.com")
}

#[derive(Default)]
pub(crate) struct Counters {
    pub token_calls: AtomicU64,
    pub get_access_token_calls: AtomicU64,
    pub api_calls: AtomicU64,
    pub status401: AtomicU64,
    pub status429: AtomicU64,
    pub status5xx: AtomicU64,
    pub drops: AtomicU64,
    pub peak_per_token: AtomicU64,
    pub settings_authorize_calls: AtomicU64,
    pub settings_token_calls: AtomicU64,
    pub settings_resource_calls: AtomicU64,
}

/// `GET /sim/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    /// API tokens minted per e-shop id.
    pub tokens_minted: BTreeMap<u64, u64>,
    pub calls: CallStats,
    /// 401 answers of getAccessToken and /api.
    pub status401: u64,
    /// 429 answers of getAccessToken and /api (concurrency, bucket, faults).
    pub status429: u64,
    /// 5xx answers of /api (faults).
    pub status5xx: u64,
    /// Connections dropped by faults.
    pub drops: u64,
    /// Most /api requests ever in flight at once on one API token.
    pub peak_concurrency_per_token: u64,
    pub eshops: BTreeMap<u64, EshopStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallStats {
    pub token: u64,
    pub get_access_token: u64,
    pub api: u64,
    /// Requests to the e-shops' own OAuth servers (SPEC A5): `authorize`, `token`, `resource`.
    #[serde(default)]
    pub settings_authorize: u64,
    #[serde(default)]
    pub settings_token: u64,
    #[serde(default)]
    pub settings_resource: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EshopStats {
    pub tokens_minted: u64,
    pub api_calls: u64,
    pub status401: u64,
    pub status429: u64,
    /// Most /api requests in flight at once for this e-shop, over all its tokens.
    pub peak_concurrency: u64,
    pub orders_created: u64,
    /// Requests to this e-shop's own OAuth server's `token` (whatever they carried).
    #[serde(default)]
    pub settings_token_calls: u64,
    /// Of those, the ones carrying the configured client secret: where the secret went.
    #[serde(default)]
    pub settings_secrets_received: u64,
    /// `basic_eshop` access tokens this e-shop's OAuth server issued.
    #[serde(default)]
    pub settings_tokens_issued: u64,
}

/// One entry of `GET /sim/requests`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RequestRecord {
    pub seq: u64,
    pub eshop_id: Option<u64>,
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub content_type: Option<String>,
    /// Request headers by lowercase name; secrets replaced (`shoptet-access-token` by the token's
    /// label, `authorization`-like ones by `<redacted>`).
    pub headers: BTreeMap<String, String>,
    pub token_label: Option<String>,
    pub body_len: usize,
    pub body_fnv1a: String,
    /// None when the connection was dropped on purpose.
    pub status: Option<u16>,
}

const LOG_SLOTS: usize = 1024;

/// A lock-per-slot ring: writers claim a slot with one atomic add, so they never wait on each
/// other unless 1024 requests finish at the same instant.
pub(crate) struct RequestLog {
    seq: AtomicU64,
    slots: Box<[Mutex<Option<Arc<RequestRecord>>>]>,
}

impl RequestLog {
    fn new() -> Self {
        RequestLog {
            seq: AtomicU64::new(0),
            slots: (0..LOG_SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }

    pub(crate) fn push(&self, mut rec: RequestRecord) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        rec.seq = seq;
        if let Ok(mut slot) = self.slots[(seq as usize) % LOG_SLOTS].lock() {
            *slot = Some(Arc::new(rec));
        }
    }

    pub(crate) fn snapshot(&self, eshop: Option<u64>) -> Vec<Arc<RequestRecord>> {
        let mut out: Vec<_> = self
            .slots
            .iter()
            .filter_map(|s| s.lock().ok().and_then(|s| s.clone()))
            .filter(|r| eshop.is_none() || r.eshop_id == eshop)
            .collect();
        out.sort_by_key(|r| r.seq);
        out
    }

    pub(crate) fn clear(&self) {
        for s in self.slots.iter() {
            if let Ok(mut s) = s.lock() {
                *s = None;
            }
        }
    }
}

/// One webhook delivery (all its attempts) for `GET /sim/webhook-deliveries`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeliveryRecord {
    pub delivery_id: u64,
    pub eshop_id: u64,
    pub event: String,
    pub url: String,
    pub body: String,
    pub attempts: Vec<Attempt>,
    /// pending, delivered or failed.
    pub state: &'static str,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Attempt {
    /// The signature header sent, None when the e-shop never had a key.
    pub signature: Option<String>,
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// Deliveries kept for `GET /sim/webhook-deliveries`.
const MAX_DELIVERIES: usize = 1000;

pub(crate) struct Job {
    pub eshop_id: u64,
    pub endpoint: String,
    pub created: String,
    pub completed: Option<String>,
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) struct State {
    cfg: RwLock<Arc<SimConfig>>,
    pub base_url: String,
    /// Added to every HTTP/1.x answer: Shoptet's header spellings (see `spelling`).
    pub spelling: http::Extensions,
    pub eshops: DashMap<u64, Arc<Eshop>>,
    /// One-time code → (e-shop, the OAuth token it exchanges to).
    pub codes: DashMap<String, (u64, String)>,
    /// Current OAuth token → e-shop.
    pub oauth: DashMap<String, u64>,
    pub tokens: DashMap<String, Arc<ApiToken>>,
    ips: DashMap<IpAddr, Arc<AtomicUsize>>,
    pub counters: Counters,
    pub requests: RequestLog,
    pub deliveries: Mutex<VecDeque<DeliveryRecord>>,
    pub next_delivery: AtomicU64,
    pub next_webhook: AtomicU64,
    pub jobs: DashMap<String, Job>,
    /// Admins, codes and tokens of the e-shops' own OAuth servers.
    pub settings: SettingsAuth,
    pub http: HttpClient,
    pub shutdown: watch::Receiver<bool>,
    next_eshop: AtomicU64,
}

impl State {
    pub(crate) fn new(
        cfg: SimConfig,
        base_url: String,
        spelling: http::Extensions,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        State {
            spelling,
            cfg: RwLock::new(Arc::new(cfg)),
            base_url,
            eshops: DashMap::new(),
            codes: DashMap::new(),
            oauth: DashMap::new(),
            tokens: DashMap::new(),
            ips: DashMap::new(),
            counters: Counters::default(),
            requests: RequestLog::new(),
            deliveries: Mutex::new(VecDeque::new()),
            next_delivery: AtomicU64::new(1),
            next_webhook: AtomicU64::new(1),
            jobs: DashMap::new(),
            settings: SettingsAuth::default(),
            http: Client::builder(TokioExecutor::new()).build_http(),
            shutdown,
            next_eshop: AtomicU64::new(100_001),
        }
    }

    pub(crate) fn cfg(&self) -> Arc<SimConfig> {
        match self.cfg.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn update_config(&self, f: impl FnOnce(&mut SimConfig)) {
        let mut guard = match self.cfg.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let tls = guard.tls;
        let mut next = SimConfig::clone(&guard);
        f(&mut next);
        next.tls = tls;
        *guard = Arc::new(next);
    }

    pub(crate) fn ip_counter(&self, ip: IpAddr) -> Arc<AtomicUsize> {
        self.ips.entry(ip).or_default().clone()
    }

    pub(crate) fn eshop(&self, id: u64) -> Option<Arc<Eshop>> {
        self.eshops.get(&id).map(|e| e.clone())
    }

    /// Installs e-shop `id` (a free id when None), or re-installs it: a fresh one-time code and a
    /// fresh OAuth token; the previous OAuth token and every API token minted under it are revoked
    /// and the installation is active again.
    pub(crate) fn install(&self, id: Option<u64>) -> SimInstallation {
        let id = id.unwrap_or_else(|| loop {
            let candidate = self.next_eshop.fetch_add(1, Ordering::Relaxed);
            if !self.eshops.contains_key(&candidate) {
                break candidate;
            }
        });
        let oauth_token = random_lower_alnum(255);
        let code = random_lower_alnum(255);
        self.install_with_token(id, oauth_token.clone());
        self.codes.insert(code.clone(), (id, oauth_token.clone()));
        SimInstallation {
            eshop_id: id,
            code,
            oauth_token,
        }
    }

    /// Installs e-shops `from..from + count` at once, each with the OAuth token
    /// `<prefix><eshopId>` (no codes): load tests derive the tokens instead of collecting
    /// 100,000 of them from answers.
    pub(crate) fn install_bulk(&self, from: u64, count: u64, prefix: &str) {
        for id in from..from + count {
            self.install_with_token(id, format!("{prefix}{id}"));
        }
    }

    /// (Re-)installs `id` under `oauth_token`: the previous OAuth token and its API tokens are
    /// revoked and the installation is active.
    fn install_with_token(&self, id: u64, oauth_token: String) {
        let eshop = self
            .eshops
            .entry(id)
            .or_insert_with(|| Arc::new(Eshop::new(id)))
            .clone();
        eshop.mark_tokens(&self.tokens, true);
        if let Ok(mut auth) = eshop.auth.lock() {
            let old = std::mem::replace(&mut auth.oauth_token, oauth_token.clone());
            self.oauth.remove(&old);
        }
        self.oauth.insert(oauth_token, id);
        eshop.status.store(ACTIVE, Ordering::Relaxed);
    }

    /// Mints an API token for the installation behind `oauth_token`.
    pub(crate) fn mint(&self, eshop: &Eshop, oauth_token: &str) -> Result<(String, u64), Mint> {
        let cfg = self.cfg();
        let now = Instant::now();
        let Ok(mut auth) = eshop.auth.lock() else {
            return Err(Mint::Unauthorized);
        };
        if auth.oauth_token != oauth_token {
            return Err(Mint::Unauthorized);
        }
        auth.minted
            .retain(|t| matches!(t.check(now), TokenCheck::Valid));
        if cfg.token_cap > 0 && auth.minted.len() >= cfg.token_cap {
            return Err(Mint::CapReached);
        }
        auth.token_seq += 1;
        let label = format!("{}-a-{}", eshop.id, auth.token_seq);
        let token = format!("{label}-{}", random_lower_alnum(32));
        let t = Arc::new(ApiToken {
            eshop_id: eshop.id,
            label,
            expires_at: now + cfg.token_lifetime,
            state: AtomicU8::new(TOKEN_OK),
            in_flight: AtomicUsize::new(0),
        });
        auth.minted.push(t.clone());
        self.tokens.insert(token.clone(), t);
        eshop.counters.tokens_minted.fetch_add(1, Ordering::Relaxed);
        Ok((token, cfg.token_lifetime.as_secs()))
    }

    pub(crate) fn revoke_tokens(&self, eshop: &Eshop) -> usize {
        eshop.mark_tokens(&self.tokens, true)
    }

    pub(crate) fn expire_tokens(&self, eshop: &Eshop) -> usize {
        eshop.mark_tokens(&self.tokens, false)
    }

    pub(crate) fn stats(&self) -> SimStats {
        let c = &self.counters;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = SimStats {
            calls: CallStats {
                token: ld(&c.token_calls),
                get_access_token: ld(&c.get_access_token_calls),
                api: ld(&c.api_calls),
                settings_authorize: ld(&c.settings_authorize_calls),
                settings_token: ld(&c.settings_token_calls),
                settings_resource: ld(&c.settings_resource_calls),
            },
            status401: ld(&c.status401),
            status429: ld(&c.status429),
            status5xx: ld(&c.status5xx),
            drops: ld(&c.drops),
            peak_concurrency_per_token: ld(&c.peak_per_token),
            ..SimStats::default()
        };
        for e in self.eshops.iter() {
            let ec = &e.counters;
            s.tokens_minted.insert(e.id, ld(&ec.tokens_minted));
            s.eshops.insert(
                e.id,
                EshopStats {
                    tokens_minted: ld(&ec.tokens_minted),
                    api_calls: ld(&ec.api_calls),
                    status401: ld(&ec.status401),
                    status429: ld(&ec.status429),
                    peak_concurrency: ld(&ec.peak_concurrency),
                    orders_created: ld(&ec.orders_created),
                    settings_token_calls: ld(&ec.settings_token_calls),
                    settings_secrets_received: ld(&ec.settings_secrets_received),
                    settings_tokens_issued: ld(&ec.settings_tokens_issued),
                },
            );
        }
        s
    }

    /// Zeroes every counter and empties every bucket (installations and tokens stay).
    pub(crate) fn reset_stats(&self) {
        let c = &self.counters;
        for a in [
            &c.token_calls,
            &c.get_access_token_calls,
            &c.api_calls,
            &c.status401,
            &c.status429,
            &c.status5xx,
            &c.drops,
            &c.peak_per_token,
            &c.settings_authorize_calls,
            &c.settings_token_calls,
            &c.settings_resource_calls,
        ] {
            a.store(0, Ordering::Relaxed);
        }
        for e in self.eshops.iter() {
            let ec = &e.counters;
            for a in [
                &ec.tokens_minted,
                &ec.api_calls,
                &ec.status401,
                &ec.status429,
                &ec.peak_concurrency,
                &ec.orders_created,
                &ec.settings_token_calls,
                &ec.settings_secrets_received,
                &ec.settings_tokens_issued,
            ] {
                a.store(0, Ordering::Relaxed);
            }
            e.bucket.reset();
        }
    }

    pub(crate) fn count_status(&self, eshop: Option<&Eshop>, status: u16) {
        let c = &self.counters;
        match status {
            401 => {
                c.status401.fetch_add(1, Ordering::Relaxed);
                if let Some(e) = eshop {
                    e.counters.status401.fetch_add(1, Ordering::Relaxed);
                }
            }
            429 => {
                c.status429.fetch_add(1, Ordering::Relaxed);
                if let Some(e) = eshop {
                    e.counters.status429.fetch_add(1, Ordering::Relaxed);
                }
            }
            500..=599 => {
                c.status5xx.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    pub(crate) fn push_delivery(&self, rec: DeliveryRecord) {
        if let Ok(mut d) = self.deliveries.lock() {
            if d.len() >= MAX_DELIVERIES {
                d.pop_front();
            }
            d.push_back(rec);
        }
    }

    pub(crate) fn update_delivery(&self, id: u64, f: impl FnOnce(&mut DeliveryRecord)) {
        if let Ok(mut d) = self.deliveries.lock() {
            if let Some(r) = d.iter_mut().find(|r| r.delivery_id == id) {
                f(r);
            }
        }
    }
}

pub(crate) enum Mint {
    Unauthorized,
    CapReached,
}
