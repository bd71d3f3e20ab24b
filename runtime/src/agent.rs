//! `RUN --mount=type=ssh`: the step talks to a socket of its own, owned
//! and permitted as the mount asks (`uid`, `gid`, `mode`, as BuildKit
//! makes it), whose connections kiln passes on to the SSH agent of
//! `--ssh`. The agent's own socket never enters the sandbox.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::Error;

/// How often the proxy looks whether the step has ended.
const POLL: Duration = Duration::from_millis(20);

/// A proxy socket, serving until dropped.
pub struct AgentProxy {
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
    server: Option<JoinHandle<()>>,
}

impl AgentProxy {
    /// Listens at `socket` (which must not exist) for the agent at `agent`.
    pub fn start(
        socket: &Path,
        agent: &Path,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<AgentProxy, Error> {
        let listener = UnixListener::bind(socket).map_err(|e| Error::io(socket, e))?;
        std::os::unix::fs::chown(socket, Some(uid), Some(gid))
            .and_then(|()| std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode)))
            .and_then(|()| listener.set_nonblocking(true))
            .map_err(|e| Error::io(socket, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let agent = agent.to_path_buf();
        let server = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let agent = agent.clone();
                        std::thread::spawn(move || {
                            let _ = relay(client, &agent);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(_) => break,
                }
            }
        });
        Ok(AgentProxy {
            socket: socket.to_path_buf(),
            stop,
            server: Some(server),
        })
    }
}

/// Passes bytes both ways between a step's connection and the agent until
/// either side closes.
fn relay(client: UnixStream, agent: &Path) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let upstream = UnixStream::connect(agent)?;
    let (mut client_reader, mut upstream_writer) = (client.try_clone()?, upstream.try_clone()?);
    let to_agent = std::thread::spawn(move || {
        let _ = io::copy(&mut client_reader, &mut upstream_writer);
        let _ = upstream_writer.shutdown(std::net::Shutdown::Write);
    });
    let (mut upstream_reader, mut client_writer) = (upstream, client);
    let _ = io::copy(&mut upstream_reader, &mut client_writer);
    let _ = client_writer.shutdown(std::net::Shutdown::Write);
    let _ = to_agent.join();
    Ok(())
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn connections_reach_the_agent_through_a_socket_of_the_asked_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent.sock");
        let agent = UnixListener::bind(&agent_path).unwrap();
        let echo = std::thread::spawn(move || {
            let (mut stream, _) = agent.accept().unwrap();
            let mut request = [0u8; 5];
            stream.read_exact(&mut request).unwrap();
            stream.write_all(&request).unwrap();
        });
        let proxy_path = dir.path().join("proxy.sock");
        let proxy = AgentProxy::start(&proxy_path, &agent_path, 0, 0, 0o600).unwrap();
        let metadata = std::fs::metadata(&proxy_path).unwrap();
        assert_eq!(metadata.mode() & 0o777, 0o600);
        let mut client = UnixStream::connect(&proxy_path).unwrap();
        client.write_all(b"hello").unwrap();
        let mut reply = [0u8; 5];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"hello");
        echo.join().unwrap();
        drop(proxy);
        assert!(!proxy_path.exists(), "the socket goes with the proxy");
    }
}
