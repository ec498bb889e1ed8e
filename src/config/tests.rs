//! Loading, layering, error messages and check-config output of the configuration.

use std::time::Duration;

use super::show::redact_url_password;
use super::*;

/// Loads `toml` (written to a temporary file) with the given environment.
fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).expect("write config");
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_from(Some(&path), &env)
}

fn load_ok(toml: &str, env: &[(&str, &str)]) -> Config {
    match load(toml, env) {
        Ok(c) => c,
        Err(e) => panic!("config should load: {e}"),
    }
}

/// The error message of a config that must not load.
fn load_err(toml: &str, env: &[(&str, &str)]) -> String {
    match load(toml, env) {
        Ok(c) => panic!("config should be rejected, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "error {message:?} should mention {part:?}"
        );
    }
}

#[test]
fn empty_file_gives_the_spec_defaults() {
    let c = load_ok("", &[]);
    assert_eq!(c.shoptet.api_url.as_str(), "https://api.myshoptet.com/");
    assert_eq!(c.shoptet.client_secret, None);
    assert_eq!(c.shoptet.ca_file, None);
    assert_eq!(c.shoptet.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.proxy.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.proxy.eshop_header, "x-shoptet-eshop-id");
    assert_eq!(c.proxy.refresh_margin, Duration::from_secs(300));
    assert_eq!(c.proxy.max_replay_body, 1_048_576);
    assert_eq!(
        (
            c.proxy.max_in_flight_per_eshop,
            c.proxy.max_in_flight,
            c.proxy.max_queue
        ),
        (3, 50, 1000)
    );
    assert_eq!(c.proxy.upstream_timeout, Duration::from_secs(60));
    assert!(c.proxy.bucket_pacing);
    assert_eq!(c.proxy.bucket_reserve, 10);
    assert!(c.proxy.client_keys.is_empty());
    assert_eq!(c.public.listen, None);
    assert_eq!(c.public.install_allow.len(), 2);
    assert_eq!(
        c.public.webhook_allow,
        vec!["185.184.254.0/24".parse().unwrap()]
    );
    assert!(c.public.trusted_proxies.is_empty());
    assert_eq!(c.addon.events_url, None);
    assert_eq!(c.addon.retry_max, Duration::from_secs(15));
    assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.admin.token, None);
    assert_eq!(c.store.url, "sqlite://shoptet-proxy.db");
    assert_eq!(c.store.key_file, Some(PathBuf::from("store.key")));
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
}

#[test]
fn prefixed_variables_without_a_section_are_not_config_keys() {
    let c = load_ok(
        "",
        &[
            ("SHOPTET_PROXY_BIN", "/usr/bin/x"),
            ("SHOPTET_PROXY_TEST_PG_URL", "postgres://x"),
            ("SHOPTET_PROXY_PROXY__MAX_QUEUE", "7"),
        ],
    );
    assert_eq!(c.proxy.max_queue, 7);
    assert_eq!(load_ok("", &[]).proxy.listen, c.proxy.listen);
}

#[test]
fn reference_config_file_gives_exactly_the_defaults() {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let from_reference = Config::load_from(Some(&reference), &[]).expect("reference loads");
    assert_eq!(from_reference, load_ok("", &[]));
}

#[test]
fn redacted_output_of_the_defaults_loads_back_to_the_defaults() {
    let defaults = load_ok("", &[]);
    let printed = defaults.redacted_toml();
    // check-config adds read-only lines for the (here absent) secrets; drop them to reload.
    assert_eq!(load_ok(&reloadable(&printed), &[]), defaults);
}

