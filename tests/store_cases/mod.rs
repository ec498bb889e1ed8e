//! Test bodies shared by both store backends: `store_sqlite.rs` and `store_pg.rs` each provide a
//! fixture and expand `store_tests!` so the same scenarios run against SQLite and PostgreSQL.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoptet_proxy::secret::Secret;
use shoptet_proxy::store::{
    AccessToken, Keyring, NewInstallation, OutboxKind, Status, Store, StoreError,
};

/// One fresh, empty database (a temp SQLite file or a PostgreSQL schema) and its store key.
pub struct Backend {
    pub url: String,
    pub key: [u8; 32],
    /// Whether two separately opened stores share token locks (PostgreSQL replicas do; an
    /// SQLite store is owned by one process, so its lock tests share one handle).
    pub locks_across_instances: bool,
    /// Keeps a temp directory alive for the test's duration.
    pub _dir: Option<tempfile::TempDir>,
}

impl Backend {
    pub async fn open(&self) -> Store {
        self.open_with(Keyring::from_keys(self.key, Vec::new()))
            .await
            .unwrap()
    }

    pub async fn open_with(&self, keys: Keyring) -> Result<Store, StoreError> {
        Store::open(&self.url, keys).await
    }

    /// A second handle for lock tests: another "replica" where the backend supports it.
    async fn other_handle(&self, first: &Store) -> Store {
        if self.locks_across_instances {
            self.open().await
        } else {
            first.clone()
        }
    }
}

/// Expands every shared scenario into a `#[tokio::test]` using `$fixture() -> Option<Backend>`
/// (`None` = skipped).
macro_rules! store_tests {
    ($fixture:path) => {
        store_tests!(@each $fixture;
            upsert_then_get_returns_the_installation,
            reinstall_replaces_oauth_token_and_clears_access_token,
            status_changes_and_unknown_eshop_reports_false,
            statuses_are_read_in_batches_and_omit_unknown_eshops,
            access_token_is_saved_and_loaded,
            signature_key_is_saved_and_loaded,
            list_is_ordered_and_counts_cover_every_status,
            remove_deletes_and_reports_unknown,
            import_is_an_upsert_without_access_token,
            outbox_delivers_oldest_first_retries_and_survives_reopen,
            lock_token_serializes_concurrent_holders,
            dropped_or_abandoned_lock_is_released,
            wrong_key_cannot_open_secrets,
            rekey_moves_every_secret_to_the_current_key,
        );
    };
    (@each $fixture:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(backend) = $fixture().await {
                    store_cases::$case(&backend).await;
                }
            }
        )*
    };
}

pub fn new_install(eshop_id: u64, oauth: &str) -> NewInstallation {
    NewInstallation {
        eshop_id,
        eshop_url: Some(format!("https://shop{eshop_id}.example")),
        contact_email: Some(format!("owner@shop{eshop_id}.example")),
        oauth_token: Secret::new(oauth),
    }
}

/// A token expiring at a whole millisecond, the store's precision.
pub fn access_token(value: &str, expires_unix_ms: u64) -> AccessToken {
    AccessToken {
        token: Secret::new(value),
        expires_at: UNIX_EPOCH + Duration::from_millis(expires_unix_ms),
    }
}

pub async fn upsert_then_get_returns_the_installation(b: &Backend) {
    let store = b.open().await;
    let before = SystemTime::now() - Duration::from_secs(1);
    store
        .upsert_installation(
            &new_install(222651, "oauth-a"),
            Some(&access_token("api-a", 1_900_000_000_000)),
        )
        .await
        .unwrap();
    let got = store.get(222651).await.unwrap().unwrap();
    assert_eq!(got.eshop_id, 222651);
    assert_eq!(got.eshop_url.as_deref(), Some("https://shop222651.example"));
    assert_eq!(
        got.contact_email.as_deref(),
        Some("owner@shop222651.example")
    );
    assert_eq!(got.oauth_token.expose(), "oauth-a");
    assert_eq!(got.status, Status::Active);
    assert!(got.installed_at > before && got.installed_at <= SystemTime::now());
    assert_eq!(got.updated_at, got.installed_at);
    let token = got.access_token.unwrap();
    assert_eq!(token.token.expose(), "api-a");
    assert_eq!(
        token.expires_at,
        UNIX_EPOCH + Duration::from_millis(1_900_000_000_000)
    );
    assert!(got.signature_key.is_none());
    assert!(store.get(1).await.unwrap().is_none());
    assert!(store.get(u64::MAX).await.unwrap().is_none());
    store.ping().await.unwrap();
}

