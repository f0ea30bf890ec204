//! `portico`: Portico's core driven by a mio event loop.
//!
//! This binary decides nothing: the command line, the configuration and
//! every protocol decision live in `portico-core`. Here are only the sockets.

mod event_loop;
mod output;

use std::io::{self, Read, Write};
use std::path::Path;

use portico_core::cli::{self, Host, Plan};

struct MioHost;

impl Host for MioHost {
    fn read_file(&mut self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
    fn read_stdin(&mut self) -> io::Result<String> {
        let mut s = String::new();
        io::stdin().read_to_string(&mut s)?;
        Ok(s)
    }
    fn random(&mut self, buf: &mut [u8]) -> io::Result<()> {
        std::fs::File::open("/dev/urandom")?.read_exact(buf)
    }
    fn stdout(&mut self, text: &str) {
        let mut out = io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
    fn stderr(&mut self, text: &str) {
        let _ = io::stderr().write_all(text.as_bytes());
    }
    fn run(&mut self, plan: Plan) -> i32 {
        event_loop::run(plan)
    }
}

fn main() {
    let code = cli::main(std::env::args_os(), &mut MioHost);
    std::process::exit(code);
}
