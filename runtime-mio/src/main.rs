//! `portico`: Portico's core driven by a mio event loop.
//!
//! This binary decides nothing: the command line, the configuration and
//! every protocol decision live in `portico-core`. Here are only the sockets.

mod event_loop;
mod output;
mod splice;
mod vectored;

fn main() {
    let mut process = output::Process {
        run: event_loop::run,
    };
    std::process::exit(portico_core::cli::main(std::env::args_os(), &mut process));
}
