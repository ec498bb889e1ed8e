//! The built binary's command line: exit codes, messages and output that operators rely on.

mod common;

use std::path::Path;
use std::process::Output;

use base64::Engine as _;

/// Runs the binary in `dir` with a clean environment (see [`common::binary::command`]).
fn run(dir: &Path, args: &[&str]) -> Output {
    run_env(dir, args, &[])
}

/// [`run`] with `env` added to the cleaned environment.
fn run_env(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = common::binary::command(dir);
    cmd.args(args);
    cmd.envs(env.iter().copied());
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
    std::fs::write(dir.path().join("signing-key"), "signing-key-SENTINEL-5\n").unwrap();
    let admin = dir.path().join("admin-token");
    let keys = dir.path().join("keys");
    let signing = dir.path().join("signing-key");
    std::fs::write(
        dir.path().join("secrets.toml"),
        format!(
            "[shoptet]\nclient_id = \"my-client\"\nclient_secret = \"client-secret-SENTINEL-0\"\n\
             [admin]\ntoken_file = {:?}\n[proxy]\nclient_keys_file = {:?}\n\
             [addon]\nsigning_key_file = {:?}\n\
             [store]\nurl = \"postgres://app:db-password-SENTINEL-4@db/proxy\"\n",
            admin.to_str().unwrap(),
            keys.to_str().unwrap(),
            signing.to_str().unwrap()
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

#[test]
fn relative_paths_resolve_against_the_working_directory_and_sqlite_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    std::fs::write(
        dir.path().join("conf/c.toml"),
        "[store]\nurl = \"sqlite://proxy.db\"\nkey_file = \"store.key\"\n",
    )
    .unwrap();
    let key = run(dir.path(), &["gen-key"]);
    std::fs::write(dir.path().join("store.key"), &key.stdout).unwrap();
    let out = run(
        dir.path(),
        &["eshops", "list", "--json", "--config", "conf/c.toml"],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(list, serde_json::json!({"eshops": []}));
    assert!(
        dir.path().join("proxy.db").is_file(),
        "created in the working directory"
    );
    assert!(
        !dir.path().join("conf/proxy.db").exists(),
        "not beside the config file"
    );
}

#[test]
fn relative_secret_files_resolve_in_the_credentials_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let key = run(dir.path(), &["gen-key"]);
    std::fs::write(creds.join("store.key"), &key.stdout).unwrap();
    std::fs::write(creds.join("admin-token"), "admin-token-SENTINEL\n").unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[admin]\ntoken_file = \"admin-token\"\n\
         [store]\nurl = \"sqlite://proxy.db\"\nkey_file = \"store.key\"\n",
    )
    .unwrap();
    let args = ["eshops", "list", "--json", "--config", "c.toml"];
    let out = run_env(dir.path(), &args, &[("CREDENTIALS_DIRECTORY", &creds)]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(dir.path().join("proxy.db").is_file());

    // Without $CREDENTIALS_DIRECTORY the same names are looked up in the working directory.
    let out = run(dir.path(), &args);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("admin.token_file"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("SENTINEL"));
}

#[test]
fn environment_overrides_the_file_and_durations_read_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("c.toml"),
        "[proxy]\nmax_queue = 77\nqueue_timeout = \"30s\"\nrefresh_margin = \"5m\"\n",
    )
    .unwrap();
    let out = run_env(
        dir.path(),
        &["check-config", "--config", "c.toml"],
        &[
            ("SHOPTET_PROXY_PROXY__MAX_QUEUE", Path::new("5")),
            ("SHOPTET_PROXY_PROXY__QUEUE_TIMEOUT", Path::new("2m")),
        ],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let printed: toml::Value = toml::from_str(&stdout(&out)).expect("TOML");
    let proxy = &printed["proxy"];
    assert_eq!(proxy["max_queue"].as_integer(), Some(5), "{printed}");
    assert_eq!(proxy["queue_timeout"].as_str(), Some("2m"), "{printed}");
    assert_eq!(proxy["refresh_margin"].as_str(), Some("5m"), "{printed}");

    let out = run_env(
        dir.path(),
        &["check-config", "--config", "c.toml"],
        &[("SHOPTET_PROXY_PROXY__MAX_QUEU", Path::new("5"))],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("max_queu"), "{}", stderr(&out));
}

#[test]
fn every_documented_command_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, flags) in [
        (&["serve"][..], &[][..]),
        (&["demo"], &[]),
        (&["sim"], &[]),
        (&["check-config"], &[]),
        (&["gen-key"], &[]),
        (&["store", "rekey"], &[]),
        (&["eshops", "list"], &["--json"]),
        (
            &["eshops", "import"],
            &[
                "--oauth-token-file",
                "--eshop-url",
                "--contact-email",
                "<ID>",
            ],
        ),
        (&["eshops", "remove"], &["<ID>"]),
    ] {
        let mut with_help = args.to_vec();
        with_help.push("--help");
        let out = run(dir.path(), &with_help);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        for flag in flags {
            assert!(stdout(&out).contains(flag), "{args:?} lacks {flag}");
        }
        assert!(
            stdout(&out).contains("--config"),
            "{args:?}: --config is global"
        );
    }
}

#[test]
fn serve_refuses_to_start_without_a_store_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    for (store, names) in [
        (
            "[store]\nurl = \"sqlite://proxy.db\"\nkey_file = \"\"\n",
            "store.key_file",
        ),
        ("[store]\nurl = \"sqlite://proxy.db\"\n", "store.key"),
    ] {
        std::fs::write(dir.path().join("c.toml"), format!("{listen}{store}")).unwrap();
        let out = run(dir.path(), &["serve", "--config", "c.toml"]);
        assert!(!out.status.success(), "{store}");
        assert!(stderr(&out).contains(names), "{store}: {}", stderr(&out));
        assert!(
            !dir.path().join("proxy.db").exists(),
            "no store without a key"
        );
    }
}
