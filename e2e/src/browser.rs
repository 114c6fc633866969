//! A real headless browser for tests: Chromium (Debian's `chromium`, installed by
//! `scripts/test`), driven over the DevTools protocol — evaluate JavaScript in the page,
//! take screenshots.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

/// The Chromium binary: `$SLUICE_CHROMIUM`, else `chromium` on the PATH.
pub fn chromium() -> PathBuf {
    std::env::var_os("SLUICE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "chromium".into())
}

/// A headless Chromium with one page open, killed on drop.
pub struct Browser {
    child: Child,
    page: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a page of `width`×`height` CSS pixels, on `about:blank`.
    pub fn start(width: u32, height: u32) -> Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                // Tests run as root, where Chromium's sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (install Debian's chromium, or set SLUICE_CHROMIUM)",
                    chromium().display()
                )
            })?;
        // Chromium says where its DevTools listen on stderr.
        let stderr = child.stderr.take().context("chromium's stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let browser_url = rx
            .recv_timeout(Duration::from_secs(30))
            .context("chromium did not open its DevTools port within 30 s")?;
        let port = browser_url
            .strip_prefix("ws://127.0.0.1:")
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| anyhow!("unexpected DevTools address {browser_url}"))?;
        let page_url = page_socket(port)?;
        let (page, _) = tungstenite::connect(&page_url).context("connect to the page")?;
        // A browser that stops answering fails the test instead of hanging it.
        if let MaybeTlsStream::Plain(s) = page.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
        }
        Ok(Browser {
            child,
            page,
            next_id: 0,
            _profile: profile,
        })
    }

    /// Calls DevTools method `method` of the page and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        self.page.send(Message::text(
            json!({"id": id, "method": method, "params": params}).to_string(),
        ))?;
        loop {
            let message = self
                .page
                .read()
                .with_context(|| format!("waiting for the answer to {method}"))?;
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text)?;
            // Events and other calls' replies are not ours.
            if reply["id"] != id {
                continue;
            }
            if let Some(error) = reply.get("error") {
                bail!("{method}: {error}");
            }
            return Ok(reply["result"].clone());
        }
    }

    /// Loads `url` in the page.
    pub fn open(&mut self, url: &str) -> Result<()> {
        self.call("Page.enable", json!({}))?;
        let result = self.call("Page.navigate", json!({"url": url}))?;
        if let Some(e) = result["errorText"].as_str() {
            bail!("cannot open {url}: {e}");
        }
        Ok(())
    }

    /// The value of the JavaScript expression `expr` in the page (awaited when a promise).
    pub fn eval(&mut self, expr: &str) -> Result<Value> {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = result.get("exceptionDetails") {
            bail!("{expr}: {e}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expr` until it is true or `timeout` passes. An exception counts as "not
    /// yet" (the page may still be loading); the last one is in the timeout's message.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.eval(expr) {
                Ok(Value::Bool(true)) => return Ok(()),
                Ok(v) => format!("it is {v}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("{expr} still not true after {timeout:?}: {last}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Saves a PNG of the whole page at `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )?;
        let data = shot["data"].as_str().context("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The DevTools WebSocket address of the first page of the browser on `port`.
fn page_socket(port: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let targets = targets(port.parse()?).unwrap_or_default();
        let found = serde_json::from_str::<Value>(&targets).ok().and_then(|v| {
            v.as_array()?
                .iter()
                .find(|t| t["type"] == "page")?
                .get("webSocketDebuggerUrl")?
                .as_str()
                .map(String::from)
        });
        if let Some(url) = found {
            return Ok(url);
        }
        if Instant::now() > deadline {
            bail!("chromium opened no page: {targets}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The body of `GET /json/list` on DevTools' HTTP port, which keeps the connection open: read
/// up to its `Content-Length`.
fn targets(port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    // DevTools builds the page's WebSocket address from the Host header.
    write!(
        s,
        "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut reader = BufReader::new(s);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8(body)?)
}
