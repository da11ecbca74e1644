"""``fedkeeper hosts add | list | remove | ping | deploy``: the host registry from the command line.

The registry lives in the configuration's MongoDB (``scenarios.federated_learning.mongo_config``).
Passwords are read from stdin (``--password-stdin``), never from the command line.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from fedkeeper.function.config import Config
from fedkeeper.function.errors import ConfigError, FedkeeperError
from fedkeeper.function.redaction import redact, register_secret
from fedkeeper.host.hosts.registry import MAX_PAGE, VENV_MODES, Host, HostQuery, HostRegistry

F = TypeVar("F", bound=Callable[..., Any])


def _labels(values: tuple[str, ...], option: str = "--label") -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, label = value.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {value!r}: expected KEY=VALUE")
        labels[key] = label
    return labels


@contextmanager
def opened_registry(config: Config) -> Iterator[HostRegistry]:
    """The registry in ``config``'s MongoDB (an embedded server is held while it is open)."""
    from fedkeeper.host.services import Services

    with Services(config) as services:
        registry = HostRegistry(services.store())
        registry.ensure_indexes()
        yield registry


def _selected(registry: HostRegistry, fl_ids: tuple[str, ...], labels: dict[str, str]) -> list[Host]:
    if fl_ids:
        return [registry.require(fl_id) for fl_id in fl_ids]
    hosts = list(registry.all(HostQuery(labels=labels)))
    if not hosts:
        raise ConfigError("no registered host matches (fedkeeper hosts add ADDRESS registers one)")
    return hosts


def _load(config_path: Path) -> Config:
    from fedkeeper.host.cli import load_noting

    return load_noting(config_path)


# fedkeeper.host.cli adds this group to its own, so its helpers are imported when used, not at import.
def _config_option(func: F) -> F:
    from fedkeeper.host.cli import config_option

    return config_option(func)


