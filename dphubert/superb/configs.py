"""The shipped s3prl downstream configs (``dphubert/superb/configs/<task>.yaml``) and their resolution.

The files hold SUPERB's hyper-parameters and ``${VAR}`` placeholders for corpus paths (db.sh variables and
side files made by ``corpora.prepare``). ``resolve_config`` fills them in, applies the quick (demo) step counts
of ``configs/quick.yaml`` unless ``full`` and extra ``key.path=value`` overrides, and ``write_config`` stores
the result in the experiment dir, where s3prl's ``run_downstream -c`` reads it.

    cfg = resolve_config(TASKS["ks"], {"SPEECH_COMMANDS": "/data/sc", "SPEECH_COMMANDS_TEST": "/data/sc_test"})
"""

import copy
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import yaml

from .errors import SuperbError
from .tasks import Task

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
QUICK_FILE = CONFIG_DIR / "quick.yaml"
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def shipped_config_path(task: Task) -> Path:
    return CONFIG_DIR / task.config


def load_yaml(path: Path) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SuperbError(f"cannot read config {path}: {str(e).splitlines()[0]}") from None


def placeholders(value: Any) -> set:
    """Every ``${VAR}`` name in a config."""
    if isinstance(value, dict):
        return set().union(*(placeholders(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(placeholders(v) for v in value)) if value else set()
    return set(_PLACEHOLDER.findall(value)) if isinstance(value, str) else set()


def substitute(value: Any, variables: Mapping[str, Any], source: str = "config") -> Any:
    """Fill ``${VAR}``: a value that is exactly one placeholder takes the variable as is (a list stays a list)."""
    if isinstance(value, dict):
        return {k: substitute(v, variables, source) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, variables, source) for v in value]
    if not isinstance(value, str):
        return value
    missing = [name for name in _PLACEHOLDER.findall(value) if variables.get(name) in (None, "")]
    if missing:
        raise SuperbError(f"{source}: no value for ${{{missing[0]}}}; set {missing[0]} in db.sh "
                          f"(or pass --corpus {missing[0]}=PATH)")
    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        return variables[whole.group(1)]
    return _PLACEHOLDER.sub(lambda m: str(variables[m.group(1)]), value)


def set_dotted(config: Dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(cfg, "runner.total_steps", 100)``; intermediate dicts are created."""
    keys = dotted.split(".")
    node = config
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


def parse_override(text: str) -> tuple:
    """``runner.total_steps=500`` -> ("runner.total_steps", 500); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SuperbError(f"bad override '{text}': use key.path=value, e.g. runner.total_steps=500")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def quick_overrides(task: Task) -> Dict[str, Any]:
    quick = load_yaml(QUICK_FILE)
    merged = dict(quick.get("all") or {})  # (the "subsets" block is read by quick_subsets)
    merged.update(quick.get(task.name) or {})
    return merged


def quick_subsets(task: Task) -> Dict[str, int]:
    """Per-split utterance caps of the quick mode (``subsets:`` in quick.yaml; {} = the whole corpus)."""
    return dict((load_yaml(QUICK_FILE).get("subsets") or {}).get(task.name) or {})


def resolve_config(task: Task, variables: Mapping[str, Any], full: bool = False,
                   overrides: Iterable[str] = (), base: Optional[Path] = None) -> Dict[str, Any]:
    """The task's config with quick settings (unless ``full``), overrides and all placeholders filled."""
    path = base or shipped_config_path(task)
    config = copy.deepcopy(load_yaml(path))
    if not full:
        for key, value in quick_overrides(task).items():
            set_dotted(config, key, value)
    for text in overrides:
        set_dotted(config, *parse_override(text))
    return substitute(config, variables, source=f"{path.name} ({task.name})")


def write_config(config: Dict[str, Any], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("# Resolved by dphubert.superb (shipped config + quick/full settings + db.sh paths)\n")
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    return path