pub async fn reinstall_replaces_oauth_token_and_clears_access_token(b: &Backend) {
    let store = b.open().await;
    store
        .upsert_installation(
            &new_install(7, "oauth-old"),
            Some(&access_token("api-old", 1)),
        )
        .await
        .unwrap();
    store.set_status(7, Status::Suspended).await.unwrap();
    store
        .set_signature_key(7, &Secret::new("sig-key"))
        .await
        .unwrap();
    let first_installed = store.get(7).await.unwrap().unwrap().installed_at;

    let reinstall = NewInstallation {
        eshop_url: None,
        contact_email: Some("new@shop7.example".into()),
        ..new_install(7, "oauth-new")
    };
    store.upsert_installation(&reinstall, None).await.unwrap();
    let got = store.get(7).await.unwrap().unwrap();
    assert_eq!(got.oauth_token.expose(), "oauth-new");
    assert_eq!(got.status, Status::Active);
    assert!(got.access_token.is_none(), "old API token must not survive");
    assert_eq!(got.eshop_url.as_deref(), Some("https://shop7.example"));
    assert_eq!(got.contact_email.as_deref(), Some("new@shop7.example"));
    // SPEC v2 B5: installing again replaces every secret of the e-shop; the new installation
    // gets its own signature key from Shoptet.
    assert!(
        got.signature_key.is_none(),
        "old signature key must not survive"
    );
    assert!(got.installed_at >= first_installed);
}

pub async fn status_changes_and_unknown_eshop_reports_false(b: &Backend) {
    let store = b.open().await;
    store
        .upsert_installation(&new_install(3, "o"), None)
        .await
        .unwrap();
    for status in [Status::Suspended, Status::Uninstalled, Status::Active] {
        assert!(store.set_status(3, status).await.unwrap());
        assert_eq!(store.get(3).await.unwrap().unwrap().status, status);
    }
    assert!(!store.set_status(4, Status::Suspended).await.unwrap());
    assert!(!store.set_status(u64::MAX, Status::Suspended).await.unwrap());
    assert!(store.get(4).await.unwrap().is_none());
}

pub async fn statuses_are_read_in_batches_and_omit_unknown_eshops(b: &Backend) {
    let store = b.open().await;
    // More than one batch (1,000 ids per query), every third e-shop suspended.
    for id in 1..=1500u64 {
        store
            .upsert_installation(&new_install(id, "o"), None)
            .await
            .unwrap();
        if id % 3 == 0 {
            store.set_status(id, Status::Suspended).await.unwrap();
        }
    }
    let mut asked: Vec<u64> = (1..=1500).collect();
    asked.extend([1501, u64::MAX]);
    let statuses = store.statuses(&asked).await.unwrap();
    assert_eq!(statuses.len(), 1500, "unknown ids are left out");
    assert_eq!(statuses[&1499], Status::Active);
    assert_eq!(statuses[&1500], Status::Suspended);
    assert!(!statuses.contains_key(&1501));
    assert!(store.statuses(&[]).await.unwrap().is_empty());
}

