"""The `noroshi` command: serve, doctor, keys, ingest."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from noroshi import __version__
from noroshi.config import Config, ConfigError, data_dir, find_config_file, load_config
from noroshi.logs import setup_logging
from noroshi.store import open_database_file
from noroshi.store.keys import KeyCreate, KeyStore

if TYPE_CHECKING:
    from noroshi.retrieval.ingest import Outcome

T = TypeVar("T")

EXIT_CONFIG = 2


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"noroshi: configuration error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="noroshi")
def main() -> None:
    """noroshi: a streaming-first AI gateway and agent server."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--host", help="Address to bind (default from config: 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to bind (default 8080).")
@click.option("--workers", type=click.IntRange(1), help="Worker processes (default 1).")
@click.option("--role", type=click.Choice(["all", "edge", "core"]), help="Default: all.")
@click.option("--core", "cores", help="Core URLs for --role edge, comma-separated.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Default from [logging] level: info.",
)
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
    role: str | None,
    cores: str | None,
    log_level: str | None,
) -> None:
    """Run the gateway on noroshi's own HTTP/1.1 server."""
    file = find_config_file(config_path)
    if file is not None:
        os.environ["NOROSHI_CONFIG"] = str(file.resolve())
    # overrides travel as environment variables, the way the config reads them
    if cores is not None:
        cores = json.dumps([c.strip() for c in cores.split(",") if c.strip()])  # a TOML array
    for key, value in (
        ("HOST", host),
        ("PORT", port),
        ("WORKERS", workers),
        ("ROLE", role),
        ("CORES", cores),
    ):
        if value is not None:
            os.environ[f"NOROSHI_SERVER__{key}"] = str(value)
    if log_level is not None:
        os.environ["NOROSHI_LOGGING__LEVEL"] = log_level
    config = _load(None)
    setup_logging(config.logging)
    from noroshi.serve import ListenError, failure, listen, run, say

    try:
        sockets = listen(config.server.host, config.server.port)
    except ListenError as exc:
        say(str(exc))
        sys.exit(EXIT_CONFIG)
    try:
        directory = data_dir(config)
        # migrated once here, before any worker opens it
        database = open_database_file(directory) if not config.storage.url else None
    except Exception as exc:
        say(failure(exc))
        sys.exit(EXIT_CONFIG)
    port = sockets[0].getsockname()[1]  # the one the system chose, for --port 0
    sys.exit(run(config, sockets, lambda: _banner(config, port, directory, database)))


def _banner(config: Config, port: int, directory: Path, database: Path | None) -> None:
    """What `serve` prints once it accepts connections."""
    server = config.server
    url = f"http://{server.host}:{port}"
    role_note = "" if server.role == "all" else f" as {server.role}"
    click.echo(f"noroshi {__version__} on {url}{role_note}")
    click.echo(f"  open:   {url}/ (playground and console), {url}/docs (API reference)")
    if server.role == "edge":
        click.echo(f"  cores:  {', '.join(server.cores)}")
    click.echo(f"  config: {config.source or 'none (embedded defaults)'}")
    store = f"database {database.name}" if database else "database on PostgreSQL"
    click.echo(f"  data:   {directory} ({store})")
    if config.models:
        model = config.defaults.chat_model or config.models[0].name
        click.echo(f"  models: {', '.join(m.name for m in config.models)}")
        local = config.providers.get("local")
        if local is not None and local.type == "local" and not local.model_path:
            from noroshi.providers.local import DEMO_NOTE

            click.echo(f"  note:   model local is {DEMO_NOTE}")
        key = ""
        if config.auth.master_key:  # the key itself is never printed
            held = "$NOROSHI_MASTER_KEY" if os.environ.get("NOROSHI_MASTER_KEY") else "MASTER_KEY"
            key = f' -H "authorization: Bearer {held}"'
        click.echo(
            f"  try:    curl -N {url}/api/chat -H 'content-type: application/json'{key} "
            f'-d \'{{"model": "{model}", "messages": [{{"role": "user", '
            f'"content": "Hello"}}]}}\''
        )
    else:
        click.echo(
            "  models: none; install the local model with pip install 'noroshi[local]',"
            " or add [[models]] to the config (see noroshi.example.toml)"
        )


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
def doctor(config_path: str | None) -> None:
    """Check the config, and everything a start needs: reach each provider, open the database
    and Redis, import each tool, start each MCP server and list its tools."""
    file = find_config_file(config_path)
    click.echo(f"config: {file if file else 'none found; using defaults'}")
    config = _load(config_path)
    click.echo(f"config: ok ({len(config.providers)} providers, {len(config.models)} models)")
    problems = asyncio.run(_doctor(config))
    if not config.providers:
        click.echo(
            "providers: none configured; add a [providers.NAME] table (see noroshi.example.toml)"
        )
    if problems:
        click.echo(f"{problems} problem{'s' if problems > 1 else ''} found")
    sys.exit(1 if problems else 0)


