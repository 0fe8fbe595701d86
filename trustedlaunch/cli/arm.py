"""Shared plumbing of the az-compatible commands (`tl aks`, `tl feature`, `tl provider`): connection to the
API (`--endpoint`/`TL_ENDPOINT` with `TL_TOKEN`, or an embedded local server), ARM errors, long-running
operations with a Rich progress display (the server's note of each step), and az's global options
(`--output`, `--query`, `--subscription`, `--only-show-errors`, `--verbose`, `--debug`) and exit codes.

Embedded server: without an endpoint, each command starts the API with uvicorn on 127.0.0.1 (a free port) in a
background thread of the `tl` process itself, on the default SQLite store, with the node reconciler in another
thread, and stops both when the command ends. State lives in the database; node VMs keep running between
commands and the next command's reconciler adopts them and resumes unfinished operations.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, get_type_hints
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.text import Text

from trustedlaunch.api.api_versions import CONTAINER_SERVICE, default_version, provider_of
from trustedlaunch.cli.errors import FAILURE_EXIT_CODE, NOT_FOUND_EXIT_CODE, bad_input
from trustedlaunch.cli.output import ColumnSpec, DetailTable, OutputFormat, query_scope, render
from trustedlaunch.cli.output import print_table as print_table
from trustedlaunch.control.limits import SUBSCRIPTION_ID
from trustedlaunch.control.operations import RECONCILER_NOTE
from trustedlaunch.control.resource_id import ResourceId
from trustedlaunch.store.vocabulary import OperationStatus

DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
DEFAULT_WAIT_SECONDS = 300
POLL_SECONDS = 1.0
LOGGERS = ("trustedlaunch.cli", "httpx")  # what --verbose (INFO) and --debug (DEBUG) show on stderr
log = logging.getLogger("trustedlaunch.cli")


def name_rule(pattern: re.Pattern[str], rule: str) -> Callable[[str | None], str | None]:
    """A typer option callback refusing values that do not match `pattern` (as az checks names before it
    sends anything): a name is one path segment and can never address another resource."""

    def check(value: str | None) -> str | None:
        if value is not None and not pattern.match(value):
            raise typer.BadParameter(f"'{value}' is not valid: {rule}")
        return value

    return check


def segment(value: str) -> str:
    """`value` as one percent-quoted path segment ('/', '?', '#' and '%' cannot leave it); '.', '..' and ''
    are refused."""
    if value in ("", ".", ".."):
        raise bad_input(f"'{value}' cannot be a name in a resource path")
    return quote(value, safe="")


EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        envvar="TL_ENDPOINT",
        help="API base URL (token from TL_TOKEN). Without it, an embedded local server on the default store.",
    ),
]
SubscriptionOption = Annotated[
    str,
    typer.Option(
        "--subscription",
        envvar="TL_SUBSCRIPTION",
        help="Subscription id (a GUID).",
        callback=name_rule(SUBSCRIPTION_ID, "a subscription id is a GUID such as " + DEFAULT_SUBSCRIPTION),
    ),
]
OutputOption = Annotated[
    OutputFormat, typer.Option("--output", "-o", help="Output format: json, jsonc, table, tsv, yaml or none.")
]
QueryOption = Annotated[
    str | None, typer.Option("--query", help="JMESPath query string (jmespath.org), applied before -o.")
]
OnlyShowErrorsOption = Annotated[
    bool, typer.Option("--only-show-errors", help="Only show errors, suppressing warnings.")
]
VerboseOption = Annotated[bool, typer.Option("--verbose", help="Increase logging verbosity.")]
DebugOption = Annotated[
    bool, typer.Option("--debug", help="Show all debug logs (every request and answer) on stderr.")
]
NoWaitOption = Annotated[bool, typer.Option("--no-wait", help="Do not wait for the long-running operation.")]
TimeoutOption = Annotated[
    int, typer.Option("--timeout", min=1, help="Seconds to wait for a long-running operation to finish.")
]


class ArmCallError(Exception):
    """An ARM error returned by the API."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", ""))
        self.status = status
        self.error = error


_ONLY_SHOW_ERRORS: ContextVar[bool] = ContextVar("tl_only_show_errors", default=False)


def fail(message: str, exit_code: int = FAILURE_EXIT_CODE) -> typer.Exit:
    """Print `ERROR: message` on stderr and return the Exit to raise."""
    typer.echo(f"ERROR: {message}", err=True)
    return typer.Exit(exit_code)


