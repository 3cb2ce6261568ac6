"""What a report shows of one run folder, read from its files (nothing is recomputed).

A run folder written by ``skipvae fit`` holds ``config.json`` and ``metrics.jsonl``; after
``skipvae diagnose`` also ``diagnostics.json``, the PNGs it lists under ``"plots"`` (kept in
``diagnostics_plots/`` beside it) and, for text models, the Markdown file of decoded
sentences it names under ``"text"``.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, DataError
from ..evaluation import DIAGNOSTICS_FILE, load_diagnostics, output_paths
from ..run import METRICS_FILE, read_config

logger = logging.getLogger(__name__)


@dataclass
class RunFiles:
    """One run as a report sees it.

    :ivar str name: the run's name on the page.
    :ivar Path path: the run folder.
    :ivar dict config: ``config.json``.
    :ivar list history: the records of ``metrics.jsonl``, one per epoch.
    :ivar dict diagnostics: ``diagnostics.json``, or ``None`` for a run not yet diagnosed.
    :ivar dict figures: PNG paths listed by the diagnostics, keyed by file stem
        (``embedding``, ``kl_per_dim``, ``reconstructions``, ``samples``, ``traversals``, ...).
    :ivar dict texts: text models' decoded sentences by section (``reconstructions``,
        ``samples``, ``homotopies``).
    """

    name: str
    path: Path
    config: dict
    history: list
    diagnostics: dict | None = None
    figures: dict = field(default_factory=dict)
    texts: dict = field(default_factory=dict)


def read_history(run_dir) -> list[dict]:
    """The records of ``metrics.jsonl`` (empty if the run has not finished an epoch).

    :raises DataError: a line that is not JSON.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as e:
                raise DataError(f"{path}, line {number}: expected one JSON object ({e})") from None
    return records


def load_run(run_dir, *, name=None, diagnostics=None) -> RunFiles:
    """Read a run folder for a report.

    :param run_dir: a folder written by ``skipvae fit``.
    :param str name: its name on the page (default: the folder's name).
    :param diagnostics: the diagnostics JSON to show (default ``RUN_DIR/diagnostics.json``,
        optional there; a path given explicitly must exist).
    :raises CheckpointError: ``run_dir`` is not a run folder.
    :raises DataError: unreadable metrics or diagnostics.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"expected a run directory written by `skipvae fit`, found {run_dir}")
    run = RunFiles(
        name=name or run_dir.resolve().name,
        path=run_dir,
        config=read_config(run_dir),
        history=read_history(run_dir),
    )
    json_path = Path(diagnostics) if diagnostics is not None else run_dir / DIAGNOSTICS_FILE
    if diagnostics is None and not json_path.is_file():
        return run
    run.diagnostics = load_diagnostics(json_path)
    plots_dir = output_paths(run_dir, json_path)["plots"]
    for entry in run.diagnostics.get("plots") or []:
        path = _locate(Path(entry), plots_dir)
        if path is None:
            logger.warning(
                "%s lists %s, which is missing; left out of the report", json_path, entry
            )
        elif path.suffix.lower() == ".png":
            run.figures[path.stem] = path
    if run.diagnostics.get("text"):  # text models: the Markdown file of decoded sentences
        path = _locate(Path(run.diagnostics["text"]), json_path.parent)
        if path is None:
            logger.warning("%s lists %s, which is missing", json_path, run.diagnostics["text"])
        else:
            run.texts.update(_markdown_sections(path.read_text(encoding="utf-8")))
    return run


def _markdown_sections(text: str) -> dict:
    """``## Heading`` sections of ``text``, keyed by the heading's first word in lower case
    (``reconstructions``, ``samples``, ``homotopies`` for :func:`~.diagnostics.text_report`)."""
    sections, key = {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            key = line[3:].split(":")[0].split()[0].lower()
            sections[key] = []
        elif key is not None:
            sections[key].append(line)
    return {key: "\n".join(lines).strip("\n") for key, lines in sections.items()}


def _locate(entry: Path, plots_dir: Path) -> Path | None:
    # diagnostics.json records the paths as they were written, relative to the folder
    # `skipvae diagnose` ran in; look beside the JSON first, so moved run folders still work.
    for candidate in (plots_dir / entry.name, entry):
        if candidate.is_file():
            return candidate
    return None