async def _doctor(config: Config) -> int:
    checks = (_probe_all, _check_database, _check_redis, _check_tools)
    return sum([await check(config) for check in checks])


async def _check_database(config: Config) -> int:
    from noroshi.store.database import open_database

    where = "storage.url" if config.storage.url else f"database in {data_dir(config)}"
    try:
        db = await open_database(
            config.storage.url, data_dir(config), connect_timeout_s=config.storage.connect_timeout_s
        )
    except Exception as exc:
        click.echo(f"{where}: NOT OK: {' '.join(str(exc).split())}")
        return 1
    await db.close()
    click.echo(f"{where}: ok")
    return 0


async def _check_redis(config: Config) -> int:
    if not config.redis.url:
        return 0
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(config.redis.url, socket_connect_timeout=5)
    try:
        await client.ping()
        click.echo("redis.url: ok")
        return 0
    except Exception as exc:
        click.echo(f"redis.url: NOT OK: {exc}")
        return 1
    finally:
        await client.aclose()


async def _check_tools(config: Config) -> int:
    """Start each MCP server and list its tools; import each agent's `module:function`."""
    from noroshi.agent.tools import load_tool
    from noroshi.config import tool_ref

    problems, servers = 0, set()
    if config.mcp_servers:
        from noroshi.agent.mcp import MCPServer
    for i, server_config in enumerate(config.mcp_servers):
        server = MCPServer(server_config)
        try:
            await server.start()
            names = ", ".join(t.name for t in server.tools) or "none"
            click.echo(f"mcp_servers.{i} ({server_config.name}): ok; tools: {names}")
            servers.add(server_config.name)
        except Exception as exc:
            problems += 1
            click.echo(f"mcp_servers.{i} ({server_config.name}): NOT OK: {exc}")
        finally:
            await server.close()
    http = {t.name for t in config.http_tools}
    for i, agent in enumerate(config.agents):
        for j, entry in enumerate(agent.tools):
            ref = tool_ref(entry, http, {s.name for s in config.mcp_servers})
            if ref is None or ref[0] != "python":
                continue  # HTTP and MCP tools: checked above, and names by the config's load
            try:
                load_tool(entry)
            except (ImportError, AttributeError, ValueError) as exc:
                problems += 1
                click.echo(f"agents.{i}.tools.{j}: NOT OK: cannot load tool '{entry}': {exc}")
            else:
                click.echo(f"agents.{i}.tools.{j} ({entry}): ok")
    return problems


async def _probe_all(config: Config) -> int:
    from noroshi.app import build_provider
    from noroshi.errors import NoroshiError

    problems = 0
    for name, pc in config.providers.items():
        provider = build_provider(name, pc)
        try:
            status = await asyncio.wait_for(provider.probe(), pc.connect_timeout_s + 10)
            click.echo(f"provider {name} ({pc.type}, {pc.base_url}): {status}")
        except (NoroshiError, TimeoutError) as exc:
            problems += 1
            detail = getattr(exc, "message", "") or "timed out"
            click.echo(f"provider {name} ({pc.type}, {pc.base_url}): NOT OK: {detail}")
            if not pc.api_key:
                click.echo(f"  providers.{name}.api_key is empty; set it if the server needs one")
        finally:
            await provider.close()
    return problems


@main.group()
def keys() -> None:
    """Create, list and revoke virtual keys (the same store as /admin/keys)."""


@keys.command("create")
@click.argument("name")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--model", "models", multiple=True, help="A model the key may use (repeat).")
@click.option("--rpm", type=click.IntRange(1), help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(1), help="Tokens per minute.")
@click.option("--max-concurrency", type=click.IntRange(1), help="Requests at once.")
@click.option("--budget", help='JSON, e.g. \'{"tokens_per_day": 100000, "cost_per_month": 20}\'.')
@click.option("--expires-at", help="ISO 8601 time after which the key stops working.")
@click.option("--metadata", help="JSON object kept with the key.")
def keys_create(config_path: str | None, name: str, **options: Any) -> None:
    """Create a key and print it; it is shown this once."""
    spec: dict[str, Any] = {"name": name, "models": list(options.pop("models"))}
    for field in ("budget", "metadata"):
        value = options.pop(field)
        if value is not None:
            try:
                spec[field] = json.loads(value)
            except ValueError as exc:
                raise click.BadParameter(f"not JSON: {exc}", param_hint=f"--{field}") from None
    spec.update({k: v for k, v in options.items() if v is not None})
    try:
        create = msgspec.convert(spec, KeyCreate)
    except msgspec.ValidationError as exc:
        raise click.ClickException(str(exc)) from None
    key, secret = asyncio.run(_with_keys(_load(config_path), lambda store: store.create(create)))
    click.echo(f"created {key.id} ({key.name}); the key is shown this once:")
    click.echo(secret)


