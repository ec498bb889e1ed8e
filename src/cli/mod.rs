//! The command line (SPEC B6): parsing only, plus the two commands that need nothing but the
//! configuration (`check-config`, `gen-key`). Everything else is dispatched by `main.rs` to the
//! module that owns it, so this file stays a readable map of the user interface.

pub mod commands;
pub mod demo;
pub mod demo_settings;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::{Parser, Subcommand};
use rand::RngCore as _;

use crate::config::{Config, ConfigError};

/// shoptet-proxy: a token-managing authenticating reverse proxy for the Shoptet API.
#[derive(Debug, Parser)]
#[command(
    name = "shoptet-proxy",
    version = crate::VERSION,
    about = "Token-managing authenticating reverse proxy for the Shoptet API",
    long_about = "Token-managing authenticating reverse proxy for the Shoptet API.\n\n\
        Addons send plain API calls tagged with an e-shop id; shoptet-proxy adds a valid \
        short-lived access token (minting, caching and refreshing it), respects Shoptet's \
        concurrency and rate limits, handles installation and webhooks, and keeps every secret \
        encrypted in its store.\n\n\
        Configuration: built-in defaults < the TOML file (--config, default ./config.toml) < \
        environment variables SHOPTET_PROXY_<SECTION>__<KEY>.\n\n\
        Exit status: 0 on success, 1 on a runtime failure, 2 on an invalid command line or \
        configuration."
)]
pub struct Cli {
    /// Configuration file [default: ./config.toml]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        long_help = "Configuration file (TOML). Without this option ./config.toml is read if it \
            exists, and the built-in defaults are used if it does not; a file named here must \
            exist. Environment variables SHOPTET_PROXY_<SECTION>__<KEY> override the file. \
            Accepted before or after the subcommand."
    )]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (proxy, public and admin listeners)
    #[command(
        long_about = "Run the proxy: the proxy listener for addons' API calls, the \
        public listener for Shoptet's installation and webhook calls (when [public] listen is \
        set), and the admin listener for metrics, health and /admin endpoints.\n\n\
        Refuses to start without a store key ([store] key_file). Signals readiness to systemd \
        (Type=notify) once all listeners are bound. On SIGTERM it stops accepting, lets \
        in-flight requests finish within [proxy] shutdown_timeout, and exits 0."
    )]
    Serve,

    /// Run the simulator and the proxy together, with one installed e-shop
    #[command(
        long_about = "Start the Shoptet simulator and the proxy against it, with a \
        throwaway store, a generated store key and one installed e-shop, then print copy-paste \
        curl lines to try it. Nothing is written outside a temporary directory and no real \
        Shoptet host is contacted. Stop with Ctrl-C."
    )]
    Demo,

    /// Run the Shoptet simulator alone
    #[command(
        long_about = "Run the Shoptet simulator alone on loopback, for addon developers \
        to test against: OAuth code exchange, access tokens, the API with Shoptet's limits and \
        errors, and signed webhooks. Its knobs (token lifetime, limits, latency, faults) are \
        options of this command."
    )]
    Sim(crate::sim::SimArgs),

    /// Print the effective configuration with secrets redacted
    #[command(
        long_about = "Load the configuration exactly as `serve` would (defaults, file, \
        environment; secret files are read) and print the effective result as TOML, every \
        secret value replaced by \"<redacted>\". Exits 2, naming the offending key and value, \
        if the configuration is invalid."
    )]
    CheckConfig,

    /// Print a new random store key (base64 of 32 bytes)
    #[command(
        long_about = "Print a new store encryption key: 32 bytes from the operating \
        system's random generator, base64-encoded (standard alphabet, padded), on one line. \
        Save it to the file named by [store] key_file, readable only by the service, e.g. \
        `shoptet-proxy gen-key > store.key && chmod 600 store.key`. The configuration is not \
        read."
    )]
    GenKey,

    /// Store maintenance
    #[command(
        subcommand,
        long_about = "Maintenance of the store named by [store] url."
    )]
    Store(StoreCommand),

    /// Manage installed e-shops
    #[command(
        subcommand,
        long_about = "List, import and remove e-shop installations in the store named by \
            [store] url. Works directly on the store; a running proxy picks changes up."
    )]
    Eshops(EshopsCommand),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Re-encrypt every secret in the store with the current key
    #[command(
        long_about = "Re-encrypt every secret in the store with the current key \
        ([store] key_file), reading values encrypted with any of [store] previous_key_files. \
        Key rotation: generate a new key with gen-key, move the old key file to \
        previous_key_files, point key_file at the new one, run `store rekey`, then the old \
        key can be dropped. Safe to run again; stops at the first value no key can decrypt."
    )]
    Rekey,
}