def _friendly(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from fedkeeper.host.cli import friendly_errors

        return friendly_errors(func)(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@click.group()
def hosts() -> None:
    """Remote hosts (Raspberry Pis and the like) that run clients over SSH."""


@hosts.command("add")
@click.argument("address")
@click.option("--port", default=22, show_default=True, type=click.IntRange(1, 65535))
@click.option("--user", default="pi", show_default=True)
@click.option(
    "--fl-id", default=None, help="its FL identifier (default: ADDRESS, or ADDRESS:PORT off port 22)"
)
@click.option("--label", "label_values", multiple=True, metavar="KEY=VALUE", help="a label (repeatable)")
@click.option("--contact", default="", help="whom to call about this host")
@click.option("--arch", default=None, help="its machine (default: what `uname -m` says there)")
@click.option("--root", default=".fedkeeper-client", show_default=True, help="the runtime's folder there")
@click.option("--python", default="python3", show_default=True, help="the interpreter its venv is made from")
@click.option("--venv", type=click.Choice(VENV_MODES), default="pip", show_default=True,
              help="pip: install the requirements there; system: reuse the interpreter's packages")  # fmt: skip
@click.option("--host-key-fingerprint", default=None, metavar="SHA256:...",
              help="the host key's fingerprint, checked out of band (ssh-keygen -lf on the host)")  # fmt: skip
@click.option("--password-stdin", is_flag=True, help="read the login password from stdin (first contact)")
@click.option("-i", "--identity", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="an existing private key that logs in (first contact)")  # fmt: skip
@_config_option
@_friendly
def add(
    address: str,
    port: int,
    user: str,
    fl_id: str | None,
    label_values: tuple[str, ...],
    contact: str,
    arch: str | None,
    root: str,
    python: str,
    venv: str,
    host_key_fingerprint: str | None,
    password_stdin: bool,
    identity: Path | None,
    config_path: Path,
) -> None:
    """Register the host at ADDRESS: pin its key, install this installation's key there."""
    from fedkeeper.function.invoke import ssh
    from fedkeeper.host.hosts import access, keys

    labels = _labels(label_values)
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    register_secret(password)
    pkey = ssh.parse_private(identity.read_text(encoding="utf-8"), str(identity)) if identity else None
    endpoint = ssh.Endpoint(address, port, user)
    with opened_registry(_load(config_path)) as registry:
        key = keys.load(create=True)
        name = fl_id or (address if port == 22 else f"{address}:{port}")
        if registry.get(name) is not None:
            raise ConfigError(f"host {name!r} is already registered (fedkeeper hosts remove {name})")
        contact_facts = access.first_contact(
            endpoint, key, expected_fingerprint=host_key_fingerprint, password=password, identity=pkey
        )
        host = registry.add(
            Host(
                fl_id=name,
                address=address,
                port=port,
                user=user,
                host_key=contact_facts.host_key,
                host_key_fingerprint=contact_facts.host_key_fingerprint,
                arch=arch or contact_facts.arch,
                labels=labels,
                contact=contact,
                root=root,
                python=python,
                venv=venv,
            )
        )
    click.echo(
        f"registered {host.fl_id} ({host.endpoint.where}, {host.arch}): host key "
        f"{host.host_key_fingerprint} pinned, installation key {key.fingerprint} installed"
    )


@hosts.command("list")
@click.option("--address", default=None)
@click.option("--contact", default=None)
@click.option("--fl-id", default=None)
@click.option("--label", "label_values", multiple=True, metavar="KEY=VALUE")
@click.option("--limit", default=MAX_PAGE, show_default=True, type=int, help=f"at most {MAX_PAGE}")
@click.option("--skip", default=0, show_default=True, type=int)
@_config_option
@_friendly
def list_hosts(
    address: str | None,
    contact: str | None,
    fl_id: str | None,
    label_values: tuple[str, ...],
    limit: int,
    skip: int,
    config_path: Path,
) -> None:
    """List registered hosts (one page, by FL identifier)."""

    query = HostQuery(address=address, contact=contact, fl_id=fl_id, labels=_labels(label_values))
    with opened_registry(_load(config_path)) as registry:
        page = registry.find(query, limit, skip)
        total = registry.count(query)
    for host in page:
        labels = ",".join(f"{k}={v}" for k, v in sorted(host.labels.items())) or "-"
        runtime = host.deps.get("runtime", "not deployed")
        ping = host.last_ping or {}
        pinged = "never pinged" if not ping else ("ok" if ping.get("ok") else "unreachable")
        click.echo(
            f"{host.fl_id:<16} {host.endpoint.where:<28} {host.arch or '?':<8} {labels:<20} "
            f"{host.contact or '-':<20} runtime {runtime}  {pinged}"
        )
    click.echo(f"{len(page)} of {total} host(s) (skip {skip})")


@hosts.command("remove")
@click.argument("fl_ids", nargs=-1, required=True)
@_config_option
@_friendly
def remove(fl_ids: tuple[str, ...], config_path: Path) -> None:
    """Unregister hosts (their runtime and our key stay on them)."""

    with opened_registry(_load(config_path)) as registry:
        for fl_id in fl_ids:
            click.echo(f"{'removed' if registry.remove(fl_id) else 'not registered'}: {fl_id}")


@hosts.command("ping")
@click.argument("fl_ids", nargs=-1)
@click.option("--label", "label_values", multiple=True, metavar="KEY=VALUE")
@_config_option
@_friendly
def ping(fl_ids: tuple[str, ...], label_values: tuple[str, ...], config_path: Path) -> None:
    """Log in to hosts (all, or FL_IDS, or those with the labels) and report the round trip."""
    from fedkeeper.function.invoke.ssh import SshError
    from fedkeeper.host.hosts import access, keys

    failed = 0
    with opened_registry(_load(config_path)) as registry:
        key = keys.load()
        for host in _selected(registry, fl_ids, _labels(label_values)):
            try:
                latency = access.ping(host, key)
            except SshError as exc:
                failed += 1
                registry.record_ping(host.fl_id, False, None, str(exc))
                click.echo(f"{host.fl_id:<16} unreachable: {redact(str(exc))}")
                continue
            registry.record_ping(host.fl_id, True, round(latency, 1), None)
            click.echo(f"{host.fl_id:<16} ok  {latency:.0f} ms")
    if failed:
        raise FedkeeperError(f"{failed} host(s) did not answer")


@hosts.command("deploy")
@click.argument("fl_ids", nargs=-1)
@click.option("--label", "label_values", multiple=True, metavar="KEY=VALUE")
@_config_option
@_friendly
def deploy(fl_ids: tuple[str, ...], label_values: tuple[str, ...], config_path: Path) -> None:
    """Install the client runtime and the scenario's data files on hosts (all, or FL_IDS, or those
    with the labels); idempotent."""
    from fedkeeper.host.hosts import keys, runtime

    failed = 0
    bundle = runtime.Bundle.build()
    config = _load(config_path)
    data = runtime.data_files(config.fl.training_test_data)
    with opened_registry(config) as registry:
        key = keys.load()
        for host in _selected(registry, fl_ids, _labels(label_values)):
            try:
                outcome = runtime.deploy(host, key, bundle, registry, data)
            except FedkeeperError as exc:
                failed += 1
                click.echo(f"{host.fl_id:<16} failed: {redact(str(exc))}")
                continue
            packages = outcome.deps.get("packages") or {}
            state = "deployed" if outcome.changed else "up to date"
            click.echo(
                f"{host.fl_id:<16} {state}: runtime {bundle.digest}, python {outcome.deps.get('python')}, "
                f"{', '.join(f'{k} {v}' for k, v in sorted(packages.items()))}"
            )
    if failed:
        raise FedkeeperError(f"{failed} host(s) could not be deployed")
