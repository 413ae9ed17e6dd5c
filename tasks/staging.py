"""A stage's files on object storage, through local folders for the duration of its run.

The NeRF outputs, the trained refiner, the metrics files, plots and report (``paths.*``) may be URLs. Stage code
reads and writes them as local files; :func:`staged` gives it params in which every such URL is replaced by a
local folder for the run:

- an *input* is the published folder's cached copy (:func:`tasks.versions.local_copy`, read only) or, for a file,
  a download of it;
- an *output* starts as a copy of what is published there (a stage that updates a folder finds its other
  files, as on disk) and is published when the block ends without an error: a folder as a new version behind
  its commit marker (:mod:`tasks.versions`), a file with one PUT. An error publishes nothing.

Entries that are local paths pass through untouched, so on one machine nothing is copied.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tasks.config import Params
from tasks.location import exists, filesystem, read_bytes
from tasks.versions import copy_folder, local_copy, publish_folder, resolve

#: The ``paths`` entries that are single files (the others are folders).
FILE_ENTRIES = ("nerf_metrics", "eval_metrics")


@contextmanager
def staged(params: Params, inputs: Sequence[str] = (), outputs: Sequence[str] = ()) -> Iterator[Params]:
    """``params`` with each ``paths`` entry named in ``inputs`` / ``outputs`` that is a URL replaced by a local path
    for the block (see the module docstring); outputs are published when the block succeeds."""
    remote = {k for k in (*inputs, *outputs) if isinstance(getattr(params.paths, k), str)}
    if not remote:
        yield params
        return
    with tempfile.TemporaryDirectory(prefix="dnerf-stage-") as tmp:
        local: dict[str, Path] = {}
        for key in sorted(remote):
            url = getattr(params.paths, key)
            if key in FILE_ENTRIES:
                local[key] = Path(tmp) / key / url.rsplit("/", 1)[-1]
                local[key].parent.mkdir()
                if exists(url):
                    local[key].write_bytes(read_bytes(url))
            elif key in outputs:
                local[key] = Path(tmp) / key
                if (live := resolve(url)) is not None:
                    copy_folder(live, local[key])
            else:  # a folder only read: the machine's cached copy, or a path where nothing is
                local[key] = local_copy(url) or Path(tmp) / key
        yield params.model_copy(update={"paths": params.paths.model_copy(update=local)})
        for key in sorted(remote & set(outputs)):
            url = getattr(params.paths, key)
            if key in FILE_ENTRIES:
                if local[key].is_file():
                    fs, path = filesystem(url)
                    fs.put_file(str(local[key]), path)  # one PUT: readers see the old file or the new one
            elif local[key].is_dir():
                publish_folder(local[key], url)
