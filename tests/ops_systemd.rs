//! The shipped systemd units and production config (`systemd/`): the service and its socket
//! units verify cleanly (together: the sockets name the service), each socket passes the name
//! its listener looks for, the service's sandbox scores an overall exposure of 1.5 or lower, and the config loads with exactly the
//! credentials the unit hands over.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const REQUIRE: &str = "SHOPTET_PROXY_REQUIRE_SYSTEMD";
const MAX_EXPOSURE: f64 = 1.5;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn unit_text() -> String {
    std::fs::read_to_string(repo("systemd/shoptet-proxy.service")).expect("read the unit")
}

/// `(id, source)` of every `LoadCredential=id:source` line.
fn credentials(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("LoadCredential="))
        .map(|v| {
            let (id, src) = v.split_once(':').expect("LoadCredential=ID:PATH");
            (id.to_owned(), src.to_owned())
        })
        .collect()
}

/// The programs every `Exec*=` line runs.
fn exec_binaries(unit: &str) -> Vec<String> {
    unit.lines()
        .filter(|l| l.starts_with("Exec"))
        .filter_map(|l| l.split_once('='))
        .filter_map(|(_, cmd)| cmd.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read unit dir").flatten() {
        let target = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(entry.path()).expect("stat");
        if meta.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if meta.file_type().is_symlink() {
            let link = std::fs::read_link(entry.path()).expect("readlink");
            std::os::unix::fs::symlink(link, target).expect("symlink");
        } else {
            std::fs::copy(entry.path(), target).expect("copy unit file");
        }
    }
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some(analyze) = common::binary::tool("systemd-analyze", REQUIRE) else {
        return;
    };
    // verify insists that every Exec*= line names an executable; an alternate root holding the
    // system's units, the unit and stand-ins at the installed paths checks the unit as shipped.
    let root = tempfile::tempdir().expect("tempdir");
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .expect("the system's unit directory");
    copy_dir(system_units, &root.path().join("usr/lib/systemd/system"));
    let unit = unit_text();
    let programs = exec_binaries(&unit);
    assert!(
        programs.len() >= 2,
        "ExecStart= and ExecReload=: {programs:?}"
    );
    for program in programs {
        let binary = root.path().join(program.trim_start_matches('/'));
        std::fs::create_dir_all(binary.parent().expect("binary dir")).expect("mkdir");
        std::fs::write(&binary, "#!/bin/sh\n").expect("stand-in binary");
        std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let units = root.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir");
    std::fs::write(units.join("shoptet-proxy.service"), &unit).expect("install unit");
    let sockets = socket_units();
    for (name, text) in &sockets {
        std::fs::write(units.join(name), text).expect("install socket unit");
    }

    let out = Command::new(analyze)
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("shoptet-proxy.service")
        .args(sockets.iter().map(|(name, _)| name))
        .output()
        .expect("run systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 even for unknown keys or bad values, which it only prints.
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {}\n{text}",
        out.status
    );
}

/// `(file name, text)` of every `systemd/*.socket`.
fn socket_units() -> Vec<(String, String)> {
    let mut units: Vec<(String, String)> = std::fs::read_dir(repo("systemd"))
        .expect("read systemd/")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".socket"))
        .map(|n| {
            let text = std::fs::read_to_string(repo("systemd").join(&n)).expect("read socket");
            (n, text)
        })
        .collect();
    units.sort();
    units
}

#[test]
fn socket_units_pass_each_listener_its_named_socket_for_the_service() {
    let units = socket_units();
    let value = |text: &str, key: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .map(str::to_owned)
            .collect()
    };
    let mut names: Vec<String> = Vec::new();
    for (file, text) in &units {
        assert_eq!(value(text, "Service="), ["shoptet-proxy.service"], "{file}");
        assert_eq!(value(text, "ListenStream=").len(), 1, "{file}: one socket");
        assert!(
            !value(text, "Accept=").contains(&"yes".to_owned()),
            "{file}"
        );
        names.extend(value(text, "FileDescriptorName="));
    }
    names.sort();
    assert_eq!(names, ["admin", "proxy", "public"]);
    let proxy = &units
        .iter()
        .find(|(n, _)| n == "shoptet-proxy.socket")
        .expect("systemd/shoptet-proxy.socket")
        .1;
    assert_eq!(value(proxy, "ListenStream="), ["127.0.0.1:8080"]);
}

#[test]
fn unit_sandbox_exposure_is_at_most_one_and_a_half() {
    let Some(analyze) = common::binary::tool("systemd-analyze", REQUIRE) else {
        return;
    };
    let out = Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(repo("systemd/shoptet-proxy.service"))
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{text}"));
    let exposure: f64 = line
        .rsplit(':')
        .next()
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from {line:?}"));
    println!("systemd-analyze security: {}", line.trim());
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} > {MAX_EXPOSURE}:\n{text}"
    );
}

#[test]
fn unit_runs_sandboxed_as_a_notify_service_with_dynamic_user() {
    let unit = unit_text();
    for line in [
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=shoptet-proxy",
        "ConfigurationDirectory=shoptet-proxy",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == line),
            "the unit lacks {line}"
        );
    }
    let ids: Vec<String> = credentials(&unit).into_iter().map(|(id, _)| id).collect();
    for id in ["client-secret", "store.key", "admin-token"] {
        assert!(ids.iter().any(|i| i == id), "no LoadCredential={id}:...");
    }
}

#[test]
fn production_config_loads_with_the_units_credentials() {
    let unit = unit_text();
    let creds = tempfile::tempdir().expect("tempdir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    for (id, _) in credentials(&unit) {
        let value = match id.as_str() {
            "tls.crt" => cert.cert.pem(),
            "tls.key" => cert.key_pair.serialize_pem(),
            "store.key" => "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n".to_owned(),
            other => format!("{other}-value\n"),
        };
        std::fs::write(creds.path().join(&id), value).expect("write credential");
    }
    let env = vec![(
        "CREDENTIALS_DIRECTORY".to_owned(),
        creds.path().display().to_string(),
    )];
    let cfg = shoptet_proxy::config::Config::load_from(Some(&repo("systemd/config.toml")), &env)
        .unwrap_or_else(|e| panic!("systemd/config.toml with the unit's credentials: {e}"));
    let in_creds = |p: Option<&Path>| p.is_some_and(|p| p.starts_with(creds.path()));
    assert!(in_creds(cfg.store.key_file.as_deref()), "store key");
    assert!(
        in_creds(cfg.public.tls_key_file.as_deref()),
        "TLS key from credentials"
    );
    assert!(cfg.shoptet.client_secret.is_some(), "client secret");
    assert!(cfg.admin.token.is_some(), "admin token");
    assert!(
        cfg.store
            .url
            .starts_with("sqlite:///var/lib/shoptet-proxy/"),
        "store in the StateDirectory"
    );
    assert_eq!(cfg.log.format, shoptet_proxy::config::LogFormat::Json);
}
