//! The `bccguard` binary: parse the command line, load the configuration, call the library.

use std::process::ExitCode;

use clap::Parser;

use bccguard::cli::{self, Cli, Command, ConfigArg, EXIT_ERROR};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(arg) => serve(&arg),
        Command::CheckConfig(arg) => cli::check_config(&arg, &mut std::io::stdout(), &mut std::io::stderr()),
        Command::Health(arg) => cli::health(&arg, &mut std::io::stdout(), &mut std::io::stderr()),
        Command::Check(args) => cli::check::run(&args, &mut std::io::stdout(), &mut std::io::stderr()),
        Command::Queue(command) => cli::queue::run(&command, &mut std::io::stdout(), &mut std::io::stderr()),
        Command::Breaker(command) => cli::breaker::run(&command, &mut std::io::stdout(), &mut std::io::stderr()),
        Command::HashPassword => {
            cli::hash_password(&mut std::io::stdin().lock(), &mut std::io::stdout(), &mut std::io::stderr())
        }
        Command::Completions { shell } => cli::docs::completions(shell, &mut std::io::stdout()),
        Command::ManPages { dir } => cli::docs::man_pages(&dir, &mut std::io::stdout(), &mut std::io::stderr()),
    };
    ExitCode::from(code)
}

fn serve(arg: &ConfigArg) -> u8 {
    let config = match arg.load() {
        Ok(config) => config,
        Err(errors) => {
            eprint!("{errors}");
            return EXIT_ERROR;
        }
    };
    bccguard::logging::init(&config.log);
    // Sessions, spilled messages and spool files each take a descriptor.
    let wanted = config.server.max_connections as u64 + 1024;
    match bccguard::limits::raise_open_files() {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            max_connections = config.server.max_connections,
            "the open files limit is low for server.max_connections: raise the hard limit (ulimit -Hn, LimitNOFILE=, --ulimit nofile=)"
        ),
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bccguard: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(serve_until_signalled(arg, config)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "bccguard stopped");
            eprintln!("bccguard: {e}");
            1
        }
    }
}

/// Serve until SIGTERM or SIGINT (a second one exits at once); SIGHUP reloads `[policy]` and
/// `[access]` from the same file, keeping the running configuration if the file has errors.
async fn serve_until_signalled(arg: &ConfigArg, config: bccguard::config::Config) -> Result<(), bccguard::RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let listeners = bccguard::bind(&config).await?;
    let mut running = bccguard::start(config, listeners).await?;
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        running.stop().await;
        return Ok(());
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match arg.load() {
                Ok(new) => running.reload(new),
                Err(errors) => {
                    for e in &errors.errors {
                        tracing::error!(error = %e, "configuration not reloaded: {}", errors.origin);
                    }
                    tracing::warn!("the running configuration stays in effect");
                }
            },
        }
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("bccguard: second signal, exiting now");
        std::process::exit(1);
    });
    running.stop().await;
    Ok(())
}
