//! Real `nats-server` processes for the fleet tests: one node or a JetStream cluster on loopback, mutual TLS with
//! `verify_and_map` and per-identity permissions as docs/fleet.md ships them (`docs/fleet/nats-server.conf` is the
//! template: the tests fill in its placeholders, so the documented configuration is the tested one).
//!
//! Client ports are chosen by the server (`-1`) and read back from its ports file; a restarted node reuses its port.
//! Cluster (route) ports must be known before the first node starts, so they are taken from the kernel (bind port 0)
//! and released just before the servers start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gatewayd::cli::certs::{write_file, DevPki, Validity};

use super::wait_until;

/// The `nats-server` binary (Debian package `nats-server`).
pub fn nats_server_bin() -> &'static str {
    if Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    }
}

/// A CA and certificates for servers, gateways, loaders and the operator, written into a directory.
pub struct Pki {
    pub dir: PathBuf,
    pki: DevPki,
}

/// One identity's files.
#[derive(Clone, Debug)]
pub struct Ident {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let pki = DevPki::new("fleet test CA").unwrap();
        write_file(&dir.join("ca.pem"), pki.ca_pem(), false).unwrap();
        let server = pki.server(&["localhost", "127.0.0.1"], Validity::days(10)).unwrap();
        write_file(&dir.join("server.pem"), &server.cert_pem, false).unwrap();
        write_file(&dir.join("server.key"), &server.key_pem, true).unwrap();
        Pki { dir: dir.to_owned(), pki }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn server(&self) -> Ident {
        Ident { cert: self.dir.join("server.pem"), key: self.dir.join("server.key") }
    }

    /// A client certificate whose common name is `name` (a gateway id, `loader`, `operator`).
    pub fn client(&self, name: &str) -> Ident {
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}.key"));
        if !cert.exists() {
            let issued = self.pki.client(name, Validity::days(10)).unwrap();
            write_file(&cert, &issued.cert_pem, false).unwrap();
            write_file(&key, &issued.key_pem, true).unwrap();
        }
        Ident { cert, key }
    }
}

/// The user name `verify_and_map` derives from a development certificate named `cn` (its subject, RFC 2253).
pub fn nats_user(cn: &str) -> String {
    format!("CN={cn},O=gatewayd development")
}

/// The documented server configuration with its placeholders filled in.
fn server_config(node: &Node, pki: &Pki, gateways: &[String], routes: &[u16]) -> String {
    let template = std::fs::read_to_string(super::repo_root().join("docs/fleet/nats-server.conf")).unwrap();
    let users: String = gateways
        .iter()
        .map(|g| {
            format!(
                "      {{ user: \"{user}\", permissions: {{\n\
                 \x20         publish: {{ allow: [\"gatewayd.v1.batches.{g}\", \"$JS.API.STREAM.INFO.GATEWAYD\"] }}\n\
                 \x20         subscribe: {{ allow: [\"gatewayd.v1.resend.{g}\", \"_INBOX.>\"] }}\n\
                 \x20         allow_responses: true\n      }} }}\n",
                user = nats_user(g)
            )
        })
        .collect();
    let routes: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
    let cluster = if routes.is_empty() {
        String::new()
    } else {
        format!(
            "cluster {{\n  name: \"fleet\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
            node.cluster_port,
            routes.join(", ")
        )
    };
    template
        .replace("@NAME@", &node.name)
        .replace("@LISTEN@", &format!("127.0.0.1:{}", node.client_port.map_or(-1, i32::from)))
        .replace("@STORE@", &node.dir.join("js").display().to_string())
        .replace("@CERT@", &pki.server().cert.display().to_string())
        .replace("@KEY@", &pki.server().key.display().to_string())
        .replace("@CA@", &pki.ca().display().to_string())
        .replace("@GATEWAY_USERS@\n", &users)
        .replace("@LOADER@", &nats_user("loader"))
        .replace("@OPERATOR@", &nats_user("operator"))
        .replace("@CLUSTER@\n", &cluster)
        + &format!("ports_file_dir: \"{}\"\n", node.dir.display())
}

