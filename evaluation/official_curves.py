"""Readers for published PR curves, to check the AP code and to plot beside our own curves.

* WIDER FACE leaderboard curves, ``<root>/<method>/wider_pr_info_<method>_<setting>_val.mat``:
  MATLAB v5 (``scipy.io.loadmat``) or v7.3 (HDF5, ``h5py``). The curve is the one 2-D numeric
  array with a dimension of 2 (``pr_cruve``), columns precision and recall; v7.3 files store
  it transposed (2 x N).
* DARK FACE tool baselines, ``<root>/<method>.mat``: Octave text format with a ``pr_curve``
  matrix (1000 x 2, precision and recall) and an ``algo_name`` string.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.common import PRCurve


# ---------------------------------------------------------------------------------------------
# Octave text format
# ---------------------------------------------------------------------------------------------
def read_octave_text(path: str | Path) -> dict[str, object]:
    """Variables of an Octave text ``.mat`` file: matrices/scalars as float arrays, strings as str.

    Supports the types Octave writes for plain numbers and strings: ``matrix``, ``scalar``,
    ``string`` and ``sq_string`` (a char matrix of ``elements`` rows, each preceded by
    ``# length: n``).
    """
    lines = Path(path).read_text().splitlines()
    out: dict[str, object] = {}
    i = 0

    def header(key: str) -> str:
        nonlocal i
        while i < len(lines) and not lines[i].startswith(f"# {key}:"):
            if lines[i].startswith("# name:"):
                raise ValueError(f"{path}:{i + 1}: missing '# {key}:' header")
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}: missing '# {key}:' header")
        value = lines[i].split(":", 1)[1].strip()
        i += 1
        return value

    while i < len(lines):
        if not lines[i].startswith("# name:"):
            i += 1
            continue
        name = header("name")
        kind = header("type")
        if kind == "matrix":
            rows, cols = int(header("rows")), int(header("columns"))
            values = np.array(" ".join(lines[i:i + rows]).split(), dtype=np.float64)
            if values.size != rows * cols:
                raise ValueError(f"{path}:{i + 1}: matrix {name!r} should hold {rows}x{cols} "
                                 f"values, found {values.size}")
            out[name] = values.reshape(rows, cols)
            i += rows
        elif kind == "scalar":
            out[name] = np.array([[float(lines[i])]])
            i += 1
        elif kind in ("string", "sq_string"):
            elements = int(header("elements"))
            strings = []
            for _ in range(elements):
                length = int(header("length"))
                strings.append(lines[i][:length])
                i += 1
            out[name] = "\n".join(strings)
        else:
            raise ValueError(f"{path}: variable {name!r} has unsupported type {kind!r}")
    return out


def load_darkface_curve(path: str | Path) -> PRCurve:
    """A DARK FACE tool baseline (``pr_curve`` and ``algo_name``) as a PRCurve."""
    data = read_octave_text(path)
    if "pr_curve" not in data:
        raise ValueError(f"{path}: no 'pr_curve' variable")
    curve = np.asarray(data["pr_curve"])
    label = str(data.get("algo_name", Path(path).stem))
    return PRCurve(label, curve[:, 0].copy(), curve[:, 1].copy())


def darkface_curves(root: str | Path) -> list[PRCurve]:
    """Every ``<root>/*.mat`` DARK FACE baseline, sorted by file name."""
    return [load_darkface_curve(p) for p in sorted(Path(root).glob("*.mat"))]


# ---------------------------------------------------------------------------------------------
# WIDER FACE .mat (v5 or v7.3)
# ---------------------------------------------------------------------------------------------
def _pick_curve(arrays: dict[str, np.ndarray], path: Path) -> np.ndarray:
    candidates = [a for a in arrays.values()
                  if a.ndim == 2 and 2 in a.shape and np.issubdtype(a.dtype, np.floating)]
    if len(candidates) != 1:
        raise ValueError(f"{path}: expected one 2-D numeric array with a dimension of 2, "
                         f"found {len(candidates)}")
    curve = candidates[0]
    return curve.T if curve.shape[0] == 2 and curve.shape[1] != 2 else curve


def _read_mat_arrays(path: Path) -> tuple[dict[str, np.ndarray], str | None]:
    """(variables, legend_name) of a v5 or v7.3 MAT file."""
    import scipy.io as sio
    try:
        mat = sio.loadmat(path)
    except NotImplementedError:  # v7.3 is HDF5
        import h5py
        with h5py.File(path, "r") as f:
            arrays = {k: np.asarray(f[k]) for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        legend = arrays.pop("legend_name", None)
        name = "".join(map(chr, legend.ravel())) if legend is not None else None
        return arrays, name
    arrays = {k: v for k, v in mat.items() if not k.startswith("__")}
    legend = arrays.pop("legend_name", None)
    name = str(np.asarray(legend).ravel()[0]) if legend is not None and legend.size else None
    return arrays, name


def load_wider_curve(path: str | Path) -> PRCurve:
    """A WIDER ``wider_pr_info_*.mat`` curve; labelled by ``legend_name`` or its folder name."""
    path = Path(path)
    arrays, name = _read_mat_arrays(path)
    curve = _pick_curve(arrays, path)
    return PRCurve(name or path.parent.name, curve[:, 0].copy(), curve[:, 1].copy())


def wider_curves(root: str | Path, setting: str) -> list[PRCurve]:
    """The ``<root>/<method>/*_<setting>_val.mat`` curve of every method folder, by folder name."""
    curves = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        files = sorted(folder.glob(f"*_{setting}_val.mat"))
        if files:
            curves.append(load_wider_curve(files[0])._replace(label=folder.name))
    return curves
