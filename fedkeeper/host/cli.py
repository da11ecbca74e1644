"""The ``fedkeeper`` command line. ``main.py`` and ``deploy.py`` are thin shims over it."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from fedkeeper.function.catalog import DIRECT_CLIENT_NEEDS, PROBE_FUNCTION
from fedkeeper.function.catalog import PLATFORMS as CATALOG
from fedkeeper.function.config import Config, load_config
from fedkeeper.function.errors import ConfigError, FedkeeperError
from fedkeeper.function.redaction import redact
from fedkeeper.host.providers.base import FunctionSpec

F = TypeVar("F", bound=Callable[..., Any])
PLATFORMS = tuple(p.name for p in CATALOG)


def friendly_errors(func: F) -> F:
    """Turn fedkeeper's errors into one line on stderr and an exit status, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FedkeeperError as exc:
            click.echo(f"fedkeeper: {redact(str(exc))}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo(
                "\nfedkeeper: interrupted; state is in MongoDB — `fedkeeper resume SESSION` continues",
                err=True,
            )
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def config_option(func: F) -> F:
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=Path("config.yaml"),
        show_default=True,
        help="configuration file",
    )(func)


def load_noting(config_path: Path) -> Config:
    """Load the config; each compatibility notice becomes one ``fedkeeper: notice:`` line on stderr."""
    notices: list[str] = []
    config = load_config(config_path, notices)
    for notice in notices:
        click.echo(f"fedkeeper: notice: {redact(notice)}", err=True)
    return config


# --------------------------------------------------------------------------- training
def run_main(config_path: Path, deploy: bool, start: bool, remove: bool, resume: str | None) -> None:
    """What ``main.py`` does: deploy, train (or resume), remove — in that order."""
    from fedkeeper.host.run import opened
    from fedkeeper.host.services import Services

    if not (deploy or start or remove or resume):
        raise ConfigError("nothing to do: give -d (deploy), -s (train), -r (remove) or --resume SESSION")
    config = load_noting(config_path)
    config.fl  # noqa: B018 - raises a clear error when the scenario is missing
    with Services(config) as services, opened(config) as run:
        # -r needs the local fabric too: its actions persist on disk until removed.
        for name in services.local_fabrics():
            click.echo(f"started the local fabric for openwhisk cluster {name!r}")
        if deploy:
            run.deploy(say=click.echo, params_dir=Path("params"))
        if start or resume:
            keeper = run.keeper(services.store())
            if resume:
                keeper.resume(resume)
            else:
                keeper.start()
        if remove:
            run.remove(say=click.echo)
            for name in services.stop_local_fabrics():
                click.echo(f"stopped the local fabric for openwhisk cluster {name!r}")
            if services.stop_embedded_store():
                click.echo("stopped the embedded MongoDB server")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fedkeeper")
def cli() -> None:
    """Federated learning over a fabric of FaaS platforms and emulated edge devices."""


@cli.command()
@config_option
@friendly_errors
def deploy(config_path: Path) -> None:
    """Deploy the four functions (writes params/)."""
    run_main(config_path, deploy=True, start=False, remove=False, resume=None)


@cli.command()
@config_option
@click.option("--deploy/--no-deploy", "with_deploy", default=False, help="deploy first")
@friendly_errors
def start(config_path: Path, with_deploy: bool) -> None:
    """Start a training session and run it to a stop rule."""
    run_main(config_path, deploy=with_deploy, start=True, remove=False, resume=None)


@cli.command()
@click.argument("session")
@config_option
@friendly_errors
def resume(session: str, config_path: Path) -> None:
    """Continue SESSION after its keeper stopped or died."""
    run_main(config_path, deploy=False, start=False, remove=False, resume=session)


@cli.command()
@config_option
@friendly_errors
def remove(config_path: Path) -> None:
    """Remove everything the configuration deployed (safe to run twice)."""
    run_main(config_path, deploy=False, start=False, remove=True, resume=None)


