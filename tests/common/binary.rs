//! The real binary: `shoptet-proxy serve` as a child process ([`Served`]), the production-like
//! configuration it runs with (secret files, JSON logs; [`Setup`]), and the external checkers
//! the operations tests run on its files ([`tool`]).
//!
//! A checker that is not installed makes its test pass vacuously on a developer machine, but fail
//! in CI, where `tests/run.sh` installs it and sets the `SHOPTET_PROXY_REQUIRE_*` variable: a
//! check that silently stops running is worse than none.

use shoptet_proxy::sim::{SimConfig, SimHandle, SimInstallation, Simulator};
use shoptet_proxy::store::{Keyring, Store};
use std::path::{Path, PathBuf};

/// The path of `tool` on `$PATH`; `None` (with a note) when it is missing and not required.
/// Panics when it is missing and `require_env` is `1`.
pub fn tool(tool: &str, require_env: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var(require_env).as_deref() != Ok("1"),
            "{tool} is not installed but {require_env}=1 requires it"
        );
        eprintln!("note: {tool} is not installed; this check did not run (set {require_env}=1 to make that an error)");
    }
    found
}

/// A loopback port the OS just assigned to a probe socket, for a listener whose address must be
/// known before it starts (a restarted proxy, HAProxy's configuration).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe a free loopback port")
        .port()
}

/// Secrets a test proxy runs with, each distinctive so a leak is found by a plain search.
pub struct Secrets {
    pub client_secret: String,
    pub admin_token: String,
    pub client_key: String,
    /// Base64 of the 32-byte store key, as in the key file.
    pub store_key: String,
}

impl Secrets {
    pub fn generate() -> Secrets {
        use base64::Engine as _;
        use rand::Rng as _;
        let mut rng = rand::thread_rng();
        let mut word = |what: &str| format!("{what}-{:032x}", rng.gen::<u128>());
        let client_secret = word("client-secret");
        let admin_token = word("admin-token");
        let client_key = word("client-key");
        let store_key = base64::engine::general_purpose::STANDARD.encode(rng.gen::<[u8; 32]>());
        Secrets {
            client_secret,
            admin_token,
            client_key,
            store_key,
        }
    }

    /// Every secret value, for "appears nowhere" checks.
    pub fn all(&self) -> Vec<String> {
        vec![
            self.client_secret.clone(),
            self.admin_token.clone(),
            self.client_key.clone(),
            self.store_key.clone(),
        ]
    }
}

/// Writes the secret files and `config.toml` (JSON logs, every listener on port 0, absolute
/// paths) into `dir`; `receiver` is the addon's base URL. Returns the config path.
pub fn write_config(
    dir: &Path,
    sim_url: &str,
    receiver: &str,
    secrets: &Secrets,
    shutdown_timeout: &str,
) -> PathBuf {
    let file = |name: &str, value: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("{value}\n")).expect("write secret file");
        p.display().to_string()
    };
    let client_secret = file("client-secret", &secrets.client_secret);
    let admin_token = file("admin-token", &secrets.admin_token);
    let client_keys = file("client-keys", &secrets.client_key);
    let store_key = file("store.key", &secrets.store_key);
    let db = dir.join("store.db").display().to_string();
    let config = format!(
        r#"
[shoptet]
api_url = "{sim_url}"
partner_url = "{sim_url}"
client_id = "sim-client"
client_secret_file = "{client_secret}"
redirect_uri = "https://addon.example.com/install"
[proxy]
listen = "127.0.0.1:0"
shutdown_timeout = "{shutdown_timeout}"
client_keys_file = "{client_keys}"
[public]
listen = "127.0.0.1:0"
install_allow = []
webhook_allow = []
[addon]
events_url = "{receiver}/events"
webhooks_url = "{receiver}/webhooks"
[admin]
listen = "127.0.0.1:0"
token_file = "{admin_token}"
[store]
url = "sqlite://{db}"
key_file = "{store_key}"
[log]
format = "json"
level = "info"
"#
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, config).expect("write config.toml");
    path
}

