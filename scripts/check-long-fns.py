#!/usr/bin/env python3
"""Reports functions over MAX_LINES lines in non-test code under crates/*/src.

A long function is split into named steps, or carries its reason in a
comment starting with `// Long:` among the lines directly above it (with its
doc comment and attributes), e.g. a flat table of field checks that reads
worse in pieces. Test code is not checked: files named tests.rs or
*_tests.rs, anything under a tests/ directory, and `#[cfg(test)]` items.

The parse relies on rustfmt's layout: a fn ends at the first following line
that is `}` at the fn's own indentation. Prints `path:line: fn name is N
lines` for each one found and exits 1 when there is any.
"""

import re
import sys
from pathlib import Path

MAX_LINES = 120

FN_RE = re.compile(
    r"^(?P<indent>[ \t]*)"
    r"(?:pub(?:\([^)]*\))?\s+)?"
    r"(?:default\s+)?"
    r"(?:const\s+)?"
    r"(?:async\s+)?"
    r"(?:unsafe\s+)?"
    r'(?:extern\s+(?:"[^"]*"\s+)?)?'
    r"fn\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
)
CFG_TEST_RE = re.compile(r"^(?P<indent>[ \t]*)#\[cfg\(test\)\]\s*$")


def is_test_file(path: Path) -> bool:
    if path.name == "tests.rs" or path.name.endswith("_tests.rs"):
        return True
    return "tests" in path.parts[path.parts.index("src") + 1 : -1]


def indent_of(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def block_end(lines: list[str], start: int, indent: str) -> int:
    """Index of the first line after `start` that is `}` at `indent`."""
    closing = indent + "}"
    for i in range(start + 1, len(lines)):
        if lines[i].rstrip() == closing:
            return i
    return len(lines) - 1


def item_end(lines: list[str], start: int, indent: str) -> int | None:
    """Last line of the item starting at `start`; None when it has no body.

    The header (signature, where clause) ends at its first line ending in
    `{` (a body follows), `;` (a declaration) or `}` (a one-line body).
    """
    for i in range(start, len(lines)):
        text = lines[i].rstrip()
        if text.endswith(";"):
            return None
        if text.endswith("}"):
            return i
        if text.endswith("{"):
            return block_end(lines, i, indent)
    return None


def is_excused(lines: list[str], fn_index: int, indent: str) -> bool:
    """Whether the doc/attribute block directly above carries `// Long:`."""
    i = fn_index - 1
    while i >= 0:
        line = lines[i]
        text = line.strip()
        if not text:
            break
        above_item = (
            text.startswith(("//", "#[", "#!["))
            or text in (")]", "]")
            or len(indent_of(line)) > len(indent)
        )
        if not above_item:
            break
        if text.startswith("// Long:"):
            return True
        i -= 1
    return False


def skip_cfg_test(lines: list[str], i: int, indent: str) -> int:
    """Index of the last line of the `#[cfg(test)]` item whose attribute is at `i`."""
    j = i + 1
    while j < len(lines):
        text = lines[j].strip()
        if text and not text.startswith(("#[", "//")):
            break
        j += 1
    if j >= len(lines):
        return i
    end = item_end(lines, j, indent)
    return j if end is None else end


def long_fns(path: Path) -> list[tuple[int, str, int]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    i = 0
    while i < len(lines):
        line = lines[i]
        cfg = CFG_TEST_RE.match(line)
        if cfg:
            i = skip_cfg_test(lines, i, cfg.group("indent")) + 1
            continue
        m = FN_RE.match(line)
        if m:
            indent = m.group("indent")
            end = item_end(lines, i, indent)
            if end is not None:
                length = end - i + 1
                if length > MAX_LINES and not is_excused(lines, i, indent):
                    found.append((i + 1, m.group("name"), length))
        i += 1
    return found


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    reported = 0
    for path in sorted(root.glob("crates/*/src/**/*.rs")):
        rel = path.relative_to(root)
        if is_test_file(rel):
            continue
        for line_no, name, length in long_fns(path):
            print(f"{rel}:{line_no}: fn {name} is {length} lines")
            reported += 1
    if reported:
        print(
            f"{reported} function(s) over {MAX_LINES} lines: split them into "
            "named steps, or give the reason in a `// Long: ...` comment "
            "directly above the fn",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