@cli.command()
@click.argument("session", required=False)
@config_option
@click.option(
    "--json", "as_json", is_flag=True, help="print the API's document (GET /api/v1/sessions[/SESSION])"
)
@friendly_errors
def status(session: str | None, config_path: Path, as_json: bool) -> None:
    """List sessions, or show one session's rounds."""
    from fedkeeper.host.services import Services

    config = load_noting(config_path)
    with Services(config) as services:
        store = services.store()
        if as_json:
            from fedkeeper.host.serve.documents import StatusReader

            reader = StatusReader(store, config)
            click.echo(json.dumps(reader.session(session) if session else reader.sessions(), indent=2))
            return
        if session is None:
            for doc in store.sessions():
                click.echo(
                    f"{doc['_id']}  {doc['phase']:<9}  round {doc['round']:<3}  "
                    f"activations ok {doc['counters']['succeeded']} failed {doc['counters']['failed']}"
                )
            return
        handle = store.for_session(session)
        doc = handle.record.get()
        mode = ((doc.get("scenario") or {}).get("server_config") or {}).get("mode", "sync")
        click.echo(f"{session}: {doc['phase']}, {mode} mode, next round {doc['round']}")
        for c in doc["conditions"]:
            click.echo(
                f"  {c['lastTransitionTime']:%Y-%m-%d %H:%M:%S} {c['type']} {c['reason']} {redact(c['message'])}"
            )
        if doc.get("membership"):
            members = handle.membership.get()
            window = members.window
            click.echo(
                f"  clients: active {list(members.active)}, asked for {list(members.requested)}, set aside "
                f"{list(members.set_aside)}, left {list(members.left)}"
                + (f"; validating change {window.change} from round {window.round}" if window else "")
            )
        for r in handle.rounds.all():
            m = r.get("metrics") or {}
            acc = f"accuracy {m['accuracy']:.4f}" if m else r["status"]
            if m.get("federated_accuracy") is not None:
                acc += f", federated accuracy {m['federated_accuracy']:.4f}"
            if m.get("staleness_max") is not None:
                acc += f", staleness mean {m['staleness_mean']:.1f} max {m['staleness_max']}"
            click.echo(f"  round {r['round']}: {acc}, selected {r['selected']}")


@cli.group()
def clients() -> None:
    """Clients joining or leaving a running session (picked up at the next round boundary)."""


@clients.command("add")
@click.argument("session")
@click.option("--cluster", required=True, help="a cluster with free client slots (NAME or PLATFORM/NAME)")
@click.option("--count", type=click.IntRange(min=1), default=1, show_default=True, help="how many clients")
@config_option
@friendly_errors
def clients_add(session: str, cluster: str, count: int, config_path: Path) -> None:
    """Bring COUNT free client slots of CLUSTER into SESSION."""
    from fedkeeper.host.reconfiguration import join
    from fedkeeper.host.services import Services

    with Services(load_noting(config_path)) as services:
        joined = join(services.store().for_session(session), cluster, count)
    click.echo(f"session {session}: clients {', '.join(map(str, joined))} join at the next round")


@clients.command("remove")
@click.argument("session")
@click.argument("client_ids", metavar="CLIENT...", nargs=-1, required=True, type=int)
@config_option
@friendly_errors
def clients_remove(session: str, client_ids: tuple[int, ...], config_path: Path) -> None:
    """Take clients out of SESSION for good."""
    from fedkeeper.host.reconfiguration import leave
    from fedkeeper.host.services import Services

    with Services(load_noting(config_path)) as services:
        leave(services.store().for_session(session), sorted(set(client_ids)))
    click.echo(
        f"session {session}: clients {', '.join(map(str, sorted(set(client_ids))))} leave at the next round"
    )


@cli.command()
@config_option
@click.option("--host", default=None, help="address to listen on  [default: serve.host, 127.0.0.1]")
@click.option("--port", type=int, default=None, help="port (0: any free one)  [default: serve.port, 3250]")
@friendly_errors
def serve(config_path: Path, host: str | None, port: int | None) -> None:
    """Serve the dashboard (/), the status API (/api/v1/) and Prometheus metrics (/metrics)."""
    from fedkeeper.host.serve.service import run

    sys.exit(run(load_noting(config_path), host, port))


