//! A headless Chromium (Debian's `chromium`, installed by
//! `scripts/test-deps.sh`) driven over the Chrome DevTools Protocol: the
//! real browser the web pages are tested in.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::{Proc, WAIT, header, wait_for};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium and a DevTools connection to its one page.
pub struct Chromium {
    _proc: Proc,
    page: Ws,
    next_id: u64,
}

fn chromium_binary() -> &'static str {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name;
        }
    }
    panic!("no chromium: the test command installs it (scripts/test-deps.sh)");
}

impl Chromium {
    pub async fn start(dir: &Path) -> Chromium {
        let profile = dir.join("chromium-profile");
        let mut cmd = Command::new(chromium_binary());
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-port=0",
            "--window-size=1000,700",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank");
        let proc = Proc::spawn("chromium", &mut cmd, dir.join("chromium.log"));
        let port_file = profile.join("DevToolsActivePort");
        let port: u16 = wait_for("chromium's DevTools port", || async {
            let text = std::fs::read_to_string(&port_file).ok()?;
            text.lines().next()?.trim().parse().ok()
        })
        .await;
        let devtools = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let page_url = wait_for("chromium's page", || async {
            let targets = devtools_targets(devtools).await?;
            targets.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(str::to_owned)
        })
        .await;
        let (page, _) = tokio_tungstenite::connect_async(page_url).await.unwrap();
        Chromium {
            _proc: proc,
            page,
            next_id: 1,
        }
    }

    /// One DevTools command; its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method}: {error}"),
        }
    }

    /// Sends one DevTools command; its result, or the error it answered.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.page
            .send(Message::text(msg.to_string()))
            .await
            .unwrap();
        loop {
            let msg = tokio::time::timeout(WAIT, self.page.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .unwrap()
                .unwrap();
            let Ok(text) = msg.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            if v["id"] == id {
                return match v.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    /// Evaluates `expr` in the page; its value.
    pub async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until `ok` accepts its value. On a timeout the
    /// test fails with the page's address and text, and a screenshot under
    /// the target directory (`test-screenshots/`).
    pub async fn wait_eval(
        &mut self,
        what: &str,
        expr: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let params = json!({"expression": expr, "returnByValue": true, "awaitPromise": true});
            // While the page navigates, an evaluation fails ("Inspected
            // target navigated or closed"): that is "not yet", like a value
            // `ok` refuses.
            let v = match self.try_call("Runtime.evaluate", params).await {
                Ok(r) if ok(&r["result"]["value"]) => return r["result"]["value"].clone(),
                Ok(r) => r["result"]["value"].clone(),
                Err(error) => error,
            };
            if tokio::time::Instant::now() >= deadline {
                let page = self
                    .eval("location.href + '\\n' + (document.body ? document.body.innerText : '')")
                    .await;
                let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-screenshots");
                let _ = std::fs::create_dir_all(&dir);
                let name: String = what
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                let shot = dir.join(format!("{name}.png"));
                self.screenshot(&shot).await;
                panic!(
                    "timed out waiting for {what}; last value {v}\nscreenshot: {}\npage: {}",
                    shot.display(),
                    page.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` and Enter into the focused element, as keystrokes.
    pub async fn type_line(&mut self, text: &str) {
        self.type_text(text).await;
        self.press_enter().await;
    }

    /// Types `text` into the focused element.
    pub async fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// Clicks the middle of the element `selector` names, with the mouse.
    pub async fn click(&mut self, selector: &str) {
        let expr = format!(
            "(() => {{ const e = document.querySelector({selector:?}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        );
        let at = self.eval(&expr).await;
        let (x, y) = (at[0].as_f64(), at[1].as_f64());
        let (Some(x), Some(y)) = (x, y) else {
            panic!("nothing to click: {selector}");
        };
        for kind in ["mousePressed", "mouseReleased"] {
            let event = json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1});
            self.call("Input.dispatchMouseEvent", event).await;
        }
    }

    /// Presses Enter in the focused element.
    pub async fn press_enter(&mut self) {
        for kind in ["keyDown", "keyUp"] {
            let mut key = json!({
                "type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13,
            });
            if kind == "keyDown" {
                key["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", key).await;
        }
    }

    /// The lines on the terminal's screen and scrollback.
    pub async fn screen(&mut self) -> Vec<String> {
        let v = self
            .eval(
                "(() => { const b = window.rtunnelTerminal.term.buffer.active; const out = []; \
                 for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true)); \
                 return out; })()",
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().trim_end().to_owned())
            .collect()
    }

    /// Waits for the shell's first prompt: keystrokes typed before it are
    /// echoed by the terminal ahead of the prompt, and the command's output
    /// then shares the prompt's line.
    pub async fn wait_prompt(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.screen().await.iter().any(|l| !l.trim().is_empty()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the shell showed no prompt"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a line of the screen is exactly `line`.
    pub async fn wait_line(&mut self, line: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let screen = self.screen().await;
            if screen.iter().any(|l| l == line) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line {line:?} on the terminal:\n{}",
                screen.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The DevTools target list. Chromium keeps the connection open after the
/// answer, so the body is read by its length.
pub async fn devtools_targets(addr: std::net::SocketAddr) -> Option<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /json/list HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            raw.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&raw);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = header(head, "content-length")?.parse().ok()?;
                if body.len() >= len {
                    return serde_json::from_str(&body[..len]).ok();
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()?
}

impl Chromium {
    /// Opens `url` in the page.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// Saves what the page shows as a PNG: kept next to the test's other
    /// files, and printed when the test fails.
    pub async fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let _ = std::fs::write(path, png);
    }
}