def warn(message: str) -> None:
    """Print `WARNING: message` on stderr, unless --only-show-errors."""
    if not _ONLY_SHOW_ERRORS.get():
        typer.echo(f"WARNING: {message}", err=True)


def note(message: str) -> None:
    """Print a progress or result line on stderr (stdout keeps the command's output), unless
    --only-show-errors."""
    if not _ONLY_SHOW_ERRORS.get():
        typer.echo(message, err=True)


def report_arm_error(exc: ArmCallError) -> typer.Exit:
    """Print an ARM error as az does (`ERROR: (Code) message`, `Code:`, target, each further detail) and
    return az's exit: 3 for a missing resource (404), else 1 (the server refused the request)."""
    error = exc.error
    lines = [f"({error.get('code')}) {error.get('message')}", f"Code: {error.get('code')}"]
    if error.get("target"):
        lines.append(f"Target: {error['target']}")
    for detail in error.get("details") or []:
        if detail.get("message") and detail.get("message") in str(error.get("message")):
            continue  # a single cause already said above
        lines.append(f"  - ({detail.get('code')}) {detail.get('target')}: {detail.get('message')}")
    typer.echo("ERROR: " + "\n".join(lines), err=True)
    return typer.Exit(NOT_FOUND_EXIT_CODE if exc.status == 404 else FAILURE_EXIT_CODE)


API_VERSION_ENV = "TL_API_VERSION"


def requested_api_version() -> str | None:
    """The Microsoft.ContainerService api-version `TL_API_VERSION` asks for (az has no flag for it: the
    aks-preview extension is how az sends preview versions), checked against the versions the server
    serves (api/api_versions.py) before anything is sent; None when unset."""
    raw = os.environ.get(API_VERSION_ENV, "").strip()
    if not raw:
        return None
    if raw not in CONTAINER_SERVICE.versions:
        raise bad_input(
            f"{API_VERSION_ENV}: '{raw[:64]}' is not an api-version of {CONTAINER_SERVICE.namespace}. "
            f"The supported api-versions are '{CONTAINER_SERVICE.listed()}'."
        )
    return raw


def api_version_hook(container_service_version: str | None) -> Callable[[httpx.Request], None]:
    """A request hook giving a request without an api-version its namespace's newest GA one, as az does
    (trusted launch then needs no TrustedLaunchPreview registration), or `container_service_version`
    (TL_API_VERSION) for Microsoft.ContainerService requests; operation URLs keep the server's."""

    def add_api_version(request: httpx.Request) -> None:
        if "api-version" in request.url.params:
            return
        provider, _type = provider_of(request.url.path)
        version = default_version(request.url.path)
        if container_service_version is not None and provider is CONTAINER_SERVICE:
            version = container_service_version
        request.url = request.url.copy_add_param("api-version", version)

    return add_api_version


# Answers that carry credentials (kubeconfigs with client keys, API tokens, attestation tokens): --debug
# does not print them.
CREDENTIAL_ANSWERS = ("/listclusterusercredential", "/listclusteradmincredential", "/getattestationtoken")
TOKENS_PATH_PART = "/providers/microsoft.trustedlaunch/tokens"


def _loggable_content(path: str, text: str) -> str:
    """A response body as --debug prints it: at most 4000 characters, and not at all when it carries
    credentials."""
    lowered = path.lower().split("?", 1)[0]
    if lowered.endswith(CREDENTIAL_ANSWERS) or TOKENS_PATH_PART in lowered:
        return f"(not shown: {len(text)} characters holding credentials)"
    return text[:4000]


class ArmClient:
    """httpx client for one API endpoint and subscription."""

    def __init__(self, endpoint: str, token: str, subscription_id: str) -> None:
        api_version = requested_api_version()
        if api_version is not None:
            log.debug("api-version %s for Microsoft.ContainerService (%s)", api_version, API_VERSION_ENV)
        self.http = httpx.Client(
            base_url=endpoint.rstrip("/"),
            headers={"Authorization": f"Bearer {token}", "User-Agent": "tl-cli"},
            event_hooks={"request": [api_version_hook(api_version)]},
            timeout=30.0,
        )
        self.subscription_id = subscription_id

    def path(self, resource_id: ResourceId) -> str:
        """The request path of `resource_id`: its namespace and every name quoted as one segment."""
        return resource_id.path(segment)

    @property
    def subscription(self) -> ResourceId:
        """The id of the subscription the commands act on."""
        return ResourceId(self.subscription_id)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; ARM errors raise ArmCallError, unreachable servers a clear ERROR."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise fail(f"cannot reach the API at {self.http.base_url}: {exc}") from None
        log.debug("Response status: %s", response.status_code)
        log.debug("Response content: %s", _loggable_content(path, response.text))
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": f"HTTP{response.status_code}", "message": response.text[:500]}
            raise ArmCallError(response.status_code, error)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """The response body as JSON."""
        return self.request(method, path, **kwargs).json()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()


