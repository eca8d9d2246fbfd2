"""The Portolan Helm chart, rendered offline and checked with the real tools.

- every case in values/ renders, equals its golden render (PORTOLAN_BLESS=1 re-blesses),
  and every manifest validates against Kubernetes' schemas (strict, 1.30 and the newest
  the kubernetes-validate package ships) or, for cert-manager and Prometheus Operator
  objects, against the subsets of their CRD schemas in schemas/;
- values.schema.json refuses bad values, and its `config` keys are those of
  deploy/config/*.toml;
- the rendered TOML is accepted by the real `portolan-agent` and `portolan-collector`
  (`--print-config`, with the environment the pods set), and the rule files by
  `portolan rules check`;
- security properties of the pods hold in every case.
"""

from __future__ import annotations

import base64
import copy
import difflib
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, Iterator

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import (
    BLESS,
    CASES,
    CHART,
    GOLDEN,
    NAMESPACE,
    RELEASE,
    REPO,
    SCHEMAS,
    Render,
    binary,
    read_values,
    render,
)

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the
# validator knows.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]

CRD_SCHEMAS = {
    ("cert-manager.io/v1", "Certificate"): "certificate-cert-manager.io-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}

AGENT = f"{RELEASE}-agent"
COLLECTOR = f"{RELEASE}-collector"
EVALUATOR = f"{RELEASE}-evaluator"


# --- golden renders ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_render_matches_golden(case: str, renders: dict[str, Render]) -> None:
    text = renders[case].text()
    golden = GOLDEN / f"{case}.yaml"
    if BLESS:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text)
        return
    assert golden.is_file(), f"{golden} is missing: run `PORTOLAN_BLESS=1 just test-helm`"
    expected = golden.read_text()
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"golden/{case}.yaml",
                "rendered",
            )
        )
        pytest.fail(
            f"the render of values/{case}.yaml drifted from golden/{case}.yaml; if the change "
            f"is intended, re-bless with `PORTOLAN_BLESS=1 just test-helm`:\n{diff}"
        )


def test_no_golden_without_a_case() -> None:
    stale = sorted(p.name for p in GOLDEN.glob("*.yaml") if p.stem not in CASES)
    if BLESS:
        for name in stale:
            (GOLDEN / name).unlink()
        return
    assert not stale, f"golden renders without a values/ case: {stale} (PORTOLAN_BLESS=1 removes them)"


# --- Kubernetes schemas --------------------------------------------------------------


def crd_validator(schema_file: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / schema_file).read_text())
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("case", CASES)
def test_manifests_validate_against_kubernetes_schemas(case: str, renders: dict[str, Render]) -> None:
    problems = []
    manifests = renders[case].manifests
    assert manifests, "nothing rendered"
    for m in manifests:
        name = f"{m.get('kind')}/{m.get('metadata', {}).get('name')}"
        crd = CRD_SCHEMAS.get((m.get("apiVersion"), m.get("kind")))
        if crd:
            for error in crd_validator(crd).iter_errors(m):
                problems.append(f"{name}: {'/'.join(map(str, error.absolute_path))}: {error.message}")
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(m, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(map(str, e.absolute_path))
                problems.append(f"{name} (Kubernetes {version}): {path}: {e.message}")
            except kubernetes_validate.utils.SchemaNotFoundError as e:
                problems.append(f"{name}: {e.message}")
    assert not problems, "\n".join(problems)


def test_crd_schemas_catch_mistakes() -> None:
    """The hand-kept CRD schemas are strict enough to notice a typo."""
    cert = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "x"},
        "spec": {"secretName": "x", "issuerRef": {"name": "ca"}, "uri": ["spiffe://portolan/host/a"]},
    }
    assert list(crd_validator(CRD_SCHEMAS[("cert-manager.io/v1", "Certificate")]).iter_errors(cert))


def test_lint_is_clean() -> None:
    report = helm.lint(CHART, read_values("defaults"), strict=True, kube_version="v1.30.0")
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not serious, report


# --- values.schema.json --------------------------------------------------------------

