"""The injector's decision for a Pod: the patch, applied to any pod, yields exactly one sidecar
that takes over the app's named port; applying it twice changes nothing; a pod it cannot
inject is refused, never broken."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kmeter.injector.annotations import Refusal, is_port_name
from kmeter.injector.patch import (
    ADMIN_PORT_NAME,
    SIDECAR_NAME,
    Inject,
    Skip,
    decide,
    renamed_port,
)
from kmeter.injector.settings import InjectorSettings, SidecarDefaults
from kmeter_sidecar.config import parse_config

SETTINGS = InjectorSettings(sidecar=SidecarDefaults(kafka_bootstrap="kafka:9092"))
REGULAR = InjectorSettings(sidecar=SidecarDefaults(kafka_bootstrap="kafka:9092", native=False))


def app_pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "generateName": "api-",
            "annotations": {"kmeter.io/inject": "true"} if annotations is None else annotations,
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "app:1",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "livenessProbe": {"httpGet": {"path": "/live", "port": "http"}},
                    "readinessProbe": {"tcpSocket": {"port": 8080}},
                }
            ],
            **spec,
        },
    }


def applied(pod: dict[str, Any], settings: InjectorSettings = SETTINGS) -> dict[str, Any]:
    decision = decide(pod, "team-a", settings)
    assert isinstance(decision, Inject), decision
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, decision.patch)
    return patched


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*(pod["spec"].get("initContainers") or []), *pod["spec"]["containers"]]


def find_port(pod: dict[str, Any], name: str) -> int | None:
    """The endpoints controller's lookup of a Service's named targetPort (FindPort)."""
    for container in pod["spec"]["containers"]:
        for port in container.get("ports") or []:
            if port.get("name") == name:
                return int(port["containerPort"])
    for container in pod["spec"].get("initContainers") or []:
        if container.get("restartPolicy") == "Always":
            for port in container.get("ports") or []:
                if port.get("name") == name:
                    return int(port["containerPort"])
    return None


def test_the_sidecar_takes_the_apps_named_port_and_the_app_keeps_its_number_under_a_new_name() -> (
    None
):
    pod = applied(app_pod())
    [sidecar] = pod["spec"]["initContainers"]
    assert sidecar["name"] == SIDECAR_NAME
    assert sidecar["restartPolicy"] == "Always"
    assert find_port(pod, "http") == 15080
    [app] = pod["spec"]["containers"]
    assert app["ports"] == [{"name": "app-http", "containerPort": 8080, "protocol": "TCP"}]
    assert app["livenessProbe"]["httpGet"]["port"] == "app-http"
    assert app["readinessProbe"] == {"tcpSocket": {"port": 8080}}
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["KMETER_UPSTREAM"] == "127.0.0.1:8080"
    assert env["KMETER_PORT"] == "15080"
    assert pod["metadata"]["annotations"]["kmeter.io/status"] == "injected"
    assert pod["spec"]["volumes"][0]["name"] == "kmeter-spool"
    assert decide(pod, "team-a", SETTINGS) == Skip("already-injected")


def test_a_regular_container_is_appended_and_the_app_stays_the_default_container() -> None:
    pod = applied(app_pod(), REGULAR)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", SIDECAR_NAME]
    assert "restartPolicy" not in pod["spec"]["containers"][1]
    assert "initContainers" not in pod["spec"]
    assert pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "app"
    assert find_port(pod, "http") == 15080


def test_the_default_container_is_the_one_whose_port_is_taken_not_the_first() -> None:
    pod = app_pod()
    shipper = {"name": "log-shipper", "image": "shipper:1"}
    pod["spec"]["containers"].insert(0, shipper)
    pod = applied(pod, REGULAR)
    assert [c["name"] for c in pod["spec"]["containers"]] == ["log-shipper", "app", SIDECAR_NAME]
    assert pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "app"


def test_a_default_container_the_pod_names_is_kept() -> None:
    annotations = {"kmeter.io/inject": "true", "kubectl.kubernetes.io/default-container": "x"}
    pod = applied(app_pod(annotations), REGULAR)
    assert pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "x"


def test_the_pod_annotation_overrides_the_native_sidecar_setting() -> None:
    pod = applied(
        app_pod({"kmeter.io/inject": "true", "kmeter.io/native-sidecar": "true"}), REGULAR
    )
    assert [c["name"] for c in pod["spec"]["initContainers"]] == [SIDECAR_NAME]


def test_pods_that_do_not_ask_or_live_in_an_excluded_namespace_are_skipped() -> None:
    assert decide(app_pod({}), "team-a", SETTINGS) == Skip("not-requested")
    assert decide(app_pod({"kmeter.io/inject": "false"}), "team-a", SETTINGS) == Skip(
        "not-requested"
    )
    assert decide(app_pod(), "kube-system", SETTINGS) == Skip("excluded-namespace")
    # In an excluded namespace even a wrong value is left alone, without a warning.
    assert decide(app_pod({"kmeter.io/inject": "yes"}), "kube-system", SETTINGS) == Skip(
        "excluded-namespace"
    )


def test_a_sidecar_container_without_the_status_annotation_is_enough_to_skip() -> None:
    pod = app_pod()
    pod["spec"]["initContainers"] = [{"name": SIDECAR_NAME, "image": "x"}]
    assert decide(pod, "team-a", SETTINGS) == Skip("already-injected")


def test_the_sidecars_environment_passes_the_sidecars_own_checks_and_says_what_was_asked() -> None:
    annotations = {
        "kmeter.io/inject": "true",
        "kmeter.io/event-type": "llm.completion",
        "kmeter.io/subject-from": "jwt-claim:sub",
        "kmeter.io/missing-subject": "reject",
        "kmeter.io/values": "usage=$.usage",
        "kmeter.io/value.model": "$.model",
        "kmeter.io/jwt-secret": "api-jwt/hmac",
        "kmeter.io/jwt-audience": "api",
        "kmeter.io/upstream-timeout": "30s",
        "kmeter.io/spool-size": "64Mi",
    }
    pod = applied(app_pod(annotations))
    [sidecar] = pod["spec"]["initContainers"]
    env: dict[str, str] = {}
    for entry in sidecar["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry["valueFrom"]:
            assert entry["valueFrom"]["secretKeyRef"] == {"name": "api-jwt", "key": "hmac"}
            env[entry["name"]] = "the-secret"
        else:
            env[entry["name"]] = "from-the-downward-api"
    config = parse_config([], env)
    assert config.event_type == "llm.completion"
    assert str(config.subject_from) == "jwt-claim:sub"
    assert config.missing_subject == "reject"
    assert [name for name, _ in config.values] == ["usage", "model"]
    assert config.jwt.secret == b"the-secret"
    assert config.jwt.audience == "api"
    assert config.upstream_timeout == 30.0
    assert config.spool_max_bytes == 64 << 20
    assert (config.port, config.admin_port, config.upstream_port) == (15080, 15081, 8080)
    spool = next(v for v in pod["spec"]["volumes"] if v["name"] == "kmeter-spool")
    # The emptyDir outgrows the sidecar's own limit only past a margin: no eviction first.
    assert int(spool["emptyDir"]["sizeLimit"]) > config.spool_max_bytes


def test_a_jwt_public_key_is_mounted_from_a_config_map() -> None:
    pod = applied(app_pod({"kmeter.io/inject": "true", "kmeter.io/jwt-public-key": "keys"}))
    [sidecar] = pod["spec"]["initContainers"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["KMETER_JWT_PUBLIC_KEY_FILE"] == "/etc/kmeter/jwt/public.pem"
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "kmeter-jwt-key")
    assert volume["configMap"] == {
        "name": "keys",
        "items": [{"key": "public.pem", "path": "public.pem"}],
    }


def test_the_port_defaults_to_the_only_named_port_or_http() -> None:
    pod = app_pod()
    pod["spec"]["containers"][0]["ports"] = [
        {"name": "web", "containerPort": 3000},
        {"containerPort": 9000},
    ]
    assert find_port(applied(pod), "web") == 15080
    pod["spec"]["containers"][0]["ports"].append({"name": "http", "containerPort": 8080})
    assert find_port(applied(pod), "http") == 15080
    pod["spec"]["containers"][0]["ports"][2]["name"] = "grpc"
    refused = decide(pod, "team-a", SETTINGS)
    assert isinstance(refused, Refusal)
    assert "several named ports (grpc, web): set kmeter.io/port" in refused.reason


def test_pods_that_cannot_take_the_sidecar_are_refused_with_the_reason() -> None:
    cases: list[tuple[dict[str, Any], str]] = []
    no_name = app_pod()
    del no_name["spec"]["containers"][0]["ports"][0]["name"]
    cases.append((no_name, "no named container port"))
    cases.append(
        (
            app_pod({"kmeter.io/inject": "true", "kmeter.io/port": "grpc"}),
            "no container port is named 'grpc'",
        )
    )
    udp = app_pod()
    udp["spec"]["containers"][0]["ports"][0]["protocol"] = "UDP"
    cases.append((udp, "is UDP"))
    busy = app_pod()
    busy["spec"]["containers"][0]["ports"].append({"name": "metrics", "containerPort": 15081})
    cases.append((busy, "the admin port 15081 is already a container port"))
    cases.append((app_pod(hostNetwork=True), "hostNetwork"))
    cases.append(
        (app_pod(volumes=[{"name": "kmeter-spool", "emptyDir": {}}]), "volume named 'kmeter-spool'")
    )
    cases.append((app_pod({"kmeter.io/inject": "yes"}), 'expected "true" or "false"'))
    for pod, reason in cases:
        decision = decide(pod, "team-a", SETTINGS)
        assert isinstance(decision, Refusal), (pod, decision)
        assert reason in decision.reason


@given(
    name=st.from_regex(r"[a-z]([-a-z0-9]{0,13}[a-z0-9])?", fullmatch=True).filter(is_port_name),
    taken=st.sets(st.from_regex(r"app[0-9]?-[a-z]{1,10}", fullmatch=True), max_size=12),
)
def test_a_renamed_port_is_a_valid_unused_port_name(name: str, taken: set[str]) -> None:
    renamed = renamed_port(name, taken | {name})
    assert is_port_name(renamed)
    assert renamed not in taken
    assert renamed != name


# --- any pod --------------------------------------------------------------------------------

PORT_NAMES = [
    "http",
    "web",
    "grpc",
    "metrics",
    "app-http",
    "app2-http",
    "a-very-long-nam",
]


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    names = iter(draw(st.permutations(PORT_NAMES)))
    numbers = iter(
        draw(
            st.lists(
                st.sampled_from([80, 3000, 8080, 9090, 4000, 5000, 6000, 7000, 15080]),
                min_size=12,
                max_size=12,
                unique=False,
            )
        )
    )
    used_numbers: set[int] = set()

    def ports(count: int) -> list[dict[str, Any]]:
        made = []
        for _ in range(count):
            port: dict[str, Any] = {"containerPort": next(numbers)}
            if port["containerPort"] in used_numbers:
                continue
            used_numbers.add(port["containerPort"])
            if draw(st.integers(0, 3)):
                port["name"] = next(names, None) or "spare"
                if port["name"] == "spare":
                    del port["name"]
            if draw(st.integers(0, 9)) == 0:
                port["protocol"] = "UDP"
            made.append(port)
        return made

    def container(name: str, native: bool = False) -> dict[str, Any]:
        made: dict[str, Any] = {
            "name": name,
            "image": "img",
            "ports": ports(draw(st.integers(1 if name == "c0" else 0, 2))),
        }
        if native:
            made["restartPolicy"] = "Always"
        named = [p["name"] for p in made["ports"] if "name" in p]
        probe, hook = draw(st.booleans()), draw(st.booleans())
        if named and probe:
            made["readinessProbe"] = {
                "httpGet": {"path": "/", "port": draw(st.sampled_from(named))}
            }
        if named and hook:
            made["lifecycle"] = {"preStop": {"tcpSocket": {"port": draw(st.sampled_from(named))}}}
        return made

    spec: dict[str, Any] = {
        "containers": [container(f"c{i}") for i in range(draw(st.integers(1, 3)))]
    }
    annotations = {"kmeter.io/inject": "true"}
    present = [p["name"] for c in spec["containers"] for p in c["ports"] if "name" in p]
    if draw(st.booleans()):
        # Mostly a port the pod has; sometimes one it lacks.
        lacking = draw(st.integers(0, 3)) == 0
        choices = present if present and not lacking else PORT_NAMES
        annotations["kmeter.io/port"] = draw(st.sampled_from(choices))
    if draw(st.booleans()):
        spec["initContainers"] = [container("init", native=draw(st.booleans()))]
    if draw(st.booleans()):
        spec["volumes"] = [{"name": "data", "emptyDir": {}}]
    return {"metadata": {"generateName": "p-", "annotations": annotations}, "spec": spec}


def expected_app_port(pod: dict[str, Any]) -> dict[str, Any] | None:
    """A plain statement of when a pod can take the sidecar, and which port it takes."""
    spec = pod["spec"]
    every = [p for c in all_containers(pod) for p in c.get("ports") or []]
    if {15080, 15081} & {p["containerPort"] for p in every}:
        return None
    if ADMIN_PORT_NAME in {p.get("name") for p in every}:
        return None
    named = [p for c in spec["containers"] for p in c.get("ports") or [] if p.get("name")]
    names = sorted({p["name"] for p in named})
    wanted = pod["metadata"]["annotations"].get("kmeter.io/port")
    if wanted is None:
        wanted = names[0] if len(names) == 1 else "http" if "http" in names else None
    matches = [p for p in named if p["name"] == wanted]
    if len(matches) != 1 or matches[0].get("protocol", "TCP") != "TCP":
        return None
    found: dict[str, Any] = matches[0]
    return found


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(pods())
def test_any_pod_gets_exactly_one_sidecar_on_its_named_port_or_a_refusal(
    pod: dict[str, Any],
) -> None:
    original = copy.deepcopy(pod)
    decision = decide(pod, "team-a", SETTINGS)
    assert pod == original  # the pod is not mutated in place
    port = expected_app_port(pod)
    event("injected" if port else "refused")
    if port is None:
        assert isinstance(decision, Refusal)
        assert decision.reason
        return
    assert isinstance(decision, Inject), decision
    result = jsonpatch.apply_patch(pod, decision.patch)
    assert [c["name"] for c in all_containers(result)].count(SIDECAR_NAME) == 1
    names = [p["name"] for c in all_containers(result) for p in c.get("ports") or [] if "name" in p]
    assert len(names) == len(set(names))
    assert all(is_port_name(name) for name in names)
    # Services that targeted the port by name now reach the sidecar; it forwards to the app.
    assert find_port(result, port["name"]) == 15080
    sidecar = next(c for c in all_containers(result) if c["name"] == SIDECAR_NAME)
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["KMETER_UPSTREAM"] == f"127.0.0.1:{port['containerPort']}"
    # Only the app's port name and its own probes changed; every other container is as it was.
    renamed = {decision.port_name: decision.renamed_to}
    for before, after in zip(
        original["spec"]["containers"], result["spec"]["containers"], strict=False
    ):
        expected = copy.deepcopy(before)
        if any(p.get("name") == decision.port_name for p in before.get("ports") or []):
            for p in expected["ports"]:
                p["name"] = renamed.get(p.get("name"), p.get("name")) if "name" in p else None
                if p["name"] is None:
                    del p["name"]
            for probe in ("readinessProbe",):
                if probe in expected:
                    handler = expected[probe]["httpGet"]
                    handler["port"] = renamed.get(handler["port"], handler["port"])
            if "lifecycle" in expected:
                handler = expected["lifecycle"]["preStop"]["tcpSocket"]
                handler["port"] = renamed.get(handler["port"], handler["port"])
        assert after == expected
    # Applying the webhook again (re-invocation) changes nothing.
    assert decide(result, "team-a", SETTINGS) == Skip("already-injected")


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.one_of(
            st.sampled_from(
                [
                    "kmeter.io/port",
                    "kmeter.io/event-type",
                    "kmeter.io/subject-from",
                    "kmeter.io/values",
                    "kmeter.io/value.tokens",
                    "kmeter.io/spool-size",
                    "kmeter.io/sidecar-port",
                    "kmeter.io/admin-port",
                    "kmeter.io/native-sidecar",
                    "kmeter.io/sidecar-memory-request",
                    "kmeter.io/jwt-secret",
                    "kmeter.io/jwt-public-key",
                    "kmeter.io/missing-subject",
                    "kmeter.io/upstream-timeout",
                    "kmeter.io/log-level",
                    "kmeter.io/status",
                ]
            ),
            st.from_regex(r"kmeter\.io/[a-z.]{1,12}", fullmatch=True),
        ),
        st.text(max_size=30),
        max_size=6,
    )
)
def test_any_annotations_get_a_patch_or_a_refusal_never_an_exception(
    annotations: dict[str, str],
) -> None:
    pod = app_pod({**annotations, "kmeter.io/inject": "true"})
    decision = decide(pod, "team-a", SETTINGS)
    assert isinstance(decision, Inject | Refusal | Skip)
    if isinstance(decision, Inject):
        result = jsonpatch.apply_patch(pod, decision.patch)
        assert [c["name"] for c in all_containers(result)].count(SIDECAR_NAME) == 1
        assert decide(result, "team-a", SETTINGS) == Skip("already-injected")
    if isinstance(decision, Refusal):
        assert re.search(r"kmeter\.io/|port|volume", decision.reason)
