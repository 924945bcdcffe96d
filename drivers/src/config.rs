//! The `[[device]]` table of the configuration (SPEC section 2), validated without I/O.
//!
//! One flat table serves every driver so that unknown keys are rejected by serde; [`DeviceConfig::validate`] then checks that
//! the keys a driver needs are present and that no key meant for another driver was given.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// Which protocol a device speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    /// NXP PN532 NFC reader over HSU UART (SPEC 3.3).
    Pn532,
    /// R307/R503-family fingerprint module (SPEC 3.3).
    R30x,
    /// Face terminal or any device publishing JSON punches to the embedded MQTT broker (SPEC 3.1).
    Mqtt,
    /// ZKTeco PUSH ("ADMS"/iclock) terminal over HTTP (SPEC 3.2).
    Adms,
    /// ZKTeco terminal without PUSH, driven over the binary "4370" protocol on TCP or UDP (SPEC 6.4).
    Zk4370,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Pn532 => "pn532",
            DriverKind::R30x => "r30x",
            DriverKind::Mqtt => "mqtt",
            DriverKind::Adms => "adms",
            DriverKind::Zk4370 => "zk4370",
        }
    }

    /// Drivers the gateway drives itself over a byte stream (serial, RFCOMM, TCP serial server).
    pub fn is_serial(self) -> bool {
        matches!(self, DriverKind::Pn532 | DriverKind::R30x)
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret string whose `Debug` output is masked.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// A duration written as in `"500ms"`, `"2s"`, `"5m"`, `"1h 30m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

/// Parses a non-negative duration such as `"500ms"`, `"10m"` or `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let span: jiff::SignedDuration = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (write e.g. \"500ms\", \"10m\", \"2h\")"))?;
    if span.is_negative() {
        return Err(format!("`{text}` is negative"));
    }
    span.try_into().map_err(|_| format!("`{text}` is out of range"))
}

/// A ZKTeco communication key (the number set on the terminal as "Comm Key"), masked in `Debug` output.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct CommKey(pub u32);

impl fmt::Debug for CommKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CommKey(****)")
    }
}

/// One `[[device]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Unique device id: the MQTT username, part of every punch id, the `device` metric label.
    pub id: String,
    /// The protocol: `pn532`, `r30x`, `mqtt`, `adms` or `zk4370`.
    pub driver: DriverKind,
    /// Serial drivers: a serial path (`/dev/ttyUSB0`, `/dev/rfcomm0`), `tcp://HOST:PORT` for a serial device server, or
    /// `rfcomm://AA:BB:CC:DD:EE:FF/CHANNEL` for a direct Bluetooth RFCOMM link. `zk4370`: the terminal,
    /// `tcp://HOST:4370` or `udp://HOST:4370`.
    pub port: Option<String>,
    /// Serial drivers: line speed for local serial ports (8N1). Default 115200 for pn532, 57600 for r30x.
    pub baud: Option<u32>,
    /// `mqtt`: the MQTT password; the username is the device id.
    pub secret: Option<Secret>,
    /// `adms`: the terminal's serial number; unknown serial numbers are refused.
    pub serial_number: Option<String>,
    /// `adms`: the source addresses the terminal may push from (`10.1.2.0/24`, `10.1.2.7`, IPv6 too); others get 403.
    /// Default: any address.
    pub allow_from: Option<Vec<String>>,
    /// Serial drivers: how often to poll the reader for a card or a finger. Default 200ms. `zk4370`: how often to check
    /// the link and the terminal's record count (a record the gateway missed is then read from the log). Default 20s.
    pub poll_interval: Option<HumanDuration>,
    /// `pn532`: after a card leaves the reader, how long before the same card counts as a new punch. Default 2s.
    pub hold_off: Option<HumanDuration>,
    /// `r30x`: the lowest match score accepted as a punch. Default 50.
    pub min_score: Option<u16>,
    /// `r30x`: the module password, if one is set (verified with VfyPwd after connecting).
    pub password: Option<u32>,
    /// `r30x`: the module address. Default 0xFFFFFFFF.
    pub address: Option<u32>,
    /// Serial drivers and `zk4370`: the longest wait for a device answer before the link is considered lost. Default 1s
    /// (serial drivers), 5s (`zk4370`).
    pub response_timeout: Option<HumanDuration>,
    /// `zk4370`: the terminal's communication key ("Comm Key" in its menu, 0 to 999999), when one is set.
    pub comm_key: Option<CommKey>,
    /// `zk4370` and `adms`: the IANA time zone the terminal's clock is set to, when it is not the site's
    /// (`gateway.timezone`). Its local times are read in it, and the gateway sets its clock in it.
    pub timezone: Option<String>,
    /// A human description shown in device status.
    pub description: Option<String>,
}