BAD_VALUES = [
    ("typo in a key", {"collector": {"replicaz": 3}}, "replicaz"),
    ("string for an integer", {"collector": {"replicas": "two"}}, "/collector/replicas"),
    ("string for an integer in config", {"collector": {"config": {"limits": {"max_message_bytes": "16MiB"}}}}, "max_message_bytes"),
    ("a key the chart owns", {"agent": {"config": {"proc_root": "/proc"}}}, "proc_root"),
    ("a key that is not in the TOML", {"agent": {"config": {"scan_intervall": "10s"}}}, "scan_intervall"),
    ("unknown certificate source", {"agent": {"tls": {"source": "csi"}}}, "/agent/tls/source"),
    ("a duration without unit", {"agent": {"config": {"scan_interval": "10"}}}, "scan_interval"),
    ("a receiver without url", {"evaluator": {"config": {"notify": {"webhook": [{"timeout": "5s"}]}}}}, "url"),
    ("plaintext collector endpoint", {"agent": {"config": {"collector": {"endpoint": "http://c:7443"}}}}, "endpoint"),
    ("a port out of range", {"metrics": {"port": 70000}}, "/metrics/port"),
    ("an operator role that does not exist", {"tls": {"certManager": {"operator": {"role": "root"}}}}, "role"),
    ("a Kubernetes quantity for a size", {"agent": {"config": {"spool": {"max_size": "64Mi"}}}}, "max_size"),
    ("the spool directory in config", {"agent": {"config": {"spool": {"dir": "/tmp/spool"}}}}, "dir"),
    ("a namespaces mode that does not exist", {"agent": {"config": {"namespaces": "pods"}}}, "namespaces"),
    ("a zero message rate", {"collector": {"config": {"limits": {"max_messages_per_second": 0}}}}, "max_messages_per_second"),
    ("the revocation list in config", {"collector": {"config": {"tls": {"revoked": "/x"}}}}, "tls"),
    ("CRLs in config", {"collector": {"config": {"tls": {"crls": ["/x"]}}}}, "tls"),
    ("a CRL key with a slash", {"collector": {"crl": {"configMap": "c", "keys": ["a/b.pem"]}}}, "keys"),
    ("a relative spool host path", {"agent": {"spoolHostPath": "spool"}}, "spoolHostPath"),
]


