//! `iniesta completions SHELL` and `iniesta man`: generated from the clap definitions, and
//! they work: bash, after sourcing the script, completes a command name.

use std::process::Command;

use crate::common;

fn iniesta(args: &[&str]) -> std::process::Output {
    Command::new(common::bin())
        .args(args)
        .output()
        .expect("iniesta runs")
}

#[test]
fn bash_completes_commands_after_sourcing_the_script() {
    let script = iniesta(&["completions", "bash"]);
    assert!(script.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("iniesta.bash");
    std::fs::write(&path, &script.stdout).expect("write");
    // What bash does on `iniesta pub<TAB>`: call the function with the words so far.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; complete -p iniesta; COMP_WORDS=(iniesta pub); COMP_CWORD=1; _iniesta iniesta pub iniesta; echo \"${{COMPREPLY[@]}}\"",
            path.display()
        ))
        .output()
        .expect("bash runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("-F _iniesta iniesta"), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert_eq!(last.trim(), "publish", "`pub` completes to publish: {text}");
}

#[test]
fn zsh_and_fish_scripts_and_a_bad_shell() {
    let zsh = iniesta(&["completions", "zsh"]);
    assert!(String::from_utf8_lossy(&zsh.stdout).starts_with("#compdef iniesta"));
    let fish = iniesta(&["completions", "fish"]);
    assert!(String::from_utf8_lossy(&fish.stdout).contains("complete -c iniesta"));
    let bad = iniesta(&["completions", "nosh"]);
    assert_eq!(bad.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("possible values"));
}

#[test]
fn the_man_page_has_a_page_per_command_and_hides_the_internal_one() {
    let man = iniesta(&["man"]);
    assert!(man.status.success());
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(
        text.contains(".TH iniesta 1"),
        "{}",
        &text[..200.min(text.len())]
    );
    for command in ["run", "publish", "dlq", "completions"] {
        assert!(
            text.contains(&format!(".TH iniesta-{command} 1")),
            "a page for {command}"
        );
    }
    assert!(
        !text.contains("plugin-worker"),
        "the internal command stays hidden"
    );
}
