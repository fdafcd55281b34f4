"""The README's promises match the code: commands, attributes, carrier keys."""

from __future__ import annotations

import re
from pathlib import Path

from otel_delivery import _attributes as A

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _constants(prefix: str = "") -> dict[str, str]:
    return {
        name: value
        for name, value in vars(A).items()
        if name.isupper() and isinstance(value, str) and name.startswith(prefix)
    }


def test_the_two_commands_are_the_ones_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.S)
    demo, tests = blocks[0].strip(), blocks[1].strip()
    assert demo == "pip install -e . && otel-delivery demo"
    assert tests == "pip install -e '.[test]' && pytest"
    assert tests in ci.splitlines()
    assert "otel-delivery demo" in ci


def test_every_span_attribute_is_in_the_attribute_table() -> None:
    table = README.split("## Span attributes", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)+)`", table))
    emitted = {
        value
        for name, value in _constants().items()
        if "." in value and not name.startswith(("CARRIER_", "KIND"))
    } | {A.KIND}
    assert emitted - documented == set(), "attributes missing from the README table"
    ours = {d for d in documented if d.startswith("otel_delivery.")}
    assert ours - emitted == set(), "README documents unknown ones"


def test_every_carrier_key_is_documented() -> None:
    for value in _constants("CARRIER_").values():
        assert f"`{value}`" in README, value
