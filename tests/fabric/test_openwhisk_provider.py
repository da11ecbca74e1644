"""OpenWhiskProvider against real fabric processes."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest
import requests
from aiohttp import ClientSession, web

from fedkeeper.function.backoff import Backoff
from fedkeeper.function.config import OpenWhiskCluster
from fedkeeper.function.errors import PayloadTooLarge, ProviderError, Throttled
from fedkeeper.function.invoke.base import ActivationStatus
from fedkeeper.function.invoke.openwhisk import ACTIVATION_ID_HEADER
from fedkeeper.host.fabric.process import FabricProcess
from fedkeeper.host.packaging import FUNCTIONS_ROOT
from fedkeeper.host.providers.base import FunctionSpec
from fedkeeper.host.providers.openwhisk import OpenWhiskProvider

from .conftest import FabricClient
from .test_fabric_process import free_port

PROBE = """
import os, time
import fedkeeper

def main(params):
    time.sleep(float(params.get("seconds", 0)))
    if params.get("fail"):
        return {"error": params["fail"]}
    return {"core": fedkeeper.__file__, "cwd": os.getcwd(), "params": params}
"""


class Fast(OpenWhiskProvider):
    """Short backoff, so retry tests stay quick."""

    backoff = Backoff(base_s=0.05, cap_s=0.3, jitter_s=0.05)
    poll_interval_s = 0.05


@pytest.fixture(scope="module")
def fabric_url() -> Iterator[str]:
    with FabricProcess(limits={"blocking_wait_s": 20, "memory_poll_s": 0.05}) as process:
        yield process.url


@pytest.fixture
def provider(fabric_url: str) -> Iterator[Fast]:
    with Fast("local", OpenWhiskCluster(base_url=fabric_url, local=True)) as p:
        yield p  # type: ignore[misc]


@pytest.fixture
def probe(tmp_path: Path) -> Path:
    folder = tmp_path / "probe"
    folder.mkdir()
    (folder / "__main__.py").write_text(PROBE)
    return folder


def count_requests(provider: OpenWhiskProvider) -> Counter[str]:
    seen: Counter[str] = Counter()

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        seen[f"{response.request.method} {response.request.path_url.split('?')[0]}"] += 1

    provider.session.hooks["response"].append(hook)
    return seen


def test_deploy_binds_parameters_limits_and_uses_the_bundled_core(
    provider: Fast, probe: Path, name: str
) -> None:
    spec = FunctionSpec(
        name, probe, memory_mb=384, timeout_s=30, bound={"db": "mongodb://x"}, web_export=True
    )
    provider.deploy(spec)
    action = provider.get_action(name)
    assert action is not None
    assert action["exec"]["binary"] is True and action["exec"]["kind"] == "python:3"
    assert action["limits"]["memory"] == 384 and action["limits"]["timeout"] == 30000
    annotations = {a["key"]: a["value"] for a in action["annotations"]}
    assert annotations["final"] is True and annotations["web-export"] is True
    record = provider.invoke_sync(name, {"db": "attacker", "x": 1}, timeout_s=30)
    assert record.ok
    assert record.result is not None
    assert record.result["params"]["db"] == "mongodb://x"  # bound values win
    # The action imports the fedkeeper copy inside its zip, not the one installed here.
    assert record.result["core"].startswith(record.result["cwd"])
    assert not record.result["core"].startswith(str(Path.cwd()))


def test_deploy_is_idempotent_and_remove_reports_existence(provider: Fast, probe: Path, name: str) -> None:
    spec = FunctionSpec(name, probe)
    provider.deploy(spec)
    provider.deploy(spec)
    assert provider.get_action(name)["version"] == "0.0.2"  # type: ignore[index]
    assert provider.remove(name) is True
    assert provider.remove(name) is False
    assert provider.get_action(name) is None


def test_nodeinfo_function_runs_on_the_fabric(provider: Fast, name: str) -> None:
    provider.deploy(FunctionSpec(name, FUNCTIONS_ROOT / "nodeinfo"))
    record = provider.invoke_sync(name, {"echo": "hi"}, timeout_s=60)
    assert record.ok, record.result
    assert record.result is not None and record.result["echo"] == "hi"
    assert record.result["activation_id"] == record.activation_id


def test_fetch_reads_finished_records_in_one_listing(provider: Fast, probe: Path, name: str) -> None:
    provider.deploy(FunctionSpec(name, probe))
    since = int(time.time() * 1000)
    quick = [provider.invoke_async(name, {"i": i}) for i in range(4)]
    slow = provider.invoke_async(name, {"seconds": 3})
    deadline = time.monotonic() + 20
    found: dict[str, Any] = {}
    while time.monotonic() < deadline and set(quick) - found.keys():
        found = provider.fetch(name, [*quick, slow], since)
        time.sleep(0.1)
    assert set(found) == set(quick)  # the slow one has not finished: it is not reported
    assert all(r.status is ActivationStatus.SUCCESS for r in found.values())
    seen = count_requests(provider)
    provider.fetch(name, [*quick, slow], since)
    assert sum(seen.values()) == 1  # one list request, no per-id GETs


def test_fetch_pages_with_skip_and_falls_back_to_single_gets(provider: Fast, probe: Path, name: str) -> None:
    provider.deploy(FunctionSpec(name, probe))
    since = int(time.time() * 1000)
    ids = [provider.invoke_sync(name, {"i": i}, timeout_s=30).activation_id for i in range(5)]
    provider.page_size = 2
    seen = count_requests(provider)
    assert set(provider.fetch(name, ids, since)) == set(ids)
    assert seen["GET /api/v1/namespaces/guest/activations"] == 3  # pages of 2, 2, 1
    provider.max_pages = 1
    seen.clear()
    assert set(provider.fetch(name, ids, since)) == set(ids)
    assert sum(seen.values()) == 1 + 3  # one page, then GETs for the three ids it did not cover


def test_invoke_sync_maps_application_errors_without_retrying(provider: Fast, probe: Path, name: str) -> None:
    provider.deploy(FunctionSpec(name, probe))
    seen = count_requests(provider)
    record = provider.invoke_sync(name, {"fail": "bad input"}, timeout_s=30)
    assert record.status is ActivationStatus.APPLICATION_ERROR
    assert record.error == "bad input"
    assert sum(seen.values()) == 1  # the 502 is a result, not a transport failure


def test_invoke_sync_maps_timeouts(provider: Fast, probe: Path, name: str) -> None:
    provider.deploy(FunctionSpec(name, probe, timeout_s=1))
    record = provider.invoke_sync(name, {"seconds": 3}, timeout_s=30)
    assert record.status is ActivationStatus.DEVELOPER_ERROR
    assert record.timeout is True
    assert record.error == "The action exceeded its time limits of 1000 milliseconds."


def test_invoke_sync_polls_after_a_202_and_reports_pending_at_its_deadline(
    start_fabric: Callable[..., FabricClient], probe: Path, name: str
) -> None:
    fabric = start_fabric(limits={"blocking_wait_s": 0.3})
    with Fast("short", OpenWhiskCluster(base_url=fabric.url)) as provider:
        provider.deploy(FunctionSpec(name, probe))
        done = provider.invoke_sync(name, {"seconds": 1}, timeout_s=20)
        assert done.ok  # found by polling after the platform's 202
        pending = provider.invoke_sync(name, {"seconds": 3}, timeout_s=1)
        assert pending.status is ActivationStatus.PENDING
        assert len(pending.activation_id) == 32


def test_payload_limit_raises_payload_too_large(provider: Fast, probe: Path, name: str) -> None:
    provider.deploy(FunctionSpec(name, probe))
    with pytest.raises(PayloadTooLarge, match="HTTP 413"):
        provider.invoke_async(name, {"blob": "x" * (1024 * 1024 + 1)})


def test_errors_name_cluster_url_and_status_but_never_the_key(fabric_url: str) -> None:
    secret = "23bc46b1-71f6-4ed5-8c54-816aa4f8c502:not-the-right-key-1234567890"
    with (
        Fast("wrongkey", OpenWhiskCluster(base_url=fabric_url, auth=secret)) as provider,
        pytest.raises(ProviderError) as caught,
    ):
        provider.remove("anything")
    message = str(caught.value)
    assert "'wrongkey'" in message and fabric_url in message and "HTTP 401" in message
    assert "not-the-right-key" not in message


def test_retries_on_429_until_the_namespace_has_room(
    start_fabric: Callable[..., FabricClient], probe: Path, name: str
) -> None:
    fabric = start_fabric(limits={"concurrent_invocations": 1})
    with Fast("busy", OpenWhiskCluster(base_url=fabric.url)) as provider:
        provider.deploy(FunctionSpec(name, probe))
        provider.max_attempts = 40
        first = provider.invoke_async(name, {"seconds": 0.8})
        seen = count_requests(provider)
        second = provider.invoke_async(name, {})
        assert second != first
        assert seen[f"POST /api/v1/namespaces/guest/actions/{name}"] >= 2  # refused with 429, then accepted
        assert fabric.wait_record(second)["response"]["status"] == "success"


def test_without_retry_throttled_the_first_429_raises_throttled(
    start_fabric: Callable[..., FabricClient], probe: Path, name: str
) -> None:
    fabric = start_fabric(limits={"concurrent_invocations": 1})
    with Fast("busy", OpenWhiskCluster(base_url=fabric.url)) as provider:
        provider.deploy(FunctionSpec(name, probe))
        provider.retry_throttled = False
        first = provider.invoke_async(name, {"seconds": 2.0})
        seen = count_requests(provider)
        with pytest.raises(Throttled) as caught:
            provider.invoke_async(name, {})
        assert "HTTP 429" in str(caught.value)
        assert seen[f"POST /api/v1/namespaces/guest/actions/{name}"] == 1  # not retried
        assert fabric.wait_record(first)["response"]["status"] == "success"


def test_retries_connection_errors_until_the_platform_answers(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    later = FabricProcess(port=port, state_dir=tmp_path)
    starter = threading.Timer(0.5, later.start)
    starter.start()
    try:
        with Fast("late", OpenWhiskCluster(base_url=url)) as provider:
            provider.max_attempts = 30
            assert provider.remove("nothing") is False
    finally:
        starter.join()
        later.cleanup()


class ThreadedServer:
    """A real aiohttp server on 127.0.0.1 in a thread; subclasses answer in ``handle``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> Self:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Flaky(ThreadedServer):
    """A real HTTP server answering 503 a few times before it relays a fixed answer."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        super().__init__()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.calls <= self.failures:
            return web.json_response({"error": "unavailable"}, status=503)
        return web.json_response({"name": "x"}, status=200)


def test_retries_5xx_with_bounded_attempts() -> None:
    with Flaky(failures=2) as server:
        with Fast("flaky", OpenWhiskCluster(base_url=f"http://127.0.0.1:{server.port}")) as provider:
            assert provider.remove("x") is True
        assert server.calls == 3
    with Flaky(failures=100) as server:
        with Fast("down", OpenWhiskCluster(base_url=f"http://127.0.0.1:{server.port}")) as provider:
            provider.max_attempts = 3
            with pytest.raises(ProviderError, match=r"HTTP 503: unavailable"):
                provider.remove("x")
        assert server.calls == 3


class Relay(ThreadedServer):
    """A real HTTP proxy in front of a fabric that hands an invoke on, then fails its answer.

    ``mode`` ``"503"`` answers 503 once the fabric accepted the invoke; ``"drop"`` closes the
    connection instead. Every other request is relayed as is. ``accepted`` lists the activation
    ids the fabric returned for the invokes relayed.
    """

    def __init__(self, target: str, mode: str) -> None:
        self.target = target
        self.mode = mode
        self.accepted: list[str] = []
        super().__init__()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")}
        async with (
            ClientSession() as client,
            client.request(
                request.method, self.target + request.path_qs, data=await request.read(), headers=headers
            ) as answer,
        ):
            body = await answer.read()
            status, content_type = answer.status, answer.content_type
            activation_id = answer.headers.get(ACTIVATION_ID_HEADER)
        if request.method != "POST" or "/actions/" not in request.path:
            return web.Response(body=body, status=status, content_type=content_type)
        self.accepted.append(str(activation_id or json.loads(body)["activationId"]))
        if self.mode == "drop":
            assert request.transport is not None
            request.transport.close()
        return web.json_response({"error": "gateway failed after forwarding"}, status=503)


class Accepting(ThreadedServer):
    """A real HTTP server accepting every invoke (202 and an activation id); notes each request's
    client port, and with ``close_after`` closes each connection that long after answering."""

    def __init__(self, close_after: float | None = None) -> None:
        self.close_after = close_after
        self.ports: list[int] = []
        super().__init__()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        self.ports.append(request.transport.get_extra_info("peername")[1])
        if self.close_after is not None:
            self.loop.call_later(self.close_after, request.transport.close)
        activation_id = f"{len(self.ports):032d}"
        return web.json_response(
            {"activationId": activation_id}, status=202, headers={ACTIVATION_ID_HEADER: activation_id}
        )


def test_invokes_share_one_keep_alive_connection_and_response_hooks_see_each_answer() -> None:
    seen: list[tuple[str, int]] = []
    with (
        Accepting() as server,
        Fast("direct", OpenWhiskCluster(base_url=f"http://127.0.0.1:{server.port}")) as client,
    ):
        client.session.hooks["response"].append(
            lambda response, *args, **kwargs: seen.append((response.request.path_url, response.status_code))
        )
        ids = [client.invoke_async("act", {"client": c}) for c in range(3)]
    assert ids == [f"{n:032d}" for n in (1, 2, 3)]
    assert len(set(server.ports)) == 1  # one connection for the three
    assert seen == [("/api/v1/namespaces/guest/actions/act", 202)] * 3


def test_an_invoke_after_the_server_closed_the_idle_connection_goes_out_once_on_a_new_one() -> None:
    with (
        Accepting(close_after=0.05) as server,
        Fast("direct", OpenWhiskCluster(base_url=f"http://127.0.0.1:{server.port}")) as client,
    ):
        first = client.invoke_async("act", {})
        time.sleep(0.5)  # the server has closed the connection by now
        second = client.invoke_async("act", {})
    assert (first, second) == (f"{1:032d}", f"{2:032d}")
    assert len(server.ports) == 2 and server.ports[0] != server.ports[1]  # each sent once


@pytest.mark.parametrize("mode", ["503", "drop"])
@pytest.mark.parametrize("call", ["invoke_async", "invoke_sync"])
def test_an_invoke_that_reached_the_platform_is_never_sent_again(
    fabric_url: str, provider: Fast, probe: Path, name: str, mode: str, call: str
) -> None:
    provider.deploy(FunctionSpec(name, probe))
    with Relay(fabric_url, mode) as relay:
        relayed = Fast("relayed", OpenWhiskCluster(base_url=f"http://127.0.0.1:{relay.port}"))
        with relayed, pytest.raises(ProviderError):
            if call == "invoke_async":
                relayed.invoke_async(name, {})
            else:
                relayed.invoke_sync(name, {}, timeout_s=30)
        sent = list(relay.accepted)
    fabric = FabricClient(fabric_url)
    try:
        records = [fabric.wait_record(activation_id) for activation_id in sent]
        listed = provider.list_activations(name)
    finally:
        fabric.close()
    assert len(sent) == 1, f"one invoke became {len(sent)} activations"
    assert [r["activationId"] for r in records] == [row["activationId"] for row in listed]


def test_an_invoke_is_retried_while_the_platform_refuses_connections(
    tmp_path: Path, probe: Path, name: str
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    later = FabricProcess(port=port, state_dir=tmp_path, limits={"blocking_wait_s": 20})
    try:
        later.start()
        with Fast("late", OpenWhiskCluster(base_url=url)) as provider:
            provider.deploy(FunctionSpec(name, probe))
        later.stop()
        starter = threading.Timer(0.5, later.start)
        starter.start()
        with Fast("late", OpenWhiskCluster(base_url=url)) as provider:
            provider.max_attempts = 30
            record = provider.invoke_sync(name, {"x": 1}, timeout_s=30)
            assert record.ok and record.result is not None and record.result["params"] == {"x": 1}
            assert [row["activationId"] for row in provider.list_activations(name)] == [record.activation_id]
        starter.join()
    finally:
        later.cleanup()


def test_insecure_skips_tls_verification_for_that_cluster_only(
    fabric_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    insecure = OpenWhiskProvider(
        "selfsigned", OpenWhiskCluster(base_url="https://ow.example:31001", insecure=True)
    )
    strict = OpenWhiskProvider("strict", OpenWhiskCluster(base_url="https://other.example"))
    assert insecure.session.verify is False
    assert strict.session.verify is True
    assert any(
        f[0] == "ignore" and f[1] is not None and f[1].match("Unverified HTTPS request to host 'ow.example'")
        for f in warnings.filters
    )
    assert not any(
        f[0] == "ignore"
        and f[1] is not None
        and f[1].match("Unverified HTTPS request to host 'other.example'")
        for f in warnings.filters
    )


def test_proxies_and_ca_bundle_are_read_from_the_environment_once_per_cluster_and_insecure_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/site.pem")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    proxied = OpenWhiskProvider("proxied", OpenWhiskCluster(base_url="https://ow.example"))
    direct = OpenWhiskProvider("direct", OpenWhiskCluster(base_url="https://direct.example"))
    insecure = OpenWhiskProvider("insecure", OpenWhiskCluster(base_url="https://ow.example", insecure=True))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/elsewhere.pem")  # read at construction, not per request
    assert not proxied.session.trust_env
    assert proxied.session.verify == "/etc/ssl/certs/site.pem"
    assert proxied.session.proxies.get("https") == "http://proxy.example:3128"
    assert "https" not in direct.session.proxies  # NO_PROXY names it
    # With trust_env, requests would let the environment's CA bundle turn verification back on.
    assert insecure.session.verify is False


def test_web_action_helper_sends_no_credentials(fabric_url: str, probe: Path, name: str) -> None:
    with Fast("local", OpenWhiskCluster(base_url=fabric_url)) as owner:
        owner.deploy(FunctionSpec(name, probe, web_export=True))
        body = owner.invoke_web(name, {"x": 5})
    assert body["params"]["x"] == 5
    assert body["params"]["__ow_method"] == "post"
    assert "authorization" not in body["params"]["__ow_headers"]
