//! SIGHUP reloads the configuration of the real binary: the log level changes at once, changes
//! that need a restart are named in the log, and an invalid file changes nothing.

mod common;

use common::binary::{Served, Setup};
use shoptet_proxy::sim::testing::{TestClient, WebhookReceiver};
use std::time::Duration;

/// `config.toml` with its `[log] level` replaced.
fn with_level(config: &str, level: &str) -> String {
    config.replace(r#"level = "info""#, &format!("level = {level:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_log_level_and_names_what_needs_a_restart() {
    let addon = WebhookReceiver::start().await;
    let setup = Setup::new(&addon.url(""), "5s").await;
    let path = &setup.config;
    let original = std::fs::read_to_string(path).expect("config");
    // Quiet: only the startup line, no access lines.
    std::fs::write(path, with_level(&original, "warn,shoptet_proxy::app=info")).expect("write");
    let served = Served::start(path, "");
    let http = TestClient::new();
    let auth = setup.client_auth();
    let call = || {
        let url = format!("http://{}/eshops/1/api/eshop", served.proxy);
        let (http, auth) = (http.clone(), auth.clone());
        async move {
            let r = http.get(&url, &[("proxy-authorization", &auth)]).await;
            assert_eq!(r.error_code().as_deref(), Some("proxy-eshop-not-installed"));
        }
    };
    call().await;

    // Louder, plus a change that needs a restart.
    let louder = with_level(&original, "info").replace("[proxy]\n", "[proxy]\nmax_queue = 7\n");
    std::fs::write(path, louder).expect("write");
    served.signal("HUP");
    let changed = tokio::task::block_in_place(|| {
        served.wait_for("about the new level", |v| {
            v["message"] == "reload: log level changed"
        })
    });
    assert_eq!(
        (&changed["filter"], &changed["level"]),
        (&"info".into(), &"INFO".into())
    );
    let restart = tokio::task::block_in_place(|| {
        served.wait_for("naming the restart", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("after a restart"))
        })
    });
    assert_eq!(restart["sections"], r#"["proxy"]"#);
    call().await;
    let access = tokio::task::block_in_place(|| {
        served.wait_for("the access line", |v| v["target"] == "access")
    });
    assert_eq!(access["status"], 403);

    // A broken file is refused; the proxy keeps serving.
    std::fs::write(path, "[proxy]\nno_such_key = 1\n").expect("write");
    served.signal("HUP");
    tokio::task::block_in_place(|| {
        served.wait_for("refusing the invalid file", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("configuration is invalid"))
        })
    });
    call().await;

    served.signal("TERM");
    let (status, out, _) = served.finish(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    let access_lines = out
        .iter()
        .filter(|l| l.contains(r#""target":"access""#))
        .count();
    assert_eq!(
        access_lines, 2,
        "none before the reload, one per call after it"
    );
}
