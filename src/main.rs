//! The `jabbridge` command: run the gateway, check a config, migrate, administer users.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use jabbridge::{app, config::Config, logging, store::Store};

/// The version and the commit it was built from, e.g. `0.1.0 (commit 3f2a9c1d0b7e)`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("JB_BUILD_COMMIT"),
    ")"
);

/// Jabbridge: an XMPP gateway to SMS, IRC, webhooks and more.
#[derive(Parser)]
#[command(version = VERSION, about, long_about = None)]
struct Cli {
    /// The configuration file. Every key can be overridden by JABBRIDGE_SECTION__KEY
    /// environment variables (e.g. JABBRIDGE_XMPP__SERVER, JABBRIDGE_BRIDGE__0__SECRET).
    #[arg(
        long,
        short,
        env = "JABBRIDGE_CONFIG",
        default_value = "jabbridge.toml",
        global = true
    )]
    config: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGINT or SIGTERM.
    Run,
    /// Check the configuration file, each bridge's section included, and exit.
    CheckConfig,
    /// Check what a first start needs: the database, and each bridge's component port,
    /// domain and secret. One line per check, with the fix; fails if any check does.
    Doctor,
    /// Apply pending database migrations and exit (`run` also does this at start).
    Migrate,
    /// List or remove users registered with a bridge.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Show or set which XMPP user owns a foreign identity (phone number, nick…).
    #[command(subcommand)]
    Identities(IdentitiesCommand),
    /// Check an external bridge against protocol v1 (the conformance kit): plays the core
    /// against the command, prints one line per check and exits non-zero when a MUST check
    /// fails. Needs no configuration, no XMPP server and no database.
    BridgeTest {
        /// A file of check ids known to fail (one per line, `#` comments): they do not fail
        /// the run, but one that passes does, so that the file stays true.
        #[arg(long, value_name = "FILE")]
        expected_failures: Option<PathBuf>,
        /// Also write the results as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// The bridge's own settings, as a JSON object, handed to it in `initialize` (what
        /// `[bridge.settings]` holds in a config), e.g. the address of a test network.
        #[arg(long, value_name = "JSON")]
        settings: Option<String>,
        /// The bridge's command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Print the manual page (roff) and exit; needs no configuration.
    Man,
    /// Print shell completions and exit; needs no configuration.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// List the JIDs registered with a bridge.
    List {
        /// The bridge's domain.
        domain: String,
    },
    /// Remove a user's registration and identities from a bridge.
    Remove {
        /// The bridge's domain.
        domain: String,
        /// The user's bare JID.
        jid: String,
    },
}

#[derive(Subcommand)]
enum IdentitiesCommand {
    /// Print the owner of a foreign identity.
    Show {
        /// The bridge's domain.
        domain: String,
        /// The foreign identity, e.g. +15551234567.
        foreign_id: String,
    },
    /// Remove the owner of a foreign identity.
    Remove {
        /// The bridge's domain.
        domain: String,
        /// The foreign identity, e.g. +15551234567.
        foreign_id: String,
    },
    /// Make an XMPP user the owner of a foreign identity.
    Set {
        /// The bridge's domain.
        domain: String,
        /// The foreign identity, e.g. +15551234567.
        foreign_id: String,
        /// The owner's bare JID.
        jid: String,
    },
}

