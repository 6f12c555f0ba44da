"""Reading YAML config files into plain data while remembering where every key came from.

PyYAML's constructed objects forget their source position, so we compose the node tree ourselves
and keep a ``path -> Location`` map beside the data. Validation errors later look a key path up
in that map to name the file and line. ``${VAR}`` / ``${VAR:-default}`` interpolation and the
``include:`` mechanism also live here, because both need the same per-file bookkeeping.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

KeyPath = tuple[str | int, ...]

_VAR = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(frozen=True)
class Location:
    file: str
    line: int
    column: int


@dataclass
class Source:
    """Merged configuration data plus the location of every key path in it."""

    data: dict[str, Any]
    locations: dict[KeyPath, Location] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    env_vars: dict[KeyPath, list[str]] = field(default_factory=dict)
    """The environment variables each interpolated value was read from."""

    def env_vars_under(self, prefix: KeyPath) -> list[str]:
        """The environment variables that set any value at or under ``prefix``."""
        n = len(prefix)
        return sorted({v for path, names in self.env_vars.items() if path[:n] == prefix for v in names})

    def locate(self, path: KeyPath) -> Location | None:
        """The nearest known location for ``path`` (a missing key points at its parent)."""
        path = tuple(path)
        while True:
            if path in self.locations:
                return self.locations[path]
            if not path:
                return None
            path = path[:-1]

    def error(self, path: KeyPath, message: str) -> ConfigError:
        loc = self.locate(path)
        if path and path not in self.locations and not _present(self.data, path) and not message.startswith("missing required"):
            # An error about a default: no file has the key, so name the file to add it to (the
            # top-level one), instead of leaving the reader to search the one the line points into.
            where = self.files[-1] if self.files else "the config file"
            message += f" ({_dotted(path)} is not set in any config file; set it in {where})"
        return ConfigError(
            message,
            file=loc.file if loc else (self.files[0] if self.files else None),
            line=loc.line if loc else None,
            column=loc.column if loc else None,
            path=path,
        )


def _present(data: Any, path: KeyPath) -> bool:
    for part in path:
        if isinstance(data, dict) and part in data:  # noqa: SIM114 - each branch narrows `data` for its own index
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return False
    return True


def _dotted(path: KeyPath) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def load_file(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Source:
    """Load one config file, following its ``include:`` list (paths relative to the file)."""
    return _load(Path(path), os.environ if env is None else env, ())


def load_text(text: str, name: str = "<string>", env: Mapping[str, str] | None = None) -> Source:
    """Load config from a string (no includes relative to a directory other than cwd)."""
    return _from_text(text, name, Path.cwd(), os.environ if env is None else env, ())


def _load(path: Path, env: Mapping[str, str], chain: tuple[Path, ...]) -> Source:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"include cycle: {cycle}", file=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", file=str(path)) from None
    return _from_text(text, str(path), path.parent, env, (*chain, resolved))


def _from_text(
    text: str, name: str, base_dir: Path, env: Mapping[str, str], chain: tuple[Path, ...]
) -> Source:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{exc.context}, {problem}"
        raise ConfigError(
            f"YAML syntax error: {problem}",
            file=name,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=name) from None
    builder = _Builder(name, env)
    data = {} if node is None else builder.build(node, ())
    if not isinstance(data, dict):
        raise ConfigError("the top level of a config file must be a mapping", file=name, line=1)
    own = Source(data, builder.locations, [name], builder.env_vars)
    includes = data.pop("include", None)
    if includes is None:
        return own
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise own.error(("include",), "must be a file path or a list of file paths")
    merged = Source({}, {}, [])
    for i, inc in enumerate(includes):
        inc_path = Path(inc)
        if not inc_path.is_absolute():
            inc_path = base_dir / inc_path
        try:
            sub = _load(inc_path, env, chain)
        except ConfigError as exc:
            if exc.message == "config file not found":
                key = ("include", i) if ("include", i) in own.locations else ("include",)
                raise own.error(key, f"included file not found: {inc_path}") from None
            raise
        merged = _merge(merged, sub)
    return _merge(merged, own)


def _merge(base: Source, over: Source) -> Source:
    """Deep-merge ``over`` onto ``base``: mappings merge key by key, anything else replaces."""
    locations = dict(base.locations)

    def merge(a: Any, b: Any, path: KeyPath) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a[k], v, (*path, k)) if k in a else v
                if k not in a or not (isinstance(a[k], dict) and isinstance(v, dict)):
                    _drop_under(locations, (*path, k))
            return out
        return b

    data = merge(base.data, over.data, ())
    locations.update(over.locations)
    return Source(data, locations, base.files + over.files, {**base.env_vars, **over.env_vars})


def _drop_under(locations: dict[KeyPath, Location], prefix: KeyPath) -> None:
    n = len(prefix)
    for key in [k for k in locations if k[:n] == prefix]:
        del locations[key]


class _Builder:
    """Turns a composed node tree into Python data, recording the location of every key."""

    def __init__(self, name: str, env: Mapping[str, str]) -> None:
        self.name = name
        self.env = env
        self.locations: dict[KeyPath, Location] = {}
        self.env_vars: dict[KeyPath, list[str]] = {}
        self._constructor = yaml.SafeLoader("")

    def _loc(self, node: yaml.Node) -> Location:
        return Location(self.name, node.start_mark.line + 1, node.start_mark.column + 1)

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.locations.setdefault(path, self._loc(node))
        if isinstance(node, yaml.MappingNode):
            self._constructor.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node, path)
                if not isinstance(key, (str, int)):
                    raise ConfigError(
                        "mapping keys must be strings", file=self.name,
                        line=key_node.start_mark.line + 1, path=path,
                    )
                key = str(key)
                if key in out:
                    raise ConfigError(
                        f"duplicate key {key!r}", file=self.name,
                        line=key_node.start_mark.line + 1,
                        column=key_node.start_mark.column + 1, path=(*path, key),
                    )
                self.locations[(*path, key)] = self._loc(key_node)
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise ConfigError(
                "mapping keys must be plain scalars", file=self.name,
                line=node.start_mark.line + 1, path=path,
            )
        if node.tag == _STR_TAG and "${" in node.value:
            value = self._interpolate(node, path)
            if node.style is None:
                # A plain scalar gets its type from the substituted text (``port: ${PORT}``),
                # resolved as a scalar only: an env var can never inject a mapping.
                tag = yaml.SafeLoader.resolve(self._constructor, yaml.ScalarNode, value, (True, False))
                return self._constructor.construct_object(yaml.ScalarNode(tag, value))
            return value
        return self._constructor.construct_object(node, deep=True)

    def _interpolate(self, node: yaml.ScalarNode, path: KeyPath) -> str:
        def sub(m: re.Match[str]) -> str:
            escaped, name, default = m.groups()
            if escaped:
                return m.group(0)[1:]
            self.env_vars.setdefault(path, []).append(name)
            value = self.env.get(name)
            if value is None or (value == "" and default is not None):
                if default is None:
                    raise ConfigError(
                        f"environment variable {name} is not set (write ${{{name}:-default}} "
                        "to give a default)",
                        file=self.name, line=node.start_mark.line + 1,
                        column=node.start_mark.column + 1, path=path,
                    )
                return default
            return value

        return _VAR.sub(sub, node.value)