#[derive(Debug, Subcommand)]
pub enum EshopsCommand {
    /// List installed e-shops
    #[command(
        long_about = "List the e-shop installations in the store: id, URL, contact \
        e-mail, status (active, suspended, uninstalled), installation time and access token \
        expiry. No secrets are printed."
    )]
    List {
        /// Print JSON ({"eshops":[...]}, as GET /admin/eshops) instead of a table
        #[arg(
            long,
            long_help = "Print the same JSON object as the admin endpoint GET /admin/eshops: \
                {\"eshops\":[{\"eshopId\":...,\"eshopUrl\":...,\"contactEmail\":...,\
                \"status\":...,\"installedAt\":...,\"tokenExpiresAt\":...}]}."
        )]
        json: bool,
    },

    /// Import an existing installation (migration from an addon's own token storage)
    #[command(
        long_about = "Import an installation that an addon obtained before using the \
        proxy: the e-shop id and its OAuth token (what Shoptet's code exchange returned). The \
        installation becomes active, replacing the OAuth token of an existing one, and a fresh \
        webhook signature key is obtained as at installation. No \"installed\" event is sent."
    )]
    Import {
        /// The e-shop id (a positive number)
        #[arg(value_name = "ID", value_parser = eshop_id())]
        id: u64,
        /// File holding the e-shop's OAuth access token
        #[arg(
            long,
            value_name = "FILE",
            long_help = "File holding the e-shop's OAuth access token (the `access_token` of \
                the code exchange), alone on its first line; a trailing newline is ignored. A \
                file, not an argument, so the token stays out of shell history and process \
                listings."
        )]
        oauth_token_file: PathBuf,
        /// The e-shop's URL, shown in listings and events
        #[arg(long, value_name = "URL")]
        eshop_url: Option<String>,
        /// The e-shop's contact e-mail, shown in listings and events
        #[arg(long, value_name = "EMAIL")]
        contact_email: Option<String>,
    },

    /// Remove an installation from the store
    #[command(
        long_about = "Remove the e-shop's installation, its tokens and its webhook \
        signature key from the store. Requests for it then get proxy-eshop-not-installed. \
        Shoptet is not told; uninstall the addon in the e-shop's administration for that."
    )]
    Remove {
        /// The e-shop id (a positive number)
        #[arg(value_name = "ID", value_parser = eshop_id())]
        id: u64,
    },
}

/// E-shop ids are positive, as in the proxy's tags (`/eshops/0/...` is refused there too).
fn eshop_id() -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(1..)
}

/// Parses the process arguments; on a usage error clap prints it and exits with status 2.
pub fn parse() -> Cli {
    Cli::parse()
}

/// `check-config`: the effective configuration as TOML, secrets redacted.
pub fn check_config(config: Option<&Path>) -> Result<String, ConfigError> {
    Config::load(config).map(|c| c.redacted_toml())
}

/// `gen-key`: base64 (standard, padded) of 32 bytes from the OS random generator.
pub fn gen_key() -> Result<String, rand::Error> {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut key)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_is_accepted_before_and_after_the_subcommand() {
        for args in [
            ["shoptet-proxy", "--config", "a.toml", "check-config"],
            ["shoptet-proxy", "check-config", "--config", "a.toml"],
        ] {
            let cli = Cli::try_parse_from(args).expect("valid command line");
            assert_eq!(cli.config.as_deref(), Some(Path::new("a.toml")));
            assert!(matches!(cli.command, Command::CheckConfig));
        }
    }

    #[test]
    fn eshops_import_takes_id_and_token_file() {
        let cli = Cli::try_parse_from([
            "shoptet-proxy",
            "eshops",
            "import",
            "222651",
            "--oauth-token-file",
            "tok",
            "--eshop-url",
            "https://shop.example",
        ])
        .expect("valid command line");
        match cli.command {
            Command::Eshops(EshopsCommand::Import {
                id,
                oauth_token_file,
                eshop_url,
                contact_email,
            }) => {
                assert_eq!(id, 222651);
                assert_eq!(oauth_token_file, PathBuf::from("tok"));
                assert_eq!(eshop_url.as_deref(), Some("https://shop.example"));
                assert_eq!(contact_email, None);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn eshops_import_without_token_file_is_a_usage_error() {
        let err = Cli::try_parse_from(["shoptet-proxy", "eshops", "import", "1"])
            .expect_err("missing --oauth-token-file");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn non_numeric_or_zero_eshop_id_is_a_usage_error() {
        for id in ["abc", "0", "-1"] {
            let err = Cli::try_parse_from(["shoptet-proxy", "eshops", "remove", id])
                .expect_err("not an e-shop id");
            assert_eq!(err.exit_code(), 2, "{id}");
        }
    }

    #[test]
    fn store_rekey_and_eshops_list_json_parse() {
        let cli = Cli::try_parse_from(["shoptet-proxy", "store", "rekey"]).expect("rekey");
        assert!(matches!(cli.command, Command::Store(StoreCommand::Rekey)));
        let cli = Cli::try_parse_from(["shoptet-proxy", "eshops", "list", "--json"]).expect("list");
        assert!(matches!(
            cli.command,
            Command::Eshops(EshopsCommand::List { json: true })
        ));
    }

    #[test]
    fn gen_key_is_32_random_bytes_in_base64() {
        let a = gen_key().expect("OS random generator");
        let b = gen_key().expect("OS random generator");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .expect("base64");
        assert_eq!(decoded.len(), 32);
        assert_ne!(a, b);
    }
}
