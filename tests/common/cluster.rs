//! Several replicas of the real binary on one PostgreSQL store, behind HAProxy running the
//! shipped `systemd/haproxy.cfg` (SPEC B10): what `tests/cluster_haproxy.rs` and
//! `benches/cluster.sh` start. Every replica listener is on an OS-assigned port; HAProxy's two
//! listeners get ports probed just before, passed through the config's environment variables.
//!
//! HAProxy missing makes the tests pass with a note on a developer machine and fail in CI, where
//! `tests/run.sh` installs it and sets `SHOPTET_PROXY_REQUIRE_HAPROXY=1`.

use super::binary::{free_port, tool, Served};
use super::deploy::Deployment;
use super::load::Target;
use super::pg::pg_url;
use shoptet_proxy::sim::SimConfig;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const REPLICAS: usize = 3;

/// HAProxy's name of replica `i` (0-based) in the shipped configuration.
pub fn server_name(i: usize) -> String {
    format!("replica{}", i + 1)
}

pub struct Cluster {
    pub h: Deployment,
    /// Replica `i` is `server_name(i)` in HAProxy; None once killed.
    pub replicas: Vec<Option<Served>>,
    lb: std::process::Child,
    /// Where addons connect: HAProxy's frontend.
    pub lb_url: String,
    stats_url: String,
    lb_log: PathBuf,
}

/// One replica's row of HAProxy's statistics.
#[derive(Debug, Clone)]
pub struct ServerStats {
    pub name: String,
    /// `UP`, `DOWN`, `UP 1/2`, ...
    pub status: String,
    /// Requests retried on it (`wretr`) and redispatched away from it (`wredis`).
    pub retries: u64,
    pub redispatches: u64,
    /// Sessions it served in all (`stot`).
    pub sessions: u64,
}

impl Cluster {
    /// PostgreSQL (a fresh schema), the simulator with `tweak` applied, three replicas and
    /// HAProxy, all serving; None (after a note) when PostgreSQL or HAProxy is not there and not
    /// required.
    pub async fn start(tweak: impl FnOnce(&mut SimConfig)) -> Option<Cluster> {
        let haproxy = tool("haproxy", "SHOPTET_PROXY_REQUIRE_HAPROXY")?;
        let url = pg_url().await?;
        let h = Deployment::with_store(Some(url)).await;
        h.sim.set_config(tweak);
        let replicas: Vec<Served> = (0..REPLICAS).map(|_| h.serve("info", &[])).collect();
        let lb_port = free_port();
        let stats_port = free_port();
        let lb_log = h.path("haproxy.log");
        let log = std::fs::File::create(&lb_log).expect("create haproxy.log");
        let mut cmd = std::process::Command::new(haproxy);
        cmd.arg("-db")
            .arg("-f")
            .arg(config_path())
            .env("SHOPTET_LB_LISTEN", format!("127.0.0.1:{lb_port}"))
            .env("SHOPTET_LB_STATS", format!("127.0.0.1:{stats_port}"))
            .env("SHOPTET_LB_LOG", "stdout")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        for (i, r) in replicas.iter().enumerate() {
            cmd.env(format!("SHOPTET_LB_REPLICA{}", i + 1), r.proxy.to_string())
                .env(
                    format!("SHOPTET_LB_ADMIN_PORT{}", i + 1),
                    r.admin.port().to_string(),
                );
        }
        let lb = cmd.spawn().expect("spawn haproxy");
        let cluster = Cluster {
            h,
            replicas: replicas.into_iter().map(Some).collect(),
            lb,
            lb_url: format!("http://127.0.0.1:{lb_port}"),
            stats_url: format!("http://127.0.0.1:{stats_port}/stats;csv"),
            lb_log,
        };
        cluster
            .wait_until("every replica UP in HAProxy", |s| {
                s.len() == REPLICAS && s.iter().all(|s| s.status == "UP")
            })
            .await;
        Some(cluster)
    }

    /// Creates `eshops` in the simulator and imports them into the shared store.
    pub async fn install(&self, eshops: &[u64]) {
        let store = self.h.store().await;
        for &id in eshops {
            let inst = self.h.sim.create_eshop(id);
            super::import(&store, id, &inst.oauth_token).await;
        }
    }

