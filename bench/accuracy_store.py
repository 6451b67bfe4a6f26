"""Finished results of `bench.accuracy`, kept on disk so that a long run can stop and resume.

`python -m bench.accuracy --resume-dir DIR` saves each (task, row, seed) result in `DIR` as soon
as it is done, and a rerun of the same command skips the ones already there: a run that is
killed loses only the result it was working on. `DIR/config.json` holds the settings that shape
the results (general LM, recipe, `--set`, the Keras baseline, `--smoke`); a command with other
settings is refused rather than mixed in. Tasks, rows and seeds may differ from run to run: each
result is a file of its own, `DIR/TASK/seed-SEED/ROW.json`. Runs and records shared by every
task (the small LM) live beside them.

Example:

```python
store = ResultStore(Path("runs/accuracy-gru"), {"general": "gru-glove-general"})
if store.load("trec6", "tftune", 0) is None:
    store.save("trec6", "tftune", 0, {"tftune": {"test_accuracy": 0.93}})
```
"""

import json
import os
from pathlib import Path


class ConfigMismatch(ValueError):
    """The results folder holds results of other settings."""


def write_json_atomically(path, data):
    """Writes `data` as JSON to `path` through a temporary sibling and a rename: `path` is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class ResultStore:
    """One folder of finished results, all taken with the same settings.

    Args:
        folder: where the results live; created if missing.
        config: the settings that shape the results (JSON-serializable). A folder that already
            holds results of other settings raises `ConfigMismatch`.
    """

    def __init__(self, folder, config):
        self.folder = Path(folder)
        config_file = self.folder / "config.json"
        if config_file.is_file():
            saved = json.loads(config_file.read_text(encoding="utf-8"))
            if saved != config:
                changed = sorted(key for key in {*saved, *config} if saved.get(key) != config.get(key))
                raise ConfigMismatch(f"{self.folder} holds results taken with other settings "
                                     f"({', '.join(changed)} differ); give another --resume-dir")
        else:
            write_json_atomically(config_file, config)

    # === Results of one task, row and seed ===

    def path(self, task, row, seed):
        return self.folder / task / f"seed-{seed}" / f"{row}.json"

    def load(self, task, row, seed):
        """The saved `{label: figures}` of a row at a seed, or None when it has not finished yet."""
        path = self.path(task, row, seed)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save(self, task, row, seed, figures):
        write_json_atomically(self.path(task, row, seed), figures)

    # === Records of runs shared by every task ===

    def record(self, name):
        """The saved record of a shared run, or None."""
        path = self.folder / f"{name}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save_record(self, name, record):
        write_json_atomically(self.folder / f"{name}.json", record)
