"""Import a published detector (UnivFD, ClipBased-SID / seed 001, RINE) into a genscan checkpoint.

    python jobs/import_detector.py --kind univfd|clipbased|rine --weights FILE --out CKPT \\
        [--variant 1class|2class|4class|ldm] [--backbone-weights FILE.safetensors] [--config NAME_OR_JSON]
        [--force]

The weights file is the peer's released torch file; it is opened with torch.load(weights_only=True,
map_location="cpu") (tensors and plain containers only) and every key and shape is checked. The output is a
normal checkpoint directory (detector.safetensors + detector.json) that scan_bucket.py, evaluate.py and
calibrate.py accept. The CLIP backbone is not copied: by default it is the config's open_clip tag (downloaded
by open_clip where the detector is loaded); --backbone-weights pins a local .safetensors copy (its sha256 is
recorded and checked at every load). Defaults: univfd-vitl14, clipbased-vitl14, rine-vitl14-<variant>
(variant 2class). Prints the checkpoint meta as JSON.

Exit codes: 0 imported; 2 bad arguments or configuration (unknown kind/variant/config, missing local file, bad
--backbone-weights, --out already a checkpoint without --force); 3 the weights file is unreadable, not plain
tensors, or its keys/shapes do not match the kind (the message names them), or an s3:// file or the output is
not found; 5, 6, 7 the store refuses an s3:// --weights / --backbone-weights or the output (the storage
preflight, before any work; README.md, "Exit codes").
"""

from __future__ import annotations

import sys

from pipeline.cli.entry import job_main
from pipeline.cli.flags import config_from_flags
from pipeline.exitcodes import ExitCode, OperatorError
from pipeline.preflight import Location, check_storage
from pipeline.settings import as_config_error


class WeightsRefused(OperatorError):
    """The peer's weights file is unreadable, not plain tensors, or not the kind's keys and shapes."""

    exit_code = ExitCode.NOT_FOUND  # "refused: the input is not what the job needs"
    label = "weights file refused"


@job_main("import", quiet=True)
def main(argv: list[str] | None = None) -> int:
    from pipeline.models.importer import ImportConfig, WeightsFileError, import_detector
    from pipeline.models.meta import CheckpointError

    cfg = config_from_flags(ImportConfig, argv, doc=__doc__, job="import_detector")
    # before any work, as every job: an s3:// weights file the store refuses, an output that cannot be written
    # (a missing local file stays the importer's "--weights: no such file", exit 2)
    reads = [Location("weights", cfg.weights, file=True)]
    if cfg.backbone_weights:
        reads.append(Location("backbone weights", cfg.backbone_weights, file=True))
    check_storage(reads, [Location("output", cfg.out)], local_reads=False)
    try:
        meta = import_detector(**cfg.model_dump())
    except WeightsFileError as exc:
        raise WeightsRefused(str(exc)) from exc
    except (CheckpointError, OSError, ValueError) as exc:
        raise as_config_error(exc) from exc
    print(meta.to_json())
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
