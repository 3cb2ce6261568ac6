"""Reading the YAML and JSON files users write: ``fit --config`` files and sweep grids.

Light on purpose (no torch), so the command line can read a config file before it decides
what to import.
"""

import json
from pathlib import Path

from .errors import ConfigError

#: the suffixes read, and how
SUFFIXES = (".yaml", ".yml", ".json")


def read_mapping(path) -> dict:
    """The mapping at the top level of a YAML (``.yaml``/``.yml``) or JSON (``.json``) file;
    an empty file is an empty mapping.

    :raises ConfigError: another suffix, an unreadable or malformed file, or a top level that
        is not a mapping (the message names the file and what was found).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ConfigError(f"expected a {', '.join(SUFFIXES)} file, found {path.name!r}")
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path} ({e})") from None
    try:
        if suffix == ".json":
            content = json.loads(text) if text.strip() else None
        else:
            import yaml

            content = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError or json.JSONDecodeError
        raise ConfigError(f"{path} is not valid {suffix[1:].upper()} ({e})") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(
            f"{path}: expected a mapping at the top level, found {type(content).__name__}"
        )
    return content
