"""Benchmark: Meters applied → all Ready, and the operator's memory, against a bare Kopf operator.

    scripts/testenv up && .venv/bin/python bench/operator.py

Runs against the real test environment. It measures, for kmeter's operator:

* the time from creating 1 Meter to it being Ready, and from creating 100 Meters (as fast as
  the API server takes them) to all being Ready — Ready means topics created in Kafka and the
  worker Deployment applied;
* the operator's resident memory (RSS) once it holds those 100 Meters.

Baseline, in the same run: a bare Kopf operator (one no-op handler on Meters, Kopf's defaults)
over the same 100 Meters — the floor any Kopf-based operator starts from. The last line printed
is one JSON object with every figure and the ratios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client  # noqa: E402
from tests.support.kube import Environment  # noqa: E402
from tests.support.operator import (  # noqa: E402
    OperatorProcess,
    Resources,
    eventually,
    install_crds,
)
from tests.support.processes import testenv_exports  # noqa: E402

BARE_KOPF = """
import kopf

@kopf.on.startup()
def configure(settings, **_):
    settings.posting.level = 40

@kopf.on.create("kmeter.io", "v1alpha1", "meters")
def created(**_):
    pass
"""


def environment() -> Environment:
    values = testenv_exports()
    if not values:
        raise SystemExit("the test environment is not up: scripts/testenv up")
    path = values["PATH"].replace("$PATH", os.environ.get("PATH", ""))
    return Environment(values["KMETER_KAFKA_BOOTSTRAP"], Path(values["KUBECONFIG"]), path)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def new_namespace(api: client.ApiClient) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def meter_spec(i: int) -> dict[str, object]:
    return {"eventType": f"bench.{i}", "aggregation": "COUNT", "topic": {"partitions": 1}}


def time_to_ready(resources: Resources, count: int) -> float:
    names = [f"meter-{i:03d}" for i in range(count)]
    started = time.monotonic()
    for i, name in enumerate(names):
        resources.create("meters", name, meter_spec(i))

    def all_ready() -> bool:
        listed = resources.objects.list_namespaced_custom_object(
            "kmeter.io", "v1alpha1", resources.namespace, "meters"
        )["items"]
        ready = [
            m
            for m in listed
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (m.get("status") or {}).get("conditions") or []
            )
        ]
        return len(ready) == count

    eventually(all_ready, timeout=300, what=f"{count} Meters Ready")
    return time.monotonic() - started


def main() -> None:
    env = environment()
    install_crds(env)
    api = env.api_client()
    workdir = Path(tempfile.mkdtemp(prefix="kmeter-bench-"))
    operator = OperatorProcess(env.kubeconfig, env.kafka_bootstrap, workdir)
    operator.start()
    try:
        rss_idle = rss_mb(operator.process.pid)  # type: ignore[union-attr]
        one = time_to_ready(Resources(api, new_namespace(api)), 1)
        hundred = time_to_ready(Resources(api, new_namespace(api)), 100)
        time.sleep(5)  # let a resync tick pass over all of them
        rss_100 = rss_mb(operator.process.pid)  # type: ignore[union-attr]
    finally:
        operator.stop()

    script = workdir / "bare_kopf.py"
    script.write_text(BARE_KOPF)
    bare = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces", str(script)],
        env={**os.environ, "KUBECONFIG": str(env.kubeconfig)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(15)  # it lists and handles the 101 Meters above
        bare_rss = rss_mb(bare.pid)
    finally:
        bare.terminate()
        bare.wait(timeout=30)

    figures = {
        "benchmark": "operator",
        "one_meter_ready_s": round(one, 3),
        "hundred_meters_ready_s": round(hundred, 2),
        "operator_rss_idle_mb": round(rss_idle, 1),
        "operator_rss_100_meters_mb": round(rss_100, 1),
        "bare_kopf_rss_100_meters_mb": round(bare_rss, 1),
        "rss_ratio_to_bare_kopf": round(rss_100 / bare_rss, 2),
        "goals": {"one_meter_ready_s": 3, "hundred_meters_ready_s": 60, "rss_mb": 150},
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
