//! Every shipped configuration validates; every `configs/invalid/*.toml` fails with the problem its first line names.

use crate::harness::{repo_root, run_cli};

#[test]
fn shipped_configs_validate() {
    let dir = repo_root().join("configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let is_gateway_config = path.extension().is_some_and(|e| e == "toml")
            && std::fs::read_to_string(&path).unwrap().contains("[gateway]");
        if !is_gateway_config {
            continue;
        }
        let (code, stdout, stderr) = run_cli(&["validate", "--config", path.to_str().unwrap()], &[]);
        assert_eq!((code, stdout.as_str()), (0, "ok\n"), "{}: {stderr}", path.display());
        checked += 1;
    }
    assert!(checked >= 1);
}

#[test]
fn invalid_configs_fail_with_their_named_problem() {
    let dir = repo_root().join("configs").join("invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: KEY: PROBLEM`", path.display()));
        let (code, stdout, stderr) = run_cli(&["validate", "--config", path.to_str().unwrap()], &[]);
        assert_eq!(code, 78, "{}: exit code; stdout {stdout} stderr {stderr}", path.display());
        let first = stderr.lines().next().unwrap_or_default();
        // FILE:LINE: key: problem
        let mut parts = first.splitn(3, ':');
        let file = parts.next().unwrap_or_default();
        let line = parts.next().unwrap_or_default();
        let rest = parts.next().unwrap_or_default().trim_start();
        // A problem inside a referenced file (rules, roster) names that file: `# file: RELATIVE_PATH` on line 2.
        let expected_file = match text.lines().nth(1).and_then(|l| l.strip_prefix("# file: ")) {
            Some(rel) => dir.join(rel.trim()),
            None => path.clone(),
        };
        assert_eq!(file, expected_file.to_str().unwrap(), "{first}");
        assert!(line.parse::<usize>().is_ok_and(|n| n >= 1), "line number in {first}");
        assert!(rest.starts_with(expect.trim_end()), "{}:\n  got:    {rest}\n  wanted: {expect}", path.display());
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} invalid configs");
}

#[test]
fn usage_errors_exit_64() {
    let (code, _, stderr) = run_cli(&["run", "--no-such-flag"], &[]);
    assert_eq!(code, 64, "{stderr}");
    let (code, stdout, _) = run_cli(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("validate"));
}

#[test]
fn config_comes_from_the_environment_when_no_flag() {
    let path = repo_root().join("configs").join("invalid").join("bad-timezone.toml");
    let (code, _, stderr) = run_cli(&["validate"], &[("GATEWAYD_CONFIG", path.to_str().unwrap())]);
    assert_eq!(code, 78);
    assert!(stderr.contains("gateway.timezone"), "{stderr}");
}
