//! Writes many installations straight into a SQLite store, for `benches/load.sh`'s start-up,
//! memory and scale runs: importing 100,000 e-shops through the admin API would take minutes.
//!
//! Usage (after `cargo build --release --bench fleet`, or via `cargo bench --bench fleet --`):
//! `fleet <store.db> <key file> <first e-shop id> <count> <OAuth token prefix>`; e-shop `N` gets
//! the OAuth token `<prefix>N`, which is what the simulator's `POST /sim/eshops/bulk` gives it.

use shoptet_proxy::secret::Secret;
use shoptet_proxy::store::{Keyring, NewInstallation, Store};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; it is not one of ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [db, key, from, count, prefix] = args.as_slice() else {
        eprintln!("usage: fleet <store.db> <key file> <first e-shop id> <count> <oauth prefix>");
        return ExitCode::from(2);
    };
    let (Ok(from), Ok(count)) = (from.parse::<u64>(), count.parse::<u64>()) else {
        eprintln!("fleet: the first id and the count must be numbers");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let keys = Keyring::load(&PathBuf::from(key), &[])?;
        let store = Store::open(&format!("sqlite://{db}"), keys).await?;
        for eshop_id in from..from.saturating_add(count) {
            let new = NewInstallation {
                eshop_id,
                eshop_url: None,
                contact_email: None,
                oauth_token: Secret::new(format!("{prefix}{eshop_id}")),
            };
            store.upsert_installation(&new, None).await?;
        }
        Ok::<_, shoptet_proxy::store::StoreError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet: {e}");
            ExitCode::FAILURE
        }
    }
}