/// The simulator configuration matching [`write_config`]'s credentials.
pub fn sim_config(secrets: &Secrets) -> SimConfig {
    SimConfig {
        client_secret: secrets.client_secret.clone(),
        ..Default::default()
    }
}

/// `shoptet-proxy` run in `dir` (so no stray `./config.toml` is picked up) with none of the test
/// process's `SHOPTET_PROXY_*` (cargo sets some for the build), `CREDENTIALS_DIRECTORY`,
/// `NOTIFY_SOCKET` or `RUST_LOG`: only what the test passes reaches it.
pub fn command(dir: &Path) -> std::process::Command {
    wrapped_command(dir, &[])
}

/// [`command`] run through `wrapper` (a program and its arguments, the binary's path appended),
/// e.g. `systemd-socket-activate -l ADDR`.
pub fn wrapped_command(dir: &Path, wrapper: &[&str]) -> std::process::Command {
    let binary = env!("CARGO_BIN_EXE_shoptet-proxy");
    let mut cmd = match wrapper {
        [] => std::process::Command::new(binary),
        [program, args @ ..] => {
            let mut cmd = std::process::Command::new(program);
            cmd.args(args).arg(binary);
            cmd
        }
    };
    cmd.current_dir(dir)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SHOPTET_PROXY_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// A simulator knowing [`Secrets`]' client secret and, in a temporary directory, the secret
/// files and `config.toml` of [`write_config`]: what `serve` (or an in-process proxy loading the
/// file) needs.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub secrets: Secrets,
    pub sim: SimHandle,
    /// The path of `config.toml`.
    pub config: PathBuf,
}

impl Setup {
    /// `addon` is the addon's base URL, `shutdown_timeout` the `[proxy]` value.
    pub async fn new(addon: &str, shutdown_timeout: &str) -> Setup {
        Setup::with_sim(addon, shutdown_timeout, |_| {}).await
    }

    /// Like [`Setup::new`], the simulator's configuration changed by `tweak`.
    pub async fn with_sim(
        addon: &str,
        shutdown_timeout: &str,
        tweak: impl FnOnce(&mut SimConfig),
    ) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let secrets = Secrets::generate();
        let mut sim_cfg = sim_config(&secrets);
        tweak(&mut sim_cfg);
        let sim = Simulator::start(sim_cfg, ([127, 0, 0, 1], 0).into())
            .await
            .expect("simulator");
        let config = write_config(
            dir.path(),
            &sim.base_url(),
            addon,
            &secrets,
            shutdown_timeout,
        );
        Setup {
            dir,
            secrets,
            sim,
            config,
        }
    }

    /// A handle of its own on the configured store.
    pub async fn store(&self) -> Store {
        Store::open(
            &format!("sqlite://{}", self.dir.path().join("store.db").display()),
            Keyring::load(&self.dir.path().join("store.key"), &[]).expect("key"),
        )
        .await
        .expect("store")
    }

    /// Creates `eshop_id` in the simulator and imports it into the store (before a proxy starts).
    pub async fn install(&self, eshop_id: u64) -> SimInstallation {
        let inst = self.sim.create_eshop(eshop_id);
        super::import(&self.store().await, eshop_id, &inst.oauth_token).await;
        inst
    }

    /// `Bearer <client key>`: the `Proxy-Authorization` the configured client key needs.
    pub fn client_auth(&self) -> String {
        format!("Bearer {}", self.secrets.client_key)
    }
}

/// `shoptet-proxy serve` as a child process, its output collected line by line.
pub struct Served {
    child: Option<std::process::Child>,
    pid: u32,
    pub proxy: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub public: std::net::SocketAddr,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// stdout lines not yet looked at by [`Served::wait_for`].
    lines: std::sync::mpsc::Receiver<String>,
}

fn collect(
    stream: impl std::io::Read + Send + 'static,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    first: Option<std::sync::mpsc::Sender<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &first {
                let _ = tx.send(line.clone());
            }
            lines.lock().expect("lines").push(line);
        }
    })
}

