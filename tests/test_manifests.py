"""`krt-runner manifests`: the Kubernetes objects of a KRT, validated against the Kubernetes schemas offline
(kubernetes-validate) and checked for wiring against what `check` and `up` use. No cluster runs here."""

from __future__ import annotations

import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml
from conftest import KRT_RUNNER, ROOT
from entrypoint_helpers import SERVICE_PROTO, write_krt

from krt_runner import KRT
from krt_runner.jetstream_names import consumer_name, stream_name
from krt_runner.krt.check import check_krt
from krt_runner.krt.krt_reader import load_krt
from krt_runner.krt.manifests import entry_subjects
from krt_runner.krt.model import wiring

GREETER = ROOT / "examples" / "greeter"
KUBERNETES = "1.30"


def manifests(source, *flags: str, env: dict | None = None) -> list[dict]:
    done = subprocess.run([*KRT_RUNNER, "manifests", str(source), "--image", "registry.example/krt:1", *flags],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(done.stdout))


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [item for item in objects if item["kind"] == kind]


def env_of(deployment: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def resources_krt(tmp_path):
    """The greeter with a GPU node of 2 replicas and its CPU and memory, and a config variable."""
    folder = tmp_path / "greeter"
    shutil.copytree(GREETER, folder, ignore=shutil.ignore_patterns("*.lp", "__pycache__", "krt.yml"))
    krt = KRT(version="greeter-v2", description="d", proto="proto/greeter.proto", image="e", root=folder,
              config={"variables": ["GREETING_STYLE"]})
    greet = krt.node("greet", image="i", src="src/greet.py", replicas=2, gpu=True,
                     resources={"cpuLimit": "2", "memoryLimit": "2Gi", "cpuRequest": "500m"})
    krt.workflow("greet", entrypoint="Greet", sequence=greet >> krt.node("decorate", image="i", src="src/decorate.py"))
    krt.write()
    return folder


def test_every_object_is_valid_for_kubernetes(tmp_path):
    objects = manifests(resources_krt(tmp_path), "--namespace", "models", "--influx-url", "http://influxdb:8086")

    for item in objects:
        kubernetes_validate.validate(item, KUBERNETES, strict=True)
    assert [item["kind"] for item in objects] == ["ConfigMap", "Deployment", "Deployment", "Deployment", "Service"]
    assert {item["metadata"]["namespace"] for item in objects} == {"models"}


def test_each_node_is_wired_as_up_wires_it_and_every_input_is_an_output_or_the_entrypoints_subject():
    krt = load_krt(GREETER)
    nodes = [item for item in of_kind(manifests(GREETER), "Deployment")
             if item["metadata"]["labels"]["app.kubernetes.io/component"] == "node"]

    for deployment, wired in zip(nodes, wiring(krt), strict=True):
        expected = wired.environment(nats_url="nats://nats:4222", base_path="/krt", config={})
        assert {key: env_of(deployment)[key] for key in expected} == expected
    inputs = {env_of(item)["KRT_NATS_INPUT"] for item in nodes}
    outputs = {env_of(item)["KRT_NATS_OUTPUT"] for item in nodes} - {""}
    assert inputs == outputs | entry_subjects(krt)


def test_replicas_resources_gpu_probes_and_security_come_out_of_krt_yml(tmp_path):
    deployment = of_kind(manifests(resources_krt(tmp_path)), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]

    assert deployment["metadata"]["name"] == "greeter-v2-greet-greet" and deployment["spec"]["replicas"] == 2
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "2Gi"},
                                      "limits": {"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": "1"}}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert container["readinessProbe"]["exec"]["command"] == ["krt-runner", "health"]
    assert container["livenessProbe"]["exec"]["command"][:2] == ["krt-runner", "health"]
    assert pod["terminationGracePeriodSeconds"] > 30  # above KRT_DRAIN_TIMEOUT
    assert pod["securityContext"]["runAsNonRoot"] is True and container["securityContext"]["readOnlyRootFilesystem"]


def test_config_comes_from_a_config_map_and_secrets_from_a_named_secret_never_inlined(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "GREETING_STYLE": "loud", "KRT_NATS_PASSWORD": "hunter2",
           "KRT_INFLUX_TOKEN": "tok-secret"}
    done = subprocess.run([*KRT_RUNNER, "manifests", str(resources_krt(tmp_path)), "--image", "i", "--secret",
                           "greeter-creds"], capture_output=True, text=True, timeout=60, env=env)
    objects = list(yaml.safe_load_all(done.stdout))

    assert of_kind(objects, "ConfigMap")[0]["data"] == {"GREETING_STYLE": "loud"}
    sources = of_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert sources == [{"configMapRef": {"name": "greeter-v2-config"}},
                       {"secretRef": {"name": "greeter-creds", "optional": True}}]
    assert "hunter2" not in done.stdout and "tok-secret" not in done.stdout