pub async fn access_token_is_saved_and_loaded(b: &Backend) {
    let store = b.open().await;
    store
        .upsert_installation(&new_install(9, "o"), None)
        .await
        .unwrap();
    store
        .save_access_token(9, &access_token("api-1", 1_800_000_000_001))
        .await
        .unwrap();
    store
        .save_access_token(9, &access_token("api-2", 1_800_000_000_002))
        .await
        .unwrap();
    let token = store.get(9).await.unwrap().unwrap().access_token.unwrap();
    assert_eq!(token.token.expose(), "api-2");
    assert_eq!(
        token.expires_at,
        UNIX_EPOCH + Duration::from_millis(1_800_000_000_002)
    );
    // Saving for an unknown e-shop creates nothing.
    store
        .save_access_token(10, &access_token("api-x", 1))
        .await
        .unwrap();
    assert!(store.get(10).await.unwrap().is_none());
    // A restart finds the token: no new one needs minting.
    let reopened = b.open().await;
    let token = reopened
        .get(9)
        .await
        .unwrap()
        .unwrap()
        .access_token
        .unwrap();
    assert_eq!(token.token.expose(), "api-2");
}

pub async fn signature_key_is_saved_and_loaded(b: &Backend) {
    let store = b.open().await;
    store
        .upsert_installation(&new_install(11, "o"), None)
        .await
        .unwrap();
    store
        .set_signature_key(11, &Secret::new("sig-1"))
        .await
        .unwrap();
    store
        .set_signature_key(11, &Secret::new("sig-2"))
        .await
        .unwrap();
    let got = store.get(11).await.unwrap().unwrap();
    assert_eq!(got.signature_key.unwrap().expose(), "sig-2");
    assert_eq!(got.oauth_token.expose(), "o");
}

pub async fn list_is_ordered_and_counts_cover_every_status(b: &Backend) {
    let store = b.open().await;
    assert!(store.list().await.unwrap().is_empty());
    for id in [30, 10, 20] {
        store
            .upsert_installation(&new_install(id, "o"), None)
            .await
            .unwrap();
    }
    store
        .save_access_token(20, &access_token("t", 1_700_000_000_000))
        .await
        .unwrap();
    store.set_status(30, Status::Suspended).await.unwrap();

    let list = store.list().await.unwrap();
    assert_eq!(
        list.iter().map(|s| s.eshop_id).collect::<Vec<_>>(),
        [10, 20, 30]
    );
    assert_eq!(
        list[1].token_expires_at.as_deref(),
        Some("2023-11-14T22:13:20Z")
    );
    assert_eq!(list[0].token_expires_at, None);
    assert_eq!(list[2].status, Status::Suspended);
    assert_eq!(list[0].eshop_url.as_deref(), Some("https://shop10.example"));
    // installedAt is RFC 3339 in UTC.
    assert!(
        time::OffsetDateTime::parse(
            &list[0].installed_at,
            &time::format_description::well_known::Rfc3339
        )
        .is_ok(),
        "{}",
        list[0].installed_at
    );
    assert_eq!(
        store.count_by_status().await.unwrap(),
        vec![
            (Status::Active, 2),
            (Status::Suspended, 1),
            (Status::Uninstalled, 0)
        ]
    );
}

pub async fn remove_deletes_and_reports_unknown(b: &Backend) {
    let store = b.open().await;
    store
        .upsert_installation(&new_install(5, "o"), None)
        .await
        .unwrap();
    assert!(store.remove(5).await.unwrap());
    assert!(store.get(5).await.unwrap().is_none());
    assert!(!store.remove(5).await.unwrap());
    assert!(!store.remove(u64::MAX).await.unwrap());
    assert!(store.list().await.unwrap().is_empty());
}

