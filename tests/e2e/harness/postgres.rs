//! A throwaway PostgreSQL server for the loader tests: `initdb` in a temporary directory, `postgres` on a free loopback
//! port with its socket in that directory, trust authentication for the `postgres` user. PostgreSQL refuses to run as
//! root, so when the tests run as root both run as `nobody` (through `setpriv`); otherwise directly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{nats::free_ports, wait_until};

/// A PostgreSQL server binary: on PATH, or in Debian's versioned directory.
fn pg_bin(name: &str) -> PathBuf {
    for dir in ["/usr/local/bin", "/usr/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin").join(name)).filter(|p| p.exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| PathBuf::from(name))
}

fn as_postgres_user(program: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    child: Option<Child>,
}

impl Postgres {
    /// initdb + postgres, waiting until it answers a query.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody");
            nix::unistd::chown(&data, Some(nobody.uid), Some(nobody.gid)).unwrap();
            nix::unistd::chown(dir.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
        }
        let out = as_postgres_user(&pg_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"])
            .current_dir(dir.path())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_ports(1)[0];
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        let child = as_postgres_user(&pg_bin("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=40"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let pg = Postgres { dir, port, url, child: Some(child) };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let log_path = pg.dir.path().join("postgres.log");
        let _ready = wait_until(
            "PostgreSQL to answer",
            Duration::from_secs(60),
            || {
                rt.block_on(async {
                    match tokio::time::timeout(
                        Duration::from_secs(2),
                        tokio_postgres::connect(&pg.url, tokio_postgres::NoTls),
                    )
                    .await
                    {
                        Ok(Ok((client, conn))) => {
                            tokio::spawn(conn);
                            client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| e.to_string())
                        }
                        Ok(Err(e)) => {
                            Err(format!("{e}; log: {}", std::fs::read_to_string(&log_path).unwrap_or_default()))
                        }
                        Err(_) => Err("connect timed out".into()),
                    }
                })
            },
            |r| r.is_ok(),
        );
        pg
    }

    /// A connected client on `rt` (its connection task runs there).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT: fast shutdown.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGINT);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