def test_the_entrypoint_is_a_deployment_and_a_grpc_service_on_9000():
    objects = manifests(GREETER)
    entrypoint = next(item for item in of_kind(objects, "Deployment")
                      if item["metadata"]["name"] == "greeter-v1-entrypoint")
    service = of_kind(objects, "Service")[0]
    container = entrypoint["spec"]["template"]["spec"]["containers"][0]

    assert container["command"] == ["krt-runner", "entrypoint", "/krt"]
    assert container["readinessProbe"]["grpc"]["port"] == 9000
    assert service["spec"]["ports"][0]["port"] == 9000 and service["spec"]["selector"] == {
        "app.kubernetes.io/instance": "greeter-v1-entrypoint"}
    assert not of_kind(manifests(GREETER, "--no-entrypoint"), "Service")


def test_keda_scales_each_node_on_its_jetstream_consumer_and_needs_at_least_once():
    objects = manifests(GREETER, "--keda", "--delivery", "at-least-once", "--keda-max-replicas", "8")
    scaled = of_kind(objects, "ScaledObject")

    assert [item["spec"]["scaleTargetRef"]["name"] for item in scaled] == ["greeter-v1-greet-greet",
                                                                         "greeter-v1-greet-decorate"]
    trigger = scaled[0]["spec"]["triggers"][0]
    assert trigger["type"] == "nats-jetstream" and trigger["metadata"]["natsServerMonitoringEndpoint"] == "nats:8222"
    assert trigger["metadata"]["stream"] == stream_name("greeter-v1-Greet-entrypoint")
    assert trigger["metadata"]["consumer"] == consumer_name("greeter-v1-Greet-entrypoint")
    assert scaled[0]["spec"]["maxReplicaCount"] == 8
    assert all(env_of(item)["KRT_DELIVERY"] == "at-least-once" for item in of_kind(objects, "Deployment"))
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(scaled[0], KUBERNETES, strict=True)  # a CRD: KEDA's, not in Kubernetes

    refused = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i", "--keda"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--delivery at-least-once" in refused.stderr


def test_a_version_that_starts_with_a_digit_names_the_entrypoint_service_with_a_letter_first(tmp_path):
    folder = tmp_path / "digit"
    shutil.copytree(GREETER, folder, ignore=shutil.ignore_patterns("*.lp", "__pycache__"))
    (folder / "krt.yml").write_text((folder / "krt.yml").read_text().replace("version: greeter-v1",
                                                                             "version: 2024-greeter"))
    objects = manifests(folder)
    (folder / "krt.yml").write_text((folder / "krt.yml").read_text().replace("version: 2024-greeter",
                                                                             "version: krt-2024-greeter"))
    other = of_kind(manifests(folder), "Service")[0]["metadata"]["name"]

    service = of_kind(objects, "Service")[0]
    assert re.fullmatch(r"krt-2024-greeter-entrypoint-[0-9a-f]{8}", service["metadata"]["name"])  # RFC 1035
    assert other == "krt-2024-greeter-entrypoint"  # that version's own, not the same
    assert service["spec"]["selector"]["app.kubernetes.io/instance"] in {
        item["metadata"]["name"] for item in of_kind(objects, "Deployment")}


def test_manifests_on_a_closed_or_full_stdout_say_so_and_fail(tmp_path):
    command = [*KRT_RUNNER, "manifests", str(GREETER), "--image", "registry.example/krt:1"]
    with open("/dev/full", "w") as full:
        on_full = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    closed = subprocess.run(["sh", "-c", '"$@" >&-', "sh", *command], capture_output=True, text=True, timeout=60)

    assert on_full.returncode == 1 and "cannot write to stdout: No space left on device" in on_full.stderr
    assert "Traceback" not in on_full.stderr
    assert closed.returncode == 2 and "stdout is closed: nothing written (give --out FILE)" in closed.stderr


