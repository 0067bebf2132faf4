"""The coding-agent CLIs themselves, run headless against the server: Claude Code (Anthropic
Messages), Codex (Responses) and opencode (chat completions), the pinned versions
`scripts/agents/install.sh` puts in third_party/agents (skipped when they are not installed).

Each run gets a fresh HOME and working folder, small settings (Claude Code without tools, Codex
with short instructions and fewer tools, opencode with one tool and a short agent prompt) so
that a first prompt of ~1.5k tokens is prefilled in well under a minute on 2 CPU cores.
Marked `agents`: `scripts/test.sh` runs them against Qwen2.5-Coder-0.5B."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.contract, pytest.mark.agents]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("KOOKA_AGENTS_DIR", ROOT / "third_party" / "agents")) / "node_modules" / ".bin"
TIMEOUT = 420


def cli(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{path} is not installed (scripts/agents/install.sh)")
    return path


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose HOME and XDG folders are fresh, and a working folder."""
    (tmp_path / "work").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_", "CODEX_"))}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"),
               XDG_DATA_HOME=str(tmp_path / ".local/share"), XDG_CACHE_HOME=str(tmp_path / ".cache"),
               XDG_STATE_HOME=str(tmp_path / ".local/state"), NO_COLOR="1")
    return env


def run(cmd: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    # PWD too: opencode takes its project folder from it, not from the process's cwd.
    p = subprocess.run([str(c) for c in cmd], env={**env, "PWD": str(cwd)}, cwd=cwd, capture_output=True, text=True,
                       timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    print(f"$ {' '.join(map(str, cmd[:3]))} ... -> {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}",
          file=sys.stderr)
    return p


def test_claude_code_turns(base_url, api_key, model, home, tmp_path):
    """`claude -p` completes a turn (its request carries `role: "system"` entries inside
    `messages`, the 400 that stopped it before), and a second turn of the session reads the
    first turn's prompt from kooka's prefix cache."""
    claude = cli("claude")
    env = {**home, "ANTHROPIC_BASE_URL": base_url, "ANTHROPIC_API_KEY": api_key or "none",
           "CLAUDE_CODE_MAX_RETRIES": "0", "DISABLE_AUTOUPDATER": "1"}
    common = ["--model", model, "--output-format", "json", "--tools", ""]
    first = run([claude, "-p", "Reply with the word hello", *common], env, tmp_path / "work")
    assert first.returncode == 0, first.stderr[-2000:]
    out = json.loads(first.stdout)
    assert out["is_error"] is False and out["subtype"] == "success", out
    assert out["result"].strip(), out
    assert out["usage"]["input_tokens"] > 0 and out["usage"]["output_tokens"] > 0, out["usage"]
    second = run([claude, "-p", "Now reply with the word bye", "--continue", *common], env,
                 tmp_path / "work")
    assert second.returncode == 0, second.stderr[-2000:]
    out2 = json.loads(second.stdout)
    assert out2["is_error"] is False and out2["result"].strip(), out2
    assert out2["usage"]["cache_read_input_tokens"] > 100, out2["usage"]


def codex_home(tmp_path: Path, base_url: str, model: str) -> Path:
    home = tmp_path / "codex"
    home.mkdir()
    (home / "config.toml").write_text(f'''model = "{model}"
model_provider = "kooka"
[model_providers.kooka]
name = "kooka"
base_url = "{base_url}/v1"
env_key = "KOOKA_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
''')
    return home


def test_codex_exec_turn(base_url, api_key, model, home, tmp_path):
    """`codex exec` completes a turn over /v1/responses; the model catalog entry makes it send
    its `custom` apply_patch tool (a Lark grammar) as it does for OpenAI's models."""
    codex = cli("codex")
    catalog = tmp_path / "catalog.json"
    subprocess.run([sys.executable, str(ROOT / "scripts/agents/codex_catalog.py"), "--model", model,
                    "--out", str(catalog)], check=True)
    instructions = tmp_path / "instructions.txt"
    instructions.write_text("You are a coding agent. Be brief.\n")
    env = {**home, "CODEX_HOME": str(codex_home(tmp_path, base_url, model)),
           "KOOKA_KEY": api_key or "none"}
    overrides = [f"model_catalog_json={catalog}", f"model_instructions_file={instructions}",
                 "include_permissions_instructions=false", "include_apps_instructions=false",
                 "include_environment_context=false", "include_collaboration_mode_instructions=false",
                 "web_search=disabled", "skills.include_instructions=false",
                 "skills.bundled.enabled=false"]
    disabled = ["multi_agent", "goals", "apps", "plugins", "image_generation", "skill_search",
                "tool_suggest"]
    cmd = [codex, "exec", "--skip-git-repo-check", "--json"]
    for o in overrides:
        cmd += ["-c", o]
    for d in disabled:
        cmd += ["--disable", d]
    p = run([*cmd, "Reply with the word hello"], env, tmp_path / "work")
    assert p.returncode == 0, p.stderr[-2000:]
    events = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    kinds = [e["type"] for e in events]
    assert "turn.completed" in kinds and "turn.failed" not in kinds, kinds
    done = next(e for e in events if e["type"] == "turn.completed")
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0, done
    replies = [e["item"] for e in events if e["type"] == "item.completed"]
    assert any(i["type"] in ("agent_message", "command_execution", "file_change")
               for i in replies), replies


def test_opencode_run_turn(base_url, api_key, model, home, tmp_path):
    """`opencode run` completes a turn over /v1/chat/completions (a title request, then the
    turn, both streamed), with its `read` tool offered."""
    opencode = cli("opencode")
    off = ["bash", "edit", "glob", "grep", "skill", "task", "todowrite", "webfetch", "write"]
    config = {
        "provider": {"kooka": {
            "npm": "@ai-sdk/openai-compatible", "name": "kooka",
            "options": {"baseURL": f"{base_url}/v1", "apiKey": api_key or "none"},
            "models": {model: {"tool_call": True, "limit": {"context": 32768, "output": 64}}}}},
        "model": f"kooka/{model}", "small_model": f"kooka/{model}",
        "tools": {t: False for t in off},
        "agent": {"build": {"prompt": "You are a coding agent. Be brief."}},
        "autoupdate": False, "share": "disabled",
    }
    work = tmp_path / "work"
    (work / "opencode.json").write_text(json.dumps(config))
    p = run([opencode, "run", "Reply with the word hello"], home, work)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "error" not in p.stderr.lower(), p.stderr[-2000:]
    assert p.stdout.strip(), "opencode printed no reply"
