//! The web dashboard (`/ui`) in a real headless Chromium, driven over the DevTools
//! protocol (CDP): it shows services, instances, locks, elections and the cluster, follows
//! changes live through blocking queries (an instance turning critical, a lock taken
//! after the page loaded, without a reload), asks for a token when ACLs are on, and
//! reports no console error or exception. With `DASHBOARD_SCREENSHOT=<path>` the first
//! test saves a 1280x900 PNG of the page (how `docs/dashboard.png` is made).
//!
//! Chromium reaches nothing but the registry on 127.0.0.1: its proxy is a closed local
//! port, its host resolver resolves no name, and its background services are off.
//! Needs Debian's `chromium` (`scripts/install-deps.sh`); `$CHROMIUM` names another.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use api_spec::{AcquireRequest, RegisterRequest};
use base64::Engine as _;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt as _, StreamExt as _};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use registry_client::{CampaignOptions, Client, LockOptions};
use serde_json::{json, Value};
use tempfile::TempDir;
use tests::{must_pass, wait_until, Cluster};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the page gets to show something the registry already has.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Chromium gets to start and open its DevTools port.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one DevTools call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The window, and the screenshot.
const VIEWPORT: (u32, u32) = (1280, 900);
/// Where the session keeps the token (`app.js`).
const TOKEN_KEY: &str = "registry.token";

// ---------------------------------------------------------------------------------------
// Chromium and the DevTools protocol
// ---------------------------------------------------------------------------------------

/// A running Chromium and the directory holding its profile and log. Dropping it
/// SIGKILLs the browser's whole process group (renderers, GPU and zygote processes
/// included) and then removes the directory, whether the test passed or not.
#[derive(Debug)]
struct ChromiumProcess {
    child: Child,
    /// `profile/` (the `--user-data-dir`) and `chromium.log`. Declared last so it is
    /// removed after the processes are gone.
    dir: TempDir,
}

