//! The store on PostgreSQL: the shared scenarios, each in its own schema of the database named by
//! `SHOPTET_PROXY_TEST_PG_URL` (start one with `tests/pg.sh start`). Unset, the tests report
//! "skipped" and pass, unless `SHOPTET_PROXY_REQUIRE_PG=1` makes that a failure.

mod common;
#[macro_use]
mod store_cases;

use common::pg;
use shoptet_proxy::store::{Keyring, Store};
use store_cases::{new_install, Backend};

/// The shared scenarios' backend: a fresh schema of the test server.
async fn fixture() -> Option<Backend> {
    Some(Backend {
        url: pg::pg_url().await?,
        key: rand::random(),
        locks_across_instances: true,
        _dir: None,
    })
}

store_tests!(fixture);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_opening_a_new_database_at_once_migrate_it_once() {
    let Some(b) = fixture().await else { return };
    let opens = (0..4).map(|_| Store::open(&b.url, Keyring::from_keys(b.key, Vec::new())));
    let stores = futures_util::future::try_join_all(opens).await.unwrap();
    stores[0]
        .upsert_installation(&new_install(1, "o"), None)
        .await
        .unwrap();
    assert_eq!(stores[3].list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn unreachable_database_fails_open_without_leaking_the_password() {
    if pg::base_url().is_none() {
        return;
    }
    // Port 1 on loopback: nothing listens there.
    let err = Store::open(
        "postgres://user:pa55-SECRET@127.0.0.1:1/db",
        Keyring::generate(),
    )
    .await
    .err()
    .unwrap();
    let text = format!("{err} {err:?}");
    assert!(!text.contains("pa55-SECRET"), "{text}");
}
