//! Private Redis servers for the tests: `redis-server` on free loopback ports, no
//! persistence, killed when dropped, a replica of one when asked; and a real 3-master Redis
//! Cluster made with `redis-cli --cluster create`, with replicas when asked. A node can be
//! paused (`SIGSTOP`), resumed, killed and started again, as in a failover.
//! `scripts/test` installs both programs when missing.
//!
//! The one Redis fixture: the integration tests use it as `kit::redis`, and the library's unit
//! tests (the store's behaviour suite, the redis engine's own tests) include this same file,
//! so it names nothing outside itself.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback port for a server of ours, never the same one twice in a process. Taken
/// below the kernel's ephemeral range (read from `/proc`), where no `bind(0)` of another test
/// and no outgoing connection's own port lands: a port found by `bind(0)` and closed again
/// could be handed out again at once, and a cluster asks for twelve in a row (a node that
/// found its port taken never answered). Starts at a random place, so that concurrent test
/// processes spread out; each candidate is bound once to check that it is free.
pub fn free_port() -> u16 {
    use std::hash::BuildHasher;
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12_000 {
        (10_000, ephemeral_low)
    } else {
        // An unusual range: anywhere the kernel hands out.
        (1024, u16::MAX)
    };
    let span = u64::from(high - low);
    let start = std::collections::hash_map::RandomState::new().hash_one(0u8) % span;
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        if !taken.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.push(port);
            return port;
        }
    }
    panic!("no free loopback port between {low} and {high}");
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

    /// A standalone server replicating `master`, its link up when this returns.
    pub async fn start_replica_of(master: &RedisServer) -> RedisServer {
        let replica = RedisServer::start().await;
        replica.replicate(master).await;
        replica
    }

    /// Makes this server a replica of `master` (`REPLICAOF`) and waits for the link.
    pub async fn replicate(&self, master: &RedisServer) {
        // Redis 7 waits 5 s before a diskless full sync, for more replicas to join it.
        master.cli(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
        self.cli(&["REPLICAOF", "127.0.0.1", &master.port.to_string()]);
        self.wait_for("master_link_status:up", &["INFO", "REPLICATION"])
            .await;
        master
            .wait_for("state=online", &["INFO", "REPLICATION"])
            .await;
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("redis is running")
    }

    /// Sends a signal (`STOP`, `CONT`, `KILL`…) to the process, as `kill -SIG` does.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill on PATH");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Pauses the process (`SIGSTOP`): its sockets stay open, it reads nothing.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes a paused process (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("CONT");
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
        self.wait_within(expected, args, Duration::from_secs(10))
            .await;
    }

    /// Polls `redis-cli ARGS` until its answer contains `expected`, for at most `limit`.
    pub async fn wait_within(&self, expected: &str, args: &[&str], limit: Duration) {
        let tries = limit.as_millis() / 25;
        for _ in 0..tries.max(1) {
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

/// A Redis Cluster of three masters, every slot covered, and as many replicas per master as
/// it was started with.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Three masters, no replica.
    pub async fn start() -> RedisCluster {
        RedisCluster::start_with_replicas(0, &[]).await
    }

    /// Three masters with `replicas` replicas each, every replica's link up when this
    /// returns; `extra` are more `redis-server` arguments for every node (such as a short
    /// `--cluster-node-timeout`).
    pub async fn start_with_replicas(replicas: usize, extra: &[&str]) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                // The bus port would be port + 10000, which another node's free port may be.
                let bus = free_port().to_string();
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                ];
                args.extend_from_slice(extra);
                RedisServer::spawn(&args)
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
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
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
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            if node.cli(&["ROLE"]).starts_with("slave") {
                node.wait_for("master_link_status:up", &["INFO", "REPLICATION"])
                    .await;
            }
        }
        cluster
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// The node listening on `port`, to kill or restart it.
    pub fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }

    /// The ports of the replicas of the master on `port`, by each node's `ROLE` (a replica
    /// answers `slave`, its master's host and port, its link state, its offset).
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| {
                let role = n.cli(&["ROLE"]);
                let lines: Vec<&str> = role.lines().map(str::trim).collect();
                lines.first() == Some(&"slave") && lines.get(2) == Some(&port.to_string().as_str())
            })
            .map(|n| n.port)
            .collect()
    }

    /// Waits until the node on `port` is a master with slots and the cluster is whole again
    /// (after a failover promoted it), polling: a failover's duration is not asserted.
    pub async fn wait_for_master(&self, port: u16) {
        let node = self.node(port);
        let limit = Duration::from_secs(60);
        node.wait_within("role:master", &["INFO", "REPLICATION"], limit)
            .await;
        node.wait_within("cluster_state:ok", &["CLUSTER", "INFO"], limit)
            .await;
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