pub async fn import_is_an_upsert_without_access_token(b: &Backend) {
    let store = b.open().await;
    store
        .upsert_installation(&new_install(42, "old"), Some(&access_token("api", 1)))
        .await
        .unwrap();
    store.set_status(42, Status::Uninstalled).await.unwrap();
    // What `eshops import` and `PUT /admin/eshops/{id}` store (crate::install).
    let imported = NewInstallation {
        eshop_id: 42,
        eshop_url: Some("https://imported.example".into()),
        contact_email: None,
        oauth_token: Secret::new("imported"),
    };
    store.upsert_installation(&imported, None).await.unwrap();
    let got = store.get(42).await.unwrap().unwrap();
    assert_eq!(got.oauth_token.expose(), "imported");
    assert_eq!(got.status, Status::Active);
    assert!(got.access_token.is_none());
    assert_eq!(got.eshop_url.as_deref(), Some("https://imported.example"));
    assert_eq!(got.contact_email.as_deref(), Some("owner@shop42.example"));
}

pub async fn outbox_delivers_oldest_first_retries_and_survives_reopen(b: &Backend) {
    let store = b.open().await;
    assert_eq!(store.outbox_depth().await.unwrap(), 0);
    let first = store
        .outbox_push(OutboxKind::Event, Some(1), b"{\"event\":\"installed\"}")
        .await
        .unwrap();
    let second = store
        .outbox_push(OutboxKind::Webhook, Some(2), b"webhook-2")
        .await
        .unwrap();
    let third = store
        .outbox_push(OutboxKind::Webhook, None, b"webhook-3")
        .await
        .unwrap();
    assert!(first < second && second < third);
    assert_eq!(store.outbox_depth().await.unwrap(), 3);
    let now = SystemTime::now();

    let due = store.outbox_due(now, 2).await.unwrap();
    assert_eq!(
        due.iter().map(|i| i.id).collect::<Vec<_>>(),
        [first, second]
    );
    assert_eq!(due[0].kind, OutboxKind::Event);
    assert_eq!(due[0].eshop_id, Some(1));
    assert_eq!(due[0].body, b"{\"event\":\"installed\"}");
    assert_eq!(due[0].attempts, 0);
    assert_eq!(due[1].kind, OutboxKind::Webhook);

    store
        .outbox_retry_at(first, 1, now + shoptet_proxy::store::OUTBOX_LEASE / 2)
        .await
        .unwrap();
    store.outbox_delivered(second).await.unwrap();
    assert_eq!(store.outbox_depth().await.unwrap(), 2);
    drop(store);

    let store = b.open().await;
    assert_eq!(store.outbox_depth().await.unwrap(), 2);
    // `first` waits for its retry time; `third` was never handed out.
    let due = store.outbox_due(now, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, third);
    assert_eq!(due[0].eshop_id, None);
    assert_eq!(due[0].body, b"webhook-3");
    // `third` is now claimed, so a later poll sees only `first`, with its attempt count.
    let due = store
        .outbox_due(
            now + shoptet_proxy::store::OUTBOX_LEASE / 2 + Duration::from_secs(1),
            10,
        )
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, first);
    assert_eq!(due[0].attempts, 1);
    // A claim that is never settled expires, so nothing is lost when a worker dies.
    let later = now + shoptet_proxy::store::OUTBOX_LEASE + Duration::from_secs(1);
    let due = store.outbox_due(later, 10).await.unwrap();
    assert_eq!(due.iter().map(|i| i.id).collect::<Vec<_>>(), [third]);
}

