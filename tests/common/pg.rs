//! The throwaway PostgreSQL of `tests/pg.sh`, named by `SHOPTET_PROXY_TEST_PG_URL`. Unset, a
//! test that needs it prints "skipped" and passes, unless `SHOPTET_PROXY_REQUIRE_PG=1` (as
//! `tests/run.sh` sets) makes that a failure: a check that silently stops running is worse than
//! none.

use tokio_postgres::NoTls;

/// The server's URL, or None (after printing why) when the variable is unset.
pub fn base_url() -> Option<String> {
    match std::env::var("SHOPTET_PROXY_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("SHOPTET_PROXY_REQUIRE_PG").as_deref() != Ok("1"),
                "SHOPTET_PROXY_REQUIRE_PG=1 but SHOPTET_PROXY_TEST_PG_URL is unset \
                 (run tests/pg.sh start)"
            );
            println!("skipped: SHOPTET_PROXY_TEST_PG_URL unset");
            None
        }
    }
}

/// The server's URL with a fresh schema first on the search path, so tests run in parallel
/// without seeing each other's rows; None as for [`base_url`].
pub async fn pg_url() -> Option<String> {
    let base = base_url()?;
    let schema = format!("test_{:016x}", rand::random::<u64>());
    let (client, connection) = tokio_postgres::connect(&base, NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    let conn_task = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create schema");
    drop(client);
    conn_task
        .await
        .expect("connection task")
        .expect("connection closes cleanly");
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-csearch_path%3D{schema}"))
}

/// A PostgreSQL cluster of one test's own (tests/pg.sh with a private state file), so the test
/// can stop and start the server without disturbing tests on the shared one. Stopped and
/// deleted on drop.
pub struct PrivatePg {
    pub url: String,
    state: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivatePg {
    /// None (after printing why) when PostgreSQL tests are off, as for [`base_url`].
    pub fn start() -> Option<PrivatePg> {
        base_url()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("pg.state");
        let out = Self::run_with(&state, "start");
        let url = String::from_utf8(out)
            .expect("pg.sh prints UTF-8")
            .trim()
            .strip_prefix("export SHOPTET_PROXY_TEST_PG_URL=")
            .expect("pg.sh start prints the export line")
            .to_owned();
        Some(PrivatePg {
            url,
            state,
            _dir: dir,
        })
    }

    /// `pg_ctl stop -m fast`: sessions end, new connections are refused; data stays.
    pub fn pause(&self) {
        Self::run_with(&self.state, "pause");
    }

    /// Starts the server again on the same port with the same data; returns once it accepts.
    pub fn resume(&self) {
        Self::run_with(&self.state, "resume");
    }

    fn run_with(state: &std::path::Path, command: &str) -> Vec<u8> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg.sh");
        let out = std::process::Command::new(script)
            .arg(command)
            .env("SHOPTET_PROXY_PG_STATE", state)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run tests/pg.sh");
        assert!(out.status.success(), "tests/pg.sh {command} failed");
        out.stdout
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg.sh");
        let _ = std::process::Command::new(script)
            .arg("stop")
            .env("SHOPTET_PROXY_PG_STATE", &self.state)
            .status();
    }
}
