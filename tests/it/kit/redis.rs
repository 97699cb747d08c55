//! Private Redis servers for the tests: `redis-server` on free loopback ports, no
//! persistence, killed when dropped; and a real 3-master Redis Cluster made with
//! `redis-cli --cluster create`. `scripts/test` installs both programs when missing.
//!
//! The one Redis fixture: the integration tests use it as `kit::redis`, and the library's unit
//! tests (the store's behaviour suite, the redis engine's own tests) include this same file,
//! so it names nothing outside itself.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback port (the listener that found it is closed again).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener
        .local_addr()
        .expect("read the ephemeral port")
        .port()
}

/// One `redis-server` process.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    fn spawn(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            extra: extra.iter().map(|a| a.to_string()).collect(),
            dir: tempfile::tempdir().expect("a temp dir for redis"),
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        self.child = Some(child);
    }

    /// A standalone server, answering PING when this returns.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// A standalone server with more `redis-server` arguments (later ones win).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let server = RedisServer::spawn(extra);
        server.wait_for("PONG", &["PING"]).await;
        server
    }

    /// Kills the server (SIGKILL), as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        self.run();
        self.wait_for("PONG", &["PING"]).await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli on PATH (scripts/test installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn wait_for(&self, expected: &str, args: &[&str]) {
        for _ in 0..400 {
            if self.cli(args).contains(expected) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "redis on port {} never answered {expected:?} to {args:?}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters (no replicas), every slot covered.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                // The bus port would be port + 10000, which another node's free port may be.
                let bus = free_port().to_string();
                RedisServer::spawn(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                ])
            })
            .collect();
        for node in &nodes {
            node.wait_for("PONG", &["PING"]).await;
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for node in &nodes {
            node.wait_for("cluster_state:ok", &["CLUSTER", "INFO"])
                .await;
        }
        RedisCluster { nodes }
    }

    /// The `--storage` value naming every node.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// The port of the master that holds a key.
    pub fn owner_of(&self, key: &str) -> u16 {
        let slot: u64 = self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("a slot number");
        for node in &self.nodes {
            let nodes = node.cli(&["CLUSTER", "NODES"]);
            if nodes
                .lines()
                .any(|line| line.contains("myself") && serves(line, slot))
            {
                return node.port;
            }
        }
        panic!("no node serves slot {slot} of {key}");
    }
}

/// Whether a `CLUSTER NODES` line's slot ranges include `slot`.
fn serves(line: &str, slot: u64) -> bool {
    line.split_whitespace().skip(8).any(|range| {
        let mut ends = range.split('-').map(|n| n.parse::<u64>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), Some(Ok(b))) => (a..=b).contains(&slot),
            (Some(Ok(a)), None) => a == slot,
            _ => false,
        }
    })
}
