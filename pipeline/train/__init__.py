"""Training (no Ray): `config` (TrainConfig), `feed` (the driver's listing + split plan and the streaming
read/decode/augment stages), `data` (split rule, class checks), `hooks` (the worker loop's
contract with its runner), `loop` (the worker loop: mole / linear, calibration, checkpoint), `run` (one
worker's view of the run), `fine_tune` (the MoLE epochs), `validate` (validation metrics), `local` (the
in-process runner, `LocalHooks`), `state` (per-epoch training state), `linear` (scikit-learn heads), `masking`
(texture-aware patch masking, MPFT reading), `calibrate` (FPR and unknown-generator thresholds), `recipes/`
(shipped TrainConfig recipes, e.g. univfd.json). `pipeline.engine.train` runs the loop under Ray Train
with Ray Data feeding it."""
