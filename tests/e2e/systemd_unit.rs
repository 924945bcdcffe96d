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
