//! `baton`: the command line. Parses flags, validates them into settings,
//! binds the listeners and hands over to the supervisor runtime; maps every
//! failure to a documented exit code.
#![deny(unsafe_code)]

mod cli;
mod ctl;
mod logging;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::parse();
    logging::init();
    match cli::execute(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{}", e.message);
            ExitCode::from(e.code)
        }
    }
}
