"""Write cleaned shards deterministically [ours]: the filter's byte-exact copy of whole samples.

Samples come from the shard layer (`pipeline.shards.iter_samples`: the scan's grouping, every member's bytes,
sidecars included), so the filter's samples line up one to one with the scan's rows. Kept members are copied
under their original names (raw bytes, non-UTF-8 included) with their original bytes. Output tars are written
by `pipeline.shards.write_sample` (webdataset's TarWriter layout: PAX headers, a fixed mtime, owner and mode,
members sorted within each sample), so the same input and decisions always give byte-identical shards.
"""

from __future__ import annotations

from pipeline import storage
from pipeline.shards import Sample, tar_writer, write_sample


class ShardWriter:
    """A deterministic tar written to a private temp file, made visible only by `commit` (local: rename over
    the target; S3: one upload after the file is complete). Empty shards are valid tars."""

    def __init__(self, target_uri: str) -> None:
        self.target_uri = target_uri
        self.count = 0
        self._tmp = storage.staging_path(target_uri)
        # both closed in commit/abort
        self._file = open(self._tmp, "wb")  # noqa: SIM115
        self._tar = tar_writer(self._file)

    def write(self, sample: Sample) -> None:
        hidden = [m.ext for m in sample.members if m.ext.startswith("_")]
        if hidden:  # webdataset's readers and writers treat "_" members as metadata, not data
            raise ValueError(
                f"sample {sample.key!r}: member extension(s) {hidden} start with '_' (cannot copy)"
            )
        missing = [m.name for m in sample.members if m.data is None]
        if missing:
            raise ValueError(f"sample {sample.key!r}: members {missing} were not read (cannot copy)")
        write_sample(self._tar, sample.raw_key, {m.ext: m.data for m in sample.members})
        self.count += 1

    def _close(self) -> None:
        if not self._file.closed:
            self._tar.close()
            self._file.close()

    def commit(self) -> None:
        self._close()
        storage.publish(self._tmp, self.target_uri)

    def abort(self) -> None:
        self._close()
        self._tmp.unlink(missing_ok=True)