fn main() -> ExitCode {
    jabbridge::memory::limit_arenas();
    let cli = Cli::parse();
    match &cli.command {
        Command::Man => return print_manual(),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "jabbridge", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::BridgeTest {
            expected_failures,
            json,
            settings,
            command,
        } => {
            return bridge_test(
                expected_failures.as_deref(),
                json.as_deref(),
                settings.as_deref(),
                command,
            );
        }
        _ => {}
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    logging::init(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command, config, cli.config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `jabbridge bridge-test`: the conformance kit against `command`.
fn bridge_test(
    expected_failures: Option<&std::path::Path>,
    json: Option<&std::path::Path>,
    settings: Option<&str>,
    command: &[String],
) -> ExitCode {
    use jabbridge_bridge_external::kit;
    let settings = match settings.map(serde_json::from_str::<serde_json::Value>) {
        None => serde_json::Map::new(),
        Some(Ok(serde_json::Value::Object(settings))) => settings,
        Some(_) => {
            eprintln!("error: --settings must be a JSON object");
            return ExitCode::from(2);
        }
    };
    let expected = match expected_failures.map(std::fs::read_to_string).transpose() {
        Ok(text) => kit::read_expected(text.as_deref().unwrap_or("")),
        Err(error) => {
            eprintln!("error: cannot read the expected failures: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = runtime.block_on(kit::run_checks(command, &settings, &expected));
    let (table, failed) = kit::render(&outcomes, &expected);
    print!("{table}");
    if let Some(path) = json {
        let written = serde_json::to_string_pretty(&outcomes)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(path, text));
        if let Err(error) = written {
            eprintln!("error: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Writes the manual page, generated from the command's own definitions.
fn print_manual() -> ExitCode {
    let command = <Cli as clap::CommandFactory>::command();
    match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: cannot write the manual page: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, config: Config, config_path: PathBuf) -> anyhow::Result<()> {
    match command {
        // Answered in `main`, before any configuration is read.
        Command::Man | Command::Completions { .. } | Command::BridgeTest { .. } => {}
        Command::Run => app::run(config, Some(config_path), shutdown_signal()).await?,
        Command::CheckConfig => {
            app::check_bridges(&config)?;
            let kinds: Vec<String> = config
                .bridge
                .iter()
                .map(|bridge| format!("{} ({})", bridge.domain, bridge.kind))
                .collect();
            println!("config OK: {} bridge(s): {}", kinds.len(), kinds.join(", "));
        }
        Command::Doctor => {
            let bridges = app::built_bridges(&config)?;
            let checks = jabbridge::doctor::run(&config, &bridges).await;
            for check in &checks {
                println!("{check}");
            }
            let failed = checks.iter().filter(|check| check.outcome.is_err()).count();
            if failed > 0 {
                anyhow::bail!("{failed} of {} checks failed", checks.len());
            }
        }
        Command::Migrate => {
            open_store(&config).await?;
            println!("database migrated");
        }
        Command::Users(UsersCommand::List { domain }) => {
            for jid in open_store(&config).await?.registered_jids(&domain).await? {
                println!("{jid}");
            }
        }
        Command::Users(UsersCommand::Remove { domain, jid }) => {
            if !open_store(&config)
                .await?
                .delete_registration(&domain, &jid, true)
                .await?
            {
                anyhow::bail!("{jid} is not registered with {domain}");
            }
            println!("removed {jid} from {domain}");
        }
        Command::Identities(IdentitiesCommand::Show { domain, foreign_id }) => {
            let foreign_id = app::normalize_identity(&config, &domain, &foreign_id)?;
            match open_store(&config)
                .await?
                .identity_owner(&domain, &foreign_id)
                .await?
            {
                Some(jid) => println!("{jid}"),
                None => anyhow::bail!("nobody owns {foreign_id} on {domain}"),
            }
        }
        Command::Identities(IdentitiesCommand::Remove { domain, foreign_id }) => {
            let foreign_id = app::normalize_identity(&config, &domain, &foreign_id)?;
            if !open_store(&config)
                .await?
                .delete_identity(&domain, &foreign_id)
                .await?
            {
                anyhow::bail!("nobody owns {foreign_id} on {domain}");
            }
            println!("{foreign_id} on {domain} now belongs to nobody");
        }
        Command::Identities(IdentitiesCommand::Set {
            domain,
            foreign_id,
            jid,
        }) => {
            let foreign_id = app::normalize_identity(&config, &domain, &foreign_id)?;
            open_store(&config)
                .await?
                .put_identity(&domain, &foreign_id, &jid)
                .await?;
            println!("{foreign_id} on {domain} now belongs to {jid}");
        }
    }
    Ok(())
}

async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database.url, config.database.connections())
        .await
        .context("cannot open database.url")?;
    store.migrate().await?;
    Ok(store)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