/// One problem found in a device entry: the key inside the entry and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: &'static str,
    pub message: String,
}

impl Problem {
    fn new(key: &'static str, message: impl Into<String>) -> Problem {
        Problem { key, message: message.into() }
    }
}

/// Checks that a device id is usable in topics, punch ids and metric labels.
pub fn valid_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(format!("`{id}` may contain only letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// Where a serial driver's byte stream comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// A local serial device node (including `/dev/rfcommN`).
    Serial(String),
    /// A TCP serial device server.
    Tcp { host: String, port: u16 },
    /// A direct Bluetooth RFCOMM connection.
    Rfcomm { address: [u8; 6], channel: u8 },
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Serial(path) => f.write_str(path),
            PortSpec::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            PortSpec::Rfcomm { address, channel } => {
                let a = address;
                write!(
                    f,
                    "rfcomm://{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}/{channel}",
                    a[0], a[1], a[2], a[3], a[4], a[5]
                )
            }
        }
    }
}

impl PortSpec {
    /// Parses the `port` key.
    pub fn parse(text: &str) -> Result<PortSpec, String> {
        if let Some(rest) = text.strip_prefix("tcp://") {
            let (host, port) =
                rest.rsplit_once(':').ok_or_else(|| format!("`{text}` needs a port: tcp://HOST:PORT"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(format!("`{text}` has no host"));
            }
            let port: u16 = port.parse().map_err(|_| format!("`{text}`: `{port}` is not a TCP port"))?;
            if port == 0 {
                return Err(format!("`{text}`: port 0 is not a serial server port"));
            }
            return Ok(PortSpec::Tcp { host: host.to_owned(), port });
        }
        if let Some(rest) = text.strip_prefix("rfcomm://") {
            let (addr, channel) = rest
                .split_once('/')
                .ok_or_else(|| format!("`{text}` needs a channel: rfcomm://AA:BB:CC:DD:EE:FF/CHANNEL"))?;
            let parts: Vec<&str> = addr.split(':').collect();
            if parts.len() != 6 {
                return Err(format!("`{addr}` is not a Bluetooth address like AA:BB:CC:DD:EE:FF"));
            }
            let mut address = [0u8; 6];
            for (slot, part) in address.iter_mut().zip(&parts) {
                if part.len() != 2 {
                    return Err(format!("`{addr}` is not a Bluetooth address like AA:BB:CC:DD:EE:FF"));
                }
                *slot = u8::from_str_radix(part, 16)
                    .map_err(|_| format!("`{addr}` is not a Bluetooth address like AA:BB:CC:DD:EE:FF"))?;
            }
            let channel: u8 = channel.parse().map_err(|_| format!("`{channel}` is not an RFCOMM channel (1-30)"))?;
            if !(1..=30).contains(&channel) {
                return Err(format!("RFCOMM channel {channel} is out of range 1-30"));
            }
            return Ok(PortSpec::Rfcomm { address, channel });
        }
        if text.contains("://") {
            return Err(format!(
                "`{text}`: unknown scheme (use a /dev path, tcp://HOST:PORT or rfcomm://ADDR/CHANNEL)"
            ));
        }
        if !text.starts_with('/') {
            return Err(format!("`{text}` is not an absolute serial device path such as /dev/ttyUSB0"));
        }
        Ok(PortSpec::Serial(text.to_owned()))
    }
}

/// Where a 4370 terminal listens: the `port` key of a `zk4370` device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Udp { host: String, port: u16 },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Endpoint::Udp { host, port } => write!(f, "udp://{host}:{port}"),
        }
    }
}

impl Endpoint {
    /// Parses `tcp://HOST:PORT` or `udp://HOST:PORT` (IPv6 hosts in brackets).
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        let (udp, rest) = if let Some(rest) = text.strip_prefix("tcp://") {
            (false, rest)
        } else if let Some(rest) = text.strip_prefix("udp://") {
            (true, rest)
        } else {
            return Err(format!("`{text}`: a zk4370 terminal is tcp://HOST:4370 or udp://HOST:4370"));
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("`{text}` needs a port, usually 4370"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("`{text}` has no host"));
        }
        let port: u16 = port.parse().map_err(|_| format!("`{text}`: `{port}` is not a port"))?;
        if port == 0 {
            return Err(format!("`{text}`: port 0 is not a terminal's port"));
        }
        let host = host.to_owned();
        Ok(if udp { Endpoint::Udp { host, port } } else { Endpoint::Tcp { host, port } })
    }
}

