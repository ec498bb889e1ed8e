//! Several proxy replicas on one PostgreSQL store (SPEC B4): they share API tokens, so a burst of
//! cold requests spread over them mints exactly one token per e-shop, and a restart mints none;
//! and a database that goes away leaves `/readyz` at 200 while `shoptet_proxy_store_up` shows it
//! (SPEC B7, B10).
//! Needs `SHOPTET_PROXY_TEST_PG_URL` (see tests/pg.sh); unset, the test reports "skipped".

mod common;

use common::deploy::Deployment;
use common::pg::pg_url;
use futures_util::future::join_all;
use shoptet_proxy::secret::Secret;
use shoptet_proxy::store::NewInstallation;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const ESHOPS: [u64; 3] = [1001, 1002, 1003];
const REQUESTS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_mint_one_token_per_eshop() {
    let Some(url) = pg_url().await else { return };
    let h = Deployment::with_store(Some(url)).await;
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
    let mut h = Deployment::with_store(Some(url)).await;
    let a = h.start().await;
    let b = h.start().await;
    let sim = h.install(&a, ESHOPS[0]).await;
    assert_eq!(sim["installStatus"], 200, "{sim}");
    let event: serde_json::Value = serde_json::from_slice(&h.events.next().await.body).unwrap();
    assert_eq!(event["eshopId"], ESHOPS[0]);

    // Replica b adopts the token a minted at installation, and verifies with the key a obtained.
    assert_eq!(b.api_get(&h.http, ESHOPS[0]).await.status, 200);
    assert_eq!(h.minted(ESHOPS[0]), 1);
    let key = h.installation(ESHOPS[0]).await;
    let key = key.signature_key.expect("key").expose().to_owned();
    h.hooks.respond_with(&[500]);
    let body = format!(
        r#"{{"eshopId":{},"event":"order:create","eventInstance":"1"}}"#,
        ESHOPS[0]
    );
    let sig = shoptet_proxy::shoptet::signature::sign(key.as_bytes(), body.as_bytes());
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

/// A TCP relay to the database that the test can cut and restore, as a network failure would.
struct Relay {
    addr: std::net::SocketAddr,
    open: Arc<AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (is_open, tasks) = (open.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !is_open.load(Ordering::SeqCst) {
                    continue; // dropped: the connection closes at once
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut db) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut db).await;
                    }
                });
                tasks.lock().expect("links").push(link.abort_handle());
            }
        });
        Relay { addr, open, links }
    }

    /// Drops every relayed connection and refuses new ones.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_stays_200_while_the_database_is_unreachable() {
    let Some(url) = pg_url().await else { return };
    let parsed: url::Url = url.parse().expect("database URL");
    let target = format!(
        "{}:{}",
        parsed.host_str().expect("host"),
        parsed.port().unwrap_or(5432)
    );
    let relay = Relay::start(target.clone()).await;
    let h = Deployment::with_store(Some(url.replacen(&target, &relay.addr.to_string(), 1))).await;
    let p = h.start().await;
    let readyz = || async { h.http.get(&p.admin_url("/readyz"), &[]).await.status };
    let store_up = || async {
        let text = h.http.get(&p.admin_url("/metrics"), &[]).await.text();
        text.lines()
            .find_map(|l| l.strip_prefix("shoptet_proxy_store_up "))
            .map(|v| v.trim().to_owned())
    };
    assert_eq!(readyz().await, 200);
    assert_eq!(store_up().await.as_deref(), Some("1"));

    // A network cut: pooled connections die under the proxy and new ones are refused. The
    // replica stays in the balancer (cached tokens still serve, SPEC B10); the gauge shows it.
    relay.cut();
    wait_for(&store_up, Some("0".to_owned())).await;
    assert_eq!(readyz().await, 200);
    let health = h.http.get(&p.admin_url("/healthz"), &[]).await;
    assert_eq!(health.status, 200, "the process is alive");

    relay.restore();
    wait_for(&store_up, Some("1".to_owned())).await;
    assert_eq!(readyz().await, 200);
    // The pool hands out no dead connection: the first store-backed answer works.
    assert_eq!(
        h.http.get(&p.admin_url("/admin/eshops"), &[]).await.status,
        200
    );
    p.stop().await;
}

/// Polls `probe` until it answers `want`; panics after 10 s.
async fn wait_for<F, Fut, T>(probe: &F, want: T)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: PartialEq + std::fmt::Debug,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = probe().await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {got:?}, expected {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
