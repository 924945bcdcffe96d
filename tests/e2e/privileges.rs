//! Started as root outside systemd: the daemon binds, drops to `[gateway].user` for good, and keeps working;
//! without a user it refuses to run as root unless `allow_root` is set. (Only meaningful when the tests run as root.)

use std::os::unix::fs::PermissionsExt;

use nix::unistd::{Uid, User};

use crate::harness::{run_cli, Gateway};

fn config(user_line: &str) -> String {
    format!(
        "[gateway]\nid = \"gw-priv\"\ndata_dir = \"data\"\ntimezone = \"UTC\"\n{user_line}\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\n\n[mqtt]\nlisten = \"127.0.0.1:0\"\n"
    )
}

fn status_ids(pid: i32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().skip(1).map(|n| n.parse().unwrap()).collect()
}

#[test]
fn root_drops_to_the_configured_user() {
    if !Uid::effective().is_root() {
        eprintln!("not root: nothing to drop");
        return;
    }
    let nobody = User::from_name("nobody").unwrap().expect("user nobody");
    let dir = tempfile::tempdir().unwrap();
    // The dropped process must still reach the test's notification socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut gw = Gateway::start_in(dir, &config("user = \"nobody\""));
    let pid = gw.pid().as_raw();
    assert_eq!(status_ids(pid, "Uid:"), vec![nobody.uid.as_raw(); 4], "real, effective, saved, fs uid");
    assert_eq!(status_ids(pid, "Gid:"), vec![nobody.gid.as_raw(); 4]);
    assert_eq!(status_ids(pid, "NoNewPrivs:"), vec![1]);
    let store_owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(gw.data_dir().join("store")).unwrap());
    assert_eq!(store_owner, nobody.uid.as_raw(), "data dir handed to the user");
    assert_eq!(gw.get("/healthz").0, 200);
    let (status, _) = gw.stop();
    assert_eq!(status.code(), Some(0), "{}", gw.stderr);
    assert!(gw.stderr.contains("dropped root privileges"), "{}", gw.stderr);
}

#[test]
fn root_without_a_user_is_refused() {
    if !Uid::effective().is_root() {
        eprintln!("not root: nothing to refuse");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatewayd.toml");
    std::fs::write(&path, config("")).unwrap();
    let (code, _, stderr) = run_cli(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("running as root without [gateway].user"), "{stderr}");
    std::fs::write(&path, config("user = \"no-such-user-gw\"")).unwrap();
    let (code, _, stderr) = run_cli(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}