impl Drop for ChromiumProcess {
    fn drop(&mut self) {
        // Chromium was started as the leader of a process group of its own.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl ChromiumProcess {
    /// The last lines of Chromium's output, for errors.
    fn log_tail(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Something the page reported that a working dashboard should not: a `console.error`,
/// an uncaught exception, an error-level browser log entry (a failed load, a policy
/// violation), a crash.
#[derive(Debug, Clone)]
struct Report {
    /// `console.error`, `exception`, `log/<source>` or `crash`.
    kind: String,
    text: String,
}

/// Locks a mutex whose holder may have panicked: the data (a map or a list) stays valid.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// Answers awaited, by call id.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A DevTools connection to the browser: calls answered by id, events scanned for
/// [`Report`]s by a reader task.
#[derive(Debug)]
struct Cdp {
    next_id: AtomicU64,
    sink: tokio::sync::Mutex<SplitSink<Socket, Message>>,
    pending: Pending,
    reports: Arc<Mutex<Vec<Report>>>,
    reader: JoinHandle<()>,
}

impl Drop for Cdp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Cdp {
    async fn connect(url: &str) -> Result<Cdp> {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connect to the DevTools socket {url}"))?;
        let (sink, stream) = socket.split();
        let pending = Pending::default();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let reader = tokio::spawn(read_messages(stream, pending.clone(), reports.clone()));
        Ok(Cdp {
            next_id: AtomicU64::new(1),
            sink: tokio::sync::Mutex::new(sink),
            pending,
            reports,
            reader,
        })
    }

    /// Calls `method`, on the page `session` if given (else on the browser), and returns
    /// its result.
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (answer, answered) = oneshot::channel();
        lock(&self.pending).insert(id, answer);
        let sent = self
            .sink
            .lock()
            .await
            .send(Message::text(message.to_string()))
            .await;
        if let Err(e) = sent {
            lock(&self.pending).remove(&id);
            return Err(anyhow!(e).context(format!("send {method}")));
        }
        let reply = tokio::time::timeout(CALL_TIMEOUT, answered)
            .await
            .with_context(|| format!("{method}: no answer within {CALL_TIMEOUT:?}"))?
            .with_context(|| format!("{method}: the DevTools connection closed"))?;
        if let Some(error) = reply.get("error") {
            bail!("{method} failed: {error}");
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }
}

/// The reader task: hands each answer to its caller, and notes each event that is a
/// [`Report`].
async fn read_messages(
    mut stream: SplitStream<Socket>,
    pending: Pending,
    reports: Arc<Mutex<Vec<Report>>>,
) {
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        if let Some(id) = value.get("id").and_then(Value::as_u64) {
            if let Some(answer) = lock(&pending).remove(&id) {
                let _ = answer.send(value);
            }
        } else if let Some(report) = report_of(&value) {
            lock(&reports).push(report);
        }
    }
    // Dropping the senders tells every waiting caller that the connection is gone.
    lock(&pending).clear();
}

/// The [`Report`] an event amounts to, if any.
fn report_of(event: &Value) -> Option<Report> {
    let params = &event["params"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match event["method"].as_str()? {
        "Runtime.consoleAPICalled"
            if matches!(params["type"].as_str(), Some("error" | "assert")) =>
        {
            let args = params["args"].as_array().cloned().unwrap_or_default();
            let words: Vec<String> = args
                .iter()
                .map(|arg| match &arg["value"] {
                    Value::String(s) => s.clone(),
                    Value::Null => text(&arg["description"]),
                    other => other.to_string(),
                })
                .collect();
            Some(Report {
                kind: "console.error".into(),
                text: words.join(" "),
            })
        }
        "Runtime.exceptionThrown" => {
            let details = &params["exceptionDetails"];
            let description = text(&details["exception"]["description"]);
            Some(Report {
                kind: "exception".into(),
                text: if description.is_empty() {
                    text(&details["text"])
                } else {
                    description
                },
            })
        }
        "Log.entryAdded" if params["entry"]["level"] == "error" => {
            let entry = &params["entry"];
            Some(Report {
                kind: format!("log/{}", text(&entry["source"])),
                text: format!("{} ({})", text(&entry["text"]), text(&entry["url"])),
            })
        }
        "Inspector.targetCrashed" => Some(Report {
            kind: "crash".into(),
            text: "the page's renderer crashed".into(),
        }),
        _ => None,
    }
}

/// A headless Chromium with a profile of its own, isolated from every network but
/// 127.0.0.1, and its DevTools connection.
#[derive(Debug)]
struct Browser {
    /// Declared first: the connection closes before the process is killed.
    cdp: Cdp,
    process: ChromiumProcess,
}

/// The browser to run: `$CHROMIUM`, or Debian's `chromium`.
fn chromium_binary() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("chromium"), PathBuf::from)
}

/// A loopback port nothing listens on (bound, noted, released): Chromium's proxy, so any
/// request that does not go straight to 127.0.0.1 fails at once.
fn closed_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Browser {
    async fn launch() -> Result<Browser> {
        let dir = tempfile::Builder::new()
            .prefix("dashboard-chromium-")
            .tempdir()?;
        let profile = dir.path().join("profile");
        let log = File::create(dir.path().join("chromium.log"))?;
        let binary = chromium_binary();
        let child = Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
                // Network isolation: nothing but 127.0.0.1 is reachable.
                &format!("--proxy-server=127.0.0.1:{}", closed_port()?),
                "--proxy-bypass-list=127.0.0.1",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--no-first-run",
                "--disable-extensions",
                "--disable-features=Translate,OptimizationHints,MediaRouter",
                "--metrics-recording-only",
                "--password-store=basic",
                "--hide-scrollbars",
                "--mute-audio",
                &format!("--window-size={},{}", VIEWPORT.0, VIEWPORT.1),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| {
                format!(
                    "start {} (install it with scripts/install-deps.sh, or set $CHROMIUM)",
                    binary.display()
                )
            })?;
        let mut process = ChromiumProcess { child, dir };
        let url = match devtools_url(&mut process, &profile).await {
            Ok(url) => url,
            Err(e) => bail!("{e:#}\nchromium's log:\n{}", process.log_tail()),
        };
        let cdp = Cdp::connect(&url).await?;
        Ok(Browser { cdp, process })
    }

