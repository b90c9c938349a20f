"""Load `Settings` from the file, the environment and secret files, with errors an operator can use.

Every failure is a `ConfigError` whose one-line message names the field and where its value came
from (the file, or the environment variable), never the secret value itself.
"""

import csv
import json
import os
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from config.settings import RateCardRow, Settings

ENV_PREFIX = "ECOMHUB_"
RATE_CARD_COLUMNS = ("province", "first_weight_kg", "first_fee", "step_kg", "step_fee")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field and the source."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("ECOMHUB_CONFIG") or "ecomhub.toml")


def load_settings(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    require_file: bool = True,
) -> Settings:
    """Read, merge and validate the configuration (file → environment → `<field>_file` secrets)."""
    env = dict(os.environ if environ is None else environ)
    config_path = Path(path) if path is not None else default_config_path(env)
    source_of: dict[tuple[str | int, ...], str] = {}
    data: dict[str, Any] = {}
    if config_path.exists():
        try:
            data = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=str(config_path)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read: {_unreadable(exc)}", source=str(config_path)) from None
    elif require_file:
        raise ConfigError(
            "config file not found (pass --config PATH or set ECOMHUB_CONFIG)",
            source=str(config_path),
        )
    _apply_env(data, env, source_of)
    base_dir = config_path.resolve().parent
    _read_secret_files(data, base_dir, source_of, (), str(config_path))
    data.pop("config_path", None)
    try:
        settings = Settings(**data, config_path=config_path.resolve())
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source_of, str(config_path))) from None
    return _with_rate_cards(settings, base_dir)


def _describe(
    exc: ValidationError, source_of: Mapping[tuple[str | int, ...], str], file: str
) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    loc = tuple(error["loc"])
    field = _dotted(loc)
    message = error["msg"].removeprefix("Value error, ")
    if not loc:
        # model-level validators name the field at the start of their message: "shops[1].code: …"
        field, _, message = message.partition(": ")
    origin = next(
        (source_of[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in source_of), file
    )
    extra = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if error["type"] == "missing":
        message = "required field is missing"
    elif error["type"] == "extra_forbidden":
        message = "unknown field (check the spelling against deploy/ecomhub.example.toml)"
    elif error["type"] == "list_type" and origin.startswith("environment"):
        message += ' (write a list as JSON, e.g. ["江苏","浙江"])'

    return f"{origin}: {field}: {message}{extra}"


def _unreadable(exc: OSError | UnicodeDecodeError) -> str:
    """Why a file the config names could not be read, for its one-line error."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
    return str(exc.strerror)


def _env_value(value: str) -> Any:
    """A list or table is written as JSON (`["江苏","浙江"]`); anything else stays text for
    the field's own parsing."""
    if value.lstrip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # validation then names the field and the variable
    return value


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _apply_env(
    data: dict[str, Any], env: Mapping[str, str], source_of: dict[tuple[str | int, ...], str]
) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in ("ECOMHUB_CONFIG",):
            continue
        if name.startswith(("ECOMHUB_TEST_", "ECOMHUB_REQUIRE_")):
            continue  # the test suite's own switches, not settings
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            continue
        loc = _set_path(data, parts, env[name], name)
        source_of[loc] = f"environment variable {name}"


def _set_path(
    data: dict[str, Any], parts: list[str], value: str, name: str
) -> tuple[str | int, ...]:
    node: Any = data
    loc: list[str | int] = []
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(node, part, name)
            loc.append(index)
            if last:
                raise ConfigError(f"{name} must name a field inside the list entry")
            node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{name}: {_dotted(tuple(loc))} is not a table")
        loc.append(part)
        if last:
            node[part] = _env_value(value)
            if not part.endswith("_file"):
                node.pop(f"{part}_file", None)  # the variable overrides the file's secret file
        else:
            node = node.setdefault(part, {})
    return tuple(loc)


def _list_index(items: list[Any], part: str, name: str) -> int:
    if part.isdigit():
        index = int(part)
        if index < len(items):
            return index
        raise ConfigError(f"{name}: there is no entry {index} (the file has {len(items)})")
    for index, item in enumerate(items):
        code = str(item.get("code", "")) if isinstance(item, dict) else ""
        if code.lower().replace("-", "_").replace(".", "_") == part:
            return index
    raise ConfigError(f"{name}: no entry with code matching {part!r}")


def _read_secret_files(
    node: Any,
    base_dir: Path,
    source_of: dict[tuple[str | int, ...], str],
    loc: tuple[str | int, ...],
    file: str,
) -> None:
    if isinstance(node, list):
        for index, item in enumerate(node):
            _read_secret_files(item, base_dir, source_of, (*loc, index), file)
        return
    if not isinstance(node, dict):
        return
    for key in list(node):
        value = node[key]
        if key.endswith("_file") and isinstance(value, str):
            field = key.removesuffix("_file")
            path = Path(value) if Path(value).is_absolute() else base_dir / value
            origin = source_of.get((*loc, key), file)
            try:
                node[field] = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = _unreadable(exc)
                raise ConfigError(
                    f"{_dotted((*loc, key))}: cannot read secret file {str(path)!r}: {reason}",
                    source=origin,
                ) from None
            del node[key]
            source_of[(*loc, field)] = f"{origin} ({key} → {path})"
        else:
            _read_secret_files(value, base_dir, source_of, (*loc, key), file)


def _with_rate_cards(settings: Settings, base_dir: Path) -> Settings:
    carriers = []
    for index, carrier in enumerate(settings.carriers):
        if carrier.rate_card is None:
            carriers.append(carrier)
            continue
        path = carrier.rate_card
        if not path.is_absolute():
            path = base_dir / path
        field = f"carriers[{index}].rate_card"
        rows = read_rate_card(path, field=field, source=str(settings.config_path))
        carriers.append(carrier.model_copy(update={"rate_card": path, "rate_card_rows": rows}))
    return settings.model_copy(update={"carriers": carriers})


def read_rate_card(path: Path, *, field: str, source: str) -> tuple[RateCardRow, ...]:
    """Parse a rate card CSV: province,first_weight_kg,first_fee,step_kg,step_fee."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = _unreadable(exc)
        raise ConfigError(
            f"{field}: cannot read rate card {str(path)!r}: {reason}", source=source
        ) from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in RATE_CARD_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ConfigError(
            f"{field}: rate card {str(path)!r} lacks columns {missing} "
            f"(expected header {','.join(RATE_CARD_COLUMNS)})",
            source=source,
        )
    rows = []
    for line_no, raw in enumerate(reader, start=2):
        try:
            rows.append(
                RateCardRow(
                    province=(raw["province"] or "").strip(),
                    **{c: Decimal((raw[c] or "").strip()) for c in RATE_CARD_COLUMNS[1:]},
                )
            )
        except (InvalidOperation, ValidationError):
            raise ConfigError(
                f"{field}: rate card {str(path)!r} line {line_no} is not a valid rate row",
                source=source,
            ) from None
    return tuple(rows)
