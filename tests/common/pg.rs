//! The throwaway PostgreSQL of `tests/pg.sh`, named by `SHOPTET_PROXY_TEST_PG_URL`. Unset, a
//! test that needs it prints "skipped" and passes, unless `SHOPTET_PROXY_REQUIRE_PG=1` (as
//! `tests/run.sh` sets) makes that a failure: a check that silently stops running is worse than
//! none.

use tokio_postgres::NoTls;

/// The server's URL, or None (after printing why) when the variable is unset.
pub fn base_url() -> Option<String> {
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

/// The server's URL with a fresh schema first on the search path, so tests run in parallel
/// without seeing each other's rows; None as for [`base_url`].
pub async fn pg_url() -> Option<String> {
    let base = base_url()?;
    let schema = format!("test_{:016x}", rand::random::<u64>());
    let (client, connection) = tokio_postgres::connect(&base, NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    let conn_task = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create schema");
    drop(client);
    conn_task
        .await
        .expect("connection task")
        .expect("connection closes cleanly");
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-csearch_path%3D{schema}"))
}
