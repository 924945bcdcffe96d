//! A simulated ZKTeco PUSH terminal for tests and `gatewayd demo`: an attendance log, users and the command channel,
//! speaking HTTP/1.1 to the gateway's `/iclock` routes as firmware does (one request per connection).
//!
//! The test drives it step by step: [`AdmsSim::handshake`], [`AdmsSim::upload`] (the records it has not pushed yet),
//! [`AdmsSim::poll`] (fetch the queued commands, carry them out, post the results). Records made with
//! [`AdmsSim::punch_unpushed`] stay in the log but are never pushed by the terminal itself, as with firmware that lost
//! its upload stamp: only a `DATA QUERY ATTLOG` brings them to the gateway. Commands it understands:
//! `DATA UPDATE USERINFO`, `DATA DELETE USERINFO`, `DATA QUERY ATTLOG` (uploads the range, answers the count),
//! `VERIFY SUM ATTLOG` (answers `AttLogCount`), `INFO`; others are answered `Return=-1002`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use jiff::civil::DateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One record of the simulated log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRecord {
    pub pin: String,
    pub time: DateTime,
    pub verify: u32,
    /// Whether the terminal pushes it by itself.
    pub pushed_by_itself: bool,
}

#[derive(Debug, Default)]
struct State {
    log: Vec<SimRecord>,
    /// How many records of the log the terminal has pushed by itself (its stamp).
    pushed: usize,
    users: BTreeMap<String, (String, Option<String>)>,
    executed: Vec<String>,
}

/// A simulated PUSH terminal. Cheap to clone; clones share the terminal.
#[derive(Clone, Debug)]
pub struct AdmsSim {
    api: SocketAddr,
    sn: String,
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn fmt_time(t: DateTime) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

impl AdmsSim {
    /// A terminal with serial number `sn` pushing to the gateway's API at `api`.
    pub fn new(api: SocketAddr, sn: &str) -> AdmsSim {
        AdmsSim { api, sn: sn.to_owned(), state: Arc::default() }
    }

    /// Someone punches: the terminal pushes the record with its next [`AdmsSim::upload`].
    pub fn punch(&self, pin: &str, time: DateTime, verify: u32) {
        lock(&self.state).log.push(SimRecord { pin: pin.into(), time, verify, pushed_by_itself: true });
    }

    /// Someone punches, and the terminal never pushes the record by itself.
    pub fn punch_unpushed(&self, pin: &str, time: DateTime, verify: u32) {
        lock(&self.state).log.push(SimRecord { pin: pin.into(), time, verify, pushed_by_itself: false });
    }

    pub fn log(&self) -> Vec<SimRecord> {
        lock(&self.state).log.clone()
    }

    /// The users on the terminal: PIN → (name, card).
    pub fn users(&self) -> BTreeMap<String, (String, Option<String>)> {
        lock(&self.state).users.clone()
    }

    /// The commands carried out, in order.
    pub fn executed(&self) -> Vec<String> {
        lock(&self.state).executed.clone()
    }

    async fn request(&self, method: &str, target: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(self.api).await?;
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: iClock Proxy/1.09\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            self.api,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        stream.write_all(&req).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok((status, body.to_owned()))
    }

    /// The handshake (`GET /iclock/cdata?options=all`): the gateway's options.
    pub async fn handshake(&self) -> std::io::Result<String> {
        let (_, body) =
            self.request("GET", &format!("/iclock/cdata?SN={}&options=all&pushver=2.4.1", self.sn), b"").await?;
        Ok(body)
    }

    async fn post_records(&self, records: &[SimRecord], stamp: usize) -> std::io::Result<(u16, String)> {
        let mut body = String::new();
        for r in records {
            let _ = writeln!(body, "{}\t{}\t0\t{}\t0\t0", r.pin, fmt_time(r.time), r.verify);
        }
        let target = format!("/iclock/cdata?SN={}&table=ATTLOG&Stamp={stamp}", self.sn);
        self.request("POST", &target, body.as_bytes()).await
    }

