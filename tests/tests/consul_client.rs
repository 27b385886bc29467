//! A Consul client library nobody here wrote, PyPI's `py-consul` (installed in the
//! repository's `.venv` by `scripts/install-deps.sh`), registers a service with a TTL
//! check, passes it, reads it back through `health.service`, fails it, and deregisters
//! it, against a real server on 127.0.0.1.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context};
use tests::{must_pass, Cluster};

/// The Python of the repository's virtual environment.
fn python() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python"))
}

const SCRIPT: &str = r#"
import sys, consul

host, port = sys.argv[1], int(sys.argv[2])
c = consul.Consul(host=host, port=port)

assert c.agent.service.register(
    "pyweb", service_id="py-1", address="127.0.0.1", port=8080, tags=["py", "v2"],
    meta={"build": "41"}, check=consul.Check.ttl("10s"),
), "register"
assert c.agent.check.ttl_pass("service:py-1", notes="alive"), "ttl_pass"

index, nodes = c.health.service("pyweb", passing=True)
assert int(index) > 0, index
assert [n["Service"]["ID"] for n in nodes] == ["py-1"], nodes
service = nodes[0]["Service"]
assert service["Port"] == 8080 and service["Tags"] == ["py", "v2"], service
assert service["Meta"] == {"build": "41"}, service
assert nodes[0]["Checks"][0]["Status"] == "passing", nodes[0]["Checks"]

index, services = c.catalog.services()
assert services.get("pyweb") == ["py", "v2"], services
index, entries = c.catalog.service("pyweb", tag="py")
assert [e["ServiceID"] for e in entries] == ["py-1"], entries

# A failed TTL check: critical, out of passing answers, still listed without `passing`.
assert c.agent.check.ttl_fail("service:py-1", notes="broken"), "ttl_fail"
index, nodes = c.health.service("pyweb", passing=True)
assert nodes == [], nodes
index, nodes = c.health.service("pyweb")
assert nodes[0]["Checks"][0]["Status"] == "critical", nodes

assert c.agent.service.deregister("py-1"), "deregister"
index, nodes = c.health.service("pyweb")
assert nodes == [], nodes
leader = c.status.leader()
assert leader == f"{host}:{port}", leader
print("ok")
"#;

#[tokio::test]
async fn py_consul_registers_passes_reads_and_deregisters() {
    let cluster = Cluster::start_single(&[]).await.expect("start a node");
    must_pass(async {
        let python = python();
        ensure!(
            python.exists(),
            "{} is missing: run scripts/install-deps.sh",
            python.display()
        );
        let addr = cluster.addr(1);
        let (host, port) = addr.rsplit_once(':').context("host:port")?;
        let (host, port) = (host.to_owned(), port.to_owned());
        let output = tokio::task::spawn_blocking(move || {
            Command::new(python)
                .args(["-c", SCRIPT, &host, &port])
                .env("NO_PROXY", "*")
                .output()
        })
        .await??;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.success() && stdout.trim() == "ok",
            "py-consul failed ({}):\n{stdout}\n{stderr}\n{}",
            output.status,
            cluster.log_tail(1, 30)
        );
        Ok(())
    })
    .await;
}