# --------------------------------------------------------------------------- cluster check
def _parse_names(values: tuple[str, ...]) -> list[str]:
    return [name for value in values for name in value.split(",") if name]


def run_check(
    config_path: Path,
    everything: bool,
    selection: dict[str, list[str]],
    scenario: str,
    function: str,
    deploy: bool,
    remove: bool,
) -> None:
    """What ``deploy.py`` does: deploy (or remove) a test function and call it once per cluster."""
    from fedkeeper.host.packaging import function_dir
    from fedkeeper.host.run import opened_providers
    from fedkeeper.host.services import Services

    if deploy == remove:
        raise ConfigError("give exactly one of -d (deploy and check) or -r (remove)")
    config = load_noting(config_path)
    if scenario != "test":
        raise ConfigError(
            f"{config_path}: scenario {scenario!r}: deploy.py checks clusters with scenario 'test'"
        )
    try:
        source = function_dir(function)
    except FileNotFoundError:
        raise ConfigError(f"no function {function!r} under functions/") from None
    with Services(config) as services, opened_providers(config) as all_providers:
        chosen = {
            key: p for key, p in all_providers.items() if everything or key[1] in selection.get(key[0], [])
        }
        for platform, names in selection.items():
            for name in names:
                if (platform, name) not in all_providers:
                    raise ConfigError(f"{config_path}: providers.{platform}: no cluster named {name!r}")
        if not chosen:
            raise ConfigError("no cluster chosen: give -a, or -o/-g/-l/-e with cluster names")
        for name in services.local_fabrics():
            click.echo(f"started the local fabric for openwhisk cluster {name!r}")
        spec = FunctionSpec(
            name=function,
            source=source,
            memory_mb=config.scenarios.test.memory,
            timeout_s=config.scenarios.test.timeout,
        )
        failures = 0
        for (platform, name), provider in chosen.items():
            where = f"{platform}/{name}"
            try:
                if remove:
                    existed = provider.remove(function)
                    click.echo(f"{where:<24} {'removed' if existed else 'not deployed'} {function}")
                    continue
                provider.deploy(spec)
                timings = []
                for _ in range(2):  # the first call after a deploy is a cold start, the second warm
                    started = time.monotonic()
                    record = provider.invoke_sync(function, {"echo": "fedkeeper"}, float(spec.timeout_s) + 30)
                    timings.append((time.monotonic() - started) * 1000)
                    if not record.ok:
                        break
            except FedkeeperError as exc:
                failures += 1
                click.echo(f"{where:<24} unreachable: {exc}")
                continue
            if record.ok:
                result = record.result or {}
                click.echo(
                    f"{where:<24} reachable  cold start {timings[0]:6.0f} ms  warm {timings[-1]:5.0f} ms  "
                    f"python {result.get('python')} · {result.get('cpu_count')} cpu · "
                    f"{result.get('memory_mb')} MB · {result.get('platform')}"
                )
            else:
                failures += 1
                click.echo(f"{where:<24} reachable  but {function} failed: {record.error}")
        if remove:
            for name in services.stop_local_fabrics():
                click.echo(f"stopped the local fabric for openwhisk cluster {name!r}")
        if failures:
            raise FedkeeperError(f"{failures} of {len(chosen)} cluster(s) failed the check")