pub async fn lock_token_serializes_concurrent_holders(b: &Backend) {
    const TASKS_PER_HANDLE: usize = 3;
    const ROUNDS: usize = 8;
    let first = b.open().await;
    let second = b.other_handle(&first).await;
    first
        .upsert_installation(&new_install(5, "o"), None)
        .await
        .unwrap();
    // Every holder reads the counter, yields, and writes it back plus one: without mutual
    // exclusion across both handles, increments would be lost.
    let mut tasks = tokio::task::JoinSet::new();
    for store in [&first, &second] {
        for _ in 0..TASKS_PER_HANDLE {
            let store = store.clone();
            tasks.spawn(async move {
                for _ in 0..ROUNDS {
                    let mut lock = store.lock_token(5).await.unwrap();
                    let n: usize = match lock.current().await.unwrap() {
                        Some(t) => t.token.expose().parse().unwrap(),
                        None => 0,
                    };
                    tokio::task::yield_now().await;
                    lock.save(&access_token(&(n + 1).to_string(), 1))
                        .await
                        .unwrap();
                    lock.release().await;
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let token = second.get(5).await.unwrap().unwrap().access_token.unwrap();
    assert_eq!(
        token.token.expose(),
        (2 * TASKS_PER_HANDLE * ROUNDS).to_string()
    );
}

pub async fn dropped_or_abandoned_lock_is_released(b: &Backend) {
    let first = b.open().await;
    let second = b.other_handle(&first).await;
    let bound = Duration::from_secs(10);

    let held = first.lock_token(8).await.unwrap();
    // A waiter that gives up must not end up holding the lock once it is freed.
    let gave_up = tokio::time::timeout(Duration::from_millis(100), second.lock_token(8)).await;
    assert!(gave_up.is_err(), "lock must be exclusive");
    drop(held);

    let mut again = tokio::time::timeout(bound, second.lock_token(8))
        .await
        .expect("a dropped lock must be released")
        .unwrap();
    assert!(again.current().await.unwrap().is_none());
    drop(again);
    let relocked = tokio::time::timeout(bound, first.lock_token(8)).await;
    assert!(relocked.is_ok(), "lock leaked after drop");
}

pub async fn wrong_key_cannot_open_secrets(b: &Backend) {
    let store = b.open().await;
    store
        .upsert_installation(&new_install(12, "oauth-secret-value"), None)
        .await
        .unwrap();
    drop(store);
    let other = b.open_with(Keyring::generate()).await.unwrap();
    let err = other.get(12).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("cannot open sealed value for eshop 12 column oauth_token"),
        "{text}"
    );
    assert!(!text.contains("oauth-secret-value"), "{text}");
    // Listing needs no secrets, so it still works.
    assert_eq!(other.list().await.unwrap().len(), 1);
}

pub async fn rekey_moves_every_secret_to_the_current_key(b: &Backend) {
    let old_key = b.key;
    let new_key = [0x42; 32];
    let store = b.open().await;
    for id in [1, 2, 3] {
        store
            .upsert_installation(&new_install(id, &format!("oauth-{id}")), None)
            .await
            .unwrap();
    }
    store
        .save_access_token(1, &access_token("api-1", 5))
        .await
        .unwrap();
    store
        .set_signature_key(2, &Secret::new("sig-2"))
        .await
        .unwrap();
    drop(store);

    let rotated = b
        .open_with(Keyring::from_keys(new_key, vec![old_key]))
        .await
        .unwrap();
    // A write after rotation is already under the new key: rekey leaves that row alone.
    rotated
        .upsert_installation(&new_install(4, "oauth-4"), None)
        .await
        .unwrap();
    assert_eq!(
        rotated.get(1).await.unwrap().unwrap().oauth_token.expose(),
        "oauth-1"
    );
    assert_eq!(rotated.rekey().await.unwrap(), 3);
    assert_eq!(rotated.rekey().await.unwrap(), 0);
    drop(rotated);

    let new_only = b
        .open_with(Keyring::from_keys(new_key, Vec::new()))
        .await
        .unwrap();
    for id in [1, 2, 3, 4] {
        let got = new_only.get(id).await.unwrap().unwrap();
        assert_eq!(got.oauth_token.expose(), format!("oauth-{id}"));
    }
    let one = new_only.get(1).await.unwrap().unwrap();
    assert_eq!(one.access_token.unwrap().token.expose(), "api-1");
    let two = new_only.get(2).await.unwrap().unwrap();
    assert_eq!(two.signature_key.unwrap().expose(), "sig-2");

    let old_only = b
        .open_with(Keyring::from_keys(old_key, Vec::new()))
        .await
        .unwrap();
    assert!(old_only.get(1).await.is_err());
}
