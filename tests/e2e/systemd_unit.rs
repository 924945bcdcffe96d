//! The shipped unit is `Type=notify` and scores 2.0 or lower in `systemd-analyze security` (where systemd-analyze exists).

use std::process::Command;

use crate::harness::repo_root;

#[test]
fn unit_is_notify_and_hardened() {
    let unit = repo_root().join("systemd").join("gatewayd.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in ["Type=notify", "User=gatewayd", "StateDirectory=gatewayd", "ConfigurationDirectory=gatewayd"] {
        assert!(text.lines().any(|l| l.trim() == line), "unit lacks {line}");
    }
    // Everything the daemon writes (store, control socket, the API's rules and roster, ADMS stamps) is under data_dir,
    // the StateDirectory: the unit grants no other writable path, and the packaged config puts data_dir there.
    assert!(text.lines().any(|l| l.trim() == "ProtectSystem=strict"), "unit is not ProtectSystem=strict");
    assert!(!text.lines().any(|l| l.trim().starts_with("ReadWritePaths")), "unit grants extra writable paths");
    let packaged = std::fs::read_to_string(repo_root().join("configs").join("packaged.toml")).unwrap();
    assert!(packaged.lines().any(|l| l.trim() == "data_dir = \"/var/lib/gatewayd\""), "packaged data_dir");
    let Ok(out) = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&unit).output() else {
        eprintln!("systemd-analyze not installed: skipping the exposure score");
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let score: f64 = stdout
        .lines()
        .find_map(|l| l.split("Overall exposure level for gatewayd.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(score <= 2.0, "exposure {score} > 2.0");
}
