//! The simulator's entities against Shoptet's OpenAPI schema (SPEC B8 "Fidelity"): every property
//! the schema names is present, recursively, with its JSON type, `null` only where the schema
//! allows it, and nothing the schema does not name. The schema comes from
//! `tests/fixtures/shoptet-schema.json` (see the README beside it).

use std::io::Read;
use std::sync::OnceLock;

use http::StatusCode;
use serde_json::Value;
use shoptet_proxy::sim::testing::{start, TestClient, TestResponse};
use shoptet_proxy::sim::SimConfig;

fn schema(entity: &str) -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    let all = S.get_or_init(|| {
        serde_json::from_str(include_str!("fixtures/shoptet-schema.json")).expect("fixture")
    });
    let s = &all["entities"][entity];
    assert!(s.is_object(), "no schema for {entity}");
    s
}

fn has_type(v: &Value, t: &str) -> bool {
    match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        other => panic!("unknown schema type {other}"),
    }
}

/// Every way `v` (at `path`) departs from the schema node `node`.
fn check(path: &str, node: &Value, v: &Value, errors: &mut Vec<String>) {
    let types = match node {
        Value::String(t) => t.as_str(),
        _ => node["type"].as_str().expect("node type"),
    };
    if !types.split('|').any(|t| has_type(v, t)) {
        errors.push(format!("{path}: expected {types}, got {v}"));
        return;
    }
    if let (Some(props), Some(obj)) = (node.get("properties"), v.as_object()) {
        let props = props.as_object().expect("properties");
        for (k, sub) in props {
            match obj.get(k) {
                Some(x) => check(&format!("{path}.{k}"), sub, x, errors),
                None => errors.push(format!("{path}.{k}: missing")),
            }
        }
        for k in obj.keys().filter(|k| !props.contains_key(*k)) {
            errors.push(format!("{path}.{k}: not in the schema"));
        }
    }
    if let (Some(items), Some(arr)) = (node.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check(&format!("{path}[{i}]"), items, x, errors);
        }
    }
}

fn conforms(entity: &str, v: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(entity, schema(entity), v, &mut errors);
    errors
}

fn assert_conforms(entity: &str, v: &Value) {
    let errors = conforms(entity, v);
    assert!(errors.is_empty(), "{entity}:\n{}", errors.join("\n"));
}

struct Env {
    base: String,
    c: TestClient,
    token: String,
}

impl Env {
    async fn new() -> (Env, shoptet_proxy::sim::SimHandle) {
        let sim = start(SimConfig::default()).await;
        let c = TestClient::new();
        let inst = sim.create_eshop(222651);
        let token = c.api_token(&sim.base_url(), &inst.oauth_token).await;
        let env = Env {
            base: sim.base_url(),
            c,
            token,
        };
        (env, sim)
    }

    async fn get(&self, path: &str) -> TestResponse {
        let r = self
            .c
            .get(
                &format!("{}{path}", self.base),
                &[("shoptet-access-token", &self.token)],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        r
    }
}

#[tokio::test]
async fn eshop_info_has_every_schema_property() {
    let (e, _sim) = Env::new().await;
    let v = e.get("/api/eshop").await.json();
    assert_conforms("eshop", &v["data"]);
    let oauth = v["data"]["urls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["ident"] == "oauth")
        .expect("an oauth url");
    assert_eq!(
        oauth["url"],
        format!("{}/eshops/222651/action/OAuthServer/", e.base)
    );
    assert_eq!(v["data"]["contactInformation"]["eshopId"], 222651);
}

#[tokio::test]
async fn order_list_items_and_details_have_every_schema_property() {
    let (e, _sim) = Env::new().await;
    let list = e.get("/api/orders?itemsPerPage=100").await.json();
    let orders = list["data"]["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 25);
    for o in orders {
        assert_conforms("orderListItem", o);
    }
    let code = orders[3]["code"].as_str().unwrap();
    let detail = e.get(&format!("/api/orders/{code}")).await.json();
    assert_conforms("order", &detail["data"]["order"]);
    for k in ["guid", "email", "price", "status"] {
        assert_eq!(
            detail["data"]["order"][k], orders[3][k],
            "list and detail agree on {k}"
        );
    }
}

#[tokio::test]
async fn products_have_every_schema_property_in_the_list_and_the_snapshot() {
    let (e, sim) = Env::new().await;
    let list = e.get("/api/products?itemsPerPage=100").await.json();
    let products = list["data"]["products"].as_array().unwrap();
    assert_eq!(products.len(), 30);
    for p in products {
        assert_conforms("productListItem", p);
    }
    // The snapshot's result file holds the same items, one JSON document a line, gzipped.
    let hook =
        e.c.post_json(
            &format!("{}/api/webhooks", e.base),
            &[("shoptet-access-token", &e.token)],
            &serde_json::json!({"data": [{"event": "job:finished", "url": "http://127.0.0.1:9/"}]}),
        )
        .await;
    assert_eq!(hook.status, StatusCode::CREATED, "{}", hook.text());
    sim.set_config(|c| c.job_duration = std::time::Duration::ZERO);
    let job_id = {
        let c = &e.c;
        let r = c
            .get(
                &format!("{}/api/products/snapshot", e.base),
                &[("shoptet-access-token", &e.token)],
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        r.json()["data"]["jobId"].as_str().unwrap().to_owned()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let job = loop {
        let job = e.get(&format!("/api/system/jobs/{job_id}")).await.json()["data"]["job"].clone();
        if job["status"] == "completed" {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "job never completed");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let url = job["resultUrl"].as_str().unwrap();
    assert!(url.ends_with(".jsonl.gz"), "{url}");
    let file = e.c.get(url, &[]).await;
    assert_eq!(file.header("content-type"), Some("application/gzip"));
    assert_eq!(file.header("content-encoding"), None);
    let mut text = String::new();
    flate2::read::GzDecoder::new(&file.body[..])
        .read_to_string(&mut text)
        .expect("gzip");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document a line"))
        .collect();
    assert_eq!(lines.len(), 30);
    for p in &lines {
        assert_conforms("productListItem", p);
    }
}

#[tokio::test]
async fn the_check_catches_a_missing_a_mistyped_and_an_unknown_property() {
    let (e, _sim) = Env::new().await;
    let good = e.get("/api/eshop").await.json()["data"].clone();
    let mut missing = good.clone();
    missing["contactInformation"]
        .as_object_mut()
        .unwrap()
        .remove("eshopId");
    assert_eq!(
        conforms("eshop", &missing),
        ["eshop.contactInformation.eshopId: missing"]
    );
    let mut nulled = good.clone();
    nulled["contactInformation"]["eshopName"] = Value::Null;
    assert_eq!(
        conforms("eshop", &nulled).len(),
        1,
        "eshopName is not nullable"
    );
    let mut mistyped = good.clone();
    mistyped["currencies"][0]["priority"] = "1".into();
    assert_eq!(conforms("eshop", &mistyped).len(), 1);
    let mut extra = good;
    extra["urls"][0]["extra"] = 1.into();
    assert_eq!(
        conforms("eshop", &extra),
        ["eshop.urls[0].extra: not in the schema"]
    );
}
