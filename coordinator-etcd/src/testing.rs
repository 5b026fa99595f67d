//! A real etcd for tests: one member on loopback in a temporary directory, stopped on drop,
//! that a test can pause (SIGSTOP) to make the coordinator unavailable.
//!
//! It runs the `etcd` binary of Debian's `etcd-server` package; without it, starting fails
//! with a message that names the package (tests never skip silently).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running etcd member.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    client_port: u16,
    _dir: Option<TempDir>,
}

/// PEM files for an etcd that requires mutual TLS from its clients.
#[derive(Clone, Debug)]
pub struct EtcdTlsFiles {
    /// The CA that signs client certificates (and etcd's own).
    pub ca: PathBuf,
    /// etcd's certificate (valid for 127.0.0.1).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// A directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A member's client and peer ports.
#[derive(Clone, Copy, Debug)]
struct Ports {
    client: u16,
    peer: u16,
}

impl Ports {
    fn free() -> Result<Ports, String> {
        Ok(Ports {
            client: free_port().map_err(|e| e.to_string())?,
            peer: free_port().map_err(|e| e.to_string())?,
        })
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The etcd binary: `$ETCD_BIN`, or `etcd` on the `PATH`.
fn etcd_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "the etcd binary was not found on PATH: install Debian's etcd-server package \
             (apt-get install etcd-server), or set ETCD_BIN"
                .to_string()
        })
}

impl EtcdServer {
    /// Starts a single-member etcd on free loopback ports, in a new directory under the
    /// system's temporary directory, and waits until it answers.
    ///
    /// # Errors
    /// No etcd binary (the message names the package), or etcd did not come up.
    pub fn start() -> Result<EtcdServer, String> {
        EtcdServer::start_tls(None)
    }

    /// [`start`](EtcdServer::start), requiring mutual TLS from clients when `tls` is given.
    ///
    /// # Errors
    /// As [`start`](EtcdServer::start).
    pub fn start_tls(tls: Option<&EtcdTlsFiles>) -> Result<EtcdServer, String> {
        let unique = format!(
            "repnode-etcd-{}-{}",
            std::process::id(),
            free_port().map_err(|e| e.to_string())?
        );
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let dir = TempDir(dir);
        let mut server = EtcdServer::start_in(&dir.0, tls)?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Starts a single-member etcd whose data lives in `dir`, requiring mutual TLS from
    /// clients when `tls` is given.
    ///
    /// # Errors
    /// As [`start`](EtcdServer::start).
    pub fn start_in(dir: &Path, tls: Option<&EtcdTlsFiles>) -> Result<EtcdServer, String> {
        let ports = Ports::free()?;
        let initial = format!("test=http://127.0.0.1:{}", ports.peer);
        let mut server = EtcdServer::spawn(dir, "test", ports, &initial, tls)?;
        server.wait_ready(dir, tls.is_some())?;
        Ok(server)
    }

    /// Spawns member `name` of the cluster `initial` (`name=PEER_URL,...`), its data and log
    /// in `dir`.
    fn spawn(
        dir: &Path,
        name: &str,
        ports: Ports,
        initial: &str,
        tls: Option<&EtcdTlsFiles>,
    ) -> Result<EtcdServer, String> {
        let binary = etcd_binary()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", ports.client);
        let peer = format!("http://127.0.0.1:{}", ports.peer);
        let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
        let mut command = Command::new(&binary);
        if let Some(tls) = tls {
            command
                .arg("--client-cert-auth")
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()));
        }
        let child = command
            .arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={initial}"))
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        Ok(EtcdServer {
            child,
            client_port: ports.client,
            _dir: None,
        })
    }

    /// Waits until the client port accepts connections and the member is healthy (under
    /// TLS, until the port accepts connections: the client's calls retry).
    fn wait_ready(&mut self, dir: &Path, tls: bool) -> Result<(), String> {
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
                return Err(format!("etcd exited ({status}): {log}"));
            }
            let port_open = std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok();
            if tls && port_open {
                return Ok(());
            }
            let health = std::net::TcpStream::connect(("127.0.0.1", self.client_port)).and_then(
                |mut stream| {
                    use std::io::{Read, Write};
                    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                    stream.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
                    let mut answer = String::new();
                    stream.read_to_string(&mut answer)?;
                    Ok(answer)
                },
            );
            if health.is_ok_and(|answer| answer.contains("\"health\":\"true\"")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("etcd did not become healthy within 10 s".into())
    }

    /// `127.0.0.1:PORT` of its client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Freezes etcd (SIGSTOP): calls hang, as when it is unreachable. Returns once the
    /// kernel reports it stopped.
    ///
    /// # Panics
    /// When it does not stop within 10 seconds.
    pub fn pause(&self) {
        self.signal("-STOP");
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            // The state is the field after the parenthesised command name.
            let stopped = std::fs::read_to_string(&stat).is_ok_and(|text| {
                text.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            });
            if stopped {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "etcd (pid {}) did not stop within 10 s of SIGSTOP",
            self.child.id()
        );
    }

    /// Lets a paused etcd run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status();
    }
}

/// A three-member (or larger) etcd cluster on loopback, for tests where etcd's own quorum
/// matters: one member may be lost and the coordinator goes on.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Option<EtcdServer>>,
    endpoints: Vec<String>,
    _dir: TempDir,
}

impl EtcdCluster {
    /// Starts `size` members and waits until each answers as healthy.
    ///
    /// # Errors
    /// As [`EtcdServer::start`].
    pub fn start(size: usize) -> Result<EtcdCluster, String> {
        let unique = format!(
            "repnode-etcd-cluster-{}-{}",
            std::process::id(),
            free_port().map_err(|e| e.to_string())?
        );
        let root = TempDir(std::env::temp_dir().join(unique));
        let ports: Vec<Ports> = (0..size).map(|_| Ports::free()).collect::<Result<_, _>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{}", p.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, ports) in ports.iter().enumerate() {
            let dir = root.0.join(format!("m{i}"));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            members.push(EtcdServer::spawn(
                &dir,
                &format!("m{i}"),
                *ports,
                &initial,
                None,
            )?);
        }
        // Each answers healthy only once a quorum of them runs: all were started first.
        for (i, member) in members.iter_mut().enumerate() {
            member.wait_ready(&root.0.join(format!("m{i}")), false)?;
        }
        Ok(EtcdCluster {
            endpoints: members.iter().map(EtcdServer::endpoint).collect(),
            members: members.into_iter().map(Some).collect(),
            _dir: root,
        })
    }

    /// Every member's `127.0.0.1:PORT`, comma separated, as `--coordinator etcd=` takes them.
    pub fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    /// Kills member `index` (SIGKILL): the others keep etcd's quorum.
    pub fn kill(&mut self, index: usize) {
        self.members[index] = None;
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