def test_names_are_short_lower_case_unique_and_the_same_on_every_run(tmp_path):
    folder = tmp_path / "long"
    shutil.copytree(GREETER, folder, ignore=shutil.ignore_patterns("*.lp", "__pycache__", "krt.yml"))
    longest = 19  # krt.yml's names: at most 19 characters each, as KRE v1's
    krt = KRT(version="v" * longest, description="d", proto="proto/greeter.proto", image="e", root=folder)
    greet = krt.node("n" * longest, image="i", src="src/greet.py")
    krt.workflow("w" * longest, entrypoint="Greet", sequence=greet)
    krt.workflow("x" * longest, entrypoint="Other", sequence=greet)
    krt.write()

    first, second = manifests(folder), manifests(folder)

    names = [(item["kind"], item["metadata"]["name"]) for item in first]
    assert first == second
    assert len(set(names)) == len(names) and all(len(name) <= 63 and name == name.lower() for _, name in names)


def test_check_validates_replicas_and_resources(tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(GREETER, folder, ignore=shutil.ignore_patterns("*.lp", "__pycache__"))
    fields = ("    src: src/greet.py\n    replicas: 0\n    resources: {cpuLimit: lots, disk: 1Gi, memoryLimit: 1Gi, "
              "memoryRequest: 1200Mi}\n")
    text = (folder / "krt.yml").read_text().replace("    src: src/greet.py\n", fields)
    (folder / "krt.yml").write_text(text)

    _, problems = check_krt(folder)

    assert any("nodes[0].replicas: must be a whole number of at least 1 and at most 2147483647, not 0" in p
               for p in problems)
    assert any("nodes[0].resources.cpuLimit: 'lots' is not a Kubernetes quantity" in p for p in problems)
    assert any("nodes[0].resources.disk: unknown field" in p for p in problems)
    assert any("nodes[0].resources.memoryRequest: 1200Mi is above memoryLimit 1Gi: Kubernetes refuses" in p
               for p in problems)  # kubernetes-validate's schema lets it through; the API server does not


def test_every_form_of_a_kubernetes_quantity_is_taken_and_compared_across_units(tmp_path):
    folder = tmp_path / "quantities"
    shutil.copytree(GREETER, folder, ignore=shutil.ignore_patterns("*.lp", "__pycache__"))
    fields = ("    src: src/greet.py\n    resources: {cpuLimit: 100u, cpuRequest: 1e-5, memoryLimit: 1Ei, "
              "memoryRequest: 1E}\n")  # 1E (exa) is below 1Ei; 1e-5 cores below 100u
    text = (folder / "krt.yml").read_text()
    (folder / "krt.yml").write_text(text.replace("    src: src/greet.py\n", fields))
    (tmp_path / "over").mkdir()
    over = tmp_path / "over" / "krt.yml"
    shutil.copytree(GREETER, over.parent, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.lp", "__pycache__"))
    over.write_text(text.replace("    src: src/greet.py\n", "    src: src/greet.py\n    resources: {cpuLimit: .5, "
                                 "cpuRequest: 1e0, memoryLimit: +1Ki, memoryRequest: 1e3}\n"))

    _, problems = check_krt(folder)
    _, over_problems = check_krt(over.parent)

    assert problems == []
    assert [p.split("krt.yml: ")[1] for p in over_problems if "resources" in p] == [
        "nodes[0].resources.cpuRequest: 1e0 is above cpuLimit 0.5: Kubernetes refuses such a pod"]


def test_up_starts_as_many_processes_as_krt_yml_asks_unless_told_otherwise(tmp_path):
    from krt_runner.local_krt.plan import UpOptions, make_plan

    folder = resources_krt(tmp_path)

    default = make_plan(UpOptions(directory=folder, env={"GREETING_STYLE": "x"}, grpc=False))
    told = make_plan(UpOptions(directory=folder, env={"GREETING_STYLE": "x"}, grpc=False, replicas={"greet": 1}))

    assert [label for _, label in default.replicas] == ["greet#1", "greet#2", "decorate"]
    assert [label for _, label in told.replicas] == ["greet", "decorate"]


def test_a_krt_whose_entrypoint_cannot_be_served_gets_no_entrypoint_objects_and_a_line_saying_why(tmp_path):
    # its pod would exit 2 again and again: left out, as up leaves it out
    krt = write_krt(tmp_path / "krt", proto=SERVICE_PROTO.replace("service Entrypoint", "service Other"))

    done = subprocess.run([*KRT_RUNNER, "manifests", str(krt), "--image", "i"], capture_output=True, text=True,
                          timeout=60)

    assert done.returncode == 0, done.stderr
    assert "krt-runner manifests: the gRPC entrypoint is left out, krt-runner entrypoint would refuse" in done.stderr
    names = [item["metadata"]["name"] for item in yaml.safe_load_all(done.stdout)]
    assert not [name for name in names if name.endswith("-entrypoint")] and names


def test_a_nats_url_with_a_password_is_refused_the_manifests_hold_no_secret(tmp_path):
    done = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i", "--nats-url",
                           "nats://krt:hunter2@nats.nats:4222"], capture_output=True, text=True, timeout=60)

    assert done.returncode == 2 and done.stdout == ""
    assert "--nats-url carries a user or a password" in done.stderr and "hunter2" not in done.stderr


