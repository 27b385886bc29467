//! The server binary allocates with jemalloc, with the settings `.cargo/config.toml` builds
//! into it (README, "Scale": with glibc's malloc a full registry served reads at about
//! 0.6x of its empty rate, and jemalloc's defaults took about 5% more memory).

use std::process::Command;

#[test]
fn the_server_runs_on_jemalloc_with_the_settings_built_into_it() {
    // jemalloc prints its settings at exit when asked to in its environment variable;
    // another allocator ignores the variable and prints nothing of the kind.
    let output = Command::new(tests::server_binary())
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run registry-server --version");
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    for setting in [
        "opt.narenas: 2",
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(
            printed
                .lines()
                .any(|line| line.trim() == setting
                    || line.trim().starts_with(&format!("{setting} "))),
            "jemalloc's statistics do not show {setting:?}; they were:\n{printed}"
        );
    }
}
