//! `cargo run -p local-dev [-- serve --port N]` runs the séance locally;
//! `cargo run -p local-dev -- migrate up|down|status` manages the database schema.

use std::io::Write;
use std::process::ExitCode;

use seance::config::{Config, Profile};
use seance::store::{Database, MigrationAction};

// The harness serves every route and socket in one process; under load glibc's malloc
// was a tenth of its CPU (perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage:
  local-dev [serve] [--port N]      run the séance harness (PORT, default 3000; 0 picks a free port)
  local-dev migrate up              apply every pending migration
  local-dev migrate down            revert the newest applied migration
  local-dev migrate status          list migrations and whether each is applied
Configuration comes from the environment and .env (see .env.example).";

enum Command {
    Serve { port: Option<u16> },
    MigrateUp,
    MigrateDown,
    MigrateStatus,
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["serve"] => Ok(Command::Serve { port: None }),
        ["--port", port] | ["serve", "--port", port] => port
            .parse()
            .map(|port| Command::Serve { port: Some(port) })
            .map_err(|_| format!("--port takes a number from 0 to 65535, not `{port}`")),
        ["migrate", "up"] => Ok(Command::MigrateUp),
        ["migrate", "down"] => Ok(Command::MigrateDown),
        ["migrate", "status"] => Ok(Command::MigrateStatus),
        ["-h" | "--help" | "help"] => Ok(Command::Help),
        _ => Err(format!("unknown arguments: {}", args.join(" "))),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("error: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Command::Help = command {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let mut config = match Config::from_env(Profile::Harness) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    seance::telemetry::init(&config.log_level, config.log_format);
    let result = match command {
        Command::Serve { port } => {
            if let Some(port) = port {
                config.port = port;
            }
            serve(config).await
        }
        Command::MigrateUp | Command::MigrateDown | Command::MigrateStatus => {
            migrate(&config, &command).await
        }
        Command::Help => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    };
    let options = local_dev::Options {
        push: local_dev::PushPath::from_env()?,
        ..local_dev::Options::default()
    };
    let harness = local_dev::spawn_with(config, options, ctrl_c).await?;
    // One line with the bound address, for people and for scripts that started on port 0.
    println!("listening on {}", harness.base_url());
    println!("websocket_url {}", harness.app.websocket_url);
    println!(
        "open {}/ in two browser windows for a séance",
        harness.base_url()
    );
    std::io::stdout().flush()?;
    harness.wait().await?;
    Ok(())
}

async fn migrate(config: &Config, command: &Command) -> Result<(), Box<dyn std::error::Error>> {
    let action = match command {
        Command::MigrateUp => MigrationAction::Up,
        Command::MigrateDown => MigrationAction::Down,
        _ => MigrationAction::Status,
    };
    let database = Database::connect_lazy(config)?;
    let report = database.migrate(action).await;
    database.close().await;
    let report = report?;
    match action {
        MigrationAction::Up if report.applied.is_empty() => {
            println!("up to date: no pending migrations")
        }
        MigrationAction::Down if report.reverted.is_empty() => {
            println!("nothing to revert: no migration is applied")
        }
        _ => {}
    }
    print!("{report}");
    Ok(())
}
