//! The `kooka` binary: parse the command line, set up logging, dispatch. Exit codes are
//! decided here and only here.

use kooka::cli::{Cli, Command};

fn main() {
    #[cfg(target_os = "linux")]
    kooka::openblas::use_fast_kernels();
    let cli = match kooka::cli::parse() {
        Ok(cli) => cli,
        Err(kooka::cli::ParseError::Clap(e)) => e.exit(),
        Err(e) => {
            eprintln!("kooka: error: {e}");
            std::process::exit(2)
        }
    };
    kooka::cli::init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Convert(args) => kooka::cli::run_convert(args),
        Command::DistCheck(args) => kooka::cli::run_dist(args),
        Command::Bench(args) => kooka::cli::run_bench(args),
        Command::Generate(args) => kooka::cli::run_generate(args),
        Command::Serve(args) => kooka::cli::run_serve(args),
        Command::Models(args) => kooka::cli::run_models(args),
        Command::Launch(args) => {
            let subcommands = <Cli as clap::CommandFactory>::command()
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            std::process::exit(kooka_launcher::main(args, subcommands))
        }
    };
    let code = match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("kooka: error: {err:#}");
            1
        }
    };
    exit_without_library_teardown(code)
}

/// Ends the process without the C libraries' exit handlers: OpenBLAS 0.3.21's
/// `blas_shutdown` can deadlock joining its worker threads at exit (seen: a finished
/// `kooka generate` hung in `gotoblas_quit`). Everything of ours is flushed and dropped by now.
fn exit_without_library_teardown(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    extern "C" {
        fn _exit(code: i32) -> !;
    }
    // SAFETY: `_exit` only ends the process.
    unsafe { _exit(code) }
}