@keys.command("list")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
def keys_list(config_path: str | None, include_revoked: bool) -> None:
    """List keys (never their secrets)."""
    found = asyncio.run(_with_keys(_load(config_path), lambda s: s.list(include_revoked)))
    for key in found:
        state = "revoked" if key.revoked_at else "active"
        limits = " ".join(
            f"{n}={getattr(key, n)}"
            for n in ("rpm", "tpm", "max_concurrency")
            if getattr(key, n) is not None
        )
        models = f"models={','.join(key.models)}" if key.models else "models=any"
        budget = ""
        if key.budget is not None:
            spent = {k: v for k, v in msgspec.structs.asdict(key.budget).items() if v is not None}
            budget = "budget=" + ",".join(f"{k}:{v}" for k, v in spent.items())
        expires = "" if key.expires_at is None else f"expires={key.expires_at.iso()}"
        line = f"{key.id}  {key.hint}  {state:7}  {key.name}  {models} {limits} {budget} {expires}"
        click.echo(" ".join(line.split(" ")).rstrip())
    if not found:
        click.echo("no keys")


@keys.command("revoke")
@click.argument("key_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
def keys_revoke(config_path: str | None, key_id: str) -> None:
    """Revoke a key; running servers stop accepting it within a second."""
    config = _load(config_path)
    key = asyncio.run(_with_keys(config, lambda store: store.revoke(key_id)))
    if key is None:
        click.echo(f"noroshi: no key with id {key_id}", err=True)
        sys.exit(1)
    if config.redis.url:
        asyncio.run(_announce(config, key.id))
    click.echo(f"revoked {key.id} ({key.name})")


async def _with_keys(config: Config, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    from noroshi.errors import NoroshiError
    from noroshi.store.database import open_database as open_store

    db = await open_store(config.storage.url, data_dir(config))
    try:
        return await action(KeyStore(db))
    except NoroshiError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        await db.close()


async def _announce(config: Config, key_id: str) -> None:
    from noroshi.auth import KeyChanges

    changes = KeyChanges(config.redis.url, config.redis.prefix, lambda _: None)
    try:
        await changes.publish(key_id)
    finally:
        await changes.close()


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--kb", "kb", required=True, help="The knowledge base to add to.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--create/--no-create", default=True, help="Create the base when missing.")
@click.option("--model", default="", help="Embedding model of a new base (default: config's).")
def ingest(path: Path, kb: str, config_path: str | None, create: bool, model: str) -> None:
    """Add a file, or every text, Markdown, HTML and PDF file under a folder, to a knowledge
    base. Files already there with the same bytes are skipped, so a re-run resumes."""
    from noroshi.retrieval.ingest import files_under

    files = list(files_under(path))
    if not files:
        raise click.ClickException(f"no text, Markdown, HTML or PDF files under {path}")
    outcome = asyncio.run(_ingest(_load(config_path), kb, files, model if create else None))
    click.echo(
        f"{kb}: {outcome.added} added or updated, {outcome.unchanged} unchanged, "
        f"{len(outcome.failed)} failed"
    )
    for source, why in outcome.failed:
        click.echo(f"  {source}: {why}", err=True)
    if outcome.failed:
        sys.exit(1)


async def _ingest(
    config: Config, kb: str, files: list[tuple[Path, str]], model: str | None
) -> Outcome:
    from noroshi.app import App
    from noroshi.errors import NoroshiError
    from noroshi.retrieval.ingest import ingest
    from noroshi.retrieval.service import Knowledge, open_store
    from noroshi.store.database import open_database

    app = App(config)  # its providers and model router, without serving
    db = await open_database(config.storage.url, data_dir(config))
    store = open_store(db, data_dir(config), config.retrieval)
    knowledge = Knowledge(store, app.models, config.retrieval, app.default_embedding_model)
    try:
        await knowledge.open()
        with click.progressbar(
            length=len(files),
            label=f"ingesting into {kb}",
            item_show_func=lambda s: s,
            file=sys.stderr,
        ) as bar:
            return await ingest(knowledge, kb, files, model, lambda source: bar.update(1, source))
    except NoroshiError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        await knowledge.store.close()
        await db.close()
        for provider in app.providers.values():
            await provider.close()


if __name__ == "__main__":
    main()