def test_flags_the_api_server_would_refuse_are_refused_all_at_once():
    done = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "", "--namespace", "Bad_NS", "--secret",
                           "Bad Secret", "--keda-max-replicas", "5"], capture_output=True, text=True, timeout=60)

    assert done.returncode == 2 and done.stdout == ""
    for problem in ("--image is empty", "--namespace 'Bad_NS' is not a Kubernetes namespace name",
                    "--secret 'Bad Secret' is not a Kubernetes Secret name",
                    "--keda-max-replicas and --nats-monitoring shape KEDA's objects: give them with --keda"):
        assert f"krt-runner manifests: {problem}" in done.stderr
    image = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "bad image!"], capture_output=True,
                           text=True, timeout=60)
    assert image.returncode == 2 and image.stdout == ""
    assert "--image 'bad image!' is not an image reference, such as registry.example.com/team/greeter:v1" \
        in image.stderr
    for reference in ("[::1]:5000/team/greeter:1", "localhost:5000/greeter@sha256:" + "a" * 64, "a_b__c/d-e.f"):
        valid = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", reference], capture_output=True,
                               text=True, timeout=60)
        assert valid.returncode == 0, valid.stderr


def test_urls_and_numbers_every_pod_or_kubernetes_would_refuse_are_refused_before_anything_is_written():
    done = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i", "--nats-url", "http://nats:4222",
                           "--influx-url", "influxdb:8086"], capture_output=True, text=True, timeout=60)
    port = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i", "--nats-url", "nats://nats:99999"],
                          capture_output=True, text=True, timeout=60)
    websocket = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i", "--nats-url", "wss://nats:443"],
                               capture_output=True, text=True, timeout=60)
    word = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i", "--keda", "--delivery",
                           "at-least-once", "--keda-max-replicas", "abc"], capture_output=True, text=True, timeout=60)
    huge = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i", "--keda", "--delivery",
                           "at-least-once", "--keda-max-replicas", "2147483648"], capture_output=True, text=True,
                          timeout=60)  # KEDA's maxReplicaCount is 32-bit

    assert done.returncode == 2 and done.stdout == ""
    assert "--nats-url: 'http://nats:4222' is not a NATS URL such as nats://host:4222; every pod would refuse it as " \
           "its KRT_NATS_SERVER" in done.stderr
    assert "--influx-url: 'influxdb:8086' is not an http(s) URL such as http://influxdb:8086" in done.stderr
    assert port.returncode == 2 and "--nats-url: 'nats://nats:99999'" in port.stderr
    assert websocket.returncode == 2
    assert "needs aiohttp, which the Dockerfile's image does not install" in websocket.stderr
    assert word.returncode == 2
    assert "--keda-max-replicas: must be a whole number of at least 1" in word.stderr
    assert huge.returncode == 2 and "and at most 2147483647" in huge.stderr


def test_a_bare_nats_url_with_a_password_is_refused_too_and_keda_watches_the_nats_host_given(tmp_path):
    bare = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i", "--nats-url",
                           "krt:hunter2@nats.nats:4222"], capture_output=True, text=True, timeout=60)
    objects = manifests(GREETER, "--keda", "--delivery", "at-least-once", "--nats-url", "nats.nats:4222")
    ipv6 = manifests(GREETER, "--keda", "--delivery", "at-least-once", "--nats-url", "nats://[fd00::1]:4222")
    empty_first = manifests(GREETER, "--keda", "--delivery", "at-least-once", "--nats-url", ",nats://real:4222")

    assert bare.returncode == 2 and "--nats-url carries a user or a password" in bare.stderr
    assert "hunter2" not in bare.stderr
    endpoint = [item["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"]
                for item in (*of_kind(objects, "ScaledObject"), *of_kind(ipv6, "ScaledObject"))]
    assert endpoint == ["nats.nats:8222", "nats.nats:8222", "[fd00::1]:8222", "[fd00::1]:8222"]
    assert {item["spec"]["triggers"][0]["metadata"]["natsServerMonitoringEndpoint"]
            for item in of_kind(empty_first, "ScaledObject")} == {"real:8222"}