/// Drops the lines check-config adds for secrets read from files, which are not keys.
fn reloadable(printed: &str) -> String {
    printed
        .lines()
        .filter(|l| !l.starts_with("client_keys =") && !l.starts_with("token ="))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Every printer in `show` must print what its parser in `parse` reads back, for values other
/// than the defaults too.
#[test]
fn redacted_output_of_a_config_with_every_key_changed_loads_back_to_it() {
    let changed = load_ok(
        r#"
        [shoptet]
        api_url = "http://127.0.0.1:1234/base"
        partner_url = "https://partner.example:8443"
        client_id = "42"
        redirect_uri = "https://addon.example/install"
        settings_redirect_uri = "https://addon.example/s/authorized"
        ca_file = "/etc/ca.pem"
        connect_timeout = "1500ms"
        [proxy]
        listen = "[::1]:8081"
        eshop_header = "X-Eshop"
        refresh_margin = "0s"
        max_replay_body = 5
        max_in_flight_per_eshop = 1
        max_in_flight = 2
        max_queue = 0
        queue_timeout = "1h 2m"
        max_retry_wait = "0s"
        upstream_timeout = "90s"
        token_backoff_max = "1s"
        bucket_pacing = false
        bucket_reserve = 199
        shutdown_timeout = "1d"
        tls_cert_file = "proxy-cert.pem"
        tls_key_file = "proxy-key.pem"
        [public]
        listen = "0.0.0.0:8443"
        tls_cert_file = "cert.pem"
        tls_key_file = "key.pem"
        install_allow = []
        webhook_allow = ["10.0.0.0/8", "::1"]
        trusted_proxies = ["192.168.1.1"]
        [addon]
        events_url = "http://127.0.0.1:9000/events?x=1"
        webhooks_url = "https://addon.example/hooks"
        retry_max = "2m"
        settings_url = "http://127.0.0.1:9001/settings"
        settings_session_ttl = "10m"
        settings_frame_ancestors = ["https://admin.example"]
        [admin]
        listen = "127.0.0.1:1"
        [store]
        url = "postgresql://app@db/proxy"
        key_file = ""
        previous_key_files = ["a.key", "/b.key"]
        [log]
        format = "json"
        level = "warn,shoptet_proxy=trace"
        [telemetry]
        otlp_endpoint = "http://127.0.0.1:4318"
        sample_ratio = 0.5
        service_name = "proxy-eu"
        "#,
        &[],
    );
    let defaults = load_ok("", &[]);
    let printed = changed.redacted_toml();
    let (now, before): (toml::Table, toml::Table) = (
        toml::from_str(&printed).unwrap(),
        toml::from_str(&defaults.redacted_toml()).unwrap(),
    );
    // Secrets and their files print redacted and do not round-trip; other tests cover them.
    let secrets = [
        "client_secret",
        "client_keys_file",
        "client_keys",
        "token_file",
        "token",
        "signing_key_file",
    ];
    for (section, keys) in &now {
        for (key, value) in keys.as_table().unwrap() {
            if !secrets.contains(&key.as_str()) {
                assert_ne!(Some(value), before[section].get(key), "{section}.{key}");
            }
        }
    }
    assert_eq!(load_ok(&reloadable(&printed), &[]), changed);
}

/// check-config prints exactly the keys of the reference config.toml, so a key added to a
/// section but not documented there (or the other way round) fails here.
#[test]
fn check_config_prints_the_keys_of_the_reference_config() {
    let keys = |toml_text: &str| -> Vec<String> {
        let table: toml::Table = toml::from_str(toml_text).unwrap();
        let mut keys: Vec<String> = table
            .iter()
            .flat_map(|(section, keys)| {
                let keys = keys.as_table().unwrap().keys();
                keys.map(move |key| format!("{section}.{key}"))
            })
            .collect();
        keys.sort();
        keys
    };
    let reference =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")).unwrap();
    let mut documented = keys(&reference);
    // Input only: the secret it names prints (redacted) as `client_secret`.
    documented.retain(|k| k != "shoptet.client_secret_file");
    // Output only: the secrets read from `client_keys_file` and `token_file`.
    documented.extend(["proxy.client_keys".into(), "admin.token".into()]);
    documented.sort();
    assert_eq!(keys(&load_ok("", &[]).redacted_toml()), documented);
}

#[test]
fn file_values_replace_defaults() {
    let c = load_ok(
        r#"
        [shoptet]
        api_url = "http://127.0.0.1:1234"
        ca_file = "ca.pem"
        [proxy]
        queue_timeout = "1500ms"
        max_in_flight = 7
        bucket_pacing = false
        [public]
        listen = "0.0.0.0:8443"
        install_allow = []
        trusted_proxies = ["10.0.0.1"]
        [addon]
        events_url = "http://127.0.0.1:9000/events"
        [log]
        format = "json"
        level = "info,shoptet_proxy=debug"
        "#,
        &[],
    );
    assert_eq!(c.shoptet.api_url.as_str(), "http://127.0.0.1:1234/");
    assert_eq!(c.shoptet.ca_file, Some(PathBuf::from("ca.pem")));
    assert_eq!(c.proxy.queue_timeout, Duration::from_millis(1500));
    assert_eq!(c.proxy.max_in_flight, 7);
    assert!(!c.proxy.bucket_pacing);
    assert_eq!(c.public.listen, Some("0.0.0.0:8443".parse().unwrap()));
    assert!(c.public.install_allow.is_empty());
    assert_eq!(
        c.public.trusted_proxies,
        vec!["10.0.0.1/32".parse().unwrap()]
    );
    assert_eq!(
        c.addon.events_url.as_ref().map(url::Url::as_str),
        Some("http://127.0.0.1:9000/events")
    );
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn environment_beats_file_with_double_underscore_nesting() {
    let c = load_ok(
        "[proxy]\nmax_in_flight = 7\nlisten = \"127.0.0.1:1111\"\n",
        &[
            ("SHOPTET_PROXY_PROXY__MAX_IN_FLIGHT", "20"),
            ("SHOPTET_PROXY_SHOPTET__CLIENT_ID", "12345"),
            ("SHOPTET_PROXY_PROXY__REFRESH_MARGIN", "90s"),
            ("SHOPTET_PROXY_PUBLIC__WEBHOOK_ALLOW", "[]"),
            ("SHOPTET_PROXY_PUBLIC__INSTALL_ALLOW", "10.0.0.0/8"),
            ("UNRELATED", "ignored"),
        ],
    );
    assert_eq!(c.proxy.max_in_flight, 20);
    assert_eq!(
        c.proxy.listen,
        "127.0.0.1:1111".parse().unwrap(),
        "file value kept"
    );
    assert_eq!(
        c.shoptet.client_id, "12345",
        "numeric env value is still a string"
    );
    assert_eq!(c.proxy.refresh_margin, Duration::from_secs(90));
    assert!(c.public.webhook_allow.is_empty());
    assert_eq!(c.public.install_allow, vec!["10.0.0.0/8".parse().unwrap()]);
}

#[test]
fn missing_default_file_is_fine_but_missing_named_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("absent.toml");
    let err = Config::load_from(Some(&missing), &[]).expect_err("named file must exist");
    assert!(matches!(err, ConfigError::FileMissing { .. }));
    assert_mentions(&err.to_string(), &["absent.toml"]);
}

#[test]
fn secret_files_resolve_in_credentials_directory() {
    let creds = tempfile::tempdir().expect("tempdir");
    std::fs::write(creds.path().join("client-secret"), "s3cret-value\n").unwrap();
    std::fs::write(creds.path().join("admin-token"), "admin-tok\r\n").unwrap();
    std::fs::write(
        creds.path().join("keys"),
        "# addon keys\n\nkey-one\n  key-two  \n",
    )
    .unwrap();
    let dir = creds.path().to_str().unwrap();
    let c = load_ok(
        r#"
        [shoptet]
        client_secret_file = "client-secret"
        ca_file = "ca.pem"
        [admin]
        token_file = "admin-token"
        [proxy]
        client_keys_file = "keys"
        [store]
        previous_key_files = ["old.key"]
        "#,
        &[("CREDENTIALS_DIRECTORY", dir)],
    );
    assert_eq!(
        c.shoptet.client_secret.as_ref().map(Secret::expose),
        Some("s3cret-value")
    );
    assert_eq!(
        c.admin.token.as_ref().map(Secret::expose),
        Some("admin-tok")
    );
    assert_eq!(c.admin.token_file, Some(creds.path().join("admin-token")));
    assert_eq!(c.shoptet.ca_file, Some(creds.path().join("ca.pem")));
    let keys: Vec<&str> = c.proxy.client_keys.iter().map(Secret::expose).collect();
    assert_eq!(keys, ["key-one", "key-two"]);
    assert_eq!(c.store.key_file, Some(creds.path().join("store.key")));
    assert_eq!(
        c.store.previous_key_files,
        vec![creds.path().join("old.key")]
    );
    assert_eq!(
        c.store.url, "sqlite://shoptet-proxy.db",
        "store path is not a credential"
    );
}

#[test]
fn secret_files_without_credentials_directory_use_the_path_as_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "from-file\n").unwrap();
    let c = load_ok(
        &format!(
            "[shoptet]\nclient_secret_file = {:?}\n",
            secret.to_str().unwrap()
        ),
        &[],
    );
    assert_eq!(
        c.shoptet.client_secret.as_ref().map(Secret::expose),
        Some("from-file")
    );
    assert_eq!(
        c.store.key_file,
        Some(PathBuf::from("store.key")),
        "relative to cwd"
    );
}

