//! `portolan completions SHELL`: prints a completion script for the shell.

use std::io::Write;

use anyhow::Result;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// `portolan completions`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  portolan completions bash > ~/.local/share/bash-completion/completions/portolan
  portolan completions zsh > \"${fpath[1]}/_portolan\"
  portolan completions fish > ~/.config/fish/completions/portolan.fish")]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the completion script of `C` (the `portolan` command line) for the shell.
pub fn run<C: CommandFactory>(args: CompletionsArgs, out: &mut dyn Write) -> Result<()> {
    let mut command = C::command();
    let mut buffer = Vec::new();
    clap_complete::generate(args.shell, &mut command, "portolan", &mut buffer);
    out.write_all(&buffer)?;
    Ok(())
}
