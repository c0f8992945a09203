"""A wheel of the running Corral, for an image when no index has this version of it.

Built from the installed files (the package directory and its installed metadata), so it works
for an editable install, offline, and without a build backend. The archive is reproducible (sorted
entries, fixed timestamps): the same Corral gives the same bytes, so an image build reuses its layer.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import zipfile
from pathlib import Path

import corral
from corral.errors import CorralError

WHEEL = "Wheel-Version: 1.0\nGenerator: corral export\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
EPOCH = (1980, 1, 1, 0, 0, 0)


def wheel_name() -> str:
    return f"corral-{corral.__version__}-py3-none-any.whl"


def wheel_bytes() -> bytes:
    """The wheel's content."""
    try:
        dist = importlib.metadata.distribution("corral")
    except importlib.metadata.PackageNotFoundError:
        raise CorralError("Corral's installed metadata is missing: reinstall it with pip") from None
    metadata = dist.read_text("METADATA")
    if metadata is None:
        raise CorralError("Corral's installed metadata has no METADATA file: reinstall it with pip")
    package = Path(corral.__file__).parent
    entries: dict[str, bytes] = {}
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            entries[f"corral/{path.relative_to(package).as_posix()}"] = path.read_bytes()
    info = f"corral-{corral.__version__}.dist-info"
    entries[f"{info}/METADATA"] = metadata.encode()
    entries[f"{info}/WHEEL"] = WHEEL.encode()
    entry_points = dist.read_text("entry_points.txt")
    if entry_points:
        entries[f"{info}/entry_points.txt"] = entry_points.encode()
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in entries.items()]
    entries[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            item = zipfile.ZipInfo(name, EPOCH)
            item.external_attr = 0o644 << 16
            item.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(item, data)
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
