"""Every shell, Python and TOML example of the README and docs/, run as written against live
servers, so the documentation cannot drift from the product.

A shell block runs in bash (`set -eu`), its curl failing on an HTTP error; a Python block runs
in a fresh interpreter; a TOML block must load as configuration, added to the README's minimal
one. `127.0.0.1:8080` and `localhost:8080` are the live server's address. A comment just before
a block can change how it runs:

    <!-- example: skip: WHY -->    not run (it needs a real provider, platform or machine)
    <!-- example: file NAME -->    written to NAME for the blocks after it (a tool module)
    <!-- example: after -->        a Python block that goes on from the one before it

The live servers answer model `fast` and `local` from a fake OpenAI upstream (the answers are
not what is checked), embed with the fake's vectors, and run the README's agent with the
documented tool module and MCP server. The one with a master key serves the blocks that use
$NOROSHI_MASTER_KEY.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tomllib
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from noroshi.config import load_config
from tests.fakes.upstream import FakeOpenAI
from tests.processes import start_server, stop

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MASTER_KEY = "sk-master-examples-0123456789"
BLOCK = re.compile(
    r"(?:<!-- example: (?P<mark>[^>]*?) -->\n(?:\n)?)?^```(?P<lang>sh|python|toml)\n(?P<body>.*?)^```",
    re.S | re.M,
)
ADDRESS = re.compile(r"(?:http://)?(?:127\.0\.0\.1|localhost):8080")
ENV = {  # the secrets the examples read from the environment
    "UP_KEY": "k",
    "FORECAST_KEY": "k",
    "TELEGRAM_BOT_TOKEN": "1:x",
    "TELEGRAM_WEBHOOK_SECRET": "s",
    "SLACK_BOT_TOKEN": "xoxb-1",
    "SLACK_SIGNING_SECRET": "s",
    "DISCORD_APPLICATION_ID": "1",
    "DISCORD_PUBLIC_KEY": "0" * 64,
    "NOROSHI_INTERNAL_SECRET": "s" * 32,
}


@dataclass
class Example:
    where: str
    lang: str
    body: str
    mark: str
    before: str = ""  # the Python it goes on from


def examples() -> Iterator[Example]:
    for doc in DOCS:
        text, previous = doc.read_text(), ""
        for m in BLOCK.finditer(text):
            line = text[: m.start("lang")].count("\n") + 1
            mark, body = m["mark"] or "", m["body"]
            example = Example(f"{doc.name}:{line}", m["lang"], body, mark)
            if m["lang"] == "python" and not mark.startswith("skip"):
                if mark == "after":
                    example.before = previous
                previous = example.before + body
            yield example


EXAMPLES = list(examples())


def config_for(upstream: str) -> str:
    return f"""
[providers.up]
type = "openai"
base_url = "{upstream}"
api_key = "test-key"

[[models]]
name = "fast"
deployments = [{{ provider = "up", model = "m1" }}]

[[models]]
name = "local"
deployments = [{{ provider = "up", model = "m1" }}]

[[models]]
name = "e5-small"
deployments = [{{ provider = "up", model = "e5" }}]

[defaults]
chat_model = "local"
embedding_model = "e5-small"

[[agents]]
name = "weather"
model = "fast"
tools = ["my_tools:get_weather", "mcp:files"]

[[mcp_servers]]
name = "files"
command = ["{sys.executable}", "-m", "my_mcp_server"]
"""


@dataclass
class Live:
    work: Path
    open_url: str
    keyed_url: str
    env: dict[str, str]
    keyed_env: dict[str, str]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    work = tmp_path_factory.mktemp("examples")
    for example in EXAMPLES:  # the modules the examples define, which the servers import
        if example.mark.startswith("file "):
            (work / example.mark.removeprefix("file ")).write_text(example.body)
    (work / "handbook").mkdir()
    (work / "handbook" / "holidays.md").write_text("# Holidays\n\nEveryone has 25 holiday days.\n")
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NOROSHI_")},
        **ENV,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(work), str(ROOT / "src"), str(ROOT)]),
    }
    async with FakeOpenAI(api_key="test-key") as fake:
        config = config_for(fake.base_url)
        (work / "open").mkdir()
        (work / "keyed").mkdir()
        cwd = Path.cwd()
        os.chdir(work)  # where the servers find my_tools and my_mcp_server
        try:
            servers = [
                await start_server(work / "open", config, env=base, name="open"),
                await start_server(
                    work / "keyed",
                    config,
                    env={**base, "NOROSHI_MASTER_KEY": MASTER_KEY},
                    name="keyed",
                ),
            ]
        finally:
            os.chdir(cwd)
        env = {
            **base,
            "NOROSHI_CONFIG": str(work / "open" / "open.toml"),
            "NOROSHI_SERVER__DATA_DIR": str(work / "open" / "data"),
        }
        keyed_env = {
            **base,
            "NOROSHI_CONFIG": str(work / "keyed" / "keyed.toml"),
            "NOROSHI_SERVER__DATA_DIR": str(work / "keyed" / "data"),
            "NOROSHI_MASTER_KEY": MASTER_KEY,
        }
        try:
            yield Live(work, servers[0][1], servers[1][1], env, keyed_env)
        finally:
            for proc, _ in servers:
                proc.terminate()
                await stop(proc)


CURL = 'curl() { command curl --fail-with-body -sS --max-time 20 "$@"; echo; }\nset -eu\n'


@pytest.mark.asyncio(loop_scope="module")  # the fake upstream answers on the module's loop
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
async def test_example(example: Example, live: Live, tmp_path: Path) -> None:
    if example.mark.startswith("skip"):
        pytest.skip(example.mark.removeprefix("skip:").strip())
    if example.mark.startswith("file "):
        return  # written for the servers; importing it is their start-up
    keyed = "NOROSHI_MASTER_KEY" in example.body
    url = live.keyed_url if keyed else live.open_url
    env = live.keyed_env if keyed else live.env
    body = ADDRESS.sub(url, example.body)
    if example.lang == "toml":
        check_config(example.body, tmp_path)
        return
    if example.lang == "sh":
        # `export NOROSHI_MASTER_KEY=...` in a block stands for the key the server has
        body = re.sub(r"^export NOROSHI_MASTER_KEY=.*$", "", body, flags=re.M)
        argv = ["bash", "-c", CURL + body]
    else:
        argv = [sys.executable, "-c", ADDRESS.sub(url, example.before) + body]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=live.work, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    said = f"{out.decode()}\n{err.decode()}"
    assert proc.returncode == 0, f"{example.where} failed:\n{body}\n{said}"


def check_config(text: str, tmp_path: Path) -> None:
    """A TOML example is a fragment: it must load added to the README's minimal config."""
    fragment = tomllib.loads(text)
    if "project" in fragment:  # a plugin's pyproject.toml, not noroshi's config
        return
    readme = next(e.body for e in EXAMPLES if e.lang == "toml" and "[providers.up]" in e.body)
    path = tmp_path / "noroshi.toml"
    if text == readme:
        readme = ""
    models = "\n".join(
        f'[[models]]\nname = "{name}"\ndeployments = [{{ provider = "up", model = "m" }}]\n'
        for name in ("local", "smart")
        if f'"{name}"' in text and "[[models]]" not in text
    )
    path.write_text(f"{readme}\n{text}\n{models}")
    load_config(path, {**ENV, "NOROSHI_SERVER__DATA_DIR": str(tmp_path)})
