//! `baton`: the command line. Parses flags, validates them into settings,
//! binds the listeners and hands over to the supervisor runtime; maps every
//! failure to a documented exit code.
#![deny(unsafe_code)]

mod cli;
mod ctl;
mod ctl_dispatch;
mod logging;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::parse();
    let streams = logging::init();
    let sinks = baton_supervisor::output::Sinks {
        stdout: Box::new(streams.stdout.clone()),
        stderr: Box::new(streams.stderr.clone()),
    };
    let code = match cli::execute(args, sinks) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{}", e.message);
            e.code
        }
    };
    // Flush what is queued (bounded: a stream nobody reads is given up on).
    drop(streams);
    ExitCode::from(code)
}
