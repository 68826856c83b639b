//! A real browser for the review page's tests: chromedriver on a free loopback port driving
//! headless Chromium, through fantoccini. Without chromedriver the tests skip with a message,
//! except under CI (the `CI` variable set), where they fail: CI installs `chromium` and
//! `chromium-driver`, so a missing browser there is a broken set-up, never a silent skip.

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

/// How long chromedriver may take to listen.
const DRIVER_START: Duration = Duration::from_secs(20);

/// Where screenshots go: under `target/`, never committed.
pub fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A chromedriver process, killed when dropped.
pub struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The chromedriver on `PATH` (or in `CHROMEDRIVER`), started; `None` (with a message on
/// stderr) when there is none and `CI` is unset.
pub fn driver() -> Option<Driver> {
    let Some(program) = find_chromedriver() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "chromedriver is not installed, and CI is set: install the Debian packages chromium and chromium-driver"
            );
        }
        let message = "SKIPPED: chromedriver is not installed (apt-get install chromium chromium-driver): \
                       no browser test ran";
        // Straight to the process's stderr: the test harness hides what a passing test prints.
        match std::fs::OpenOptions::new().append(true).open("/dev/stderr") {
            Ok(mut stderr) => drop(writeln!(stderr, "{message}")),
            Err(_) => eprintln!("{message}"),
        }
        return None;
    };
    let port = StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = std::fs::File::create(artifacts().join("chromedriver.log")).unwrap();
    let child = Command::new(&program)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let driver = Driver { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
    let deadline = Instant::now() + DRIVER_START;
    while StdStream::connect(driver.addr).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen on {} within {DRIVER_START:?}", driver.addr);
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(driver)
}

fn find_chromedriver() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMEDRIVER") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("chromedriver")).find(|p| p.is_file())
}

impl Driver {
    /// A new headless Chromium session, `width` x `height` CSS pixels (a phone's screen when
    /// narrower than 500).
    pub async fn browser(&self, width: u32, height: u32) -> Client {
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
        ];
        args.push("--force-device-scale-factor=1".into());
        let mut options = json!({ "args": args });
        if width < 500 {
            // A desktop window is at least 500 pixels wide: a phone is emulated.
            let metrics = json!({ "width": width, "height": height, "pixelRatio": 1 });
            options["mobileEmulation"] = json!({ "deviceMetrics": metrics });
        }
        if Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), options);
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://{}", self.addr))
            .await
            .expect("a headless Chromium session")
    }
}

/// The text of the first element matching `css` once it contains `expected`, waiting for the
/// page to get there (a click's navigation may still be under way).
pub async fn wait_text(browser: &Client, css: &str, expected: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if text.contains(expected) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css} never contained {expected:?}; last seen: {last:?}");
}

/// Save a screenshot of the page under [`artifacts`] and return its path.
pub async fn screenshot(browser: &Client, name: &str) -> PathBuf {
    let png = browser.screenshot().await.unwrap();
    let path = artifacts().join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
    path
}
