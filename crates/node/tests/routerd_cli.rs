//! The `routerd` binary's command line: flags a subcommand would ignore are refused.

use std::process::Command;

fn routerd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_routerd"))
}

#[test]
fn a_node_flag_given_to_a_subcommand_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let wanted = dir.path().join("wanted");
    let out = routerd()
        .current_dir(dir.path())
        .args(["--data-dir", wanted.to_str().unwrap(), "init-dev", "--dir", "layout"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--data-dir") && stderr.contains("routerd init-dev"), "{stderr}");
    assert!(!dir.path().join("layout").exists() && !wanted.exists(), "nothing was written");
}

#[test]
fn node_settings_from_the_environment_do_not_stop_a_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = routerd()
        .current_dir(dir.path())
        .env("ROUTERD_DATA_DIR", dir.path().join("data"))
        .args(["init-dev", "--dir", "layout", "--nodes", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path().join("layout").join("routerd-1.toml").exists());
}
