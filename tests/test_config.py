"""Configuration: the documented shape, overrides, secrets, and one clear error per mistake."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from noroshi.config import ConfigError, load_config

ISSUE_SHAPE = """
[server]
host = "127.0.0.1"
port = 8080

[providers.up]
type = "openai"
base_url = "http://127.0.0.1:9000/v1"
api_key = "${UP_KEY}"

[providers.claude]
type = "anthropic"
base_url = "https://api.anthropic.com"
api_key = "${ANTHROPIC_API_KEY}"

[[models]]
name = "fast"
deployments = [{ provider = "up", model = "m1", weight = 3 }, { provider = "up", model = "m2", weight = 1 }]
fallbacks = ["smart"]

[[models]]
name = "smart"
deployments = [{ provider = "claude", model = "claude-sonnet-4-5" }]
"""
ENV = {"UP_KEY": "k-up", "ANTHROPIC_API_KEY": "k-ant"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_documented_shape_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ISSUE_SHAPE), ENV)
    assert config.server.port == 8080
    assert config.providers["up"].api_key == "k-up"
    assert config.providers["claude"].api_key == "k-ant"
    fast = config.model("fast")
    assert fast is not None
    assert [(d.model, d.weight) for d in fast.deployments] == [("m1", 3), ("m2", 1)]
    assert fast.fallbacks == ["smart"]


def test_example_config_loads() -> None:
    example = Path(__file__).parent.parent / "noroshi.example.toml"
    config = load_config(example, {**ENV, "OPENAI_API_KEY": "k"})
    assert config.models
    assert config.agents and config.http_tools and config.mcp_servers and config.channels


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        **ENV,
        "NOROSHI_SERVER__PORT": "9999",
        "NOROSHI_PROVIDERS__UP__IDLE_TIMEOUT_S": "2.5",
        "NOROSHI_SERVER__HOST": "0.0.0.0",
        "NOROSHI_AUTH__MASTER_KEY": "sk-master-0123456789",  # beyond loopback: 16+ chars
    }
    config = load_config(write(tmp_path, ISSUE_SHAPE), env)
    assert config.server.port == 9999
    assert config.server.host == "0.0.0.0"
    assert config.providers["up"].idle_timeout_s == 2.5
    assert config.auth.master_key == "sk-master-0123456789"


def test_interpolation_default(tmp_path: Path) -> None:
    text = '[providers.up]\ntype = "openai"\napi_key = "${NOPE:-fallback}"\n'
    assert load_config(write(tmp_path, text), {}).providers["up"].api_key == "fallback"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\nport = "x"', "server.port: expected `int`"),
        ("[server]\nport = 70000", "server.port"),
        ('[providers.up]\ntype = "foo"', "providers.up.type: invalid enum value 'foo'"),
        (
            '[providers.up]\ntype = "openai"\ntimeout = 3',
            "providers.up: object contains unknown field `timeout`",
        ),
        (
            '[providers.up]\ntype = "openai"\napi_key = "${NOT_SET}"',
            "providers.up.api_key: environment variable NOT_SET is not set",
        ),
        (
            '[providers.up]\ntype = "openai"\n[[models]]\nname = "a"\ndeployments = [{ provider = "x", model = "m" }]',
            "models.0.deployments.0.provider: no provider named 'x'",
        ),
        (
            '[providers.up]\ntype = "openai"\n[[models]]\nname = "a"\ndeployments = [{ provider = "up", model = "m" }]\nfallbacks = ["b"]',
            "models.0.fallbacks.0: no model named 'b'",
        ),
        (
            '[providers.up]\ntype = "openai"\n[[models]]\nname = "a"\ndeployments = [{ provider = "up", model = "m", weight = 0 }]',
            "models.0.deployments.0.weight",
        ),
        ("[server\n", "is not valid TOML"),
        (
            '[auth]\ntrusted_proxies = ["10.0.0.0/8", "lb.internal"]',
            "auth.trusted_proxies.1: 'lb.internal' is not an IP address",
        ),
        (
            '[cors]\nallow_origins = ["*"]\nallow_credentials = true',
            'cors: allow_origins = ["*"] with allow_credentials = true',
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {})
    assert message in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml", {})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nport = "x"', "server.port"),
        ('[cors]\nallow_origins = ["*"]\nallow_credentials = true', "cors: allow_origins"),
    ],
)
def test_cli_bad_config_exits_2_without_traceback(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOROSHI_")}
    result = subprocess.run(
        [sys.executable, "-m", "noroshi", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert key in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_version() -> None:
    from noroshi import __version__

    result = subprocess.run(
        [sys.executable, "-m", "noroshi", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[[agents]]\nname = "a"\nmodel = "nope"\n', "agents.0.model"),
        ('[[agents]]\nname = "a"\ntools = ["weather"]\n', "agents.0.tools.0"),
        ('[[agents]]\nname = "a"\ntools = ["mcp:files"]\n', "agents.0.tools.0"),
        ('[[agents]]\nname = "a"\n[[agents]]\nname = "a"\n', "agents"),
        ('[[mcp_servers]]\nname = "m"\n', "mcp_servers.0"),
        ('[[http_tools]]\nname = "bad name"\nurl = "https://x"\n', "http_tools.0.name"),
    ],
)
def test_agent_references_are_checked(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(where)}[: ]"):
        load_config(write(tmp_path, text), {})


def test_agents_with_tools_load(tmp_path: Path) -> None:
    text = """
