//! Control-plane sockets: where rank 0 listens, socket options (socket2), connecting with
//! retries while rank 0 starts, and the preamble exchange both sides begin with.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};

use super::protocol::{check_preamble, preamble};
use super::{ClusterError, Timing};

/// Rank 0's control address: the IP of its first `MLX_HOSTFILE` entry, and `port`, or else
/// one above the highest port in the hostfile.
pub fn control_addr(hosts: &[Vec<String>], port: Option<u16>) -> Result<SocketAddr, ClusterError> {
    let first = hosts
        .first()
        .and_then(|a| a.first())
        .ok_or_else(|| ClusterError::Config("MLX_HOSTFILE lists no address for rank 0".into()))?;
    let mut addr: SocketAddr = first.parse().map_err(|_| {
        ClusterError::Config(format!(
            "rank 0's MLX_HOSTFILE address {first:?} is not an ip:port (the ring backend needs IPs)"
        ))
    })?;
    let port = match port {
        Some(p) => p,
        None => {
            let highest = hosts
                .iter()
                .flatten()
                .filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()))
                .max()
                .unwrap_or(0);
            highest.checked_add(1).ok_or_else(|| {
                ClusterError::Config(
                    "MLX_HOSTFILE uses port 65535, so no control port follows it; pass --control-port"
                        .into(),
                )
            })?
        }
    };
    addr.set_port(port);
    Ok(addr)
}

/// Rank 0's control address under nccl: `NCCL_HOST_IP` (an IP or a host name) and `port`,
/// or else the port one above `NCCL_PORT` (where NCCL's unique id is handed out).
pub fn nccl_control_addr(
    host: &str,
    nccl_port: u16,
    port: Option<u16>,
) -> Result<SocketAddr, ClusterError> {
    use std::net::ToSocketAddrs;
    let port = match port {
        Some(p) => p,
        None => nccl_port.checked_add(1).ok_or_else(|| {
            ClusterError::Config(
                "NCCL_PORT is 65535, so no control port follows it; pass --control-port".into(),
            )
        })?,
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| {
            ClusterError::Config(format!(
                "NCCL_HOST_IP {host:?} does not resolve to an address"
            ))
        })
}

/// Low latency for the tiny op frames, keepalive so a vanished host is noticed by the
/// kernel too, and timeouts so no read or write blocks forever.
pub fn configure(stream: &TcpStream, timing: &Timing) -> std::io::Result<()> {
    let sock = SockRef::from(stream);
    sock.set_tcp_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    sock.set_tcp_keepalive(&keepalive)?;
    stream.set_read_timeout(Some(timing.peer_timeout))?;
    stream.set_write_timeout(Some(timing.peer_timeout))?;
    Ok(())
}

/// Rank 0's listener (SO_REUSEADDR, so a quick restart does not trip on TIME_WAIT).
pub fn listen(addr: SocketAddr) -> Result<TcpListener, ClusterError> {
    let io = |source| {
        ClusterError::Io {
        what: format!(
            "listening for the other ranks on {addr} (the control port; choose another with --control-port)"
        ),
        source,
    }
    };
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(io)?;
    sock.set_reuse_address(true).map_err(io)?;
    sock.bind(&addr.into()).map_err(io)?;
    sock.listen(64).map_err(io)?;
    Ok(sock.into())
}

/// Connects to rank 0, retrying (it may still be starting) until `deadline`.
pub fn connect(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, ClusterError> {
    let mut wait = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(
            &addr,
            left.clamp(Duration::from_millis(10), Duration::from_secs(2)),
        ) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() + wait >= deadline => {
                return Err(ClusterError::Startup(format!(
                    "rank 0's control plane at {addr} did not accept a connection in time ({e}); \
                     is rank 0 running with the same MLX_HOSTFILE and --control-port?"
                )))
            }
            Err(_) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Sends our preamble, reads and checks the peer's.
pub fn exchange_preamble(stream: &mut TcpStream) -> Result<(), ClusterError> {
    stream
        .write_all(&preamble())
        .and_then(|_| stream.flush())
        .map_err(|source| ClusterError::Io {
            what: "sending the control-plane preamble".into(),
            source,
        })?;
    let mut theirs = [0u8; 12];
    stream
        .read_exact(&mut theirs)
        .map_err(|source| ClusterError::Io {
            what: "reading the peer's control-plane preamble".into(),
            source,
        })?;
    check_preamble(&theirs).map_err(ClusterError::Protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nccl_control_port_follows_nccl_port() {
        let addr = nccl_control_addr("127.0.0.1", 12345, None).unwrap();
        assert_eq!(addr, "127.0.0.1:12346".parse().unwrap());
        let addr = nccl_control_addr("localhost", 12345, Some(7000)).unwrap();
        assert_eq!(addr.port(), 7000);
        let err = nccl_control_addr("127.0.0.1", 65535, None).unwrap_err();
        assert!(err.to_string().contains("--control-port"), "{err}");
        let err = nccl_control_addr("no-such-host.invalid", 1, None).unwrap_err();
        assert!(err.to_string().contains("does not resolve"), "{err}");
    }

    fn hosts(list: &[&[&str]]) -> Vec<Vec<String>> {
        list.iter()
            .map(|r| r.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn the_control_port_follows_the_ring_ports() {
        let h = hosts(&[&["10.0.0.1:32323"], &["10.0.0.2:32324"]]);
        assert_eq!(
            control_addr(&h, None).unwrap(),
            "10.0.0.1:32325".parse().unwrap()
        );
        assert_eq!(
            control_addr(&h, Some(9000)).unwrap(),
            "10.0.0.1:9000".parse().unwrap()
        );
        let two = hosts(&[
            &["10.0.0.1:40100", "10.0.0.1:40101"],
            &["10.0.0.2:40102", "10.0.0.2:40103"],
        ]);
        assert_eq!(control_addr(&two, None).unwrap().port(), 40104);
        let v6 = hosts(&[&["[::1]:5000"], &["[::1]:5001"]]);
        assert_eq!(
            control_addr(&v6, None).unwrap(),
            "[::1]:5002".parse().unwrap()
        );
        assert!(control_addr(&hosts(&[&["10.0.0.1:65535"]]), None).is_err());
        assert!(control_addr(&hosts(&[&["node1:5000"]]), None).is_err());
    }

    #[test]
    fn preambles_are_exchanged_and_checked() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            exchange_preamble(&mut s)
        });
        let mut c = connect(addr, Instant::now() + Duration::from_secs(5)).unwrap();
        exchange_preamble(&mut c).unwrap();
        t.join().unwrap().unwrap();

        // Something that is not kooka gets a clear error, not a hang or a panic.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"HTTP/1.1 400").unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        let err = exchange_preamble(&mut c).unwrap_err().to_string();
        assert!(err.contains("not a kooka control plane"), "{err}");
        t.join().unwrap();
    }
}
