"""Where a model comes from: a local directory in the hub layout, or a hub id fetched with the hubs' own
`snapshot_download` (ModelScope first, then the Hugging Face hub)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

from velora.errors import VeloraError

DEFAULT_MODEL_ID = "iic/ofa_visual-entailment_snli-ve_large_en"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HOSTS = {"modelscope": "www.modelscope.cn", "huggingface": "huggingface.co"}


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("VELORA_OFFLINE", "HF_HUB_OFFLINE", "MODELSCOPE_OFFLINE"))


def _from_modelscope(model_id: str, local_only: bool) -> Path:
    from modelscope.hub.snapshot_download import snapshot_download  # deferred: modelscope takes seconds to import

    return Path(snapshot_download(model_id, local_files_only=local_only))


def _from_huggingface(model_id: str, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download  # deferred: only for hub ids

    return Path(snapshot_download(model_id, local_files_only=local_only))


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").exists() or (path / "adapter_config.json").exists()


def find_cached(model_id: str) -> Path | None:
    """The hub-cache copy of `model_id`, if either hub's cache holds a complete one; never touches the network."""
    for fetch in (_from_modelscope, _from_huggingface):
        try:
            path = fetch(model_id, local_only=True)
        except Exception:
            continue
        if _is_model_dir(path):
            return path
    return None


def resolve_model_dir(path_or_id: str | os.PathLike, flag: str = "--model_path") -> Path:
    """A local model directory for `path_or_id`: the directory itself, or a hub snapshot (downloaded if needed).

    Raises VeloraError with what to do next: for a path that does not exist, a file, or a hub id that cannot be
    fetched (offline: how to download it elsewhere and pass the directory with `flag`, the option of the command
    being run).
    """
    text = str(path_or_id)
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise VeloraError(f"{local}: is a file; pass the model directory (with config.json) instead")
        if not _is_model_dir(local):
            raise VeloraError(f"{local}: no config.json or adapter_config.json - not a model directory "
                              "(run `velora train` to make an adapter, or pass a directory in the hub layout)")
        return local
    if not HUB_ID.match(text) or text.startswith((".", "/", "~")):
        raise VeloraError(f"{text}: no such model directory")

    cached = find_cached(text)
    if cached is not None:
        return cached
    errors = []
    sources = (("modelscope", _from_modelscope), ("huggingface", _from_huggingface))
    for name, fetch in sources:
        if _offline() or not _reachable(HOSTS[name]):
            errors.append(f"{name}: unreachable")
            continue
        try:
            path = fetch(text, local_only=False)
        except Exception as e:  # each hub raises its own types; all mean "not from here"
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            continue
        if _is_model_dir(path):
            return path
        errors.append(f"{name}: snapshot has no config.json")
    raise VeloraError(
        f"cannot fetch model {text!r} ({'; '.join(errors)}). Without network, download it on another machine "
        f"(`modelscope download --model {text} --local_dir DIR`) and pass that directory: {flag} DIR"
    )