[[agents]]
name = "weather"
tools = ["forecast", "mcp:files", "files__read", "tests.agent.sample_tools:get_weather"]
[[http_tools]]
name = "forecast"
url = "https://api.example.com/{city}"
[[mcp_servers]]
name = "files"
command = ["python", "server.py"]
"""
    config = load_config(write(tmp_path, text), {})
    assert config.agents[0].tools[0] == "forecast" and config.mcp_servers[0].name == "files"


def test_roles_need_the_internal_secret_and_cores(tmp_path: Path) -> None:
    secret = {"NOROSHI_INTERNAL__SECRET": "s" * 32}
    models = '[providers.up]\ntype = "openai"\n[[models]]\nname = "fast"\ndeployments = [{ provider = "up", model = "m1" }]\n'
    path = write(tmp_path, models)
    with pytest.raises(ConfigError, match=r"^internal\.secret: the core role"):
        load_config(path, {"NOROSHI_SERVER__ROLE": "core"})
    with pytest.raises(ConfigError, match=r"^server\.cores: "):
        load_config(path, {"NOROSHI_SERVER__ROLE": "edge", **secret})
    # a core may listen beyond loopback without a master key: it answers signed requests only
    core = load_config(
        path, {"NOROSHI_SERVER__ROLE": "core", "NOROSHI_SERVER__HOST": "0.0.0.0", **secret}
    )
    assert core.providers["up"].type == "openai"
    edge = load_config(
        path,
        {
            "NOROSHI_SERVER__ROLE": "edge",
            **secret,
            "NOROSHI_SERVER__CORES": '["http://a:1", "http://b:2/"]',
        },
    )
    assert {n: p.base_url for n, p in edge.providers.items()} == {
        "core0": "http://a:1/v1",
        "core1": "http://b:2/v1",
    }
    assert [(d.provider, d.model) for d in edge.models[0].deployments] == [
        ("core0", "fast"),
        ("core1", "fast"),
    ]


def test_a_short_master_key_is_refused_beyond_loopback(tmp_path: Path) -> None:
    env = {**ENV, "NOROSHI_SERVER__HOST": "0.0.0.0", "NOROSHI_AUTH__MASTER_KEY": "x"}
    with pytest.raises(ConfigError, match=r"auth.master_key: 1 characters .* at least 16"):
        load_config(write(tmp_path, ISSUE_SHAPE), env)
    local = {**ENV, "NOROSHI_AUTH__MASTER_KEY": "x"}  # on loopback a short key is a choice
    assert load_config(write(tmp_path, ISSUE_SHAPE), local).auth.master_key == "x"


def test_errors_suggest_the_nearest_key_and_list_enum_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server: .*unknown field `prot`, did you mean `port`\?"):
        load_config(write(tmp_path, "[server]\nprot = 1\n"), ENV)
    with pytest.raises(
        ConfigError, match=r"logging.format: .*'xml'; expected one of: 'text', 'json'"
    ):
        load_config(write(tmp_path, '[logging]\nformat = "xml"\n'), ENV)
    with pytest.raises(ConfigError, match=r"agents.0: .*`toolz`, did you mean `tools`\?"):
        load_config(write(tmp_path, '[[agents]]\nname = "a"\ntoolz = []\n'), ENV)