    /// Opens a new tab, sets the viewport, starts collecting reports, and loads `url`.
    async fn open(&self, url: &str) -> Result<Page<'_>> {
        self.try_open(url)
            .await
            .with_context(|| format!("chromium's log:\n{}", self.process.log_tail()))
    }

    async fn try_open(&self, url: &str) -> Result<Page<'_>> {
        let target = self
            .cdp
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        let target_id = target["targetId"].as_str().context("no targetId")?;
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        let session = attached["sessionId"]
            .as_str()
            .context("no sessionId")?
            .to_owned();
        let page = Page {
            cdp: &self.cdp,
            session,
        };
        for domain in [
            "Runtime.enable",
            "Log.enable",
            "Page.enable",
            "Inspector.enable",
        ] {
            page.call(domain, json!({})).await?;
        }
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": VIEWPORT.0, "height": VIEWPORT.1,
                "deviceScaleFactor": 1, "mobile": false,
            }),
        )
        .await?;
        let navigated = page.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = navigated.get("errorText") {
            bail!("loading {url} failed: {error}");
        }
        Ok(page)
    }

    /// Everything reported so far, by every page.
    fn reports(&self) -> Vec<Report> {
        lock(&self.cdp.reports).clone()
    }
}

/// Waits for Chromium to write `DevToolsActivePort` (its port, then the browser's
/// WebSocket path) and returns the browser's DevTools URL.
async fn devtools_url(process: &mut ChromiumProcess, profile: &Path) -> Result<String> {
    let file = profile.join("DevToolsActivePort");
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                let port: u16 = port.trim().parse().context("DevToolsActivePort's port")?;
                return Ok(format!("ws://127.0.0.1:{port}{}", path.trim()));
            }
        }
        if let Some(status) = process.child.try_wait()? {
            bail!("chromium exited at start-up ({status})");
        }
        ensure!(
            started.elapsed() < LAUNCH_TIMEOUT,
            "chromium wrote no {} within {LAUNCH_TIMEOUT:?}",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A table of the page, as rows of column heading (or `data-<name>`) to cell text.
type Row = BTreeMap<String, String>;

/// Reads table `#ID` of the page: each body row as heading → cell text, plus its
/// `data-*` attributes as `data-<name>`.
const TABLE_JS: &str = r#"(() => {
  const table = document.getElementById(ID);
  if (!table) return null;
  const heads = [...table.tHead.rows[0].cells].map((th) => th.textContent.trim());
  return [...table.tBodies[0].rows].map((tr) => {
    const row = {};
    [...tr.cells].forEach((td, i) => { row[heads[i]] = td.textContent.trim(); });
    for (const [key, value] of Object.entries(tr.dataset)) row["data-" + key] = value;
    return row;
  });
})()"#;

/// One tab, attached over the browser's connection.
#[derive(Debug)]
struct Page<'b> {
    cdp: &'b Cdp,
    session: String,
}

