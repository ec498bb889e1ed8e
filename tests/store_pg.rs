//! The store on PostgreSQL: the shared scenarios, each in its own schema of the database named by
//! `SHOPTET_PROXY_TEST_PG_URL` (start one with `tests/pg.sh start`). Unset, the tests report
//! "skipped" and pass, unless `SHOPTET_PROXY_REQUIRE_PG=1` makes that a failure.

#[macro_use]
mod store_cases;

use shoptet_proxy::store::{Keyring, Store};
use store_cases::{new_install, Backend};
use tokio_postgres::NoTls;

async fn base_url() -> Option<String> {
    match std::env::var("SHOPTET_PROXY_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("SHOPTET_PROXY_REQUIRE_PG").as_deref() != Ok("1"),
                "SHOPTET_PROXY_REQUIRE_PG=1 but SHOPTET_PROXY_TEST_PG_URL is unset \
                 (run tests/pg.sh start)"
            );
            println!("skipped: SHOPTET_PROXY_TEST_PG_URL unset");
            None
        }
    }
}

/// A fresh schema, so tests run in parallel without seeing each other's rows; the store's URL
/// puts it first on the search path.
async fn fixture() -> Option<Backend> {
    let base = base_url().await?;
    let schema = format!("store_test_{:016x}", rand::random::<u64>());
    let (client, connection) = tokio_postgres::connect(&base, NoTls).await.unwrap();
    let conn_task = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    drop(client);
    conn_task.await.unwrap().unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(Backend {
        url: format!("{base}{sep}options=-csearch_path%3D{schema}"),
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
    if base_url().await.is_none() {
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