#[test]
fn inline_secret_never_shows_in_debug_or_check_config() {
    let c = load_ok(
        "[shoptet]\nclient_secret = \"inline-secret-xyz\"\n[store]\nurl = \"postgres://app:db-pass-xyz@db/proxy\"\n",
        &[],
    );
    assert_eq!(
        c.shoptet.client_secret.as_ref().map(Secret::expose),
        Some("inline-secret-xyz")
    );
    let shown = format!("{c:?}\n{}", c.redacted_toml());
    assert!(!shown.contains("inline-secret-xyz"), "{shown}");
    assert!(shown.contains("client_secret = \"<redacted>\""), "{shown}");
    assert!(
        shown.contains("postgres://app:<redacted>@db/proxy"),
        "{shown}"
    );
    assert!(!c.redacted_toml().contains("db-pass-xyz"));
}

#[test]
fn unknown_key_in_every_section_is_named() {
    for section in [
        "shoptet", "proxy", "public", "addon", "admin", "store", "log",
    ] {
        let message = load_err(&format!("[{section}]\nbogus_key = 1\n"), &[]);
        assert_mentions(
            &message,
            &["unknown config key", &format!("`{section}.bogus_key`")],
        );
    }
    let message = load_err("bogus_top = 1\n", &[]);
    assert_mentions(&message, &["unknown config key", "`bogus_top`"]);
    let message = load_err("", &[("SHOPTET_PROXY_PROXY__LISTN", "x")]);
    assert_mentions(&message, &["`proxy.listn`", "SHOPTET_PROXY_PROXY__LISTN"]);
}

