//! Shell completions and man pages are generated from the command lines
//! themselves, so they name every subcommand and flag there is.

#![allow(clippy::unwrap_used)]

mod support;

use support::*;

fn run(bin: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin)
        .args(args)
        // Neither needs a data directory or a server.
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{bin:?} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn both_binaries_print_completions_and_a_man_page() {
    for (bin, name, sub, flag) in [
        (server_bin(), "rtunnel-server", "backup", "--metrics-listen"),
        (agent_bin(), "rtunnel-agent", "forward", "--state-dir"),
    ] {
        let bash = run(&bin, &["completions", "bash"]);
        assert!(
            bash.contains(&format!("_{}", name.replace('-', "__"))),
            "{name}: {bash}"
        );
        assert!(
            bash.contains(sub),
            "{name}: no {sub} in the bash completions"
        );
        assert!(
            bash.contains(flag),
            "{name}: no {flag} in the bash completions"
        );
        let zsh = run(&bin, &["completions", "zsh"]);
        assert!(
            zsh.starts_with(&format!("#compdef {name}")),
            "{name}: {zsh}"
        );
        let man = run(&bin, &["man"]);
        assert!(man.contains(".TH"), "{name}: {man}");
        assert!(man.contains(sub), "{name}: no {sub} in the man page");
    }
}
