"""Caption files beside the clips of a folder source (video_folder, latent_folder).

    folder/captions.jsonl    one {"file": NAME, "caption": ...} per line (`jsonl_captions`)
    folder/STEM.txt          a sidecar caption file for STEM.* (`sidecar_text`); it wins
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from absl import logging

CAPTIONS_FILE = "captions.jsonl"


def jsonl_captions(folder, source: str) -> dict[str, Any]:
    """{file name: caption as stored (a str, or a list with one str per row)} from
    folder/captions.jsonl ({} without one); only the base name of "file" counts. A line that
    does not parse is skipped with a warning naming `source`, the file and the line."""
    path = os.path.join(os.fspath(folder), CAPTIONS_FILE)
    out: dict[str, Any] = {}
    if not os.path.exists(path):
        return out
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out[os.path.basename(str(row["file"]))] = row["caption"]
            except (ValueError, KeyError, TypeError) as e:
                logging.warning("%s: %s line %d skipped (%s: %s)", source, path, n,
                                type(e).__name__, e)
    return out


def sidecar_text(folder, name: str) -> Optional[str]:
    """The whole text of folder/STEM.txt for the file `name` (STEM.ext), or None without one."""
    path = os.path.join(os.fspath(folder), os.path.splitext(name)[0] + ".txt")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return fh.read()
