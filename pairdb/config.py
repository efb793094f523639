"""Configuration: command-line flags, then environment variables, then one TOML file, then defaults.

Every option of every `pairdb` command can be set in all three places:

- flag:  `--metrics-port 9100`
- env:   `PAIRDB_METRICS_PORT=9100` (PAIRDB_ + the option's name, upper case, `-` as `_`)
- file:  `metrics_port = 9100` in the command's table (`[coordinator]`, `[storage-node]`, `[worker]`,
         `[dev]`, ...; client commands read `[client]`), or at the top level for every command.

The file is `--config PATH`, else `$PAIRDB_CONFIG`, else `./pairdb.toml` when it exists.
`pairdb config show COMMAND` prints the effective values and where each came from.

Secrets (SECRET_OPTIONS) can also be read from a file, as the official Docker images do:
env `PAIRDB_POSTGRES_DSN_FILE=/run/secrets/pairdb_dsn` or `postgres_dsn_file = "..."` in the
TOML file; the file's content, without its trailing newline, is the value. At one level the
value itself beats its _FILE (env PAIRDB_X over PAIRDB_X_FILE). A secret given as a flag
works, but `ps` shows it to every user of the machine, so it is logged as a warning.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pairdb.security.secrets import MASK, mask_dsn, mask_secrets

CLIENT_COMMANDS = {
    "put", "get", "delete", "tenant", "nodes", "node", "migration", "init", "load", "repair", "key", "audit",
}  # fmt: skip
_UNSET = object()
# Options whose values are secrets: never shown, settable from a file (`_FILE`), and passed
# to child processes through the environment only.
SECRET_OPTIONS = frozenset({"postgres_dsn"})
FILE_SUFFIX = "_FILE"


@dataclass
class Resolved:
    args: argparse.Namespace
    file: Path | None
    # option -> "flag", "env PAIRDB_X", "env PAIRDB_X_FILE", "file [table]", "file [table] x_file",
    # "file (top level)" or "default"
    sources: dict[str, str] = field(default_factory=dict)

    def secrets_on_command_line(self) -> list[str]:
        """A warning for each secret option given as a flag, which `ps` shows to everyone."""
        return [
            f"--{dest.replace('_', '-')} is visible to every user of this machine (ps, /proc); "
            f"set {env_name(dest)} or {env_name(dest)}{FILE_SUFFIX} (a file holding it) instead"
            for dest, source in self.sources.items()
            if dest in SECRET_OPTIONS and source == "flag" and getattr(self.args, dest)
        ]


def env_name(dest: str) -> str:
    return "PAIRDB_" + dest.upper()


def secret_environment(values: dict[str, str]) -> dict[str, str]:
    """Environment variables handing secret options to a child process instead of its argv."""
    unknown = set(values) - SECRET_OPTIONS
    if unknown:
        raise ValueError(f"not secret options: {sorted(unknown)}")
    return {env_name(dest): value for dest, value in values.items()}


def shown(dest: str, value: Any) -> Any:
    """A value as it may be printed or logged: secrets masked."""
    if not isinstance(value, str) or not value:
        return value
    if dest in SECRET_OPTIONS:
        return mask_dsn(value) if "dsn" in dest else MASK
    return mask_secrets(value)


def secret_from_env(dest: str) -> str:
    """A secret no flag takes (`ps` shows flags): env PAIRDB_<DEST>, else the file PAIRDB_<DEST>_FILE
    names; "" when neither is set."""
    name = env_name(dest)
    if os.environ.get(name):
        return os.environ[name].strip()
    if os.environ.get(name + FILE_SUFFIX):
        return _read_secret_file(os.environ[name + FILE_SUFFIX], f"env {name}{FILE_SUFFIX}")
    return ""


def _read_secret_file(path: str, named_by: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SystemExit(f"error: cannot read the secret file {path} ({named_by}): {reason}") from None


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _subparsers(sub)
    return found


def _chain(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[argparse.ArgumentParser]:
    """The parsers the command line went through: pairdb, then e.g. `node`, then `add`."""
    chain = [parser]
    while True:
        subs = [a for a in chain[-1]._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if not subs or name not in subs[0].choices:
            return chain
        chain.append(subs[0].choices[name])


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for p in _subparsers(parser)
        for a in p._actions
        if a.option_strings
        and a.dest not in ("help", "config")
        and not isinstance(a, argparse._VersionAction)
    ]


def _convert(action: argparse.Action, raw: Any) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")
    if isinstance(action, argparse._AppendAction):
        return raw if isinstance(raw, list) else [v for v in str(raw).split(",") if v]
    if action.type is not None and not isinstance(raw, bool):
        return action.type(raw)  # type: ignore[operator]
    return raw


def table_for(command: str) -> str:
    return "client" if command in CLIENT_COMMANDS else command


def resolve(parser: argparse.ArgumentParser, argv: list[str] | None) -> Resolved:
    """Parse argv, then fill every option not given as a flag from env, the file, or its default."""
    actions = _options(parser)
    defaults = {id(a): a.default for a in actions}
    for action in actions:
        # An append action builds on its default, so it gets None (argparse starts a list from it).
        action.default = None if isinstance(action, argparse._AppendAction) else _UNSET
    try:
        args = parser.parse_args(argv)
    finally:
        for action in actions:
            action.default = defaults[id(action)]
    path = _config_path(getattr(args, "config", None))
    document = tomllib.loads(path.read_text()) if path else {}
    table = table_for(getattr(args, "command", "") or "")
    section = document.get(table, {}) if isinstance(document.get(table), dict) else {}
    top = {k: v for k, v in document.items() if not isinstance(v, dict)}
    resolved = Resolved(args, path)
    seen: set[str] = set()
    chosen = {id(a) for p in _chain(parser, args) for a in p._actions}
    for action in actions:
        if id(action) not in chosen:
            continue
        dest = action.dest
        if dest in seen or not hasattr(args, dest):
            continue
        seen.add(dest)
        if getattr(args, dest) not in (_UNSET, None) or (
            getattr(args, dest) is None and not isinstance(action, argparse._AppendAction)
        ):
            resolved.sources[dest] = "flag"
        elif env_name(dest) in os.environ:
            setattr(args, dest, _convert(action, os.environ[env_name(dest)]))
            resolved.sources[dest] = f"env {env_name(dest)}"
        elif dest in SECRET_OPTIONS and env_name(dest) + FILE_SUFFIX in os.environ:
            name = env_name(dest) + FILE_SUFFIX
            setattr(args, dest, _read_secret_file(os.environ[name], f"env {name}"))
            resolved.sources[dest] = f"env {name}"
        elif dest in section:
            setattr(args, dest, _convert(action, section[dest]))
            resolved.sources[dest] = f"file [{table}]"
        elif dest in SECRET_OPTIONS and f"{dest}_file" in section:
            where = f"file [{table}] {dest}_file"
            setattr(args, dest, _read_secret_file(str(section[f"{dest}_file"]), where))
            resolved.sources[dest] = where
        elif dest in top:
            setattr(args, dest, _convert(action, top[dest]))
            resolved.sources[dest] = "file (top level)"
        elif dest in SECRET_OPTIONS and f"{dest}_file" in top:
            where = f"file (top level) {dest}_file"
            setattr(args, dest, _read_secret_file(str(top[f"{dest}_file"]), where))
            resolved.sources[dest] = where
        else:
            setattr(args, dest, defaults[id(action)])
            resolved.sources[dest] = "default"
    return resolved


def _config_path(flag: str | None) -> Path | None:
    if flag:
        path = Path(flag)
        if not path.is_file():
            raise SystemExit(f"error: config file {path} does not exist")
        return path
    if os.environ.get("PAIRDB_CONFIG"):
        return _config_path(os.environ["PAIRDB_CONFIG"])
    default = Path("pairdb.toml")
    return default if default.is_file() else None


def show(parser: argparse.ArgumentParser, command: list[str], config_file: Path | None) -> str:
    """The effective configuration of `pairdb COMMAND ...`, one `key = value  # source` line each."""
    resolved = resolve(parser, [*(["--config", str(config_file)] if config_file else []), *command])
    lines = [f"# pairdb {' '.join(command)}: flags > env > file ({resolved.file or 'none'}) > defaults"]
    for dest, source in resolved.sources.items():
        lines.append(f"{dest} = {shown(dest, getattr(resolved.args, dest))!r}  # {source}")
    return "\n".join(lines)
