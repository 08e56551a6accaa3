"""Every ```` ```python ```` block of README.md runs as pasted, and passes ``mypy --strict``.

Each block is a complete program: it runs in a fresh interpreter, in an empty directory,
exactly as written, and must exit 0 (and print its ```` ```text ```` block when it has one).
A block that reads ``KAFKA_BOOTSTRAP`` or ``REDIS_URL`` runs against the test session's
Kafka-protocol broker or Redis: the README's defaults (``localhost``) are replaced through
those variables, never by editing the code. ``SHOP_NAMESPACE`` gives each run its own
topics, streams and groups on the shared servers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.doc_blocks import CodeBlock, python_blocks
from tests.support.paths import ROOT

README = ROOT / "README.md"
BLOCKS = python_blocks(README)
#: Wall-clock limit of one block (a Kafka group join on a busy machine included).
BLOCK_TIMEOUT = 90


def _needs(block: CodeBlock) -> str:
    """Which real service a block talks to: ``kafka``, ``redis`` or ``embedded``."""
    if "KAFKA_BOOTSTRAP" in block.source:
        return "kafka"
    if "REDIS_URL" in block.source:
        return "redis"
    return "embedded"


def _param(block: CodeBlock) -> object:
    needs = _needs(block)
    marks = [getattr(pytest.mark, needs)] if needs != "embedded" else []
    return pytest.param(block, id=f"line{block.line}-{needs}", marks=marks)


def test_the_readme_shows_the_embedded_default_kafka_and_redis() -> None:
    assert sorted({_needs(b) for b in BLOCKS}) == ["embedded", "kafka", "redis"]


def test_every_python_fence_of_the_readme_is_one_the_test_runs() -> None:
    # A block fenced ```py or ```python3 would be shown as Python and never run
    fences = re.findall(r"^```(\w+)", README.read_text(encoding="utf-8"), re.MULTILINE)
    assert {f for f in fences if f.startswith("py")} <= {"python"}
    assert fences.count("python") == len(BLOCKS)


def test_the_readme_names_the_command_ci_runs() -> None:
    # CI runs .ci/run, which runs scripts/test: the README must keep saying so
    assert "\n    scripts/test\n" in README.read_text(encoding="utf-8")
    assert "exec bash scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.fixture
def namespace(unique: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """This run's namespace; its Redis streams and keys are deleted afterwards."""
    name = f"readme-{unique}"
    yield name
    if "redis_url" in request.fixturenames:
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        try:
            for key in client.scan_iter(match=f"*{name}*"):
                client.delete(key)
        finally:
            client.close()


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_readme_block_runs_as_pasted(
    block: CodeBlock, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOXKIT_")}
    env.pop("DATABASE_URL", None)
    env["SHOP_NAMESPACE"] = namespace
    needs = _needs(block)
    if needs == "kafka":
        env["KAFKA_BOOTSTRAP"] = request.getfixturevalue("kafka_bootstrap")
    if needs == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    program = tmp_path / "example.py"
    program.write_text(block.source, encoding="utf-8")

    result = subprocess.run(
        [sys.executable, str(program)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )

    where = f"README.md {block} ({needs})"
    assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
    if block.output is not None:
        assert result.stdout == block.output, f"{where} printed something else"


def test_readme_blocks_pass_mypy_strict(tmp_path: Path) -> None:
    # What a user with mypy --strict on their application sees when they paste the examples
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n")
    files = []
    for n, block in enumerate(BLOCKS):
        path = tmp_path / f"readme_block_{n}_line{block.line}.py"
        path.write_text(block.source, encoding="utf-8")
        files.append(str(path))
    options = ["--config-file", str(config), "--cache-dir", str(tmp_path / "cache")]
    options += ["--show-absolute-path", "--no-error-summary"]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *options, *files],
        # from the checkout: an editable install is an import hook mypy cannot follow
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )
    assert not result.stderr, result.stderr
    # only the examples' own lines: outboxkit is checked by the project's mypy run, with
    # the project's settings for kafka-python and the other untyped libraries
    ours = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert ours == [], "mypy --strict on the README's examples:\n" + "\n".join(ours)
