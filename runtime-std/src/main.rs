//! `portico-threaded`: Portico's core driven by a thread per connection.
//!
//! This binary decides nothing: the command line, the configuration and
//! every protocol decision live in `portico-core`, and what both runtimes do
//! with a ready socket in `portico-runtime`. Here is only the way of
//! waiting: threads, each blocked on its own sockets.

mod threads;
mod wait;

fn main() {
    std::process::exit(portico_runtime::Process::main(
        env!("CARGO_BIN_NAME"),
        threads::run,
    ));
}