def test_under_keda_the_deployments_leave_the_replica_count_to_it_and_a_node_above_its_default_maximum_is_named(
    tmp_path,
):
    folder = tmp_path / "greeter"
    shutil.copytree(GREETER, folder, ignore=shutil.ignore_patterns("*.lp", "__pycache__"))
    krt_yml = folder / "krt.yml"
    krt_yml.write_text(krt_yml.read_text().replace("src: src/greet.py", "src: src/greet.py\n    replicas: 12"))
    done = subprocess.run([*KRT_RUNNER, "manifests", str(folder), "--image", "i", "--keda", "--delivery",
                           "at-least-once"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    objects = list(yaml.safe_load_all(done.stdout))

    nodes = [item for item in of_kind(objects, "Deployment") if "entrypoint" not in item["metadata"]["name"]]
    assert all("replicas" not in item["spec"] for item in nodes)
    for item in nodes:
        kubernetes_validate.validate(item, KUBERNETES, strict=True)
    assert "node 'greet' keeps its 12 replicas of krt.yml as KEDA's maximum, above --keda-max-replicas 10 (its " \
           "default)" in done.stderr
    without_keda = of_kind(manifests(folder), "Deployment")
    assert [item["spec"].get("replicas") for item in without_keda] == [12, 1, 1]


def test_stream_copies_and_the_monitoring_address_are_checked_and_the_copies_reach_the_nodes_only():
    objects = manifests(GREETER, "--delivery", "at-least-once", "--jetstream-replicas", "3")
    refused = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i", "--jetstream-replicas", "3",
                              "--keda", "--delivery", "at-least-once", "--nats-monitoring", "http://nats:8222"],
                             capture_output=True, text=True, timeout=60)
    without_delivery = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i",
                                       "--jetstream-replicas", "3"], capture_output=True, text=True, timeout=60)

    copies = {item["metadata"]["name"]: env_of(item).get("KRT_JETSTREAM_REPLICAS")
              for item in of_kind(objects, "Deployment")}
    assert copies == {"greeter-v1-greet-greet": "3", "greeter-v1-greet-decorate": "3", "greeter-v1-entrypoint": None}
    assert refused.returncode == 2
    assert "--nats-monitoring 'http://nats:8222' is not HOST:PORT (KEDA adds the scheme itself)" in refused.stderr
    assert without_delivery.returncode == 2 and "give it with --delivery at-least-once" in without_delivery.stderr


def test_an_empty_nats_url_and_a_monitoring_port_out_of_range_are_refused():
    empty = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i", "--nats-url", ""],
                           capture_output=True, text=True, timeout=60)
    port = subprocess.run([*KRT_RUNNER, "manifests", str(GREETER), "--image", "i", "--delivery", "at-least-once",
                           "--keda", "--nats-monitoring", "nats:99999"], capture_output=True, text=True, timeout=60)

    assert empty.returncode == 2 and "--nats-url is empty" in empty.stderr
    assert port.returncode == 2 and "--nats-monitoring 'nats:99999' is not HOST:PORT" in port.stderr


def test_a_quantity_too_large_for_kubernetes_is_one_problem_not_a_crash(tmp_path):
    folder = tmp_path / "huge"
    shutil.copytree(GREETER, folder, ignore=shutil.ignore_patterns("*.lp", "__pycache__"))
    text = (folder / "krt.yml").read_text()
    (folder / "krt.yml").write_text(text.replace("    src: src/greet.py\n", "    src: src/greet.py\n    resources: "
                                                 "{cpuLimit: '1e400', cpuRequest: '1', memoryLimit: 1E19, "
                                                 f"memoryRequest: '1e{'9' * 5000}'}}\n"))  # past int()'s digits

    _, problems = check_krt(folder)

    assert any("nodes[0].resources.cpuLimit: '1e400' is larger than any quantity Kubernetes takes" in p
               for p in problems)
    assert any("nodes[0].resources.memoryLimit: '1E19' is larger than any quantity" in p for p in problems)
    assert any("nodes[0].resources.memoryRequest: '1e999" in p for p in problems)