impl Page<'_> {
    async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.cdp.call(Some(&self.session), method, params).await
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&self, expression: &str) -> Result<Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(details) = result.get("exceptionDetails") {
            bail!("evaluating {expression:?} threw: {details}");
        }
        Ok(result["result"]
            .get("value")
            .cloned()
            .unwrap_or(Value::Null))
    }

    /// Table `#id`, read from the DOM.
    async fn table(&self, id: &str) -> Result<Vec<Row>> {
        let value = self
            .eval(&TABLE_JS.replace("ID", &json!(id).to_string()))
            .await?;
        let rows = value
            .as_array()
            .with_context(|| format!("no table #{id}"))?;
        Ok(rows
            .iter()
            .map(|row| {
                let fields = row.as_object().into_iter().flatten();
                fields
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .collect())
    }

    /// Reads table `#id` every 100 ms until `check` accepts it (its `Err` says what was
    /// seen instead), for up to [`PAGE_TIMEOUT`].
    async fn wait_for_table<T>(
        &self,
        id: &str,
        what: &str,
        check: impl Fn(&[Row]) -> Result<T>,
    ) -> Result<T> {
        wait_until(PAGE_TIMEOUT, what, || async {
            let rows = self.table(id).await?;
            check(&rows).with_context(|| format!("#{id} has {rows:?}"))
        })
        .await
    }

    /// Evaluates `expression` every 100 ms until it is `true`, for up to [`PAGE_TIMEOUT`].
    async fn wait_for(&self, what: &str, expression: &str) -> Result<()> {
        wait_until(PAGE_TIMEOUT, what, || async {
            let value = self.eval(expression).await?;
            ensure!(value == Value::Bool(true), "{expression} is {value}");
            Ok(())
        })
        .await
    }

    /// The page's text content of `selector`.
    async fn text(&self, selector: &str) -> Result<String> {
        let expression = format!(
            "document.querySelector({}).textContent.trim()",
            json!(selector)
        );
        Ok(self
            .eval(&expression)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Saves a PNG of the viewport to `path`.
    async fn screenshot(&self, path: &Path) -> Result<()> {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        let data = shot["data"].as_str().context("no screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }
}

/// The row whose `key` is `value`.
fn row<'r>(rows: &'r [Row], key: &str, value: &str) -> Result<&'r Row> {
    rows.iter()
        .find(|r| r.get(key).map(String::as_str) == Some(value))
        .with_context(|| format!("no row with {key} = {value:?}"))
}

/// Cell `column` of `row` (empty if the row has no such column).
fn cell<'r>(row: &'r Row, column: &str) -> &'r str {
    row.get(column).map_or("", String::as_str)
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

/// An instance on loopback with a long TTL.
fn instance(port: u16, zone: &str, tags: &[&str], meta: &[(&str, &str)]) -> RegisterRequest {
    RegisterRequest {
        address: "127.0.0.1".into(),
        port,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        meta: meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        zone: Some(zone.into()),
        region: Some("eu".into()),
        weight: Some(10),
        ttl: Some("1h".into()),
        deregister_after: None,
        lease: None,
        checks: Vec::new(),
    }
}

#[tokio::test]
async fn dashboard_shows_the_registry_and_follows_it_live() {
    let cluster = Cluster::start_single(&[]).await.expect("start a node");
    must_pass(async {
        let client = cluster.client_for(1);
        let web_1 = instance(8080, "eu-1a", &["v2", "canary"], &[("build", "41")]);
        let web_2 = RegisterRequest {
            weight: Some(20),
            ..instance(8081, "eu-1b", &["v2"], &[("build", "41")])
        };
        client.register("web", "web-1", &web_1).await?;
        client.register("web", "web-2", &web_2).await?;
        let api_1 = instance(9090, "eu-1a", &["grpc"], &[("build", "7")]);
        client.register("api", "api-1", &api_1).await?;

        let browser = Browser::launch().await?;
        let page = browser
            .open(&format!("http://{}/ui", cluster.addr(1)))
            .await?;

        // The services, with their counts; then one service's instances.
        page.wait_for_table("services", "both services listed", |rows| {
            let web = row(rows, "Name", "web")?;
            ensure!(cell(web, "Healthy") == "2" && cell(web, "Total") == "2");
            row(rows, "Name", "api").map(drop)
        })
        .await?;
        page.eval(r#"document.querySelector('#services tr[data-service="web"]').click()"#)
            .await?;
        page.wait_for_table("instances", "web's instances", |rows| {
            let web_1 = row(rows, "data-instance", "web-1")?;
            let expected = [
                ("Address", "127.0.0.1:8080"),
                ("Status", "passing"),
                ("Zone", "eu-1a"),
                ("Region", "eu"),
                ("Tags", "v2canary"),
                ("Meta", "build=41"),
                ("Weight", "10"),
                ("Lease TTL", "1h"),
            ];
            for (column, value) in expected {
                ensure!(
                    cell(web_1, column) == value,
                    "web-1's {column} is not {value:?}"
                );
            }
            ensure!(cell(row(rows, "data-instance", "web-2")?, "Weight") == "20");
            Ok(())
        })
        .await?;
        // A reload would lose this; it must still be there at the end.
        page.eval("window.loadedOnce = true").await?;

        // Changes after the page loaded show up through the blocking queries: a lock
        // and a request waiting for it...
        let lock = client
            .lock(
                "nightly-report",
                LockOptions {
                    ttl: Duration::from_secs(30),
                    holder: Some("ci-runner-7".into()),
                    ..LockOptions::default()
                },
            )
            .await?;
        let waiter = {
            let client = client.clone();
            tokio::spawn(async move {
                let request = AcquireRequest {
                    ttl: Some("30s".into()),
                    wait: Some("1m".into()),
                    holder: Some("ci-runner-9".into()),
                    ..AcquireRequest::default()
                };
                client.acquire("nightly-report", &request).await
            })
        };
        page.wait_for_table("locks", "the lock, its holder and waiter", |rows| {
            let held = row(rows, "data-lock", "nightly-report")?;
            ensure!(cell(held, "Holder") == "ci-runner-7");
            ensure!(cell(held, "Token") == lock.token().to_string());
            ensure!(cell(held, "Age").ends_with('s'), "no age");
            ensure!(cell(held, "Waiters").contains("ci-runner-9"));
            Ok(())
        })
        .await?;

        // ...an instance whose lease ends (TTL 1 s, no heartbeats): passing, then critical...
        let flaky = RegisterRequest {
            ttl: Some("1s".into()),
            deregister_after: Some("5m".into()),
            weight: Some(5),
            ..instance(8082, "eu-1b", &["v1"], &[])
        };
        client.register("web", "web-flaky", &flaky).await?;
        let first_seen = page
            .wait_for_table("instances", "web-flaky listed", |rows| {
                Ok(cell(row(rows, "data-instance", "web-flaky")?, "Status").to_owned())
            })
            .await?;
        ensure!(
            first_seen == "passing",
            "web-flaky was {first_seen} when first shown"
        );
        page.wait_for_table("instances", "web-flaky turned critical", |rows| {
            let flaky = row(rows, "data-instance", "web-flaky")?;
            ensure!(cell(flaky, "Status") == "critical" && cell(flaky, "Lease TTL") == "ended");
            Ok(())
        })
        .await?;
        page.wait_for_table("services", "web counted 2 healthy of 3", |rows| {
            let web = row(rows, "Name", "web")?;
            ensure!(cell(web, "Healthy") == "2" && cell(web, "Total") == "3");
            Ok(())
        })
        .await?;

        // ...and an election.
        let leadership = client
            .elect("db-primary", CampaignOptions::new("127.0.0.1:5432"))
            .await?;
        page.wait_for_table("elections", "the election's leader", |rows| {
            let election = row(rows, "data-election", "db-primary")?;
            ensure!(cell(election, "Leader") == "127.0.0.1:5432");
            ensure!(cell(election, "Token") == leadership.token().to_string());
            Ok(())
        })
        .await?;

        // The cluster: read again after the other views changed, so it has caught up
        // with the election; the one member leads; storm protection is off duty.
        let applied = cluster.status(1).await?.applied_index;
        let caught_up = format!(
            "(() => {{ const t = document.querySelector('[data-fact=\"indexes\"]'); \
             return t !== null && Number(t.textContent.split(' ').pop()) >= {applied}; }})()"
        );
        page.wait_for("the cluster view to reach the election's index", &caught_up)
            .await?;
        page.wait_for_table("members", "the member and its role", |rows| {
            ensure!(cell(row(rows, "data-member", "1")?, "Role") == "leadervoter");
            Ok(())
        })
        .await?;
        let leader = page.text(r#"[data-fact="leader"]"#).await?;
        ensure!(
            leader == format!("node 1 ({})", cluster.addr(1)),
            "leader: {leader}"
        );
        let storm = page.text(r#"[data-fact="storm"]"#).await?;
        ensure!(storm.starts_with("inactive"), "expiry storm: {storm}");

        // The page holds one blocking query per live view (services, web's instances,
        // locks, elections), and it never reloaded.
        wait_until(PAGE_TIMEOUT, "the page's blocking queries", || async {
            let held = cluster.status(1).await?.limits.blocking_queries;
            ensure!(held == 4, "{held} blocking queries held");
            Ok(())
        })
        .await?;
        page.wait_for("the page not reloaded", "window.loadedOnce === true")
            .await?;
        if let Some(path) = std::env::var_os("DASHBOARD_SCREENSHOT") {
            page.screenshot(Path::new(&path)).await?;
        }
        let reports = browser.reports();
        ensure!(reports.is_empty(), "the page reported errors: {reports:#?}");

        waiter.abort();
        lock.release().await?;
        leadership.resign().await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn dashboard_asks_for_a_token_when_acls_are_on() {
    const SECRET: &str = "dashboard-bootstrap-secret";
    let cluster = Cluster::start_single(&["--acl", "--acl-bootstrap-token", SECRET])
        .await
        .expect("start a node with ACLs");
    must_pass(async {
        // The leader bootstraps the token by itself, soon after start-up.
        let admin = Client::builder([cluster.addr(1)]).token(SECRET).build()?;
        let web_1 = instance(8080, "eu-1a", &["v2"], &[]);
        wait_until(PAGE_TIMEOUT, "the bootstrap token to work", || async {
            Ok(admin.register("web", "web-1", &web_1).await?)
        })
        .await?;

        let browser = Browser::launch().await?;
        let page = browser
            .open(&format!("http://{}/ui", cluster.addr(1)))
            .await?;
        page.wait_for(
            "the token prompt",
            "!document.getElementById('token-panel').hidden",
        )
        .await?;
        let status = page.text("#services-status").await?;
        ensure!(status.starts_with("401"), "services status: {status}");
        ensure!(page.table("services").await?.is_empty());

        page.eval(&format!(
            "document.getElementById('token-input').value = {}; \
             document.getElementById('token-submit').click()",
            json!(SECRET)
        ))
        .await?;
        page.wait_for_table("services", "the services, with the token", |rows| {
            row(rows, "Name", "web").map(drop)
        })
        .await?;
        page.wait_for_table("instances", "web's instance", |rows| {
            ensure!(cell(row(rows, "data-instance", "web-1")?, "Status") == "passing");
            Ok(())
        })
        .await?;
        page.wait_for(
            "the prompt to go",
            "document.getElementById('token-panel').hidden",
        )
        .await?;
        let stored = page
            .eval(&format!("sessionStorage.getItem({})", json!(TOKEN_KEY)))
            .await?;
        ensure!(stored == json!(SECRET), "sessionStorage holds {stored}");

        // The refused calls before the token are logged by the browser as failed loads;
        // nothing else may be reported.
        let unexpected: Vec<Report> = browser
            .reports()
            .into_iter()
            .filter(|r| !(r.kind == "log/network" && r.text.contains("status of 401")))
            .collect();
        ensure!(
            unexpected.is_empty(),
            "the page reported errors: {unexpected:#?}"
        );
        Ok(())
    })
    .await;
}
