//! The `ringmq` binary: `serve` and the client subcommands, all in [`ringmq::cli`].

fn main() {
    std::process::exit(ringmq::cli::app::main_with_args(std::env::args_os()));
}