#[test]
fn bad_duration_names_key_and_value() {
    let message = load_err("[proxy]\nqueue_timeout = \"30x\"\n", &[]);
    assert_mentions(&message, &["proxy.queue_timeout", "\"30x\""]);
    let message = load_err("", &[("SHOPTET_PROXY_ADDON__RETRY_MAX", "soon")]);
    assert_mentions(
        &message,
        &[
            "addon.retry_max",
            "\"soon\"",
            "SHOPTET_PROXY_ADDON__RETRY_MAX",
        ],
    );
    let message = load_err("[proxy]\nupstream_timeout = \"0s\"\n", &[]);
    assert_mentions(&message, &["proxy.upstream_timeout", "\"0s\""]);
}

#[test]
fn bad_listen_address_names_key_and_value() {
    let message = load_err("[proxy]\nlisten = \"localhost:80\"\n", &[]);
    assert_mentions(&message, &["proxy.listen", "\"localhost:80\""]);
    let message = load_err("[public]\nlisten = \"0.0.0.0\"\n", &[]);
    assert_mentions(&message, &["public.listen", "\"0.0.0.0\""]);
    let message = load_err("[admin]\nlisten = \"1.2.3.4:99999\"\n", &[]);
    assert_mentions(&message, &["admin.listen", "\"1.2.3.4:99999\""]);
}

#[test]
fn bad_url_names_key_and_value() {
    for (toml, key, value) in [
        (
            "[shoptet]\napi_url = \"ftp://api.example\"",
            "shoptet.api_url",
            "\"ftp://api.example\"",
        ),
        (
            "[shoptet]\npartner_url = \"not a url\"",
            "shoptet.partner_url",
            "\"not a url\"",
        ),
        (
            "[addon]\nevents_url = \"mailto:x@y\"",
            "addon.events_url",
            "\"mailto:x@y\"",
        ),
        (
            "[addon]\nwebhooks_url = \"http://\"",
            "addon.webhooks_url",
            "\"http://\"",
        ),
    ] {
        assert_mentions(&load_err(toml, &[]), &[key, value]);
    }
}