/// One server process.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    /// Known after the first start.
    pub client_port: Option<u16>,
    pub cluster_port: u16,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port.unwrap_or(0))
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn start(&mut self, pki: &Pki, gateways: &[String], routes: &[u16]) {
        std::fs::create_dir_all(&self.dir).unwrap();
        for entry in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if entry.path().extension().is_some_and(|e| e == "ports") {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
        let conf = self.dir.join("nats-server.conf");
        std::fs::write(&conf, server_config(self, pki, gateways, routes)).unwrap();
        let log = std::fs::File::options().create(true).append(true).open(self.dir.join("server.log")).unwrap();
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server (apt-get install nats-server)");
        let pid = child.id();
        self.child = Some(child);
        let ports = self.dir.join(format!("nats-server_{pid}.ports"));
        let dir = self.dir.clone();
        let text = wait_until(
            &format!("nats-server {} to write its ports file", self.name),
            Duration::from_secs(30),
            || std::fs::read_to_string(&ports).ok(),
            |t| t.as_deref().is_some_and(|t| t.ends_with('}')),
        );
        let v: serde_json::Value = serde_json::from_str(&text.unwrap_or_default()).unwrap();
        let url = v["nats"][0].as_str().unwrap_or_else(|| panic!("ports file in {}: {v}", dir.display()));
        self.client_port = Some(url.rsplit(':').next().unwrap().parse().unwrap());
    }

    /// SIGKILL, as a node loss.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Free TCP ports on loopback, released before return.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// A JetStream cluster of `nodes.len()` servers (one server: no cluster block).
pub struct Cluster {
    pub pki: Pki,
    pub nodes: Vec<Node>,
    pub gateways: Vec<String>,
}

impl Cluster {
    /// Starts `size` nodes in `dir` that know the gateways `gateways` (each may publish on its own subject only).
    pub fn start(dir: &Path, size: usize, gateways: &[&str]) -> Cluster {
        let pki = Pki::new(&dir.join("pki"));
        let ports = free_ports(size);
        let nodes = (0..size)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                dir: dir.join(format!("n{}", i + 1)),
                client_port: None,
                cluster_port: ports[i],
                child: None,
            })
            .collect();
        let mut cluster = Cluster { pki, nodes, gateways: gateways.iter().map(|g| (*g).to_owned()).collect() };
        for i in 0..size {
            cluster.restart(i);
        }
        cluster
    }

    /// (Re)starts node `i` with routes to every other node.
    pub fn restart(&mut self, i: usize) {
        let routes: Vec<u16> = if self.nodes.len() == 1 {
            Vec::new()
        } else {
            self.nodes.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, n)| n.cluster_port).collect()
        };
        let (pki, gateways) = (&self.pki, &self.gateways);
        self.nodes[i].start(pki, gateways, &routes);
    }

    /// The client URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Connects with the certificate named `cn`.
    pub async fn connect(&self, cn: &str) -> async_nats::Client {
        let id = self.pki.client(cn);
        let tls = gatewayd::upstream::tls::client_config(&self.pki.ca(), &id.cert, &id.key).unwrap();
        let addrs: Vec<async_nats::ServerAddr> = self.urls().iter().map(|u| u.parse().unwrap()).collect();
        tokio::time::timeout(
            Duration::from_secs(30),
            async_nats::ConnectOptions::new().require_tls(true).tls_client_config((*tls).clone()).connect(addrs),
        )
        .await
        .expect("connect timeout")
        .expect("connect to NATS")
    }

    /// Creates the stream as an operator would (docs/fleet.md), retrying until the cluster has a meta leader.
    pub async fn create_stream(&self, replicas: usize) {
        let client = self.connect("operator").await;
        let js = async_nats::jetstream::new(client);
        let config = async_nats::jetstream::stream::Config {
            name: "GATEWAYD".into(),
            subjects: vec!["gatewayd.v1.batches.>".into()],
            num_replicas: replicas,
            duplicate_window: Duration::from_secs(7 * 24 * 3600),
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(_) => return,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("cannot create the stream: {e}"),
            }
        }
    }
}