@dataclass(frozen=True)
class ApiTarget:
    """Where an API command sends its requests: `--endpoint` (None: an embedded server) and
    `--subscription`."""

    endpoint: str | None
    subscription: str = DEFAULT_SUBSCRIPTION

    def connect(self) -> AbstractContextManager[ArmClient]:
        """An ArmClient for this target (see `connect`)."""
        return connect(self.endpoint, self.subscription)


Command = TypeVar("Command", bound=Callable[..., None])
_KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD


def api_command(
    app: typer.Typer, name: str | None = None, *, subscription: bool = True
) -> Callable[[Command], Command]:
    """Register `command`, which takes `api: ApiTarget`, on `app` with az's global options as its last
    options: `--query`, `--only-show-errors`, `--verbose`, `--debug`, `--endpoint` (TL_ENDPOINT) and, unless
    `subscription` is False, `--subscription` (TL_SUBSCRIPTION); every API command takes them in the same
    place (`tl aks create ... --subscription X`) without declaring them. `-o` is the command's own."""

    def register(command: Command) -> Command:
        hints = get_type_hints(command, include_extras=True)
        own = [
            parameter.replace(annotation=hints[parameter.name])
            for parameter in inspect.signature(command).parameters.values()
            if parameter.name != "api"
        ]
        shared = [
            inspect.Parameter("query", _KEYWORD, default=None, annotation=QueryOption),
            inspect.Parameter("only_show_errors", _KEYWORD, default=False, annotation=OnlyShowErrorsOption),
            inspect.Parameter("verbose", _KEYWORD, default=False, annotation=VerboseOption),
            inspect.Parameter("debug", _KEYWORD, default=False, annotation=DebugOption),
            inspect.Parameter("endpoint", _KEYWORD, default=None, annotation=EndpointOption),
        ]
        if subscription:
            shared.append(
                inspect.Parameter(
                    "subscription", _KEYWORD, default=DEFAULT_SUBSCRIPTION, annotation=SubscriptionOption
                )
            )

        def run(
            query: str | None = None,
            only_show_errors: bool = False,
            verbose: bool = False,
            debug: bool = False,
            endpoint: str | None = None,
            subscription: str = DEFAULT_SUBSCRIPTION,
            **options: Any,
        ) -> None:
            started = time.monotonic()
            with query_scope(query), _logging(verbose, debug), _warnings(only_show_errors):
                log.debug("Command arguments: %s", {"endpoint": endpoint, "subscription": subscription})
                try:
                    command(api=ApiTarget(endpoint, subscription), **options)
                finally:
                    log.info("Command ran in %.3f seconds", time.monotonic() - started)

        run.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
        run.__annotations__ = {parameter.name: parameter.annotation for parameter in (*own, *shared)}
        run.__name__, run.__qualname__ = command.__name__, command.__qualname__
        run.__doc__, run.__module__ = command.__doc__, command.__module__
        app.command(name=name)(run)
        return command

    return register


@contextmanager
def _warnings(only_show_errors: bool) -> Iterator[None]:
    token = _ONLY_SHOW_ERRORS.set(only_show_errors)
    try:
        yield
    finally:
        _ONLY_SHOW_ERRORS.reset(token)


@contextmanager
def _logging(verbose: bool, debug: bool) -> Iterator[None]:
    """--verbose: INFO of `tl` on stderr; --debug: DEBUG of `tl` and of its HTTP client (every request)."""
    if not (verbose or debug):
        yield
        return
    handler = logging.StreamHandler()  # stderr, as az
    handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
    levels = {name: logging.DEBUG if debug else logging.INFO for name in LOGGERS}
    if not debug:
        levels["httpx"] = logging.WARNING
    previous = {}
    for name, level in levels.items():
        logger = logging.getLogger(name)
        previous[name] = logger.level
        logger.setLevel(level)
        logger.addHandler(handler)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).removeHandler(handler)


