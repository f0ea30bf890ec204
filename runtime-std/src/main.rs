//! `portico-threaded`: Portico's core driven by a thread per connection.
//!
//! This binary decides nothing: the command line, the configuration and
//! every protocol decision live in `portico-core`. Here are only the sockets
//! and the threads.

// The process plumbing is the same file as `portico`'s: one copy to read.
#[path = "../../runtime-mio/src/output.rs"]
mod output;
// splice(2) for pure relays: the same file as `portico`'s too.
#[path = "../../runtime-mio/src/splice.rs"]
mod splice;
mod threads;
#[path = "../../runtime-mio/src/vectored.rs"]
mod vectored;

fn main() {
    let mut process = output::Process { run: threads::run };
    std::process::exit(portico_core::cli::main(std::env::args_os(), &mut process));
}
