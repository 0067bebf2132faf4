"""Validates generated JSON against JSON schemas with the `jsonschema` package (the
reference validator for tests/constrained.rs).

Usage: validate_json.py CASES.json, where CASES.json is a list of
{"name": str, "schema": object, "output": str}. Prints one JSON line, the list of failures
({"name", "output", "error"}), and exits 1 if there are any.
"""

import json
import sys

import jsonschema


def main() -> int:
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    validator_cls = jsonschema.Draft202012Validator
    failures = []
    for case in cases:
        try:
            value = json.loads(case["output"])
            validator_cls(
                case["schema"], format_checker=validator_cls.FORMAT_CHECKER
            ).validate(value)
        except Exception as e:  # noqa: BLE001 - every failure is reported the same way
            failures.append(
                {"name": case["name"], "output": case["output"], "error": str(e)[:500]}
            )
    print(json.dumps(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