def check_options(func: F) -> F:
    options = [
        config_option,
        click.option("-a", "--all", "everything", is_flag=True, help="every configured cluster"),
        *(
            click.option(*p.flags, p.name, multiple=True, help=f"{p.title} clusters (comma list)")
            for p in CATALOG
        ),
        click.option("-s", "--scenario", default="test", show_default=True),
        click.option("-f", "--function", default=PROBE_FUNCTION, show_default=True),
        click.option("-d", "--deploy", "deploy", is_flag=True, help="deploy the function and call it"),
        click.option("-r", "--remove", "remove", is_flag=True, help="remove the function"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _check_command(summary: str, *, report: bool) -> Callable[..., None]:
    """The cluster check's callback with its options (``fedkeeper check`` and ``deploy.py`` share it).

    With ``report``, neither ``-d`` nor ``-r`` prints the capability report instead of an error.
    """

    @check_options
    @friendly_errors
    def command(config_path: Path, everything: bool, scenario: str, function: str, deploy: bool,
                remove: bool, **clusters: tuple[str, ...]) -> None:  # fmt: skip
        if report and not (deploy or remove):
            lines, problems = capability_report(load_noting(config_path))
            for line in lines:
                click.echo(line)
            if problems:
                raise FedkeeperError(f"{problems} function(s) are outside their cluster's limits")
            return
        selection = {name: _parse_names(clusters[name]) for name in PLATFORMS}
        run_check(config_path, everything, selection, scenario, function, deploy, remove)

    command.__doc__ = summary
    return command


check = cli.command("check")(
    _check_command(
        "Check clusters. Without -d/-r: print, per cluster, what it lacks and how its clients are "
        "reached. With -d: deploy a small function and call it once on each (deploy.py); -r removes it.",
        report=True,
    )
)


def capability_report(config: Config) -> tuple[list[str], int]:
    """Per cluster: what it lacks, where its clients go, and each deployed function outside its limits.

    Returns the lines and how many functions are outside their cluster's limits. Needs no
    credentials and contacts nothing: everything comes from the catalog, the config and the
    :class:`~fedkeeper.host.plan.Plan` made from them (no provider is opened).
    """
    from fedkeeper.function.catalog import CLIENT_FUNCTION, INVOKER_FUNCTION, MANAGING_FUNCTIONS
    from fedkeeper.function.invoke.base import unsupported
    from fedkeeper.host.placement import Route
    from fedkeeper.host.plan import Plan

    plan = Plan.build(config) if config.scenarios.federated_learning else None
    counts = plan.clients_per_cluster() if plan else {}
    routes = {p.key: p.route for p in plan.placements} if plan else {}
    cannot_evaluate = plan.cannot_evaluate() if plan else {}
    lines: list[str] = []
    problems = 0
    for platform in CATALOG:
        caps = platform.capabilities
        for cluster in config.providers.clusters(platform.name):
            key = (platform.name, cluster)
            where = f"{platform.name}/{cluster}"
            lacks = unsupported(caps, DIRECT_CLIENT_NEEDS)
            line = f"{where}: {', '.join(lacks) or 'async invoke, store access'}"
            if plan and key == plan.server:
                line += f"; runs the managing functions ({', '.join(MANAGING_FUNCTIONS)})"
            count = counts.get(key, 0)
            if plan and count and routes[key] is Route.VIA_INVOKER:
                line += f" -> {count} client(s) go through {INVOKER_FUNCTION} on {plan.server_where}"
            elif count:
                line += f"; {count} client(s) run {CLIENT_FUNCTION} directly"
            elif plan:
                line += "; hosts no clients"
            if count and where in cannot_evaluate:
                line += f"; left out of federated evaluation ({cannot_evaluate[where]})"
            lines.append(line)
            for deployed in plan.on(key) if plan else []:
                reasons = unsupported(caps, deployed.spec.needs)
                if reasons:
                    problems += 1
                    lines.append(f"{where}: {deployed.spec.name} cannot be deployed: {'; '.join(reasons)}")
    if plan and plan.groups:
        lines += plan.topology_lines()
    return lines, problems


# --------------------------------------------------------------------------- config files
@cli.group("config")
def config_group() -> None:
    """Configuration files."""


@config_group.command("migrate")
@click.argument("old", type=click.Path(dir_okay=False, path_type=Path))
@friendly_errors
def config_migrate(old: Path) -> None:
    """Print the native equivalent of FedKeeper's config file OLD (secrets as the file gives them)."""
    from fedkeeper.function.compat import migrate

    click.echo(migrate(old), nl=False)


# --------------------------------------------------------------------------- edge fleets
@cli.group()
def edge() -> None:
    """Devices joining or leaving an edge cluster's running gateway (the keeper notices at the next round)."""


def _edge_cluster(config_path: Path, cluster: str) -> Any:
    """The config's edge cluster ``cluster``, as its provider (an EdgeClient)."""
    from fedkeeper.function.invoke.edge import EdgeClient
    from fedkeeper.host.providers.registry import providers_from_config

    clusters = providers_from_config(load_noting(config_path), EdgeClient.platform)
    if cluster not in clusters:
        raise ConfigError(
            f"--cluster {cluster}: not an edge cluster of {config_path} (edge clusters: {', '.join(sorted(clusters)) or 'none'})"
        )
    return clusters[cluster]


def _say_fleet(cluster: str, fleet: Any) -> None:
    click.echo(
        f"edge cluster {cluster}: generation {fleet.generation}, devices {', '.join(map(str, fleet.devices))}"
    )


@edge.command("list")
@click.option("--cluster", required=True, help="an edge cluster of the config")
@config_option
@friendly_errors
def edge_list(cluster: str, config_path: Path) -> None:
    """Show the devices of CLUSTER's gateway and their generation."""
    _say_fleet(cluster, _edge_cluster(config_path, cluster).fleet())


@edge.command("add")
@click.option("--cluster", required=True, help="an edge cluster of the config")
@config_option
@friendly_errors
def edge_add(cluster: str, config_path: Path) -> None:
    """Boot one more device on CLUSTER's gateway."""
    device, fleet = _edge_cluster(config_path, cluster).add_device()
    click.echo(f"edge cluster {cluster}: device {device} joined")
    _say_fleet(cluster, fleet)


@edge.command("remove")
@click.option("--cluster", required=True, help="an edge cluster of the config")
@click.argument("device", type=int)
@config_option
@friendly_errors
def edge_remove(cluster: str, device: int, config_path: Path) -> None:
    """Power DEVICE of CLUSTER's gateway off, for good."""
    fleet = _edge_cluster(config_path, cluster).remove_device(device)
    click.echo(f"edge cluster {cluster}: device {device} left")
    _say_fleet(cluster, fleet)


# --------------------------------------------------------------------------- local fabric
@cli.group()
def fabric() -> None:
    """The local OpenWhisk-compatible fabric."""


@fabric.command("up")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3233, show_default=True, type=int)
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--faults", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="fault plan (JSON) for chaos runs")  # fmt: skip
def fabric_up(host: str, port: int, state_dir: Path | None, faults: Path | None) -> None:
    """Run the fabric in the foreground (Ctrl-C, SIGTERM or SIGHUP stop it and its workers)."""
    from fedkeeper.host.fabric.__main__ import main as fabric_main

    # In this process, not a child: a signal to the command is a signal to the fabric itself.
    argv = ["--host", host, "--port", str(port)]
    if state_dir:
        argv += ["--state-dir", str(state_dir)]
    if faults:
        argv += ["--faults", str(faults)]
    sys.exit(fabric_main(argv))


@fabric.command("down")
@config_option
@friendly_errors
def fabric_down(config_path: Path) -> None:
    """Stop the fabric daemons that fedkeeper started for the config's local clusters."""
    from fedkeeper.host.services import Services

    config = load_noting(config_path)
    stopped = Services(config).stop_local_fabrics()
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else "no local fabric daemon was running")


# --------------------------------------------------------------------------- compatibility shims
@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@config_option
@click.option("-d", "--deploy", is_flag=True, help="deploy the functions")
@click.option("-s", "--start", is_flag=True, help="train")
@click.option("-r", "--remove", is_flag=True, help="remove the functions")
@click.option("--resume", metavar="SESSION", default=None, help="continue a session")
@friendly_errors
def legacy_main(config_path: Path, deploy: bool, start: bool, remove: bool, resume: str | None) -> None:
    """fedkeeper: python main.py -c config.yaml -d | -s | -r."""
    run_main(config_path, deploy, start, remove, resume)


legacy_deploy = click.command(context_settings={"help_option_names": ["-h", "--help"]})(
    _check_command(
        "Check clusters: python deploy.py -c config.yaml -a -s test -f nodeinfo -d | -r.", report=False
    )
)


# After the helpers above, which its commands use.
from fedkeeper.host.hosts.cli import hosts  # noqa: E402

cli.add_command(hosts)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cli()