@pytest.mark.parametrize("what,bad,fragment", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_schema_refuses(chart: helm.Chart, what: str, bad: dict[str, Any], fragment: str) -> None:
    values = merge(read_values("defaults"), bad)
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert fragment in str(refused.value), str(refused.value)
    # and an install refuses them too
    with pytest.raises(helm.HelmValuesError):
        render(values, chart)


@pytest.mark.parametrize("case", CASES)
def test_schema_accepts_every_case(chart: helm.Chart, case: str) -> None:
    chart.validate_schema(read_values(case))


FAILURES = [
    ("no ClickHouse", {"clickhouse": {"url": ""}}, "clickhouse.url is required"),
    ("secret source without Secret", {"agent": {"tls": {"source": "secret"}}}, "agent.tls.existingSecret"),
    ("cert-manager agents without nodes", {"tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}, "agent": {"tls": {"source": "certManager"}}}, "agentNodes"),
    ("cert-manager without issuer", {"tls": {"certManager": {"enabled": True}}}, "issuerRef.name"),
    ("ServiceMonitor without metrics port", {"serviceMonitor": {"enabled": True}}, "metrics.enabled"),
    ("evaluator without rules", {"evaluator": {"rules": {"defaultPack": False}}}, "no rule file"),
    ("CRLs from a ConfigMap and a Secret", {"collector": {"crl": {"configMap": "c", "secret": "s"}}}, "collector.crl: set either configMap or secret"),
]


@pytest.mark.parametrize("what,values,message", FAILURES, ids=[f[0] for f in FAILURES])
def test_render_fails_with_a_clear_message(chart: helm.Chart, what: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as failed:
        render(merge(read_values("defaults"), values), chart)
    assert message in str(failed.value), str(failed.value)


# --- the same keys as deploy/config/*.toml -------------------------------------------

# Keys the chart sets itself (so values.schema.json refuses them in `config`), and why.
AGENT_OWNED = {
    "version": "always 1",
    "host_id": "the node name, PORTOLAN_HOST_ID from the downward API",
    "proc_root": "/host/proc, where the node's /proc is mounted",
    "pod_logs_dir": "/var/log/pods, where agent.podLogsHostPath is mounted",
    "spool.dir": "agent.spoolHostPath, mounted from the node at the same path",
    "tls.ca": "the mounted certificate directory",
    "tls.cert": "the mounted certificate directory, or spoolHostPath with agent.tls.source=enrollment",
    "tls.key": "the mounted certificate directory, or spoolHostPath with agent.tls.source=enrollment",
    "enrollment.token": "never in the config: the token is a Secret (enrollment.tokenSecret)",
    "enrollment.token_file": "the mounted Secret enrollment.tokenSecret with agent.tls.source=enrollment",
    "metrics.listen": "0.0.0.0:<metrics.port> when metrics.enabled",
}
COLLECTOR_OWNED = {
    "version": "always 1",
    "name": "empty: each pod's hostname (one name for every replica would be wrong)",
    "listen": "from collector.port",
    "state_dir": "an emptyDir; only the managed ClickHouse uses it",
    "tls.ca": "the mounted certificate Secret",
    "tls.cert": "the mounted certificate Secret",
    "tls.key": "the mounted certificate Secret",
    "tls.revoked": "the mounted ConfigMap collector.revocation.configMap",
    "tls.crls": "the mounted ConfigMap or Secret collector.crl, one path per key",
    "clickhouse.url": "from clickhouse.url",
    "clickhouse.database": "from clickhouse.database",
    "clickhouse.user": "PORTOLAN_CLICKHOUSE_USER from the credentials Secret",
    "clickhouse.password": "PORTOLAN_CLICKHOUSE_PASSWORD from the credentials Secret",
    "clickhouse.password_file": "unused: the password comes from the credentials Secret",
    "clickhouse.tls.ca": "the mounted Secret clickhouse.tls.caSecret",
    "clickhouse.tls.cert": "the mounted Secret clickhouse.tls.clientSecret",
    "clickhouse.tls.key": "the mounted Secret clickhouse.tls.clientSecret",
    "clickhouse.binary": "the managed ClickHouse is not used in Kubernetes",
    "clickhouse.batch_window": "from clickhouse.batchWindow",
    "clickhouse.batch_max_rows": "from clickhouse.batchMaxRows",
    "enrollment.enabled": "from enrollment.enabled, on the collector only (never the evaluator)",
    "enrollment.signer_cert": "the mounted Secret enrollment.signerSecret",
    "enrollment.signer_key": "the mounted Secret enrollment.signerSecret",
    "rules.evaluate": "false on the collector, true on the evaluator",
    "rules.files": "the rules ConfigMap's files",
    "metrics.listen": "0.0.0.0:<metrics.port> when metrics.enabled",
}

# Keys whose chart default differs from the binary's, and why.
CHART_DEFAULTS = {
    "collector.endpoint": "empty means the collector Service of the release, not localhost",
    "namespaces": "all: on a Kubernetes node most sockets live in pods' network namespaces",
}


def leaf_keys(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key → value; maps that are values (labels, headers: empty in the examples)
    count as leaves."""
    out = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(leaf_keys(value, f"{path}."))
        else:
            out[path] = value
    return out


def schema_keys(schema: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> set[str]:
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    props = schema.get("properties")
    if not props or schema.get("additionalProperties") is not False:
        return {prefix.rstrip(".")}
    keys = set()
    for key, sub in props.items():
        keys |= schema_keys(sub, defs, f"{prefix}{key}.")
    return keys


def deploy_config(name: str) -> dict[str, Any]:
    return tomllib.loads((REPO / "deploy" / "config" / name).read_text())


def test_config_values_use_the_keys_and_defaults_of_deploy_config() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    defs = schema["definitions"]
    props = schema["properties"]
    problems = []
    for label, toml_name, sections, owned in [
        ("agent", "portolan-agent.toml", [("agent", "config")], AGENT_OWNED),
        ("collector", "portolan-collector.toml", [("collector", "config"), ("evaluator", "config")], COLLECTOR_OWNED),
    ]:
        toml_keys = leaf_keys(deploy_config(toml_name))
        settable: set[str] = set()
        for component, key in sections:
            # every key the schema lets a user set is a key of the TOML file
            keys = schema_keys(props[component]["properties"][key], defs)
            settable |= keys
            for k in sorted(keys - set(toml_keys)):
                problems.append(f"{component}.{key}.{k} is not a key of deploy/config/{toml_name}")
            # and values.yaml shows it with the TOML file's default
            for k, v in leaf_keys(values[component][key]).items():
                if k not in toml_keys:
                    problems.append(f"values.yaml {component}.{key}.{k} is not a key of deploy/config/{toml_name}")
                elif v != toml_keys[k] and k not in CHART_DEFAULTS:
                    problems.append(
                        f"values.yaml {component}.{key}.{k} is {v!r} but deploy/config/{toml_name} says {toml_keys[k]!r}"
                    )
        # every key of the TOML file is either settable or set by the chart
        for k in sorted(set(toml_keys) - settable - set(owned)):
            problems.append(
                f"deploy/config/{toml_name} has `{k}`, which the chart neither sets nor lets values set "
                f"(add it to values.schema.json and values.yaml, or to the owned keys of this test)"
            )
        for k in sorted(set(owned) & settable):
            problems.append(f"`{k}` is set by the chart, yet values.schema.json lets `config` set it")
    assert not problems, "\n".join(problems)


# --- files copied into the chart -----------------------------------------------------


def copied_files() -> Iterator[tuple[Path, Path]]:
    """(the project's file, the chart's copy): Helm reads only files inside the chart."""
    yield REPO / "deploy" / "rules" / "default.yaml", CHART / "files" / "rules" / "default.yaml"
    dashboards = REPO / "deploy" / "grafana" / "dashboards"
    for source in sorted(dashboards.glob("*.json")) if dashboards.is_dir() else []:
        yield source, CHART / "files" / "dashboards" / source.name


def test_copied_files_equal_the_projects() -> None:
    stale = []
    for source, copy_ in copied_files():
        if BLESS:
            copy_.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy_)
        elif not copy_.is_file() or copy_.read_bytes() != source.read_bytes():
            stale.append(f"{copy_.relative_to(REPO)} differs from {source.relative_to(REPO)}")
    assert not stale, "\n".join(stale) + "\n(PORTOLAN_BLESS=1 copies them)"


# --- security properties -------------------------------------------------------------


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


@pytest.mark.parametrize("case", CASES)
def test_security_properties(case: str, renders: dict[str, Render]) -> None:
    r = renders[case]
    problems = []
    for m in r.manifests:
        for path, key, _ in walk(m):
            if key in ("subPath", "subPathExpr"):
                problems.append(f"{m['kind']}/{m['metadata']['name']}{path}: no subPath mounts (rotation needs whole directories)")
    agent = r.one("DaemonSet", AGENT)["spec"]["template"]["spec"]
    assert agent["hostNetwork"] is True and agent["hostPID"] is True
    assert not agent.get("hostIPC")
    (container,) = agent["containers"]
    sc = container["securityContext"]
    values = read_values(case)
    entering = ["SYS_ADMIN"] if values.get("agent", {}).get("enterNamespaces") else []
    assert sorted(sc["capabilities"]["add"]) == sorted(["DAC_READ_SEARCH", "SYS_PTRACE", *entering])
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert not sc.get("privileged")
    host_volumes = {v["name"]: v["hostPath"] for v in agent["volumes"] if "hostPath" in v}
    assert "host-proc" in host_volumes
    # The one writable host path: the spool, at the same path as on the node.
    spool = values.get("agent", {}).get("spoolHostPath", "/var/lib/portolan-agent")
    assert host_volumes["spool"] == {"path": spool, "type": "DirectoryOrCreate"}
    for mount in container["volumeMounts"]:
        if mount["name"] == "spool":
            assert mount["mountPath"] == spool and not mount.get("readOnly")
        elif mount["name"] in host_volumes and not mount.get("readOnly"):
            problems.append(f"agent mounts host path volume {mount['name']} writable")
    for w in r.workloads():
        name = f"{w['kind']}/{w['metadata']['name']}"
        pod = w["spec"]["template"]["spec"]
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: mounts a service account token it does not need")
        for c in pod["containers"]:
            csc = c.get("securityContext", {})
            if csc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}/{c['name']}: root filesystem not read-only")
            if csc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}/{c['name']}: allowPrivilegeEscalation not false")
            if csc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}/{c['name']}: capabilities not dropped")
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                problems.append(f"{name}/{c['name']}: resource requests and limits missing")
        if w["metadata"]["name"] == AGENT:
            continue
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(key):
                problems.append(f"{name}: {key} is only for the agent")
        if any("hostPath" in v for v in pod.get("volumes", [])):
            problems.append(f"{name}: host paths are only for the agent")
        for c in pod["containers"]:
            csc = c.get("securityContext", {})
            if csc.get("capabilities", {}).get("add"):
                problems.append(f"{name}/{c['name']}: adds capabilities")
            if not (csc.get("runAsNonRoot") or pod.get("securityContext", {}).get("runAsNonRoot")):
                problems.append(f"{name}/{c['name']}: may run as root")
    assert not problems, "\n".join(problems)


def workload_config(r: Render, workload: dict[str, Any]) -> dict[str, Any]:
    """The TOML configuration the workload mounts from its ConfigMap."""
    pod = workload["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    configmap = r.one("ConfigMap", volume["configMap"]["name"])
    (text,) = [v for k, v in configmap["data"].items() if k.endswith(".toml")]
    return tomllib.loads(text)


# What each probe asks: started and alive while the loops run, ready while it can work.
PROBE_PATHS = {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}


@pytest.mark.parametrize("case", CASES)
def test_every_workload_probes_the_health_endpoints_it_serves(case: str, renders: dict[str, Render]) -> None:
    r = renders[case]
    workloads = r.workloads()
    assert {w["metadata"]["name"] for w in workloads} >= {AGENT, COLLECTOR, EVALUATOR}
    for w in workloads:
        name = f"{w['kind']}/{w['metadata']['name']}"
        # The port the binary serves /healthz and /readyz on, from its own configuration.
        listen = workload_config(r, w).get("metrics", {}).get("listen", "")
        assert listen, f"{name}: no `metrics.listen`, nothing serves the probes"
        served = int(listen.rsplit(":", 1)[1])
        for c in w["spec"]["template"]["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe, path in PROBE_PATHS.items():
                assert probe in c, f"{name}/{c['name']}: no {probe}"
                get = c[probe].get("httpGet")
                assert get, f"{name}/{c['name']}: {probe} is not an HTTP GET"
                assert get["path"] == path, f"{name}/{c['name']}: {probe} asks {get['path']}, not {path}"
                port = ports.get(get["port"], get["port"])
                assert port == served, f"{name}/{c['name']}: {probe} probes port {port}, the binary serves {served}"


def test_evaluator_is_one_replica_that_never_overlaps(renders: dict[str, Render]) -> None:
    for case in CASES:
        evaluator = renders[case].one("Deployment", EVALUATOR)["spec"]
        assert evaluator["replicas"] == 1 and evaluator["strategy"] == {"type": "Recreate"}, case


def test_hpa_owns_the_collector_replicas(renders: dict[str, Render]) -> None:
    collector = renders["hpa"].one("Deployment", COLLECTOR)["spec"]
    assert "replicas" not in collector
    hpa = renders["hpa"].one("HorizontalPodAutoscaler", COLLECTOR)["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    assert not renders["defaults"].kind("HorizontalPodAutoscaler")


def test_optional_objects_are_off_by_default(renders: dict[str, Render]) -> None:
    kinds = {m["kind"] for m in renders["defaults"].manifests}
    assert not kinds & {"ServiceMonitor", "Certificate", "HorizontalPodAutoscaler"}
    names = {m["metadata"]["name"] for m in renders["defaults"].manifests}
    assert f"{RELEASE}-dashboards" not in names
    assert "metrics" not in json.dumps(renders["defaults"].one("Service", COLLECTOR))


def test_dashboards_configmap_ships_the_grafana_dashboards(renders: dict[str, Render]) -> None:
    """Every dashboard of deploy/grafana, as is, labelled and annotated for the sidecar."""
    config_map = renders["dashboards"].one("ConfigMap", f"{RELEASE}-dashboards")
    sources = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
    assert len(sources) == 5, sources
    assert sorted(config_map["data"]) == [p.name for p in sources]
    for path in sources:
        assert config_map["data"][path.name] == path.read_text(), path.name
        dashboard = json.loads(config_map["data"][path.name])
        assert dashboard["uid"].startswith("portolan-") and dashboard["panels"], path.name
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Portolan"}


def test_existing_secrets_are_only_referenced(renders: dict[str, Render]) -> None:
    assert not renders["existing-secrets"].kind("Secret")
    text = renders["existing-secrets"].text()
    for name in (
        "clickhouse-credentials",
        "clickhouse-ca",
        "portolan-clickhouse-client",
        "portolan-collector-tls",
        "portolan-agent-tls",
    ):
        assert f"name: {name}" in text or f"secretName: {name}" in text, name


IDENTITY = re.compile(r"^spiffe://portolan/(host/[A-Za-z0-9._-]{1,128}|collector/[A-Za-z0-9._-]{1,128}|operator/(reader|admin)/[A-Za-z0-9._-]{1,128})$")


def test_cert_manager_certificates_carry_portolan_identities(renders: dict[str, Render]) -> None:
    certs = {c["metadata"]["name"]: c["spec"] for c in renders["cert-manager"].kind("Certificate")}
    uris = {name: spec["uris"] for name, spec in certs.items()}
    assert uris == {
        COLLECTOR: ["spiffe://portolan/collector/collector"],
        f"{RELEASE}-operator": ["spiffe://portolan/operator/reader/helm-check"],
        f"{AGENT}-node-a": ["spiffe://portolan/host/node-a"],
        f"{AGENT}-node-b.example": ["spiffe://portolan/host/node-b.example"],
        f"{AGENT}-control-plane-1": ["spiffe://portolan/host/control-plane-1"],
    }
    for name, spec in certs.items():
        assert all(IDENTITY.match(u) for u in spec["uris"]), name
        want = "server auth" if name == COLLECTOR else "client auth"
        assert want in spec["usages"], name
    assert f"{COLLECTOR}.{NAMESPACE}.svc" in certs[COLLECTOR]["dnsNames"]
    # the agents' projected directory: the collector's CA and every listed node's pair
    agent = renders["cert-manager"].one("DaemonSet", AGENT)["spec"]["template"]["spec"]
    tls = next(v for v in agent["volumes"] if v["name"] == "tls")["projected"]["sources"]
    files = sorted(i["path"] for s in tls for i in s["secret"]["items"])
    assert files == sorted(
        ["ca.pem"] + [f"agent-{n}.{ext}" for n in ("node-a", "node-b.example", "control-plane-1") for ext in ("pem", "key")]
    )


# --- checksum annotations ------------------------------------------------------------


def checksums(r: Render) -> dict[str, dict[str, str]]:
    return {
        w["metadata"]["name"]: {
            k: v for k, v in w["spec"]["template"]["metadata"]["annotations"].items() if k.startswith("checksum/")
        }
        for w in r.workloads()
    }


def test_config_changes_roll_the_pods_they_concern(chart: helm.Chart) -> None:
    base = read_values("defaults")
    before = checksums(render(base, chart))
    agent = checksums(render(merge(base, {"agent": {"config": {"scan_interval": "20s"}}}), chart))
    assert agent[AGENT] != before[AGENT]
    assert agent[COLLECTOR] == before[COLLECTOR] and agent[EVALUATOR] == before[EVALUATOR]
    rules = checksums(render(merge(base, {"evaluator": {"rules": {"custom": {"x.yaml": "version: 1\nrules: []\n"}}}}), chart))
    assert rules[EVALUATOR] != before[EVALUATOR] and rules[COLLECTOR] == before[COLLECTOR]
    limits = checksums(render(merge(base, {"collector": {"config": {"limits": {"max_snapshot_items": 5}}}}), chart))
    assert limits[COLLECTOR] != before[COLLECTOR] and limits[EVALUATOR] != before[EVALUATOR]
    password = checksums(render(merge(base, {"clickhouse": {"password": "new"}}), chart))
    assert password[COLLECTOR] != before[COLLECTOR] and password[EVALUATOR] != before[EVALUATOR]
    assert password[AGENT] == before[AGENT]


# --- the real binaries ---------------------------------------------------------------


def node_for(values: dict[str, Any]) -> str:
    nodes = values.get("tls", {}).get("certManager", {}).get("agentNodes") or []
    return nodes[-1] if nodes else "node-a"


def container_env(r: Render, container: dict[str, Any], node: str) -> dict[str, str]:
    """The environment the kubelet would give the container: literal values with $(VAR)
    expanded, spec.nodeName, and keys of Secrets the chart renders (others left unset)."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), var["value"])
        elif "fieldRef" in var.get("valueFrom", {}):
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
            env[var["name"]] = node
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            secrets = [s for s in r.kind("Secret") if s["metadata"]["name"] == ref["name"]]
            if secrets and ref["key"] in secrets[0].get("data", {}):
                env[var["name"]] = base64.b64decode(secrets[0]["data"][ref["key"]]).decode()
    return env


def print_config(r: Render, workload: str, tmp: Path, node: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs the container's command with `--print-config` on the rendered TOML; returns the
    effective configuration and the pod spec."""
    w = next(w for w in r.workloads() if w["metadata"]["name"] == workload)
    pod = w["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    config_map = r.one("ConfigMap", config_volume["configMap"]["name"])
    command = list(container["command"])
    config_path = command[command.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert Path(config_path).parent == Path(mount["mountPath"])
    local = tmp / f"{workload}-{Path(config_path).name}"
    local.write_text(config_map["data"][Path(config_path).name])
    command[0] = str(binary(command[0]))
    command[command.index("--config") + 1] = str(local)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")} | container_env(r, container, node)
    done = subprocess.run(command + ["--print-config"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{' '.join(command)} --print-config refused the rendered config:\n{done.stderr}"
    return tomllib.loads(done.stdout), pod


def mounted(pod: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume whose mount holds `path` directly (a whole directory, never subPath)."""
    (container,) = pod["containers"]
    for m in container["volumeMounts"]:
        if Path(path).parent == Path(m["mountPath"]):
            return next(v for v in pod["volumes"] if v["name"] == m["name"])
    raise AssertionError(f"{path} is on no mounted volume")


def secret_file_provided(volume: dict[str, Any], filename: str) -> bool:
    """Whether a Secret, projected or hostPath volume can provide `filename`."""
    if "hostPath" in volume:
        return True  # the node's files: provisioned with the node
    if "secret" in volume:
        items = volume["secret"].get("items")
        return True if items is None else any(i["path"] == filename for i in items)
    if "projected" in volume:
        return any(
            i["path"] == filename for s in volume["projected"]["sources"] for i in s.get("secret", {}).get("items", [])
        )
    return False


@pytest.mark.parametrize("case", CASES)
def test_agent_accepts_its_config(case: str, renders: dict[str, Render], tmp_path: Path) -> None:
    values = read_values(case)
    node = node_for(values)
    config, pod = print_config(renders[case], AGENT, tmp_path, node)
    want = values.get("agent", {}).get("config", {})
    assert config["host_id"] == node
    assert config["proc_root"] == "/host/proc"
    assert mounted(pod, "/host/proc/x")["hostPath"]["path"] == "/proc"
    assert config["collector"]["endpoint"] == f"https://{COLLECTOR}.{NAMESPACE}.svc:7443"
    assert config["scan_interval"] == want.get("scan_interval", "10s")
    assert config["attribute_processes"] == want.get("attribute_processes", True)
    assert config["labels"] == want.get("labels", {})
    assert config["namespaces"] == want.get("namespaces", "all")
    assert pod["hostPID"] is True, "namespaces = all finds pods' namespaces through the node's processes"
    for key, value in want.get("footprint", {}).items():
        assert config["footprint"][key] == value, key
    assert config["spool"]["max_size"] == want.get("spool", {}).get("max_size", "64MiB")
    # The spool survives the pod: a node directory, writable, at the path the agent uses.
    agent_values = values.get("agent", {})
    spool = mounted(pod, f"{config['spool']['dir']}/spool.log")
    assert spool["hostPath"]["path"] == config["spool"]["dir"] == agent_values.get("spoolHostPath", "/var/lib/portolan-agent")
    # The kubelet's pod log directories, read-only, where pod_logs_dir points.
    logs = mounted(pod, f"{config['pod_logs_dir']}/x")
    assert logs["hostPath"] == {"path": agent_values.get("podLogsHostPath", "/var/log/pods"), "type": "Directory"}
    (container,) = pod["containers"]
    assert next(m for m in container["volumeMounts"] if m["name"] == logs["name"])["readOnly"] is True
    source = values.get("agent", {}).get("tls", {}).get("source", "hostPath")
    if source == "enrollment":
        # Only the CA and the token are mounted; the agent makes its key and certificate
        # in the node's spool directory (writable, kept across pod restarts).
        spool_dir = config["spool"]["dir"]
        assert config["tls"]["cert"] == f"{spool_dir}/agent.pem"
        assert config["tls"]["key"] == f"{spool_dir}/agent.key"
        for key in ("cert", "key"):
            assert mounted(pod, config["tls"][key])["name"] == spool["name"]
        token = config["enrollment"]["token_file"]
        secret = mounted(pod, token)["secret"]
        enrollment = values["enrollment"]
        assert secret["secretName"] == enrollment["tokenSecret"]
        assert secret["items"] == [{"key": enrollment.get("tokenKey", "token"), "path": Path(token).name}]
        ca = mounted(pod, config["tls"]["ca"])["secret"]
        assert ca["items"] == [{"key": "ca.crt", "path": "ca.pem"}], "the CA only, never the collector's key"
        assert config["enrollment"]["token"] == "", "the token is never in the configuration"
        return
    if source != "hostPath":
        assert config["tls"]["cert"] == f"/etc/portolan/tls/agent-{node}.pem"
        assert config["tls"]["key"] == f"/etc/portolan/tls/agent-{node}.key"
    for key in ("ca", "cert", "key"):
        path = config["tls"][key]
        assert secret_file_provided(mounted(pod, path), Path(path).name), f"tls.{key} = {path} is provided by no volume"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("workload", [COLLECTOR, EVALUATOR])
def test_collector_accepts_its_config(case: str, workload: str, renders: dict[str, Render], tmp_path: Path) -> None:
    values = read_values(case)
    r = renders[case]
    config, pod = print_config(r, workload, tmp_path, "node-a")
    assert config["clickhouse"]["url"] == values["clickhouse"]["url"]
    assert config["clickhouse"]["database"] == "portolan"
    if not values["clickhouse"].get("existingSecret"):
        assert config["clickhouse"]["user"] == values["clickhouse"].get("user", "")
        # From the Secret through PORTOLAN_CLICKHOUSE_PASSWORD; --print-config never shows it.
        password = values["clickhouse"].get("password", "")
        assert config["clickhouse"]["password"] == ("**REDACTED**" if password else "")
    assert config["listen"] == "0.0.0.0:7443"
    limits = values.get("collector", {}).get("config", {}).get("limits", {})
    for key, value in limits.items():
        assert config["limits"][key] == value
    for key in ("ca", "cert", "key"):
        path = config["tls"][key]
        assert secret_file_provided(mounted(pod, path), Path(path).name), f"tls.{key} = {path} is provided by no volume"
    # [enrollment]: on the collector only, with the signer from its Secret; the evaluator
    # never mounts the signer's key.
    enrollment = values.get("enrollment", {})
    if enrollment.get("enabled") and workload == COLLECTOR:
        assert config["enrollment"]["enabled"] is True
        for key in ("signer_cert", "signer_key"):
            path = config["enrollment"][key]
            assert mounted(pod, path)["secret"]["secretName"] == enrollment["signerSecret"]
        policy = values.get("collector", {}).get("config", {}).get("enrollment", {})
        for key, value in policy.items():
            assert config["enrollment"][key] == value, key
    else:
        assert config["enrollment"]["enabled"] is False
        signer = enrollment.get("signerSecret")
        assert not signer or not any(v.get("secret", {}).get("secretName") == signer for v in pod["volumes"])
    # [clickhouse.tls]: each file on a mounted Secret of `clickhouse.tls`, else unset.
    ch_tls = values["clickhouse"].get("tls", {})
    wanted = {}
    if ch_tls.get("caSecret"):
        wanted["ca"] = (ch_tls["caSecret"], ch_tls.get("caKey", "ca.crt"))
    if ch_tls.get("clientSecret"):
        wanted["cert"] = (ch_tls["clientSecret"], "tls.crt")
        wanted["key"] = (ch_tls["clientSecret"], "tls.key")
    for key in ("ca", "cert", "key"):
        path = config["clickhouse"]["tls"][key]
        if key not in wanted:
            assert path == "", f"clickhouse.tls.{key} = {path}"
            continue
        secret, filename = wanted[key]
        volume = mounted(pod, path)
        assert volume["secret"]["secretName"] == secret, key
        assert Path(path).name == filename and secret_file_provided(volume, filename), key
    revocation = values.get("collector", {}).get("revocation", {})
    if revocation.get("configMap"):
        # The whole ConfigMap as a directory (no items, no subPath): updates reach the file.
        volume = mounted(pod, config["tls"]["revoked"])
        assert volume["configMap"] == {"name": revocation["configMap"]}
        assert Path(config["tls"]["revoked"]).name == revocation.get("key", "revoked.txt")
    else:
        assert config["tls"]["revoked"] == ""
    crl = values.get("collector", {}).get("crl", {})
    if crl.get("configMap") or crl.get("secret"):
        keys = crl.get("keys", ["ca.crl.pem"])
        assert [Path(p).name for p in config["tls"]["crls"]] == keys
        for path in config["tls"]["crls"]:
            # The whole object as a directory (no items, no subPath): updates reach the files.
            volume = mounted(pod, path)
            if crl.get("configMap"):
                assert volume["configMap"] == {"name": crl["configMap"]}
            else:
                assert volume["secret"] == {"secretName": crl["secret"]}
    else:
        assert config["tls"]["crls"] == []
    if workload == COLLECTOR:
        assert config["rules"]["evaluate"] is False
        return
    assert config["rules"]["evaluate"] is True
    evaluator = values.get("evaluator", {})
    assert config["rules"]["interval"] == evaluator.get("config", {}).get("rules", {}).get("interval", "30s")
    rules_volume = mounted(pod, config["rules"]["files"][0])
    rules = r.one("ConfigMap", rules_volume["configMap"]["name"])
    assert sorted(Path(f).name for f in config["rules"]["files"]) == sorted(rules["data"])
    notify = evaluator.get("config", {}).get("notify", {})
    for kind in ("alertmanager", "webhook"):
        got = config["notify"][kind]
        assert [g["url"] for g in got] == [w["url"] for w in notify.get(kind, [])]
        for g, w in zip(got, notify.get(kind, [])):
            for key, value in w.items():
                if key == "headers":
                    # Header values carry tokens: --print-config shows the names only.
                    value = {name: "**REDACTED**" for name in value}
                assert g[key] == value, (kind, key)
    for key in ("external_url", "max_attempts"):
        if key in notify:
            assert config["notify"][key] == notify[key]


@pytest.mark.parametrize("case", CASES)
def test_rule_files_pass_rules_check(case: str, renders: dict[str, Render], tmp_path: Path) -> None:
    rules = renders[case].one("ConfigMap", f"{EVALUATOR}-rules")
    files = []
    for name, text in rules["data"].items():
        (tmp_path / name).write_text(text)
        files.append(str(tmp_path / name))
    done = subprocess.run(
        [str(binary("portolan")), "rules", "check", *files], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- NOTES ---------------------------------------------------------------------------


def test_notes_say_how_to_check_the_installation(renders: dict[str, Render]) -> None:
    notes = renders["defaults"].notes
    assert "portolan hosts" in notes and f"port-forward svc/{COLLECTOR}" in notes
    assert "portolan pki issue-operator" in notes
    operator = renders["cert-manager"].notes
    assert f"get secret $secret" in operator and f"secret={RELEASE}-operator-tls" in operator
    assert "node-a, node-b.example, control-plane-1" in operator


# --- helpers -------------------------------------------------------------------------


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
