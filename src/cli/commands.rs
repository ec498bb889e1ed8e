//! What each subcommand does (SPEC B6), given a parsed command line. `main.rs` only parses and
//! exits with the status returned here: 0 success, 1 runtime failure, 2 invalid configuration.

use crate::app::{self, StartError};
use crate::cli::{self, Cli, Command, EshopsCommand, StoreCommand};
use crate::config::Config;
use crate::install::{self, SignatureKey};
use crate::secret::Secret;
use crate::store::{self, NewInstallation};
use crate::telemetry::logging;
use std::process::ExitCode;

fn config_or_exit(cli: &Cli) -> Result<Config, ExitCode> {
    Config::load(cli.config.as_deref()).map_err(|e| {
        logging::fatal(e);
        ExitCode::from(2)
    })
}

/// One worker thread per CPU the process may run on (affinity and cgroup quota included). On one
/// CPU the current-thread scheduler does the same work without the work-stealing machinery (and
/// its cross-thread wake-ups) that a single worker cannot use.
/// Blocking threads run SQLite calls (serialised on one connection anyway) and the rare DNS
/// lookup. Tokio's default of 512 let 64 concurrent cold e-shops grow the pool to 88 threads,
/// each with its own allocator heap: 230 MiB RSS at 100,000 e-shops instead of 81 (benches/load.sh).
const MAX_BLOCKING_THREADS: usize = 4;

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cpus);
        b
    };
    builder
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .map_err(|e| {
            logging::fatal(format_args!("cannot start the async runtime: {e}"));
            ExitCode::FAILURE
        })
}

fn start_failed(e: &StartError) -> ExitCode {
    logging::fatal(e);
    match e {
        StartError::Invalid { .. } | StartError::Tls(_) => ExitCode::from(2),
        _ => ExitCode::FAILURE,
    }
}

pub fn run(cli: Cli) -> ExitCode {
    let code = match execute(cli) {
        Ok(code) | Err(code) => code,
    };
    logging::flush();
    code
}

fn execute(cli: Cli) -> Result<ExitCode, ExitCode> {
    match &cli.command {
        Command::CheckConfig => Ok(match cli::check_config(cli.config.as_deref()) {
            Ok(toml) => {
                print!("{toml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                logging::fatal(e);
                ExitCode::from(2)
            }
        }),
        Command::GenKey => Ok(match cli::gen_key() {
            Ok(key) => {
                println!("{key}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("shoptet-proxy: cannot read the OS random generator: {e}");
                ExitCode::FAILURE
            }
        }),
        Command::Serve => {
            // A service's log reader expects every line in the configured format, so even an
            // invalid configuration is reported in the format it asks for.
            let cfg = Config::load(cli.config.as_deref()).map_err(|e| {
                logging::fatal_as(Config::requested_log_format(cli.config.as_deref()), e);
                ExitCode::from(2)
            })?;
            crate::telemetry::logging::init(&cfg.log);
            // Before the runtime starts its threads: taking them unsets LISTEN_* variables.
            let passed = crate::listeners::activation::Passed::from_env();
            let result = runtime()?.block_on(app::serve(cfg, cli.config.as_deref(), passed));
            Ok(result.map_or_else(|e| start_failed(&e), |()| ExitCode::SUCCESS))
        }
        Command::Demo => {
            let cfg = config_or_exit(&cli)?;
            crate::telemetry::logging::init(&cfg.log);
            Ok(match runtime()?.block_on(crate::cli::demo::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(crate::cli::demo::DemoError::Start(e)) => start_failed(&e),
                Err(e) => {
                    logging::fatal(e);
                    ExitCode::FAILURE
                }
            })
        }
        Command::Sim(args) => {
            crate::telemetry::logging::init(&crate::config::LogSection {
                format: crate::config::LogFormat::Text,
                level: "info".into(),
            });
            Ok(
                match runtime()?.block_on(crate::sim::run_cli(args.clone())) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        logging::fatal(e);
                        ExitCode::FAILURE
                    }
                },
            )
        }
        Command::Store(StoreCommand::Rekey) => {
            let cfg = config_or_exit(&cli)?;
            store_command(&cfg, |store| async move {
                let n = store.rekey().await?;
                println!("re-encrypted {n} values under the current key");
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Eshops(cmd) => {
            let cfg = config_or_exit(&cli)?;
            match cmd {
                EshopsCommand::List { json } => {
                    let json = *json;
                    store_command(&cfg, |store| async move {
                        let list = store.list().await?;
                        if json {
                            println!("{}", store::render_list_json(&list));
                        } else {
                            print!("{}", store::render_list_table(&list));
                        }
                        Ok(ExitCode::SUCCESS)
                    })
                }
                EshopsCommand::Import {
                    id,
                    oauth_token_file,
                    eshop_url,
                    contact_email,
                } => {
                    let token = match std::fs::read_to_string(oauth_token_file) {
                        Ok(t) if !t.trim().is_empty() => Secret::new(t.trim().to_owned()),
                        Ok(_) => {
                            eprintln!("shoptet-proxy: {} is empty", oauth_token_file.display());
                            return Err(ExitCode::from(2));
                        }
                        Err(e) => {
                            eprintln!(
                                "shoptet-proxy: cannot read {}: {e}",
                                oauth_token_file.display()
                            );
                            return Err(ExitCode::from(2));
                        }
                    };
                    let new = NewInstallation {
                        eshop_id: *id,
                        eshop_url: eshop_url.clone(),
                        contact_email: contact_email.clone(),
                        oauth_token: token,
                    };
                    let shoptet = &cfg;
                    store_command(&cfg, |store| async move {
                        // The same import as `PUT /admin/eshops/{id}`: a fresh webhook signature
                        // key, obtained with a token that then stays the e-shop's current one.
                        let core = match app::core(shoptet, store.clone()) {
                            Ok(core) => core,
                            Err(e) => return Ok(start_failed(&e)),
                        };
                        let key = install::import_installation(&store, &core.proxy, &new).await?;
                        println!("imported e-shop {} (active)", new.eshop_id);
                        match key {
                            SignatureKey::Renewed => println!("webhook signature key: renewed"),
                            SignatureKey::Failed(e) => println!(
                                "webhook signature key: not obtained ({}: {e}); webhooks for this \
                                 e-shop are rejected until it is imported or installed again",
                                e.code()
                            ),
                        }
                        Ok(ExitCode::SUCCESS)
                    })
                }
                EshopsCommand::Remove { id } => {
                    let id = *id;
                    store_command(&cfg, |store| async move {
                        if store.remove(id).await? {
                            println!("removed e-shop {id}");
                        } else {
                            println!("e-shop {id} is not in the store; nothing removed");
                        }
                        Ok(ExitCode::SUCCESS)
                    })
                }
            }
        }
    }
}

/// Opens the configured store, runs `f` on it, and maps the outcome to an exit status.
fn store_command<F, Fut>(cfg: &Config, f: F) -> Result<ExitCode, ExitCode>
where
    F: FnOnce(store::Store) -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, store::StoreError>>,
{
    let rt = runtime()?;
    rt.block_on(async {
        let store = app::open_store(cfg).await.map_err(|e| start_failed(&e))?;
        f(store).await.map_err(|e| {
            logging::fatal(e);
            ExitCode::FAILURE
        })
    })
}