#[test]
fn bad_cidr_names_key_and_value() {
    let message = load_err("[public]\nwebhook_allow = [\"10.0.0.0/33\"]\n", &[]);
    assert_mentions(&message, &["public.webhook_allow", "\"10.0.0.0/33\""]);
    let message = load_err("[public]\ntrusted_proxies = [\"proxy.local\"]\n", &[]);
    assert_mentions(&message, &["public.trusted_proxies", "\"proxy.local\""]);
}

#[test]
fn secret_and_secret_file_together_are_rejected_without_echoing_the_secret() {
    let message = load_err(
        "[shoptet]\nclient_secret = \"do-not-echo\"\nclient_secret_file = \"f\"\n",
        &[],
    );
    assert_mentions(&message, &["shoptet.client_secret", "client_secret_file"]);
    assert!(!message.contains("do-not-echo"), "{message}");
}

#[test]
fn missing_or_empty_secret_file_names_key_and_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().to_str().unwrap();
    let message = load_err(
        "[shoptet]\nclient_secret_file = \"nope\"\n",
        &[("CREDENTIALS_DIRECTORY", creds)],
    );
    assert_mentions(
        &message,
        &["shoptet.client_secret_file", "nope", "cannot read"],
    );
    let message = load_err("[admin]\ntoken_file = \"/nonexistent/admin-token\"\n", &[]);
    assert_mentions(&message, &["admin.token_file", "/nonexistent/admin-token"]);
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    let message = load_err(
        "[admin]\ntoken_file = \"empty\"\n",
        &[("CREDENTIALS_DIRECTORY", creds)],
    );
    assert_mentions(&message, &["admin.token_file", "is empty"]);
}

#[test]
fn client_keys_file_with_no_keys_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("keys"), "# nobody yet\n\n").unwrap();
    let message = load_err(
        "[proxy]\nclient_keys_file = \"keys\"\n",
        &[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())],
    );
    assert_mentions(&message, &["proxy.client_keys_file", "no keys"]);
}

#[test]
fn tls_cert_without_key_and_key_without_cert_are_rejected() {
    let message = load_err("[public]\ntls_cert_file = \"cert.pem\"\n", &[]);
    assert_mentions(&message, &["public.tls_key_file", "tls_cert_file"]);
    let message = load_err("[public]\ntls_key_file = \"key.pem\"\n", &[]);
    assert_mentions(&message, &["public.tls_cert_file", "tls_key_file"]);
}

#[test]
fn other_bad_values_name_key_and_value() {
    for (toml, key, value) in [
        (
            "[proxy]\neshop_header = \"Bad Header\"",
            "proxy.eshop_header",
            "\"Bad Header\"",
        ),
        ("[proxy]\nmax_in_flight = 0", "proxy.max_in_flight", "0"),
        (
            "[proxy]\nmax_in_flight_per_eshop = 0",
            "proxy.max_in_flight_per_eshop",
            "0",
        ),
        (
            "[proxy]\nmax_queue = \"many\"",
            "proxy.max_queue",
            "\"many\"",
        ),
        (
            "[proxy]\nbucket_pacing = \"yes\"",
            "proxy.bucket_pacing",
            "\"yes\"",
        ),
        ("[log]\nformat = \"xml\"", "log.format", "\"xml\""),
        ("[log]\nlevel = \"info,=[\"", "log.level", "\"info,=[\""),
        ("proxy = 3", "proxy", "3"),
        (
            "[public]\ninstall_allow = [{ a = 1 }]",
            "public.install_allow",
            "found map",
        ),
    ] {
        assert_mentions(&load_err(toml, &[]), &[key, value]);
    }
}

#[test]
fn bucket_reserve_is_read_and_bounded_below_the_capacity() {
    let c = load_ok("[proxy]\nbucket_reserve = 0\n", &[]);
    assert_eq!(c.proxy.bucket_reserve, 0);
    let c = load_ok("", &[("SHOPTET_PROXY_PROXY__BUCKET_RESERVE", "25")]);
    assert_eq!(c.proxy.bucket_reserve, 25);
    assert_mentions(
        &load_err("[proxy]\nbucket_reserve = 200\n", &[]),
        &["proxy.bucket_reserve", "200"],
    );
    assert_mentions(
        &load_err("[proxy]\nbucket_reserve = -1\n", &[]),
        &["proxy.bucket_reserve", "-1"],
    );
}

