//! Socket activation (SPEC B1, B7 "SIGTERM"): the real binary serves on a socket passed as
//! `LISTEN_FDS`/`LISTEN_FDNAMES`, under systemd's own `systemd-socket-activate` and on a socket
//! this test holds like systemd does; replacing the process under load refuses no request.

mod common;

use common::binary::{wrapped_command, Served, Setup};
use shoptet_proxy::sim::testing::{TestClient, WebhookReceiver};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ESHOP: u64 = 222651;

/// One proxied call on a connection of its own (`Connection: close`), so that no pooled
/// connection can be caught mid-close by a drain: the status, or why there is none.
async fn call_once(addr: SocketAddr, auth: &str) -> Result<u16, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "GET /eshops/{ESHOP}/api/eshop HTTP/1.1\r\nHost: proxy\r\nProxy-Authorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| "no answer within 20 s".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    let head = String::from_utf8_lossy(&answer);
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_the_socket_systemd_socket_activate_passes() {
    let Some(activate) =
        common::binary::tool("systemd-socket-activate", "SHOPTET_PROXY_REQUIRE_SYSTEMD")
    else {
        return;
    };
    let addon = WebhookReceiver::start().await;
    let setup = Setup::new(&addon.url(""), "5s").await;
    setup.install(ESHOP).await;
    // A free port for systemd-socket-activate to listen on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let cmd = wrapped_command(
        setup.dir.path(),
        &[
            activate.to_str().expect("path"),
            "-l",
            &listen,
            "--fdname=proxy",
        ],
    );
    let auth = setup.client_auth();
    let addr: SocketAddr = listen.parse().expect("addr");
    // systemd-socket-activate starts the proxy on the first connection; that connection waits
    // in the backlog and is the first one the proxy answers.
    let (tx, rx) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Handle::current();
    let first_auth = auth.clone();
    let served = tokio::task::block_in_place(|| {
        Served::spawn(cmd, &setup.config, move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(addr).is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "nothing listens on {addr}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            // That probe connection already started the proxy; this call is answered by it.
            runtime.spawn(async move {
                let _ = tx.send(call_once(addr, &first_auth).await);
            });
        })
    });
    assert_eq!(served.proxy, addr, "the proxy listens on the passed socket");
    let first = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .expect("join")
        .expect("the first call's answer");
    assert_eq!(first, Ok(200));
    let http = TestClient::new();
    let r = http
        .get(
            &format!("http://{addr}/eshops/{ESHOP}/api/eshop"),
            &[("proxy-authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    served.signal("TERM");
    let (status, out, err) = served.finish(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit {status}\n{}\n{}",
        out.join("\n"),
        err.join("\n")
    );
    assert!(
        out.iter()
            .any(|l| l.contains("using the socket systemd passed")),
        "{}",
        out.join("\n")
    );
}

/// `serve` on `socket` as systemd starts it: the socket at fd 3, `LISTEN_FDS=1`,
/// `LISTEN_FDNAMES=proxy`, and `LISTEN_PID` the process's own id (set by a shell that then
/// execs the proxy, keeping its pid).
fn serve_on(setup: &Setup, socket: &std::net::TcpListener) -> Served {
    let mut cmd = wrapped_command(
        setup.dir.path(),
        &["/bin/sh", "-c", r#"LISTEN_PID=$$ exec "$@""#, "sh"],
    );
    cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "proxy");
    let fd = socket.as_raw_fd();
    // Safety: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            if fd == 3 {
                // dup2 onto itself keeps close-on-exec; clear it instead.
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Served::spawn(cmd, &setup.config, || {})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_process_on_a_passed_socket_fails_no_request() {
    const TOTAL: usize = 1000;
    const CLIENTS: usize = 16;
    let addon = WebhookReceiver::start().await;
    // No leaky bucket: 1,000 calls for one e-shop would otherwise be paced for a minute.
    let setup = Setup::with_sim(&addon.url(""), "10s", |c| {
        c.latency = Duration::from_millis(5);
        c.bucket = false;
    })
    .await;
    setup.install(ESHOP).await;
    // Held here for the whole test, as systemd holds the sockets of a .socket unit.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    let first = tokio::task::block_in_place(|| serve_on(&setup, &socket));
    assert_eq!(first.proxy, addr);

    let auth = setup.client_auth();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, done, auth) = (next.clone(), done.clone(), auth.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < TOTAL {
                    match call_once(addr, &auth).await {
                        Ok(200) => {}
                        other => failures.push(other),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                failures
            })
        })
        .collect();

    // Mid-load: stop the first process, then start the second on the same socket, as
    // `systemctl restart` does.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < TOTAL / 3 {
        assert!(std::time::Instant::now() < deadline, "load stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.signal("TERM");
    let (status, first_out, _) =
        tokio::task::block_in_place(|| first.finish(Duration::from_secs(20)));
    assert!(status.success(), "first process: exit {status}");
    let during_gap = done.load(Ordering::Relaxed);
    let second = tokio::task::block_in_place(|| serve_on(&setup, &socket));
    assert_eq!(second.proxy, addr);

    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.expect("client task"));
    }
    second.signal("TERM");
    let (status, second_out, _) =
        tokio::task::block_in_place(|| second.finish(Duration::from_secs(20)));
    assert!(status.success(), "second process: exit {status}");
    let served_by = |out: &[String]| {
        out.iter()
            .filter(|l| l.contains(r#""target":"access""#))
            .count()
    };
    let (a, b) = (served_by(&first_out), served_by(&second_out));
    println!("first process answered {a}, second {b}; {during_gap} done when the first exited");
    assert_eq!(
        failures,
        Vec::<Result<u16, String>>::new(),
        "failed requests"
    );
    assert_eq!(
        a + b,
        TOTAL,
        "every request answered by one of the processes"
    );
    assert!(a > 0 && b > 0, "both processes served: {a} and {b}");
}
