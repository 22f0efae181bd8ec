//! Shell completions and man pages of the binaries, generated from their
//! command lines (`completions SHELL`, `man`), so they name every
//! subcommand and flag there is.

use std::process::ExitCode;

/// What to print.
#[derive(Debug, Clone, Copy)]
pub enum Doc {
    /// A completion script for this shell.
    Completions(clap_complete::Shell),
    /// The man page (roff).
    Man,
}

/// Prints `doc` of `command` on standard output; the exit code to end with.
pub fn print(mut command: clap::Command, doc: Doc) -> ExitCode {
    let name = command.get_name().to_owned();
    match doc {
        Doc::Completions(shell) => {
            clap_complete::generate(shell, &mut command, name, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Doc::Man => match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: cannot write the man page: {e}");
                ExitCode::from(1)
            }
        },
    }
}
