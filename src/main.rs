//! The `bccguard` binary: parse the command line, load the configuration, call the library.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use bccguard::cli::{self, Cli, Command, ConfigArg, EXIT_ERROR};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(arg) => serve(&arg),
        Command::CheckConfig(arg) => cli::check_config(&arg, &mut std::io::stdout(), &mut std::io::stderr()),
        Command::Check(args) => cli::check::run(&args, &mut std::io::stdout(), &mut std::io::stderr()),
        Command::Queue(command) => cli::queue::run(&command, &mut std::io::stdout(), &mut std::io::stderr()),
        Command::HashPassword => cli::hash_password(
            &mut std::io::stdin().lock(),
            &mut std::io::stdout(),
            &mut std::io::stderr(),
        ),
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bccguard: cannot start the runtime: {e}");
            return 1;
        }
    };
    let result = runtime.block_on(async {
        let listeners = bccguard::bind(&config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        bccguard::run(config, listeners, shutdown).await
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "bccguard stopped");
            eprintln!("bccguard: {e}");
            1
        }
    }
}

/// Cancel on the first SIGTERM or SIGINT; a second one exits at once.
async fn on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    for round in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if round == 0 {
            shutdown.cancel();
        }
    }
    eprintln!("bccguard: second signal, exiting now");
    std::process::exit(1);
}
