//! tandemctl against a socket nobody serves: a clear message and exit code 3.

#[test]
fn says_the_daemon_is_not_running() {
    let dir = std::env::temp_dir().join(format!("tandemctl-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("none.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandemctl"))
        .arg("--socket")
        .arg(&sock)
        .args(["show", "ike-sa"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach tandemd at") && err.contains("is it running?"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
