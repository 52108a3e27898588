//! Test backends for the conformance suite: a local store in a temp dir, and an S3 store on a
//! real S3-speaking server on loopback (moto_server from the venv `scripts/test-env.sh` builds,
//! or the one `LORAFORGE_TEST_S3_ENDPOINT` names). Each S3 test gets a fresh bucket; tests
//! running at the same time share one moto_server, killed when the last of them drops it.

pub mod sigv4;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use loraforge_storage::local::LocalStore;
use loraforge_storage::s3::{S3Settings, S3Store};
use loraforge_storage::BlobStore;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use secrecy::{SecretSlice, SecretString};
use url::Url;

pub const ACCESS_KEY: &str = "testing";
pub const SECRET_KEY: &str = "testing";
pub const REGION: &str = "us-east-1";
/// Every S3 test store works under this prefix, so every story also checks prefixing.
pub const S3_PREFIX: &str = "tenant-a/blobs";
/// How long moto_server may take to start answering (Python start-up on a busy 2-core box).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A store under test plus what the stories need to look behind it.
pub struct Backend {
    pub store: Arc<dyn BlobStore>,
    pub kind: Kind,
}

pub enum Kind {
    Local {
        /// The store's root folder.
        root: PathBuf,
        /// Its parent, which nothing but `root` should appear in.
        _dir: tempfile::TempDir,
    },
    S3 {
        /// The same bucket without our prefix, to see where objects really land.
        raw: Arc<dyn ObjectStore>,
        _server: Arc<S3Server>,
    },
}

pub fn local_backend() -> Backend {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("blobs");
    let base = Url::parse("http://127.0.0.1:9/lf/").expect("url");
    let key = SecretSlice::from(b"conformance-signing-key-32-bytes!".to_vec());
    let store = LocalStore::new(&root, base, key).expect("local store");
    Backend { store: Arc::new(store), kind: Kind::Local { root, _dir: dir } }
}

pub async fn s3_backend() -> Backend {
    let server = S3Server::shared();
    let bucket = server.create_bucket().await;
    let settings = S3Settings {
        endpoint: Some(server.endpoint.clone()),
        region: REGION.into(),
        access_key_id: Some(ACCESS_KEY.into()),
        secret_access_key: Some(SecretString::from(SECRET_KEY)),
        allow_http: true,
        path_style: true,
        ..S3Settings::from_url(&format!("s3://{bucket}/{S3_PREFIX}")).expect("settings")
    };
    let store = S3Store::new(&settings).expect("s3 store");
    let raw = AmazonS3Builder::new()
        .with_endpoint(server.endpoint.as_str().trim_end_matches('/'))
        .with_bucket_name(&bucket)
        .with_region(REGION)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .expect("raw s3 client");
    Backend { store: Arc::new(store), kind: Kind::S3 { raw: Arc::new(raw), _server: server } }
}

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
        let mut slot = SHARED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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
            return S3Server { endpoint, child: None };
        }
        let cache = std::env::var_os("LORAFORGE_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is not set");
            PathBuf::from(home).join(".cache/loraforge")
        });
        let venv = cache.join("venv-test");
        let python = venv.join("bin/python");
        assert!(
            venv.join("bin/moto_server").is_file() && venv.join(".loraforge-pins").is_file(),
            "the S3 conformance tests need moto_server, and {} has none (or is half-built): \
             run scripts/test-env.sh from the repository root, or set \
             LORAFORGE_TEST_S3_ENDPOINT to a running S3-compatible server on 127.0.0.1",
            venv.display()
        );
        // The port we pick can be taken between our probe and moto's bind; try a few.
        let mut last_error = String::new();
        for _ in 0..3 {
            match spawn_moto(&python) {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("moto_server did not start: {last_error}");
    }

    /// Makes a new, empty bucket (moto accepts an unsigned CreateBucket).
    async fn create_bucket(&self) -> String {
        let n = BUCKETS.fetch_add(1, Ordering::Relaxed);
        let bucket = format!("lf-test-{}-{n}", std::process::id());
        let url = self.endpoint.join(&bucket).expect("bucket url");
        let response = reqwest::Client::new().put(url).send().await.expect("CreateBucket request");
        assert!(response.status().is_success(), "CreateBucket {bucket}: {}", response.status());
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

/// Starts moto_server on a free loopback port and waits (bounded) until it answers HTTP.
///
/// It runs through the venv's Python rather than the `moto_server` script so that a watcher
/// thread can end it when our stdin pipe closes: if this test process dies without running
/// `Drop` (abort, SIGKILL, a static never dropped), moto still goes with it instead of lingering.
fn spawn_moto(python: &std::path::Path) -> Result<S3Server, String> {
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
            return Err(format!("moto_server exited with {status} (port {port} taken?)"));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() && answers_as_moto(port) {
            return Ok(server);
        }
        if Instant::now() >= deadline {
            return Err(format!("no answer on {addr} within {START_DEADLINE:?}"));
        }
        // Bounded readiness polling: the one place the suite waits on time.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True once the listener is moto's (its API answers), not some other process on the port.
fn answers_as_moto(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /moto-api/data.json HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    // "HTTP/1.x 200"
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[8..] == b" 200"
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}