    /// `/api/eshop` of `eshop` through HAProxy, tagged by header and by path prefix in turn.
    pub fn targets(&self, eshop: u64) -> Vec<Target> {
        vec![
            Target {
                url: self.lb_url("/api/eshop"),
                headers: vec![("x-shoptet-eshop-id".to_owned(), eshop.to_string())],
            },
            Target {
                url: self.lb_url(&format!("/eshops/{eshop}/api/eshop")),
                headers: Vec::new(),
            },
        ]
    }

    pub fn lb_url(&self, path: &str) -> String {
        format!("{}{path}", self.lb_url)
    }

    /// HAProxy's view of the replicas.
    pub async fn servers(&self) -> Vec<ServerStats> {
        let csv = self
            .h
            .http
            .try_request(http::Method::GET, &self.stats_url, &[], "")
            .await;
        let Ok(csv) = csv else { return Vec::new() };
        let text = csv.text();
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (Some(px), Some(sv), Some(st), Some(re), Some(rd), Some(tot)) = (
            col("pxname"),
            col("svname"),
            col("status"),
            col("wretr"),
            col("wredis"),
            col("stot"),
        ) else {
            return Vec::new();
        };
        let num = |v: &str| v.parse().unwrap_or(0);
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st && f[px] == "shoptet_proxy_replicas")
            .filter(|f| f[sv].starts_with("replica"))
            .map(|f| ServerStats {
                name: f[sv].to_owned(),
                status: f[st].to_owned(),
                retries: num(f[re]),
                redispatches: num(f[rd]),
                sessions: num(f[tot]),
            })
            .collect()
    }

    /// Polls HAProxy's statistics until `pred` holds; panics with HAProxy's log after 20 s.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&[ServerStats]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let servers = self.servers().await;
            if pred(&servers) {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.lb_log).unwrap_or_default();
                panic!("HAProxy: no {what} within 20 s: {servers:?}\nhaproxy.log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The live replicas (by index) whose access log shows a request for `eshop`.
    pub fn served_by(&self, eshop: u64) -> Vec<usize> {
        (0..REPLICAS)
            .filter(|&i| !self.access(i, Some(eshop)).is_empty())
            .collect()
    }

    /// Replica `i`'s access lines (of `eshop`, or all); none once it was killed.
    pub fn access(&self, i: usize, eshop: Option<u64>) -> Vec<serde_json::Value> {
        let Some(r) = &self.replicas[i] else {
            return Vec::new();
        };
        r.stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "access")
            .filter(|v| eshop.is_none_or(|id| v["eshop_id"] == id))
            .collect()
    }

    /// [`Cluster::served_by`] once it names a replica: a replica logs a request just after its
    /// answer, so a client can be a moment ahead of the log. Panics after 5 s of nothing.
    pub async fn owners(&self, eshop: u64) -> Vec<usize> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let by = self.served_by(eshop);
            if !by.is_empty() {
                return by;
            }
            assert!(
                Instant::now() < deadline,
                "no replica logged e-shop {eshop}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of metric `name` (no labels) on every live replica, summed.
    pub async fn metric(&self, name: &str) -> f64 {
        let mut sum = 0.0;
        for r in self.replicas.iter().flatten() {
            let text = self
                .h
                .http
                .get(&format!("http://{}/metrics", r.admin), &[])
                .await
                .text();
            sum += text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /metrics"));
        }
        sum
    }

    /// Sends `signal` to replica `i` ("KILL": a crash, nothing drains; "TERM": it drains) and
    /// waits for it to exit; returns its exit status. Other tasks keep running meanwhile.
    pub fn stop(&mut self, i: usize, signal: &str) -> std::process::ExitStatus {
        let r = self.replicas[i].take().expect("replica is running");
        r.signal(signal);
        tokio::task::block_in_place(|| r.finish(Duration::from_secs(40)).0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.lb.kill();
        let _ = self.lb.wait();
    }
}

/// The shipped configuration, used as is.
pub fn config_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/haproxy.cfg")
}