@contextmanager
def connect(endpoint: str | None, subscription_id: str) -> Iterator[ArmClient]:
    """An ArmClient for `endpoint` (token TL_TOKEN) or for an embedded server; ARM errors become exits."""
    if endpoint:
        token = os.environ.get("TL_TOKEN", "")
        if not token:
            raise fail("TL_TOKEN is not set: export the API bearer token to use --endpoint/TL_ENDPOINT", 2)
        with contextlib.ExitStack() as stack:
            yield _reporting_errors(stack, ArmClient(endpoint, token, subscription_id))
        return
    # Imported here: only the embedded mode needs the server side.
    from trustedlaunch.api.app import create_app
    from trustedlaunch.api.attestation_monitor_routes import EMBEDDED
    from trustedlaunch.api.server import BackgroundServer
    from trustedlaunch.control.plane import ControlPlane
    from trustedlaunch.errors import TrustedLaunchError

    with contextlib.ExitStack() as stack:
        try:
            plane = stack.enter_context(ControlPlane())
            server = BackgroundServer(create_app(plane=plane), reconciler=plane.reconciler())
            stack.callback(server.stop)
            url = server.start()
            server.app.state.attestation_monitor = EMBEDDED  # its reconciler stops with the command
        except TrustedLaunchError as exc:
            raise fail(str(exc)) from None
        admin_token = plane.token_file.read_text().strip()
        yield _reporting_errors(stack, ArmClient(url, admin_token, subscription_id))


def _reporting_errors(stack: contextlib.ExitStack, client: ArmClient) -> ArmClient:
    """`client`, closed with `stack`, whose ARM call errors inside the stack's block become exits."""

    def report(kind: type[BaseException] | None, error: BaseException | None, _trace: object) -> bool:
        if isinstance(error, ArmCallError):
            raise report_arm_error(error) from None
        return False

    stack.push(report)
    stack.callback(client.close)
    return client


def wait_for_operation(
    client: ArmClient, response: httpx.Response, what: str, timeout: int
) -> dict[str, Any]:
    """Poll the Azure-AsyncOperation URL with a Rich spinner showing the step the server reports (the
    operation's `properties.note`, e.g. "agent pool tlpool: reimaging node 1/3") until it leaves InProgress.

    Raises exit 1 when it failed or is still InProgress after `timeout` seconds (the reconciler drives the
    nodes; with `--no-wait` the operation continues at the next command that runs a reconciler)."""
    url = response.headers["Azure-AsyncOperation"]
    console = Console(stderr=True)
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    last_step = None
    with console.status(f"{what}: InProgress", spinner="dots") as spinner:
        while time.monotonic() < deadline:
            status = client.json("GET", url)
            if status["status"] != OperationStatus.IN_PROGRESS:
                break
            elapsed = int(timeout - (deadline - time.monotonic()))
            step = (status.get("properties") or {}).get("note")
            if step == RECONCILER_NOTE or not step:
                step = "waiting for the node reconciler"
            if step != last_step:
                log.info("%s: %s", what, step)
                last_step = step
            spinner.update(Text(f"{what}: {step} ({elapsed} s)", no_wrap=True, overflow="ellipsis"))
            time.sleep(POLL_SECONDS)
    if status.get("status") == OperationStatus.SUCCEEDED:
        return status
    if status.get("status") in (None, OperationStatus.IN_PROGRESS):
        raise fail(
            f"{what} is still InProgress after {timeout} s (operation {url}); it continues on the server: "
            "check it with `show`, or use --no-wait"
        )
    error = status.get("error") or {}
    raise fail(f"{what} ended {status.get('status')}: ({error.get('code')}) {error.get('message')}")


def print_json(value: object) -> None:
    """Print `value` as indented JSON (the default output, as az)."""
    render(value, OutputFormat.json, (), lambda item: item)


def output(
    value: object,
    fmt: OutputFormat,
    columns: Sequence[ColumnSpec],
    row: Any,
    table_rows: Callable[[Any], Sequence[Sequence[object]]] | None = None,
    details: Callable[[Any], Sequence[DetailTable]] | None = None,
) -> None:
    """Print a resource (or a list of them) in `fmt` after `--query`; tables with `row(resource)` per
    line (or `table_rows(value)`) and the `columns` that fit the terminal, then its `details` tables."""
    render(value, fmt, columns, row, table_rows, details)
