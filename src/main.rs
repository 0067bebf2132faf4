//! The `kooka` binary: parse the command line, set up logging, dispatch. Exit codes are
//! decided here and only here.

use clap::Parser;
use kooka::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    kooka::cli::init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Convert(args) => kooka::cli::run_convert(args),
        Command::DistCheck(args) => kooka::cli::run_dist(args),
        Command::Bench(args) => kooka::cli::run_bench(args),
        Command::Generate(args) => kooka::cli::run_generate(args),
        Command::Serve(args) => kooka::cli::run_serve(args),
        Command::Launch(args) => {
            let subcommands = <Cli as clap::CommandFactory>::command()
                .get_subcommands()
                .map(|c| c.get_name().to_string())
                .collect();
            std::process::exit(kooka_launcher::main(args, subcommands))
        }
    };
    if let Err(err) = result {
        eprintln!("kooka: error: {err:#}");
        std::process::exit(1);
    }
}
