//! `portico`: Portico's core driven by mio event loops.
//!
//! This binary decides nothing: the command line, the configuration and
//! every protocol decision live in `portico-core`, and what both runtimes do
//! with a ready socket in `portico-runtime`. Here is only the way of
//! waiting: edge-triggered event loops.

mod event_loop;

fn main() {
    std::process::exit(portico_runtime::Process::main(
        env!("CARGO_BIN_NAME"),
        event_loop::run,
    ));
}
