//! For tests of this and other crates (feature `test-support`): a real S3-speaking server on
//! loopback — moto_server from the venv `scripts/test-env.sh` builds, or the server
//! `LORAFORGE_TEST_S3_ENDPOINT` names — and fresh buckets on it. Tests running at the same time
//! share one moto_server, killed when the last of them drops it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use url::Url;

/// moto accepts any credentials; these are the ones the tests sign with.
pub const ACCESS_KEY: &str = "testing";
pub const SECRET_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";
/// How long moto_server may take to start answering (Python start-up on a busy 2-core box).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// An S3 endpoint on loopback; when we started it, the moto_server process dies with this.
pub struct S3Server {
    pub endpoint: Url,
    child: Option<Child>,
}

static SHARED: Mutex<Weak<S3Server>> = Mutex::new(Weak::new());
static BUCKETS: AtomicU32 = AtomicU32::new(0);

impl S3Server {
    /// The running server, started if no test holds one.
    pub fn shared() -> Arc<S3Server> {
        // A test that panicked while holding the lock leaves nothing half-done behind it.
        let mut slot = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(server) = slot.upgrade() {
            return server;
        }
        let server = Arc::new(Self::start());
        *slot = Arc::downgrade(&server);
        server
    }

    fn start() -> S3Server {
        if let Ok(endpoint) = std::env::var("LORAFORGE_TEST_S3_ENDPOINT") {
            let endpoint = Url::parse(&endpoint).expect("LORAFORGE_TEST_S3_ENDPOINT must be a URL");
            let host = endpoint.host_str().unwrap_or_default();
            assert!(
                host == "127.0.0.1" || host == "localhost",
                "tests only reach loopback; LORAFORGE_TEST_S3_ENDPOINT is {endpoint}"
            );
            return S3Server {
                endpoint,
                child: None,
            };
        }
        let venv = test_venv();
        assert!(
            venv.join("bin/moto_server").is_file() && venv.join(".loraforge-pins").is_file(),
            "the S3 tests need moto_server, and {} has none (or is half-built): run \
             scripts/test-env.sh from the repository root, or set LORAFORGE_TEST_S3_ENDPOINT to \
             a running S3-compatible server on 127.0.0.1",
            venv.display()
        );
        // The port we pick can be taken between our probe and moto's bind; try a few.
        let mut last_error = String::new();
        for _ in 0..3 {
            match spawn_moto(&venv.join("bin/python")) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("moto_server did not start: {last_error}");
    }

    /// Makes a new, empty bucket and returns its name (moto accepts an unsigned CreateBucket).
    pub fn create_bucket(&self) -> String {
        let n = BUCKETS.fetch_add(1, Ordering::Relaxed);
        let bucket = format!("lf-test-{}-{n}", std::process::id());
        let status = http_status(&self.endpoint, "PUT", &format!("/{bucket}"));
        assert_eq!(
            status,
            Some(200),
            "CreateBucket {bucket} on {}",
            self.endpoint
        );
        bucket
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The venv `scripts/test-env.sh` builds: `${LORAFORGE_CACHE:-$HOME/.cache/loraforge}/venv-test`.
/// Its `bin/python` runs moto_server and the tests' Python helpers (botocore is pinned there).
/// Only the path; nothing checks that it exists.
pub fn test_venv() -> PathBuf {
    let cache = std::env::var_os("LORAFORGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is not set");
            PathBuf::from(home).join(".cache/loraforge")
        });
    cache.join("venv-test")
}

/// Starts moto_server on a free loopback port and waits (bounded) until it answers HTTP.
///
/// It runs through the venv's Python rather than the `moto_server` script so that a watcher
/// thread can end it when our stdin pipe closes: if the test process dies without running
/// `Drop` (abort, SIGKILL, a static never dropped), moto still goes with it instead of lingering.
fn spawn_moto(python: &Path) -> Result<S3Server, String> {
    const LAUNCH: &str = "import os, sys, threading\n\
        threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()\n\
        from moto.server import main\n\
        main(sys.argv[1:])\n";
    let port = free_port();
    let child = Command::new(python)
        .args(["-c", LAUNCH, "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let mut server = S3Server {
        endpoint: Url::parse(&format!("http://127.0.0.1:{port}/")).expect("url"),
        child: Some(child),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(child) = &mut server.child
            && let Ok(Some(status)) = child.try_wait()
        {
            return Err(format!(
                "moto_server exited with {status} (port {port} taken?)"
            ));
        }
        // Once its API answers, the listener is moto's and not some other process on the port.
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            && http_status(&server.endpoint, "GET", "/moto-api/data.json") == Some(200)
        {
            return Ok(server);
        }
        if Instant::now() >= deadline {
            return Err(format!("no answer on {addr} within {START_DEADLINE:?}"));
        }
        // Bounded readiness polling: the one place these tests wait on time.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status code of a bodiless request, over a plain blocking socket (no client needed).
fn http_status(endpoint: &Url, method: &str, path: &str) -> Option<u16> {
    let host = endpoint.host_str()?;
    let port = endpoint.port_or_known_default()?;
    let mut stream = TcpStream::connect((host, port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    // "HTTP/1.x 200"
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    head.starts_with(b"HTTP/1.")
        .then(|| std::str::from_utf8(&head[9..12]).ok()?.parse().ok())
        .flatten()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