    /// Pushes the records made since the last push (those it pushes by itself); returns how many.
    pub async fn upload(&self) -> std::io::Result<usize> {
        let (from, records) = {
            let s = lock(&self.state);
            let records: Vec<SimRecord> = s.log[s.pushed..].iter().filter(|r| r.pushed_by_itself).cloned().collect();
            (s.log.len(), records)
        };
        if records.is_empty() {
            lock(&self.state).pushed = from;
            return Ok(0);
        }
        let (status, body) = self.post_records(&records, from).await?;
        if status != 200 {
            return Err(std::io::Error::other(format!("upload answered {status}: {body}")));
        }
        lock(&self.state).pushed = from;
        Ok(records.len())
    }

    /// One command poll: fetches the queued commands, carries them out and posts their results. Returns how many.
    pub async fn poll(&self) -> std::io::Result<usize> {
        let (_, body) = self.request("GET", &format!("/iclock/getrequest?SN={}", self.sn), b"").await?;
        let mut results = String::new();
        let mut n = 0;
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("C:") else { continue };
            let Some((id, command)) = rest.split_once(':') else { continue };
            let answer = self.execute(command).await?;
            lock(&self.state).executed.push(command.to_owned());
            let _ = writeln!(results, "ID={id}&{answer}");
            n += 1;
        }
        if n > 0 {
            let (status, body) =
                self.request("POST", &format!("/iclock/devicecmd?SN={}", self.sn), results.as_bytes()).await?;
            if status != 200 {
                return Err(std::io::Error::other(format!("devicecmd answered {status}: {body}")));
            }
        }
        Ok(n)
    }

    /// Carries out one command; returns the result line after `ID=…&` (and any lines after it).
    async fn execute(&self, command: &str) -> std::io::Result<String> {
        let fields = |rest: &str| -> BTreeMap<String, String> {
            rest.split('\t')
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .collect()
        };
        if let Some(rest) = command.strip_prefix("DATA UPDATE USERINFO ") {
            let f = fields(rest);
            let Some(pin) = f.get("PIN") else { return Ok("Return=-1001&CMD=DATA".into()) };
            let name = f.get("Name").cloned().unwrap_or_default();
            lock(&self.state).users.insert(pin.clone(), (name, f.get("Card").cloned()));
            return Ok("Return=0&CMD=DATA".into());
        }
        if let Some(rest) = command.strip_prefix("DATA DELETE USERINFO ") {
            let f = fields(rest);
            let removed = f.get("PIN").and_then(|pin| lock(&self.state).users.remove(pin));
            return Ok(if removed.is_some() { "Return=0&CMD=DATA" } else { "Return=-1003&CMD=DATA" }.into());
        }
        let in_range = |rest: &str| -> Option<Vec<SimRecord>> {
            let f = fields(rest);
            let parse = |k: &str| f.get(k).and_then(|v| DateTime::strptime("%Y-%m-%d %H:%M:%S", v.trim()).ok());
            let (from, to) = (parse("StartTime")?, parse("EndTime")?);
            Some(lock(&self.state).log.iter().filter(|r| r.time >= from && r.time <= to).cloned().collect())
        };
        if let Some(rest) = command.strip_prefix("DATA QUERY ATTLOG ") {
            let Some(records) = in_range(rest) else { return Ok("Return=-1001&CMD=DATA".into()) };
            let stamp = lock(&self.state).log.len();
            for chunk in records.chunks(200) {
                let (status, body) = self.post_records(chunk, stamp).await?;
                if status != 200 {
                    return Err(std::io::Error::other(format!("query upload answered {status}: {body}")));
                }
            }
            return Ok(format!("Return={}&CMD=DATA", records.len()));
        }
        if let Some(rest) = command.strip_prefix("VERIFY SUM ATTLOG ") {
            let Some(records) = in_range(rest) else { return Ok("Return=-1001&CMD=VERIFY SUM".into()) };
            return Ok(format!("Return=0&CMD=VERIFY SUM&AttLogCount={}", records.len()));
        }
        if command == "INFO" {
            let s = lock(&self.state);
            return Ok(format!(
                "Return=0&CMD=INFO\n~DeviceName=SimZK\nFWVersion=Ver 6.60 (sim)\nUserCount={}\nFPCount=0\nFaceCount=0\n\
                 TransactionCount={}",
                s.users.len(),
                s.log.len()
            ));
        }
        Ok("Return=-1002&CMD=UNKNOWN".into())
    }
}
