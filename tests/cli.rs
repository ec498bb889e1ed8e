//! The built binary's command line: exit codes, messages and output that operators rely on.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;

/// Runs the binary in `dir` (so no stray ./config.toml is picked up) with a clean
/// `SHOPTET_PROXY_*`/`CREDENTIALS_DIRECTORY` environment.
fn run(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoptet-proxy"));
    cmd.args(args).current_dir(dir);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("SHOPTET_PROXY_") || name == "CREDENTIALS_DIRECTORY" {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd.output().expect("run shoptet-proxy")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn check_config_redacts_every_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("admin-token"), "admin-token-SENTINEL-1\n").unwrap();
    std::fs::write(
        dir.path().join("keys"),
        "client-key-SENTINEL-2\nclient-key-SENTINEL-3\n",
    )
    .unwrap();
    let admin = dir.path().join("admin-token");
    let keys = dir.path().join("keys");
    std::fs::write(
        dir.path().join("secrets.toml"),
        format!(
            "[shoptet]\nclient_id = \"my-client\"\nclient_secret = \"client-secret-SENTINEL-0\"\n\
             [admin]\ntoken_file = {:?}\n[proxy]\nclient_keys_file = {:?}\n\
             [store]\nurl = \"postgres://app:db-password-SENTINEL-4@db/proxy\"\n",
            admin.to_str().unwrap(),
            keys.to_str().unwrap()
        ),
    )
    .unwrap();

    let out = run(dir.path(), &["check-config", "--config", "secrets.toml"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let printed = stdout(&out);
    assert!(!printed.contains("SENTINEL"), "a secret leaked:\n{printed}");
    assert!(printed.contains("client_id = \"my-client\""), "{printed}");
    assert!(printed.contains("<redacted>"), "{printed}");
}

#[test]
fn unknown_key_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("c.toml"),
        "[proxy]\nlisten_adress = \"x\"\n",
    )
    .unwrap();
    let out = run(dir.path(), &["check-config", "--config", "c.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("proxy.listen_adress"),
        "stderr: {}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn bad_duration_exits_2_naming_key_and_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("c.toml"),
        "[proxy]\nqueue_timeout = \"30x\"\n",
    )
    .unwrap();
    let out = run(dir.path(), &["check-config", "--config", "c.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("proxy.queue_timeout") && err.contains("30x"),
        "stderr: {err}"
    );
}

#[test]
fn config_option_works_before_and_after_the_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.toml"), "[proxy]\nmax_queue = 77\n").unwrap();
    for args in [
        ["--config", "c.toml", "check-config"],
        ["check-config", "--config", "c.toml"],
    ] {
        let out = run(dir.path(), &args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("max_queue = 77"),
            "{args:?}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn gen_key_prints_a_fresh_32_byte_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys: Vec<String> = (0..2)
        .map(|_| {
            let out = run(dir.path(), &["gen-key"]);
            assert!(out.status.success(), "stderr: {}", stderr(&out));
            stdout(&out).trim_end().to_owned()
        })
        .collect();
    for key in &keys {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("standard base64");
        assert_eq!(bytes.len(), 32);
    }
    assert_ne!(keys[0], keys[1]);
}

#[test]
fn version_names_the_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(dir.path(), &["--version"]);
    assert!(out.status.success());
    let printed = stdout(&out);
    let commit = env!("SHOPTET_PROXY_GIT_COMMIT");
    assert!(!commit.is_empty());
    assert!(printed.contains(commit), "{printed}");
    assert!(printed.contains(shoptet_proxy::VERSION), "{printed}");
}
