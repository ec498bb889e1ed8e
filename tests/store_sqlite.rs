//! The store on SQLite: the shared scenarios plus what only a file can show (no plaintext on
//! disk, fast open of a large store).

#[macro_use]
mod store_cases;

use std::time::{Duration, Instant};

use shoptet_proxy::secret::Secret;
use shoptet_proxy::store::{Keyring, Store};
use store_cases::{access_token, new_install, Backend};

async fn fixture() -> Option<Backend> {
    let dir = tempfile::tempdir().unwrap();
    // `sqlite://` + an absolute path gives the `sqlite:///abs` form.
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    Some(Backend {
        url,
        key: rand::random(),
        locks_across_instances: false,
        _dir: Some(dir),
    })
}

store_tests!(fixture);

#[tokio::test]
async fn database_files_hold_no_token_in_clear() {
    let b = fixture().await.unwrap();
    let store = b.open().await;
    let oauth = "oauth-CANARY-5f0c2e7d9a";
    let api = "api-CANARY-1b3d5f7h9j";
    let sig = "sig-CANARY-0a2c4e6g8i";
    store
        .upsert_installation(&new_install(1, oauth), Some(&access_token(api, 1)))
        .await
        .unwrap();
    store.set_signature_key(1, &Secret::new(sig)).await.unwrap();
    assert_eq!(
        store.get(1).await.unwrap().unwrap().oauth_token.expose(),
        oauth
    );

    let dir = b._dir.as_ref().unwrap().path();
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        scanned += bytes.len();
        for needle in [oauth, api, sig] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} found in clear"
            );
        }
    }
    // The e-shop URL is not secret: finding it proves the scan saw the written data.
    let url = b"https://shop1.example";
    let found_url = std::fs::read_dir(dir).unwrap().any(|e| {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        bytes.windows(url.len()).any(|w| w == url)
    });
    assert!(found_url && scanned > 0);
}

#[tokio::test]
async fn relative_and_absolute_urls_both_work() {
    let b = fixture().await.unwrap();
    let abs = b._dir.as_ref().unwrap().path().join("abs.db");
    let store = Store::open(&format!("sqlite://{}", abs.display()), Keyring::generate())
        .await
        .unwrap();
    store.ping().await.unwrap();
    assert!(abs.exists());
    // A relative path resolves against the working directory, like every path in the config.
    let rel = abs
        .strip_prefix(std::env::current_dir().unwrap())
        .map(|p| p.to_path_buf());
    if let Ok(rel) = rel {
        let again = Store::open(&format!("sqlite://{}", rel.display()), Keyring::generate())
            .await
            .unwrap();
        again.ping().await.unwrap();
    }
    let err = Store::open("sqlite://", Keyring::generate())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("empty SQLite path"), "{err}");
}

#[tokio::test]
async fn opening_a_store_with_many_installations_loads_nothing() {
    const N: i64 = 100_000;
    let b = fixture().await.unwrap();
    let store = b.open().await;
    store
        .upsert_installation(&new_install(N as u64, "last"), None)
        .await
        .unwrap();
    drop(store);
    // The other rows go in directly, in one transaction: their sealed columns are never opened.
    let path = b._dir.as_ref().unwrap().path().join("store.db");
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO installations (eshop_id, oauth_token, status, installed_at, \
                 updated_at) VALUES (?1, x'00', 'active', 0, 0)",
            )
            .unwrap();
        for id in 1..N {
            insert.execute([id]).unwrap();
        }
    }
    tx.commit().unwrap();
    drop(conn);

    let started = Instant::now();
    let reopened = b.open().await;
    let got = reopened.get(N as u64).await.unwrap().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(got.oauth_token.expose(), "last");
    assert!(elapsed < Duration::from_secs(2), "open took {elapsed:?}");
    let counts = reopened.count_by_status().await.unwrap();
    assert_eq!(counts[0].1, N as u64);
}
