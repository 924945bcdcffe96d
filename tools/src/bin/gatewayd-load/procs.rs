//! Processes under test: starting them with readiness through `NOTIFY_SOCKET`, reading their CPU time and memory from
//! `/proc`, stopping them, and the scratch directory everything lives in (removed on drop).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::net::UnixDatagram;
use tokio::process::{Child, Command};

/// Linux reports process CPU times in clock ticks of `USER_HZ`, which is 100 on every architecture this runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// A scratch directory, removed with everything in it when dropped (unless kept).
pub struct Scratch {
    pub path: PathBuf,
    pub keep: bool,
}

impl Scratch {
    pub fn new(keep: bool) -> anyhow::Result<Scratch> {
        let path = std::env::temp_dir().join(format!("gatewayd-bench-{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing a stale {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// CPU time and memory of a process, from `/proc/PID/stat` and `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// User + system CPU seconds since the process started.
    pub cpu_secs: f64,
    /// Resident set size now, bytes (`VmRSS`).
    pub rss: u64,
    /// Peak resident set size, bytes (`VmHWM`).
    pub hwm: u64,
}

pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: count fields after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or_else(|| anyhow!("/proc/{pid}/stat: no ')'"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at indexes 11 and 12.
    let tick = |i: usize| -> anyhow::Result<f64> {
        let v: u64 = fields.get(i).ok_or_else(|| anyhow!("/proc/{pid}/stat: short"))?.parse()?;
        Ok(v as f64 / TICKS_PER_SEC)
    };
    let cpu_secs = tick(11)? + tick(12)?;
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(ProcSample { cpu_secs, rss: kib("VmRSS:"), hwm: kib("VmHWM:") })
}

/// Bytes a directory tree occupies on disk (allocated blocks, as `du` counts them).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stderr (and stdout, unless piped by the caller) to `log`, and `NOTIFY_SOCKET` pointing at a
    /// fresh socket; returns once the process sent `READY=1`, failing if it exits or stays silent for `limit`.
    pub async fn start_notify(
        name: &'static str,
        mut cmd: Command,
        dir: &Path,
        limit: Duration,
    ) -> anyhow::Result<Proc> {
        let socket_path = dir.join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path).with_context(|| format!("binding {}", socket_path.display()))?;
        cmd.env("NOTIFY_SOCKET", &socket_path);
        let mut proc = Proc::spawn(name, cmd, dir, false)?;
        let mut buf = [0u8; 4096];
        let ready = async {
            loop {
                let n = socket.recv(&mut buf).await?;
                if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                    return Ok::<(), std::io::Error>(());
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(limit, ready) => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("{name}: notify socket: {e}"),
                Err(_) => bail!("{name} sent no READY=1 within {limit:?}; its log:\n{}", proc.log_tail()),
            },
            status = proc.child.wait() => {
                bail!("{name} exited ({}) before it was ready; its log:\n{}", status.map(|s| s.to_string()).unwrap_or_default(), proc.log_tail())
            }
        }
        let _ = std::fs::remove_file(&socket_path);
        Ok(proc)
    }

    /// Starts `cmd` with stderr to `dir/{name}.log`, and stdout too unless `pipe_stdout` (then the caller reads it).
    pub fn spawn(name: &'static str, mut cmd: Command, dir: &Path, pipe_stdout: bool) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let file2 = file.try_clone().with_context(|| format!("{}", log.display()))?;
        cmd.stderr(Stdio::from(file)).stdin(Stdio::null()).kill_on_drop(true);
        cmd.stdout(if pipe_stdout { Stdio::piped() } else { Stdio::from(file2) });
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id().ok_or_else(|| anyhow!("{name} exited at once"))?;
        Ok(Proc { name, child, pid, log })
    }

    pub fn sample(&self) -> anyhow::Result<ProcSample> {
        sample(self.pid).with_context(|| format!("{} (pid {})", self.name, self.pid))
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM and wait (SIGKILL after `grace`); fails if the process did not exit cleanly.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} had already exited ({status}); its log:\n{}", self.name, self.log_tail());
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("SIGTERM to {}", self.name))?;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!("{} exited with {status} on SIGTERM; its log:\n{}", self.name, self.log_tail()),
            Ok(Err(e)) => bail!("waiting for {}: {e}", self.name),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("{} did not stop within {grace:?} of SIGTERM (killed)", self.name)
            }
        }
    }
}

/// A free loopback port (bound and released: another process could take it in between, which makes the broker that
/// is given it fail to start, and the bench with it, never measure the wrong thing).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