#[test]
fn store_url_must_name_a_known_backend_without_echoing_it() {
    let message = load_err("[store]\nurl = \"mysql://u:pw-xyz@h/db\"\n", &[]);
    assert_mentions(&message, &["store.url", "sqlite://"]);
    assert!(!message.contains("pw-xyz"), "{message}");
}

#[test]
fn toml_syntax_error_does_not_quote_the_line() {
    let message = load_err("[shoptet]\nclient_secret = \"unterminated-xyz\n", &[]);
    assert_mentions(&message, &["line 2"]);
    assert!(!message.contains("unterminated-xyz"), "{message}");
}

#[test]
fn url_password_redaction_keeps_everything_else() {
    assert_eq!(
        redact_url_password("postgres://app:pw@db:5432/proxy?sslmode=require"),
        "postgres://app:<redacted>@db:5432/proxy?sslmode=require"
    );
    assert_eq!(
        redact_url_password("postgres://app@db/proxy"),
        "postgres://app@db/proxy"
    );
    assert_eq!(
        redact_url_password("sqlite://data/p.db"),
        "sqlite://data/p.db"
    );
}

#[test]
fn settings_keys_default_off_and_the_redirect_uri_follows_redirect_uri() {
    let c = load_ok("", &[]);
    assert_eq!(c.shoptet.settings_redirect_uri, "");
    assert_eq!(c.addon.settings_url, None);
    assert_eq!(c.addon.settings_session_ttl, Duration::from_secs(3600));
    assert!(c.addon.settings_frame_ancestors.is_empty());
    let c = load_ok(
        "[shoptet]\nredirect_uri = \"https://addon.example.com/shoptet/install?x=1\"",
        &[],
    );
    assert_eq!(
        c.shoptet.settings_redirect_uri,
        "https://addon.example.com/settings/authorized"
    );
    let c = load_ok(
        "[shoptet]\nredirect_uri = \"https://a.example/install\"\nsettings_redirect_uri = \"https://b.example/settings/authorized\"",
        &[],
    );
    assert_eq!(
        c.shoptet.settings_redirect_uri,
        "https://b.example/settings/authorized"
    );
    let message = load_err(
        "[addon]\nsettings_frame_ancestors = [\"https://a.example; script-src *\"]",
        &[],
    );
    assert_mentions(&message, &["addon.settings_frame_ancestors"]);
}

#[test]
fn the_signing_key_is_read_from_its_file_and_proxy_tls_needs_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing-key");
    std::fs::write(&key, "addon-signing key\n").unwrap();
    let c = load_ok(
        &format!(
            "[addon]\nsigning_key_file = {:?}\n",
            key.display().to_string()
        ),
        &[],
    );
    assert_eq!(
        c.addon.signing_key.as_ref().map(Secret::expose),
        Some("addon-signing key"),
        "the file's content without its trailing newline, inner spaces kept"
    );
    assert!(!c.redacted_toml().contains("addon-signing key"));
    let message = load_err("[proxy]\ntls_cert_file = \"cert.pem\"\n", &[]);
    assert_mentions(&message, &["proxy.tls_key_file", "tls_cert_file"]);
}

#[test]
fn telemetry_keys_parse_and_reject_bad_values() {
    let c = load_ok(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/\"\nsample_ratio = 0.25\n",
        &[],
    );
    assert_eq!(c.telemetry.otlp_endpoint, "http://127.0.0.1:4318");
    assert_eq!(c.telemetry.sample_ratio, 0.25);
    assert_eq!(c.telemetry.service_name, "shoptet-proxy");
    let env = load_ok("", &[("SHOPTET_PROXY_TELEMETRY__SAMPLE_RATIO", "0")]);
    assert_eq!(env.telemetry.sample_ratio, 0.0);
    assert_eq!(env.telemetry.otlp_endpoint, "");
    let e = load_err("[telemetry]\nsample_ratio = 1.5\n", &[]);
    assert_mentions(&e, &["telemetry.sample_ratio", "between 0 and 1"]);
    let e = load_err("[telemetry]\notlp_endpoint = \"udp://x\"\n", &[]);
    assert_mentions(&e, &["telemetry.otlp_endpoint"]);
}
