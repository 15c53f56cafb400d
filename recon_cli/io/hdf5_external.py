"""HDF5 inputs that reach outside their own file: refused unless the user trusts them.

An HDF5 file can make its reader read other files: an external link (``/a -> other.h5:/b``),
a dataset with external raw storage (its bytes live in any file, a system file too), or a virtual
dataset whose sources are other files. A crafted input would then be reconstructed from, and leak
into outputs and provenance, files it has no business reading, while the provenance hash covers
only the file named on the command line.

So every HDF5 reader calls :func:`check_self_contained` after opening: any such reference is
refused (InputError naming the object and the target) unless ``RECON_ALLOW_EXTERNAL_HDF5=1`` is
set for trusted data; then :func:`external_files` lists the files read, and the input's digest
(recon_cli.io.formats.input_digest) covers them as well.
"""
from __future__ import annotations

import os
from pathlib import Path

from recon_cli.errors import InputError

#: Environment variable that lets HDF5 inputs read other files (trusted data only).
ALLOW_ENV = "RECON_ALLOW_EXTERNAL_HDF5"


def external_allowed() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def external_references(f) -> list[tuple[str, str, str]]:
    """(object name, kind, target file) of every reference to another file in the open file ``f``:
    external links, external raw storage, virtual-dataset sources in other files. Reads only metadata."""
    import h5py

    refs: list[tuple[str, str, str]] = []

    def on_link(name, link):
        if isinstance(link, h5py.ExternalLink):
            refs.append(("/" + name, "external link", str(link.filename)))

    def on_object(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        for entry in obj.external or ():
            target = entry[0].decode("utf-8", "replace") if isinstance(entry[0], bytes) else str(entry[0])
            refs.append(("/" + name, "external raw storage", target))
        if obj.is_virtual:
            for source in obj.virtual_sources():
                if source.file_name not in (".", "") and not _same_file(source.file_name, f.filename):
                    refs.append(("/" + name, "virtual dataset source", str(source.file_name)))

    f["/"].visititems_links(on_link)
    f["/"].visititems(on_object)
    return refs


def _same_file(target: str, filename: str) -> bool:
    try:
        return Path(_resolve(target, filename)).resolve() == Path(filename).resolve()
    except OSError:
        return False


def _resolve(target: str, filename: str) -> Path:
    """Where HDF5 looks for a relative target: next to the file, else the current folder."""
    p = Path(target)
    if p.is_absolute():
        return p
    beside = Path(filename).parent / p
    return beside if beside.exists() else p


def check_self_contained(f, path: str) -> None:
    """InputError (naming the object and its target) when ``f`` refers to other files, unless allowed."""
    if external_allowed():
        return
    refs = external_references(f)
    if refs:
        name, kind, target = refs[0]
        more = f" (and {len(refs) - 1} more)" if len(refs) > 1 else ""
        raise InputError(f"{kind} to {target!r}{more}: reading other files from an input is refused; "
                         f"set {ALLOW_ENV}=1 for trusted data", file=path, field=name)


def external_files(path) -> list[Path]:
    """The files that the HDF5 file at ``path`` refers to (resolved, existing ones, sorted); [] when
    it refers to none or cannot be opened."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            refs = external_references(f)
    except Exception:  # noqa: BLE001 - not HDF5 or unreadable: the reader reports it
        return []
    files = {_resolve(target, str(path)) for _, _, target in refs}
    return sorted(p.resolve() for p in files if p.is_file())