/// One `allow_from` entry: a network in CIDR form (`10.1.2.0/24`, `fd00::/8`) or a single address (`10.1.2.7`).
pub fn parse_allow(text: &str) -> Result<ipnet::IpNet, String> {
    let t = text.trim();
    t.parse::<ipnet::IpNet>()
        .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("`{text}` is not an address or a network (write e.g. \"10.1.2.0/24\" or \"10.1.2.7\")"))
}

impl DeviceConfig {
    /// Checks the entry on its own: required keys for its driver present, keys of other drivers absent, values in range.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(e) = valid_device_id(&self.id) {
            problems.push(Problem::new("id", e));
        }
        let d = self.driver;
        let serial = d.is_serial();
        let mut only = |present: bool, key: &'static str, applies: bool, to: &str| {
            if present && !applies {
                problems.push(Problem::new(key, format!("does not apply to driver {d} (only to {to})")));
            }
        };
        let zk = d == DriverKind::Zk4370;
        only(self.port.is_some(), "port", serial || zk, "pn532, r30x, zk4370");
        only(self.baud.is_some(), "baud", serial, "pn532, r30x");
        only(self.poll_interval.is_some(), "poll_interval", serial || zk, "pn532, r30x, zk4370");
        only(self.response_timeout.is_some(), "response_timeout", serial || zk, "pn532, r30x, zk4370");
        only(self.comm_key.is_some(), "comm_key", zk, "zk4370");
        only(self.timezone.is_some(), "timezone", zk || d == DriverKind::Adms, "zk4370, adms");

        only(self.secret.is_some(), "secret", d == DriverKind::Mqtt, "mqtt");
        only(self.serial_number.is_some(), "serial_number", d == DriverKind::Adms, "adms");
        only(self.allow_from.is_some(), "allow_from", d == DriverKind::Adms, "adms");
        only(self.hold_off.is_some(), "hold_off", d == DriverKind::Pn532, "pn532");
        only(self.min_score.is_some(), "min_score", d == DriverKind::R30x, "r30x");
        only(self.password.is_some(), "password", d == DriverKind::R30x, "r30x");
        only(self.address.is_some(), "address", d == DriverKind::R30x, "r30x");
        if let Some(tz) = &self.timezone {
            if jiff::tz::TimeZone::get(tz).is_err() {
                problems.push(Problem::new(
                    "timezone",
                    format!("`{tz}` is not a known IANA time zone (e.g. Asia/Kolkata)"),
                ));
            }
        }
        if let Some(CommKey(key)) = self.comm_key {
            if key > 999_999 {
                problems.push(Problem::new("comm_key", format!("{key} is not a comm key (0 to 999999)")));
            }
        }
        if let Some(list) = &self.allow_from {
            if list.is_empty() || list.len() > 256 {
                problems.push(Problem::new("allow_from", "must list 1 to 256 addresses or networks"));
            }
            for entry in list {
                if let Err(e) = parse_allow(entry) {
                    problems.push(Problem::new("allow_from", e));
                }
            }
        }

        if serial {
            match &self.port {
                None => problems.push(Problem::new("port", format!("missing: driver {d} needs a port"))),
                Some(port) => {
                    if let Err(e) = PortSpec::parse(port) {
                        problems.push(Problem::new("port", e));
                    }
                }
            }
            if let Some(baud) = self.baud {
                if !(1200..=4_000_000).contains(&baud) {
                    problems.push(Problem::new("baud", format!("{baud} is not a serial speed (1200..4000000)")));
                }
            }
            if let Some(HumanDuration(p)) = self.poll_interval {
                if p < Duration::from_millis(20) || p > Duration::from_secs(60) {
                    problems.push(Problem::new("poll_interval", "must be between 20ms and 60s"));
                }
            }
            if let Some(HumanDuration(t)) = self.response_timeout {
                if t < Duration::from_millis(50) || t > Duration::from_secs(60) {
                    problems.push(Problem::new("response_timeout", "must be between 50ms and 60s"));
                }
            }
        }
        match d {
            DriverKind::Mqtt => match &self.secret {
                None => {
                    problems.push(Problem::new("secret", "missing: an mqtt device needs a secret (its MQTT password)"))
                }
                Some(s) if s.expose().len() < 8 => {
                    problems.push(Problem::new("secret", "too short: use at least 8 characters"))
                }
                Some(_) => {}
            },
            DriverKind::Adms => match &self.serial_number {
                None => problems
                    .push(Problem::new("serial_number", "missing: an adms device is known by its serial number")),
                Some(sn) if sn.is_empty() || sn.len() > 64 || !sn.chars().all(|c| c.is_ascii_alphanumeric()) => {
                    problems.push(Problem::new("serial_number", format!("`{sn}` is not a device serial number")))
                }
                Some(_) => {}
            },
            DriverKind::R30x => {
                if let Some(score) = self.min_score {
                    if score == 0 {
                        problems.push(Problem::new("min_score", "must be at least 1"));
                    }
                }
            }
            DriverKind::Zk4370 => {
                match &self.port {
                    None => problems.push(Problem::new(
                        "port",
                        "missing: a zk4370 terminal needs a port (tcp://HOST:4370 or udp://HOST:4370)",
                    )),
                    Some(port) => {
                        if let Err(e) = Endpoint::parse(port) {
                            problems.push(Problem::new("port", e));
                        }
                    }
                }
                if let Some(HumanDuration(t)) = self.response_timeout {
                    if t < Duration::from_millis(50) || t > Duration::from_secs(60) {
                        problems.push(Problem::new("response_timeout", "must be between 50ms and 60s"));
                    }
                }
                if let Some(HumanDuration(p)) = self.poll_interval {
                    if p < Duration::from_millis(20) || p > Duration::from_secs(3600) {
                        problems.push(Problem::new("poll_interval", "must be between 20ms and 1h"));
                    }
                }
            }
            DriverKind::Pn532 => {
                if let Some(HumanDuration(h)) = self.hold_off {
                    if h > Duration::from_secs(3600) {
                        problems.push(Problem::new("hold_off", "must be at most 1h"));
                    }
                }
            }
        }
        problems
    }

    /// The time zone the device's clock runs in: its own `timezone`, else the site's.
    pub fn device_timezone(&self, site: &jiff::tz::TimeZone) -> jiff::tz::TimeZone {
        self.timezone.as_deref().and_then(|tz| jiff::tz::TimeZone::get(tz).ok()).unwrap_or_else(|| site.clone())
    }

    /// The parsed `port`, for serial drivers (call after `validate` found no problem).
    pub fn port_spec(&self) -> Option<PortSpec> {
        self.port.as_deref().and_then(|p| PortSpec::parse(p).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_from_takes_networks_and_addresses() {
        assert_eq!(parse_allow("10.1.2.0/24").unwrap().to_string(), "10.1.2.0/24");
        assert_eq!(parse_allow("10.1.2.7/24").unwrap().to_string(), "10.1.2.0/24", "host bits dropped");
        assert_eq!(parse_allow(" 10.1.2.7 ").unwrap().to_string(), "10.1.2.7/32");
        assert_eq!(parse_allow("fd00::/8").unwrap().to_string(), "fd00::/8");
        for bad in ["", "10.1.2", "10.1.2.0/33", "host.example", "10.1.2.0/24/1"] {
            assert!(parse_allow(bad).unwrap_err().contains("is not an address or a network"), "{bad}");
        }
        let mut d = device(DriverKind::Adms);
        d.serial_number = Some("SN1".into());
        d.allow_from = Some(vec!["10.0.0.0/8".into(), "nope".into()]);
        let problems: Vec<String> = d.validate().iter().map(|p| format!("{}: {}", p.key, p.message)).collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("allow_from: `nope`"), "{problems:?}");
        d.allow_from = Some(vec![]);
        assert!(d.validate().iter().any(|p| p.message.contains("1 to 256")));
        let mut m = device(DriverKind::Mqtt);
        m.allow_from = Some(vec!["10.0.0.0/8".into()]);
        assert!(m.validate().iter().any(|p| p.key == "allow_from" && p.message.contains("only to adms")));
    }

    fn device(toml_driver: DriverKind) -> DeviceConfig {
        DeviceConfig {
            id: "d1".into(),
            driver: toml_driver,
            port: None,
            baud: None,
            secret: None,
            serial_number: None,
            allow_from: None,
            poll_interval: None,
            hold_off: None,
            min_score: None,
            password: None,
            address: None,
            response_timeout: None,
            comm_key: None,
            timezone: None,
            description: None,
        }
    }

    #[test]
    fn ports_parse() {
        assert_eq!(PortSpec::parse("/dev/ttyUSB0"), Ok(PortSpec::Serial("/dev/ttyUSB0".into())));
        assert_eq!(PortSpec::parse("tcp://10.0.0.5:4001"), Ok(PortSpec::Tcp { host: "10.0.0.5".into(), port: 4001 }));
        assert_eq!(
            PortSpec::parse("rfcomm://AA:BB:CC:DD:EE:0F/3"),
            Ok(PortSpec::Rfcomm { address: [0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0x0F], channel: 3 })
        );
        for bad in [
            "ttyUSB0",
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
            "rfcomm://AA:BB/1",
            "rfcomm://AA:BB:CC:DD:EE:FF/0",
            "udp://x:1",
        ] {
            assert!(PortSpec::parse(bad).is_err(), "{bad} should fail");
        }
        let spec = PortSpec::parse("rfcomm://AA:BB:CC:DD:EE:0F/3").unwrap_or(PortSpec::Serial(String::new()));
        assert_eq!(spec.to_string(), "rfcomm://AA:BB:CC:DD:EE:0F/3");
    }

    #[test]
    fn driver_keys_are_checked() {
        let mut d = device(DriverKind::Mqtt);
        assert_eq!(d.validate()[0].key, "secret");
        d.secret = Some(Secret::new("long-enough"));
        assert!(d.validate().is_empty());
        d.port = Some("/dev/ttyS0".into());
        assert_eq!(d.validate()[0].key, "port");

        let mut p = device(DriverKind::Pn532);
        assert_eq!(p.validate()[0].message, "missing: driver pn532 needs a port");
        p.port = Some("/dev/ttyUSB0".into());
        assert!(p.validate().is_empty());
        p.min_score = Some(3);
        assert_eq!(p.validate()[0].key, "min_score");
    }

    #[test]
    fn zk4370_keys_are_checked() {
        let mut z = device(DriverKind::Zk4370);
        assert!(z.validate()[0].message.contains("tcp://HOST:4370 or udp://HOST:4370"));
        z.port = Some("udp://10.1.2.30:4370".into());
        z.comm_key = Some(CommKey(999_999));
        z.timezone = Some("Asia/Kolkata".into());
        z.poll_interval = Some(HumanDuration(Duration::from_secs(600)));
        assert!(z.validate().is_empty(), "{:?}", z.validate());
        assert_eq!(z.device_timezone(&jiff::tz::TimeZone::UTC).iana_name(), Some("Asia/Kolkata"));
        z.comm_key = Some(CommKey(1_000_000));
        z.timezone = Some("Mars/Olympus".into());
        z.port = Some("/dev/ttyUSB0".into());
        let keys: Vec<&str> = z.validate().iter().map(|p| p.key).collect();
        assert_eq!(keys, ["timezone", "comm_key", "port"]);
        let mut p = device(DriverKind::Pn532);
        p.port = Some("udp://10.1.2.30:4370".into());
        p.comm_key = Some(CommKey(1));
        p.timezone = Some("Asia/Kolkata".into());
        let keys: Vec<&str> = p.validate().iter().map(|p| p.key).collect();
        assert_eq!(keys, ["comm_key", "timezone", "port"]);
        assert_eq!(format!("{:?}", CommKey(123_456)), "CommKey(****)");
        let mut a = device(DriverKind::Adms);
        a.serial_number = Some("SN1".into());
        a.timezone = Some("Asia/Kolkata".into());
        assert!(a.validate().is_empty());
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(Endpoint::parse("tcp://10.1.2.3:4370"), Ok(Endpoint::Tcp { host: "10.1.2.3".into(), port: 4370 }));
        assert_eq!(Endpoint::parse("udp://[fd00::7]:4370"), Ok(Endpoint::Udp { host: "fd00::7".into(), port: 4370 }));
        assert_eq!(Endpoint::parse("udp://zk.local:4370").unwrap().to_string(), "udp://zk.local:4370");
        for bad in
            ["10.1.2.3:4370", "/dev/ttyS0", "tcp://10.1.2.3", "udp://:4370", "tcp://h:0", "tcp://h:x", "rfcomm://a/1"]
        {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5m").is_err());
    }

    #[test]
    fn secret_is_masked() {
        assert_eq!(format!("{:?}", Secret::new("hunter22")), "Secret(****)");
    }
}
