//! Several proxy replicas on one PostgreSQL store (SPEC B4): they share API tokens, so a burst of
//! cold requests spread over them mints exactly one token per e-shop, and a restart mints none.
//! Needs `SHOPTET_PROXY_TEST_PG_URL` (see tests/pg.sh); unset, the test reports "skipped".

mod install_common;

use futures_util::future::join_all;
use install_common::{pg_url, Harness};
use shoptet_proxy::secret::Secret;
use shoptet_proxy::store::NewInstallation;

const ESHOPS: [u64; 3] = [1001, 1002, 1003];
const REQUESTS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_mint_one_token_per_eshop() {
    let Some(url) = pg_url().await else { return };
    let h = Harness::with_store(Some(url)).await;
    // Three replicas each allow 3 requests per e-shop in flight, more than Shoptet's 3 per token;
    // that limit is not what this test is about.
    h.sim.set_config(|c| c.per_token_concurrency = 0);
    let store = h.store().await;
    for id in ESHOPS {
        let sim = h.sim.create_eshop(id);
        let new = NewInstallation {
            eshop_id: id,
            eshop_url: None,
            contact_email: None,
            oauth_token: Secret::new(sim.oauth_token),
        };
        store.upsert_installation(&new, None).await.unwrap();
    }
    let replicas = join_all((0..3).map(|_| h.start())).await;

    let calls = (0..REQUESTS).map(|i| {
        let proxy = &replicas[i % replicas.len()];
        let eshop = ESHOPS[(i / replicas.len()) % ESHOPS.len()];
        proxy.api_get(&h.http, eshop)
    });
    let answers = join_all(calls).await;
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for id in ESHOPS {
        assert_eq!(h.minted(id), 1, "e-shop {id}");
    }
    assert_eq!(h.sim.stats().calls.get_access_token, ESHOPS.len() as u64);

    for p in replicas {
        p.stop().await;
    }
    let p = h.start().await;
    for id in ESHOPS {
        assert_eq!(p.api_get(&h.http, id).await.status, 200);
        assert_eq!(h.minted(id), 1, "e-shop {id} after a restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn install_and_webhooks_work_across_replicas() {
    let Some(url) = pg_url().await else { return };
    let mut h = Harness::with_store(Some(url)).await;
    let a = h.start().await;
    let b = h.start().await;
    let sim = h.install(&a, ESHOPS[0]).await;
    assert_eq!(sim["installStatus"], 200, "{sim}");
    let event: serde_json::Value = serde_json::from_slice(&h.events.next().await.body).unwrap();
    assert_eq!(event["eshopId"], ESHOPS[0]);

    // Replica b adopts the token a minted at installation, and verifies with the key a obtained.
    assert_eq!(b.api_get(&h.http, ESHOPS[0]).await.status, 200);
    assert_eq!(h.minted(ESHOPS[0]), 1);
    let key = h
        .store()
        .await
        .get(ESHOPS[0])
        .await
        .unwrap()
        .expect("stored");
    let key = key.signature_key.expect("key").expose().to_owned();
    h.hooks.respond_with(&[500]);
    let body = format!(
        r#"{{"eshopId":{},"event":"order:create","eventInstance":"1"}}"#,
        ESHOPS[0]
    );
    let sig = shoptet_proxy::signature::sign(key.as_bytes(), body.as_bytes());
    let r = h
        .http
        .request(
            http::Method::POST,
            &b.public_url("/webhooks"),
            &[("shoptet-webhook-signature", &sig)],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Refused once, then delivered (by either replica) exactly as sent.
    assert_eq!(h.hooks.next().await.body, body.as_bytes());
    b.stop().await;
    assert_eq!(h.hooks.next().await.body, body.as_bytes());
    a.stop().await;
}