fn addr(v: &serde_json::Value, field: &str) -> std::net::SocketAddr {
    v[field]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in the listening line {v}"))
}

impl Served {
    /// Starts `serve` with `config` and `RUST_LOG=rust_log` and waits for its "listening" line,
    /// which names the ports the OS assigned.
    pub fn start(config: &Path, rust_log: &str) -> Served {
        Served::start_with(config, rust_log, &[])
    }

    /// Like [`Served::start`], with extra environment (e.g. `SHOPTET_PROXY_*` overrides).
    pub fn start_with(config: &Path, rust_log: &str, env: &[(&str, &str)]) -> Served {
        let mut cmd = command(config.parent().expect("config dir"));
        cmd.envs(env.iter().copied());
        // An empty `rust_log` leaves the level to the config file.
        if rust_log.is_empty() {
            cmd.env_remove("RUST_LOG");
        } else {
            cmd.env("RUST_LOG", rust_log);
        }
        Served::spawn(cmd, config, || {})
    }

    /// Starts `cmd` (the binary, perhaps through a wrapper; see [`wrapped_command`]) with
    /// `--config config serve`, calls `trigger` (e.g. a first connection a wrapper waits for),
    /// and waits for the "listening" line.
    pub fn spawn(mut cmd: std::process::Command, config: &Path, trigger: impl FnOnce()) -> Served {
        cmd.arg("--config")
            .arg(config)
            .arg("serve")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn shoptet-proxy serve");
        trigger();
        let stdout = std::sync::Arc::default();
        let stderr = std::sync::Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let readers = vec![
            collect(
                child.stdout.take().expect("stdout"),
                std::sync::Arc::clone(&stdout),
                Some(tx),
            ),
            collect(
                child.stderr.take().expect("stderr"),
                std::sync::Arc::clone(&stderr),
                None,
            ),
        ];
        let listening = loop {
            let line = rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| {
                    let _ = child.kill();
                    panic!(
                        "no listening line; stderr: {:?}",
                        stderr.lock().expect("lines")
                    )
                });
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "listening" {
                    break v;
                }
            }
        };
        Served {
            proxy: addr(&listening, "proxy_addr"),
            admin: addr(&listening, "admin_addr"),
            public: addr(&listening, "public_addr"),
            pid: child.id(),
            child: Some(child),
            stdout,
            stderr,
            readers,
            lines: rx,
        }
    }

    /// The next stdout JSON line for which `pred` holds (earlier lines are skipped); panics
    /// after 10 s without one.
    pub fn wait_for(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no log line {what} within 10 s"));
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if pred(&v) {
                    return v;
                }
            }
        }
    }

    /// Stops the process and panics with `msg` and everything it printed.
    pub fn fail(self, msg: &str) -> ! {
        self.signal("KILL");
        let (_, out, err) = self.finish(std::time::Duration::from_secs(10));
        panic!(
            "{msg}\nstdout:\n{}\nstderr:\n{}",
            out.join("\n"),
            err.join("\n")
        );
    }

    /// Every stdout line printed so far (the process keeps running).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("lines").clone()
    }

    /// The process id, e.g. to read `/proc/<pid>/status`.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident memory of the process in kB (`VmRSS` of `/proc/<pid>/status`); None when the
    /// process is gone or the platform has no procfs.
    pub fn rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Sends `signal` ("TERM", "INT", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid);
    }

    /// Waits for the process to exit (killing it and failing after `limit`) and for its output
    /// to be read; returns the exit status, stdout lines and stderr lines.
    pub fn finish(
        mut self,
        limit: std::time::Duration,
    ) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
        let mut child = self.child.take().expect("not finished yet");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(limit) {
            Ok(status) => status.expect("wait for shoptet-proxy"),
            Err(_) => {
                self.signal("KILL");
                panic!("shoptet-proxy did not exit within {limit:?}");
            }
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = std::mem::take(&mut *self.stdout.lock().expect("lines"));
        let err = std::mem::take(&mut *self.stderr.lock().expect("lines"));
        (status, out, err)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // A failed test must not leave a server behind.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
