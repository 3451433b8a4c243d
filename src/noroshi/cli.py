"""The `noroshi` command: serve, doctor."""

from __future__ import annotations

import asyncio
import os
import sys

import click

from noroshi import __version__
from noroshi.config import Config, ConfigError, data_dir, find_config_file, load_config
from noroshi.store import open_database

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
def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the gateway on Granian (RSGI)."""
    file = find_config_file(config_path)
    if file is not None:
        os.environ["NOROSHI_CONFIG"] = str(file.resolve())
    # the workers load the config themselves: overrides travel as environment variables
    for key, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[f"NOROSHI_SERVER__{key}"] = str(value)
    config = _load(None)
    server = config.server
    from granian import Granian
    from granian.constants import Interfaces, Loops

    url = f"http://{server.host}:{server.port}"
    directory = data_dir(config)
    database = open_database(directory)
    click.echo(f"noroshi {__version__} on {url}")
    click.echo(f"  config: {config.source or 'none (embedded defaults)'}")
    click.echo(f"  data:   {directory} (database {database.name})")
    if config.models:
        model = config.defaults.chat_model or config.models[0].name
        click.echo(f"  models: {', '.join(m.name for m in config.models)}")
        click.echo(
            f"  try:    curl -N {url}/api/chat -H 'content-type: application/json' "
            f'-d \'{{"model": "{model}", "messages": [{{"role": "user", '
            f'"content": "Hello"}}]}}\''
        )
    else:
        click.echo("  models: none; install the local model with pip install 'noroshi[local]',"
                   " or add [[models]] to the config (see noroshi.example.toml)")  # fmt: skip
    Granian(
        "noroshi.rsgi:app",
        address=server.host,
        port=server.port,
        interface=Interfaces.RSGI,
        workers=server.workers,
        loop=Loops.auto,
        websockets=False,
        workers_kill_timeout=int(server.drain_timeout_s) + 5,
        log_access=False,
    ).serve()


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
def doctor(config_path: str | None) -> None:
    """Check the config and reach each provider."""
    file = find_config_file(config_path)
    click.echo(f"config: {file if file else 'none found; using defaults'}")
    config = _load(config_path)
    click.echo(f"config: ok ({len(config.providers)} providers, {len(config.models)} models)")
    problems = asyncio.run(_probe_all(config))
    if not config.providers:
        click.echo(
            "providers: none configured; add a [providers.NAME] table (see noroshi.example.toml)"
        )
    sys.exit(1 if problems else 0)


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


if __name__ == "__main__":
    main()
